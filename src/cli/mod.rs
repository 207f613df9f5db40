//! The command line: `run` (default), `check`, `jwks`, `init`, `ca` (`src/cli/ca.rs`). `anyhow` lives
//! here only.

mod ca;
mod init;
pub mod quote;
mod replay;
mod token;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::config::AuthMethod;
use crate::snapshot::{BuildOptions, Credential};

/// `0.1.0 (abc1234)`: the crate version and the git commit it was built from (build.rs).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("TOKENRELAY_GIT_COMMIT"), ")");

const EXAMPLES: &str = "\
Examples:
  tokenrelay init                       # starter proxy.toml (built-in demo AS) + keys
  tokenrelay run                        # then: curl -s -X POST http://127.0.0.1:8787/demo/token -d grant_type=client_credentials
  tokenrelay init --template okta       # starter config for Okta (also keycloak, entra, auth0, generic)
  tokenrelay jwks --route okta          # the JWKS to register at the AS
  tokenrelay check                      # validate config, keys and each issuer's metadata
  tokenrelay token --route demo         # one token request, explained
  tokenrelay replay 7                   # exchange 7 again, after saving proxy.toml
  eval \"$(tokenrelay ca)\"               # trust the local CA, use the forward proxy
  tokenrelay -v run --log-format json   # debug logs, one JSON object per line
  tokenrelay completions bash > ~/.local/share/bash-completion/completions/tokenrelay";

#[derive(Debug, Parser)]
#[command(
    name = "tokenrelay",
    version = VERSION,
    about = "Local proxy that signs OAuth 2.0 token requests (private_key_jwt, DPoP, mTLS)",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, default_value = "proxy.toml", env = "TOKENRELAY_CONFIG")]
    pub config: PathBuf,
    /// Log format on stderr: `text`, or `json` (one JSON object per line).
    #[arg(long, global = true, value_enum, default_value = "text", env = "TOKENRELAY_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// More log detail (-v debug, -vv trace). RUST_LOG, when set, wins.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Less log detail (-q warnings and errors, -qq errors only). RUST_LOG, when set, wins.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    /// Override one config field, `KEY=VALUE` (repeatable): `--set proxy.listen=127.0.0.1:9000`.
    /// VALUE is read as a TOML value (a number, `true`, `["a"]`), else as a string.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub set: Vec<crate::config::interpolate::Override>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What `jwks --format` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JwksFormat {
    /// Exactly a JWKS, `{"keys":[...]}`, ready to paste (one route).
    Jwks,
    /// Per route: the JWKS plus client id, auth method, x5t#S256, tls_client_auth_subject_dn,
    /// dpop_jkt.
    Registration,
    /// The client's public key as PEM (SubjectPublicKeyInfo), for ASes that take one (Auth0).
    Pem,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    #[command(
        after_help = "Examples:\n  tokenrelay run                           # ./proxy.toml; saved changes apply live\n  tokenrelay run --config dev/proxy.toml   # another config\n  tokenrelay -v run --log-format json      # debug logs, one JSON object per line"
    )]
    Run,
    /// Validate the config, load every key and certificate, fetch each issuer's metadata,
    /// print the resolved routes. Binds no listener; exits 1 on any error.
    #[command(
        after_help = "Examples:\n  tokenrelay check                         # keys, certificates, each issuer's metadata\n  tokenrelay check --offline               # no network\n  tokenrelay check --json | jq .warnings"
    )]
    Check {
        /// Skip fetching AS metadata (RFC 8414 / OIDC discovery) for routes with an issuer.
        #[arg(long)]
        offline: bool,
        /// Print the result as one JSON document (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Print the public JWKS to register at the AS for a route's client authentication.
    #[command(
        after_help = "Examples:\n  tokenrelay jwks --route okta > okta-jwks.json\n  tokenrelay jwks --format registration   # every route, with client id, x5t#S256, dpop_jkt"
    )]
    Jwks {
        /// The route (needed when the config has more than one).
        #[arg(long)]
        route: Option<String>,
        /// `jwks` (default): exactly `{"keys":[...]}`; `registration`: the richer per-route
        /// document.
        #[arg(long, value_enum, default_value = "jwks")]
        format: JwksFormat,
    },
    /// Write a starter proxy.toml when there is none, create the keys and certificates it
    /// names, and print what to register at the AS.
    #[command(
        after_help = "Examples:\n  tokenrelay init                          # demo config, runs with no AS of your own\n  tokenrelay init --template keycloak      # starter config for Keycloak\n  tokenrelay init --only dpop --yes        # replace the DPoP key (tokens bound to it stop working)"
    )]
    Init {
        /// The starter config to write when the config file does not exist (default: demo).
        #[arg(long, value_enum)]
        template: Option<init::Template>,
        /// Replace this existing key material (asks first; see --yes). Missing files are
        /// always created.
        #[arg(long, value_enum)]
        only: Option<init::Only>,
        /// Replace every existing key, certificate and the local CA (asks first; see --yes).
        #[arg(long)]
        force: bool,
        /// Replace without asking (what --only / --force name).
        #[arg(long, short = 'y')]
        yes: bool,
        /// With `--only client` or `--only dpop`: generate the key on the PKCS#11 token this
        /// URI names (RFC 7512; sensitive, never extractable) instead of in a file, then use
        /// the URI as the `key`.
        #[arg(long, value_name = "URI", requires = "only")]
        pkcs11: Option<String>,
    },
    /// Send one token request through the route's pipeline, in-process, and explain it:
    /// what was sent, what the AS answered, and hints when it said no. Exits 0 on a 2xx.
    #[command(
        after_help = "Examples:\n  tokenrelay token --route demo            # client_credentials, explained\n  tokenrelay token --route okta --param scope=api.read --json\n  tokenrelay token --route demo --show-token   # print the tokens too"
    )]
    Token {
        /// The route to use.
        #[arg(long)]
        route: String,
        /// A form parameter to send, `name=value` (repeatable). Default:
        /// `grant_type=client_credentials`.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Print the tokens the AS issued (hidden by default).
        #[arg(long)]
        show_token: bool,
        /// Print the exchange record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the environment that makes common runtimes trust the local CA and use the
    /// forward proxy, as shell exports: `eval "$(tokenrelay ca)"`. Creates the CA when missing
    /// and writes a merged bundle (system roots + local CA) beside it.
    #[command(
        after_help = "Examples:\n  eval \"$(tokenrelay ca)\"                  # trust the local CA, use the forward proxy\n  tokenrelay ca --shell fish | source\n  tokenrelay ca --shell dotenv > .env.tokenrelay\n  tokenrelay ca --regenerate               # after adding hosts to a route"
    )]
    Ca {
        /// Syntax of the output.
        #[arg(long, value_enum, default_value = "posix")]
        shell: ca::Shell,
        /// Make a new CA, name-constrained to the hosts the routes claim now (after adding a
        /// host to `hosts`). Everything that trusted the old CA must trust the new one.
        #[arg(long)]
        regenerate: bool,
    },
    /// Ask the running proxy to send exchange ID again through its current config (after a
    /// save), and explain the new exchange like `token` does. Exits 0 when the AS said 2xx.
    #[command(
        after_help = "Examples:\n  tokenrelay replay 7                      # exchange 7 again, through the saved config\n  tokenrelay replay 7 --json               # the new exchange record as JSON\n  curl -s -X POST http://127.0.0.1:8787/.tokenrelay/exchanges/7/replay   # the same, as JSON"
    )]
    Replay {
        /// The exchange id (as the inspector, the log or `/.tokenrelay/exchanges` show it).
        id: u64,
        /// The proxy's base URL (default: `http://` + the config's `[proxy] listen`).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Print the new exchange record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Examples:\n  tokenrelay completions bash > ~/.local/share/bash-completion/completions/tokenrelay\n  tokenrelay completions zsh > \"${fpath[1]}/_tokenrelay\"\n  tokenrelay completions fish > ~/.config/fish/completions/tokenrelay.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `tokenrelay man > tokenrelay.1; man ./tokenrelay.1`.
    #[command(
        after_help = "Examples:\n  tokenrelay man > tokenrelay.1 && man ./tokenrelay.1\n  tokenrelay man | gzip > /usr/local/share/man/man1/tokenrelay.1.gz"
    )]
    Man,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::config::interpolate::set_overrides(cli.set.clone());
    init_tracing(cli.log_format, i16::from(cli.verbose) - i16::from(cli.quiet));
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config),
        Command::Check { offline, json } => check(&cli.config, offline, json),
        Command::Jwks { route, format } => jwks(&cli.config, route.as_deref(), format),
        Command::Init { pkcs11: Some(uri), only, .. } => init_on_token(&cli.config, only, &uri),
        Command::Init { template, only, force, yes, pkcs11: None } => {
            init::run(&cli.config, template, only, force, yes)
        }
        Command::Ca { shell, regenerate } => ca::run(&cli.config, shell, regenerate),
        Command::Token { route, params, show_token, json } => {
            token::run(&cli.config, &route, &params, show_token, json)
        }
        Command::Replay { id, url, json } => replay::run(&cli.config, id, url.as_deref(), json),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut completion_command(&cli.config), "tokenrelay", &mut script);
            out(&String::from_utf8_lossy(&script));
            Ok(())
        }
        Command::Man => man(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// `init --only client|dpop --pkcs11 URI`: a key pair generated on the token, with the alg
/// of the config's first route that names the URI (default ES256).
fn init_on_token(config: &Path, only: Option<init::Only>, uri: &str) -> anyhow::Result<()> {
    use crate::jose::{pkcs11, Alg};
    let dir = config.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let alg = crate::config::load(config)
        .ok()
        .and_then(|c| {
            c.routes.iter().find_map(|r| match only {
                Some(init::Only::Dpop) => r.dpop.as_ref().map(|d| d.alg),
                _ => r.client.as_ref().filter(|c| c.key.is_some()).map(|c| c.alg),
            })
        })
        .unwrap_or(Alg::ES256);
    if !matches!(only, Some(init::Only::Client | init::Only::Dpop)) {
        anyhow::bail!("--pkcs11 generates a client or DPoP key: use it with --only client or --only dpop");
    }
    let parsed = pkcs11::Pkcs11Uri::parse(uri, dir)?;
    pkcs11::generate(&parsed, alg)?;
    let key = crate::jose::SigningKey::pkcs11(uri, alg, dir)?;
    eprintln!("created a {alg} key on {} (sensitive, not extractable)", parsed.describe());
    eprintln!("use it in proxy.toml as key = \"{uri}\"; its public JWK (kid = RFC 7638 thumbprint):");
    let mut jwk = key.public_jwk().clone();
    jwk.insert("kid".into(), key.thumbprint().into());
    out(&format!("{}\n", serde_json::to_string_pretty(&json!({ "keys": [jwk] }))?));
    Ok(())
}

/// Writes `text` to stdout; a closed stdout (`tokenrelay jwks | head -1`) is not an error.
pub(crate) fn out(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// `e` and its causes joined by ": ", leaving out a cause whose text is already in the
/// message (an error that prints its source and also returns it from `source()`), so an OS
/// error shows once.
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The command line for completion scripts: `--route` offers the route names of the config
/// (when it loads; regenerate the script after adding a route).
fn completion_command(config: &Path) -> clap::Command {
    use clap::CommandFactory as _;
    let names: Vec<String> =
        crate::config::load(config).map(|c| c.routes.iter().map(|r| r.name.clone()).collect()).unwrap_or_default();
    let mut cmd = Cli::command();
    if names.is_empty() {
        return cmd;
    }
    // The script is generated once per process: leaking the few names is what clap's
    // `&'static str` values ask for without its `string` feature.
    let names: Vec<&'static str> = names.into_iter().map(|n| &*Box::leak(n.into_boxed_str())).collect();
    for sub in ["token", "jwks"] {
        let names = names.clone();
        cmd = cmd.mut_subcommand(sub, |c| {
            c.mut_arg("route", |a| a.value_parser(clap::builder::PossibleValuesParser::new(names)))
        });
    }
    cmd
}

fn man() -> anyhow::Result<()> {
    use clap::CommandFactory as _;
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out).context("cannot render the man page")?;
    self::out(&String::from_utf8_lossy(&out));
    self::out(MAN_CONFIG);
    Ok(())
}

/// Values of `route` that are placeholders from a starter template: a client id of
/// `my-client`, or a URL on an example domain (RFC 2606 §3: `example.com`, `.net`, `.org`,
/// and the `.example` TLD), as `(key, value)`.
fn placeholders(route: &crate::config::RouteConfig) -> Vec<(String, String)> {
    let example = |url: &str| {
        url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_ascii_lowercase)).is_some_and(|h| {
            ["example.com", "example.net", "example.org"].iter().any(|d| h == *d || h.ends_with(&format!(".{d}")))
                || h.ends_with(".example")
        })
    };
    let name = &route.name;
    let mut out = Vec::new();
    if let Some(issuer) = route.issuer.as_deref().filter(|i| example(i)) {
        out.push((format!("routes.{name}.issuer"), issuer.to_string()));
    } else if example(&route.upstream.url("")) {
        out.push((format!("routes.{name}.upstream"), route.upstream.url("")));
    }
    if let Some(id) = route.client.as_ref().map(|c| c.id.as_str()).filter(|id| *id == "my-client") {
        out.push((format!("routes.{name}.client.id"), id.to_string()));
    }
    for (table, map) in [("add", &route.params.add), ("set", &route.params.set)] {
        for (k, v) in map.iter().filter(|(_, v)| example(v)) {
            out.push((format!("routes.{name}.params.{table}.{k}"), v.clone()));
        }
    }
    out
}

/// `jwks --format pem`: the route's client public key as PEM.
fn public_pem(config: &Path, only: Option<&str>) -> anyhow::Result<()> {
    let snapshot = crate::snapshot::load(config, BuildOptions::default())?;
    let route = match (only, snapshot.routes.len()) {
        (Some(name), _) => snapshot.routes.iter().find(|r| r.cfg.name == name),
        (None, 1) => snapshot.routes.first(),
        (None, _) => anyhow::bail!("{} has several routes: pick one with --route NAME", config.display()),
    }
    .with_context(|| format!("no route named {:?} in {}", only.unwrap_or_default(), config.display()))?;
    let Credential::Key(key) = &route.credential else {
        anyhow::bail!("route {:?} signs with no private key: there is no public key to register", route.cfg.name);
    };
    eprintln!(
        "the public key to register for route {:?} (client id {:?}):",
        route.cfg.name,
        route.cfg.client.as_ref().map(|c| c.id.as_str()).unwrap_or_default()
    );
    out(&String::from_utf8_lossy(&key.public_pem()));
    Ok(())
}

/// The man page's CONFIGURATION section: the `proxy.toml` tables and their keys (README.md's
/// "Config walkthrough" has every detail).
const MAN_CONFIG: &str = r#".SH CONFIGURATION
\fBproxy.toml\fR (\fB--config\fR, default ./proxy.toml) applies live when saved. Paths are relative to its folder; \fB${VAR}\fR expands environment variables.
.TP
\fB[proxy]\fR
\fBlisten\fR (reverse mode, 127.0.0.1:8787), \fBlisten_tls\fR, \fBforward\fR (HTTPS_PROXY), \fBunknown_hosts\fR (tunnel | refuse), \fBca_cert\fR, \fBca_key\fR, \fBallow_remote\fR, \fBallow_origins\fR, \fBmax_connections\fR, \fBmax_body\fR, \fBexchanges\fR (records kept for the inspector).
.TP
\fB[demo_as]\fR
\fBlisten\fR, \fBtls\fR, \fBdpop_nonce\fR, \fBuser\fR, \fBredirect_uris\fR: the built-in verifying AS, started by \fBrun\fR.
.TP
\fB[routes.NAME]\fR
\fBprefix\fR, \fBupstream\fR, \fBissuer\fR (discovery; aud), \fBhosts\fR (forward mode), \fBtrust\fR, \fBtimeout\fR, \fBendpoints\fR, \fBpreset\fR (keycloak | okta | entra | auth0 | fapi2), \fBrewrite_metadata\fR.
.TP
\fB[routes.NAME.client]\fR
\fBid\fR, \fBauth\fR (none | client_secret_basic | client_secret_post | client_secret_jwt | private_key_jwt | tls_client_auth | self_signed_tls_client_auth), \fBkey\fR, \fBsecret\fR / \fBsecret_env\fR, \fBalg\fR, \fBaudience\fR (issuer | token_endpoint | endpoint | URL), \fBlifetime\fR, \fBkid\fR, \fBcreate\fR.
.TP
\fB[routes.NAME.dpop]\fR
\fBkey\fR, \fBalg\fR, \fBcreate\fR, \fBupgrade_bearer\fR, \fBrequire_bound\fR, \fBtoken_type\fR ("Bearer": for libraries that refuse DPoP; with upgrade_bearer).
.TP
\fB[routes.NAME.mtls]\fR
\fBcert\fR (leaf first, then intermediates), \fBkey\fR.
.TP
\fB[routes.NAME.headers]\fR, \fB[routes.NAME.params]\fR
\fBset\fR, \fBremove\fR; params also \fBadd\fR (only when the app sent none).
.SH LOCAL ENDPOINTS
On the reverse listener, loopback only: \fB/.tokenrelay/\fR (inspector), \fB/.tokenrelay/exchanges\fR, \fB/.tokenrelay/exchanges/ID\fR, \fBPOST /.tokenrelay/exchanges/ID/replay\fR, \fB/.tokenrelay/exchanges/A/diff/B\fR, \fB/.tokenrelay/exchanges.har\fR, \fB/.tokenrelay/reloads\fR, \fB/.tokenrelay/status\fR, \fB/.tokenrelay/jwks/ROUTE\fR.
"#;

/// The default log filter for `verbosity` (-v +1, -q -1 each): info by default.
fn default_level(verbosity: i16) -> &'static str {
    match verbosity {
        i16::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    }
}

/// Colours only on a terminal and never with `NO_COLOR` set to anything non-empty
/// (no-color.org).
fn use_ansi(no_color: Option<&std::ffi::OsStr>, terminal: bool) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_tracing(format: LogFormat, verbosity: i16) {
    // RUST_LOG, when set, wins over -v/-q.
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level(verbosity)));
    // notify logs every inotify event at trace level before the reloader filters it: with a
    // log file in a watched folder (`tokenrelay -vv run 2> err.log` beside proxy.toml) each
    // line would be an event that writes a line. The reloader logs the relevant ones itself.
    // RUST_LOG naming notify still wins.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("notify")) {
        if let Ok(quiet) = "notify=warn".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
        LogFormat::Text => builder
            .with_ansi(use_ansi(std::env::var_os("NO_COLOR").as_deref(), std::io::stderr().is_terminal()))
            .try_init(),
    };
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

fn run(config: &Path) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let result = runtime.block_on(async {
        // Before anything binds: a SIGTERM sent as soon as the address is printed must already
        // mean "stop gracefully", not the default "die at once".
        let mut signals = StopSignals::new();
        let running = crate::app::start(crate::app::Options::new(config)).await?;
        {
            // A closed stdout (`tokenrelay | head -1`) must not stop the proxy: ignore write errors.
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            match running.curl_line() {
                Some(line) => {
                    let _ = writeln!(out, "tokenrelay is listening on http://{}; get a token through it with:", running.addr);
                    let _ = writeln!(out, "{line}");
                }
                None => {
                    let _ = writeln!(out, "tokenrelay is listening on http://{}", running.addr);
                }
            }
            let _ = write!(out, "{}", banner(&running));
            let _ = out.flush();
        }
        wait_for_stop(&mut signals).await;
        tracing::info!(
            "shutting down: no new connections; waiting up to {:?} for requests in flight (signal again to stop now)",
            crate::server::SHUTDOWN_GRACE
        );
        tokio::select! {
            _ = running.stop() => {
                tracing::info!("stopped");
                Ok(())
            }
            _ = wait_for_stop(&mut signals) => anyhow::bail!("stopped by a second signal without waiting for requests in flight"),
        }
    });
    // Work still on the blocking pool (a reload hashing files) must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// What is running, for the start-up banner: every listener, the forward proxy's
/// `HTTPS_PROXY` value, each route with its keys, the demo AS, the inspector.
fn banner(running: &crate::app::Running) -> String {
    use std::fmt::Write as _;
    let snapshot = running.snapshot();
    let c = &snapshot.config;
    let mut out = String::new();
    let _ = writeln!(out, "  reverse    http://{}/<route prefix>/...", running.addr);
    if let Some(a) = running.tls_addr {
        let _ = writeln!(out, "  https      https://{a}/<route prefix>/...  (leaf from the local CA: `tokenrelay ca`)");
    }
    if let Some(a) = running.forward_addr {
        let _ = writeln!(
            out,
            "  forward    HTTPS_PROXY=http://{a} HTTP_PROXY=http://{a}  (`eval \"$(tokenrelay ca)\"` sets both)"
        );
    }
    if let Some(a) = running.demo_as_addr {
        let scheme = if c.demo_as.as_ref().is_some_and(|d| d.tls) { "https" } else { "http" };
        let _ = writeln!(out, "  demo AS    {scheme}://{a}");
    }
    let _ = writeln!(out, "  inspector  http://{}/.tokenrelay/", running.addr);
    let _ = writeln!(out, "  who        {}", c.allow_users.describe());
    for r in &snapshot.routes {
        let cfg = &r.cfg;
        let mut what = Vec::new();
        if let Some(client) = &cfg.client {
            let mut auth = format!("{} as {:?}", client.auth.as_str(), client.id);
            if let crate::snapshot::Credential::Key(k) = &r.credential {
                let kid = client.kid.clone().unwrap_or_else(|| k.thumbprint().to_string());
                let _ = write!(auth, " kid {kid}");
            }
            what.push(auth);
        }
        if let Some(k) = &r.dpop_key {
            what.push(format!("dpop jkt {}", k.thumbprint()));
        }
        if let Some(t) = &r.cert_thumbprint {
            what.push(format!("mtls x5t#S256 {t}"));
        }
        let hosts = if c.forward.is_some() {
            format!(" (hosts {})", cfg.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(", "))
        } else {
            String::new()
        };
        let what = if what.is_empty() { "relay only".to_string() } else { what.join(", ") };
        let _ = writeln!(out, "  route {}  {}{hosts} -> {}  {what}", cfg.name, cfg.prefix, cfg.upstream.url(""));
    }
    let watched = crate::reload::named_files(c).iter().filter(|f| f.exists()).count();
    let _ = writeln!(out, "  watching {watched} files for changes (proxy.toml and the files it names); Ctrl-C stops");
    out
}

/// SIGINT (Ctrl-C) and SIGTERM, registered once for the life of `run`.
struct StopSignals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    /// Registers the handlers (inside the runtime). Where that fails, [`wait_for_stop`]
    /// falls back to Ctrl-C alone.
    fn new() -> StopSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let unix = signal(SignalKind::interrupt()).ok().zip(signal(SignalKind::terminate()).ok());
            StopSignals { unix }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }
}

/// Resolves at the next SIGINT or SIGTERM.
async fn wait_for_stop(signals: &mut StopSignals) {
    #[cfg(unix)]
    if let Some((int, term)) = signals.unix.as_mut() {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        return;
    }
    #[cfg(not(unix))]
    let _ = signals;
    let _ = tokio::signal::ctrl_c().await;
}

fn check(config: &Path, offline: bool, as_json: bool) -> anyhow::Result<()> {
    let snapshot = crate::snapshot::load(config, BuildOptions::default())?;
    let discovered = if offline { Vec::new() } else { runtime()?.block_on(discover_all(&snapshot)) };
    let mut report = check_report(&snapshot, &discovered, offline);
    add_assertions(&mut report, &snapshot)?;
    scrub(&mut report, &snapshot.config.env_secrets);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_check(&report);
    }
    let mismatches: Vec<&str> = report["errors"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !mismatches.is_empty() {
        anyhow::bail!("{}", mismatches.join("\n"));
    }
    Ok(())
}

/// Each route whose client assertion is made elsewhere: its source and what the current one
/// says (`iss`, `sub`, `aud`, `exp`; the signature is the AS's to check). A source that gives
/// no usable assertion is an error.
fn add_assertions(report: &mut Value, snapshot: &crate::snapshot::Snapshot) -> anyhow::Result<()> {
    let sources: Vec<_> = snapshot
        .routes
        .iter()
        .filter_map(|r| match &r.credential {
            Credential::Assertion(a) => Some((r.cfg.name.clone(), a.clone())),
            _ => None,
        })
        .collect();
    if sources.is_empty() {
        return Ok(());
    }
    let fetched = runtime()?.block_on(async {
        let mut out = Vec::new();
        for (name, a) in sources {
            out.push((name, a.source().to_string(), a.current().await));
        }
        out
    });
    for (name, source, result) in fetched {
        let mut entry = json!({ "source": source });
        match result {
            Ok(f) => entry["claims"] = Value::Object(f.summary()),
            Err(e) => {
                if let Some(errors) = report["errors"].as_array_mut() {
                    errors.push(e.to_string().into());
                }
            }
        }
        if let Some(route) = report["routes"].as_array_mut().and_then(|rs| rs.iter_mut().find(|r| r["name"] == name)) {
            route["client"]["assertion"] = entry;
        }
    }
    Ok(())
}

/// Every string in `report` with the secrets taken from the environment replaced by
/// `[redacted]` (values shorter than 4 characters are left: they would garble the output and
/// protect nothing).
fn scrub(report: &mut Value, secrets: &[crate::redact::Secret]) {
    match report {
        Value::String(s) => {
            for secret in secrets.iter().map(|s| s.expose()).filter(|s| s.len() >= 4) {
                if s.contains(secret) {
                    *s = s.replace(secret, "[redacted]");
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| scrub(v, secrets)),
        Value::Object(map) => map.values_mut().for_each(|v| scrub(v, secrets)),
        _ => {}
    }
}

type Discovered = Vec<(String, Result<crate::discovery::Metadata, crate::discovery::DiscoveryError>)>;

/// What `check` found, as the JSON `--json` prints (the text output is rendered from it).
fn check_report(snapshot: &crate::snapshot::Snapshot, discovered: &Discovered, offline: bool) -> Value {
    let c = &snapshot.config;
    let mut warnings: Vec<String> = snapshot.warnings.clone();
    warnings.extend(c.exposure_warning());
    warnings.extend(c.allow_users.warning());
    if snapshot.routes.is_empty() {
        warnings.push(
            "no routes: tokenrelay relays nothing (add a [routes.NAME] table; `tokenrelay init` in an empty folder writes a starter)"
                .into(),
        );
    }
    if let Some(demo) = c.demo_as.as_ref().filter(|d| d.tls) {
        // Every field that still spells the demo AS over http:// changes together (and only
        // those: a field already on https:// is not named again).
        let demo_url = format!("http://{}", demo.listen);
        let demo_url = demo_url.as_str();
        for r in &snapshot.routes {
            let urls = crate::upstream::RouteUrls::new(
                &r.cfg.name,
                r.cfg.upstream.url(""),
                r.cfg.issuer.clone(),
                !r.cfg.trust.is_empty(),
            );
            let mut changes = urls.https_changes(demo_url);
            for change in urls.https_changes(&format!("http://localhost:{}", demo.listen.port())) {
                if !changes.iter().any(|(field, _)| *field == change.0) {
                    changes.push(change);
                }
            }
            if changes.is_empty() {
                continue;
            }
            let named: Vec<&str> = changes.iter().map(|(field, _)| *field).collect();
            warnings.push(format!(
                "route {:?}: {} {} http:// but [demo_as] tls = true: use {}",
                r.cfg.name,
                named.join(" and "),
                if named.len() == 1 { "is" } else { "are" },
                crate::upstream::https_advice(&r.cfg.name, &changes, Some("\"certs/demo-as-ca.pem\""))
            ));
        }
    }
    // Values a starter config asks the user to replace (`# <- yours`), left unedited.
    for r in &snapshot.routes {
        warnings.extend(placeholders(&r.cfg).into_iter().map(|(key, value)| {
            format!(
                "route {:?}: {key} = {value:?} is the starter config's placeholder: replace it with your AS's (marked `# <- yours` in {})",
                r.cfg.name,
                c.path.display()
            )
        }));
    }
    // Hosts claimed after the local CA was made are outside its name constraints.
    if c.forward.is_some() && c.ca_cert.exists() && c.ca_key.exists() {
        if let Ok(ca) = crate::local_ca::LocalCa::load(&c.ca_cert, &c.ca_key) {
            for r in &snapshot.routes {
                for entry in &r.cfg.hosts {
                    if let Some(why) = ca.refusal(&entry.host) {
                        warnings.push(format!(
                            "route {:?}: forward mode cannot intercept {}: {why}",
                            r.cfg.name, entry.host
                        ));
                    }
                }
            }
        }
    }
    let mut errors = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut routes = Vec::new();
    for r in &snapshot.routes {
        let cfg = &r.cfg;
        let found = discovered.iter().find(|(name, _)| *name == cfg.name).map(|(_, result)| result);
        let meta = match found {
            Some(Ok(meta)) => Some(meta),
            Some(Err(e)) if e.is_mismatch() => {
                errors.push(format!("route {:?}: {e}", cfg.name));
                None
            }
            // The built-in demo AS runs only inside `tokenrelay run` (and `token`): nothing
            // to warn about when it is not running yet.
            Some(Err(_)) if init::points_at_demo(c, cfg) => {
                notes.push(format!(
                    "route {:?}: the demo AS is not running; `tokenrelay run` starts it (its metadata is checked then)",
                    cfg.name
                ));
                None
            }
            Some(Err(e)) => {
                warnings.push(format!(
                    "route {:?}: AS metadata unavailable ({e}); the proxy will use the configured endpoints and retry discovery in the background",
                    cfg.name
                ));
                None
            }
            None => None,
        };
        if let Some(meta) = meta {
            warnings.extend(r.metadata_warnings(meta).into_iter().map(|w| format!("route {:?}: {w}", cfg.name)));
        }
        let metadata = match (&cfg.issuer, found) {
            (None, _) => Value::Null,
            (Some(_), None) if offline => "not fetched (--offline)".into(),
            (Some(_), Some(Ok(_))) => "found".into(),
            (Some(_), _) => "unavailable".into(),
        };
        let signed: Vec<Value> = if cfg.client.is_some() || r.dpop_key.is_some() {
            r.signed_endpoints(meta)
                .list
                .into_iter()
                .map(|e| {
                    let mut v = json!({
                        "url": e.url.to_string(),
                        "from": e.source.to_string(),
                        "proxy_path": format!("{}{}", cfg.prefix, e.app_path),
                        "origin": e.url.origin(),
                    });
                    if e.send != e.url {
                        v["sent_to"] = e.send.to_string().into();
                    }
                    v
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut route = json!({
            "name": cfg.name,
            "prefix": cfg.prefix,
            "upstream": cfg.upstream.url(""),
            "issuer": cfg.issuer,
            "metadata": metadata,
            "preset": cfg.preset.map(|p| p.as_str()),
            "signed_endpoints": signed,
        });
        if let Some(client) = &cfg.client {
            route["client"] = json!({ "id": client.id, "auth": client.auth.as_str() });
        }
        if let Credential::Key(k) = &r.credential {
            route["client"]["alg"] = k.alg().as_str().into();
            route["client"]["kid"] =
                cfg.client.as_ref().and_then(|c| c.kid.clone()).unwrap_or_else(|| k.thumbprint().to_string()).into();
        }
        if let Some(k) = &r.dpop_key {
            route["dpop"] = json!({ "alg": k.alg().as_str(), "jkt": k.thumbprint() });
        }
        if let Some(t) = &r.cert_thumbprint {
            route["mtls"] = json!({ "x5t#S256": t });
        }
        if c.forward.is_some() {
            route["hosts"] = cfg.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>().into();
        }
        if !cfg.trust.is_empty() {
            route["trust"] = cfg.trust.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().into();
        }
        let h = &cfg.headers;
        if !h.set.is_empty() || !h.remove.is_empty() {
            // Names only: configured header values may be API keys.
            route["headers"] = json!({
                "set": h.set.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>(),
                "remove": h.remove.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            });
        }
        let p = &cfg.params;
        if p.names().next().is_some() {
            route["params"] = json!({ "add": p.add, "set": p.set, "remove": p.remove });
        }
        routes.push(route);
    }
    json!({
        "config": c.path.display().to_string(),
        "listen": format!("http://{}", c.listen),
        "listen_tls": c.listen_tls.map(|a| format!("https://{a}")),
        "forward": c.forward.map(|a| format!("http://{a}")),
        "demo_as": c.demo_as.as_ref().map(|d| format!("{}://{}", if d.tls { "https" } else { "http" }, d.listen)),
        "who_may_connect": c.allow_users.describe(),
        "routes": routes,
        "warnings": warnings,
        "notes": notes,
        "errors": errors,
    })
}

fn print_check(report: &Value) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    println!("config {} is valid", text(&report["config"]));
    for (key, label) in
        [("listen", "listen"), ("listen_tls", "listen tls"), ("forward", "forward"), ("demo_as", "demo AS")]
    {
        if let Some(v) = report[key].as_str() {
            println!("{label} {v}");
        }
    }
    println!("who may connect: {}", text(&report["who_may_connect"]));
    for r in report["routes"].as_array().into_iter().flatten() {
        let auth = match r.get("client") {
            Some(c) => format!("{} as {:?}", text(&c["auth"]), text(&c["id"])),
            None => "no client auth".into(),
        };
        println!("route {:?}: {} -> {} ({auth})", text(&r["name"]), text(&r["prefix"]), text(&r["upstream"]));
        if let Some(p) = r["preset"].as_str() {
            println!("  preset {p}");
        }
        if let Some(issuer) = r["issuer"].as_str() {
            println!("  issuer {issuer}: metadata {}", text(&r["metadata"]));
        }
        for e in r["signed_endpoints"].as_array().into_iter().flatten() {
            let via = e["proxy_path"].as_str().map(|p| format!(" (app calls {p})")).unwrap_or_default();
            let alias = e["sent_to"].as_str().map(|a| format!(", sent to the mTLS alias {a}")).unwrap_or_default();
            println!("  signs {} [{}]{via}{alias}", text(&e["url"]), text(&e["from"]));
        }
        if let Some(c) = r.get("client").filter(|c| c.get("kid").is_some()) {
            println!("  client key: {} kid {}", text(&c["alg"]), text(&c["kid"]));
        }
        if let Some(a) = r.get("client").and_then(|c| c.get("assertion")) {
            let claims = &a["claims"];
            match claims.as_object() {
                Some(_) => println!(
                    "  client assertion from {}: iss {} sub {} aud {} exp {}",
                    text(&a["source"]),
                    claims["iss"],
                    claims["sub"],
                    claims["aud"],
                    claims["exp"]
                ),
                None => println!("  client assertion from {}: none usable (see the error below)", text(&a["source"])),
            }
        }
        if let Some(d) = r.get("dpop") {
            println!("  dpop key: {} jkt {}", text(&d["alg"]), text(&d["jkt"]));
        }
        if let Some(m) = r.get("mtls") {
            println!("  mtls cert x5t#S256 {}", text(&m["x5t#S256"]));
        }
        let list =
            |v: &Value| v.as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(", ");
        if let Some(h) = r.get("hosts") {
            println!("  forward mode intercepts {}", list(h));
        }
        if let Some(t) = r.get("trust") {
            println!("  trusts {}", list(t));
        }
        if let Some(h) = r.get("headers") {
            println!("  headers: set [{}] remove [{}]", list(&h["set"]), list(&h["remove"]));
        }
        if let Some(p) = r.get("params") {
            println!("  params: add {} set {} remove [{}]", p["add"], p["set"], list(&p["remove"]));
        }
    }
    for n in report["notes"].as_array().into_iter().flatten() {
        println!("note: {}", text(n));
    }
    for w in report["warnings"].as_array().into_iter().flatten() {
        println!("warning: {}", text(w));
    }
}

/// Fetches the metadata of every route with an issuer, all at once.
async fn discover_all(snapshot: &crate::snapshot::Snapshot) -> Discovered {
    let mut tasks = tokio::task::JoinSet::new();
    for r in &snapshot.routes {
        let Some(issuer) = r.cfg.issuer.clone() else { continue };
        let (client, timeout, name) = (r.client.clone(), r.cfg.timeout, r.cfg.name.clone());
        let urls = crate::upstream::RouteUrls::new(
            &name,
            r.cfg.upstream.url(""),
            r.cfg.issuer.clone(),
            !r.cfg.trust.is_empty(),
        );
        tasks.spawn(async move {
            let result = crate::discovery::fetch(&client, &issuer, timeout, &urls).await;
            (name, result)
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(pair) = joined {
            out.push(pair);
        }
    }
    out
}

/// The JWKS and registration facts for each route (RFC 7517, RFC 8705 §3.1, RFC 9449 §6).
pub fn jwks_document(config: &Path, only: Option<&str>) -> anyhow::Result<Value> {
    let snapshot = crate::snapshot::load(config, BuildOptions::default())?;
    let mut routes = serde_json::Map::new();
    for r in &snapshot.routes {
        if only.is_some_and(|n| n != r.cfg.name) {
            continue;
        }
        if let Credential::Key(k) = &r.credential {
            if r.dpop_key.as_ref().is_some_and(|d| d.thumbprint() == k.thumbprint()) {
                // A DPoP key never goes into a client-authentication JWKS.
                anyhow::bail!(
                    "route {:?}: client.key and dpop.key are the same key pair; give DPoP its own key (registering it would let a proof key authenticate the client)",
                    r.cfg.name
                );
            }
        }
        let mut entry = json!({ "jwks": { "keys": r.client_jwks() } });
        if let Some(c) = &r.cfg.client {
            entry["client_id"] = c.id.clone().into();
            entry["token_endpoint_auth_method"] = c.auth.as_str().into();
            if let Some(dn) = r
                .cert_der
                .as_deref()
                .filter(|_| c.auth == AuthMethod::TlsClientAuth || c.auth == AuthMethod::SelfSignedTlsClientAuth)
                .and_then(crate::pki::subject_dn)
            {
                entry["tls_client_auth_subject_dn"] = dn.into();
            }
        }
        if let Some(t) = &r.cert_thumbprint {
            entry["x5t#S256"] = t.clone().into();
        }
        if let Some(k) = &r.dpop_key {
            entry["dpop_jkt"] = k.thumbprint().into();
        }
        routes.insert(r.cfg.name.clone(), entry);
    }
    if let Some(name) = only {
        if routes.is_empty() {
            anyhow::bail!("no route named {name:?} in {}", config.display());
        }
    }
    Ok(json!({ "routes": routes }))
}

fn jwks(config: &Path, only: Option<&str>, format: JwksFormat) -> anyhow::Result<()> {
    if format == JwksFormat::Pem {
        return public_pem(config, only);
    }
    let doc = jwks_document(config, only)?;
    if format == JwksFormat::Registration {
        eprintln!("Register each route's \"jwks\" (and x5c / tls_client_auth_subject_dn for mTLS clients) at your AS.");
        out(&format!("{}\n", serde_json::to_string_pretty(&doc)?));
        return Ok(());
    }
    let routes = doc["routes"].as_object().cloned().unwrap_or_default();
    let (name, entry) = match (only, routes.len()) {
        (_, 1) => routes.into_iter().next().context("no route")?,
        (None, 0) => anyhow::bail!("{} has no routes: nothing to register", config.display()),
        _ => {
            let mut names: Vec<&str> = routes.keys().map(String::as_str).collect();
            names.sort_unstable();
            anyhow::bail!(
                "{} has {} routes ({}): pick one with --route NAME (or --format registration for all)",
                config.display(),
                names.len(),
                names.join(", ")
            )
        }
    };
    let keys = entry["jwks"]["keys"].as_array().cloned().unwrap_or_default();
    if keys.is_empty() {
        let why = match (entry.get("token_endpoint_auth_method").and_then(Value::as_str), entry.get("dpop_jkt")) {
            (None, Some(_)) => format!(
                "route {name:?} has no client authentication, only DPoP: a DPoP key is never registered as a client key (the AS binds tokens to the key in each proof, RFC 9449), so there is nothing to register"
            ),
            (None, None) => format!("route {name:?} has no client authentication: nothing to register"),
            (Some("tls_client_auth"), _) => format!(
                "route {name:?} uses tls_client_auth: the AS registers the certificate's subject, not a key; see `tokenrelay jwks --route {name} --format registration` (tls_client_auth_subject_dn)"
            ),
            (Some(method), _) => format!(
                "route {name:?} authenticates with {method}, which uses no public key: nothing to register as a JWKS"
            ),
        };
        eprintln!("{why}");
        std::process::exit(1);
    }
    eprintln!("the JWKS to register for route {name:?} (client id {}):", entry["client_id"]);
    out(&format!("{}\n", serde_json::to_string_pretty(&json!({ "keys": keys }))?));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_and_verbosity() {
        assert!(use_ansi(None, true));
        assert!(!use_ansi(Some(std::ffi::OsStr::new("1")), true));
        assert!(use_ansi(Some(std::ffi::OsStr::new("")), true), "no-color.org: set and non-empty");
        assert!(!use_ansi(None, false));
        assert_eq!(default_level(0), "info");
        assert_eq!(default_level(-1), "warn");
        assert_eq!(default_level(-5), "error");
        assert_eq!(default_level(2), "trace");
    }
}
