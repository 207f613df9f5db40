//! Client assertions made elsewhere (`client.assertion`, RFC 7523 §2.2): from a file rotated
//! under load, from a command run once per lifetime, refused with a 502 naming the source
//! when missing, expired, malformed or failing; reused as is on the `use_dpop_nonce` retry;
//! accepted by the demo AS with a federated identity credential registered the way Entra
//! registers one (external issuer, its JWKS, expected `sub` and `aud`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::process::BIN;
use common::proxy::TestProxy;
use common::upstream::{Recorder, Reply};
use serde_json::{json, Map, Value};
use tokenrelay::jose::{Alg, SigningKey};

const ISSUER: &str = "https://token.actions.example.test";
const SUBJECT: &str = "repo:octo/app:ref:refs/heads/main";
const AUDIENCE: &str = "api://AzureADTokenExchange";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The external issuer: its key, and its JWKS written to `dir/issuer-jwks.json`.
fn issuer(dir: &Path) -> SigningKey {
    let key = SigningKey::generate(Alg::ES256).unwrap();
    let mut jwk = key.public_jwk().clone();
    jwk.insert("kid".into(), "issuer-key-1".into());
    std::fs::write(dir.join("issuer-jwks.json"), json!({ "keys": [jwk] }).to_string()).unwrap();
    key
}

/// A workload identity token as the external issuer would mint it.
fn mint(key: &SigningKey, jti: &str, sub: &str, exp: u64) -> String {
    let mut header = Map::new();
    header.insert("kid".into(), "issuer-key-1".into());
    header.insert("typ".into(), "JWT".into());
    let claims = json!({ "iss": ISSUER, "sub": sub, "aud": AUDIENCE, "iat": now(), "exp": exp, "jti": jti });
    key.sign(header, &claims).unwrap()
}

fn demo_config(assertion: &str) -> String {
    format!(
        r#"[demo_as]
listen = "$DEMO_AS"
dpop_nonce = true
[demo_as.federated.fed-app]
issuer = "{ISSUER}"
jwks = "issuer-jwks.json"
subject = "{SUBJECT}"
[routes.fed]
prefix = "/fed"
upstream = "http://$DEMO_AS"
[routes.fed.client]
id = "fed-app"
auth = "private_key_jwt"
assertion = {assertion}
[routes.fed.dpop]
key = "dpop.pem"
create = true
"#
    )
}

async fn token(proxy: &TestProxy) -> (u16, Value) {
    proxy.post_form("/fed/token", "grant_type=client_credentials").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_rotated_under_load_fails_nothing_and_is_used_within_a_second() {
    let builder = TestProxy::builder(demo_config(r#"{ file = "token.jwt" }"#)).demo_as();
    let key = issuer(builder.dir());
    let token_path = builder.dir().join("token.jwt");
    std::fs::write(&token_path, mint(&key, "first", SUBJECT, now() + 3600)).unwrap();
    let proxy = Arc::new(builder.start().await);

    let (status, body) = token(&proxy).await;
    assert_eq!(status, 200, "{body}");
    let v = &body["verified"];
    assert_eq!(v["federated"], true, "{body}");
    assert_eq!(v["assertion_iss"], ISSUER);
    assert_eq!(v["assertion_jti"], "first");
    assert_eq!(v["assertion_checks"], json!(["signature", "iss", "sub", "aud", "exp"]));
    assert!(v.get("dpop_jti").is_some(), "the DPoP proof was checked too (after a use_dpop_nonce retry): {body}");

    // Load: 4 clients in a loop; each answer records (sent at, jti the AS verified).
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..4 {
        let (proxy, stop, failures) = (proxy.clone(), stop.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = start.elapsed();
                let (status, body) = token(&proxy).await;
                if status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed: {status} {body}");
                    continue;
                }
                seen.push((sent, body["verified"]["assertion_jti"].as_str().unwrap_or_default().to_string()));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The kubelet's way: write beside, rename over.
    let tmp = token_path.with_extension("tmp");
    std::fs::write(&tmp, mint(&key, "second", SUBJECT, now() + 3600)).unwrap();
    std::fs::rename(&tmp, &token_path).unwrap();
    let renamed = start.elapsed();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no request failed during the rotation");
    assert!(seen.iter().any(|(_, j)| j == "first") && seen.len() > 8, "{seen:?}");
    let late: Vec<_> = seen.iter().filter(|(at, _)| *at > renamed + Duration::from_secs(1)).collect();
    assert!(!late.is_empty(), "requests were sent more than 1 s after the rename");
    assert!(late.iter().all(|(_, j)| j == "second"), "the new assertion is used within 1 s: {late:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_runs_once_per_lifetime_and_a_failing_one_is_a_502_naming_it() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let key = issuer(dir);
    std::fs::write(dir.join("token.jwt"), mint(&key, "cmd", SUBJECT, now() + 3600)).unwrap();
    // Counts its runs; says something on stderr that must stay out of the answer.
    std::fs::write(dir.join("issue.sh"), "echo run >> runs.log\necho 'helper: minted' >&2\ncat token.jwt\n").unwrap();
    // No shell unless asked for: this argv names one explicitly.
    let config = demo_config(&format!(r#"{{ command = ["sh", "-c", "cd '{}' && sh issue.sh"] }}"#, dir.display()));
    let proxy = TestProxy::builder(config).in_dir(dir).demo_as().start().await;
    for _ in 0..5 {
        let (status, body) = token(&proxy).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["verified"]["assertion_jti"], "cmd");
    }
    let runs = std::fs::read_to_string(dir.join("runs.log")).unwrap();
    assert_eq!(runs.lines().count(), 1, "called once for its lifetime, not per request");
    proxy.stop().await;

    let builder = TestProxy::builder(demo_config(
        r#"{ command = ["sh", "-c", "printf 'no %s\n' credentials-xyz >&2; exit 3"] }"#,
    ))
    .demo_as();
    issuer(builder.dir());
    let proxy = builder.start().await;
    let (status, body) = token(&proxy).await;
    let text = body.to_string();
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("client.assertion from command") && text.contains("exit"), "{text}");
    assert!(!text.contains("no credentials-xyz"), "stderr goes to the debug log, not the answer: {text}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_expired_malformed_and_foreign_assertions_are_refused() {
    let builder = TestProxy::builder(demo_config(r#"{ file = "token.jwt" }"#)).demo_as();
    let key = issuer(builder.dir());
    let path = builder.dir().join("token.jwt");
    let proxy = builder.start().await;
    let (status, body) = token(&proxy).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.to_string().contains("token.jwt") && body.to_string().contains("not found"), "{body}");

    std::fs::write(&path, mint(&key, "old", SUBJECT, now() - 10)).unwrap();
    let (status, body) = token(&proxy).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.to_string().contains("token.jwt") && body.to_string().contains("expired"), "{body}");

    std::fs::write(&path, "this is not a jwt\n").unwrap();
    let (status, body) = token(&proxy).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.to_string().contains("not a signed JWT"), "{body}");

    // Well formed, but for another workload: the AS refuses it (and says why).
    std::fs::write(&path, mint(&key, "other", "repo:evil/fork:ref:refs/heads/main", now() + 600)).unwrap();
    let (status, body) = token(&proxy).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.to_string().contains("is not the subject"), "{body}");

    // Signed by a key that is not the issuer's.
    let stranger = SigningKey::generate(Alg::ES256).unwrap();
    std::fs::write(&path, mint(&stranger, "forged", SUBJECT, now() + 600)).unwrap();
    let (status, body) = token(&proxy).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.to_string().contains("signature"), "{body}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_use_dpop_nonce_retry_sends_the_same_assertion_with_a_fresh_proof() {
    let up = Recorder::start(|_, n| {
        if n == 0 {
            Reply::json(400, json!({"error": "use_dpop_nonce"})).header("DPoP-Nonce", "n-1")
        } else {
            Reply::token()
        }
    })
    .await;
    let config = format!(
        "[routes.r]\nprefix = \"/r\"\nupstream = \"{}\"\n[routes.r.client]\nid = \"fed-app\"\nauth = \"private_key_jwt\"\n\
         assertion = {{ file = \"token.jwt\" }}\n[routes.r.dpop]\nkey = \"dpop.pem\"\ncreate = true\n",
        up.url()
    );
    let builder = TestProxy::builder(config);
    let key = issuer(builder.dir());
    let jwt = mint(&key, "once", SUBJECT, now() + 600);
    std::fs::write(builder.dir().join("token.jwt"), &jwt).unwrap();
    let proxy = builder.start().await;
    let (status, body) = proxy.post_form("/r/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{body}");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.param("client_assertion").as_deref(), Some(jwt.as_str()), "sent as it is");
        assert_eq!(
            s.param("client_assertion_type").as_deref(),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        assert_eq!(s.param("client_id").as_deref(), Some("fed-app"));
    }
    let (p1, p2) = (seen[0].header("dpop").unwrap(), seen[1].header("dpop").unwrap());
    assert_ne!(p1, p2, "a fresh DPoP proof on the retry");
    assert_eq!(common::jwt::claims(&p2)["nonce"], "n-1");
    proxy.stop().await;
}

#[test]
fn check_shows_the_source_and_the_current_assertion() {
    let dir = tempfile::tempdir().unwrap();
    let key = issuer(dir.path());
    let exp = now() + 3600;
    std::fs::write(dir.path().join("token.jwt"), mint(&key, "chk", SUBJECT, exp)).unwrap();
    let config =
        "[routes.r]\nprefix = \"/r\"\nupstream = \"http://127.0.0.1:9\"\n[routes.r.client]\nid = \"fed-app\"\n\
                  auth = \"private_key_jwt\"\nassertion = { file = \"token.jwt\" }\n";
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN).args(["check", "--offline", "--config"]).arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("client assertion from file") && stdout.contains("token.jwt"), "{stdout}");
    for part in [ISSUER, SUBJECT, AUDIENCE, &exp.to_string()] {
        assert!(stdout.contains(part), "{part}: {stdout}");
    }
    std::fs::remove_file(dir.path().join("token.jwt")).unwrap();
    let out = Command::new(BIN).args(["check", "--offline", "--config"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("client.assertion from file") && err.contains("not found"), "{err}");
}
