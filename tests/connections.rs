//! Connection exhaustion (issue "Hardening", finding 4): sockets that never send a byte must
//! not keep a token request out, idle connections are closed, and tunnels count against the
//! one connection cap without being shed while in use.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::ProxyProcess;
use common::proxy::{write_key, TestProxy};
use common::upstream::{Recorder, Reply};
use tokenrelay::jose::{self, Alg, VerifyKey};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A route signing with `private_key_jwt` (key `client.pem` beside the config) to `upstream`.
fn config(upstream: &str, proxy_extra: &str) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
{proxy_extra}

[routes.as]
prefix = "/as"
upstream = "{upstream}"
timeout = "5s"

[routes.as.client]
id = "app-1"
auth = "private_key_jwt"
key = "client.pem"
alg = "ES256"
"#
    )
}

/// Reads until the peer closes (EOF or reset); how long that took, or `None` past `bound`.
async fn closed_within(stream: &mut TcpStream, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(bound, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => continue,
            }
        }
    })
    .await
    .ok()
}

/// How many of `sockets` the peer closes within `bound` (all watched at once).
async fn count_closed(sockets: &mut Vec<TcpStream>, bound: Duration) -> usize {
    let mut watching = tokio::task::JoinSet::new();
    for mut s in sockets.drain(..) {
        watching.spawn(async move {
            let closed = closed_within(&mut s, bound).await.is_some();
            (s, closed)
        });
    }
    let mut closed = 0;
    while let Some(done) = watching.join_next().await {
        let (s, was_closed) = done.unwrap();
        closed += usize::from(was_closed);
        sockets.push(s);
    }
    closed
}

/// Opens 300 sockets that send nothing to a tokenrelay limited to 256 descriptors, then sends
/// a token request; returns the proxy's log and how many silent sockets it had closed.
async fn flood(proxy_extra: &str) -> (String, usize) {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = write_key(dir.path(), "client.pem", Alg::ES256);
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config(&up.url(), proxy_extra)).unwrap();
    let proxy = ProxyProcess::start_with_nofile(&[], &path, "info", 256);
    let addr: SocketAddr = proxy.base.trim_start_matches("http://").parse().unwrap();

    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let started = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        client
            .post(format!("{}/as/token", proxy.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send(),
    )
    .await
    .expect("the token request was not answered within 5 s")
    .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["access_token"], "upstream-issued-token-VALUE");
    eprintln!("[{proxy_extra}] token request with 300 silent sockets open: {elapsed:?}");

    // The upstream got it, signed.
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let assertion = seen[0].param("client_assertion").expect("signed with a client assertion");
    jose::verify(&assertion, Alg::ES256, VerifyKey::Jwk(key.public_jwk())).unwrap();

    let closed = count_closed(&mut silent, Duration::from_millis(50)).await;
    eprintln!("[{proxy_extra}] silent sockets closed by the proxy so far: {closed} of 300");

    // Still healthy: a second request works too.
    let resp = client
        .post(format!("{}/as/token", proxy.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.seen().len(), 2);
    drop(silent);
    (proxy.stop(), closed)
}

#[tokio::test]
async fn three_hundred_silent_sockets_do_not_keep_a_token_request_out() {
    // 256 descriptors: the default cap is 256 - 64 = 192 connections.
    let (log, closed) = flood("").await;
    // The proxy made room by closing the silent sockets that came first: at least the 108
    // over the cap are closed already.
    assert!(closed >= 300 - 192, "only {closed} silent sockets were closed");
    let accept_errors = log.lines().filter(|l| l.contains("accept failed")).count();
    assert_eq!(accept_errors, 0, "the cap keeps the process under its open-file limit:\n{log}");
    let limit_lines = log.lines().filter(|l| l.contains("connection limit reached")).count();
    assert!(limit_lines >= 1, "shedding is reported:\n{log}");
    assert!(limit_lines <= 3, "the limit is reported once per 10 s, not per connection:\n{log}");
}

#[tokio::test]
async fn a_cap_above_the_open_file_limit_still_lets_a_token_request_in() {
    // EMFILE is the limit here: the accept loop backs off and sheds the longest-idle socket.
    let (log, _) = flood("max_connections = 1000").await;
    assert!(log.contains("close to the open-file limit"), "the config is warned about:\n{log}");
    let accept_errors = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!(accept_errors >= 1, "EMFILE is reported:\n{log}");
    assert!(accept_errors <= 3, "accept errors are reported once per 10 s, not per failure:\n{log}");
}

#[tokio::test]
async fn connections_that_send_no_request_head_are_closed_after_the_idle_timeout() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let builder = TestProxy::builder(config(&up.url(), "listen_tls = \"$LISTEN_TLS\"")).tls();
    write_key(builder.dir(), "client.pem", Alg::ES256);
    let proxy = builder.start().await;
    let addr = proxy.running.addr;
    let tls_addr = proxy.running.tls_addr.unwrap();
    // The proxy's bound is 10 s; allow for a slow machine.
    let bound = Duration::from_secs(20);

    // Silent on the plain listener (protocol sniffing), silent on the TLS listener (the TLS
    // accept), a request head that never ends (header read), and a kept-alive connection
    // after one full exchange.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut silent_tls = TcpStream::connect(tls_addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(b"POST /as/token HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /nothing-here HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    kept.read_exact(&mut head).await.unwrap();
    assert!(head.starts_with(b"HTTP/1.1 "), "{:?}", String::from_utf8_lossy(&head));

    let (a, b, c, d) = tokio::join!(
        closed_within(&mut silent, bound),
        closed_within(&mut silent_tls, bound),
        closed_within(&mut partial, bound),
        closed_within(&mut kept, bound),
    );
    for (what, took) in [("silent", a), ("silent TLS", b), ("partial head", c), ("kept alive", d)] {
        let took = took.unwrap_or_else(|| panic!("{what}: still open after {bound:?}"));
        eprintln!("{what} connection closed by the proxy after {took:?}");
        assert!(took >= Duration::from_secs(8), "{what}: closed too early ({took:?})");
    }
    // Every slot is released (each right after its socket closes, in the proxy's task).
    let released = Instant::now() + Duration::from_secs(2);
    while proxy.running.connections().0 > 0 && Instant::now() < released {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(proxy.running.connections().0, 0, "every slot is released");
    proxy.stop().await;
}

/// A TCP server that echoes what it gets.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_tunnel_in_use_counts_against_the_cap_and_is_not_shed() {
    let echo = echo_server().await;
    let up = Recorder::start(|_, _| Reply::token()).await;
    let builder = TestProxy::builder(config(&up.url(), "forward = \"$FORWARD\"\nmax_connections = 3")).forward();
    write_key(builder.dir(), "client.pem", Alg::ES256);
    let proxy = builder.start().await;

    let mut tunnel = TcpStream::connect(proxy.forward_addr()).await.unwrap();
    tunnel.write_all(format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tunnel.read_exact(&mut byte).await.unwrap();
        answer.push(byte[0]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    let mut echoed = [0u8; 5];
    tunnel.write_all(b"hello").await.unwrap();
    tunnel.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"hello");
    assert_eq!(proxy.running.connections(), (1, 3), "the tunnel holds a slot");

    // Five silent connections against a cap of 3: they shed one another, never the tunnel.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(proxy.running.addr).await.unwrap());
    }
    // A token request still gets in (it sheds a silent one too).
    let (status, _) = proxy.post_form("/as/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200);
    tunnel.write_all(b"still").await.unwrap();
    tunnel.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"still");
    let (open, limit) = proxy.running.connections();
    assert!(open <= limit, "{open} connections open over the cap of {limit}");
    let shed = count_closed(&mut silent, Duration::from_millis(200)).await;
    assert!(shed >= 3, "only {shed} silent connections were shed");
    drop(tunnel);
    proxy.stop().await;
}
