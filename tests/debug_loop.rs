//! The debugging loop through the real binary: an exchange fails, the developer saves a fix,
//! and replays the exchange (`POST /.tokenrelay/exchanges/{id}/replay`, `tokenrelay replay`)
//! without re-running the app; the reloads endpoint shows the save, the diff names what the
//! fix changed, and a request that carried a value tokenrelay never keeps is refused (409).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::process::{ProxyProcess, BIN};
use serde_json::Value;

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `tokenrelay init` (the demo template) on free ports, with the assertion's `aud` set to
/// `wrong`; returns the folder and the config text that has it right.
fn demo_with_wrong_audience(wrong: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = tr(dir.path(), &["init"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (listen, demo) = (free_port(), free_port());
    let good = std::fs::read_to_string(dir.path().join("proxy.toml"))
        .unwrap()
        .replace("127.0.0.1:8787", &format!("127.0.0.1:{listen}"))
        .replace("127.0.0.1:9443", &format!("127.0.0.1:{demo}"));
    let bad = common::proxy::edit(
        &good,
        "alg = \"ES256\"                    # ES256",
        &format!("audience = \"{wrong}\"\nalg = \"ES256\"                    # ES256"),
    );
    std::fs::write(dir.path().join("proxy.toml"), bad).unwrap();
    (dir, good)
}

async fn get(base: &str, path: &str) -> Value {
    let resp = common::proxy::client().get(format!("{base}{path}")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.json().await.unwrap()
}

async fn post_form(base: &str, path: &str, body: &str) -> (u16, Value) {
    let resp = common::proxy::client()
        .post(format!("{base}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

/// The newest exchange of `route`.
async fn newest(base: &str, route: &str) -> Value {
    let list = get(base, &format!("/.tokenrelay/exchanges?route={route}")).await;
    list[0].clone()
}

/// Waits until `/.tokenrelay/reloads` holds `n` attempts; returns them, newest first.
async fn reloads(base: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = get(base, "/.tokenrelay/reloads").await;
        let list = list.as_array().unwrap().clone();
        if list.len() >= n {
            return list;
        }
        assert!(Instant::now() < deadline, "no reload {n} within 30 s: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saved_fix_replayed_gives_200_and_the_diff_names_the_claim() {
    let wrong = "https://wrong.example/token";
    let (dir, good) = demo_with_wrong_audience(wrong);
    let config = dir.path().join("proxy.toml");
    let proxy = ProxyProcess::start(&["run"], &config, "info");
    let base = proxy.base.clone();

    // The app's request fails: the demo AS checks the assertion's aud.
    let (status, answer) = post_form(&base, "/demo/token", "grant_type=client_credentials&scope=read").await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"], "invalid_client");
    let failed = newest(&base, "demo").await;
    let id = failed["id"].as_u64().unwrap();
    assert_eq!(failed["config_version"], 1);
    assert_eq!(failed["assertion"]["claims"]["aud"], wrong);
    assert_eq!(failed["replay"]["replayable"], true, "{failed}");
    assert_eq!(failed["replay_of"], Value::Null);

    // A broken save is refused and shown as such; then the fix is accepted.
    std::fs::write(&config, good.replace("[routes.demo.client]", "[routes.demo.client\n")).unwrap();
    let list = reloads(&base, 1).await;
    assert_eq!(list[0]["accepted"], false, "{list:?}");
    assert_eq!(list[0]["version"], 1);
    assert!(list[0]["error"].as_str().unwrap().contains("proxy.toml"), "{list:?}");
    assert_eq!(list[0]["files"], serde_json::json!(["proxy.toml"]));
    std::fs::write(&config, &good).unwrap();
    let list = reloads(&base, 2).await;
    assert_eq!(list[0]["accepted"], true, "{list:?}");
    assert_eq!(list[0]["version"], 2);
    assert_eq!(list[0]["files"], serde_json::json!(["proxy.toml"]));
    assert_eq!(list[0]["error"], Value::Null);

    // A plain `curl -X POST`: no header, no body.
    let resp = common::proxy::client().post(format!("{base}/.tokenrelay/exchanges/{id}/replay")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let replayed: Value = resp.json().await.unwrap();
    assert_eq!(replayed["replay_of"], id, "{replayed}");
    assert_ne!(replayed["id"], id);
    assert_eq!(replayed["status"], 200, "the AS accepted the fixed assertion: {replayed}");
    assert_eq!(replayed["config_version"], 2);
    assert_ne!(replayed["assertion"]["claims"]["aud"], wrong);
    assert_ne!(replayed["assertion"]["claims"]["jti"], failed["assertion"]["claims"]["jti"], "signed afresh");
    let sent: Vec<(&str, &str)> = replayed["request"]["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["value"].as_str().unwrap()))
        .collect();
    assert_eq!(sent, [("grant_type", "client_credentials"), ("scope", "read")], "the recorded form, again");

    // The diff names the changed claim and the config version; per-signature claims are not
    // differences.
    let new_id = replayed["id"].as_u64().unwrap();
    let diff = get(&base, &format!("/.tokenrelay/exchanges/{id}/diff/{new_id}")).await;
    let fields: Vec<&str> =
        diff["differences"].as_array().unwrap().iter().map(|d| d["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&"assertion.claims.aud"), "{diff}");
    assert!(fields.contains(&"config_version") && fields.contains(&"status"), "{diff}");
    assert!(!fields.iter().any(|f| f.ends_with(".jti") || f.ends_with(".iat") || f.ends_with(".exp")), "{diff}");
    let aud = diff["differences"].as_array().unwrap().iter().find(|d| d["field"] == "assertion.claims.aud").unwrap();
    assert_eq!(aud["a"], wrong);

    // `tokenrelay replay ID` prints it like `tokenrelay token` and exits 0.
    let out = tr(dir.path(), &["replay", &id.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("exchange ") && text.contains("via route demo: POST /demo/token -> 200"), "{text}");
    assert!(text.contains("client auth: private_key_jwt"), "{text}");

    // An unknown id is 404; a GET is not a replay.
    let resp =
        common::proxy::client().post(format!("{base}/.tokenrelay/exchanges/999999/replay")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let out = tr(dir.path(), &["replay", "999999"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"), "{out:?}");
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_with_values_never_kept_is_not_replayable_and_the_guards_hold() {
    let (dir, good) = demo_with_wrong_audience("https://wrong.example/token");
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, &good).unwrap();
    let proxy = ProxyProcess::start(&["run"], &config, "info");
    let base = proxy.base.clone();

    post_form(&base, "/demo/token", "grant_type=authorization_code&code=planted-code-1&code_verifier=planted-v-2&redirect_uri=http%3A%2F%2Flocalhost%2Fcb")
        .await;
    let record = newest(&base, "demo").await;
    let id = record["id"].as_u64().unwrap();
    assert_eq!(record["replay"]["replayable"], false, "{record}");
    assert_eq!(record["replay"]["not_kept"], serde_json::json!(["code", "code_verifier"]));
    let resp = common::proxy::client().post(format!("{base}/.tokenrelay/exchanges/{id}/replay")).send().await.unwrap();
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.unwrap();
    let why = body["error_description"].as_str().unwrap();
    assert!(why.contains("\"code\"") && why.contains("\"code_verifier\""), "{why}");
    let out = tr(dir.path(), &["replay", &id.to_string()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("\"code\"") && err.contains("409"), "{shown}{err}");

    // A replayable one, refused to a foreign page (Origin) and to a cross-site fetch.
    post_form(&base, "/demo/token", "grant_type=client_credentials").await;
    let id = newest(&base, "demo").await["id"].as_u64().unwrap();
    let before = get(&base, "/.tokenrelay/exchanges").await.as_array().unwrap().len();
    for (name, value) in [("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")] {
        let resp = common::proxy::client()
            .post(format!("{base}/.tokenrelay/exchanges/{id}/replay"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{name}: {value}");
    }
    let after = get(&base, "/.tokenrelay/exchanges").await.as_array().unwrap().len();
    assert_eq!(before, after, "a refused replay sends nothing");
    // Same-origin (the inspector's own button) is fine.
    let resp = common::proxy::client()
        .post(format!("{base}/.tokenrelay/exchanges/{id}/replay"))
        .header("origin", base.as_str())
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // `/.tokenrelay` without its slash leads to the page.
    let resp = common::proxy::client().get(format!("{base}/.tokenrelay")).send().await.unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(resp.headers()["location"], "/.tokenrelay/");
    proxy.stop();
}

/// `[routes.NAME.dpop] token_type = "Bearer"` with `upgrade_bearer`: an app whose library
/// refuses `DPoP` gets `Bearer`, sends the token as `Bearer`, and the API call still carries
/// a proof the demo AS's resource accepts.
#[tokio::test(flavor = "multi_thread")]
async fn a_bearer_answer_for_a_dpop_bound_token_still_works_with_upgrade_bearer() {
    let (dir, good) = demo_with_wrong_audience("https://wrong.example/token");
    let config = dir.path().join("proxy.toml");
    let paired = common::proxy::edit(
        &good,
        "[routes.demo.dpop]               # DPoP proofs (RFC 9449) on token requests",
        "[routes.demo.dpop]\ntoken_type = \"Bearer\"\nupgrade_bearer = true",
    );
    // Without the upgrade the pair makes no sense: check says so, naming the key.
    let refused = paired.replace("upgrade_bearer = true", "upgrade_bearer = false");
    std::fs::write(&config, &refused).unwrap();
    let out = tr(dir.path(), &["check", "--offline"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("routes.demo.dpop.token_type") && err.contains("upgrade_bearer"),
        "{err}"
    );

    std::fs::write(&config, &paired).unwrap();
    let proxy = ProxyProcess::start(&["run"], &config, "info");
    let base = proxy.base.clone();
    let (status, answer) = post_form(&base, "/demo/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["token_type"], "Bearer", "{answer}");
    let record = newest(&base, "demo").await;
    assert_eq!(record["answer"]["token_type"], "DPoP", "the AS's own answer is recorded");
    assert_eq!(record["actions"]["answer_token_type"], "Bearer");
    assert_eq!(record["issued"]["binding"]["verdict"], "bound", "{record}");

    let token = answer["access_token"].as_str().unwrap();
    let resp = common::proxy::client()
        .get(format!("{base}/demo/resource"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{body}");
    proxy.stop();
}
