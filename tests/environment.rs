//! The environment in `proxy.toml` through the real binary: `${VAR}` and `${VAR:-default}`
//! in string values, `$${` for a literal, `--set key.path=value` on every command, and
//! secrets taken from the environment that never reach the logs or `check`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::process::{ProxyProcess, BIN};
use common::proxy::client;
use common::upstream::{Recorder, Reply};

const SECRET: &str = "env-client-secret-5d1e-77aa-0123456789";
const API_KEY: &str = "env-api-key-b33f-4242";
const PARAM: &str = "env-param-value-9c9c";

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("proxy.toml");
    // `listen` is not a usable address on purpose: `--set` replaces it.
    std::fs::write(
        &path,
        r#"[proxy]
listen = "${TR_TEST_LISTEN:-127.0.0.1:1}"
[routes.env]
prefix = "/env"
upstream = "${TR_TEST_UPSTREAM}"
[routes.env.client]
id = "${TR_TEST_CLIENT:-app-from-default}"
auth = "client_secret_post"
secret = "${TR_TEST_SECRET}"
[routes.env.headers]
set = { "X-Api-Key" = "Key ${TR_TEST_API_KEY}" }
[routes.env.params]
add = { resource = "${TR_TEST_PARAM}", literal = "$${NOT_A_VAR} costs $5" }
"#,
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn variables_defaults_literals_and_set_reach_the_as_and_secrets_stay_hidden() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path());
    let upstream = up.url();
    let env = [
        ("TR_TEST_UPSTREAM", upstream.as_str()),
        ("TR_TEST_SECRET", SECRET),
        ("TR_TEST_API_KEY", API_KEY),
        ("TR_TEST_PARAM", PARAM),
    ];
    let proxy = ProxyProcess::start_with_env(&["--set", "proxy.listen=127.0.0.1:0"], &path, "trace", &env);
    let resp = client()
        .post(format!("{}/env/token", proxy.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let seen = &up.seen()[0];
    assert_eq!(seen.param("client_secret").as_deref(), Some(SECRET), "the secret came from the environment");
    assert_eq!(seen.param("client_id").as_deref(), Some("app-from-default"), "the default applies when unset");
    assert_eq!(seen.header("x-api-key").as_deref(), Some(format!("Key {API_KEY}").as_str()));
    assert_eq!(seen.param("resource").as_deref(), Some(PARAM));
    assert_eq!(seen.param("literal").as_deref(), Some("${NOT_A_VAR} costs $5"), "$${{ is a literal ${{, $5 stays");
    let logs = proxy.stop();
    assert!(logs.contains("exchange"), "{logs}");
    for needle in [SECRET, API_KEY, PARAM] {
        assert!(!logs.contains(needle), "the log leaks {needle:?}");
    }

    // `check`, text and JSON: the route is there, the values from the environment are not.
    for json in [false, true] {
        let mut cmd = Command::new(BIN);
        cmd.args(["check", "--offline", "--config"]).arg(&path).envs(env);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(stdout.contains("app-from-default") && stdout.contains("[redacted]"), "{stdout}");
        for needle in [SECRET, API_KEY, PARAM] {
            assert!(!stdout.contains(needle) && !stderr.contains(needle), "check leaks {needle:?}: {stdout}{stderr}");
        }
    }
}

#[test]
fn an_unset_variable_is_a_load_error_naming_it_and_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path());
    let out = Command::new(BIN)
        .args(["check", "--offline", "--config"])
        .arg(&path)
        .env("TR_TEST_UPSTREAM", "http://127.0.0.1:9")
        .env_remove("TR_TEST_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // Line 9, column 11: the `${` of `secret = "${TR_TEST_SECRET}"`.
    assert!(err.contains(&format!("{}:9:11: routes.env.client.secret:", path.display())), "{err}");
    assert!(err.contains("TR_TEST_SECRET is not set"), "{err}");
}

#[test]
fn set_is_typed_like_the_field_and_its_errors_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path());
    let check = |sets: &[&str]| {
        let mut cmd = Command::new(BIN);
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = cmd
            .args(["check", "--offline", "--json", "--config"])
            .arg(&path)
            .envs([("TR_TEST_UPSTREAM", "http://127.0.0.1:9"), ("TR_TEST_SECRET", SECRET)])
            .env("TR_TEST_API_KEY", API_KEY)
            .env("TR_TEST_PARAM", PARAM)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    // A string field: the value is a string even when it reads as a number.
    let (ok, out) = check(&["proxy.listen=127.0.0.1:9000", "routes.env.client.id=12345"]);
    assert!(ok, "{out}");
    assert!(out.contains("http://127.0.0.1:9000") && out.contains("\"12345\""), "{out}");
    // A number field gets a number; a later --set wins.
    let (ok, out) = check(&["proxy.max_body=1", "proxy.max_body=0"]);
    assert!(!ok);
    assert!(out.contains("--set:2:") && out.contains("proxy.max_body"), "{out}");
    let (ok, out) = check(&["proxy.listen=nonsense"]);
    assert!(!ok);
    assert!(out.contains("--set:1:") && out.contains("proxy.listen") && out.contains("nonsense"), "{out}");
    let (ok, out) = check(&["proxy.lisen=127.0.0.1:1"]);
    assert!(!ok);
    assert!(out.contains("--set:1:") && out.contains("proxy.lisen") && out.contains("did you mean"), "{out}");
    let out = Command::new(BIN).args(["--set", "no-equals", "check"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEY=VALUE"));
}
