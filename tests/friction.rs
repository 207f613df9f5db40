//! Friction a new user met, each fixed and held here, through the real binary: `check` right
//! after `init` (the demo AS starts with `run`), `tokenrelay token` without a discovery
//! failure, `--help` examples on every command, completions offering route names, the man
//! page's config section, and a port-in-use error naming the config file used.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::process::BIN;

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

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `init`, on free ports.
fn initialised() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    assert!(tr(dir.path(), &["init"]).status.success());
    let config = std::fs::read_to_string(dir.path().join("proxy.toml"))
        .unwrap()
        .replace("127.0.0.1:8787", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:9443", &format!("127.0.0.1:{}", free_port()));
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    dir
}

/// Item 1: the demo AS runs only inside `run` (and `token`): `check` says so instead of
/// warning that its metadata is unavailable, and `token` starts it before discovery.
#[test]
fn check_after_init_and_token_say_nothing_alarming_about_the_demo_as() {
    let dir = initialised();
    let out = tr(dir.path(), &["check"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(!stdout.contains("warning:"), "no warning right after init:\n{stdout}");
    assert!(
        stdout.contains("note: route \"demo\": the demo AS is not running; `tokenrelay run` starts it"),
        "{stdout}"
    );

    let out = tr(dir.path(), &["token", "--route", "demo"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("-> 200"), "{stdout}");
    assert!(!stderr.contains("discovery failed") && !stderr.contains("WARN"), "token logged a failure:\n{stderr}");
}

/// Item 7: every command's `--help` ends with examples; completions offer the config's route
/// names for `--route`; the man page documents the config.
#[test]
fn help_examples_completions_and_man() {
    let dir = initialised();
    for cmd in ["run", "check", "jwks", "init", "ca", "token", "replay", "completions", "man"] {
        let out = tr(dir.path(), &[cmd, "--help"]);
        let (stdout, _) = text(&out);
        let tail = stdout.rsplit("Examples:").next().unwrap();
        assert!(stdout.contains("Examples:") && tail.contains("tokenrelay"), "{cmd} --help has no examples:\n{stdout}");
    }
    let config = std::fs::read_to_string(dir.path().join("proxy.toml")).unwrap();
    std::fs::write(
        dir.path().join("proxy.toml"),
        config + "\n[routes.okta-staging]\nprefix = \"/okta\"\nupstream = \"https://example.com\"\n",
    )
    .unwrap();
    let (bash, _) = text(&tr(dir.path(), &["completions", "bash"]));
    let route_line = bash.lines().find(|l| l.contains("--route)")).map(|_| ()).is_some();
    assert!(route_line, "{bash}");
    assert!(bash.contains("demo okta-staging"), "the route names are offered for --route");
    let (man, _) = text(&tr(dir.path(), &["man"]));
    for expected in [".SH CONFIGURATION", "[routes.NAME.client]", "upgrade_bearer", "/.tokenrelay/exchanges.har"] {
        assert!(man.contains(expected), "{expected:?} missing from the man page");
    }
}

/// Item 8: a port in use names the config file actually used, and the key to change.
#[test]
fn a_port_in_use_names_the_config_used() {
    let dir = initialised();
    let config = std::fs::read_to_string(dir.path().join("proxy.toml")).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let listen = config.lines().find(|l| l.starts_with("listen = ")).unwrap().to_string();
    let other = dir.path().join("other.toml");
    std::fs::write(&other, config.replacen(&listen, &format!("listen = \"127.0.0.1:{port}\""), 1)).unwrap();
    let out = tr(dir.path(), &["run", "--config", other.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("[proxy] listen"), "{stderr}");
    assert!(stderr.contains("other.toml") && !stderr.contains("in proxy.toml"), "names the config used: {stderr}");
}

/// Item 2: a mistyped key path points at the typo (`file:line:column`) and the file meant,
/// and does not advise `init` (which would create an unregistered key under the typo); a
/// missing key of a name `init` makes does.
#[test]
fn a_mistyped_key_path_gets_a_location_and_a_did_you_mean() {
    let dir = initialised();
    let config = std::fs::read_to_string(dir.path().join("proxy.toml")).unwrap();
    let typo = common::proxy::edit(&config, "key = \"certs/client.pem\"", "key = \"certs/clinet.pem\"");
    let line = typo.lines().position(|l| l.contains("certs/clinet.pem")).unwrap() + 1;
    let column = typo.lines().nth(line - 1).unwrap().find("\"certs/clinet.pem\"").unwrap() + 1;
    std::fs::write(dir.path().join("proxy.toml"), &typo).unwrap();
    let out = tr(dir.path(), &["check", "--offline"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains(&format!("proxy.toml:{line}:{column}: route \"demo\": client.key")), "{stderr}");
    assert!(stderr.contains("did you mean") && stderr.contains("certs/client.pem"), "{stderr}");
    assert!(!stderr.contains("run `tokenrelay init` to create it"), "{stderr}");

    std::fs::write(dir.path().join("proxy.toml"), &config).unwrap();
    std::fs::remove_file(dir.path().join("certs/client.pem")).unwrap();
    let (_, stderr) = text(&tr(dir.path(), &["check", "--offline"]));
    assert!(stderr.contains("run `tokenrelay init` to create it") && !stderr.contains("did you mean"), "{stderr}");
}

/// Item 5: the per-exchange log line leaves empty fields out; with `--log-format json` every
/// line is JSON, the note about a demo AS already listening (from `token`) included.
#[tokio::test(flavor = "multi_thread")]
async fn the_exchange_line_is_short_and_json_logs_are_all_json() {
    let dir = initialised();
    let config = dir.path().join("proxy.toml");
    let proxy = common::process::ProxyProcess::start(&["--log-format", "json", "run"], &config, "info");
    let resp = common::proxy::client()
        .post(format!("{}/demo/token", proxy.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // `token` beside the running proxy: its demo AS port is taken, and it says so in JSON.
    let out = Command::new(BIN)
        .args(["--log-format", "json", "token", "--route", "demo", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token_log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(token_log.contains("using the demo AS already listening there"), "{token_log}");
    let log = proxy.stop();
    for line in log.lines().chain(token_log.lines()).filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    let exchange: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "exchange")
        .expect("an exchange line");
    let fields = exchange["fields"].as_object().unwrap();
    for (k, v) in fields {
        assert!(v != "-" && v != "[]" && v != "", "empty field {k} is logged: {exchange}");
    }
    for absent in ["refused", "hint", "as_error", "retry", "removed"] {
        assert!(!fields.contains_key(absent), "{absent} logged for a good exchange: {exchange}");
    }
    assert_eq!(fields["auth"], "private_key_jwt");

    // The text line too: short, no placeholder dashes.
    let proxy = common::process::ProxyProcess::start(&["run"], &config, "info");
    common::proxy::client()
        .post(format!("{}/demo/token", proxy.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    let log = proxy.stop();
    let line = log.lines().find(|l| l.contains(" exchange ") || l.ends_with("exchange")).map(str::to_string);
    let line = line.unwrap_or_else(|| panic!("no exchange line in:\n{log}"));
    assert!(!line.contains("=-") && !line.contains("=\"-\"") && !line.contains("=[]"), "{line}");
    assert!(line.len() < 400, "{} characters: {line}", line.len());
}

/// Item 3: a starter config's placeholders left unedited are warned about by `check`; the
/// next steps name real files; `jwks --format pem` prints the public key for ASes that
/// take PEM.
#[test]
fn starter_placeholders_are_warned_and_next_steps_name_real_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = tr(dir.path(), &["init", "--template", "keycloak"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let out = tr(dir.path(), &["check", "--offline"]);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("routes.keycloak.issuer = \"https://keycloak.example.com/realms/myrealm\" is the starter config's placeholder"), "{stdout}");
    assert!(
        stdout.contains("routes.keycloak.client.id = \"my-client\" is the starter config's placeholder"),
        "{stdout}"
    );
    // Edited: no such warning.
    let config = std::fs::read_to_string(dir.path().join("proxy.toml")).unwrap();
    let edited = config.replace("keycloak.example.com", "sso.corp.test").replace("\"my-client\"", "\"billing\"");
    std::fs::write(dir.path().join("proxy.toml"), edited).unwrap();
    let (stdout, _) = text(&tr(dir.path(), &["check", "--offline"]));
    assert!(!stdout.contains("placeholder"), "{stdout}");

    for template in ["entra", "auth0"] {
        let dir = tempfile::tempdir().unwrap();
        let out = tr(dir.path(), &["init", "--template", template]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(!stdout.contains("client.cert") && !stdout.contains("<client.key>"), "{template}: {stdout}");
        if template == "entra" {
            assert!(
                stdout.contains("certs/client-cert.pem") && dir.path().join("certs/client-cert.pem").exists(),
                "{stdout}"
            );
        } else {
            assert!(stdout.contains("tokenrelay jwks --route auth0 --format pem"), "{stdout}");
            let out = tr(dir.path(), &["jwks", "--route", "auth0", "--format", "pem"]);
            let (pem, stderr) = text(&out);
            assert!(out.status.success(), "{stderr}");
            assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----") && !pem.contains("PRIVATE"), "{pem}");
        }
    }
}

/// Item 2, second half: `init` replacing a key a running proxy uses says that proxy now signs
/// with the new one, which must be registered again.
#[test]
fn init_replacing_a_key_of_a_running_proxy_says_to_register_it_again() {
    let dir = initialised();
    let out = tr(dir.path(), &["init", "--only", "client", "--yes"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains("tokenrelay running"), "no proxy runs yet: {stdout}");

    let proxy = common::process::ProxyProcess::start(&["run"], &dir.path().join("proxy.toml"), "info");
    let out = tr(dir.path(), &["init", "--only", "client", "--yes"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let listen = proxy.base.trim_start_matches("http://").to_string();
    assert!(
        stdout.contains(&format!("note: the tokenrelay running on {listen} with this config now uses the new")),
        "{stdout}"
    );
    assert!(stdout.contains("register the new one"), "{stdout}");
    proxy.stop();
}

/// Item 3: the path the app will call (what `check` shows, without the AS's metadata) is the
/// one the starter template's own comment names.
#[test]
fn the_path_check_shows_is_the_one_the_template_comment_names() {
    for template in ["keycloak", "okta", "entra", "auth0"] {
        let dir = tempfile::tempdir().unwrap();
        assert!(tr(dir.path(), &["init", "--template", template]).status.success());
        let config = std::fs::read_to_string(dir.path().join("proxy.toml")).unwrap();
        let comment = config
            .lines()
            .find(|l| l.starts_with("prefix = "))
            .and_then(|l| l.split("http://127.0.0.1:8787").nth(1))
            .map(|rest| rest.split_whitespace().next().unwrap().to_string())
            .unwrap_or_else(|| panic!("{template}: no URL in the prefix comment"));
        let (stdout, _) = text(&tr(dir.path(), &["check", "--offline"]));
        let calls = stdout
            .split("(app calls ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .unwrap_or_else(|| panic!("{template}: {stdout}"))
            .to_string();
        // `<tenant>` in a comment stands for whatever the issuer says.
        let same = comment.split('/').count() == calls.split('/').count()
            && comment
                .split('/')
                .zip(calls.split('/'))
                .all(|(c, a)| c == a || (c.starts_with('<') && c.ends_with('>')));
        assert!(same, "{template}: the comment says {comment}, check says the app calls {calls}");
    }
}
