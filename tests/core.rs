//! Reverse mode end to end: what the upstream receives, and what the app sees when things
//! go wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::jwt;
use common::proxy::{edit, write_key, TestProxy};
use common::upstream::{Recorder, Reply};
use tokenrelay::jose::{self, Alg, VerifyKey};

fn pkjwt_config(upstream: &str, extra_route: &str) -> String {
    format!(
        r#"
[routes.as]
prefix = "/as"
upstream = "{upstream}"
issuer = "https://issuer.example"
timeout = "2s"
{extra_route}

[routes.as.client]
id = "app-1"
auth = "private_key_jwt"
key = "client.pem"
alg = "ES256"

[routes.as.headers]
set = {{ "x-request-source" = "tokenrelay", "x-env" = "test" }}
remove = ["cookie"]

[routes.as.params]
add = {{ scope = "read" }}
set = {{ resource = "https://api.example.com" }}
remove = ["foo"]
"#
    )
}

async fn pkjwt_proxy(upstream: &Recorder, extra_route: &str) -> (TestProxy, std::sync::Arc<jose::SigningKey>) {
    let builder = TestProxy::builder(pkjwt_config(&upstream.url(), extra_route));
    let (_, key) = write_key(builder.dir(), "client.pem", Alg::ES256);
    (builder.start().await, key)
}

#[tokio::test]
async fn params_tokenrelay_does_not_own_reach_the_as_byte_for_byte() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let (proxy, key) = pkjwt_proxy(&up, "").await;
    // PKCE verifier with unreserved chars, a code with %-escapes and '+', a redirect_uri
    // encoded one way, a raw invalid-UTF-8 byte in a parameter tokenrelay does not own.
    let original: &[u8] = b"grant_type=authorization_code&code=Spl%2Bx%2F~a+b%7E&code_verifier=dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk~.&redirect_uri=http%3A%2F%2Flocalhost%3A3000%2Fcb&state=%FF%FEraw";
    let (status, _) = proxy.post_form("/as/token", original.to_vec()).await;
    assert_eq!(status, 200);
    let seen = &up.seen()[0];
    let body = &seen.body;
    for part in [
        &b"grant_type=authorization_code"[..],
        b"code=Spl%2Bx%2F~a+b%7E",
        b"code_verifier=dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk~.",
        b"redirect_uri=http%3A%2F%2Flocalhost%3A3000%2Fcb",
        b"state=%FF%FEraw",
    ] {
        assert!(
            body.windows(part.len()).any(|w| w == part),
            "{} missing from {}",
            String::from_utf8_lossy(part),
            seen.body_str()
        );
    }
    // And it is signed.
    let assertion = seen.param("client_assertion").unwrap();
    jose::verify(&assertion, Alg::ES256, VerifyKey::Jwk(key.public_jwk())).unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn params_and_headers_semantics_at_the_as() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let (proxy, _) = pkjwt_proxy(&up, "").await;
    let resp = proxy
        .http
        .post(format!("{}/as/token?x=1", proxy.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", "session=abc")
        .header("x-request-source", "the-app")
        .header("x-app-header", "kept")
        .body("grant_type=client_credentials&foo=drop-me&resource=app-choice&keep=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store", "the token response is relayed as is (RFC 6749 §5.1)");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["access_token"], "upstream-issued-token-VALUE");

    let seen = &up.seen()[0];
    assert_eq!(seen.path, "/token?x=1", "prefix stripped, query kept");
    assert_eq!(seen.header("cookie"), None, "headers.remove");
    assert_eq!(seen.header("x-request-source").as_deref(), Some("tokenrelay"), "headers.set replaces");
    assert_eq!(seen.header("x-env").as_deref(), Some("test"), "headers.set adds");
    assert_eq!(seen.header("x-app-header").as_deref(), Some("kept"));
    assert_eq!(seen.param("foo"), None, "params.remove");
    assert_eq!(seen.param("scope").as_deref(), Some("read"), "params.add when absent");
    assert_eq!(seen.param("resource").as_deref(), Some("https://api.example.com"), "params.set wins");
    assert_eq!(seen.param("keep").as_deref(), Some("1"));
    assert_eq!(seen.header("content-length").unwrap(), seen.body.len().to_string(), "fresh Content-Length");

    // params.add never overrides what the app sent.
    let (status, _) = proxy.post_form("/as/token", "grant_type=client_credentials&scope=write").await;
    assert_eq!(status, 200);
    assert_eq!(up.seen()[1].param("scope").as_deref(), Some("write"));
    proxy.stop().await;
}

#[tokio::test]
async fn competing_credentials_are_removed_and_assertion_claims_are_right() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let (proxy, key) = pkjwt_proxy(&up, "").await;
    let resp = proxy
        .http
        .post(format!("{}/as/token", proxy.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", "Basic YXBwLTE6c2VjcmV0")
        .header("dpop", "app-sent-proof")
        .body("grant_type=client_credentials&client_id=app-1&client_secret=app-secret&client_assertion=eyJold&client_assertion_type=old")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = &up.seen()[0];
    // RFC 6749 §2.3: one client authentication method per request.
    assert_eq!(seen.header("authorization"), None, "Basic removed");
    assert_eq!(seen.param("client_secret"), None, "client_secret removed");
    let form = seen.form();
    assert_eq!(form.iter().filter(|(k, _)| k == "client_assertion").count(), 1);
    assert_eq!(form.iter().filter(|(k, _)| k == "client_id").count(), 1);
    assert_eq!(
        seen.param("client_assertion_type").as_deref(),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    let assertion = seen.param("client_assertion").unwrap();
    let v = jose::verify(&assertion, Alg::ES256, VerifyKey::Jwk(key.public_jwk())).unwrap();
    assert_eq!(v.claims["iss"], "app-1");
    assert_eq!(v.claims["sub"], "app-1");
    assert_eq!(v.claims["aud"], "https://issuer.example", "RFC 7523 §3: aud is the issuer, not the proxy URL");
    assert_eq!(v.header["kid"], key.thumbprint());
    proxy.stop().await;
}

#[tokio::test]
async fn every_request_gets_an_assertion_with_a_fresh_jti() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let (proxy, _) = pkjwt_proxy(&up, "").await;
    for _ in 0..3 {
        assert_eq!(proxy.post_form("/as/token", "grant_type=client_credentials").await.0, 200);
    }
    let jtis: std::collections::HashSet<String> =
        up.seen().iter().map(|s| jwt::claims(&s.param("client_assertion").unwrap())["jti"].to_string()).collect();
    assert_eq!(jtis.len(), 3, "RFC 7523 §3: a fresh jti per request");
    proxy.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_nothing_unsigned_reaches_the_as() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let (proxy, _) = pkjwt_proxy(&up, "").await;

    // Duplicate client_id (RFC 6749 §3.2: no parameter twice).
    let (status, body) =
        proxy.post_form("/as/token", "grant_type=client_credentials&client_id=app-1&client_id=app-1").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");
    assert!(body["error_description"].as_str().unwrap().contains("client_id"), "{body}");

    // Malformed: owned parameter that is not UTF-8 (RFC 6749 Appendix B).
    let (status, body) = proxy.post_form("/as/token", b"grant_type=client_credentials&client_id=%FF".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("UTF-8"), "{body}");

    // Not a form body.
    let resp = proxy
        .http
        .post(format!("{}/as/token", proxy.base))
        .header("content-type", "application/json")
        .body(r#"{"grant_type":"client_credentials"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error_description"].as_str().unwrap().contains("x-www-form-urlencoded"), "{body}");

    // GET to the token endpoint.
    let resp = proxy.http.get(format!("{}/as/token", proxy.base)).send().await.unwrap();
    assert_eq!(resp.status(), 400);

    // Over the 64 KiB default limit.
    let big = format!("grant_type=client_credentials&pad={}", "a".repeat(70 * 1024));
    let (status, body) = proxy.post_form("/as/token", big).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("max_body"), "{body}");

    // A path no route claims: 404 listing prefixes.
    let (status, body) = proxy.post_form("/nope/token", "grant_type=client_credentials").await;
    assert_eq!(status, 404);
    assert!(body["error_description"].as_str().unwrap().contains("/as"), "{body}");

    // Foreign Origin (a web page trying to use the local signer).
    let resp = proxy
        .http
        .post(format!("{}/as/token", proxy.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "https://evil.example")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    // Spellings a lenient AS would route to its token endpoint are never relayed unsigned.
    for path in ["/as//token", "/as/Token", "/as/token/"] {
        let (status, body) = proxy.post_form(path, "grant_type=client_credentials").await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error_description"].as_str().unwrap().contains("\"/as/token\""), "{body}");
    }
    assert!(up.seen().is_empty(), "nothing reached the AS: {:?}", up.seen());

    // RFC 3986 §6.2.2: `%74oken` *is* `token` (an unreserved character, encoded): the token
    // endpoint, signed.
    let (status, body) = proxy.post_form("/as/%74oken", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{body}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    for s in &seen {
        assert_eq!(s.path, "/token", "sent in normal form");
        assert!(s.param("client_assertion").is_some(), "signed: {}", s.body_str());
    }
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    // A port that was just free: bind, note, drop.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let builder = TestProxy::builder(pkjwt_config(&format!("http://{dead}"), ""));
    write_key(builder.dir(), "client.pem", Alg::ES256);
    let proxy = builder.start().await;
    let (status, body) = proxy.post_form("/as/token", "grant_type=client_credentials").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "tokenrelay_error");
    assert!(body["error_description"].as_str().unwrap().contains("unreachable"), "{body}");
    proxy.stop().await;

    let slow = Recorder::start(|_, _| Reply::token().delayed(Duration::from_secs(3))).await;
    let builder = TestProxy::builder(edit(&pkjwt_config(&slow.url(), ""), "timeout = \"2s\"", "timeout = \"300ms\""));
    write_key(builder.dir(), "client.pem", Alg::ES256);
    let proxy = builder.start().await;
    let started = std::time::Instant::now();
    let (status, body) = proxy.post_form("/as/token", "grant_type=client_credentials").await;
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(body["error_description"].as_str().unwrap().contains("routes.as.timeout"), "{body}");
    proxy.stop().await;
}

#[tokio::test]
async fn missing_or_wrong_type_key_fails_start_naming_the_file() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let err = TestProxy::builder(pkjwt_config(&up.url(), "")).try_start().await.err().unwrap().to_string();
    assert!(err.contains("client.pem") && err.contains("not found") && err.contains("tokenrelay init"), "{err}");

    let builder = TestProxy::builder(pkjwt_config(&up.url(), ""));
    write_key(builder.dir(), "client.pem", Alg::RS256);
    let err = builder.try_start().await.err().unwrap().to_string();
    assert!(err.contains("client.pem") && err.contains("ES256") && err.contains("RSA"), "{err}");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn redirects_are_relayed_not_followed() {
    let up = Recorder::start(|_, _| {
        let mut r = Reply::json(302, serde_json::json!({}));
        r.headers.push(("location".into(), "https://elsewhere.example/token".into()));
        r
    })
    .await;
    let (proxy, _) = pkjwt_proxy(&up, "").await;
    let (status, _) = proxy.post_form("/as/token", "grant_type=client_credentials").await;
    assert_eq!(status, 302, "RFC 9700 §4.12: the app sees the redirect; the proxy does not follow it");
    assert_eq!(up.seen().len(), 1);
    proxy.stop().await;
}

/// The committed proxy.toml, with the demo AS on a pre-bound port, answers the printed curl
/// line with a token whose `verified` object shows the assertion was checked.
#[tokio::test]
async fn default_config_printed_curl_gets_a_verified_token() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml")).unwrap();
    assert!(committed.contains("127.0.0.1:9443"), "the committed config runs the demo AS on 127.0.0.1:9443");
    let proxy = TestProxy::builder(committed.replace("127.0.0.1:9443", "$DEMO_AS")).demo_as().start().await;
    let demo_addr = proxy.demo_as_addr();
    // Dev keys were generated on first start, 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(proxy.path("certs/client.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let line = proxy.running.curl_line().unwrap();
    assert!(line.starts_with("curl "), "{line}");
    let out = tokio::process::Command::new("sh").arg("-c").arg(&line).output().await.unwrap();
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(answer["access_token"].as_str().is_some_and(|t| !t.is_empty()), "{answer}");
    let v = &answer["verified"];
    assert_eq!(v["client_id"], "demo-app");
    assert_eq!(v["auth_method"], "private_key_jwt");
    assert_eq!(v["assertion_checks"], serde_json::json!(["signature", "iss", "sub", "aud", "exp", "jti"]));
    assert_eq!(v["assertion_aud"], format!("http://{demo_addr}"));
    proxy.stop().await;
}
