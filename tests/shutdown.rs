//! Graceful shutdown of the binary: on SIGTERM (or SIGINT) tokenrelay stops accepting, lets
//! the requests in flight finish, and exits 0.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::ProxyProcess;
use common::proxy::write_key;
use common::upstream::{Recorder, Reply};
use tokenrelay::jose::{self, Alg, VerifyKey};

const IN_FLIGHT: usize = 6;
/// How long the upstream takes to answer each request.
const UPSTREAM_DELAY: Duration = Duration::from_millis(1500);

fn config(upstream: &str) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"

[routes.as]
prefix = "/as"
upstream = "{upstream}"
timeout = "8s"

[routes.as.client]
id = "app-1"
auth = "private_key_jwt"
key = "client.pem"
alg = "ES256"
"#
    )
}

async fn in_flight_requests_finish_and_the_process_exits_0(signal: i32) {
    // The upstream tells the test when each request arrives, and answers it late.
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let up = Recorder::start(move |_, n| {
        let _ = arrived_tx.send(n);
        Reply::token().delayed(UPSTREAM_DELAY)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = write_key(dir.path(), "client.pem", Alg::ES256);
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config(&up.url())).unwrap();
    let proxy = ProxyProcess::start(&[], &path, "info");
    let addr: SocketAddr = proxy.base.trim_start_matches("http://").parse().unwrap();

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let request = client
                .post(format!("{}/as/token", proxy.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("grant_type=client_credentials&n={i}"))
                .send();
            tokio::spawn(async move {
                let resp = request.await?;
                let status = resp.status().as_u16();
                Ok::<_, reqwest::Error>((status, resp.text().await?))
            })
        })
        .collect();
    // Every request is at the upstream, waiting for its answer: now stop the proxy.
    for _ in 0..IN_FLIGHT {
        tokio::time::timeout(Duration::from_secs(5), arrived.recv()).await.expect("requests reach the upstream");
    }
    let signalled = Instant::now();
    proxy.signal(signal);

    // New connections are refused while the old ones drain (the listener is closed first).
    let refused_by = signalled + Duration::from_secs(1);
    let refused = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break true,
            _ if Instant::now() > refused_by => break false,
            // Accepted before the signal took effect: try again.
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let refused_after = signalled.elapsed();
    assert!(refused, "new connections are still accepted {refused_after:?} after the signal");
    assert!(refused_after < UPSTREAM_DELAY, "refused only after the requests in flight ended");

    for r in requests {
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .expect("an in-flight request never completed")
            .unwrap()
            .expect("an in-flight request was cut");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("upstream-issued-token-VALUE"), "{body}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), IN_FLIGHT);
    for s in &seen {
        let assertion = s.param("client_assertion").expect("signed");
        jose::verify(&assertion, Alg::ES256, VerifyKey::Jwk(key.public_jwk())).unwrap();
    }

    let (status, log) = tokio::task::spawn_blocking(move || proxy.wait_exit(Duration::from_secs(12))).await.unwrap();
    let exited_after = signalled.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running 12 s after the signal; log:\n{log}"));
    assert_eq!(status.code(), Some(0), "exit status {status}; log:\n{log}");
    assert!(log.contains("shutting down"), "{log}");
    eprintln!("signal {signal}: new connections refused after {refused_after:?}, exited 0 after {exited_after:?}");
}

#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish_refuses_new_ones_and_exits_0() {
    in_flight_requests_finish_and_the_process_exits_0(libc::SIGTERM).await;
}

#[tokio::test]
async fn sigint_does_the_same() {
    in_flight_requests_finish_and_the_process_exits_0(libc::SIGINT).await;
}

#[tokio::test]
async fn an_idle_proxy_exits_at_once() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path(), "client.pem", Alg::ES256);
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config(&up.url())).unwrap();
    let proxy = ProxyProcess::start(&[], &path, "info");
    // One exchange, so a kept-alive connection is open (and idle) at the signal.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = client
        .post(format!("{}/as/token", proxy.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let signalled = Instant::now();
    proxy.signal(libc::SIGTERM);
    let (status, log) = tokio::task::spawn_blocking(move || proxy.wait_exit(Duration::from_secs(5))).await.unwrap();
    let status = status.unwrap_or_else(|| panic!("still running 5 s after the signal; log:\n{log}"));
    assert_eq!(status.code(), Some(0), "{log}");
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(3), "an idle kept-alive connection held the exit for {took:?}");
    drop(client);
}
