//! Hot reload latency: the time from a save of `proxy.toml` to the first request served
//! with the new config. One client sends token requests back to back (private_key_jwt
//! ES256, loopback upstream that echoes the config version it saw) while the config is saved
//! N times, cycling through in-place write, rename-over and delete-and-recreate. Prints
//! median and p99 in ms, and the same for `reload_now` (validation + publish, no file watch
//! or debounce) to show where the time goes. Loopback only, bounded by count.
//!
//! `cargo bench --bench reload` (`RELOAD_BENCH_SAVES=200` for more saves,
//! `RUST_LOG=tokenrelay::reload=trace` to see each file event and reload).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokenrelay::jose::{Alg, SigningKey};
use tokio::net::TcpListener;

/// Pause between saves so one save's events never merge with the next one's burst.
const BETWEEN_SAVES: Duration = Duration::from_millis(250);

/// An upstream that answers with the `x-config-version` it received.
async fn upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let version = req.headers().get("x-config-version").cloned();
                    let _ = req.into_body().collect().await;
                    let body = version.map(|v| Bytes::copy_from_slice(v.as_bytes())).unwrap_or_default();
                    Ok::<_, Infallible>(http::Response::new(Full::new(body)))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn config(upstream: std::net::SocketAddr, version: usize) -> String {
    format!(
        r#"[routes.as]
prefix = "/as"
upstream = "http://{upstream}"

[routes.as.client]
id = "bench"
auth = "private_key_jwt"
key = "client.pem"

[routes.as.headers]
set = {{ "x-config-version" = "{version}" }}
"#
    )
}

fn save(path: &Path, text: &str, how: usize) {
    match how % 3 {
        0 => {
            let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path).unwrap();
            f.write_all(text.as_bytes()).unwrap();
        }
        1 => {
            let tmp = path.with_file_name(".proxy.toml.tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        _ => {
            std::fs::remove_file(path).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }
}

/// Sends requests back to back until one is served with `version`; returns when it was.
async fn first_served(http: &reqwest::Client, url: &str, version: usize) -> Instant {
    let want = version.to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.unwrap();
        if body == want {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "version {version} never served (still {body})");
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    println!(
        "{what}: n={} median {:.1} ms, p99 {:.1} ms (min {:.1}, max {:.1})",
        samples.len(),
        ms(pick(0.5)),
        ms(pick(0.99)),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
    );
}

#[tokio::main]
async fn main() {
    // `RUST_LOG=tokenrelay::reload=debug` shows every reload line.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    }
    let saves: usize = std::env::var("RELOAD_BENCH_SAVES").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(Alg::ES256).unwrap();
    tokenrelay::keys::write_private(&dir.path().join("client.pem"), key.pkcs8_pem().expose()).unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config(up, 0)).unwrap();
    let mut opts = tokenrelay::app::Options::new(&path);
    opts.listener = Some(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let running = tokenrelay::app::start(opts).await.unwrap();
    let url = format!("http://{}/as/token", running.addr);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    first_served(&http, &url, 0).await;

    let debounce = tokenrelay::reload::DEFAULT_DEBOUNCE;
    let mut by_method: [Vec<Duration>; 3] = Default::default();
    for version in 1..=saves {
        save(&path, &config(up, version), version);
        let saved = Instant::now();
        by_method[version % 3].push(first_served(&http, &url, version).await - saved);
        tokio::time::sleep(BETWEEN_SAVES).await;
    }
    println!("tokenrelay hot reload, {saves} saves, debounce {} ms:", debounce.as_millis());
    report("  save -> first request served with the new config", by_method.concat());
    report("    in-place write", std::mem::take(&mut by_method[0]));
    report("    rename-over", std::mem::take(&mut by_method[1]));
    report("    delete-and-recreate", std::mem::take(&mut by_method[2]));

    // Without the watcher: what validation, key loading and the swap cost.
    let mut direct = Vec::new();
    for version in saves + 1..=2 * saves {
        std::fs::write(&path, config(up, version)).unwrap();
        let asked = Instant::now();
        let outcome = running.reload_now().await;
        assert!(matches!(outcome, tokenrelay::reload::Outcome::Applied { .. }), "{outcome:?}");
        direct.push(first_served(&http, &url, version).await - asked);
        // Let the watcher's own look at this write pass (it finds nothing new).
        tokio::time::sleep(BETWEEN_SAVES).await;
    }
    report("  reload_now -> first request served (no watch, no debounce)", direct);
    let stats = running.reload_status();
    println!("  reloads applied {}, refused {}", stats.reloads, stats.failures);
    if let Some(e) = stats.last_error {
        // A save caught halfway (the writer stalled between truncate/remove and write).
        println!("  last refused: {e}");
    }
    running.stop().await;
}
