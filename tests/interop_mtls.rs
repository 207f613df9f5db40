//! mTLS (RFC 8705) against oidc-provider served over HTTPS on 127.0.0.1 with client
//! certificates requested. The AS is registered with exactly what `tokenrelay jwks` prints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::oidc::{form_pairs, write_server_tls, OidcProvider, TestCa};
use common::proxy::{write_key, TestProxy};
use serde_json::{json, Value};
use tokenrelay::jose::Alg;
use tokenrelay::pki::{self, LeafUse};

fn require_node() {
    if let Some(why) = common::oidc::skip_reason() {
        panic!("{why}");
    }
}

fn cc_client(id: &str, extra: Value) -> Value {
    let mut c =
        json!({ "client_id": id, "grant_types": ["client_credentials"], "response_types": [], "redirect_uris": [] });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn param(record: &Value, name: &str) -> Option<String> {
    form_pairs(record["body"].as_str().unwrap()).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn route(name: &str, issuer: &str, auth: &str, extra_client: &str) -> String {
    format!(
        "[routes.{name}]\nprefix = \"/{name}\"\nupstream = \"{issuer}\"\nissuer = \"{issuer}\"\ntrust = [\"as-ca.pem\"]\n\
         [routes.{name}.client]\nid = \"{name}-client\"\nauth = \"{auth}\"\n{extra_client}\n\
         [routes.{name}.mtls]\ncert = \"{name}-cert.pem\"\nkey = \"{name}-key.pem\"\n"
    )
}

fn write(dir: &Path, name: &str, data: &str) {
    std::fs::write(dir.join(name), data).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// `tokenrelay jwks` for a config: the same function the command prints.
fn jwks_for(dir: &Path, config: &str, route: &str) -> Value {
    let path = dir.join("jwks-probe.toml");
    std::fs::write(&path, config).unwrap();
    let doc = tokenrelay::cli::jwks_document(&path, Some(route)).unwrap();
    doc["routes"][route].clone()
}

struct Setup {
    dir: tempfile::TempDir,
    server_ca: TestCa,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new("oidc-provider test server CA");
    std::fs::write(dir.path().join("as-ca.pem"), &server_ca.cert_pem).unwrap();
    Setup { dir, server_ca }
}

#[tokio::test]
async fn self_signed_and_ca_issued_client_certs_get_certificate_bound_tokens() {
    require_node();
    let Setup { dir, server_ca } = setup();
    let d = dir.path();
    // self_signed_tls_client_auth: a self-signed cert, registered via the x5c `jwks` prints.
    let ss = pki::self_signed_client("ss-client", 30).unwrap();
    write(d, "ss-cert.pem", &ss.cert_pem);
    write(d, "ss-key.pem", &ss.key_pem);
    // tls_client_auth: issued by a client CA the AS trusts, matched by subject DN.
    let client_root = pki::generate_ca("client root").unwrap();
    let ca_issued = pki::issue_leaf(&client_root, &["tls-client"], LeafUse::Client, 30).unwrap();
    write(d, "tls-cert.pem", &ca_issued.cert_pem);
    write(d, "tls-key.pem", &ca_issued.key_pem);
    // The same, through an intermediate CA: the AS trusts only the root (MT-1: chain sent).
    let intermediate = pki::issue_intermediate(&client_root, "client intermediate").unwrap();
    let via_int = pki::issue_leaf(&intermediate, &["chain-client"], LeafUse::Client, 30).unwrap();
    write(d, "chain-cert.pem", &format!("{}{}", via_int.cert_pem, intermediate.cert_pem));
    write(d, "chain-key.pem", &via_int.key_pem);

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
    let proxy = TestProxy::start_in(dir, &config_for(&op.issuer)).await;

    for (i, (name, reg)) in [("ss", &ss_reg), ("tls", &tls_reg), ("chain", &chain_reg)].into_iter().enumerate() {
        let (status, body) =
            proxy.post_form(&format!("/{name}/token"), "grant_type=client_credentials&client_secret=stale").await;
        assert_eq!(status, 200, "{name}: {body}\n{}", op.stderr());
        let seen = &op.token_requests().await[i];
        assert!(seen["tls_client_cert"].is_string(), "{name}: the certificate was presented in the handshake");
        assert_eq!(param(seen, "client_id").as_deref(), Some(format!("{name}-client").as_str()), "MT-2");
        assert_eq!(param(seen, "client_secret"), None, "no secret with mTLS client auth");
        let intro = op.introspect(body["access_token"].as_str().unwrap()).await;
        assert_eq!(
            intro["cnf"]["x5t#S256"], reg["x5t#S256"],
            "{name}: MT-4 cnf.x5t#S256 = the thumbprint jwks printed"
        );
    }
    // MT-5: interleaved requests over pooled keep-alive connections never cross identities.
    for _ in 0..3 {
        for name in ["ss", "tls", "chain"] {
            assert_eq!(proxy.post_form(&format!("/{name}/token"), "grant_type=client_credentials").await.0, 200);
        }
    }
    let leaf_b64 = |pem: &str| {
        pem.lines().take_while(|l| !l.starts_with("-----END")).filter(|l| !l.starts_with("-----")).collect::<String>()
    };
    for (i, seen) in op.token_requests().await.iter().enumerate() {
        let sent = leaf_b64(seen["tls_client_cert"].as_str().unwrap());
        let expected = match param(seen, "client_id").unwrap().as_str() {
            "ss-client" => leaf_b64(&ss.cert_pem),
            "tls-client" => leaf_b64(&ca_issued.cert_pem),
            _ => leaf_b64(&via_int.cert_pem),
        };
        assert_eq!(sent, expected, "request {i} presented another route's certificate");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn private_key_jwt_plus_mtls_plus_dpop_on_one_route() {
    require_node();
    let Setup { dir, server_ca } = setup();
    let d = dir.path();
    let (_, key) = write_key(d, "client.pem", Alg::ES256);
    let id = pki::self_signed_client("combo", 30).unwrap();
    write(d, "combo-cert.pem", &id.cert_pem);
    write(d, "combo-key.pem", &id.key_pem);
    let mut jwk = key.public_jwk().clone();
    jwk.insert("kid".into(), key.thumbprint().into());
    let tls = write_server_tls(d, &server_ca, &[]);
    // oidc-provider binds a token to one proof of possession: DPoP here, so the client is
    // not registered for certificate-bound tokens.
    let op = OidcProvider::start(json!({ "tls": tls, "clients": [cc_client("combo-client", json!({
        "token_endpoint_auth_method": "private_key_jwt", "token_endpoint_auth_signing_alg": "ES256",
        "jwks": { "keys": [jwk] }, "dpop_bound_access_tokens": true,
    }))]}))
    .await;
    let config = route("combo", &op.issuer, "private_key_jwt", "key = \"client.pem\"")
        + "[routes.combo.dpop]\nkey = \"dpop.pem\"\ncreate = true\n";
    let proxy = TestProxy::start_in(dir, &config).await;
    let (status, body) = proxy.post_form("/combo/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{body}\n{}", op.stderr());
    assert_eq!(body["token_type"], "DPoP");
    let seen = &op.token_requests().await[0];
    assert!(seen["tls_client_cert"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    assert!(param(seen, "client_assertion").is_some());
    assert!(seen["headers"]["dpop"].is_string());
    let dpop = proxy.running.as_ref().unwrap().snapshot().routes[0].dpop_key.clone().unwrap();
    assert_eq!(op.introspect(body["access_token"].as_str().unwrap()).await["cnf"]["jkt"], dpop.thumbprint());
    proxy.stop().await;
}

#[tokio::test]
async fn untrusted_as_certificate_is_502_naming_the_trust_setting() {
    require_node();
    let Setup { dir, server_ca } = setup();
    let d = dir.path();
    let id = pki::self_signed_client("ss-client", 30).unwrap();
    write(d, "ss-cert.pem", &id.cert_pem);
    write(d, "ss-key.pem", &id.key_pem);
    let tls = write_server_tls(d, &server_ca, &[]);
    let op = OidcProvider::start(json!({ "tls": tls, "clients": [] })).await;
    let config = route("ss", &op.issuer, "self_signed_tls_client_auth", "").replace("trust = [\"as-ca.pem\"]\n", "");
    let proxy = TestProxy::start_in(dir, &config).await;
    let (status, body) = proxy.post_form("/ss/token", "grant_type=client_credentials").await;
    assert_eq!(status, 502, "{body}");
    let msg = body["error_description"].as_str().unwrap();
    assert!(msg.contains("not trusted") && msg.contains("routes.ss.trust"), "{msg}");
    assert!(op.token_requests().await.is_empty(), "nothing reached the AS");
    proxy.stop().await;
}
