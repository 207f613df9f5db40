//! The typed core: URLs compared in one normal form, endpoints keyed by what the app calls,
//! and the fail-closed invariant: on a route that authenticates, a request that carries
//! client credentials or a grant is signed at a signed endpoint or refused, never relayed as
//! it came. Every test judges by what the upstream received.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::process::BIN;
use common::proxy::{write_key, TestProxy};
use common::tls_upstream::TlsRecorder;
use common::upstream::{Recorder, Reply, Seen};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use tokenrelay::jose::Alg;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SECRET: &str = "app-own-secret-must-not-leak";

/// Sends `request` exactly as written (a URL library would normalize the path).
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer within 20 s");
    String::from_utf8_lossy(&answer).into_owned()
}

fn post(target: &str, host: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n{extra_headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn status(answer: &str) -> u16 {
    answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The invariant, judged at the upstream: everything it received is signed and carries none
/// of the app's own credentials.
fn assert_all_signed(seen: &[Seen]) {
    for s in seen {
        assert!(s.param("client_assertion").is_some(), "unsigned: {} {} {}", s.method, s.path, s.body_str());
        assert!(!s.body_str().contains(SECRET) && !s.path.contains(SECRET), "the app's secret travelled: {s:?}");
    }
}

fn signing_route(upstream: &str, extra: &str) -> String {
    format!(
        r#"
[routes.sec]
prefix = "/sec"
upstream = "{upstream}"
timeout = "5s"
endpoints = ["/token", "/par"]
{extra}
[routes.sec.client]
id = "app-1"
auth = "private_key_jwt"
key = "client.pem"
"#
    )
}

async fn start(config: String) -> TestProxy {
    let builder = TestProxy::builder(config).watch(false);
    write_key(builder.dir(), "client.pem", Alg::ES256);
    builder.start().await
}

/// An AS whose metadata is served by `meta(own_origin)`; POSTs get a token.
async fn metadata_as(
    meta: impl Fn(&str) -> serde_json::Value + Send + Sync + 'static,
) -> (Recorder, Arc<OnceLock<String>>) {
    let origin: Arc<OnceLock<String>> = Arc::default();
    let own = origin.clone();
    let up = Recorder::start(move |seen, _| {
        if seen.method == "GET" && seen.path.contains("/.well-known/") {
            Reply::json(200, meta(own.get().unwrap()))
        } else {
            Reply::token()
        }
    })
    .await;
    (up, origin)
}

async fn check_output(dir: &std::path::Path) -> String {
    let out = tokio::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir.join("proxy.toml"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn posts(seen: &[Seen]) -> Vec<Seen> {
    seen.iter().filter(|s| s.method == "POST").cloned().collect()
}

/// Metadata that puts the token endpoint on another origin and PAR under another spelling of
/// the issuer's host: both are signed where the metadata says, never relayed to the issuer's
/// origin with the app's secret.
#[tokio::test]
async fn endpoints_that_metadata_spells_otherwise_are_signed_where_published() {
    let other = Recorder::start(|_, _| Reply::token()).await;
    let other_url = other.url();
    let (issuer_as, origin) = metadata_as(move |own| {
        let port = own.rsplit(':').next().unwrap().to_string();
        serde_json::json!({
            "issuer": own,
            "token_endpoint": format!("{other_url}/token"),
            "pushed_authorization_request_endpoint": format!("http://localhost:{port}/par"),
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        })
    })
    .await;
    origin.set(issuer_as.url()).unwrap();
    let config = format!(
        r#"
[routes.iss]
prefix = "/iss"
issuer = "{}"
rewrite_metadata = true
timeout = "5s"
[routes.iss.client]
id = "app-1"
auth = "private_key_jwt"
key = "client.pem"
"#,
        issuer_as.url()
    );
    let proxy = start(config).await;
    let host = proxy.running.addr.to_string();
    let body = format!("grant_type=client_credentials&client_secret={SECRET}");
    let answer = raw(proxy.running.addr, &post("/iss/token", &host, "", &body)).await;
    assert_eq!(status(&answer), 200, "{answer}");
    let answer = raw(proxy.running.addr, &post("/iss/par", &host, "", "response_type=code&client_id=app-1")).await;
    assert_eq!(status(&answer), 200, "{answer}");

    // The token request went to the other origin, signed, with aud = its token endpoint
    // (no `audience` set: the issuer), and nothing but discovery reached the issuer's origin
    // except the PAR request (at `localhost`, as published).
    let at_other = posts(&other.seen());
    assert_eq!(at_other.len(), 1, "{at_other:?}");
    assert_eq!(at_other[0].path, "/token");
    assert_all_signed(&at_other);
    let at_issuer = posts(&issuer_as.seen());
    assert_eq!(at_issuer.len(), 1, "{at_issuer:?}");
    assert_eq!(at_issuer[0].path, "/par");
    assert_eq!(at_issuer[0].header("host").as_deref(), Some(format!("localhost:{}", issuer_as.addr.port()).as_str()));
    assert_all_signed(&at_issuer);

    // The rewritten metadata points the app at the paths that do this.
    let doc: serde_json::Value = proxy
        .http
        .get(format!("{}/iss/.well-known/openid-configuration", proxy.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["token_endpoint"], format!("{}/iss/token", proxy.base));
    assert_eq!(doc["pushed_authorization_request_endpoint"], format!("{}/iss/par", proxy.base));

    // `check` tells the truth about where each is signed and sent.
    let check = check_output(&proxy.dir).await;
    assert!(
        check.contains(&format!("signs {}/token [metadata token_endpoint] (app calls /iss/token)", other.url())),
        "{check}"
    );
    assert!(check.contains("outside the upstream"), "noted at load: {check}");
    proxy.stop().await;
}

/// `issuer = "http://localhost:P"` with `token_endpoint = "http://LOCALHOST:P/token"`: the
/// same URL, compared in normal form.
#[tokio::test]
async fn a_metadata_url_in_capitals_is_the_same_endpoint() {
    let (up, origin) = metadata_as(
        |own| serde_json::json!({ "issuer": own, "token_endpoint": own.replace("localhost", "LOCALHOST") + "/token" }),
    )
    .await;
    let issuer = format!("http://localhost:{}", up.addr.port());
    origin.set(issuer.clone()).unwrap();
    let config = format!(
        "[routes.iss]\nprefix = \"/iss\"\nissuer = \"{issuer}\"\ntimeout = \"5s\"\n[routes.iss.client]\nid = \"app-1\"\n\
         auth = \"private_key_jwt\"\nkey = \"client.pem\"\n"
    );
    let proxy = start(config).await;
    let (code, body) =
        proxy.post_form("/iss/token", format!("grant_type=client_credentials&client_secret={SECRET}")).await;
    assert_eq!(code, 200, "{body}");
    let seen = posts(&up.seen());
    assert_eq!(seen.len(), 1);
    assert_all_signed(&seen);
    proxy.stop().await;
}

/// Dot segments that climb out of the upstream base path: refused in reverse mode, and in
/// forward mode (absolute-form, and inside an intercepted CONNECT over HTTP/1.1 and h2) never
/// relayed unsigned.
#[tokio::test]
async fn dot_segments_never_reach_a_sibling_endpoint_unsigned() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let proxy = start(signing_route(&format!("{}/base", up.url()), "")).await;
    let host = proxy.running.addr.to_string();
    let body = format!("grant_type=client_credentials&client_secret={SECRET}");
    for path in [
        "/sec/../token",
        "/sec/..%2ftoken",
        "/sec/%2e%2e/token",
        "/sec/x/../../token",
        "/sec/%c0%ae%c0%ae/token",
        "/sec/%ef%bc%8e%ef%bc%8e/token",
        "/sec/..%5ctoken",
    ] {
        let answer = raw(proxy.running.addr, &post(path, &host, "", &body)).await;
        assert_eq!(status(&answer), 400, "{path}: {answer}");
        assert!(answer.contains("climbs out of the route prefix /sec"), "{path}: {answer}");
    }
    assert!(up.seen().is_empty(), "nothing reached the AS: {:?}", up.seen());
    proxy.stop().await;

    // Forward mode, absolute-form (HTTP_PROXY).
    let text = format!("[proxy]\nforward = \"$FORWARD\"\n{}", signing_route(&format!("{}/base", up.url()), ""));
    let builder = TestProxy::builder(text).forward().watch(false);
    write_key(builder.dir(), "client.pem", Alg::ES256);
    let proxy = builder.start().await;
    let authority = up.addr.to_string();
    for path in ["/base/../token", "/base/%2e%2e/token", "/base/x/../../other/token"] {
        let answer =
            raw(proxy.forward_addr(), &post(&format!("http://{authority}{path}"), &authority, "", &body)).await;
        assert!(matches!(status(&answer), 400 | 502), "{path}: {answer}");
    }
    assert!(up.seen().is_empty(), "nothing reached the AS: {:?}", up.seen());
    // The resolved spelling of the endpoint itself is signed.
    let answer =
        raw(proxy.forward_addr(), &post(&format!("http://{authority}/base/x/../token"), &authority, "", &body)).await;
    assert_eq!(status(&answer), 200, "{answer}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/base/token");
    assert_all_signed(&seen);
    proxy.stop().await;
}

#[tokio::test]
async fn dot_segments_inside_an_intercepted_connect_over_http1_and_h2() {
    let dir = tempfile::tempdir().unwrap();
    let up = TlsRecorder::start(dir.path(), "as-ca.pem", |_, _| Reply::token()).await;
    let text = format!(
        "[proxy]\nforward = \"$FORWARD\"\nca_cert = \"ca.pem\"\nca_key = \"ca-key.pem\"\n{}",
        signing_route(&format!("https://127.0.0.1:{}/base", up.port()), "trust = [\"as-ca.pem\"]\n")
    );
    let builder = TestProxy::builder(text).in_dir(dir.path()).forward().watch(false);
    write_key(builder.dir(), "client.pem", Alg::ES256);
    let proxy = builder.start().await;
    let body = format!("grant_type=client_credentials&client_secret={SECRET}");
    for version in ["--http1.1", "--http2"] {
        for path in ["/base/../token", "/base/%2e%2e/token"] {
            let out = tokio::process::Command::new("curl")
                .args(["-sS", "--max-time", "20", "--path-as-is", version, "-o", "/dev/null", "-w", "%{http_code}"])
                .args(["--proxy", &proxy.forward_url(), "--cacert"])
                .arg(dir.path().join("ca.pem"))
                .args(["-d", &body, &format!("https://127.0.0.1:{}{path}", up.port())])
                .env_remove("NO_PROXY")
                .env_remove("no_proxy")
                .stdin(Stdio::null())
                .output()
                .await
                .expect("curl is required for the forward-mode tests");
            let code = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                code == "400" || code == "502",
                "{version} {path}: {code} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(up.seen().is_empty(), "nothing reached the AS: {:?}", up.seen());
    proxy.stop().await;
}

/// Forward mode: a route with an `issuer` claims the hosts of its metadata's endpoints on
/// other origins, signs there, and never tunnels them; a host its local CA cannot cover is
/// refused with 502 naming the fix.
#[tokio::test]
async fn forward_mode_claims_metadata_endpoints_on_other_origins() {
    let dir = tempfile::tempdir().unwrap();
    let token_as = TlsRecorder::start(dir.path(), "token-as-ca.pem", |_, _| Reply::token()).await;
    let q = token_as.port();
    let own: Arc<OnceLock<String>> = Arc::default();
    let issuer_origin = own.clone();
    let issuer_as = TlsRecorder::start(dir.path(), "issuer-as-ca.pem", move |seen, _| {
        let issuer = issuer_origin.get().unwrap();
        if seen.path.contains("/.well-known/") {
            Reply::json(
                200,
                serde_json::json!({
                    "issuer": issuer,
                    "token_endpoint": format!("https://127.0.0.1:{q}/token"),
                    "introspection_endpoint": format!("https://localhost:{q}/introspect"),
                    "revocation_endpoint": format!("https://as-other.test:{q}/revoke"),
                }),
            )
        } else {
            Reply::token()
        }
    })
    .await;
    let issuer = format!("https://127.0.0.1:{}", issuer_as.port());
    own.set(issuer.clone()).unwrap();
    let text = format!(
        r#"[proxy]
forward = "$FORWARD"
ca_cert = "ca.pem"
ca_key = "ca-key.pem"

[routes.iss]
prefix = "/iss"
issuer = "{issuer}"
trust = ["token-as-ca.pem", "issuer-as-ca.pem"]
timeout = "5s"
[routes.iss.client]
id = "app-1"
auth = "private_key_jwt"
key = "client.pem"
"#
    );
    let builder = TestProxy::builder(text).in_dir(dir.path()).forward().watch(false);
    write_key(builder.dir(), "client.pem", Alg::ES256);
    let proxy = builder.start().await;
    // Reverse mode first: waits for discovery, and signs at the other origin.
    let (code, body) = proxy.post_form("/iss/token", "grant_type=client_credentials").await;
    assert_eq!(code, 200, "{body}");
    let body = format!("grant_type=client_credentials&client_secret={SECRET}");
    let curl = |url: String| {
        let (forward, ca) = (proxy.forward_url(), dir.path().join("ca.pem"));
        let body = body.clone();
        async move {
            let out = tokio::process::Command::new("curl")
                .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}", "--proxy", &forward, "--cacert"])
                .arg(ca)
                .args(["-d", &body, &url])
                .env_remove("NO_PROXY")
                .env_remove("no_proxy")
                .stdin(Stdio::null())
                .output()
                .await
                .expect("curl is required for the forward-mode tests");
            String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
        }
    };
    let out = curl(format!("https://127.0.0.1:{q}/token")).await;
    assert!(out.ends_with("200"), "{out}");
    let out = curl(format!("https://localhost:{q}/introspect")).await;
    assert!(out.ends_with("200"), "{out}");
    // A host the local CA does not cover: refused before any connection, never tunnelled.
    let connect = format!("CONNECT as-other.test:{q} HTTP/1.1\r\nHost: as-other.test:{q}\r\nConnection: close\r\n\r\n");
    let answer = raw(proxy.forward_addr(), &connect).await;
    assert_eq!(status(&answer), 502, "{answer}");
    assert!(answer.contains("tokenrelay ca --regenerate"), "{answer}");
    let seen = token_as.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["/token", "/token", "/introspect"], "signed requests only, nothing tunnelled");
    assert_all_signed(&seen);
    proxy.stop().await;
}

/// Credential names in the query, in the spellings lenient servers accept: refused, never
/// stripped and signed, never relayed.
#[tokio::test]
async fn credentials_in_the_query_in_any_spelling_are_refused() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let proxy = start(signing_route(&up.url(), "")).await;
    let host = proxy.running.addr.to_string();
    for query in [
        "Client_Secret=x",
        "+client_secret=x",
        "x=1;client_secret=x",
        "client_secret%00=x",
        "client_secret[]=x",
        "client_secret.=x",
        "client_secret+=x",
        "client%5Fsecret=x",
        "CLIENT_ASSERTION=x",
    ] {
        for path in ["/sec/token", "/sec/api/data"] {
            let target = format!("{path}?{query}");
            let answer = raw(proxy.running.addr, &post(&target, &host, "", "grant_type=client_credentials")).await;
            assert_eq!(status(&answer), 400, "{target}: {answer}");
        }
    }
    assert!(up.seen().is_empty(), "nothing reached the AS: {:?}", up.seen());
    proxy.stop().await;
}

/// A grant or client credentials sent to a path that is not a signed endpoint (in the body,
/// or as `Authorization: Basic`) is refused; plain API traffic still passes.
#[tokio::test]
async fn credentials_on_an_unsigned_path_are_refused() {
    let up = Recorder::start(|_, _| Reply::json(200, serde_json::json!({"ok": true}))).await;
    let proxy = start(signing_route(&up.url(), "")).await;
    let host = proxy.running.addr.to_string();
    for (path, extra, body) in [
        ("/sec/oauth/token", "", "grant_type=client_credentials".to_string()),
        ("/sec/other", "", format!("Client_Secret={SECRET}")),
        ("/sec/other", "Authorization: Basic YXBwOnNlY3JldA==\r\n", "x=1".to_string()),
        ("/sec/introspect", "", "token=abc".to_string()),
    ] {
        let answer = raw(proxy.running.addr, &post(path, &host, extra, &body)).await;
        assert_eq!(status(&answer), 400, "{path}: {answer}");
        assert!(answer.contains("not a client-authenticated endpoint"), "{answer}");
    }
    assert!(up.seen().is_empty(), "nothing reached the AS: {:?}", up.seen());
    let answer = raw(proxy.running.addr, &post("/sec/api/data", &host, "", "name=value")).await;
    assert_eq!(status(&answer), 200, "{answer}");
    assert_eq!(up.seen().len(), 1);
    proxy.stop().await;
}

/// Browser headers stay at tokenrelay on a confidential client's token request; a public
/// (`auth = "none"`) client's and API calls keep them. `allow_origins` matches in normal form.
#[tokio::test]
async fn browser_headers_stay_at_tokenrelay_for_confidential_clients() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let config = format!(
        "[proxy]\nallow_origins = [\"https://App.example/\"]\n{}\n[routes.spa]\nprefix = \"/spa\"\nupstream = \"{}\"\n\
         [routes.spa.client]\nid = \"spa\"\nauth = \"none\"\n",
        signing_route(&up.url(), ""),
        up.url()
    );
    let proxy = start(config).await;
    let host = proxy.running.addr.to_string();
    let browser =
        "Origin: https://app.example\r\nReferer: https://app.example/callback?code=x\r\nCookie: session=1\r\n\
                   Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Dest: empty\r\n";
    for path in ["/sec/token", "/spa/token"] {
        let answer = raw(proxy.running.addr, &post(path, &host, browser, "grant_type=client_credentials")).await;
        assert_eq!(status(&answer), 200, "{path}: {answer}");
        assert!(answer.to_ascii_lowercase().contains("access-control-allow-origin: https://app.example"), "{answer}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    for name in ["origin", "referer", "cookie", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest"] {
        assert_eq!(seen[0].header(name), None, "{name} forwarded on a confidential client's token request");
    }
    assert_eq!(seen[1].header("origin").as_deref(), Some("https://app.example"), "a SPA client keeps its Origin");
    proxy.stop().await;
}

/// A second inner `Host` in forward mode and a foreign absolute-form target on the reverse
/// listener are refused before anything is signed.
#[tokio::test]
async fn a_second_host_and_a_foreign_absolute_target_are_refused() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let text = format!("[proxy]\nforward = \"$FORWARD\"\n{}", signing_route(&up.url(), ""));
    let builder = TestProxy::builder(text).forward().watch(false);
    write_key(builder.dir(), "client.pem", Alg::ES256);
    let proxy = builder.start().await;
    let authority = up.addr.to_string();
    let twice = post(
        &format!("http://{authority}/token"),
        &authority,
        &format!("Host: {authority}\r\n"),
        "grant_type=client_credentials",
    );
    let answer = raw(proxy.forward_addr(), &twice).await;
    assert!(matches!(status(&answer), 400 | 421), "{answer}");
    let foreign =
        post("http://evil.example/sec/token", &proxy.running.addr.to_string(), "", "grant_type=client_credentials");
    let answer = raw(proxy.running.addr, &foreign).await;
    assert_eq!(status(&answer), 403, "{answer}");
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    proxy.stop().await;
}

// ------------------------------------------------------------------------------------------
// The invariant, property-tested through the real listener.
// ------------------------------------------------------------------------------------------

/// One path segment, spelled in one of the ways clients, proxies and lenient servers disagree on.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("token".to_string()),
        Just("par".to_string()),
        Just("base".to_string()),
        Just("Token".to_string()),
        Just("%74oken".to_string()),
        Just("%2574oken".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just(String::new()),
        Just("%2e%2e".to_string()),
        Just("%2E.".to_string()),
        Just("..%2f".to_string()),
        Just("..%5c".to_string()),
        Just("%c0%ae%c0%ae".to_string()),
        Just("%e0%80%ae%e0%80%ae".to_string()),
        Just("%ef%bc%8e%ef%bc%8e".to_string()),
        Just("%e2%80%8btoken".to_string()),
        Just("token%ef%bc%8ejson".to_string()),
        Just("token%e2%80%8b".to_string()),
        Just("token;x=1".to_string()),
        Just("token%00".to_string()),
        Just("token.json".to_string()),
        Just("api".to_string()),
        "[a-z]{1,6}",
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        1 => Just("?scope=read".to_string()),
        1 => Just(format!("?Client_Secret={SECRET}")),
        1 => Just(format!("?x=1;client_secret={SECRET}")),
        1 => Just(format!("?client_secret%00={SECRET}")),
        1 => Just(format!("?%2563lient_secret={SECRET}")),
        1 => Just("?grant_type=client_credentials".to_string()),
    ]
}

#[test]
fn the_fail_closed_invariant_holds_for_random_spellings() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (up, proxy) = rt.block_on(async {
        let up = Recorder::start(|_, _| Reply::token()).await;
        let proxy = start(signing_route(&format!("{}/base", up.url()), "")).await;
        (up, proxy)
    });
    let addr = proxy.running.addr;
    let host = addr.to_string();
    let body = format!("grant_type=client_credentials&client_secret={SECRET}");
    // Positive control: the test can see a signed request and a refusal.
    let answer = rt.block_on(raw(addr, &post("/sec/token", &host, "", &body)));
    assert_eq!(status(&answer), 200, "{answer}");
    assert_eq!(up.seen().len(), 1);
    assert_all_signed(&up.seen());

    let mut runner = TestRunner::new(ProptestConfig {
        cases: 160,
        max_shrink_iters: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (prop::collection::vec(segment(), 1..5), query(), any::<bool>());
    let outcomes = std::cell::RefCell::new(std::collections::BTreeMap::<u16, usize>::new());
    let result = runner.run(&strategy, |(segments, query, trailing)| {
        let mut target = format!("/sec/{}", segments.join("/"));
        if trailing {
            target.push('/');
        }
        target.push_str(&query);
        let before = up.seen().len();
        let answer = rt.block_on(raw(addr, &post(&target, &host, "", &body)));
        let code = status(&answer);
        *outcomes.borrow_mut().entry(code).or_default() += 1;
        let seen = up.seen();
        let new = &seen[before..];
        if !(code == 200 || (400..500).contains(&code) || code == 502) {
            return Err(TestCaseError::fail(format!("{target}: unexpected answer {answer}")));
        }
        if code != 200 && !new.is_empty() {
            return Err(TestCaseError::fail(format!("{target}: refused ({code}) but the upstream received {new:?}")));
        }
        for s in new {
            if s.param("client_assertion").is_none() || s.body_str().contains(SECRET) || s.path.contains(SECRET) {
                return Err(TestCaseError::fail(format!(
                    "{target}: the upstream received {} {} {}",
                    s.method,
                    s.path,
                    s.body_str()
                )));
            }
            let path = s.path.split('?').next().unwrap_or_default();
            if !(path == "/base/token" || path == "/base/par") {
                return Err(TestCaseError::fail(format!("{target}: signed but sent to {}", s.path)));
            }
        }
        Ok(())
    });
    let outcomes = outcomes.into_inner();
    eprintln!("answers by status: {outcomes:?}");
    rt.block_on(proxy.stop());
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generator reaches refusals every run (the signed spellings are the positive control above).
    assert!(outcomes.get(&400).is_some_and(|n| *n > 0), "{outcomes:?}");
}
