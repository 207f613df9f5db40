//! AS discovery runs in the background (RFC 8414 / OIDC Discovery): token requests are never
//! held up by an AS without metadata or with a metadata endpoint that never answers, failures
//! are remembered, and an issuer mismatch (RFC 8414 §3.3) stops the route from sending anything.
//! These run the real binary, so what is asserted about the log is what a user sees.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{ProxyProcess, BIN};
use common::proxy::{client, write_key};
use common::upstream::{Recorder, Reply, Seen};
use tokenrelay::jose::Alg;

const WARNING: &str = "AS discovery failed";

/// The real binary on `dir/proxy.toml`; the folder lives as long as the process.
struct Binary {
    process: ProxyProcess,
    _dir: tempfile::TempDir,
}

impl Binary {
    fn start(dir: tempfile::TempDir) -> Binary {
        Binary { process: ProxyProcess::start(&[], &dir.path().join("proxy.toml"), "info"), _dir: dir }
    }

    fn log(&self) -> String {
        self.process.log()
    }

    fn token_url(&self) -> String {
        format!("{}/as/token", self.process.base)
    }
}

fn config(as_url: &str, issuer: &str) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
[routes.as]
prefix = "/as"
upstream = "{as_url}"
issuer = "{issuer}"
timeout = "2s"
[routes.as.client]
id = "app-1"
auth = "private_key_jwt"
key = "client.pem"
"#
    )
}

fn discovery_gets(seen: &[Seen]) -> usize {
    seen.iter().filter(|s| s.method == "GET" && s.path.starts_with("/.well-known/")).count()
}

/// Five token requests, each answered within the route's timeout + 1 s, all signed.
async fn five_requests_stay_within_the_timeout(up: &Recorder) -> Binary {
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path(), "client.pem", Alg::ES256);
    std::fs::write(dir.path().join("proxy.toml"), config(&up.url(), &up.url())).unwrap();
    let proxy = Binary::start(dir);
    let http = client();
    for i in 0..5 {
        let started = Instant::now();
        let resp = http
            .post(proxy.token_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}; tokenrelay's log:\n{}", proxy.log()));
        let took = started.elapsed();
        assert_eq!(resp.status(), 200, "request {i}: {}", resp.text().await.unwrap());
        assert!(took < Duration::from_secs(3), "request {i} took {took:?}; the route's timeout is 2s");
    }
    let seen = up.seen();
    let posts: Vec<&Seen> = seen.iter().filter(|s| s.method == "POST").collect();
    assert_eq!(posts.len(), 5);
    for p in &posts {
        assert_eq!(p.path, "/token");
        let assertion = p.param("client_assertion").expect("every token request reaches the AS signed");
        assert_eq!(common::jwt::claims(&assertion)["iss"], "app-1");
    }
    assert!(
        seen.iter().all(|s| s.method == "POST" || s.path.starts_with("/.well-known/")),
        "only token POSTs and discovery GETs reach the AS: {:?}",
        seen.iter().map(|s| (&s.method, &s.path)).collect::<Vec<_>>()
    );
    assert!(discovery_gets(&seen) <= 2, "one discovery attempt (two well-known URLs), not one per request: {seen:?}");
    proxy
}

/// Waits (bounded) until `proxy`'s log contains `needle`.
async fn wait_for_log(proxy: &Binary, needle: &str) {
    let until = Instant::now() + Duration::from_secs(15);
    while !proxy.log().contains(needle) {
        assert!(Instant::now() < until, "no {needle:?} in the log:\n{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn as_without_metadata_costs_one_attempt_and_one_warning() {
    let up = Recorder::start(|req, _| {
        if req.path.starts_with("/.well-known/") {
            Reply::json(404, serde_json::json!({"error": "not_found"}))
        } else {
            Reply::token()
        }
    })
    .await;
    let proxy = five_requests_stay_within_the_timeout(&up).await;
    assert_eq!(discovery_gets(&up.seen()), 2, "both well-known URLs tried once");
    wait_for_log(&proxy, WARNING).await;
    // The next attempt comes no sooner than 10 s after the failure; it fails again, quietly.
    let failed_at = Instant::now();
    let until = failed_at + Duration::from_secs(40);
    while discovery_gets(&up.seen()) < 4 {
        assert!(Instant::now() < until, "no retry within 40 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failed_at.elapsed() >= Duration::from_secs(9), "retried after {:?}", failed_at.elapsed());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = proxy.log();
    assert_eq!(log.matches(WARNING).count(), 1, "one warning per failure streak:\n{log}");
    assert!(log.contains("HTTP 404"), "the warning names the cause:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_endpoint_that_never_answers_does_not_hold_requests() {
    let up = Recorder::start(|req, _| {
        if req.path.starts_with("/.well-known/") {
            Reply::token().delayed(Duration::from_secs(600))
        } else {
            Reply::token()
        }
    })
    .await;
    let proxy = five_requests_stay_within_the_timeout(&up).await;
    wait_for_log(&proxy, WARNING).await;
    let log = proxy.log();
    assert_eq!(log.matches(WARNING).count(), 1, "{log}");
    assert!(log.contains("no answer within 2s (routes.as.timeout)"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn issuer_mismatch_fails_check_and_refuses_requests() {
    let up = Recorder::start(|req, _| {
        if req.path.starts_with("/.well-known/") {
            Reply::json(200, serde_json::json!({"issuer": "https://someone-else.example", "token_endpoint": "x"}))
        } else {
            Reply::token()
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path(), "client.pem", Alg::ES256);
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config(&up.url(), &up.url())).unwrap();

    let check = Command::new(BIN).arg("--config").arg(&path).arg("check").output().unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("https://someone-else.example") && stderr.contains(&up.url()), "names both: {stderr}");
    assert!(stderr.contains("RFC 8414"), "{stderr}");
    let offline = Command::new(BIN).arg("--config").arg(&path).args(["check", "--offline"]).output();
    assert_eq!(offline.unwrap().status.code(), Some(0), "--offline does not fetch metadata");

    let proxy = Binary::start(dir);
    let resp = client()
        .post(proxy.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "tokenrelay_error");
    let why = body["error_description"].as_str().unwrap();
    assert!(why.contains("https://someone-else.example") && why.contains(&up.url()), "{why}");
    assert!(up.seen().iter().all(|s| s.method == "GET" && s.path.starts_with("/.well-known/")), "{:?}", up.seen());
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_as_is_a_check_warning_not_an_error() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path(), "client.pem", Alg::ES256);
    std::fs::write(dir.path().join("proxy.toml"), config(&dead, &dead)).unwrap();
    let check = Command::new(BIN).arg("--config").arg(dir.path().join("proxy.toml")).arg("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&check.stderr));
    assert!(stdout.contains("warning: route \"as\": AS metadata unavailable"), "{stdout}");
    assert!(stdout.contains("connection refused"), "{stdout}");
}
