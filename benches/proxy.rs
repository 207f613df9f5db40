//! Reverse-proxy overhead: the same token request sent directly to a loopback upstream and
//! through tokenrelay (private_key_jwt ES256 + DPoP ES256), measured in one run. Prints
//! latency percentiles, throughput at fixed concurrency, the ratios, and the proxy's RSS.
//! Loopback only, bounded by count.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

const TOKEN: &str = r#"{"access_token":"bench-token","token_type":"DPoP","expires_in":60}"#;

async fn upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let mut resp = http::Response::new(Full::new(Bytes::from_static(TOKEN.as_bytes())));
                    resp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

struct Stats {
    p50: Duration,
    p99: Duration,
    rps: f64,
}

async fn measure(client: &reqwest::Client, url: &str, n: usize, concurrency: usize) -> Stats {
    // Warm-up (connections, caches).
    for _ in 0..50 {
        send(client, url).await;
    }
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        send(client, url).await;
        lat.push(t.elapsed());
    }
    lat.sort();
    let per_task = n / concurrency;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                send(&client, &url).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let rps = (per_task * concurrency) as f64 / start.elapsed().as_secs_f64();
    Stats { p50: lat[lat.len() / 2], p99: lat[lat.len() * 99 / 100], rps }
}

async fn send(client: &reqwest::Client, url: &str) {
    let resp = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&scope=read")
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}"));
    assert!(resp.status().is_success(), "status {}", resp.status());
    let _ = resp.bytes().await;
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let concurrency = 16;
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let config = format!(
        r#"
[routes.b]
prefix = "/b"
upstream = "http://{up}"
[routes.b.client]
id = "bench"
auth = "private_key_jwt"
key = "client.pem"
create = true
[routes.b.dpop]
key = "dpop.pem"
create = true
"#
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap_or_else(|e| panic!("write config: {e}"));
    let mut opts = tokenrelay::app::Options::new(&path);
    opts.listener = Some(TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}")));
    let rss_before = rss_kib();
    let running = tokenrelay::app::start(opts).await.unwrap_or_else(|e| panic!("start: {e}"));
    let client = Arc::new(
        reqwest::Client::builder().no_proxy().pool_max_idle_per_host(64).build().unwrap_or_else(|e| panic!("{e}")),
    );

    let direct = measure(&client, &format!("http://{up}/token"), n, concurrency).await;
    let proxied = measure(&client, &format!("http://{}/b/token", running.addr), n, concurrency).await;
    let rss_after = rss_kib();

    println!("reverse mode vs direct, {n} sequential requests + {n} at concurrency {concurrency}, loopback:");
    println!("{:<10} {:>10} {:>10} {:>12}", "", "p50 µs", "p99 µs", "req/s");
    for (name, s) in [("direct", &direct), ("tokenrelay", &proxied)] {
        println!("{:<10} {:>10} {:>10} {:>12.0}", name, s.p50.as_micros(), s.p99.as_micros(), s.rps);
    }
    println!(
        "ratios: p50 latency x{:.2}, p99 latency x{:.2}, throughput x{:.2}; added p50 latency {} µs (ES256 assertion + ES256 DPoP proof per request)",
        proxied.p50.as_secs_f64() / direct.p50.as_secs_f64(),
        proxied.p99.as_secs_f64() / direct.p99.as_secs_f64(),
        proxied.rps / direct.rps,
        proxied.p50.as_micros().saturating_sub(direct.p50.as_micros())
    );
    if let (Some(a), Some(b)) = (rss_before, rss_after) {
        println!(
            "process RSS (bench client + upstream + proxy): {a} KiB before start, {b} KiB after {} requests",
            4 * n
        );
    }
    running.stop().await;
}
