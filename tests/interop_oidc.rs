//! Interop with an AS nobody here wrote: panva's `oidc-provider` (npm, pinned in
//! tests/oidc/package-lock.json), started on 127.0.0.1 by the harness. Every test asserts
//! what the AS received and decided, not only the status the app saw.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::jwt;
use common::oidc::{cc_client, form_pairs, jwks, param, OidcProvider};
use common::proxy::{write_key, TestProxy};
use serde_json::{json, Value};
use tokenrelay::jose::{Alg, SigningKey};

fn route(name: &str, issuer: &str, client: &str) -> String {
    format!("[routes.{name}]\nprefix = \"/{name}\"\nupstream = \"{issuer}\"\nissuer = \"{issuer}\"\n[routes.{name}.client]\n{client}\n")
}

#[tokio::test]
async fn private_key_jwt_for_every_alg_gets_tokens_from_oidc_provider() {
    let dir = tempfile::tempdir().unwrap();
    let algs = [("es256", Alg::ES256), ("ps256", Alg::PS256), ("rs256", Alg::RS256), ("eddsa", Alg::EdDSA)];
    let keys: Vec<(&str, Alg, Arc<SigningKey>)> =
        algs.iter().map(|(n, a)| (*n, *a, write_key(dir.path(), &format!("{n}.pem"), *a).1)).collect();
    let clients: Vec<Value> = keys
        .iter()
        .map(|(n, a, k)| {
            cc_client(
                &format!("client-{n}"),
                json!({ "token_endpoint_auth_method": "private_key_jwt", "token_endpoint_auth_signing_alg": a.as_str(), "jwks": jwks(k) }),
            )
        })
        .collect();
    let op = OidcProvider::start(json!({ "clients": clients })).await;
    let config: String = keys
        .iter()
        .map(|(n, a, _)| {
            route(
                n,
                &op.issuer,
                &format!("id = \"client-{n}\"\nauth = \"private_key_jwt\"\nkey = \"{n}.pem\"\nalg = \"{a}\""),
            )
        })
        .collect();
    let proxy = TestProxy::builder(config).in_dir(dir.path()).start().await;

    for (i, (n, alg, key)) in keys.iter().enumerate() {
        let (status, body) = proxy.post_form(&format!("/{n}/token"), "grant_type=client_credentials&scope=read").await;
        assert_eq!(status, 200, "{n}: {body}\n{}", op.stderr());
        let token = body["access_token"].as_str().unwrap();
        let seen = &op.token_requests().await[i];
        assert_eq!(seen["status"], 200);
        let assertion = param(seen, "client_assertion").unwrap();
        assert_eq!(jwt::header(&assertion)["alg"], alg.as_str(), "{n}");
        assert_eq!(jwt::header(&assertion)["kid"], key.thumbprint(), "{n}");
        let claims = jwt::claims(&assertion);
        assert_eq!(claims["iss"], format!("client-{n}"));
        assert_eq!(claims["aud"], op.issuer.as_str(), "RFC 7523 §3: aud = issuer");
        assert_eq!(param(seen, "client_id").as_deref(), Some(format!("client-{n}").as_str()));
        assert_eq!(param(seen, "client_secret"), None);
        let intro = op.introspect(token).await;
        assert_eq!(intro["clientId"], format!("client-{n}"), "{intro}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn client_secret_post_and_client_secret_jwt_get_tokens() {
    let secret = "s3cr3t-for-oidc-provider-0123456789-abcdefghij";
    let op = OidcProvider::start(json!({ "clients": [
        cc_client("post-client", json!({ "token_endpoint_auth_method": "client_secret_post", "client_secret": secret })),
        cc_client("jwt-client", json!({ "token_endpoint_auth_method": "client_secret_jwt", "client_secret": secret, "token_endpoint_auth_signing_alg": "HS256" })),
    ]}))
    .await;
    let config = route(
        "post",
        &op.issuer,
        &format!("id = \"post-client\"\nauth = \"client_secret_post\"\nsecret = \"{secret}\""),
    ) + &route(
        "jwt",
        &op.issuer,
        "id = \"jwt-client\"\nauth = \"client_secret_jwt\"\nsecret_env = \"TR_TEST_JWT_SECRET\"",
    );
    std::env::set_var("TR_TEST_JWT_SECRET", secret);
    let proxy = TestProxy::builder(config).start().await;

    // The app sends a stale secret of its own: tokenrelay's wins, only one is sent (RFC 6749
    // §2.3: one client authentication method per request).
    let (status, body) =
        proxy.post_form("/post/token", "grant_type=client_credentials&client_secret=app-stale-secret").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = proxy.post_form("/jwt/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{body}");
    let seen = op.token_requests().await;
    assert_eq!(param(&seen[0], "client_secret").as_deref(), Some(secret));
    assert_eq!(form_pairs(seen[0]["body"].as_str().unwrap()).iter().filter(|(k, _)| k == "client_secret").count(), 1);
    let assertion = param(&seen[1], "client_assertion").unwrap();
    assert_eq!(jwt::header(&assertion)["alg"], "HS256");
    assert_eq!(seen[1]["status"], 200);
    assert_eq!(op.introspect(body["access_token"].as_str().unwrap()).await["clientId"], "jwt-client");
    proxy.stop().await;
}

fn dpop_config(issuer: &str) -> String {
    format!(
        "{}[routes.as.dpop]\nkey = \"dpop.pem\"\ncreate = true\n",
        route("as", issuer, "id = \"dpop-client\"\nauth = \"private_key_jwt\"\nkey = \"client.pem\"")
    )
}

fn dpop_client(key: &SigningKey) -> Value {
    cc_client(
        "dpop-client",
        json!({
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "ES256",
            "jwks": jwks(key),
            "dpop_bound_access_tokens": true,
            "grant_types": ["client_credentials", "refresh_token"],
        }),
    )
}

#[tokio::test]
async fn dpop_bound_token_for_a_bare_app_with_nonces_in_one_call() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = write_key(dir.path(), "client.pem", Alg::ES256);
    let op = OidcProvider::start(json!({ "clients": [dpop_client(&key)], "dpop_nonce": true })).await;
    let proxy = TestProxy::builder(dpop_config(&op.issuer)).in_dir(dir.path()).start().await;

    let (status, body) = proxy.post_form("/as/token", "grant_type=client_credentials&scope=read").await;
    assert_eq!(status, 200, "the bare app gets its token in one call: {body}\n{}", op.stderr());
    assert_eq!(body["token_type"], "DPoP");
    let seen = op.token_requests().await;
    assert_eq!(seen.len(), 2, "the AS saw exactly two attempts");
    assert_eq!(seen[0]["status"], 400);
    assert!(seen[0]["response"].as_str().unwrap().contains("use_dpop_nonce"));
    let jti = |r: &Value| jwt::claims(&param(r, "client_assertion").unwrap())["jti"].clone();
    assert_ne!(jti(&seen[0]), jti(&seen[1]), "two different assertion jtis");
    let proof = jwt::claims(seen[1]["headers"]["dpop"].as_str().unwrap());
    assert!(proof["nonce"].is_string());
    assert_eq!(proof["htu"], format!("{}/token", op.issuer));

    let dpop = proxy.running.snapshot().routes[0].dpop_key.clone().unwrap();
    let intro = op.introspect(body["access_token"].as_str().unwrap()).await;
    assert_eq!(intro["cnf"]["jkt"], dpop.thumbprint(), "cnf.jkt = RFC 7638 thumbprint of the configured key: {intro}");

    // The next request reuses the cached nonce: one attempt.
    let (status, _) = proxy.post_form("/as/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200);
    assert_eq!(op.token_requests().await.len(), 3);
    proxy.stop().await;
}

#[tokio::test]
async fn refresh_token_bound_to_the_dpop_key_works_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = write_key(dir.path(), "client.pem", Alg::ES256);
    let op = OidcProvider::start(json!({ "clients": [dpop_client(&key)], "dpop_nonce": "optional" })).await;
    let proxy = TestProxy::builder(dpop_config(&op.issuer)).in_dir(dir.path()).start().await;
    let jkt = proxy.running.snapshot().routes[0].dpop_key.clone().unwrap().thumbprint().to_string();
    let refresh = op.mint_refresh_token("dpop-client", Some(&jkt), "openid offline_access read").await;
    // Restart tokenrelay on the same folder: the generated DPoP key must persist, refresh
    // tokens are bound to it (RFC 9449 §5).
    proxy.stop().await;
    let proxy = TestProxy::builder(dpop_config(&op.issuer)).in_dir(dir.path()).start().await;
    let (status, body) =
        proxy.post_form("/as/token", format!("grant_type=refresh_token&refresh_token={refresh}")).await;
    assert_eq!(status, 200, "{body}\n{}", op.stderr());
    assert_eq!(body["token_type"], "DPoP");
    let last = op.token_requests().await.pop().unwrap();
    let sent = param(&last, "refresh_token");
    assert_eq!(sent.as_deref(), Some(refresh.as_str()), "RFC 6749 §6: refresh_token reaches the AS byte for byte");
    let intro = op.introspect(body["access_token"].as_str().unwrap()).await;
    assert_eq!(intro["cnf"]["jkt"], jkt.as_str());
    proxy.stop().await;
}
