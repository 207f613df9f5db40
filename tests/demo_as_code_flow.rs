//! The demo AS runs the flows real apps use: discovery, the authorization code flow with
//! PKCE S256 (RFC 6749 §4.1, RFC 7636), ID tokens signed with the key its JWKS publishes,
//! and refresh tokens rotated on every use (RFC 6749 §6), DPoP-bound for public clients
//! (RFC 9449 §5).
//!
//! The first two tests drive the flow with oauth4webapi (`tests/code_flow_app/app.mjs`): the
//! app calls the demo AS's `/authorize` itself and sends the code and refresh exchanges
//! through the proxy, which adds the client authentication and the DPoP proof. The others
//! call the demo AS directly to pin down its error handling.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::jwt;
use common::process::{install_once, npm_install, tests_dir};
use common::proxy::{client, write_key, TestProxy};
use serde_json::{json, Value};
use tokenrelay::jose::{self, Alg, SigningKey, VerifyKey};

const CONFIDENTIAL: &str = "conf-app";
const PUBLIC: &str = "pub-app";
const USER: &str = "alice";
/// The confidential client's one registered redirect URI.
const REGISTERED: &str = "https://app.example/cb";
/// RFC 7636 appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

const ASSERTION_CHECKS: [&str; 6] = ["signature", "iss", "sub", "aud", "exp", "jti"];
const DPOP_CHECKS: [&str; 8] = ["typ", "alg", "jwk", "signature", "htm", "htu", "iat", "jti"];

/// The demo AS with `user = "alice"` and two routes to it, both discovered from its issuer
/// with `rewrite_metadata = true`: `/conf` (`private_key_jwt` + DPoP, one registered
/// redirect URI) and `/pub` (`auth = "none"` + DPoP, loopback redirect URIs by default).
async fn setup() -> TestProxy {
    let config = format!(
        r#"[demo_as]
listen = "$DEMO_AS"
user = "{USER}"
[demo_as.redirect_uris]
"{CONFIDENTIAL}" = ["{REGISTERED}"]

[routes.conf]
prefix = "/conf"
issuer = "http://$DEMO_AS"
rewrite_metadata = true
[routes.conf.client]
id = "{CONFIDENTIAL}"
auth = "private_key_jwt"
key = "conf.pem"
[routes.conf.dpop]
key = "conf-dpop.pem"
create = true

[routes.pub]
prefix = "/pub"
issuer = "http://$DEMO_AS"
rewrite_metadata = true
[routes.pub.client]
id = "{PUBLIC}"
auth = "none"
[routes.pub.dpop]
key = "pub-dpop.pem"
create = true
"#
    );
    let builder = TestProxy::builder(config).demo_as();
    write_key(builder.dir(), "conf.pem", Alg::ES256);
    builder.start().await
}

fn issuer(proxy: &TestProxy) -> String {
    format!("http://{}", proxy.demo_as_addr())
}

/// The DPoP key thumbprint of route `name`.
fn dpop_jkt(proxy: &TestProxy, name: &str) -> String {
    let snapshot = proxy.running.snapshot();
    let route = snapshot.routes.iter().find(|r| r.cfg.name == name).unwrap();
    route.dpop_key.as_ref().unwrap().thumbprint().to_string()
}

/// `tests/code_flow_app` with oauth4webapi installed.
fn code_flow_app() -> PathBuf {
    let dir = tests_dir("code_flow_app");
    install_once(&dir, &dir.join("node_modules/oauth4webapi/package.json"), || npm_install(&dir))
        .unwrap_or_else(|e| panic!("Node.js (>= 20) and npm are required for the oauth4webapi code flow test: {e}"));
    dir
}

/// Runs the app for route `route` and returns its JSON report, which must say `ok`.
async fn run_app(
    proxy: &TestProxy,
    route: &str,
    client_id: &str,
    redirect_uri: &str,
    refreshes: u32,
    replay: bool,
) -> Value {
    let app = tokio::task::spawn_blocking(code_flow_app).await.unwrap();
    let discovery = format!("{}/{route}/.well-known/openid-configuration", proxy.base);
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(app.join("app.mjs"))
        .args([discovery.as_str(), issuer(proxy).as_str(), client_id, redirect_uri])
        .arg(refreshes.to_string())
        .arg(if replay { "yes" } else { "no" })
        .current_dir(&app)
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("NODE_USE_ENV_PROXY")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the oauth4webapi app did not finish within 60 s")
        .expect("run node tests/code_flow_app/app.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the app printed no JSON ({e}):\n{stdout}\n{stderr}"));
    assert!(
        out.status.success() && report["ok"] == true,
        "the oauth4webapi app failed ({}): {report:#}\n{stderr}",
        out.status
    );
    // It read the proxy's metadata: code and refresh exchanges go through tokenrelay,
    // /authorize and the JWKS are the demo AS's own.
    let issuer = issuer(proxy);
    assert_eq!(report["metadata"]["issuer"], issuer.as_str());
    assert_eq!(report["metadata"]["token_endpoint"], format!("{}/{route}/token", proxy.base));
    assert_eq!(report["metadata"]["authorization_endpoint"], format!("{issuer}/authorize"));
    assert_eq!(report["metadata"]["jwks_uri"], format!("{issuer}/jwks"));
    report
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|s| s.as_str().unwrap()).collect()
}

/// Verifies `id_token` against the demo AS's JWKS; returns its claims.
async fn verify_id_token(issuer: &str, id_token: &str) -> serde_json::Map<String, Value> {
    let resp = client().get(format!("{issuer}/jwks")).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/jwk-set+json");
    let jwks: Value = resp.json().await.unwrap();
    let header = jwt::header(id_token);
    assert_eq!(header["alg"], "ES256");
    let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == header["kid"]).expect("kid in the JWKS");
    assert!(jwk.get("d").is_none(), "the JWKS publishes public keys only");
    jose::verify(id_token, Alg::ES256, VerifyKey::Jwk(jwk.as_object().unwrap())).expect("ID token signature").claims
}

#[tokio::test]
async fn confidential_client_code_flow_with_pkce_refresh_rotation_and_replays_refused() {
    let proxy = setup().await;
    let issuer = issuer(&proxy);
    let jkt = dpop_jkt(&proxy, "conf");
    let report = run_app(&proxy, "conf", CONFIDENTIAL, REGISTERED, 2, true).await;

    // /authorize redirected to the registered URI with code, state and iss (RFC 9207).
    let location = url::Url::parse(report["authorize"]["location"].as_str().unwrap()).unwrap();
    assert_eq!(format!("{}://{}{}", location.scheme(), location.host_str().unwrap(), location.path()), REGISTERED);
    let query: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(query["state"], report["authorize"]["state"].as_str().unwrap());
    assert_eq!(query["iss"], issuer);
    assert!(query["code"].len() >= 43, "a code of 256 random bits");

    // The code exchange: the demo AS checked the assertion and the proof tokenrelay added,
    // and the code itself.
    let code = &report["code"];
    let verified = &code["verified"];
    assert_eq!(verified["grant_type"], "authorization_code", "{verified}");
    assert_eq!(verified["client_id"], CONFIDENTIAL);
    assert_eq!(verified["auth_method"], "private_key_jwt");
    assert_eq!(strings(&verified["assertion_checks"]), ASSERTION_CHECKS);
    assert_eq!(strings(&verified["dpop_checks"]), DPOP_CHECKS);
    assert_eq!(verified["dpop_jkt"], jkt.as_str());
    assert_eq!(strings(&verified["code_checks"]), ["single_use", "exp", "client_id", "redirect_uri", "code_verifier"]);
    assert_eq!(verified["code_challenge_method"], "S256");
    // RFC 9449 §5: a confidential client's refresh token is not bound; its access token is.
    assert_eq!(verified["refresh_token_binding"], "none");
    assert_eq!(code["token_type"], "dpop");
    assert_eq!(code["cnf"]["jkt"], jkt.as_str());
    assert_eq!(code["scope"], "openid read");

    // The ID token: oauth4webapi checked claims, nonce and signature; check them again here.
    assert_eq!(code["id_token_signature"], "valid");
    let claims = verify_id_token(&issuer, code["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["sub"], USER);
    assert_eq!(claims["aud"], CONFIDENTIAL);
    assert_eq!(claims["nonce"], report["authorize"]["nonce"]);
    assert_eq!(claims["at_hash"], {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(code["access_token"].as_str().unwrap().as_bytes());
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &digest[..16])
    });
    let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
    assert!(exp > iat && claims["auth_time"].as_u64().unwrap() <= iat, "{claims:?}");

    // Two refreshes, each rotating the refresh token, each with assertion and proof checked.
    let refreshes = report["refreshes"].as_array().unwrap();
    assert_eq!(refreshes.len(), 2);
    let mut refresh_tokens = vec![code["refresh_token"].as_str().unwrap()];
    let mut assertion_jtis = vec![verified["assertion_jti"].as_str().unwrap()];
    for (i, r) in refreshes.iter().enumerate() {
        let v = &r["verified"];
        assert_eq!(v["grant_type"], "refresh_token", "refresh {i}: {v}");
        assert_eq!(v["auth_method"], "private_key_jwt");
        assert_eq!(strings(&v["assertion_checks"]), ASSERTION_CHECKS);
        assert_eq!(strings(&v["dpop_checks"]), DPOP_CHECKS);
        assert_eq!(v["dpop_jkt"], jkt.as_str());
        assert_eq!(strings(&v["refresh_checks"]), ["single_use", "exp", "client_id"]);
        assert_eq!(v["refresh_token_rotated"], true);
        assert_eq!(v["refresh_token_binding"], "none");
        assert_eq!(r["rotated"], true);
        assert_eq!(r["token_type"], "dpop");
        assert_eq!(r["id_token_signature"], "valid");
        let claims = verify_id_token(&issuer, r["id_token"].as_str().unwrap()).await;
        assert_eq!((claims["sub"].as_str(), claims.get("nonce")), (Some(USER), None), "OIDC Core §12.2");
        refresh_tokens.push(r["refresh_token"].as_str().unwrap());
        assertion_jtis.push(v["assertion_jti"].as_str().unwrap());
    }
    let distinct = |v: &[&str]| v.iter().collect::<std::collections::HashSet<_>>().len() == v.len();
    assert!(distinct(&refresh_tokens), "every refresh issued a new refresh token");
    assert!(distinct(&assertion_jtis), "tokenrelay signed a fresh assertion for every exchange");

    // After rotation the first refresh token is refused, and its reuse revokes the grant:
    // the latest refresh token stops working too (RFC 9700 §4.14.2).
    // The latest one was never used: it is called revoked, not "already used".
    for (what, answer, says) in [
        ("first refresh token", &report["replay_first_refresh_token"], "already used"),
        ("latest refresh token after the reuse", &report["latest_after_replay"], "revoked, never used"),
        ("replayed code", &report["replay_code"], "already used"),
    ] {
        assert_eq!(
            (answer["status"].as_u64(), answer["error"].as_str()),
            (Some(400), Some("invalid_grant")),
            "{what}: {answer}"
        );
        assert!(answer["error_description"].as_str().unwrap().contains(says), "{what}: {answer}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn public_client_refresh_token_is_bound_to_its_dpop_key() {
    let proxy = setup().await;
    let issuer = issuer(&proxy);
    let jkt = dpop_jkt(&proxy, "pub");
    // Any loopback port is fine for a client with no registered redirect URI (RFC 8252 §7.3).
    let report = run_app(&proxy, "pub", PUBLIC, "http://127.0.0.1:49731/callback", 1, false).await;
    for (what, v) in [("code", &report["code"]["verified"]), ("refresh", &report["refreshes"][0]["verified"])] {
        assert_eq!(v["auth_method"], "none", "{what}: {v}");
        assert!(v.get("assertion_checks").is_none(), "{what}: {v}");
        assert_eq!(strings(&v["dpop_checks"]), DPOP_CHECKS, "{what}");
        assert_eq!(v["dpop_jkt"], jkt.as_str(), "{what}");
        assert_eq!(v["refresh_token_binding"], "dpop", "{what}");
        assert_eq!(v["refresh_token_jkt"], jkt.as_str(), "{what}");
    }
    assert_eq!(
        strings(&report["refreshes"][0]["verified"]["refresh_checks"]),
        ["single_use", "exp", "client_id", "dpop_jkt"]
    );
    let latest = report["latest_refresh_token"].as_str().unwrap().to_string();

    // Straight to the demo AS without a proof: refused, and the token is not used up.
    let token_url = format!("{issuer}/token");
    let form = format!("grant_type=refresh_token&client_id={PUBLIC}&refresh_token={latest}");
    let http = client();
    let post = |dpop: Option<String>| {
        let mut req =
            http.post(&token_url).header("content-type", "application/x-www-form-urlencoded").body(form.clone());
        if let Some(proof) = dpop {
            req = req.header("dpop", proof);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, answer) = post(None).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_grant")), "{answer}");
    assert!(answer["error_description"].as_str().unwrap().contains("DPoP"), "{answer}");

    // With a valid proof from another key: refused as well.
    let stranger = SigningKey::generate(Alg::ES256).unwrap();
    let mut header = serde_json::Map::new();
    header.insert("typ".into(), "dpop+jwt".into());
    header.insert("jwk".into(), Value::Object(stranger.public_jwk().clone()));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({ "htm": "POST", "htu": token_url, "iat": now, "jti": jose::new_jti() });
    let proof = stranger.sign(header, claims.as_object().unwrap()).unwrap();
    let (status, answer) = post(Some(proof)).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_grant")), "{answer}");
    assert!(answer["verified"].is_null());

    // Through tokenrelay, which signs the proof with the route's key, it still works.
    let (status, answer) =
        proxy.post_form("/pub/token", format!("grant_type=refresh_token&refresh_token={latest}")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["token_type"], "DPoP");
    assert_eq!(answer["verified"]["refresh_token_jkt"], jkt.as_str());
    assert_ne!(answer["refresh_token"], latest.as_str());
    proxy.stop().await;
}

/// GET `url` without following redirects: status, `Location`, body.
async fn get(url: &str) -> (u16, Option<url::Url>, String) {
    let resp = client().get(url).send().await.unwrap();
    let location = resp.headers().get("location").map(|l| url::Url::parse(l.to_str().unwrap()).unwrap());
    (resp.status().as_u16(), location, resp.text().await.unwrap())
}

fn query(url: &url::Url) -> std::collections::HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

fn authorize_url(issuer: &str, params: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(&format!("{issuer}/authorize")).unwrap();
    url.query_pairs_mut().extend_pairs(params);
    url.to_string()
}

#[tokio::test]
async fn metadata_jwks_and_authorization_errors() {
    let proxy = setup().await;
    let issuer = issuer(&proxy);
    let http = client();

    // Discovery: both documents describe exactly what the demo AS does.
    for path in ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"] {
        let meta: Value = http.get(format!("{issuer}{path}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(meta["issuer"], issuer.as_str());
        assert_eq!(meta["authorization_endpoint"], format!("{issuer}/authorize"));
        assert_eq!(meta["token_endpoint"], format!("{issuer}/token"));
        assert_eq!(meta["jwks_uri"], format!("{issuer}/jwks"));
        assert_eq!(meta["response_types_supported"], json!(["code"]));
        assert_eq!(meta["grant_types_supported"], json!(["authorization_code", "refresh_token", "client_credentials"]));
        assert_eq!(meta["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(meta["id_token_signing_alg_values_supported"], json!(["ES256"]));
        assert_eq!(meta["subject_types_supported"], json!(["public"]));
        assert!(strings(&meta["scopes_supported"]).contains(&"openid"));
        assert!(strings(&meta["token_endpoint_auth_methods_supported"]).contains(&"private_key_jwt"));
        assert!(strings(&meta["token_endpoint_auth_methods_supported"]).contains(&"none"));
        assert!(strings(&meta["dpop_signing_alg_values_supported"]).contains(&"ES256"));
        assert_eq!(meta["authorization_response_iss_parameter_supported"], true);
    }

    let loopback = "http://127.0.0.1:5173/cb";
    let pkce = [("code_challenge", CHALLENGE), ("code_challenge_method", "S256")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut p = vec![("response_type", "code"), ("state", "s-1")];
        p.extend_from_slice(extra);
        authorize_url(&issuer, &p)
    };

    // RFC 6749 §4.1.2.1: no redirect when the client or its redirect URI is in doubt.
    for (what, url) in [
        ("unknown client", with(&[("client_id", "nobody"), ("redirect_uri", loopback), pkce[0], pkce[1]])),
        ("no client_id", with(&[("redirect_uri", loopback), pkce[0], pkce[1]])),
        ("not registered", with(&[("client_id", CONFIDENTIAL), ("redirect_uri", loopback), pkce[0], pkce[1]])),
        ("not loopback", with(&[("client_id", PUBLIC), ("redirect_uri", "https://evil.example/cb"), pkce[0], pkce[1]])),
        (
            "lookalike",
            with(&[("client_id", PUBLIC), ("redirect_uri", "http://127.0.0.1.evil.example/cb"), pkce[0], pkce[1]]),
        ),
        ("fragment", with(&[("client_id", PUBLIC), ("redirect_uri", "http://127.0.0.1:5173/cb#x"), pkce[0], pkce[1]])),
        ("missing", with(&[("client_id", PUBLIC), pkce[0], pkce[1]])),
    ] {
        let (status, location, body) = get(&url).await;
        assert_eq!((status, location), (400, None), "{what}");
        assert!(body.contains("invalid_request"), "{what}: {body}");
    }

    // Other errors go back to the redirect URI with error, state and iss.
    for (what, url, error) in [
        ("no PKCE", with(&[("client_id", PUBLIC), ("redirect_uri", loopback)]), "invalid_request"),
        (
            "plain PKCE",
            with(&[
                ("client_id", PUBLIC),
                ("redirect_uri", loopback),
                ("code_challenge", CHALLENGE),
                ("code_challenge_method", "plain"),
            ]),
            "invalid_request",
        ),
        (
            "implicit",
            authorize_url(
                &issuer,
                &[("response_type", "token"), ("client_id", PUBLIC), ("redirect_uri", loopback), ("state", "s-1")],
            ),
            "unsupported_response_type",
        ),
    ] {
        let (status, location, _) = get(&url).await;
        assert_eq!(status, 302, "{what}");
        let location = location.unwrap();
        assert!(location.as_str().starts_with(loopback), "{what}: {location}");
        let q = query(&location);
        assert_eq!(
            (q["error"].as_str(), q["state"].as_str(), q["iss"].as_str()),
            (error, "s-1", issuer.as_str()),
            "{what}"
        );
        assert!(!q.contains_key("code"), "{what}");
    }

    // A client with one registered URI may leave redirect_uri out (RFC 6749 §3.1.2.3).
    let (status, location, _) = get(&with(&[("client_id", CONFIDENTIAL), pkce[0], pkce[1]])).await;
    assert_eq!(status, 302);
    assert!(location.unwrap().as_str().starts_with(&format!("{REGISTERED}?code=")));

    // A public client without DPoP, straight at the demo AS: the code checks, then single use.
    let (status, location, _) =
        get(&with(&[("client_id", PUBLIC), ("redirect_uri", loopback), ("scope", "read"), pkce[0], pkce[1]])).await;
    assert_eq!(status, 302);
    let code = query(&location.unwrap())["code"].clone();
    let token_url = format!("{issuer}/token");
    let exchange = |verifier: &str, redirect_uri: &str| {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", "authorization_code"),
                ("client_id", PUBLIC),
                ("code", code.as_str()),
                ("code_verifier", verifier),
                ("redirect_uri", redirect_uri),
            ])
            .finish();
        let req = http.post(&token_url).header("content-type", "application/x-www-form-urlencoded").body(body);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let wrong_verifier = "x".repeat(43);
    for (what, verifier, redirect_uri) in [
        ("wrong verifier", wrong_verifier.as_str(), loopback),
        ("other redirect_uri", VERIFIER, "http://127.0.0.1:5174/cb"),
    ] {
        let (status, answer) = exchange(verifier, redirect_uri).await;
        assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_grant")), "{what}: {answer}");
    }
    let (status, answer) = exchange(VERIFIER, loopback).await;
    assert_eq!(status, 200, "failed checks do not use the code up: {answer}");
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["verified"]["refresh_token_binding"], "none", "no proof, nothing to bind to");
    assert!(answer.get("id_token").is_none(), "no openid scope, no ID token");
    let access_token = answer["access_token"].as_str().unwrap().to_string();
    let refresh_token = answer["refresh_token"].as_str().unwrap().to_string();
    let resource = |token: String| {
        let req = http.get(format!("{issuer}/resource")).bearer_auth(token);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, seen) = resource(access_token.clone()).await;
    assert_eq!((status, seen["sub"].as_str(), seen["scope"].as_str()), (200, Some(USER), Some("read")), "{seen}");
    // The replayed code is refused and the tokens issued from it are revoked (RFC 6749 §4.1.2).
    let (status, answer) = exchange(VERIFIER, loopback).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_grant")), "{answer}");
    let (status, seen) = resource(access_token).await;
    assert_eq!((status, seen["error"].as_str()), (401, Some("invalid_token")), "{seen}");
    let refresh = format!("grant_type=refresh_token&client_id={PUBLIC}&refresh_token={refresh_token}");
    let resp = http
        .post(&token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(refresh)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400, "the refresh token from the replayed code is revoked");

    // POST /authorize works as GET does (OIDC Core §3.1.2.1).
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("response_type", "code"), ("client_id", PUBLIC), ("redirect_uri", loopback), pkce[0], pkce[1]])
        .finish();
    let resp = http
        .post(format!("{issuer}/authorize"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    assert!(query(&url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap()).contains_key("code"));
    proxy.stop().await;
}

#[test]
fn demo_as_settings_are_checked() {
    let parse = |extra: &str| {
        let text = format!("[demo_as]\nlisten = \"127.0.0.1:9443\"\n{extra}");
        tokenrelay::config::parse(&text, std::path::Path::new("/tmp/proxy.toml"))
    };
    let defaults = parse("").unwrap().demo_as.unwrap();
    assert_eq!(defaults.user, "demo-user");
    assert!(defaults.redirect_uris.is_empty());
    let set =
        parse("user = \"bob\"\n[demo_as.redirect_uris]\nweb = [\"https://app.example/cb\", \"com.example.app:/cb\"]\n")
            .unwrap()
            .demo_as
            .unwrap();
    assert_eq!(set.user, "bob");
    assert_eq!(set.redirect_uris["web"], ["https://app.example/cb", "com.example.app:/cb"]);
    for (extra, key) in [
        ("user = \"\"\n", "demo_as.user"),
        ("[demo_as.redirect_uris]\nweb = [\"/cb\"]\n", "demo_as.redirect_uris.web"),
        ("[demo_as.redirect_uris]\nweb = [\"https://app.example/cb#top\"]\n", "demo_as.redirect_uris.web"),
        ("[demo_as.redirect_uris]\nweb = []\n", "demo_as.redirect_uris.web"),
    ] {
        let err = parse(extra).unwrap_err().to_string();
        assert!(err.contains(key), "{extra}: {err}");
    }
}
