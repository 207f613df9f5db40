//! `tokenrelay init`: writes a commented starter config when there is none (`--template`),
//! creates the key material it names, and says what to register at the AS. Existing files
//! are replaced only when asked (`--only`, `--force`) and confirmed (`--yes` or a prompt):
//! a new DPoP key breaks the tokens bound to the old one (RFC 9449 §5), a new CA breaks
//! everything that trusts the old one.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;

use anyhow::Context as _;

use super::out;
use crate::config::{AuthMethod, Config};
use crate::provision::Part;

/// The starter configs `init --template` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Template {
    /// The built-in demo AS: works with no authorization server of your own.
    Demo,
    /// Any AS with metadata discovery and `private_key_jwt`.
    Generic,
    Keycloak,
    Okta,
    /// Microsoft Entra ID (certificate credentials).
    Entra,
    Auth0,
}

impl Template {
    pub const ALL: [Template; 6] =
        [Template::Demo, Template::Generic, Template::Keycloak, Template::Okta, Template::Entra, Template::Auth0];

    pub fn name(self) -> &'static str {
        match self {
            Template::Demo => "demo",
            Template::Generic => "generic",
            Template::Keycloak => "keycloak",
            Template::Okta => "okta",
            Template::Entra => "entra",
            Template::Auth0 => "auth0",
        }
    }

    /// The config text.
    pub fn text(self) -> &'static str {
        match self {
            Template::Demo => include_str!("templates/demo.toml"),
            Template::Generic => include_str!("templates/generic.toml"),
            Template::Keycloak => include_str!("templates/keycloak.toml"),
            Template::Okta => include_str!("templates/okta.toml"),
            Template::Entra => include_str!("templates/entra.toml"),
            Template::Auth0 => include_str!("templates/auth0.toml"),
        }
    }

    /// Where the vendor's console takes the public key, in its own words.
    fn where_to_register(self) -> Option<&'static str> {
        match self {
            Template::Demo => None,
            Template::Generic => Some("register the JWKS as the client's `jwks` (RFC 7591), or paste it where the AS takes client keys"),
            Template::Keycloak => Some("Keycloak admin console: Clients -> the client -> Credentials: Client Authenticator \"Signed JWT\"; Keys tab: Import key, format \"JSON Web Key Set\""),
            Template::Okta => Some("Okta Admin Console: Applications -> the app -> General -> Client Credentials: \"Public key / Private key\", Add key: paste keys[0] of the JWKS"),
            Template::Entra => Some("Entra admin center: App registrations -> the app -> Certificates & secrets -> Certificates: upload certs/client-cert.pem"),
            Template::Auth0 => Some("Auth0 dashboard: Applications -> the app -> Credentials: Authentication Method \"Private Key JWT\", add the public key as PEM (`tokenrelay jwks --route auth0 --format pem`)"),
        }
    }
}

/// What `--only` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// `private_key_jwt` client keys (and their `client.cert`).
    Client,
    /// DPoP keys.
    Dpop,
    /// mTLS client certificates and keys.
    Mtls,
    /// The local CA.
    Ca,
}

impl Only {
    fn part(self) -> Part {
        match self {
            Only::Client => Part::Client,
            Only::Dpop => Part::Dpop,
            Only::Mtls => Part::Mtls,
            Only::Ca => Part::Ca,
        }
    }
}

const ALL_PARTS: [Part; 4] = [Part::Client, Part::Dpop, Part::Mtls, Part::Ca];

/// `tokenrelay init`.
pub(super) fn run(
    config_path: &Path,
    template: Option<Template>,
    only: Option<Only>,
    force: bool,
    yes: bool,
) -> anyhow::Result<()> {
    let wrote_template = if config_path.exists() {
        if let Some(t) = template {
            eprintln!(
                "note: {} exists; --template {} applies only when creating it, so it is left as is",
                config_path.display(),
                t.name()
            );
        }
        None
    } else {
        let t = template.unwrap_or(Template::Demo);
        if let Some(dir) = config_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create the folder {}", dir.display()))?;
        }
        // create_new: never overwrite a config that appeared meanwhile.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(config_path)
            .with_context(|| format!("cannot create {}", config_path.display()))?;
        file.write_all(t.text().as_bytes()).with_context(|| format!("cannot write {}", config_path.display()))?;
        out(&format!("created {} (template {}, commented field by field)\n", config_path.display(), t.name()));
        Some(t)
    };
    let config = crate::config::load(config_path)?;

    let parts: Vec<Part> = match (only, force) {
        (Some(o), _) => vec![o.part()],
        (None, true) => ALL_PARTS.to_vec(),
        (None, false) => Vec::new(),
    };
    let items = crate::provision::items(&config);
    if let Some(o) = only {
        if !items.iter().any(|i| i.part == o.part()) {
            let what = match o {
                Only::Client => "no private_key_jwt client key",
                Only::Dpop => "no DPoP key",
                Only::Mtls => "no mTLS client certificate",
                Only::Ca => "no local CA (set [proxy] ca_cert and ca_key, listen_tls or forward)",
            };
            anyhow::bail!("--only {}: {} names {what}", o.part().as_str(), config_path.display());
        }
    }
    let replacing: Vec<&crate::provision::Item> =
        items.iter().filter(|i| parts.contains(&i.part) && i.present()).collect();
    if !replacing.is_empty() {
        let mut list = String::new();
        for i in &replacing {
            let files: Vec<String> = i.paths().iter().map(|p| p.display().to_string()).collect();
            list.push_str(&format!("  {} ({}): {}\n", files.join(" + "), i.what, i.consequence()));
        }
        if !yes {
            confirm(&list)?;
        }
    }
    let running = !replacing.is_empty() && proxy_running(config.listen);
    let made = crate::provision::init(&config, &parts)?;
    let replaced_any = !replacing.is_empty();
    let mut text = String::new();
    if running {
        // The running proxy reloads the new files at once: from now on it signs with them.
        for i in &replacing {
            text.push_str(&format!(
                "note: the tokenrelay running on {} with this config now uses the new {} ({}): {}\n",
                config.listen,
                i.what,
                i.paths().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" + "),
                i.consequence()
            ));
        }
    }
    if made.is_empty() {
        text.push_str(&format!(
            "nothing to create: every key and certificate {} names exists\n",
            config_path.display()
        ));
    }
    for line in &made {
        text.push_str(&format!("{} {line}\n", if replaced_any { "wrote" } else { "created" }));
    }
    text.push_str(&next_steps(&config, config_path, wrote_template));
    out(&text);
    Ok(())
}

/// Is a tokenrelay answering on `listen` (its status endpoint)?
fn proxy_running(listen: std::net::SocketAddr) -> bool {
    use std::io::Read as _;
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let timeout = std::time::Duration::from_millis(500);
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, timeout) else { return false };
    let _ = stream.set_read_timeout(Some(timeout));
    let request = format!("GET {} HTTP/1.0\r\nHost: {addr}\r\n\r\n", crate::status::STATUS_PATH);
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.take(64 * 1024).read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    answer.starts_with("HTTP/1.") && answer.contains("\"restart_needed\"")
}

/// Asks on the terminal; refuses without one.
fn confirm(list: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "refusing to replace existing files without confirmation (no terminal to ask; pass --yes to replace them):\n{}",
            list.trim_end()
        );
    }
    eprint!("This replaces:\n{list}Replace them? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).context("cannot read the answer")?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        anyhow::bail!("nothing replaced")
    }
}

/// Does `route` send its requests to the config's built-in demo AS?
pub(super) fn points_at_demo(config: &Config, route: &crate::config::RouteConfig) -> bool {
    let Some(demo) = &config.demo_as else { return false };
    let upstream = &route.upstream;
    upstream.port == demo.listen.port()
        && (upstream.host == "localhost"
            || upstream.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip == demo.listen.ip() || ip.is_loopback()))
}

/// What to do after `init`: what to register at the AS, then check and run.
fn next_steps(config: &Config, config_path: &Path, template: Option<Template>) -> String {
    let flag = if config_path == Path::new("proxy.toml") {
        String::new()
    } else {
        format!(" --config {}", super::ca::sh_quote(&config_path.display().to_string()))
    };
    let mut out = String::from("\nnext steps:\n");
    if template.is_some_and(|t| t != Template::Demo) {
        out.push_str(&format!(
            "  - edit {} where it says \"<- yours\" (issuer, client id), then run `tokenrelay init{flag}` again\n",
            config_path.display()
        ));
    }
    for r in &config.routes {
        if points_at_demo(config, r) {
            out.push_str(&format!(
                "  - route {:?}: the built-in demo AS registers its client itself; nothing to register\n",
                r.name
            ));
            continue;
        }
        let Some(c) = &r.client else {
            if r.dpop.is_some() {
                out.push_str(&format!("  - route {:?}: DPoP only; nothing to register\n", r.name));
            }
            continue;
        };
        out.push_str(&format!(
            "  - route {:?}: register client id {:?} at the AS with token_endpoint_auth_method {}\n",
            r.name,
            c.id,
            c.auth.as_str()
        ));
        let what = match c.auth {
            AuthMethod::PrivateKeyJwt | AuthMethod::SelfSignedTlsClientAuth => {
                Some(format!("its public keys: `tokenrelay jwks --route {}{flag}` prints the JWKS to paste", super::quote::sh(&r.name)))
            }
            AuthMethod::TlsClientAuth => Some(format!(
                "its certificate's subject: `tokenrelay jwks --route {}{flag} --format registration` prints tls_client_auth_subject_dn",
                super::quote::sh(&r.name)
            )),
            AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost | AuthMethod::ClientSecretJwt => {
                Some("the secret the config names (the AS issues it)".to_string())
            }
            AuthMethod::None => None,
        };
        if let Some(what) = what {
            out.push_str(&format!("      {what}\n"));
        }
        if let Some(hint) = template.and_then(Template::where_to_register) {
            out.push_str(&format!("      {hint}\n"));
        }
        if r.dpop.is_some() {
            out.push_str("      DPoP: nothing to register (the AS binds tokens to the key it sees); keep the key\n");
        }
        out.push_str(
            "      redirect URIs: register your app's own callback (tokenrelay relays redirect_uri untouched)\n",
        );
        if r.rewrite_metadata {
            out.push_str(&format!(
                "      apps configured by issuer: http://{}{}/.well-known/openid-configuration\n",
                config.listen, r.prefix
            ));
        }
    }
    out.push_str(&format!("  - tokenrelay check{flag}\n"));
    out.push_str(&format!("  - tokenrelay run{flag}\n"));
    match config.routes.iter().find(|r| r.client.is_some()) {
        // The path is known without the AS's metadata: the printed line gets a token.
        Some(r) if r.endpoints_configured || points_at_demo(config, r) => {
            let token = r.endpoints.first().map(String::as_str).unwrap_or("/token");
            out.push_str(&format!(
                "    then: curl -s -X POST http://{}{}{token} -d grant_type=client_credentials\n",
                config.listen, r.prefix
            ));
        }
        Some(r) => out.push_str(&format!(
            "    or first: tokenrelay token --route {}{flag}   (one token request, explained)\n",
            r.name
        )),
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_template_is_a_valid_config() {
        for t in Template::ALL {
            let config = crate::config::parse(t.text(), Path::new("/tmp/x/proxy.toml"))
                .unwrap_or_else(|e| panic!("template {}: {e}", t.name()));
            assert!(!config.routes.is_empty(), "{}", t.name());
            if let Some(p) = config.routes[0].preset {
                assert_eq!(p.as_str(), t.name());
            }
        }
    }
}
