//! mTLS (RFC 8705) against oidc-provider served over HTTPS on 127.0.0.1 with client
//! certificates requested. The AS is registered with exactly what `tokenrelay jwks` prints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::oidc::{cc_client, jwks, param, write_server_tls, OidcProvider};
use common::pki::{self, TestCa};
use common::proxy::{edit, write_key, TestProxy};
use serde_json::{json, Value};
use tokenrelay::jose::Alg;

fn route(name: &str, issuer: &str, auth: &str, extra_client: &str) -> String {
    format!(
        "[routes.{name}]\nprefix = \"/{name}\"\nupstream = \"{issuer}\"\nissuer = \"{issuer}\"\ntrust = [\"as-ca.pem\"]\n\
         [routes.{name}.client]\nid = \"{name}-client\"\nauth = \"{auth}\"\n{extra_client}\n\
         [routes.{name}.mtls]\ncert = \"{name}-cert.pem\"\nkey = \"{name}-key.pem\"\n"
    )
}

/// `tokenrelay jwks` for a config: the same function the command prints.
fn jwks_for(dir: &Path, config: &str, route: &str) -> Value {
    let path = dir.join("jwks-probe.toml");
    std::fs::write(&path, config).unwrap();
    let doc = tokenrelay::cli::jwks_document(&path, Some(route)).unwrap();
    doc["routes"][route].clone()
}

/// A folder with the AS's CA in `as-ca.pem`, and that CA.
fn setup() -> (tempfile::TempDir, TestCa) {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new("oidc-provider test server CA");
    server_ca.write(&dir.path().join("as-ca.pem"));
    (dir, server_ca)
}

#[tokio::test]
async fn self_signed_and_ca_issued_client_certs_get_certificate_bound_tokens() {
    let (dir, server_ca) = setup();
    let d = dir.path();
    // self_signed_tls_client_auth: a self-signed cert, registered via the x5c `jwks` prints.
    let ss = pki::self_signed_client("ss-client");
    ss.write(d, "ss");
    // tls_client_auth: issued by a client CA the AS trusts, matched by subject DN.
    let client_root = TestCa::new("client root");
    let ca_issued = client_root.client("tls-client");
    ca_issued.write(d, "tls");
    // The same, through an intermediate CA: the AS trusts only the root, so the proxy must
    // send the intermediate in the handshake (RFC 8705 §2.1, RFC 8446 §4.4.2).
    let via_int = client_root.intermediate("client intermediate").client("chain-client");
    assert_ne!(via_int.chain_pem, via_int.cert_pem, "the chain file holds the intermediate");
    via_int.write(d, "chain");

    let placeholder = "https://127.0.0.1:1";
    let config_for = |issuer: &str| {
        route("ss", issuer, "self_signed_tls_client_auth", "")
            + &route("tls", issuer, "tls_client_auth", "")
            + &route("chain", issuer, "tls_client_auth", "")
    };
    let ss_reg = jwks_for(d, &config_for(placeholder), "ss");
    let tls_reg = jwks_for(d, &config_for(placeholder), "tls");
    let chain_reg = jwks_for(d, &config_for(placeholder), "chain");
    assert!(ss_reg["jwks"]["keys"][0]["x5c"].is_array(), "jwks prints x5c for a self-signed cert: {ss_reg}");
    assert!(tls_reg["jwks"]["keys"].as_array().unwrap().is_empty(), "no x5c for a CA-issued cert: {tls_reg}");
    assert_eq!(tls_reg["tls_client_auth_subject_dn"], "CN=tls-client");

    let tls = write_server_tls(d, &server_ca, &[&client_root.cert_pem]);
    let op = OidcProvider::start(json!({
        "tls": tls,
        "clients": [
            cc_client("ss-client", json!({ "token_endpoint_auth_method": "self_signed_tls_client_auth", "jwks": ss_reg["jwks"], "tls_client_certificate_bound_access_tokens": true })),
            cc_client("tls-client", json!({ "token_endpoint_auth_method": "tls_client_auth", "tls_client_auth_subject_dn": tls_reg["tls_client_auth_subject_dn"], "tls_client_certificate_bound_access_tokens": true })),
            cc_client("chain-client", json!({ "token_endpoint_auth_method": "tls_client_auth", "tls_client_auth_subject_dn": chain_reg["tls_client_auth_subject_dn"], "tls_client_certificate_bound_access_tokens": true })),
        ],
    }))
    .await;
    assert!(op.issuer.starts_with("https://"));
    let proxy = TestProxy::builder(config_for(&op.issuer)).in_dir(d).start().await;

    for (i, (name, reg)) in [("ss", &ss_reg), ("tls", &tls_reg), ("chain", &chain_reg)].into_iter().enumerate() {
        let (status, body) =
            proxy.post_form(&format!("/{name}/token"), "grant_type=client_credentials&client_secret=stale").await;
        assert_eq!(status, 200, "{name}: {body}\n{}", op.stderr());
        let seen = &op.token_requests().await[i];
        assert!(seen["tls_client_cert"].is_string(), "{name}: the certificate was presented in the handshake");
        let client_id = param(seen, "client_id");
        assert_eq!(client_id.as_deref(), Some(format!("{name}-client").as_str()), "RFC 8705 §2: client_id is sent");
        assert_eq!(param(seen, "client_secret"), None, "no secret with mTLS client auth");
        let intro = op.introspect(body["access_token"].as_str().unwrap()).await;
        assert_eq!(
            intro["cnf"]["x5t#S256"], reg["x5t#S256"],
            "{name}: RFC 8705 §3.1 cnf.x5t#S256 = the thumbprint jwks printed"
        );
    }
    // Interleaved requests over pooled keep-alive connections never cross identities.
    for _ in 0..3 {
        for name in ["ss", "tls", "chain"] {
            assert_eq!(proxy.post_form(&format!("/{name}/token"), "grant_type=client_credentials").await.0, 200);
        }
    }
    for (i, seen) in op.token_requests().await.iter().enumerate() {
        let sent = pki::der(seen["tls_client_cert"].as_str().unwrap());
        let expected = match param(seen, "client_id").unwrap().as_str() {
            "ss-client" => &ss.der,
            "tls-client" => &ca_issued.der,
            _ => &via_int.der,
        };
        assert_eq!(&sent, expected, "request {i} presented another route's certificate");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn private_key_jwt_plus_mtls_plus_dpop_on_one_route() {
    let (dir, server_ca) = setup();
    let d = dir.path();
    let (_, key) = write_key(d, "client.pem", Alg::ES256);
    pki::self_signed_client("combo").write(d, "combo");
    let tls = write_server_tls(d, &server_ca, &[]);
    // oidc-provider binds a token to one proof of possession: DPoP here, so the client is
    // not registered for certificate-bound tokens.
    let op = OidcProvider::start(json!({ "tls": tls, "clients": [cc_client("combo-client", json!({
        "token_endpoint_auth_method": "private_key_jwt", "token_endpoint_auth_signing_alg": "ES256",
        "jwks": jwks(&key), "dpop_bound_access_tokens": true,
    }))]}))
    .await;
    let config = route("combo", &op.issuer, "private_key_jwt", "key = \"client.pem\"")
        + "[routes.combo.dpop]\nkey = \"dpop.pem\"\ncreate = true\n";
    let proxy = TestProxy::builder(config).in_dir(d).start().await;
    let (status, body) = proxy.post_form("/combo/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{body}\n{}", op.stderr());
    assert_eq!(body["token_type"], "DPoP");
    let seen = &op.token_requests().await[0];
    assert!(seen["tls_client_cert"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    assert!(param(seen, "client_assertion").is_some());
    assert!(seen["headers"]["dpop"].is_string());
    let dpop = proxy.running.snapshot().routes[0].dpop_key.clone().unwrap();
    assert_eq!(op.introspect(body["access_token"].as_str().unwrap()).await["cnf"]["jkt"], dpop.thumbprint());
    proxy.stop().await;
}

#[tokio::test]
async fn untrusted_as_certificate_is_502_naming_the_trust_setting() {
    let (dir, server_ca) = setup();
    let d = dir.path();
    pki::self_signed_client("ss-client").write(d, "ss");
    let tls = write_server_tls(d, &server_ca, &[]);
    let op = OidcProvider::start(json!({ "tls": tls, "clients": [] })).await;
    let config = edit(&route("ss", &op.issuer, "self_signed_tls_client_auth", ""), "trust = [\"as-ca.pem\"]\n", "");
    let proxy = TestProxy::builder(config).in_dir(d).start().await;
    let (status, body) = proxy.post_form("/ss/token", "grant_type=client_credentials").await;
    assert_eq!(status, 502, "{body}");
    let msg = body["error_description"].as_str().unwrap();
    assert!(msg.contains("not trusted") && msg.contains("routes.ss.trust"), "{msg}");
    assert!(op.token_requests().await.is_empty(), "nothing reached the AS");
    proxy.stop().await;
}
