//! Smoke test of the benchmark harness's tokenrelay part (`bench/run.sh`, BENCHMARKS.md):
//! the three tokenrelay scenarios (relay-only with `auth = "none"`; `private_key_jwt` ES256;
//! `private_key_jwt` + DPoP ES256 + mTLS), each the built binary under load for about a
//! second against a fast in-process upstream (plain, and TLS that requires a client
//! certificate). Checks that the numbers come out — requests > 0, every answer a 200, every
//! request signed as the scenario says (one assertion and one proof verified) — and prints
//! them as the harness does: req/s, p50/p99, proxy CPU µs per request (utime + stime from
//! /proc), idle and peak RSS. No installs, no nginx/wrk/node/python; no timing assertions
//! beyond a generous bound, so a loaded 2-core machine passes.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::pki::TestCa;
use common::process::ProxyProcess;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokenrelay::jose::{self, Alg, SigningKey, VerifyKey};
use tokio::net::TcpListener;

const TOKEN: &str = r#"{"access_token":"bench-token","token_type":"DPoP","expires_in":60}"#;
const LOAD: Duration = Duration::from_secs(1);
const CONCURRENCY: usize = 8;

/// What the upstream saw: counts, and the first request's assertion and proof.
#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    with_assertion: AtomicU64,
    with_proof: AtomicU64,
    over_mtls: AtomicU64,
    sample: Mutex<Option<(String, Option<String>)>>,
}

/// A fast upstream that answers every request with a token: plain HTTP, or TLS requiring a
/// client certificate issued by `client_ca` (the mTLS scenario).
async fn upstream(seen: Arc<Seen>, tls: Option<(&TestCa, &TestCa)>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.map(|(server_ca, client_ca)| {
        let leaf = server_ca.server(&["127.0.0.1", "localhost"]);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(client_ca.cert_pem.as_bytes()).unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(leaf.der)],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, acceptor) = (seen.clone(), acceptor.clone());
            tokio::spawn(async move {
                let mtls = acceptor.is_some();
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let proof = req.headers().get("dpop").and_then(|v| v.to_str().ok()).map(str::to_string);
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let assertion = form_urlencoded::parse(&body)
                            .find(|(k, _)| k == "client_assertion")
                            .map(|(_, v)| v.into_owned());
                        seen.requests.fetch_add(1, Ordering::Relaxed);
                        seen.with_assertion.fetch_add(u64::from(assertion.is_some()), Ordering::Relaxed);
                        seen.with_proof.fetch_add(u64::from(proof.is_some()), Ordering::Relaxed);
                        seen.over_mtls.fetch_add(u64::from(mtls), Ordering::Relaxed);
                        if let Some(assertion) = assertion {
                            seen.sample.lock().unwrap().get_or_insert((assertion, proof));
                        }
                        let mut resp = http::Response::new(Full::new(Bytes::from_static(TOKEN.as_bytes())));
                        resp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
                        Ok::<_, Infallible>(resp)
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    addr
}

/// utime + stime of `pid` (all threads), in µs; and a `/proc/<pid>/status` field in KiB.
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 * 1e6 / 100.0 // USER_HZ is 100 on Linux
}

fn mem_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

struct Numbers {
    requests: usize,
    not_ok: usize,
    rps: f64,
    p50_us: u128,
    p99_us: u128,
    cpu_us_per_req: f64,
    idle_mib: f64,
    peak_mib: f64,
}

/// Runs `CONCURRENCY` clients against `url` for [`LOAD`], then one sequential second for
/// latency; reads the proxy's CPU and memory from /proc around it.
async fn load(proxy: &ProxyProcess, url: &str) -> Numbers {
    let pid = proxy.pid();
    let idle_mib = mem_kib(pid, "VmRSS:") as f64 / 1024.0;
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().unwrap();
    let cpu_before = cpu_us(pid);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (client, url) = (client.clone(), url.to_string());
        tasks.spawn(async move {
            let (mut n, mut not_ok, mut lat) = (0usize, 0usize, Vec::new());
            while started.elapsed() < LOAD {
                let t = Instant::now();
                let status = client
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body("grant_type=client_credentials&scope=read")
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                lat.push(t.elapsed().as_micros());
                n += 1;
                not_ok += usize::from(status != 200);
            }
            (n, not_ok, lat)
        });
    }
    let (mut requests, mut not_ok, mut lat) = (0, 0, Vec::new());
    while let Some(done) = tasks.join_next().await {
        let (n, bad, l) = done.unwrap();
        requests += n;
        not_ok += bad;
        lat.extend(l);
    }
    let rps = requests as f64 / started.elapsed().as_secs_f64();
    let cpu_us_per_req = (cpu_us(pid) - cpu_before) / requests.max(1) as f64;
    lat.sort_unstable();
    let pct = |p: usize| lat.get((lat.len() * p / 100).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    Numbers {
        requests,
        not_ok,
        rps,
        p50_us: pct(50),
        p99_us: pct(99),
        cpu_us_per_req,
        idle_mib,
        peak_mib: mem_kib(pid, "VmHWM:") as f64 / 1024.0,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Relay,
    Pkjwt,
    Full,
}

fn config(scenario: Scenario, upstream: SocketAddr) -> String {
    let mut text = String::from("[proxy]\nlisten = \"127.0.0.1:0\"\n\n[routes.b]\nprefix = \"/b\"\n");
    match scenario {
        Scenario::Relay => text.push_str(&format!(
            "upstream = \"http://{upstream}\"\n[routes.b.client]\nid = \"bench\"\nauth = \"none\"\n"
        )),
        Scenario::Pkjwt => text.push_str(&format!(
            "upstream = \"http://{upstream}\"\n[routes.b.client]\nid = \"bench\"\nauth = \"private_key_jwt\"\n\
             key = \"client.pem\"\ncreate = true\n"
        )),
        Scenario::Full => text.push_str(&format!(
            "upstream = \"https://{upstream}\"\ntrust = [\"as-ca.pem\"]\n\
             [routes.b.client]\nid = \"bench\"\nauth = \"private_key_jwt\"\nkey = \"client.pem\"\ncreate = true\n\
             [routes.b.dpop]\nkey = \"dpop.pem\"\ncreate = true\n\
             [routes.b.mtls]\ncert = \"mtls-cert.pem\"\nkey = \"mtls-key.pem\"\n"
        )),
    }
    text
}

async fn run(scenario: Scenario) {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Seen::default());
    let (server_ca, client_ca) = (TestCa::new("bench AS CA"), TestCa::new("bench client CA"));
    let up = if scenario == Scenario::Full {
        server_ca.write(&dir.path().join("as-ca.pem"));
        client_ca.client("bench-client").write(dir.path(), "mtls");
        upstream(seen.clone(), Some((&server_ca, &client_ca))).await
    } else {
        upstream(seen.clone(), None).await
    };
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config(scenario, up)).unwrap();
    let proxy = ProxyProcess::start(&["run"], &path, "warn");
    let url = format!("{}/b/token", proxy.base);

    // Generous: the whole scenario (1 s of load) within a minute, even on a loaded machine.
    let n = tokio::time::timeout(Duration::from_secs(60), load(&proxy, &url)).await.expect("load did not finish");
    println!(
        "{scenario:?}: {} requests, {:.0} req/s at c={CONCURRENCY}, p50 {} µs, p99 {} µs, proxy CPU {:.1} µs/req, \
         idle RSS {:.1} MiB, peak RSS {:.1} MiB (debug build: not the figures of BENCHMARKS.md)",
        n.requests, n.rps, n.p50_us, n.p99_us, n.cpu_us_per_req, n.idle_mib, n.peak_mib
    );
    let log = proxy.stop();
    assert!(n.requests > 0, "no request completed; proxy log:\n{log}");
    assert_eq!(n.not_ok, 0, "{} of {} answers were not 200; proxy log:\n{log}", n.not_ok, n.requests);
    assert!(n.cpu_us_per_req > 0.0 && n.idle_mib > 0.0 && n.peak_mib >= n.idle_mib);
    let got = seen.requests.load(Ordering::Relaxed);
    assert_eq!(got, n.requests as u64, "the upstream saw {got} requests, the clients sent {}", n.requests);

    let (assertions, proofs, mtls) = (
        seen.with_assertion.load(Ordering::Relaxed),
        seen.with_proof.load(Ordering::Relaxed),
        seen.over_mtls.load(Ordering::Relaxed),
    );
    let signed = scenario != Scenario::Relay;
    let full = scenario == Scenario::Full;
    assert_eq!(assertions, if signed { got } else { 0 }, "{scenario:?}: requests with a client assertion");
    assert_eq!(proofs, if full { got } else { 0 }, "{scenario:?}: requests with a DPoP proof");
    assert_eq!(mtls, if full { got } else { 0 }, "{scenario:?}: requests over mTLS");
    if signed {
        let (assertion, proof) = seen.sample.lock().unwrap().clone().expect("a signed request");
        let key = SigningKey::load(&std::fs::read(dir.path().join("client.pem")).unwrap(), Alg::ES256).unwrap();
        let v = jose::verify(&assertion, Alg::ES256, VerifyKey::Jwk(key.public_jwk())).unwrap();
        assert_eq!(v.claims["iss"], "bench");
        if full {
            let proof = proof.expect("a DPoP proof");
            let jwk = jose::peek_header(&proof).unwrap()["jwk"].as_object().unwrap().clone();
            let v = jose::verify(&proof, Alg::ES256, VerifyKey::Jwk(&jwk)).unwrap();
            assert_eq!(v.header["typ"], "dpop+jwt");
            assert_eq!(v.claims["htu"], format!("https://{up}/token"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_relay_only() {
    run(Scenario::Relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_private_key_jwt() {
    run(Scenario::Pkjwt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_full_path_pkjwt_dpop_mtls() {
    run(Scenario::Full).await;
}
