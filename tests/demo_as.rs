//! The built-in demo AS: it really verifies (a test that it refuses what it should), and
//! its HTTPS listener takes client certificates for both RFC 8705 methods.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::pki::{self, TestCa};
use common::proxy::{client, write_key, TestProxy};
use serde_json::Value;
use tokenrelay::jose::Alg;

async fn post(http: &reqwest::Client, url: &str, body: String) -> (u16, Value) {
    let resp =
        http.post(url).header("content-type", "application/x-www-form-urlencoded").body(body).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn demo_as_refuses_unsigned_replayed_and_foreign_assertions() {
    let config = "[demo_as]\nlisten = \"$DEMO_AS\"\n[routes.d]\nprefix = \"/d\"\nupstream = \"http://$DEMO_AS\"\n\
                  issuer = \"http://$DEMO_AS\"\n[routes.d.client]\nid = \"demo-app\"\nauth = \"private_key_jwt\"\nkey = \"client.pem\"\n";
    let builder = TestProxy::builder(config).demo_as();
    write_key(builder.dir(), "client.pem", Alg::ES256);
    let proxy = builder.start().await;
    let issuer = format!("http://{}", proxy.demo_as_addr());
    let http = client();
    let token_url = format!("{issuer}/token");

    // Unsigned: the demo AS wants the assertion.
    let (status, body) = post(&http, &token_url, "grant_type=client_credentials&client_id=demo-app".into()).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");

    // Signed by a key that is not the registered one.
    let stranger = tokenrelay::jose::SigningKey::generate(Alg::ES256).unwrap();
    let mut claims = serde_json::Map::new();
    for (k, v) in [("iss", "demo-app"), ("sub", "demo-app"), ("aud", issuer.as_str()), ("jti", "j-1")] {
        claims.insert(k.into(), v.into());
    }
    claims.insert(
        "exp".into(),
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 60).into(),
    );
    let forged = stranger.sign(serde_json::Map::new(), &claims).unwrap();
    let body = format!(
        "grant_type=client_credentials&client_id=demo-app&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={forged}"
    );
    let (status, answer) = post(&http, &token_url, body).await;
    assert_eq!(status, 401);
    assert!(answer["error_description"].as_str().unwrap().contains("signature"), "{answer}");

    // Replay: capture what tokenrelay sent by signing with the route's own key twice.
    let snapshot = proxy.running.snapshot();
    let tokenrelay::snapshot::Credential::Key(key) = &snapshot.routes[0].credential else { panic!("key") };
    let mut header = serde_json::Map::new();
    header.insert("kid".into(), key.thumbprint().into());
    let good = key.sign(header, &claims).unwrap();
    let body = format!(
        "grant_type=client_credentials&client_id=demo-app&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={good}"
    );
    assert_eq!(post(&http, &token_url, body.clone()).await.0, 200);
    let (status, answer) = post(&http, &token_url, body).await;
    assert_eq!(status, 401);
    assert!(answer["error_description"].as_str().unwrap().contains("replay"), "{answer}");

    // Through tokenrelay it just works.
    let (status, answer) = proxy.post_form("/d/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{answer}");
    proxy.stop().await;
}

#[tokio::test]
async fn demo_as_over_https_binds_tokens_to_client_certificates() {
    let route = |name: &str, auth: &str| {
        format!(
            "[routes.{name}]\nprefix = \"/{name}\"\nupstream = \"https://$DEMO_AS\"\nissuer = \"https://$DEMO_AS\"\n\
             trust = [\"certs/demo-as-ca.pem\"]\n[routes.{name}.client]\nid = \"{name}-app\"\nauth = \"{auth}\"\n\
             [routes.{name}.mtls]\ncert = \"{name}-cert.pem\"\nkey = \"{name}-key.pem\"\n"
        )
    };
    let config = "[demo_as]\nlisten = \"$DEMO_AS\"\ntls = true\n".to_string()
        + &route("ss", "self_signed_tls_client_auth")
        + &route("tls", "tls_client_auth");
    let builder = TestProxy::builder(config).demo_as();
    pki::self_signed_client("ss-app").write(builder.dir(), "ss");
    TestCa::new("client root").client("tls-app").write(builder.dir(), "tls");
    let proxy = builder.start().await;
    let issuer = format!("https://{}", proxy.demo_as_addr());
    let snapshot = proxy.running.snapshot();
    for name in ["ss", "tls"] {
        let (status, answer) = proxy.post_form(&format!("/{name}/token"), "grant_type=client_credentials").await;
        assert_eq!(status, 200, "{name}: {answer}");
        let thumb = snapshot.routes.iter().find(|r| r.cfg.name == name).unwrap().cert_thumbprint.clone().unwrap();
        assert_eq!(answer["cnf"]["x5t#S256"], thumb.as_str(), "{name}");
        assert_eq!(
            answer["verified"]["auth_method"],
            if name == "ss" { "self_signed_tls_client_auth" } else { "tls_client_auth" }
        );
    }
    // Without a client certificate the demo AS refuses the mTLS client.
    let ca = std::fs::read(proxy.path("certs/demo-as-ca.pem")).unwrap();
    let http = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let (status, answer) =
        post(&http, &format!("{issuer}/token"), "grant_type=client_credentials&client_id=ss-app".into()).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer["error_description"].as_str().unwrap().contains("no client certificate"), "{answer}");
    proxy.stop().await;
}

/// Time claims from untrusted JWTs are checked arithmetic (RFC 7519 §2 NumericDate, RFC 7523
/// §3 items 4–6, RFC 9449 §4.3): extreme values are OAuth errors, and the server keeps
/// answering afterwards.
#[tokio::test]
async fn demo_as_refuses_hostile_time_claims_without_panicking() {
    let config = "[demo_as]\nlisten = \"$DEMO_AS\"\n[routes.d]\nprefix = \"/d\"\nupstream = \"http://$DEMO_AS\"\n\
                  issuer = \"http://$DEMO_AS\"\n[routes.d.client]\nid = \"demo-app\"\nauth = \"private_key_jwt\"\nkey = \"client.pem\"\n";
    let builder = TestProxy::builder(config).demo_as();
    write_key(builder.dir(), "client.pem", Alg::ES256);
    let proxy = builder.start().await;
    let issuer = format!("http://{}", proxy.demo_as_addr());
    let token_url = format!("{issuer}/token");
    let http = client();
    let snapshot = proxy.running.snapshot();
    let tokenrelay::snapshot::Credential::Key(key) = &snapshot.routes[0].credential else { panic!("key") };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let assertion = |jti: &str, claim: &str, value: Value| {
        let mut claims = serde_json::Map::new();
        for (k, v) in [("iss", "demo-app"), ("sub", "demo-app"), ("aud", issuer.as_str()), ("jti", jti)] {
            claims.insert(k.into(), v.into());
        }
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + 60).into());
        claims.insert(claim.into(), value);
        let jws = key.sign(serde_json::Map::new(), &claims).unwrap();
        format!(
            "grant_type=client_credentials&client_id=demo-app&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={jws}"
        )
    };
    let hostile = || {
        [
            serde_json::json!(i64::MIN),
            serde_json::json!(i64::MAX),
            serde_json::json!(u64::MAX),
            serde_json::json!(-1),
            serde_json::json!(1.5),
            serde_json::json!("soon"),
        ]
    };
    for claim in ["exp", "iat", "nbf"] {
        for (i, value) in hostile().into_iter().enumerate() {
            let (status, answer) =
                post(&http, &token_url, assertion(&format!("{claim}-{i}"), claim, value.clone())).await;
            assert_eq!(
                (status, answer["error"].as_str()),
                (401, Some("invalid_client")),
                "{claim} = {value}: {answer}"
            );
        }
    }
    // DPoP proofs with hostile iat, sent with a valid assertion.
    let dpop_key = tokenrelay::jose::SigningKey::generate(Alg::ES256).unwrap();
    for (i, iat) in hostile().into_iter().enumerate() {
        let mut header = serde_json::Map::new();
        header.insert("typ".into(), "dpop+jwt".into());
        header.insert("jwk".into(), Value::Object(dpop_key.public_jwk().clone()));
        let mut claims = serde_json::Map::new();
        claims.insert("htm".into(), "POST".into());
        claims.insert("htu".into(), token_url.clone().into());
        claims.insert("jti".into(), format!("dpop-{i}").into());
        claims.insert("iat".into(), iat.clone());
        let proof = dpop_key.sign(header, &claims).unwrap();
        let body = assertion(&format!("with-dpop-{i}"), "iat", now.into());
        let resp = http
            .post(&token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("dpop", proof)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.unwrap();
        assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_dpop_proof")), "iat = {iat}: {answer}");
    }
    // Still serving.
    let (status, answer) = proxy.post_form("/d/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{answer}");
    proxy.stop().await;
}
