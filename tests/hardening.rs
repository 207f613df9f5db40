//! Hostile input changes nothing: every finding of the security review, each asserting that
//! the upstream received nothing unsigned (or nothing at all) and what the caller saw.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::proxy::{write_key, TestProxy};
use common::upstream::{Recorder, Reply, Seen};
use tokenrelay::jose::Alg;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A signing route whose upstream has a base path, as in `upstream = "https://as/oauth2"`.
fn config(upstream: &str, extra_proxy: &str) -> String {
    format!(
        "[proxy]\n{extra_proxy}\n[routes.b]\nprefix = \"/b\"\nupstream = \"{upstream}/oauth2\"\n\
         [routes.b.client]\nid = \"app-1\"\nauth = \"private_key_jwt\"\nkey = \"client.pem\"\n"
    )
}

async fn start(up: &Recorder, extra_proxy: &str) -> TestProxy {
    let builder = TestProxy::builder(config(&up.url(), extra_proxy));
    write_key(builder.dir(), "client.pem", Alg::ES256);
    builder.start().await
}

/// Sends `request` (raw bytes, exactly as written) and returns the whole answer.
async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer within 10 s");
    String::from_utf8_lossy(&answer).into_owned()
}

fn post(path: &str, host: &str, extra_headers: &str) -> String {
    let body = "grant_type=client_credentials&client_secret=app-secret-must-not-leak";
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n{extra_headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn unsigned(seen: &[Seen]) -> Vec<String> {
    seen.iter().filter(|s| s.param("client_assertion").is_none()).map(|s| format!("{} {}", s.method, s.path)).collect()
}

#[tokio::test]
async fn spellings_of_the_token_endpoint_are_refused_never_relayed_unsigned() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let proxy = start(&up, "").await;
    let host = proxy.running.addr.to_string();
    // Dot segments that climb out of the prefix and the upstream base path.
    for path in ["/b/../oauth2/token", "/b/%2e%2e/oauth2/token", "/b/x/../../oauth2/token", "/b/..%2ftoken"] {
        let answer = raw(proxy.running.addr, &post(path, &host, "")).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("climbs out of the route prefix /b"), "{path}: {answer}");
    }
    for path in [
        "/b/token/",
        "/b//token",
        "/b/Token",
        "/b/%2574oken",
        "/b/token;x=1",
        "/b/token%3Bx",
        "/b/token%20",
        "/b/token%09",
        "/b/token%00",
        "/b/token.json",
        "/b/%5Ctoken",
    ] {
        let answer = raw(proxy.running.addr, &post(path, &host, "")).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("/oauth2/token"), "{path}: names the spelling to use: {answer}");
    }
    assert!(up.seen().is_empty(), "nothing reached the AS: {:?}", up.seen());
    // The canonical spelling is signed, and the app's own secret does not travel next to it;
    // so are spellings that *are* the endpoint in RFC 3986 §6.2.2 normal form.
    for path in ["/b/token", "/b/%74oken", "/b/x/../token", "/b/./token"] {
        let answer = raw(proxy.running.addr, &post(path, &host, "")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|s| s.path == "/oauth2/token"), "sent in normal form: {seen:?}");
    assert!(unsigned(&seen).is_empty());
    assert!(seen.iter().all(|s| s.param("client_secret").is_none()));
    proxy.stop().await;
}

#[tokio::test]
async fn forward_mode_refuses_a_spelling_outside_the_base_path() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let text = config(&up.url(), "forward = \"$FORWARD\"");
    let builder = TestProxy::builder(text).forward();
    write_key(builder.dir(), "client.pem", Alg::ES256);
    let proxy = builder.start().await;
    let authority = up.addr.to_string();
    // Not a form: the "no unsigned form POST outside the base path" rule does not catch these.
    // The first two resolve (RFC 3986 §5.2.4) to the token endpoint itself, which takes only
    // forms; the third is a spelling of it.
    for path in ["/x/../oauth2/token", "/oauth2/x/%2e%2e/token", "/OAuth2/Token"] {
        let body = "{\"grant_type\":\"client_credentials\"}";
        let request = format!(
            "POST http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = raw(proxy.forward_addr(), &request).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("/oauth2/token") || answer.contains("x-www-form-urlencoded"), "{path}: {answer}");
    }
    assert!(unsigned(&up.seen()).is_empty(), "{:?}", up.seen());
    assert!(up.seen().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn credentials_in_the_query_of_a_signed_endpoint_are_refused() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let proxy = start(&up, "").await;
    for query in ["client_secret=x", "client_id=app-1", "client_assertion=e30", "client%5Fsecret=x"] {
        let (status, body) = proxy.post_form(&format!("/b/token?{query}"), "grant_type=client_credentials").await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["error_description"].as_str().unwrap().contains("RFC 6749 §2.3.1"), "{body}");
    }
    assert!(up.seen().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn host_framing_and_repeated_browser_headers_are_refused() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let proxy = start(&up, "").await;
    let addr = proxy.running.addr;
    let host = addr.to_string();
    let no_host = "POST /b/token HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                   Content-Length: 29\r\nConnection: close\r\n\r\ngrant_type=client_credentials";
    assert!(raw(addr, no_host).await.starts_with("HTTP/1.1 400"), "HTTP/1.1 without Host");
    let two_hosts = post("/b/token", &host, &format!("Host: {host}\r\n"));
    assert!(raw(addr, &two_hosts).await.starts_with("HTTP/1.1 400"), "two Host headers");
    let two_origins = post("/b/token", &host, "Origin: http://localhost:3000\r\nOrigin: https://evil.example\r\n");
    assert!(raw(addr, &two_origins).await.starts_with("HTTP/1.1 403"), "two Origin headers");
    let cl_te = "POST /b/token HTTP/1.1\r\nHost: HOST\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
        .replace("HOST", &host);
    // RFC 9112 §6.3: Transfer-Encoding wins and hyper drops the Content-Length. The body is
    // buffered and re-framed: the AS sees one message, with a fresh Content-Length only.
    let answer = raw(addr, &cl_te).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].header("transfer-encoding").is_none());
    assert_eq!(seen[0].header("content-length").unwrap(), seen[0].body.len().to_string());
    assert!(unsigned(&seen).is_empty());
    let two_fetch = post("/b/token", &host, "Sec-Fetch-Site: same-origin\r\nSec-Fetch-Site: cross-site\r\n");
    assert!(raw(addr, &two_fetch).await.starts_with("HTTP/1.1 403"), "two Sec-Fetch-Site headers");
    assert_eq!(up.seen().len(), 1, "only the re-framed request reached the AS");
    proxy.stop().await;
}

#[tokio::test]
async fn allowed_origins_get_real_cors_and_nothing_else_does() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let proxy = start(&up, "allow_origins = [\"https://app.example\"]").await;
    let url = |path: &str| format!("{}{path}", proxy.base);
    let preflight = |origin: &'static str, path: String| {
        proxy
            .http
            .request(reqwest::Method::OPTIONS, path)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let ok = preflight("https://app.example", url("/b/token")).await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example");
    assert!(ok.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    let foreign = preflight("https://evil.example", url("/b/token")).await.unwrap();
    assert_eq!(foreign.status(), 403);
    assert!(foreign.headers().get("access-control-allow-origin").is_none());
    let own = preflight("https://app.example", url("/.tokenrelay/status")).await.unwrap();
    assert_eq!(own.status(), 403, "allow_origins never opens tokenrelay's own endpoints");

    // A real cross-site request from the allowed origin: signed, readable, hardened.
    let resp = proxy
        .http
        .post(url("/b/token"))
        .header("origin", "https://app.example")
        .header("sec-fetch-site", "cross-site")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://app.example");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(resp.headers()["content-security-policy"], "sandbox");
    let status = proxy
        .http
        .get(url("/.tokenrelay/status"))
        .header("origin", "https://app.example")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 403, "the status endpoint stays closed to other origins");
    let cross = proxy
        .http
        .post(url("/b/token"))
        .header("sec-fetch-site", "cross-site")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403, "cross-site without an allowed Origin");
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "only the allowed origin's request reached the AS");
    assert!(unsigned(&seen).is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn a_mistyped_secret_never_reaches_the_status_endpoint() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let proxy = {
        let builder = TestProxy::builder(config(&up.url(), "")).watch(false);
        write_key(builder.dir(), "client.pem", Alg::ES256);
        builder.start().await
    };
    let path = proxy.path("proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("key = \"client.pem\"", "key = \"client.pem\"\nsecret = 987654321012")).unwrap();
    let outcome = proxy.running.reload_now().await;
    assert!(format!("{outcome:?}").contains("[redacted]"), "{outcome:?}");
    let status: serde_json::Value =
        proxy.http.get(format!("{}/.tokenrelay/status", proxy.base)).send().await.unwrap().json().await.unwrap();
    let shown = status.to_string();
    assert!(status["failing"].as_bool().unwrap(), "{shown}");
    assert!(!shown.contains("987654321012"), "{shown}");
    proxy.stop().await;
}

#[test]
fn non_loopback_listeners_need_allow_remote() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    for (text, key) in [
        ("[proxy]\nlisten_tls = \"0.0.0.0:8443\"\n", "proxy.listen_tls"),
        ("[demo_as]\nlisten = \"0.0.0.0:9443\"\n", "demo_as.listen"),
        ("[proxy]\nforward = \"192.168.1.10:8788\"\n", "proxy.forward"),
    ] {
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(common::process::BIN)
            .arg("--config")
            .arg(&path)
            .args(["check", "--offline"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(key) && stderr.contains("allow_remote"), "{stderr}");
    }
    std::fs::write(&path, "[proxy]\nallow_remote = true\nlisten_tls = \"0.0.0.0:8443\"\n").unwrap();
    let out = std::process::Command::new(common::process::BIN)
        .arg("--config")
        .arg(&path)
        .args(["check", "--offline"])
        .output();
    let out = out.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("warning: [proxy] allow_remote = true: proxy.listen_tls 0.0.0.0:8443"), "{stdout}");
}

#[test]
fn hosts_that_would_widen_the_local_ca_are_refused() {
    for bad in ["com", "co.uk", "*.example.com", "", "as.test:99999"] {
        let text = format!(
            "[proxy]\nforward = \"127.0.0.1:8788\"\n[routes.a]\nprefix = \"/a\"\nupstream = \"https://as.example.com\"\nhosts = [\"{bad}\"]\n"
        );
        let err = tokenrelay::config::parse(&text, std::path::Path::new("/tmp/proxy.toml")).unwrap_err().to_string();
        assert!(err.contains("routes.a.hosts"), "{bad}: {err}");
    }
}
