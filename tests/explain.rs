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

/// The demo AS refusing a wrong `audience` says so (`assertion aud "https://wrong.example/token"
/// is neither the issuer ...`): the first hint is the audience one, not "is kid ...
/// registered", and `/.tokenrelay/exchanges`, the log line and `tokenrelay token` show the
/// same first hint, read from the same record.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_hint_follows_the_as_and_is_the_same_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let demo = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[demo_as]\nlisten = \"{demo}\"\n[routes.demo]\nprefix = \"/demo\"\n\
         upstream = \"http://{demo}\"\nissuer = \"http://{demo}\"\nendpoints = [\"/token\"]\n[routes.demo.client]\n\
         id = \"demo-app\"\nauth = \"private_key_jwt\"\nkey = \"client.pem\"\ncreate = true\n\
         audience = \"https://wrong.example/token\"\n"
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let proxy = ProxyProcess::start(&[], &path, "info");
    let (status, body) = post(&proxy.base, "/demo/token", "grant_type=client_credentials").await;
    assert_eq!(status, 401, "{body}");
    let said = body["error_description"].as_str().unwrap_or_default();
    assert!(said.contains("aud \"https://wrong.example/token\" is neither the issuer"), "{body}");

    let list = exchanges(&proxy.base).await;
    let record = list.iter().find(|x| x["route"] == "demo").unwrap();
    let first = record["hints"][0].as_str().unwrap().to_string();
    assert!(
        first.contains("aud") && first.contains("https://wrong.example/token") && first.contains("client.audience"),
        "the first hint names the audience: {:#}",
        record["hints"]
    );
    assert!(!first.contains("is kid"), "{first}");
    assert!(record["hints"].to_string().contains("tokenrelay jwks --route demo"), "the kid hint comes later");
    let log = proxy.log();
    let line = log.lines().find(|l| l.contains("route=demo") && l.contains("status=401")).expect(&log);
    assert!(line.contains("hint=\"does the AS expect another aud?"), "{line}");

    // `tokenrelay token`, against the demo AS the running proxy serves, leads with the same hint.
    let run = |json: bool| {
        let mut command = std::process::Command::new(BIN);
        command.arg("--config").arg(&path).args(["token", "--route", "demo"]);
        if json {
            command.arg("--json");
        }
        command.output().unwrap()
    };
    let text = run(false);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.status.code(), Some(1), "{stdout}{}", String::from_utf8_lossy(&text.stderr));
    let printed = stdout.lines().find_map(|l| l.strip_prefix("  hint: ")).unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(printed, first, "tokenrelay token and /.tokenrelay/exchanges lead with the same hint");
    let json: Value = serde_json::from_slice(&run(true).stdout).unwrap();
    assert_eq!(json["exchange"]["hints"][0], first.as_str());
    proxy.stop();
}

/// `[demo_as] tls = true` and a route still on `http://`: the advice names every field that
/// must change (`upstream`, `issuer`, `trust`); with `upstream` fixed and `issuer` not,
/// discovery names `issuer` only and the AS's `aud` refusal leads with the audience and the
/// issuer's https:// spelling; once everything is fixed, nothing is reported.
#[tokio::test(flavor = "multi_thread")]
async fn https_advice_names_every_field_and_follows_the_config_as_it_is_now() {
    let config = |upstream: &str, issuer: &str| {
        format!(
            "[demo_as]\nlisten = \"$DEMO_AS\"\ntls = true\n[routes.d]\nprefix = \"/d\"\nupstream = \"{upstream}://$DEMO_AS\"\n\
             issuer = \"{issuer}://$DEMO_AS\"\ntrust = [\"certs/demo-as-ca.pem\"]\nendpoints = [\"/token\"]\n\
             [routes.d.client]\nid = \"d-app\"\nauth = \"private_key_jwt\"\nkey = \"client.pem\"\ncreate = true\n"
        )
    };
    // Both on http://: the TLS port says so, naming upstream, issuer and trust together.
    let proxy = TestProxy::builder(config("http", "http")).demo_as().start().await;
    let demo = proxy.demo_as_addr();
    let (status, body) = proxy.post_form("/d/token", "grant_type=client_credentials").await;
    assert_eq!(status, 502, "{body}");
    let record = exchanges(&proxy.base).await.into_iter().find(|x| x["route"] == "d").unwrap();
    assert_eq!(record["refused_kind"], "upstream_not_http", "{record:#}");
    assert_eq!(record["refused"], body["error_description"]);
    let first = record["hints"][0].as_str().unwrap();
    for field in [
        format!("routes.d.upstream = \"https://{demo}\""),
        format!("routes.d.issuer = \"https://{demo}\""),
        "routes.d.trust".to_string(),
    ] {
        assert!(first.contains(&field), "{field} missing from the first hint: {first}");
    }
    proxy.stop().await;

    // upstream fixed, issuer not: discovery names the issuer alone, never upstream again.
    let proxy = TestProxy::builder(config("https", "http")).demo_as().start().await;
    let demo = proxy.demo_as_addr();
    let snapshot = proxy.running.snapshot();
    let route = snapshot.routes.iter().find(|r| r.cfg.name == "d").unwrap();
    let _ = route.metadata().await;
    let tokenrelay::discovery::State::Failed(why) = route.discovery.as_ref().unwrap().state() else {
        panic!("discovery of an http:// issuer on a TLS port fails")
    };
    let why = why.to_string();
    assert!(why.contains(&format!("routes.d.issuer = \"https://{demo}\"")), "{why}");
    assert!(!why.contains("routes.d.upstream"), "upstream is fixed and not named again: {why}");
    let (status, body) = proxy.post_form("/d/token", "grant_type=client_credentials").await;
    assert_eq!(status, 401, "the assertion's aud is the http:// issuer: {body}");
    let record = exchanges(&proxy.base).await.into_iter().find(|x| x["route"] == "d").unwrap();
    let first = record["hints"][0].as_str().unwrap();
    assert!(first.contains("client.audience"), "{first}");
    assert!(first.contains(&format!("routes.d.issuer = \"https://{demo}\"")), "{first}");
    proxy.stop().await;

    // All fixed: the token comes, and nothing is hinted.
    let proxy = TestProxy::builder(config("https", "https")).demo_as().start().await;
    let (status, body) = proxy.post_form("/d/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{body}");
    let record = exchanges(&proxy.base).await.into_iter().find(|x| x["route"] == "d").unwrap();
    assert_eq!(record["hints"], json!([]), "{record:#}");
    assert!(record.get("refused").is_none(), "{record:#}");
    proxy.stop().await;
}
