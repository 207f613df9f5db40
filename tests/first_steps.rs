//! A user's first minutes, through the real binary: `init` in an empty folder (templates,
//! keys, next steps), replacing keys only when asked and confirmed, `jwks` printing exactly
//! a JWKS, logging flags, error wording, completions, version, help and man page.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::process::{ProxyProcess, BIN};
use serde_json::Value;
use tokenrelay::jose::{self, Alg, SigningKey};

/// `tokenrelay <args>` in `dir`, stdin closed (no terminal), without the caller's
/// `TOKENRELAY_CONFIG` / `RUST_LOG`.
fn tr(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("TOKENRELAY_CONFIG")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file under `dir` and its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn thumbprint_of_key_file(path: &Path, alg: Alg) -> String {
    SigningKey::load(&std::fs::read(path).unwrap(), alg).unwrap().thumbprint().to_string()
}

#[test]
fn empty_folder_init_then_run_gets_a_token_and_a_second_init_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Before init, every command says the same thing once, with one OS error.
    for cmd in ["run", "check", "jwks", "ca"] {
        let out = tr(dir.path(), &[cmd]);
        assert!(!out.status.success(), "{cmd}");
        let err = stderr(&out);
        assert_eq!(err.matches("no proxy.toml here: run `tokenrelay init` to create one").count(), 1, "{cmd}: {err}");
        assert_eq!(err.matches("os error").count(), 1, "{cmd}: one OS error text: {err}");
        assert!(!err.contains("cannot read config"), "{cmd}: {err}");
    }

    let out = tr(dir.path(), &["init"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}{text}", stderr(&out));
    assert!(text.contains("created proxy.toml (template demo"), "{text}");
    assert!(text.contains("client.pem") && text.contains("dpop.pem"), "{text}");
    assert!(text.contains("next steps:") && text.contains("nothing to register"), "{text}");
    assert!(
        text.contains("curl -s -X POST http://127.0.0.1:8787/demo/token -d grant_type=client_credentials"),
        "{text}"
    );
    let config = std::fs::read_to_string(dir.path().join("proxy.toml")).unwrap();
    assert!(config.starts_with("# tokenrelay configuration"), "commented: {config}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for key in ["certs/client.pem", "certs/dpop.pem"] {
            let mode = std::fs::metadata(dir.path().join(key)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }

    // A second init changes no byte.
    let before = files(dir.path());
    let out = tr(dir.path(), &["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("nothing to create"), "{}", stdout(&out));
    assert_eq!(before, files(dir.path()), "a second init changed a file");

    // The demo config on free ports (the test may run beside a real tokenrelay), and the
    // curl line init prints for it.
    let (listen, demo) = (free_port(), free_port());
    let config = config
        .replace("127.0.0.1:8787", &format!("127.0.0.1:{listen}"))
        .replace("127.0.0.1:9443", &format!("127.0.0.1:{demo}"));
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    let text = stdout(&tr(dir.path(), &["init"]));
    let curl = text.lines().find_map(|l| l.trim().strip_prefix("then: ")).expect("a curl line").to_string();
    assert!(curl.starts_with(&format!("curl -s -X POST http://127.0.0.1:{listen}/demo/token")), "{curl}");

    let proxy = ProxyProcess::start(&["run"], &dir.path().join("proxy.toml"), "info");
    let out = Command::new("sh").arg("-c").arg(&curl).output().expect("sh and curl");
    assert!(out.status.success(), "curl failed: {}", stderr(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
    assert!(answer["access_token"].as_str().is_some_and(|t| !t.is_empty()), "{answer}");
    assert_eq!(answer["token_type"], "DPoP", "{answer}");
    assert_eq!(answer["verified"]["client_id"], "demo-app", "{answer}");
    proxy.stop();
}

#[test]
fn replacing_keys_needs_only_or_confirmation() {
    let dir = tempfile::tempdir().unwrap();
    assert!(tr(dir.path(), &["init"]).status.success());
    let before = files(dir.path());
    let dpop = dir.path().join("certs/dpop.pem");

    // No terminal and no --yes: refused, nothing touched; --force is no exception.
    for args in [&["init", "--only", "dpop"][..], &["init", "--force"]] {
        let out = tr(dir.path(), args);
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains("refusing to replace") && err.contains("--yes"), "{args:?}: {err}");
        assert!(err.contains("dpop.pem") && err.contains("RFC 9449"), "{args:?} names what it would break: {err}");
        assert_eq!(before, files(dir.path()), "{args:?} changed a file");
    }

    let old = thumbprint_of_key_file(&dpop, Alg::ES256);
    let out = tr(dir.path(), &["init", "--only", "dpop", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let after = files(dir.path());
    let changed: Vec<&PathBuf> = after.keys().filter(|p| before.get(*p) != after.get(*p)).collect();
    assert_eq!(changed, vec![&dpop], "only the DPoP key is replaced");
    assert_ne!(old, thumbprint_of_key_file(&dpop, Alg::ES256));

    let out = tr(dir.path(), &["init", "--only", "ca", "--yes"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("names no local CA"), "{}", stderr(&out));
}

#[test]
fn init_creates_the_local_ca_when_the_config_names_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("proxy.toml"),
        "[proxy]\nca_cert = \"pki/ca.pem\"\nca_key = \"pki/ca-key.pem\"\n[routes.a]\nprefix = \"/a\"\nupstream = \"https://as.example\"\n",
    )
    .unwrap();
    let out = tr(dir.path(), &["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("local CA"), "{}", stdout(&out));
    assert!(dir.path().join("pki/ca.pem").exists() && dir.path().join("pki/ca-key.pem").exists());
    let before = files(dir.path());
    assert!(tr(dir.path(), &["init"]).status.success());
    assert_eq!(before, files(dir.path()));
}

#[test]
fn every_template_writes_a_config_that_checks_offline() {
    for template in ["generic", "keycloak", "okta", "entra", "auth0"] {
        let dir = tempfile::tempdir().unwrap();
        let out = tr(dir.path(), &["init", "--template", template]);
        let text = stdout(&out);
        assert!(out.status.success(), "{template}: {}", stderr(&out));
        assert!(text.contains(&format!("template {template}")), "{text}");
        assert!(text.contains("tokenrelay jwks --route") || text.contains("upload"), "{template}: {text}");
        assert!(text.contains("redirect URIs"), "{template}: {text}");
        let out = tr(dir.path(), &["check", "--offline"]);
        assert!(out.status.success(), "{template}: {}", stderr(&out));
        assert!(stdout(&out).contains(&format!("preset {template}")) || template == "generic", "{}", stdout(&out));
    }
}

#[test]
fn jwks_prints_exactly_a_jwks_of_the_route_keys() {
    let dir = tempfile::tempdir().unwrap();
    assert!(tr(dir.path(), &["init"]).status.success());
    let client = thumbprint_of_key_file(&dir.path().join("certs/client.pem"), Alg::ES256);
    let dpop = thumbprint_of_key_file(&dir.path().join("certs/dpop.pem"), Alg::ES256);
    for args in [&["jwks"][..], &["jwks", "--route", "demo"]] {
        let out = tr(dir.path(), args);
        assert!(out.status.success(), "{}", stderr(&out));
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let obj = doc.as_object().unwrap();
        assert_eq!(obj.keys().collect::<Vec<_>>(), vec!["keys"], "exactly a JWKS: {doc}");
        let keys = doc["keys"].as_array().unwrap();
        let prints: Vec<String> = keys.iter().map(|k| jose::thumbprint(k.as_object().unwrap())).collect();
        assert_eq!(prints, vec![client.clone()], "{doc}");
        assert!(!prints.contains(&dpop), "never the DPoP key");
        assert!(keys[0].get("d").is_none());
    }
    // The richer document is still there.
    let out = tr(dir.path(), &["jwks", "--format", "registration"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["routes"]["demo"]["dpop_jkt"], dpop.as_str());
    assert_eq!(doc["routes"]["demo"]["client_id"], "demo-app");
}

#[test]
fn jwks_for_mtls_holds_the_certificate_and_dpop_only_routes_explain() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("proxy.toml"),
        r#"
[routes.mtls]
prefix = "/mtls"
upstream = "https://as.example"
[routes.mtls.client]
id = "ss-client"
auth = "self_signed_tls_client_auth"
[routes.mtls.mtls]
cert = "certs/client-cert.pem"
key = "certs/client-key.pem"

[routes.api]
prefix = "/api"
upstream = "https://api.example"
[routes.api.dpop]
key = "certs/dpop.pem"
"#,
    )
    .unwrap();
    let out = tr(dir.path(), &["init"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Two routes: --route is needed.
    let out = tr(dir.path(), &["jwks"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--route") && stderr(&out).contains("api, mtls"), "{}", stderr(&out));

    let out = tr(dir.path(), &["jwks", "--route", "mtls"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc.as_object().unwrap().len(), 1, "{doc}");
    let key = &doc["keys"][0];
    let pem = std::fs::read(dir.path().join("certs/client-cert.pem")).unwrap();
    let der = pem::parse(&pem).unwrap().into_contents();
    let x5c = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der);
    assert_eq!(key["x5c"], serde_json::json!([x5c]), "RFC 8705 §2.2: the certificate in x5c");
    let cert_key = tokenrelay::pki::public_jwk_of_cert(&der).unwrap();
    assert_eq!(jose::thumbprint(key.as_object().unwrap()), jose::thumbprint(&cert_key));

    let out = tr(dir.path(), &["jwks", "--route", "api"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no empty set on stdout: {}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("DPoP") && err.contains("nothing to register"), "{err}");
}

/// A config whose proxy starts without keys or an AS.
fn quiet_config(dir: &Path) -> PathBuf {
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[routes.a]\nprefix = \"/a\"\nupstream = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    path
}

/// Starts `tokenrelay <args> --config <config>` with `env`, waits until it listens, stops it
/// and returns its log.
fn log_of(args: &[&str], config: &Path, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut cmd = Command::new(BIN);
    cmd.args(args).arg("--config").arg(config).env_remove("RUST_LOG").env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = common::process::KillOnDrop(
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("listening") {
        if std::time::Instant::now() > deadline || child.0.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.0.kill();
    let _ = child.0.wait();
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn log_format_json_is_one_object_per_line_and_v_q_move_the_level() {
    let dir = tempfile::tempdir().unwrap();
    let config = quiet_config(dir.path());
    let log = log_of(&["--log-format", "json"], &config, &[]);
    assert!(!log.trim().is_empty());
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.is_object() && v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(log.contains("\"level\":\"INFO\""), "{log}");

    assert!(log_of(&[], &config, &[]).contains(" INFO "), "info by default");
    let quiet = log_of(&["-q"], &config, &[]);
    assert!(!quiet.contains(" INFO "), "-q: warnings and errors only: {quiet}");
    let verbose = log_of(&["-vv"], &config, &[]);
    assert!(verbose.contains("DEBUG") || verbose.contains("TRACE"), "-vv: {verbose}");
    // RUST_LOG still wins.
    let env = log_of(&["-q"], &config, &[("RUST_LOG", "info")]);
    assert!(env.contains(" INFO "), "RUST_LOG=info beats -q: {env}");
}

/// Runs the proxy for a moment under a pseudo-terminal (`script` from util-linux), with
/// `NO_COLOR` as given, and returns what the terminal showed.
fn under_pty(config: &Path, no_color: Option<&str>) -> String {
    let status = Command::new("script").arg("--version").output();
    assert!(
        status.is_ok(),
        "this test needs `script` (util-linux, installed on Debian by default) to run tokenrelay under a pseudo-terminal: apt-get install util-linux"
    );
    let inner = format!("timeout -s INT 2 {} --config {}", BIN, tokenrelay_quote(&config.display().to_string()));
    let mut cmd = Command::new("script");
    cmd.args(["-qfec", &inner, "/dev/null"]).env("RUST_LOG", "info").stdin(Stdio::null());
    match no_color {
        Some(v) => cmd.env("NO_COLOR", v),
        None => cmd.env_remove("NO_COLOR"),
    };
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tokenrelay_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn no_color_means_no_ansi_escapes_even_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let config = quiet_config(dir.path());
    let colored = under_pty(&config, None);
    assert!(colored.contains("listening"), "the proxy ran under the pty: {colored}");
    assert!(colored.contains('\u{1b}'), "positive control: colours on a terminal without NO_COLOR: {colored:?}");
    let plain = under_pty(&config, Some("1"));
    assert!(plain.contains("listening"), "{plain}");
    assert!(!plain.contains('\u{1b}'), "NO_COLOR=1: no ANSI escapes: {plain:?}");
}

#[test]
fn config_errors_in_our_words_with_the_table_path() {
    let dir = tempfile::tempdir().unwrap();
    let check = |config: &str| {
        std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
        let out = tr(dir.path(), &["check", "--offline"]);
        assert!(!out.status.success());
        stderr(&out)
    };
    let base = "[routes.demo]\nprefix = \"/demo\"\nupstream = \"https://as.example\"\n";
    let err = check(&format!("{base}timeout = \"ten\"\n"));
    assert!(
        err.contains("proxy.toml:4:11: routes.demo.timeout: \"ten\" is not a duration like \"10s\" or \"500ms\""),
        "{err}"
    );
    assert!(!err.contains("expected number"), "not humantime's words: {err}");

    let err = check("[routes.demo]\nprefix = \"/demo\"\nupstrem = \"https://as.example\"\n");
    assert!(err.contains("proxy.toml:3:1: routes.demo.upstrem: unknown field; did you mean \"upstream\"?"), "{err}");
    assert!(!err.contains('`'), "{err}");

    let err = check(&format!("{base}[routes.demo.client]\nid = \"x\"\nauth = \"private_key_jwk\"\n"));
    assert!(
        err.contains("routes.demo.client.auth: unknown value \"private_key_jwk\"; did you mean \"private_key_jwt\"?"),
        "{err}"
    );

    let err = check("[proxy]\nlisen = \"127.0.0.1:1\"\n");
    assert!(err.contains("proxy.lisen: unknown field; did you mean \"listen\"?"), "{err}");

    // A config that is a folder: refused before it is opened, the cause said once.
    let out = Command::new(BIN).args(["check", "--config"]).arg(dir.path()).output().unwrap();
    assert_eq!(stderr(&out).matches("not a regular file (a folder)").count(), 1, "{}", stderr(&out));
}

#[test]
fn completions_version_help_and_man() {
    let dir = tempfile::tempdir().unwrap();
    let out = tr(dir.path(), &["completions", "bash"]);
    assert!(out.status.success());
    let script = stdout(&out);
    assert!(
        script.contains("_tokenrelay") && script.contains("completions") && script.contains("--template"),
        "{script}"
    );
    for shell in ["zsh", "fish"] {
        assert!(tr(dir.path(), &["completions", shell]).status.success(), "{shell}");
    }

    let version = stdout(&tr(dir.path(), &["--version"]));
    let commit = version
        .trim()
        .strip_prefix(&format!("tokenrelay {} (", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("version with the commit: {version}"));
    assert!(commit == "unknown" || (commit.len() >= 4 && commit.bytes().all(|b| b.is_ascii_hexdigit())), "{version}");
    let git =
        Command::new("git").args(["rev-parse", "--short", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output();
    if git.is_ok_and(|o| o.status.success()) {
        assert_ne!(commit, "unknown", "git is here, so the commit is known: {version}");
    }

    let help = stdout(&tr(dir.path(), &["--help"]));
    assert!(help.contains("Examples:") && help.contains("tokenrelay init --template okta"), "{help}");
    let help = stdout(&tr(dir.path(), &["init", "--help"]));
    assert!(help.contains("--only") && help.contains("--yes") && help.contains("Examples:"), "{help}");

    let man = tr(dir.path(), &["man"]);
    assert!(man.status.success());
    assert!(stdout(&man).contains(".TH tokenrelay"), "{}", stdout(&man));
}

#[test]
fn on_a_terminal_init_asks_before_replacing() {
    let dir = tempfile::tempdir().unwrap();
    assert!(tr(dir.path(), &["init"]).status.success());
    let dpop = dir.path().join("certs/dpop.pem");
    let ask = |answer: &str| {
        let inner = format!("cd {} && {BIN} init --only dpop", tokenrelay_quote(&dir.path().display().to_string()));
        let mut child = Command::new("script")
            .args(["-qfec", &inner, "/dev/null"])
            .env_remove("TOKENRELAY_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("this test needs `script` (util-linux) for a pseudo-terminal");
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(answer.as_bytes()).unwrap();
        String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned()
    };
    let before = std::fs::read(&dpop).unwrap();
    let shown = ask("n\n");
    assert!(shown.contains("Replace them? [y/N]") && shown.contains("nothing replaced"), "{shown}");
    assert_eq!(before, std::fs::read(&dpop).unwrap());
    let shown = ask("y\n");
    assert!(shown.contains("dpop.pem"), "{shown}");
    assert_ne!(before, std::fs::read(&dpop).unwrap(), "replaced after yes");
}

/// `eval "$(tokenrelay ca)"` is enough for curl (which reads only the lower-case
/// `http_proxy`) to reach a plain-http AS through the forward proxy, signed.
#[tokio::test(flavor = "multi_thread")]
async fn eval_ca_makes_curl_use_the_forward_proxy_for_an_http_as() {
    let up = common::upstream::Recorder::start(|_, _| common::upstream::Reply::token()).await;
    let forward = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n[routes.as]\nprefix = \"/as\"\nupstream = \"{}\"\n\
             [routes.as.client]\nid = \"app-1\"\nauth = \"private_key_jwt\"\nkey = \"client.pem\"\ncreate = true\n",
            up.url()
        ),
    )
    .unwrap();
    let proxy = common::process::ProxyProcess::start(&[], &config, "info");
    let script = format!(
        "eval \"$('{bin}' --config '{cfg}' ca)\" && curl -s --max-time 20 -X POST {url}/token -d grant_type=client_credentials",
        bin = common::process::BIN,
        cfg = config.display(),
        url = up.url()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("upstream-issued-token-VALUE"), "{stdout}\n{}", proxy.log());
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].param("client_assertion").is_some(), "the AS received the request signed");
    assert!(proxy.log().contains("forward"), "{}", proxy.log());
}

/// An `http://` upstream that speaks TLS (the demo AS after `tls = true`) is named as such,
/// not as hyper's "invalid HTTP version parsed".
#[tokio::test]
async fn an_http_upstream_that_speaks_tls_says_use_https() {
    let dir = tempfile::tempdir().unwrap();
    let up = common::tls_upstream::TlsRecorder::start(dir.path(), "as-ca.pem", |_, _| common::upstream::Reply::token())
        .await;
    let config = format!(
        "[routes.as]\nprefix = \"/as\"\nupstream = \"http://127.0.0.1:{}\"\n[routes.as.client]\nid = \"app\"\n\
         auth = \"private_key_jwt\"\nkey = \"client.pem\"\ncreate = true\n",
        up.port()
    );
    let proxy = common::proxy::TestProxy::builder(config).start().await;
    let (status, body) = proxy.post_form("/as/token", "grant_type=client_credentials").await;
    assert_eq!(status, 502, "{body}");
    let why = body["error_description"].as_str().unwrap();
    let https = format!("routes.as.upstream = \"https://127.0.0.1:{}\"", up.port());
    assert!(why.contains("it speaks TLS; use") && why.contains(&https) && why.contains("routes.as.trust"), "{why}");
    assert!(!why.contains("invalid HTTP version"), "{why}");
    proxy.stop().await;
}

/// `check` warns about what would not work: no routes at all, and an `http://` route to a
/// demo AS that serves TLS.
#[test]
fn check_warns_on_an_empty_config_and_the_demo_as_scheme_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(common::process::BIN)
            .arg("--config")
            .arg(&path)
            .args(["check", "--offline"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let empty = check("# nothing yet\n");
    assert!(empty.contains("warning: no routes"), "{empty}");
    let tls = check(
        "[demo_as]\nlisten = \"127.0.0.1:9443\"\ntls = true\n[routes.d]\nprefix = \"/d\"\nupstream = \"http://127.0.0.1:9443\"\n",
    );
    assert!(
        tls.contains("upstream is http:// but [demo_as] tls = true") && tls.contains("certs/demo-as-ca.pem"),
        "{tls}"
    );
    // The advice names every field that changes with the URL, and only what is still wrong.
    let demo = "[demo_as]\nlisten = \"127.0.0.1:9443\"\ntls = true\n[routes.d]\nprefix = \"/d\"\n";
    let both = check(&format!("{demo}upstream = \"http://127.0.0.1:9443\"\nissuer = \"http://127.0.0.1:9443\"\n"));
    for field in [
        "routes.d.upstream = \"https://127.0.0.1:9443\"",
        "routes.d.issuer = \"https://127.0.0.1:9443\"",
        "routes.d.trust = [\"certs/demo-as-ca.pem\"]",
    ] {
        assert!(both.contains(field), "{field} missing from:\n{both}");
    }
    let half = check(&format!("{demo}upstream = \"https://127.0.0.1:9443\"\nissuer = \"http://127.0.0.1:9443\"\n"));
    assert!(half.contains("issuer is http://") && !half.contains("routes.d.upstream ="), "{half}");
    let fixed = check(&format!("{demo}upstream = \"https://127.0.0.1:9443\"\nissuer = \"https://127.0.0.1:9443\"\n"));
    assert!(!fixed.contains("tls = true"), "a fixed config is not warned about:\n{fixed}");
    let full = check(
        "[proxy]\nforward = \"127.0.0.1:8788\"\n[routes.r]\nprefix = \"/r\"\nupstream = \"https://as.example.com\"\n\
         hosts = [\"as.example.com\"]\n[routes.r.headers]\nset = { \"x-api-key\" = \"planted-header-secret\" }\n\
         remove = [\"cookie\"]\n[routes.r.params]\nadd = { scope = \"read\" }\n",
    );
    for shown in [
        "forward mode intercepts as.example.com",
        "headers: set [x-api-key] remove [cookie]",
        "params: add {\"scope\":\"read\"}",
    ] {
        assert!(full.contains(shown), "{shown:?} missing from:\n{full}");
    }
    assert!(!full.contains("planted-header-secret"), "header values are not printed:\n{full}");
}

/// `GET /.tokenrelay/jwks/{route}` serves exactly what `tokenrelay jwks --route` prints, for
/// ASes that register clients by `jwks_uri`; never the DPoP key.
#[tokio::test(flavor = "multi_thread")]
async fn served_jwks_url_matches_the_jwks_command() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[routes.as]\nprefix = \"/as\"\nupstream = \"https://as.example.com\"\n\
         [routes.as.client]\nid = \"app\"\nauth = \"private_key_jwt\"\nkey = \"client.pem\"\ncreate = true\n\
         [routes.as.dpop]\nkey = \"dpop.pem\"\ncreate = true\n",
    )
    .unwrap();
    let proxy = common::process::ProxyProcess::start(&[], &config, "info");
    let printed = std::process::Command::new(common::process::BIN)
        .arg("--config")
        .arg(&config)
        .args(["jwks", "--route", "as"])
        .output()
        .unwrap();
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&printed.stdout).unwrap();
    let served: serde_json::Value = common::proxy::client()
        .get(format!("{}/.tokenrelay/jwks/as", proxy.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, printed);
    let keys = served["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "the client key only, never the DPoP key: {served}");
    assert!(keys[0].get("d").is_none(), "public members only");
    let dpop = std::fs::read(dir.path().join("dpop.pem")).unwrap();
    let dpop = tokenrelay::jose::SigningKey::load(&dpop, tokenrelay::jose::Alg::ES256).unwrap();
    assert_ne!(keys[0]["kid"], dpop.thumbprint());
}

/// A host added after the local CA was made is outside its name constraints; `ca
/// --regenerate` makes a new CA that covers it.
#[test]
fn ca_regenerate_covers_a_host_claimed_later() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let write = |hosts: &str| {
        std::fs::write(
            &path,
            format!("[proxy]\nforward = \"127.0.0.1:8788\"\n[routes.a]\nprefix = \"/a\"\nupstream = \"https://as.example.com\"\nhosts = [{hosts}]\n"),
        )
        .unwrap()
    };
    let ca = |extra: &[&str]| {
        std::process::Command::new(common::process::BIN)
            .arg("--config")
            .arg(&path)
            .arg("ca")
            .args(extra)
            .output()
            .unwrap()
    };
    write("\"as.example.com\"");
    assert!(ca(&[]).status.success());
    let before = std::fs::read(dir.path().join("certs/ca.pem")).unwrap();
    write("\"as.example.com\", \"later.example.org\"");
    let stale = ca(&[]);
    assert!(String::from_utf8_lossy(&stale.stderr).contains("later.example.org"), "the CA does not cover the new host");
    let fresh = ca(&["--regenerate"]);
    let stderr = String::from_utf8_lossy(&fresh.stderr);
    assert!(fresh.status.success(), "{stderr}");
    assert!(stderr.contains("replacing the local CA"), "{stderr}");
    assert!(!stderr.contains("later.example.org"), "the new CA covers it: {stderr}");
    assert_ne!(before, std::fs::read(dir.path().join("certs/ca.pem")).unwrap());
}
