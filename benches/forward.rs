//! Forward mode vs reverse mode: the same signed token request (private_key_jwt ES256) to an
//! HTTPS "AS" on loopback, sent directly, through reverse mode (plain HTTP and the HTTPS
//! listener), and through the forward proxy (kept-alive tunnel, and a new CONNECT + TLS
//! handshake per request). Prints latency percentiles, throughput at fixed concurrency and
//! the added latency relative to a direct request. Loopback only, bounded by count.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokenrelay::pki::{self, LeafUse};
use tokio::net::TcpListener;

const TOKEN: &str = r#"{"access_token":"bench-token","token_type":"Bearer","expires_in":60}"#;
const N: usize = 2000;
const CONCURRENCY: usize = 16;

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// An HTTPS AS on 127.0.0.1:0 with a test PKI; its CA goes to `ca_path`.
async fn tls_upstream(ca_path: &Path) -> SocketAddr {
    let ca = ok(pki::generate_ca("bench AS CA"));
    ok(std::fs::write(ca_path, &ca.cert_pem));
    let leaf = ok(pki::issue_leaf(&ca, &["localhost", "127.0.0.1"], LeafUse::Server, 2));
    use rustls::pki_types::pem::PemObject as _;
    let chain =
        ok(rustls::pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>());
    let key = ok(rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.expose().as_bytes()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config =
        ok(ok(rustls::ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions())
            .with_no_client_auth()
            .with_single_cert(chain, key));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = ok(TcpListener::bind("127.0.0.1:0").await);
    let addr = ok(listener.local_addr());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let mut resp = http::Response::new(Full::new(Bytes::from_static(TOKEN.as_bytes())));
                    resp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
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

async fn send(client: &reqwest::Client, url: &str) {
    let resp = ok(client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await);
    assert_eq!(resp.status(), 200, "{url}");
    let _ = ok(resp.bytes().await);
}

async fn measure(client: &reqwest::Client, url: &str, n: usize) -> Stats {
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
    let per_task = n / CONCURRENCY;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                send(&client, &url).await;
            }
        }));
    }
    for t in tasks {
        ok(t.await);
    }
    let rps = (per_task * CONCURRENCY) as f64 / start.elapsed().as_secs_f64();
    Stats { p50: lat[n / 2], p99: lat[n * 99 / 100], rps }
}

fn client(trust: &Path, proxy: Option<&str>, keep_alive: bool) -> reqwest::Client {
    let ca = ok(reqwest::Certificate::from_pem(&ok(std::fs::read(trust))));
    let mut b = reqwest::Client::builder().tls_built_in_root_certs(false).add_root_certificate(ca);
    b = match proxy {
        Some(p) => b.proxy(ok(reqwest::Proxy::https(p))),
        None => b.no_proxy(),
    };
    b = if keep_alive { b.pool_max_idle_per_host(64) } else { b.pool_max_idle_per_host(0) };
    ok(b.build())
}

#[tokio::main]
async fn main() {
    let dir = ok(tempfile::tempdir());
    let as_addr = tls_upstream(&dir.path().join("as-ca.pem")).await;
    let key = ok(tokenrelay::jose::SigningKey::generate(tokenrelay::jose::Alg::ES256));
    ok(tokenrelay::keys::write_private(&dir.path().join("client.pem"), key.pkcs8_pem().expose()));
    let (listen, forward, tls) = (
        ok(TcpListener::bind("127.0.0.1:0").await),
        ok(TcpListener::bind("127.0.0.1:0").await),
        ok(TcpListener::bind("127.0.0.1:0").await),
    );
    let (forward_addr, tls_addr) = (ok(forward.local_addr()), ok(tls.local_addr()));
    let config = format!(
        r#"
[proxy]
forward = "{forward_addr}"
listen_tls = "{tls_addr}"

[routes.as]
prefix = "/as"
upstream = "https://127.0.0.1:{port}"
trust = ["as-ca.pem"]
endpoints = ["/token"]

[routes.as.client]
id = "bench"
auth = "private_key_jwt"
key = "client.pem"
alg = "ES256"
"#,
        port = as_addr.port()
    );
    let path = dir.path().join("proxy.toml");
    ok(std::fs::write(&path, config));
    let mut opts = tokenrelay::app::Options::new(&path);
    opts.listener = Some(listen);
    opts.forward_listener = Some(forward);
    opts.tls_listener = Some(tls);
    let running = ok(tokenrelay::app::start(opts).await);
    let as_ca = dir.path().join("as-ca.pem");
    let local_ca = dir.path().join("certs/ca.pem");
    let direct_url = format!("https://127.0.0.1:{}/token", as_addr.port());
    let proxy_url = format!("http://{forward_addr}");

    let cases: Vec<(&str, reqwest::Client, String)> = vec![
        ("direct to the AS (no signing)", client(&as_ca, None, true), direct_url.clone()),
        ("reverse, http://127.0.0.1", client(&as_ca, None, true), format!("http://{}/as/token", running.addr)),
        (
            "reverse, https listen_tls",
            client(&local_ca, None, true),
            format!("https://localhost:{}/as/token", tls_addr.port()),
        ),
        ("forward, kept-alive tunnel", client(&local_ca, Some(&proxy_url), true), direct_url.clone()),
        ("forward, new CONNECT+TLS each", client(&local_ca, Some(&proxy_url), false), direct_url.clone()),
    ];
    println!("forward vs reverse mode: {N} sequential requests, then {N} at concurrency {CONCURRENCY}");
    println!("{:<32} {:>10} {:>10} {:>10} {:>14}", "path", "p50", "p99", "req/s", "added p50");
    let mut base = None;
    for (name, client, url) in &cases {
        let s = measure(client, url, N).await;
        let base_p50 = *base.get_or_insert(s.p50);
        let added = s.p50.saturating_sub(base_p50);
        println!("{name:<32} {:>10.3?} {:>10.3?} {:>10.0} {:>14.3?}", s.p50, s.p99, s.rps, added);
    }
    running.stop().await;
}
