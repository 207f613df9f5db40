//! The command line: `run` (default), `check`, `jwks`, `init`, `ca` ([`ca`]). `anyhow` lives
//! here only.

mod ca;
mod token;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::config::AuthMethod;
use crate::snapshot::{BuildOptions, Credential};

#[derive(Debug, Parser)]
#[command(
    name = "tokenrelay",
    version,
    about = "Local proxy that signs OAuth 2.0 token requests (private_key_jwt, DPoP, mTLS)"
)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, default_value = "proxy.toml", env = "TOKENRELAY_CONFIG")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the config, load every key and certificate, fetch each issuer's metadata,
    /// print the resolved routes. Binds no listener; exits 1 on any error.
    Check {
        /// Skip fetching AS metadata (RFC 8414 / OIDC discovery) for routes with an issuer.
        #[arg(long)]
        offline: bool,
        /// Print the result as one JSON document (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Print the public JWKS to register at the AS (JSON on stdout).
    Jwks {
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
    },
    /// Create the keys and certificates the config names and are missing.
    Init {
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Send one token request through the route's pipeline, in-process, and explain it:
    /// what was sent, what the AS answered, and hints when it said no. Exits 0 on a 2xx.
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
    Ca,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config),
        Command::Check { offline, json } => check(&cli.config, offline, json),
        Command::Jwks { route } => jwks(&cli.config, route.as_deref()),
        Command::Init { force } => init(&cli.config, force),
        Command::Ca => ca::run(&cli.config),
        Command::Token { route, params, show_token, json } => {
            token::run(&cli.config, &route, &params, show_token, json)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
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
        if let Some(line) = running.curl_line() {
            // A closed stdout (`tokenrelay | head -1`) must not stop the proxy: ignore write errors.
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "tokenrelay is listening on http://{}; get a token through it with:", running.addr);
            let _ = writeln!(out, "{line}");
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
    let report = check_report(&snapshot, &discovered, offline);
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

type Discovered = Vec<(String, Result<crate::discovery::Metadata, crate::discovery::DiscoveryError>)>;

/// What `check` found, as the JSON `--json` prints (the text output is rendered from it).
fn check_report(snapshot: &crate::snapshot::Snapshot, discovered: &Discovered, offline: bool) -> Value {
    let c = &snapshot.config;
    let mut warnings: Vec<String> = snapshot.warnings.clone();
    warnings.extend(c.exposure_warning());
    let mut errors = Vec::new();
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
                .into_iter()
                .map(|e| json!({ "url": e.url, "from": e.source.to_string(), "proxy_path": cfg.proxy_path(&e.url) }))
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
        routes.push(route);
    }
    json!({
        "config": c.path.display().to_string(),
        "listen": format!("http://{}", c.listen),
        "listen_tls": c.listen_tls.map(|a| format!("https://{a}")),
        "forward": c.forward.map(|a| format!("http://{a}")),
        "demo_as": c.demo_as.as_ref().map(|d| format!("{}://{}", if d.tls { "https" } else { "http" }, d.listen)),
        "routes": routes,
        "warnings": warnings,
        "errors": errors,
    })
}

fn print_check(report: &Value) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    println!("config {} is valid", text(&report["config"]));
    for key in ["listen", "listen_tls", "forward", "demo_as"] {
        if let Some(v) = report[key].as_str() {
            println!("{} {v}", key.replace('_', " "));
        }
    }
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
            println!("  signs {} [{}]{via}", text(&e["url"]), text(&e["from"]));
        }
        if let Some(c) = r.get("client").filter(|c| c.get("kid").is_some()) {
            println!("  client key: {} kid {}", text(&c["alg"]), text(&c["kid"]));
        }
        if let Some(d) = r.get("dpop") {
            println!("  dpop key: {} jkt {}", text(&d["alg"]), text(&d["jkt"]));
        }
        if let Some(m) = r.get("mtls") {
            println!("  mtls cert x5t#S256 {}", text(&m["x5t#S256"]));
        }
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
        tasks.spawn(async move {
            let result = crate::discovery::fetch(&client, &issuer, timeout, &name).await;
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
        let mut keys = Vec::new();
        if let Credential::Key(k) = &r.credential {
            let mut jwk = k.public_jwk().clone();
            let kid = r.cfg.client.as_ref().and_then(|c| c.kid.clone()).unwrap_or_else(|| k.thumbprint().to_string());
            jwk.insert("kid".into(), kid.into());
            jwk.insert("use".into(), "sig".into());
            jwk.insert("alg".into(), k.alg().as_str().into());
            keys.push(Value::Object(jwk));
        }
        let mut entry = json!({ "jwks": { "keys": keys } });
        if let Some(c) = &r.cfg.client {
            entry["client_id"] = c.id.clone().into();
            entry["token_endpoint_auth_method"] = c.auth.as_str().into();
            if c.auth == AuthMethod::SelfSignedTlsClientAuth || c.auth == AuthMethod::TlsClientAuth {
                if let Some(der) = &r.cert_der {
                    if crate::pki::is_self_signed(der) {
                        // RFC 8705 §2.2: the self-signed certificate is registered in x5c.
                        use base64::Engine as _;
                        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
                        let mut jwk = crate::pki::public_jwk_of_cert(der).unwrap_or_default();
                        jwk.insert("x5c".into(), json!([x5c]));
                        jwk.insert("use".into(), "sig".into());
                        if let Some(Value::Array(keys)) = entry["jwks"].get_mut("keys") {
                            keys.push(Value::Object(jwk));
                        }
                    }
                    if let Some(dn) = crate::pki::subject_dn(der) {
                        entry["tls_client_auth_subject_dn"] = dn.into();
                    }
                }
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

fn jwks(config: &Path, only: Option<&str>) -> anyhow::Result<()> {
    let doc = jwks_document(config, only)?;
    eprintln!("Register each route's \"jwks\" (and x5c / tls_client_auth_subject_dn for mTLS clients) at your AS.");
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

fn init(config: &Path, force: bool) -> anyhow::Result<()> {
    let config = crate::config::load(config)?;
    let made = crate::provision::init(&config, force)?;
    if made.is_empty() {
        println!("nothing to create: every key and certificate {} names exists", config.path.display());
    }
    for line in made {
        println!("created {line}");
    }
    Ok(())
}
