//! Explain and inspect: when the AS says no, the log line, `/.tokenrelay/exchanges` and
//! `tokenrelay token` show what was sent and why it failed, and never a secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::oidc::{cc_client, jwks, OidcProvider};
use common::process::{ProxyProcess, BIN};
use common::proxy::{write_key, TestProxy};
use common::upstream::{Recorder, Reply};
use serde_json::{json, Value};
use tokenrelay::jose::Alg;

const PLANTED_SECRET: &str = "planted-secret-4f9c2a-do-not-show";

async fn exchanges(base: &str) -> Vec<Value> {
    let list: Value = common::proxy::client()
        .get(format!("{base}/.tokenrelay/exchanges"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list.as_array().unwrap().clone()
}

async fn post(base: &str, path: &str, body: &str) -> (u16, Value) {
    let resp = common::proxy::client()
        .post(format!("{base}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

/// A client registered with another key than the route signs with: oidc-provider answers
/// `invalid_client`; the log line and the exchange record name the kid and aud sent and the
/// command that prints the key to register.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_client_from_a_real_as_is_explained_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (_, used) = write_key(dir.path(), "client.pem", Alg::ES256);
    let (_, registered) = write_key(dir.path(), "other.pem", Alg::ES256);
    let op = OidcProvider::start(json!({ "clients": [
        cc_client("wrong-key", json!({ "token_endpoint_auth_method": "private_key_jwt", "jwks": jwks(&registered) })),
    ]}))
    .await;
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[routes.as]\nprefix = \"/as\"\nupstream = \"{i}\"\nissuer = \"{i}\"\n\
         [routes.as.client]\nid = \"wrong-key\"\nauth = \"private_key_jwt\"\nkey = \"client.pem\"\n\
         [routes.post]\nprefix = \"/post\"\nupstream = \"{i}\"\n[routes.post.client]\nid = \"other\"\n\
         auth = \"client_secret_post\"\nsecret = \"{PLANTED_SECRET}\"\n",
        i = op.issuer
    );
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    let proxy = ProxyProcess::start(&[], &dir.path().join("proxy.toml"), "info");
    let (status, body) =
        post(&proxy.base, "/as/token", "grant_type=client_credentials&code_verifier=planted-verifier-77").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client");
    post(&proxy.base, "/post/token", "grant_type=client_credentials").await;

    let list = exchanges(&proxy.base).await;
    let failed = list.iter().find(|x| x["route"] == "as").unwrap();
    assert_eq!(failed["answer"]["error"], "invalid_client");
    assert_eq!(failed["actions"]["kid"], used.thumbprint());
    assert_eq!(failed["assertion"]["claims"]["aud"], op.issuer.as_str());
    assert_eq!(failed["assertion"]["claims"]["iss"], "wrong-key");
    assert_eq!(failed["assertion"]["header"]["kid"], used.thumbprint());
    let hints: Vec<&str> = failed["hints"].as_array().unwrap().iter().map(|h| h.as_str().unwrap()).collect();
    assert!(hints[0].contains("tokenrelay jwks --route as") && hints[0].contains(used.thumbprint()), "{hints:?}");
    assert!(hints.iter().any(|h| h.contains(&op.issuer) && h.contains("audience")), "{hints:?}");
    let verifier = failed["request"]["params"].as_array().unwrap().iter().find(|p| p["name"] == "code_verifier");
    assert_eq!(verifier.unwrap()["value"], Value::Null, "values of secret-bearing params are not kept");

    // Nothing secret anywhere: not the planted secret, the verifier, an assertion, a signature.
    let everything = serde_json::to_string(&list).unwrap();
    let recorded = op.token_requests().await;
    let sent_assertion = common::oidc::param(&recorded[0], "client_assertion").unwrap();
    let signature = sent_assertion.rsplit('.').next().unwrap();
    for secret in [PLANTED_SECRET, "planted-verifier-77", signature, sent_assertion.as_str()] {
        assert!(!everything.contains(secret), "{secret:?} leaked into the exchanges JSON");
    }
    let log = proxy.log();
    let line = log.lines().find(|l| l.contains("route=as") && l.contains("status=401")).expect(&log);
    for expected in
        ["as_error=\"invalid_client\"", &format!("kid=\"{}\"", used.thumbprint()), "tokenrelay jwks --route as"]
    {
        assert!(line.contains(expected), "{expected:?} missing from the log line: {line}");
    }
    assert!(!log.contains(PLANTED_SECRET) && !log.contains(signature));
}

/// A fake AS that dislikes the audience, the DPoP htu, and whose clock is off.
#[tokio::test]
async fn wrong_audience_htu_mismatch_and_clock_skew_produce_their_hints() {
    let up = Recorder::start(|seen, _| {
        if seen.header("dpop").is_some() {
            return Reply::json(400, json!({"error": "invalid_dpop_proof", "error_description": "htu mismatch"}));
        }
        Reply::json(401, json!({"error": "invalid_client", "error_description": "audience mismatch"}))
            .header("date", "Sat, 01 Jan 2000 00:00:00 GMT")
    })
    .await;
    let config = format!(
        "[routes.aud]\nprefix = \"/aud\"\nupstream = \"{u}\"\n[routes.aud.client]\nid = \"app\"\nauth = \"private_key_jwt\"\n\
         key = \"client.pem\"\naudience = \"https://not-the-as.example/\"\n\
         [routes.dpop]\nprefix = \"/dpop\"\nupstream = \"{u}\"\n[routes.dpop.dpop]\nkey = \"dpop.pem\"\n",
        u = up.url()
    );
    let builder = TestProxy::builder(config);
    write_key(builder.dir(), "client.pem", Alg::ES256);
    write_key(builder.dir(), "dpop.pem", Alg::ES256);
    let proxy = builder.start().await;
    proxy.post_form("/aud/token", "grant_type=client_credentials").await;
    proxy.post_form("/dpop/token", "grant_type=client_credentials").await;
    let list = exchanges(&proxy.base).await;
    let aud = list.iter().find(|x| x["route"] == "aud").unwrap();
    let hints = aud["hints"].to_string();
    assert!(hints.contains("https://not-the-as.example/") && hints.contains("audience"), "{hints}");
    assert!(hints.contains("clock differs from the AS's by"), "the skewed Date: {hints}");
    assert!(aud["answer"]["clock_skew_s"].as_i64().unwrap() < -30, "{aud}");
    let dpop = list.iter().find(|x| x["route"] == "dpop").unwrap();
    let hints = dpop["hints"].to_string();
    assert!(hints.contains(&format!("{}/token", up.url())) && hints.contains("htu"), "{hints}");
    assert_eq!(dpop["proof"]["header"]["typ"], "dpop+jwt");
    proxy.stop().await;
}

/// `tokenrelay token` against the demo AS: explained, `verified` checks shown, exit 0; a route
/// whose AS refuses: exit 1 with the hint.
#[test]
fn token_command_explains_one_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let demo = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = format!(
        "[demo_as]\nlisten = \"{demo}\"\n[routes.demo]\nprefix = \"/demo\"\nupstream = \"http://{demo}\"\n\
         issuer = \"http://{demo}\"\n[routes.demo.client]\nid = \"demo-app\"\nauth = \"private_key_jwt\"\n\
         key = \"client.pem\"\ncreate = true\n[routes.demo.dpop]\nkey = \"dpop.pem\"\ncreate = true\n\
         [routes.broken]\nprefix = \"/broken\"\nupstream = \"http://{demo}\"\n[routes.broken.client]\n\
         id = \"demo-app\"\nauth = \"private_key_jwt\"\nkey = \"client.pem\"\naudience = \"https://wrong.example/\"\n"
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let run = |route: &str| {
        std::process::Command::new(BIN).arg("--config").arg(&path).args(["token", "--route", route]).output().unwrap()
    };
    let ok = run("demo");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.contains("client auth: private_key_jwt"), "{stdout}");
    assert!(stdout.contains("\"verified\""), "the demo AS's checks are shown: {stdout}");
    assert!(stdout.contains("\"access_token\": \"…\""), "the token is hidden without --show-token: {stdout}");
    let failed = run("broken");
    let stdout = String::from_utf8_lossy(&failed.stdout);
    assert_eq!(failed.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("AS error: invalid_client") && stdout.contains("hint:"), "{stdout}");
    assert!(stdout.contains("https://wrong.example/") && stdout.contains("audience"), "the aud hint: {stdout}");
}
