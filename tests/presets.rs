//! Route presets: what each puts in the client assertion the AS receives (`aud`, `alg`,
//! `typ`, `x5t#S256`, `nbf`), what explicit fields override, and what they refuse at load.
//! The vendor documents each preset follows are listed in the README ("Presets").

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::jwt;
use common::proxy::{write_key, TestProxy};
use common::upstream::{Recorder, Reply, Seen};
use tokenrelay::jose::{self, Alg, VerifyKey};

fn route(upstream: &str, preset: &str, client_extra: &str, route_extra: &str) -> String {
    format!(
        "[routes.as]\nprefix = \"/as\"\nupstream = \"{upstream}/oauth2\"\nissuer = \"{upstream}/oauth2\"\n\
         preset = \"{preset}\"\n{route_extra}\n[routes.as.client]\nid = \"app-1\"\nauth = \"private_key_jwt\"\n\
         key = \"client.pem\"\n{client_extra}"
    )
}

/// Starts the proxy on `config` with a client key for `alg`, sends one token request, and
/// returns what the AS received and the key.
async fn one_token_request(
    up: &Recorder,
    config: String,
    alg: Alg,
    extra_files: impl FnOnce(&std::path::Path, &str),
) -> (Seen, std::sync::Arc<jose::SigningKey>) {
    let builder = TestProxy::builder(config);
    let (path, key) = write_key(builder.dir(), "client.pem", alg);
    extra_files(builder.dir(), &std::fs::read_to_string(path).unwrap());
    let proxy = builder.start().await;
    let (status, body) = proxy.post_form("/as/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{body}");
    proxy.stop().await;
    let seen = up.seen().into_iter().rev().find(|s| s.method == "POST").unwrap();
    (seen, key)
}

fn recorder() -> impl std::future::Future<Output = Recorder> {
    Recorder::start(|seen, _| {
        if seen.method == "GET" {
            return Reply::json(404, serde_json::json!({"error": "not_found"}));
        }
        Reply::token()
    })
}

/// Verifies the assertion with the client's public key and returns (header, claims).
fn assertion(seen: &Seen, key: &jose::SigningKey, alg: Alg) -> (serde_json::Value, serde_json::Value) {
    let token = seen.param("client_assertion").expect("signed");
    jose::verify(&token, alg, VerifyKey::Jwk(key.public_jwk())).expect("signature verifies with the client key");
    (jwt::header(&token), jwt::claims(&token))
}

#[tokio::test]
async fn keycloak_sends_the_issuer_as_aud_with_rs256() {
    let up = recorder().await;
    let (seen, key) = one_token_request(&up, route(&up.url(), "keycloak", "", ""), Alg::RS256, |_, _| {}).await;
    let (header, claims) = assertion(&seen, &key, Alg::RS256);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(claims["aud"], format!("{}/oauth2", up.url()));
    assert!(header.get("typ").is_none() && claims.get("nbf").is_none());
}

#[tokio::test]
async fn okta_sends_the_endpoint_called_as_aud() {
    let up = recorder().await;
    let (seen, key) = one_token_request(&up, route(&up.url(), "okta", "", ""), Alg::RS256, |_, _| {}).await;
    let (header, claims) = assertion(&seen, &key, Alg::RS256);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(claims["aud"], format!("{}/oauth2/token", up.url()), "Okta: aud = the full endpoint URL");
}

#[tokio::test]
async fn okta_with_an_explicit_alg_and_audience_uses_them() {
    let up = recorder().await;
    let config = route(&up.url(), "okta", "alg = \"ES256\"\naudience = \"https://override.example/aud\"\n", "");
    let (seen, key) = one_token_request(&up, config, Alg::ES256, |_, _| {}).await;
    let (header, claims) = assertion(&seen, &key, Alg::ES256);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["aud"], "https://override.example/aud");
}

#[tokio::test]
async fn entra_sends_ps256_x5t_s256_of_the_certificate_typ_jwt_and_nbf() {
    let up = recorder().await;
    let config = route(&up.url(), "entra", "cert = \"client-cert.pem\"\n", "");
    let mut cert_der = Vec::new();
    let (seen, key) = one_token_request(&up, config, Alg::PS256, |dir, key_pem| {
        let cert = common::pki::self_signed_for_key("app-1", key_pem);
        std::fs::write(dir.join("client-cert.pem"), &cert.cert_pem).unwrap();
        cert_der = cert.der;
    })
    .await;
    let (header, claims) = assertion(&seen, &key, Alg::PS256);
    assert_eq!(header["alg"], "PS256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["x5t#S256"], jose::sha256_b64url(&cert_der), "thumbprint of the registered certificate");
    assert_eq!(claims["aud"], format!("{}/oauth2/token", up.url()), "Entra: aud = the token endpoint");
    assert_eq!(claims["nbf"], claims["iat"]);
}

#[tokio::test]
async fn entra_refuses_to_start_without_the_certificate_or_with_a_foreign_one() {
    let up = recorder().await;
    let builder = TestProxy::builder(route(&up.url(), "entra", "", ""));
    write_key(builder.dir(), "client.pem", Alg::PS256);
    let err = builder.try_start().await.err().unwrap().to_string();
    assert!(err.contains("routes.as.client.cert") && err.contains("x5t#S256"), "{err}");

    let builder = TestProxy::builder(route(&up.url(), "entra", "cert = \"client-cert.pem\"\n", ""));
    write_key(builder.dir(), "client.pem", Alg::PS256);
    let (other, _) = write_key(builder.dir(), "other.pem", Alg::PS256);
    let cert = common::pki::self_signed_for_key("app-1", &std::fs::read_to_string(other).unwrap());
    std::fs::write(builder.dir().join("client-cert.pem"), cert.cert_pem).unwrap();
    let err = builder.try_start().await.err().unwrap().to_string();
    assert!(err.contains("client.cert") && err.contains("different key pair"), "{err}");
    assert!(up.seen().iter().all(|s| s.method != "POST"));
}

#[tokio::test]
async fn auth0_sends_the_issuer_as_aud() {
    let up = recorder().await;
    let (seen, key) = one_token_request(&up, route(&up.url(), "auth0", "", ""), Alg::RS256, |_, _| {}).await;
    let (_, claims) = assertion(&seen, &key, Alg::RS256);
    assert_eq!(claims["aud"], format!("{}/oauth2", up.url()));
}

#[tokio::test]
async fn fapi2_sends_ps256_issuer_aud_and_a_dpop_proof() {
    let up = Recorder::start(|_, _| {
        Reply::json(200, serde_json::json!({"access_token": "bound", "token_type": "DPoP", "expires_in": 60}))
    })
    .await;
    let config = route(&up.url(), "fapi2", "", "") + "[routes.as.dpop]\nkey = \"dpop.pem\"\n";
    let (seen, key) = one_token_request(&up, config, Alg::PS256, |dir, _| {
        write_key(dir, "dpop.pem", Alg::ES256);
    })
    .await;
    let (header, claims) = assertion(&seen, &key, Alg::PS256);
    assert_eq!(header["alg"], "PS256");
    assert_eq!(claims["aud"], format!("{}/oauth2", up.url()), "FAPI 2.0: aud = the issuer");
    assert!(seen.header("dpop").is_some(), "sender-constrained: a DPoP proof");
}

#[tokio::test]
async fn fapi2_refuses_a_token_that_is_not_dpop_bound() {
    let up = recorder().await;
    let builder = TestProxy::builder(route(&up.url(), "fapi2", "", "") + "[routes.as.dpop]\nkey = \"dpop.pem\"\n");
    write_key(builder.dir(), "client.pem", Alg::PS256);
    write_key(builder.dir(), "dpop.pem", Alg::ES256);
    let proxy = builder.start().await;
    let (status, body) = proxy.post_form("/as/token", "grant_type=client_credentials").await;
    assert_eq!(status, 502, "a Bearer token on a FAPI 2.0 route: {body}");
    assert!(body["error_description"].as_str().unwrap().contains("require_bound"), "{body}");
    proxy.stop().await;
}

#[tokio::test]
async fn fapi2_refuses_unconstrained_routes_and_disallowed_algs() {
    let up = recorder().await;
    let builder = TestProxy::builder(route(&up.url(), "fapi2", "", ""));
    write_key(builder.dir(), "client.pem", Alg::PS256);
    let err = builder.try_start().await.err().unwrap().to_string();
    assert!(err.contains("routes.as.preset") && err.contains("dpop") && err.contains("mtls"), "{err}");

    let config = route(&up.url(), "fapi2", "alg = \"RS256\"\n", "") + "[routes.as.dpop]\nkey = \"dpop.pem\"\n";
    let builder = TestProxy::builder(config);
    write_key(builder.dir(), "client.pem", Alg::RS256);
    write_key(builder.dir(), "dpop.pem", Alg::ES256);
    let err = builder.try_start().await.err().unwrap().to_string();
    assert!(err.contains("routes.as.client.alg") && err.contains("allows ES256, PS256, EdDSA, not RS256"), "{err}");
    assert!(up.seen().iter().all(|s| s.method != "POST"));
}
