//! DPoP (RFC 9449): proofs, the nonce engine's bounds, `htu`, and DPoP for API calls.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::proxy::{edit, write_key, Builder, TestProxy};
use common::tls_upstream::TlsRecorder;
use common::upstream::{Recorder, Reply, Seen};
use common::{jwt, pki};
use tokenrelay::jose::{self, Alg, SigningKey, VerifyKey};

fn config(upstream: &str, dpop_extra: &str) -> String {
    format!(
        r#"
[routes.as]
prefix = "/as"
upstream = "{upstream}"

[routes.as.client]
id = "app-1"
auth = "private_key_jwt"
key = "client.pem"

[routes.as.dpop]
key = "dpop.pem"
alg = "ES256"
{dpop_extra}
"#
    )
}

/// A proxy for `config` with a client key in `client.pem` and a DPoP key (returned) in `dpop.pem`.
fn with_keys(config: String) -> (Builder, Arc<SigningKey>) {
    let builder = TestProxy::builder(config);
    write_key(builder.dir(), "client.pem", Alg::ES256);
    let (_, dpop) = write_key(builder.dir(), "dpop.pem", Alg::ES256);
    (builder, dpop)
}

async fn start(config: String) -> (TestProxy, Arc<SigningKey>) {
    let (builder, dpop) = with_keys(config);
    (builder.start().await, dpop)
}

fn use_nonce(nonce: &str) -> Reply {
    Reply::json(400, serde_json::json!({"error": "use_dpop_nonce", "error_description": "nonce required"}))
        .header("dpop-nonce", nonce)
}

fn proof_claims(seen: &Seen) -> serde_json::Value {
    let proofs: Vec<_> = seen.headers.get_all("dpop").iter().collect();
    assert_eq!(proofs.len(), 1, "RFC 9449 §4.1: exactly one DPoP header");
    jwt::claims(proofs[0].to_str().unwrap())
}

fn assertion_jti(seen: &Seen) -> String {
    jwt::claims(&seen.param("client_assertion").unwrap())["jti"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_new_nonce_every_attempt_means_exactly_two_attempts_each_freshly_signed() {
    let up = Recorder::start(|_, n| use_nonce(&format!("nonce-{n}"))).await;
    let (proxy, _) = start(config(&up.url(), "")).await;
    let (status, body) = proxy.post_form("/as/token", "grant_type=client_credentials").await;
    assert_eq!(status, 400, "the app sees the AS's last answer: {body}");
    assert_eq!(body["error"], "use_dpop_nonce");
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "RFC 9449 §8: retried with the nonce exactly once");
    let (p0, p1) = (proof_claims(&seen[0]), proof_claims(&seen[1]));
    assert!(p0.get("nonce").is_none());
    assert_eq!(p1["nonce"], "nonce-0", "the retry carries the challenged nonce");
    assert_ne!(p0["jti"], p1["jti"], "RFC 9449 §4.2: a fresh proof per attempt");
    assert_ne!(assertion_jti(&seen[0]), assertion_jti(&seen[1]), "RFC 7523 §3: a fresh assertion jti per attempt");
    proxy.stop().await;
}

#[tokio::test]
async fn the_same_nonce_challenged_again_is_not_retried() {
    let up = Recorder::start(|_, _| use_nonce("always-the-same")).await;
    let (proxy, _) = start(config(&up.url(), "")).await;
    // First request: no nonce known -> challenged -> one retry with the nonce.
    proxy.post_form("/as/token", "grant_type=client_credentials").await;
    assert_eq!(up.seen().len(), 2);
    // Second request: sends the cached nonce, gets the same one back: no retry.
    let (status, _) = proxy.post_form("/as/token", "grant_type=client_credentials").await;
    assert_eq!(status, 400);
    let seen = up.seen();
    assert_eq!(seen.len(), 3, "one attempt for the second app request");
    assert_eq!(proof_claims(&seen[2])["nonce"], "always-the-same");
    proxy.stop().await;
}

#[tokio::test]
async fn nonce_retry_succeeds_and_the_app_sees_one_answer() {
    let up = Recorder::start(|seen, _| {
        let proof = seen.header("dpop").unwrap();
        if jwt::claims(&proof)["nonce"] == "server-nonce-1" {
            Reply::json(200, serde_json::json!({"access_token": "t", "token_type": "DPoP"}))
        } else {
            use_nonce("server-nonce-1")
        }
    })
    .await;
    let (proxy, _) = start(config(&up.url(), "")).await;
    let (status, body) = proxy.post_form("/as/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(up.seen().len(), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn a_nonce_from_a_200_is_used_next_time_and_malformed_ones_ignored() {
    let up = Recorder::start(|_, n| {
        let reply = Reply::json(200, serde_json::json!({"access_token": "t", "token_type": "DPoP"}));
        match n {
            0 => reply.header("dpop-nonce", "from-200"),
            1 => reply.header("dpop-nonce", "bad nonce with spaces"),
            _ => reply,
        }
    })
    .await;
    let (proxy, _) = start(config(&up.url(), "")).await;
    for _ in 0..3 {
        assert_eq!(proxy.post_form("/as/token", "grant_type=client_credentials").await.0, 200);
    }
    let seen = up.seen();
    assert!(proof_claims(&seen[0]).get("nonce").is_none());
    assert_eq!(proof_claims(&seen[1])["nonce"], "from-200");
    assert_eq!(proof_claims(&seen[2])["nonce"], "from-200", "malformed nonce ignored");
    proxy.stop().await;
}

#[tokio::test]
async fn proof_is_signed_by_the_configured_key_with_the_upstream_htu() {
    let up =
        Recorder::start(|_, _| Reply::json(200, serde_json::json!({"access_token": "t", "token_type": "DPoP"}))).await;
    // Upper-case host and a non-default port in the config; query string on the request.
    let upstream = format!("http://LOCALHOST:{}/Base", up.addr.port());
    let (proxy, dpop) = start(config(&upstream, "")).await;
    let resp = proxy
        .http
        .post(format!("{}/as/token?tenant=a#frag", proxy.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("dpop", "app-sent-proof-must-go")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = &up.seen()[0];
    assert_eq!(seen.path, "/Base/token?tenant=a");
    let proof = seen.header("dpop").unwrap();
    assert_ne!(proof, "app-sent-proof-must-go");
    let v = jose::verify(&proof, Alg::ES256, VerifyKey::Jwk(dpop.public_jwk())).unwrap();
    assert_eq!(v.header["typ"], "dpop+jwt");
    assert_eq!(v.header["jwk"], serde_json::Value::Object(dpop.public_jwk().clone()));
    assert_eq!(v.claims["htm"], "POST");
    assert_eq!(
        v.claims["htu"],
        format!("http://localhost:{}/Base/token", up.addr.port()),
        "RFC 9449 §4.2: lowercase host, path case kept, port kept, no query, never the proxy URL"
    );
    assert!(v.claims["iat"].as_u64().is_some());
    proxy.stop().await;
}

#[tokio::test]
async fn an_unbound_token_is_refused_when_require_bound() {
    let up = Recorder::start(|_, _| Reply::token()).await; // token_type Bearer
    let (proxy, _) = start(config(&up.url(), "require_bound = true")).await;
    let (status, body) = proxy.post_form("/as/token", "grant_type=client_credentials").await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("require_bound"), "{body}");
    proxy.stop().await;
    // Without require_bound the token passes through (with a warning in the log).
    let (proxy, _) = start(config(&up.url(), "")).await;
    assert_eq!(proxy.post_form("/as/token", "grant_type=client_credentials").await.0, 200);
    proxy.stop().await;
}

/// Against the demo AS in nonce mode: a bare app gets a DPoP-bound token in one call, then
/// calls the API route with `Authorization: Bearer`; tokenrelay upgrades it to DPoP with
/// `ath`, handles the resource server's 401 nonce challenge, and the call succeeds.
#[tokio::test]
async fn bearer_app_uses_a_dpop_bound_token_at_the_resource_server_with_nonces() {
    let config = r#"
[demo_as]
listen = "$DEMO_AS"
dpop_nonce = true

[routes.as]
prefix = "/as"
upstream = "http://$DEMO_AS"
issuer = "http://$DEMO_AS"
[routes.as.client]
id = "demo-app"
auth = "private_key_jwt"
key = "client.pem"
create = true
[routes.as.dpop]
key = "dpop.pem"
create = true

[routes.api]
prefix = "/api"
upstream = "http://$DEMO_AS"
[routes.api.dpop]
key = "dpop.pem"
"#;
    let proxy = TestProxy::builder(config).demo_as().start().await;
    let demo_url = format!("http://{}", proxy.demo_as_addr());
    let (status, token) = proxy.post_form("/as/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["token_type"], "DPoP");
    let jkt = token["cnf"]["jkt"].as_str().unwrap().to_string();
    let snapshot = proxy.running.snapshot();
    let route_key = snapshot.routes.iter().find(|r| r.cfg.name == "as").unwrap().dpop_key.clone().unwrap();
    assert_eq!(jkt, route_key.thumbprint(), "cnf.jkt is the RFC 7638 thumbprint of the configured key");
    assert!(token["verified"]["dpop_checks"].as_array().unwrap().contains(&"nonce".into()));

    let access = token["access_token"].as_str().unwrap();
    let resp = proxy.http.get(format!("{}/api/resource", proxy.base)).bearer_auth(access).send().await.unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["verified"]["dpop_jkt"], jkt);
    assert!(body["verified"]["dpop_checks"].as_array().unwrap().contains(&"ath".into()));

    // Without the proxy, the same Bearer token is refused: the RS really checks binding.
    let direct = proxy.http.get(format!("{demo_url}/resource")).bearer_auth(access).send().await.unwrap();
    assert_eq!(direct.status(), 401);
    proxy.stop().await;
}

/// RFC 8705 §5: a route that presents a certificate uses the AS's `mtls_endpoint_aliases`;
/// the request, `htu` and `aud = "token_endpoint"` follow the alias. Aliases are used over
/// https only: a plain-http alias (here: the PAR one) is ignored.
#[tokio::test]
async fn mtls_endpoint_alias_is_used_and_htu_and_aud_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let up = TlsRecorder::start(dir.path(), "as-ca.pem", |seen, _| {
        if seen.path.starts_with("/.well-known/oauth-authorization-server") {
            let host = seen.authority.clone().or_else(|| seen.header("host")).unwrap();
            let origin = format!("https://{host}");
            return Reply::json(
                200,
                serde_json::json!({
                    "issuer": origin,
                    "token_endpoint": format!("{origin}/token"),
                    "pushed_authorization_request_endpoint": format!("{origin}/par"),
                    "mtls_endpoint_aliases": {
                        "token_endpoint": format!("{origin}/mtls/token"),
                        "pushed_authorization_request_endpoint": format!("http://{host}/mtls/par"),
                    },
                }),
            );
        }
        Reply::json(200, serde_json::json!({"access_token": "t", "token_type": "DPoP", "request_uri": "urn:x"}))
    })
    .await;
    let origin = format!("https://127.0.0.1:{}", up.port());
    let client =
        format!("issuer = \"{origin}\"\ntrust = [\"as-ca.pem\"]\n[routes.as.client]\naudience = \"token_endpoint\"\n");
    let config = edit(&config(&origin, ""), "[routes.as.client]\n", &client)
        + "[routes.as.mtls]\ncert = \"app-cert.pem\"\nkey = \"app-key.pem\"\n";
    let (builder, dpop) = with_keys(config);
    std::fs::copy(&up.ca_path, builder.dir().join("as-ca.pem")).unwrap();
    pki::self_signed_client("app-1").write(builder.dir(), "app");
    let proxy = builder.start().await;
    let (status, body) = proxy.post_form("/as/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{body}");
    let seen = up.seen();
    assert!(seen[0].path.starts_with("/.well-known/"), "discovery first");
    let token_req = seen.iter().find(|s| s.method == "POST").unwrap();
    assert_eq!(token_req.path, "/mtls/token", "sent to the alias");
    let proof = token_req.header("dpop").unwrap();
    let v = jose::verify(&proof, Alg::ES256, VerifyKey::Jwk(dpop.public_jwk())).unwrap();
    assert_eq!(v.claims["htu"], format!("{origin}/mtls/token"), "htu follows the alias");
    let assertion = jwt::claims(&token_req.param("client_assertion").unwrap());
    assert_eq!(assertion["aud"], format!("{origin}/mtls/token"), "aud = the token endpoint as used");
    // The PAR alias is plain http: not used; the request goes to the published endpoint, signed.
    let (status, body) = proxy.post_form("/as/par", "response_type=code&client_id=app-1").await;
    assert_eq!(status, 200, "{body}");
    let par = up.seen().into_iter().filter(|s| s.method == "POST").nth(1).unwrap();
    assert_eq!(par.path, "/par", "an http alias is never used");
    assert!(par.param("client_assertion").is_some(), "PAR is signed");
    // Discovery happens once per config version.
    proxy.post_form("/as/token", "grant_type=client_credentials").await;
    assert_eq!(up.seen().iter().filter(|s| s.method == "GET").count(), 1);
    proxy.stop().await;
}
