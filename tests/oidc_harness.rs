//! Smoke tests of the oidc-provider test harness itself (no proxy involved).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::oidc::{form_pairs, write_server_tls, OidcProvider};
use common::pki::{self, TestCa};
use josekit::jwk::KeyPair as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::time::{Duration, SystemTime};

const SECRET: &str = "harness-secret-0123456789abcdefghijklmnopqrstuvwxyz";

fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap()
}

#[tokio::test]
async fn client_secret_post_client_credentials_is_recorded_byte_exact() {
    let op = OidcProvider::start(json!({
        "clients": [{
            "client_id": "harness-post",
            "client_secret": SECRET,
            "token_endpoint_auth_method": "client_secret_post",
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
        }],
    }))
    .await;
    assert_eq!(op.issuer, format!("http://127.0.0.1:{}", op.port));
    assert_eq!(op.token_endpoint(), format!("{}/token", op.issuer));

    let body = format!("grant_type=client_credentials&client_id=harness-post&client_secret={SECRET}&scope=read");
    let resp = http_client()
        .post(op.token_endpoint())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-harness", "one")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let tok: Value = resp.json().await.unwrap();
    let access_token = tok["access_token"].as_str().expect("access_token").to_string();
    assert_eq!(tok["token_type"], "Bearer");
    assert_eq!(tok["scope"], "read");

    let reqs = op.token_requests().await;
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    let rec = &reqs[0];
    assert_eq!(rec["method"], "POST");
    assert_eq!(rec["path"], "/token");
    assert_eq!(rec["body"].as_str().unwrap(), body);
    assert_eq!(STANDARD.decode(rec["body_b64"].as_str().unwrap()).unwrap(), body.as_bytes());
    assert_eq!(rec["headers"]["x-harness"], "one");
    assert_eq!(rec["headers"]["content-type"], "application/x-www-form-urlencoded");
    assert_eq!(rec["status"], 200);
    assert!(rec["tls_client_cert"].is_null());
    let recorded_response: Value = serde_json::from_str(rec["response"].as_str().unwrap()).unwrap();
    assert_eq!(recorded_response["access_token"].as_str(), Some(access_token.as_str()));
    assert!(form_pairs(rec["body"].as_str().unwrap()).contains(&("client_secret".to_string(), SECRET.to_string())));

    let info = op.introspect(&access_token).await;
    assert_eq!(info["clientId"], "harness-post", "{info}");
    assert_eq!(info["scope"], "read", "{info}");
    assert_eq!(info["active"], true, "{info}");
    assert!(info.get("cnf").is_none(), "{info}");
    let missing = op.introspect("no-such-token").await;
    assert_eq!(missing["error"], "not_found", "{missing}");

    // A failing request is recorded with oidc-provider's error detail.
    let resp = http_client()
        .post(op.token_endpoint())
        .form(&[("grant_type", "client_credentials"), ("client_id", "harness-post"), ("client_secret", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let reqs = op.received().await;
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1]["seq"], 2);
    assert_eq!(reqs[1]["status"], 401);
    assert_eq!(reqs[1]["error"], "invalid_client");
    assert_eq!(reqs[1]["error_detail"], "invalid secret provided");

    op.reset().await;
    assert!(op.received().await.is_empty());
}

/// DPoP proof for POST `htu`, ES256, optional nonce.
fn dpop_proof(kp: &josekit::jwk::alg::ec::EcKeyPair, htu: &str, nonce: Option<&str>) -> String {
    let mut header = josekit::jws::JwsHeader::new();
    header.set_token_type("dpop+jwt");
    header.set_jwk(kp.to_jwk_public_key());
    let mut payload = josekit::jwt::JwtPayload::new();
    payload.set_jwt_id(format!("{:x}", rand::random::<u128>()));
    payload.set_issued_at(&SystemTime::now());
    payload.set_claim("htm", Some(json!("POST"))).unwrap();
    payload.set_claim("htu", Some(json!(htu))).unwrap();
    if let Some(nonce) = nonce {
        payload.set_claim("nonce", Some(json!(nonce))).unwrap();
    }
    let signer = josekit::jws::ES256.signer_from_jwk(&kp.to_jwk_private_key()).unwrap();
    josekit::jwt::encode_with_signer(&payload, &header, &signer).unwrap()
}

fn ec_thumbprint(kp: &josekit::jwk::alg::ec::EcKeyPair) -> String {
    let jwk = kp.to_jwk_public_key();
    let p = |k: &str| jwk.parameter(k).and_then(Value::as_str).unwrap().to_string();
    let canonical = format!(r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#, p("crv"), p("x"), p("y"));
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[tokio::test]
async fn minted_dpop_bound_refresh_token_redeems_with_server_nonce() {
    let op = OidcProvider::start(json!({
        "clients": [{
            "client_id": "harness-dpop",
            "client_secret": SECRET,
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["refresh_token", "client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "dpop_bound_access_tokens": true,
        }],
        "dpop_nonce": true,
    }))
    .await;
    let key = josekit::jws::ES256.generate_key_pair().unwrap();
    let jkt = ec_thumbprint(&key);
    let rt = op.mint_refresh_token("harness-dpop", Some(&jkt), "openid offline_access read").await;
    let minted = op.introspect(&rt).await;
    assert_eq!(minted["model"], "RefreshToken", "{minted}");
    assert_eq!(minted["jkt"], jkt.as_str(), "{minted}");

    let client = http_client();
    let form = [("grant_type", "refresh_token"), ("refresh_token", rt.as_str())];
    let send = |proof: String| {
        client
            .post(op.token_endpoint())
            .basic_auth("harness-dpop", Some(SECRET))
            .header("dpop", proof)
            .form(&form)
            .send()
    };

    // No nonce: the AS demands one.
    let resp = send(dpop_proof(&key, &op.token_endpoint(), None)).await.unwrap();
    assert_eq!(resp.status(), 400);
    let nonce = resp.headers().get("dpop-nonce").expect("DPoP-Nonce header").to_str().unwrap().to_string();
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "use_dpop_nonce");

    // Right nonce, wrong key: the refresh token is bound to `jkt`.
    let other = josekit::jws::ES256.generate_key_pair().unwrap();
    let resp = send(dpop_proof(&other, &op.token_endpoint(), Some(&nonce))).await.unwrap();
    assert_eq!(resp.status(), 400);
    let last = op.token_requests().await.pop().unwrap();
    assert_eq!(last["error_detail"], "failed jkt verification", "{last}");

    // Right nonce, right key.
    let resp = send(dpop_proof(&key, &op.token_endpoint(), Some(&nonce))).await.unwrap();
    assert_eq!(resp.status(), 200);
    let tok: Value = resp.json().await.unwrap();
    assert_eq!(tok["token_type"], "DPoP", "{tok}");
    let new_rt = tok["refresh_token"].as_str().expect("rotated refresh token");
    assert_ne!(new_rt, rt);
    let info = op.introspect(tok["access_token"].as_str().unwrap()).await;
    assert_eq!(info["model"], "AccessToken", "{info}");
    assert_eq!(info["clientId"], "harness-dpop", "{info}");
    assert_eq!(info["accountId"], "test-user", "{info}");
    assert_eq!(info["cnf"]["jkt"], jkt.as_str(), "{info}");

    let reqs = op.token_requests().await;
    assert_eq!(reqs.len(), 3);
    assert!(reqs[0]["headers"]["dpop"].is_string());
    assert!(reqs[0]["headers"]["authorization"].as_str().unwrap().starts_with("Basic "));
}

#[tokio::test]
async fn https_with_tls_client_auth_and_certificate_bound_token() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new("tokenrelay test server CA");
    let client_ca = TestCa::new("tokenrelay test client CA");
    let client_cert = client_ca.client("tokenrelay-test-client");
    let tls = write_server_tls(dir.path(), &server_ca, &[&client_ca.cert_pem]);

    let op = OidcProvider::start(json!({
        "clients": [{
            "client_id": "harness-mtls",
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_subject_dn": "CN=tokenrelay-test-client",
            "tls_client_certificate_bound_access_tokens": true,
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
        }],
        "tls": tls,
    }))
    .await;
    assert_eq!(op.issuer, format!("https://127.0.0.1:{}", op.port));

    let ca = reqwest::Certificate::from_pem(server_ca.cert_pem.as_bytes()).unwrap();
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", client_cert.cert_pem, client_cert.key_pem).as_bytes()).unwrap();
    let body = "grant_type=client_credentials&client_id=harness-mtls&scope=write";

    // Without a client certificate, tls_client_auth fails.
    let no_cert = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca.clone())
        .build()
        .unwrap();
    let resp = no_cert
        .post(op.token_endpoint())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let with_cert = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .identity(identity)
        .build()
        .unwrap();
    let resp = with_cert
        .post(op.token_endpoint())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let tok: Value = resp.json().await.unwrap();
    assert_eq!(tok["token_type"], "Bearer");

    let reqs = op.token_requests().await;
    assert_eq!(reqs.len(), 2);
    assert!(reqs[0]["tls_client_cert"].is_null(), "{}", reqs[0]);
    assert_eq!(reqs[0]["error_detail"], "client certificate was not provided", "{}", reqs[0]);
    assert_eq!(reqs[1]["body"], body);
    assert_eq!(pki::der(reqs[1]["tls_client_cert"].as_str().expect("client cert recorded")), client_cert.der);

    let info = op.introspect(tok["access_token"].as_str().unwrap()).await;
    let x5t = URL_SAFE_NO_PAD.encode(Sha256::digest(&client_cert.der));
    assert_eq!(info["clientId"], "harness-mtls", "{info}");
    assert_eq!(info["x5t#S256"], x5t.as_str(), "{info}");
    assert_eq!(info["cnf"]["x5t#S256"], x5t.as_str(), "{info}");
}
