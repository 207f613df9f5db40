//! "An issuer is enough": a route that names only its `issuer` (no `upstream`, no `endpoints`)
//! against panva's `oidc-provider`. tokenrelay learns the endpoints from the AS metadata,
//! signs every client-authenticated one with an assertion whose `aud` is the URL of the
//! endpoint called (`audience = "endpoint"`), adds DPoP proofs to token and PAR requests only,
//! and, with `rewrite_metadata = true`, serves the metadata with those endpoints pointing at
//! itself so that an unmodified client (oauth4webapi, tests/discovery_app) can start from the
//! proxy's discovery URL alone.
//!
//! Every test asserts what the AS received (its request records), not only what the app saw.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::jwt;
use common::oidc::{form_pairs, jwks, param, OidcProvider};
use common::process::{install_once, npm_install, tests_dir};
use common::proxy::{write_key, TestProxy};
use serde_json::{json, Value};
use tokenrelay::jose::{Alg, SigningKey};

const CLIENT: &str = "issuer-client";
const REDIRECT_URI: &str = "https://app.example/cb";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
const CIBA_GRANT: &str = "urn:openid:params:grant-type:ciba";
/// RFC 7636 appendix B.
const CODE_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
/// Bound on every single HTTP exchange a test makes.
const WAIT: Duration = Duration::from_secs(20);

/// The metadata members naming endpoints tokenrelay authenticates the client at.
const SIGNED_ENDPOINTS: [&str; 6] = [
    "token_endpoint",
    "pushed_authorization_request_endpoint",
    "introspection_endpoint",
    "revocation_endpoint",
    "device_authorization_endpoint",
    "backchannel_authentication_endpoint",
];

/// Which optional oidc-provider features a test turns on (`tests/oidc/server.mjs`).
#[derive(Clone, Copy, Default)]
struct Features {
    device_flow: bool,
    ciba: bool,
    mtls_endpoint_aliases: bool,
}

/// The client as registered at the AS: `private_key_jwt` with the public client key,
/// DPoP-bound access tokens, client_credentials, and what PAR needs (authorization_code, a
/// redirect URI), plus the device and CIBA grants when those features are on.
fn registration(client_key: &SigningKey, features: Features) -> Value {
    let mut grant_types = vec!["client_credentials", "authorization_code"];
    if features.device_flow {
        grant_types.push(DEVICE_CODE_GRANT);
    }
    if features.ciba {
        grant_types.push(CIBA_GRANT);
    }
    let mut client = json!({
        "client_id": CLIENT,
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "ES256",
        "jwks": jwks(client_key),
        "dpop_bound_access_tokens": true,
        "grant_types": grant_types,
        "response_types": ["code"],
        "redirect_uris": [REDIRECT_URI],
    });
    if features.ciba {
        client["backchannel_token_delivery_mode"] = json!("poll");
    }
    client
}

/// A route naming only the issuer (no `upstream`), keys, `audience = "endpoint"` and a DPoP
/// key; `extra` goes into `[routes.as]`.
fn route_config(issuer: &str, extra: &str) -> String {
    format!(
        r#"[routes.as]
prefix = "/as"
issuer = "{issuer}"
{extra}
[routes.as.client]
id = "{CLIENT}"
auth = "private_key_jwt"
key = "client.pem"
audience = "endpoint"

[routes.as.dpop]
key = "dpop.pem"
"#
    )
}

/// The AS, the proxy in front of it, and the keys both know.
struct Setup {
    op: OidcProvider,
    proxy: TestProxy,
    client_key: Arc<SigningKey>,
    dpop_key: Arc<SigningKey>,
    /// The AS's own metadata, fetched directly: the URLs as the AS published them.
    meta: Value,
    _dir: tempfile::TempDir,
}

async fn setup(features: Features, route_extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (_, client_key) = write_key(dir.path(), "client.pem", Alg::ES256);
    let (_, dpop_key) = write_key(dir.path(), "dpop.pem", Alg::ES256);
    let op = OidcProvider::start(json!({
        "clients": [registration(&client_key, features)],
        "device_flow": features.device_flow,
        "ciba": features.ciba,
        "mtls_endpoint_aliases": features.mtls_endpoint_aliases,
    }))
    .await;
    let meta = op.metadata().await;
    assert_eq!(meta["issuer"], op.issuer.as_str(), "{meta}");
    let proxy = TestProxy::builder(route_config(&op.issuer, route_extra)).in_dir(dir.path()).start().await;
    Setup { op, proxy, client_key, dpop_key, meta, _dir: dir }
}

impl Setup {
    /// The URL of `member` in the AS's own metadata.
    fn endpoint(&self, member: &str) -> String {
        self.meta[member].as_str().unwrap_or_else(|| panic!("the AS publishes no {member}: {}", self.meta)).to_string()
    }

    /// The proxy path for `member`: `/as` + the path of the endpoint as the AS published it.
    fn proxy_path(&self, member: &str) -> String {
        format!("/as{}", path_of(&self.endpoint(member)))
    }

    /// POSTs a form body to the proxy path for `member`, as a bare app does.
    async fn post(&self, member: &str, body: &str) -> (u16, Value) {
        let path = self.proxy_path(member);
        let send = self
            .proxy
            .http
            .post(format!("{}{path}", self.proxy.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send();
        let resp = tokio::time::timeout(WAIT, send)
            .await
            .unwrap_or_else(|_| panic!("POST {path}: no answer within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = resp.status().as_u16();
        let text = tokio::time::timeout(WAIT, resp.text()).await.unwrap().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Asserts that `record` (one request the AS received) is a POST to the endpoint
    /// `member`, authenticated with exactly one `private_key_jwt` assertion for [`CLIENT`]
    /// whose `aud` is that endpoint's URL as the AS published it, carrying a DPoP proof for
    /// that URL when `dpop`, and none otherwise; and that the AS answered `status`.
    fn assert_signed(&self, record: &Value, member: &str, dpop: bool, status: u16) {
        let url = self.endpoint(member);
        let what = format!("{member} request at the AS: {record:#}");
        assert_eq!(record["method"], "POST", "{what}");
        assert_eq!(record["path"], path_of(&url), "{what}");
        assert_eq!(record["status"], status, "the AS's answer ({}) — {what}", record["error_detail"]);

        let pairs = form_pairs(record["body"].as_str().unwrap());
        let count = |name: &str| pairs.iter().filter(|(k, _)| k == name).count();
        assert_eq!(count("client_assertion"), 1, "exactly one client_assertion — {what}");
        assert_eq!(count("client_assertion_type"), 1, "{what}");
        assert_eq!(count("client_id"), 1, "{what}");
        assert_eq!(count("client_secret"), 0, "{what}");
        assert!(record["headers"].get("authorization").is_none(), "no Authorization header — {what}");
        assert_eq!(param(record, "client_assertion_type").as_deref(), Some(JWT_BEARER), "{what}");
        assert_eq!(param(record, "client_id").as_deref(), Some(CLIENT), "{what}");

        let assertion = param(record, "client_assertion").unwrap();
        let header = jwt::header(&assertion);
        assert_eq!(header["alg"], "ES256", "{header}");
        assert_eq!(header["kid"], self.client_key.thumbprint(), "{header}");
        let claims = jwt::claims(&assertion);
        assert_eq!(claims["iss"], CLIENT, "{claims}");
        assert_eq!(claims["sub"], CLIENT, "{claims}");
        assert!(
            claims["aud"] == json!(url) || claims["aud"] == json!([url]),
            "audience = \"endpoint\": the assertion's aud must be the {member} URL {url:?} as published in \
             the metadata, got {} — {what}",
            claims["aud"]
        );
        assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()), "{claims}");
        assert!(claims["exp"].as_i64().is_some(), "{claims}");

        let proof = record["headers"].get("dpop");
        if !dpop {
            assert!(proof.is_none(), "no DPoP proof on the {member} (DPoP is for token and PAR requests) — {what}");
            return;
        }
        let proof = proof.and_then(Value::as_str).unwrap_or_else(|| panic!("one DPoP header — {what}"));
        let header = jwt::header(proof);
        assert_eq!(header["typ"], "dpop+jwt", "{header}");
        let jwk = header["jwk"].as_object().unwrap_or_else(|| panic!("DPoP header without jwk: {header}"));
        assert_eq!(tokenrelay::jose::thumbprint(jwk), self.dpop_key.thumbprint(), "the proof is by the DPoP key");
        let claims = jwt::claims(proof);
        assert_eq!(claims["htm"], "POST", "{claims}");
        assert_eq!(claims["htu"], url.as_str(), "htu = the {member} URL — {claims}");
        assert!(claims.get("ath").is_none(), "{claims}");
    }
}

/// The path of an absolute URL.
fn path_of(url: &str) -> String {
    url::Url::parse(url).unwrap_or_else(|e| panic!("{url:?} is not a URL: {e}")).path().to_string()
}

fn paths(records: &[Value]) -> Vec<String> {
    records.iter().map(|r| r["path"].as_str().unwrap_or_default().to_string()).collect()
}

#[tokio::test]
async fn issuer_only_route_signs_token_par_introspection_and_revocation_for_their_own_audience() {
    let s = setup(Features::default(), "").await;
    let jkt = s.dpop_key.thumbprint().to_string();

    // 1. client_credentials: a bare body, nothing about the client.
    let (status, token) = s.post("token_endpoint", "grant_type=client_credentials&scope=read").await;
    assert_eq!(status, 200, "token: {token}\n{}", s.op.stderr());
    assert_eq!(token["token_type"], "DPoP", "{token}");
    let access_token = token["access_token"].as_str().unwrap().to_string();

    // 2. PAR (RFC 9126): the app names its client_id (as oauth4webapi's None() does), no
    //    credentials.
    let par_body = format!(
        "client_id={CLIENT}&response_type=code&redirect_uri=https%3A%2F%2Fapp.example%2Fcb&scope=openid\
         &code_challenge={CODE_CHALLENGE}&code_challenge_method=S256&state=st-1"
    );
    let (status, par) = s.post("pushed_authorization_request_endpoint", &par_body).await;
    assert_eq!(status, 201, "PAR: {par}\n{}", s.op.stderr());
    assert!(par["request_uri"].as_str().is_some_and(|u| u.starts_with("urn:ietf:params:oauth:request_uri:")), "{par}");

    // 3. Introspection of the DPoP-bound token: active, bound to the DPoP key.
    let token_param = format!("token={access_token}");
    let (status, intro) = s.post("introspection_endpoint", &token_param).await;
    assert_eq!(status, 200, "introspection: {intro}\n{}", s.op.stderr());
    assert_eq!(intro["active"], true, "{intro}");
    assert_eq!(intro["client_id"], CLIENT, "{intro}");
    assert_eq!(intro["token_type"], "DPoP", "{intro}");
    assert_eq!(intro["cnf"]["jkt"], jkt.as_str(), "cnf.jkt = thumbprint of the route's DPoP key: {intro}");

    // 4. Revocation (RFC 7009), then 5. introspection again: inactive.
    let (status, revoked) = s.post("revocation_endpoint", &format!("{token_param}&token_type_hint=access_token")).await;
    assert_eq!(status, 200, "revocation: {revoked}\n{}", s.op.stderr());
    let (status, intro) = s.post("introspection_endpoint", &token_param).await;
    assert_eq!(status, 200, "introspection after revocation: {intro}");
    assert_eq!(intro["active"], false, "the revoked token introspects inactive: {intro}");
    assert_eq!(s.op.introspect(&access_token).await["active"], false, "gone from the AS's store");

    // What the AS received: exactly those five requests, each signed for its own endpoint,
    // DPoP on token and PAR only.
    let seen = s.op.posts().await;
    let expected = [
        ("token_endpoint", true, 200),
        ("pushed_authorization_request_endpoint", true, 201),
        ("introspection_endpoint", false, 200),
        ("revocation_endpoint", false, 200),
        ("introspection_endpoint", false, 200),
    ];
    assert_eq!(seen.len(), expected.len(), "one AS request per app request, in order: {:?}", paths(&seen));
    for (record, (member, dpop, status)) in seen.iter().zip(expected) {
        s.assert_signed(record, member, dpop, status);
    }
    // The app's own parameters reach the AS unchanged.
    assert_eq!(param(&seen[0], "grant_type").as_deref(), Some("client_credentials"));
    assert_eq!(param(&seen[0], "scope").as_deref(), Some("read"));
    for (name, value) in [
        ("response_type", "code"),
        ("redirect_uri", REDIRECT_URI),
        ("code_challenge", CODE_CHALLENGE),
        ("state", "st-1"),
    ] {
        assert_eq!(param(&seen[1], name).as_deref(), Some(value), "PAR parameter {name}");
    }
    for i in [2, 3, 4] {
        assert_eq!(param(&seen[i], "token").as_deref(), Some(access_token.as_str()));
    }
    // Five different assertions (RFC 7523 §3: jti is single-use).
    let mut jtis: Vec<String> = seen
        .iter()
        .map(|r| jwt::claims(&param(r, "client_assertion").unwrap())["jti"].as_str().unwrap().to_string())
        .collect();
    jtis.sort();
    jtis.dedup();
    assert_eq!(jtis.len(), 5, "a fresh assertion jti per request");
    s.proxy.stop().await;
}

#[tokio::test]
async fn issuer_only_route_signs_device_authorization_and_ciba_without_dpop() {
    let s = setup(Features { device_flow: true, ciba: true, ..Features::default() }, "").await;

    let (status, device) = s.post("device_authorization_endpoint", "scope=openid").await;
    assert_eq!(status, 200, "device authorization: {device}\n{}", s.op.stderr());
    assert!(device["device_code"].is_string(), "{device}");

    let (status, ciba) = s.post("backchannel_authentication_endpoint", "scope=openid&login_hint=test-user").await;
    assert_eq!(status, 200, "CIBA: {ciba}\n{}", s.op.stderr());
    assert!(ciba["auth_req_id"].is_string(), "{ciba}");

    let seen = s.op.posts().await;
    assert_eq!(seen.len(), 2, "{:?}", paths(&seen));
    s.assert_signed(&seen[0], "device_authorization_endpoint", false, 200);
    s.assert_signed(&seen[1], "backchannel_authentication_endpoint", false, 200);
    assert_eq!(param(&seen[1], "login_hint").as_deref(), Some("test-user"));
    s.proxy.stop().await;
}

/// The AS's metadata as the proxy must serve it to a client that reached it at `origin`:
/// every client-authenticated endpoint and every mTLS alias at `origin` + `/as` + its path,
/// everything else (`issuer`, `jwks_uri`, `authorization_endpoint`, `userinfo_endpoint`, ...)
/// as published.
fn rewritten(meta: &Value, origin: &str) -> Value {
    let at_proxy = |url: &Value| json!(format!("{origin}/as{}", path_of(url.as_str().unwrap())));
    let mut expected = meta.clone();
    for member in SIGNED_ENDPOINTS {
        if let Some(url) = meta.get(member) {
            expected[member] = at_proxy(url);
        }
    }
    if let Some(aliases) = meta.get("mtls_endpoint_aliases").and_then(Value::as_object) {
        for (member, url) in aliases {
            expected["mtls_endpoint_aliases"][member] = at_proxy(url);
        }
    }
    expected
}

/// GETs `url`, optionally with another `Host` header; returns status, content type, body.
async fn get_json(http: &reqwest::Client, url: &str, host: Option<&str>) -> (u16, String, Value) {
    let mut req = http.get(url).header("accept", "application/json");
    if let Some(host) = host {
        req = req.header("host", host);
    }
    let resp = tokio::time::timeout(WAIT, req.send())
        .await
        .unwrap_or_else(|_| panic!("GET {url}: no answer within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let text = tokio::time::timeout(WAIT, resp.text()).await.unwrap().unwrap();
    (status, ctype, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn rewrite_metadata_points_client_authenticated_endpoints_at_the_proxy() {
    let features = Features { device_flow: true, ciba: true, mtls_endpoint_aliases: true };
    let s = setup(features, "rewrite_metadata = true").await;
    for member in SIGNED_ENDPOINTS {
        assert!(s.meta[member].is_string(), "the AS publishes {member}: {}", s.meta);
        assert!(s.meta["mtls_endpoint_aliases"][member].is_string(), "and an mTLS alias for it: {}", s.meta);
    }
    let port = s.proxy.running.addr.port();

    let cases = [
        // OIDC Discovery under the route prefix, and RFC 8414 §3.1 (suffix after the well-known
        // segment), both as the app reached the proxy.
        (format!("{}/as/.well-known/openid-configuration", s.proxy.base), None, s.proxy.base.clone()),
        (format!("{}/.well-known/oauth-authorization-server/as", s.proxy.base), None, s.proxy.base.clone()),
        // Same socket, the app said `localhost`: the URLs say `localhost` too.
        (
            format!("{}/as/.well-known/openid-configuration", s.proxy.base),
            Some(format!("localhost:{port}")),
            format!("http://localhost:{port}"),
        ),
    ];
    for (url, host, origin) in cases {
        let (status, ctype, doc) = get_json(&s.proxy.http, &url, host.as_deref()).await;
        let what = format!("GET {url} (Host: {host:?})");
        assert_eq!(status, 200, "{what}: {doc}");
        assert!(ctype.starts_with("application/json"), "{what}: content-type {ctype:?}");
        for member in ["issuer", "jwks_uri", "authorization_endpoint", "userinfo_endpoint"] {
            assert_eq!(doc[member], s.meta[member], "{what}: {member} stays as the AS published it");
        }
        assert_eq!(doc["token_endpoint"], json!(format!("{origin}/as/token")), "{what}");
        let expected = rewritten(&s.meta, &origin);
        assert_eq!(
            doc, expected,
            "{what}: the AS's metadata with the client-authenticated endpoints and mTLS aliases at {origin}/as..."
        );
    }
    // Serving metadata signs nothing and sends nothing but GETs to the AS.
    assert_eq!(s.op.posts().await.len(), 0);
    s.proxy.stop().await;
}

/// `tests/discovery_app` with oauth4webapi installed.
fn discovery_app() -> PathBuf {
    let dir = tests_dir("discovery_app");
    install_once(&dir, &dir.join("node_modules/oauth4webapi/package.json"), || npm_install(&dir))
        .unwrap_or_else(|e| panic!("Node.js (>= 20) and npm are required for the oauth4webapi discovery test: {e}"));
    dir
}

#[tokio::test]
async fn oauth4webapi_app_knowing_only_the_proxy_discovery_url_gets_a_token_and_pushes_a_request() {
    let app = tokio::task::spawn_blocking(discovery_app).await.unwrap();
    let s = setup(Features::default(), "rewrite_metadata = true").await;
    let discovery = format!("{}/as/.well-known/openid-configuration", s.proxy.base);

    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(app.join("app.mjs"))
        .args([discovery.as_str(), s.op.issuer.as_str(), CLIENT, REDIRECT_URI])
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
        .expect("run node tests/discovery_app/app.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the app printed no JSON ({e}):\n{stdout}\n{stderr}"));
    // The app checked the real issuer and then used the proxy's URLs (checked first: an app
    // sent straight to the AS fails there with `invalid_client`, which says little).
    let app_failed = || format!("{result:#}\n{stderr}\nAS stderr:\n{}", s.op.stderr());
    assert_eq!(result["metadata"]["issuer"], s.op.issuer.as_str(), "{}", app_failed());
    for member in ["token_endpoint", "pushed_authorization_request_endpoint", "introspection_endpoint"] {
        assert_eq!(
            result["metadata"][member],
            json!(format!("{}{}", s.proxy.base, s.proxy_path(member))),
            "the app read {member} from the proxy's metadata: {}",
            app_failed()
        );
    }
    assert!(
        out.status.success() && result["ok"] == true,
        "the oauth4webapi app failed ({}): {}",
        out.status,
        app_failed()
    );
    // oauth4webapi lowercases token_type; it accepts a DPoP-bound token without a DPoP handle
    // of its own, so this route keeps its DPoP key.
    assert_eq!(result["token"]["token_type"], "dpop", "{result}");
    assert!(
        result["par"]["request_uri"].as_str().is_some_and(|u| u.starts_with("urn:ietf:params:oauth:request_uri:")),
        "{result}"
    );
    assert_eq!(result["introspection"]["active"], true, "{result}");
    assert_eq!(result["introspection"]["cnf"]["jkt"], s.dpop_key.thumbprint(), "{result}");

    // What the AS received: the app's three requests, each signed for its own endpoint.
    let seen = s.op.posts().await;
    assert_eq!(seen.len(), 3, "{:?}", paths(&seen));
    s.assert_signed(&seen[0], "token_endpoint", true, 200);
    s.assert_signed(&seen[1], "pushed_authorization_request_endpoint", true, 201);
    s.assert_signed(&seen[2], "introspection_endpoint", false, 200);
    for record in &seen {
        let ua = record["headers"]["user-agent"].as_str().unwrap_or_default();
        assert!(ua.starts_with("oauth4webapi/"), "the request is the app's (user-agent {ua:?}): {record:#}");
    }
    assert_eq!(param(&seen[0], "scope").as_deref(), Some("read"));
    assert_eq!(param(&seen[1], "redirect_uri").as_deref(), Some(REDIRECT_URI));
    assert_eq!(param(&seen[2], "token").as_deref(), result["token"]["access_token"].as_str());
    s.proxy.stop().await;
}
