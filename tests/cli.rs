//! The real binary: log hygiene at `RUST_LOG=trace`, `check`, `jwks`, `init`, bad config.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::process::{ProxyProcess, BIN};
use common::proxy::client;
use common::upstream::{Recorder, Reply};

#[tokio::test(flavor = "multi_thread")]
async fn secrets_and_tokens_never_reach_the_logs_at_trace() {
    const SECRET: &str = "planted-client-secret-7f3a9c-0123456789";
    const TOKEN: &str = "issued-access-token-c0ffee-4242";
    let up = Recorder::start(|_, _| {
        Reply::json(
            200,
            serde_json::json!({"access_token": TOKEN, "token_type": "Bearer", "refresh_token": "rt-abcdef-123"}),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
[routes.post]
prefix = "/post"
upstream = "{url}"
[routes.post.client]
id = "app"
auth = "client_secret_post"
secret = "{SECRET}"
[routes.basic]
prefix = "/basic"
upstream = "{url}"
[routes.basic.client]
id = "app"
auth = "client_secret_basic"
secret = "{SECRET}"
[routes.jwt]
prefix = "/jwt"
upstream = "{url}"
[routes.jwt.client]
id = "app"
auth = "client_secret_jwt"
secret = "{SECRET}"
"#,
        url = up.url()
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    // The trace log goes to a file as it is written: a pipe read only at the end could fill
    // up and block the proxy mid-request.
    let proxy = ProxyProcess::start(&[], &path, "trace");
    let http = client();
    let mut assertions = Vec::new();
    for route in ["post", "basic", "jwt"] {
        let resp = http
            .post(format!("{}/{route}/token", proxy.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=authorization_code&code=the-auth-code-xyz&code_verifier=verifier-secret-abc")
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "{route}: {text}");
        assert!(text.contains(TOKEN));
    }
    for seen in up.seen() {
        if let Some(a) = seen.param("client_assertion") {
            assertions.push(a);
        }
    }
    assert_eq!(up.seen()[0].param("client_secret").as_deref(), Some(SECRET), "the secret was really used");
    assert_eq!(assertions.len(), 1);
    let logs = proxy.stop();
    assert!(logs.contains("exchange"), "the per-exchange log line is there: {logs}");
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("app:{SECRET}"));
    for needle in [SECRET, TOKEN, "rt-abcdef-123", "the-auth-code-xyz", "verifier-secret-abc", &basic, &assertions[0]] {
        assert!(!logs.contains(needle), "log leaks {needle:?}");
    }
    // The assertion's signature part alone must not leak either.
    let sig = assertions[0].rsplit('.').next().unwrap();
    assert!(!logs.contains(sig));
}

#[test]
fn bad_config_at_start_exits_nonzero_with_file_line_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        "[proxy]\nlisten = \"127.0.0.1:0\"\n\n[routes.a]\nprefix = \"/a\"\nupstrem = \"https://x\"\n",
    )
    .unwrap();
    for args in [vec!["run"], vec!["check"]] {
        let out = Command::new(BIN).args(&args).arg("--config").arg(&path).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{}:6:1", path.display())) && err.contains("upstrem"), "{args:?}: {err}");
    }
}

#[test]
fn check_loads_keys_and_prints_routes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        "[routes.a]\nprefix = \"/a\"\nupstream = \"https://as.example\"\n[routes.a.client]\nid = \"c\"\nauth = \"private_key_jwt\"\nkey = \"k.pem\"\nalg = \"EdDSA\"\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("check").arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success(), "missing key is an error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("k.pem"));

    let out = Command::new(BIN).arg("init").arg("--config").arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("k.pem"));
    let out = Command::new(BIN).arg("check").arg("--config").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("route \"a\": /a -> https://as.example") && text.contains("EdDSA"), "{text}");

    // init never overwrites without --force.
    let before = std::fs::read(dir.path().join("k.pem")).unwrap();
    let out = Command::new(BIN).arg("init").arg("--config").arg(&path).output().unwrap();
    assert!(out.status.success());
    assert_eq!(before, std::fs::read(dir.path().join("k.pem")).unwrap());

    let out = Command::new(BIN).args(["jwks", "--format", "registration"]).arg("--config").arg(&path).output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = &doc["routes"]["a"]["jwks"]["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["alg"], "EdDSA");
    assert!(key.get("d").is_none());
}
