//! `tokenrelay ca`: the environment that makes common runtimes trust the local CA and use
//! the forward proxy, as POSIX `export` lines (`eval "$(tokenrelay ca)"`), and the merged
//! bundle (system roots + local CA) those variables point at.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

use crate::config::Config;
use crate::local_ca::{permitted_names, LocalCa, CA_CN, LOOPBACK_NAMES};
use crate::pki;

/// `tokenrelay ca`: creates the CA when missing, writes the merged bundle, prints the exports.
pub(super) fn run(config_path: &Path, shell: Shell, regenerate: bool) -> anyhow::Result<()> {
    let config = crate::config::load(config_path)?;
    if regenerate {
        // A new CA constrained to the hosts claimed now; the old one stops being used.
        for path in [&config.ca_cert, &config.ca_key] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
            }
        }
        eprintln!(
            "warning: replacing the local CA: apps and shells that trusted the old one must trust the new one \
             (run `eval \"$(tokenrelay ca)\"` again, rebuild Java trust stores, and restart tokenrelay: it serves \
             with the CA it loaded at start)"
        );
    }
    if config.forward.is_none() && config.listen_tls.is_none() {
        // The CA is name-constrained to the hosts forward mode claims when it is created:
        // creating it now would make a loopback-only CA that forward mode later cannot use.
        if !config.ca_cert.exists() {
            anyhow::bail!(
                "neither [proxy] forward nor [proxy] listen_tls is set in {}: set one first, then run `tokenrelay ca`",
                config_path.display()
            );
        }
        eprintln!("note: neither [proxy] forward nor [proxy] listen_tls is set; nothing serves with the local CA yet");
    }
    let (ca, created) = LocalCa::load_or_create(&config)?;
    if created {
        eprintln!("created the local CA {} (key {}, 0600)", config.ca_cert.display(), config.ca_key.display());
    }
    if let Some(w) = ca.warning() {
        eprintln!("warning: {w}");
    }
    for route in &config.routes {
        for entry in &route.hosts {
            if let Some(why) = ca.refusal(&entry.host).filter(|_| config.forward.is_some()) {
                eprintln!("warning: route {:?}: {why}", route.name);
            }
        }
    }
    let bundle = bundle_path(&config);
    let roots = write_bundle(&ca, &bundle)
        .with_context(|| format!("cannot write the merged CA bundle {}", bundle.display()))?;
    if roots == 0 {
        eprintln!("warning: no system root certificates found; {} holds the local CA only", bundle.display());
    }
    print!("{}", env_for(&config, &ca, &bundle, shell)?);
    Ok(())
}

/// Where `tokenrelay ca` writes the merged bundle (system roots + local CA): beside
/// `ca_cert`, `<stem>-bundle.pem`.
pub fn bundle_path(config: &Config) -> PathBuf {
    let stem = config.ca_cert.file_stem().and_then(|s| s.to_str()).unwrap_or("ca");
    config.ca_cert.with_file_name(format!("{stem}-bundle.pem"))
}

/// A `CERTIFICATE` PEM block, 64-column base64, LF line endings.
fn pem_block(der: &[u8]) -> String {
    crate::pki::pem_encode("CERTIFICATE", der)
}

/// Writes the merged bundle: the system roots (as rustls-native-certs finds them) plus the
/// local CA, so pointing `SSL_CERT_FILE` / `REQUESTS_CA_BUNDLE` / `CURL_CA_BUNDLE` at it breaks
/// nothing else. Earlier tokenrelay CAs (CN [`CA_CN`]) are left out, so re-running after
/// `eval "$(tokenrelay ca)"` (which points `SSL_CERT_FILE` at this very file) does not pile
/// them up. Returns the number of system roots written.
pub fn write_bundle(ca: &LocalCa, path: &Path) -> std::io::Result<usize> {
    let ours = CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()).filter_map(Result::ok).next();
    let mut seen = std::collections::HashSet::new();
    let mut text = String::new();
    let mut count = 0;
    for cert in rustls_native_certs::load_native_certs().certs {
        let der = cert.as_ref();
        let is_ours = ours.as_ref().is_some_and(|o| o.as_ref() == der)
            || pki::subject_dn(der).is_some_and(|dn| dn.contains(&format!("CN={CA_CN}")));
        if is_ours || !seen.insert(der.to_vec()) {
            continue;
        }
        text.push_str(&pem_block(der));
        count += 1;
    }
    // One comment line whatever the path holds: a newline in it must not start a PEM block.
    text.push_str(&super::quote::comment(&format!("{CA_CN}: {}", ca.cert_path().display())));
    text.push_str(ca.cert_pem());
    if !text.ends_with('\n') {
        text.push('\n');
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("pem.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(count)
}

/// Single-quotes `s` for a POSIX shell ([`super::quote::sh`]).
pub fn sh_quote(s: &str) -> String {
    super::quote::sh(s)
}

/// Loopback names to keep out of the proxy: those no route claims.
fn no_proxy(config: &Config) -> String {
    let claimed: Vec<String> = permitted_names(config);
    let mut out: Vec<&str> = Vec::new();
    for name in LOOPBACK_NAMES {
        if !claimed.iter().any(|c| c == name) {
            out.push(name);
        }
    }
    out.join(",")
}

/// What `tokenrelay ca` prints: comments plus `export` lines for a POSIX shell.
/// The shells `tokenrelay ca --shell` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// `export NAME=value` (bash, zsh, sh, dash, ksh).
    Posix,
    Bash,
    Zsh,
    Fish,
    Powershell,
    /// `NAME=value` lines for `.env` files and `docker run --env-file`.
    Dotenv,
    /// One JSON object `{"NAME": "value", ...}`.
    Json,
}

/// The variables `tokenrelay ca` sets, in order, and comments worth printing with them.
/// Paths in the comments are quoted with `quote` (the shell's own quoting).
fn env_vars(
    config: &Config,
    ca: &LocalCa,
    bundle: &Path,
    quote: fn(&str) -> String,
) -> (Vec<(&'static str, String)>, Vec<String>) {
    let ca_path = absolute(ca.cert_path());
    let bundle = absolute(bundle).display().to_string();
    let mut vars = Vec::new();
    let mut notes = vec![format!("tokenrelay local CA: {}", quote(&ca_path.display().to_string()))];
    if let Some(c) = ca.constraints() {
        notes.push(format!("name-constrained to: {}", c.describe()));
    }
    notes.push(format!("merged bundle (system roots + local CA): {}", quote(&bundle)));
    match config.forward {
        Some(addr) => {
            let proxy = format!("http://{addr}");
            // curl reads only the lower-case http_proxy; most runtimes read either.
            for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
                vars.push((name, proxy.clone()));
            }
            let no_proxy = no_proxy(config);
            for name in ["NO_PROXY", "no_proxy"] {
                vars.push((name, no_proxy.clone()));
            }
            // Node >= 24 (and 22.21+) reads HTTPS_PROXY itself when this is set.
            vars.push(("NODE_USE_ENV_PROXY", "1".into()));
        }
        None => {
            notes.push("forward mode is off: set [proxy] forward to get HTTPS_PROXY / HTTP_PROXY / NO_PROXY".into())
        }
    }
    for name in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
        vars.push((name, bundle.clone()));
    }
    vars.push(("NODE_EXTRA_CA_CERTS", ca_path.display().to_string()));
    (vars, notes)
}

/// What `tokenrelay ca` prints for `shell`: every value and every path in a comment quoted
/// for that shell ([`super::quote`]), comments kept to one line each. Dotenv values are read
/// literally up to the end of the line (`docker --env-file`), so a value holding a control
/// character is refused rather than printed.
pub fn env_for(config: &Config, ca: &LocalCa, bundle: &Path, shell: Shell) -> anyhow::Result<String> {
    use super::quote;
    let q: fn(&str) -> String = match shell {
        Shell::Fish => quote::fish,
        Shell::Powershell => quote::powershell,
        _ => quote::sh,
    };
    let (vars, notes) = env_vars(config, ca, bundle, q);
    let mut out = String::new();
    let comment = |out: &mut String, line: &str| out.push_str(&quote::comment(line));
    match shell {
        Shell::Json => {
            let map: serde_json::Map<String, serde_json::Value> =
                vars.into_iter().map(|(k, v)| (k.to_string(), v.into())).collect();
            let _ = writeln!(out, "{}", serde_json::Value::Object(map));
            return Ok(out);
        }
        Shell::Dotenv => {
            for (k, v) in vars {
                if v.chars().any(char::is_control) {
                    anyhow::bail!(
                        "{k}: the value {v:?} holds a control character, which a .env file cannot carry \
                         (docker --env-file reads values literally to the end of the line); move the CA \
                         to a path without one, or use --shell json"
                    );
                }
                let _ = writeln!(out, "{k}={v}");
            }
            return Ok(out);
        }
        _ => {}
    }
    for n in &notes {
        comment(&mut out, n);
    }
    let usage = match shell {
        Shell::Fish => "use: tokenrelay ca --shell fish | source   (then start the app from this shell)",
        Shell::Powershell => {
            "use: tokenrelay ca --shell powershell | Invoke-Expression   (then start the app from this shell)"
        }
        _ => "use: eval \"$(tokenrelay ca)\"   (then start the app from this shell)",
    };
    comment(&mut out, usage);
    for (k, v) in &vars {
        let _ = match shell {
            Shell::Fish => writeln!(out, "set -gx {k} {}", q(v)),
            Shell::Powershell => writeln!(out, "$env:{k} = {}", q(v)),
            _ => writeln!(out, "export {k}={}", q(v)),
        };
    }
    // Java ignores name constraints on trust anchors: importing this CA into the JDK's shared
    // cacerts would let it vouch for any host in every Java program. A per-app trust store
    // (a copy of cacerts plus this CA) keeps it to the app you start with it. These commands
    // are for a POSIX shell (`$JAVA_HOME`), quoted for one.
    let ca_path = absolute(ca.cert_path());
    let qp = |p: &Path| quote::sh(&p.display().to_string());
    let store = ca_path.with_file_name("tokenrelay-truststore.p12");
    comment(&mut out, "Java (per app; never import into the JDK's shared cacerts, Java ignores name constraints):");
    comment(&mut out, &format!(
        "  keytool -importkeystore -noprompt -srckeystore \"$JAVA_HOME/lib/security/cacerts\" -srcstorepass changeit -destkeystore {} -deststoretype PKCS12 -deststorepass changeit",
        qp(&store)
    ));
    comment(&mut out, &format!(
        "  keytool -importcert -noprompt -alias tokenrelay-local-ca -file {} -keystore {} -storetype PKCS12 -storepass changeit",
        qp(&ca_path),
        qp(&store)
    ));
    comment(&mut out, &format!(
        "  java -Djavax.net.ssl.trustStore={} -Djavax.net.ssl.trustStoreType=PKCS12 -Djavax.net.ssl.trustStorePassword=changeit ...",
        qp(&store)
    ));
    if let Some(addr) = config.forward {
        comment(&mut out, &format!(
            "  java -Dhttps.proxyHost={} -Dhttps.proxyPort={} -Dhttp.proxyHost={} -Dhttp.proxyPort={} -Dhttp.nonProxyHosts={} ...",
            addr.ip(),
            addr.port(),
            addr.ip(),
            addr.port(),
            quote::sh(&no_proxy(config).replace("::1", "[::1]").replace(',', "|"))
        ));
    }
    Ok(out)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::local_ca::tests::config;

    #[test]
    fn env_script_names_every_variable() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "");
        let (ca, _) = LocalCa::load_or_create(&cfg).unwrap();
        let bundle = bundle_path(&cfg);
        assert_eq!(bundle.file_name().unwrap(), "ca-bundle.pem");
        let script = env_for(&cfg, &ca, &bundle, Shell::Posix).unwrap();
        for var in [
            "HTTPS_PROXY=http://127.0.0.1:8788",
            "HTTP_PROXY=http://127.0.0.1:8788",
            "http_proxy=http://127.0.0.1:8788",
            "NO_PROXY=localhost,::1",
            "SSL_CERT_FILE=",
            "REQUESTS_CA_BUNDLE=",
            "NODE_EXTRA_CA_CERTS=",
            "NODE_USE_ENV_PROXY=1",
            "CURL_CA_BUNDLE=",
            "keytool -importcert",
            "-Djavax.net.ssl.trustStore=",
        ] {
            assert!(script.contains(var), "{var} missing from:\n{script}");
        }
        assert!(!script.contains("-cacerts"), "never the JDK's shared store:\n{script}");
        let fish = env_for(&cfg, &ca, &bundle, Shell::Fish).unwrap();
        assert!(fish.contains("set -gx http_proxy http://127.0.0.1:8788"), "{fish}");
        let ps = env_for(&cfg, &ca, &bundle, Shell::Powershell).unwrap();
        assert!(ps.contains("$env:HTTP_PROXY = 'http://127.0.0.1:8788'"), "{ps}");
        let json: serde_json::Value = serde_json::from_str(&env_for(&cfg, &ca, &bundle, Shell::Json).unwrap()).unwrap();
        assert_eq!(json["https_proxy"], "http://127.0.0.1:8788");
        let dotenv = env_for(&cfg, &ca, &bundle, Shell::Dotenv).unwrap();
        assert!(dotenv.lines().all(|l| l.contains('=') && !l.starts_with('#')), "{dotenv}");
        assert_eq!(sh_quote("/a b/c'd"), r"'/a b/c'\''d'");
        assert_eq!(sh_quote("/plain/path.pem"), "/plain/path.pem");
    }
}
