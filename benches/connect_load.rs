//! The load generator of `bench/run.sh`'s forward-mode scenarios (`forward`, `mitmproxy-fwd`):
//! what wrk does for the reverse-mode ones, through an HTTPS proxy, which wrk cannot do.
//!
//! ```text
//! connect_load PROXY TARGET PATH CA_PEM CONNECTIONS SECONDS
//! connect_load 127.0.0.1:8788 localhost:9443 /token certs/ca.pem 32 3
//! ```
//!
//! Each of CONNECTIONS connections sends `CONNECT TARGET` to PROXY, does TLS inside the
//! tunnel (rustls, CA_PEM the only root, SNI the target's host; HTTP/1.1 by ALPN), then
//! kept-alive `POST PATH` requests (`grant_type=client_credentials&scope=read`, form-encoded)
//! one after the other until SECONDS have passed. A connection that fails is opened again,
//! as wrk does. Runs on one thread (like `wrk -t1`), so `taskset` pins it whole.
//!
//! Prints one line in the format of the harness's wrk script (`bench/harness.py`, `post.lua`),
//! latencies in µs from writing a request to reading its whole answer:
//!
//! ```text
//! RESULT {"requests":N,"duration_us":D,"connect":E,"read":E,"write":E,"status":NON_2XX,"timeout":E,"p50":US,"p99":US,"mean":US}
//! ```
//!
//! `connect` counts failed CONNECTs and TLS handshakes, `read` requests that failed on the
//! connection, `timeout` requests with no answer within 5 s (wrk's `--timeout 5s`).
//! Loopback use only; every loop is bounded by SECONDS. Under `cargo bench` (no arguments)
//! it prints how to use it and exits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const BODY: &str = "grant_type=client_credentials&scope=read";
/// No answer within this is a timeout (wrk's `--timeout 5s` in the harness).
const TIMEOUT: Duration = Duration::from_secs(5);
/// The longest CONNECT answer head accepted.
const MAX_HEAD: usize = 16 * 1024;
const USAGE: &str = "usage: connect_load PROXY_ADDR TARGET_HOST:PORT PATH CA_PEM CONNECTIONS SECONDS";

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What every connection shares.
struct Setup {
    proxy: String,
    target: String,
    path: String,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

/// One connection's counts and latencies (µs).
#[derive(Default)]
struct Tally {
    requests: u64,
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    timeout: u64,
    latencies: Vec<u64>,
    first_error: Option<String>,
}

impl Tally {
    fn failed(&mut self, what: String) {
        self.first_error.get_or_insert(what);
    }

    fn add(&mut self, other: Tally) {
        self.requests += other.requests;
        self.connect += other.connect;
        self.read += other.read;
        self.write += other.write;
        self.status += other.status;
        self.timeout += other.timeout;
        self.latencies.extend(other.latencies);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

fn setup(proxy: &str, target: &str, path: &str, ca: &PathBuf) -> Result<Setup, Error> {
    let (host, port) = target.rsplit_once(':').ok_or_else(|| format!("target {target:?} is not host:port"))?;
    port.parse::<u16>().map_err(|_| format!("target {target:?}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let server_name = ServerName::try_from(host.to_string()).map_err(|e| format!("target host {host:?}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        roots.add(cert.map_err(|e| format!("{}: {e}", ca.display()))?)?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate", ca.display()).into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Setup {
        proxy: proxy.to_string(),
        target: target.to_string(),
        path: path.to_string(),
        server_name,
        tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
    })
}

/// CONNECT, TLS inside the tunnel, HTTP/1.1 handshake: a sender for kept-alive requests.
async fn open(setup: &Setup) -> Result<SendRequest<Full<Bytes>>, Error> {
    let mut tcp = TcpStream::connect(&setup.proxy).await?;
    tcp.set_nodelay(true)?;
    let head = format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n", t = setup.target);
    tcp.write_all(head.as_bytes()).await?;
    // The proxy sends nothing after its answer until the ClientHello, so reading past the
    // head cannot swallow TLS bytes; anything after it is an error all the same.
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Err("the proxy closed the connection before answering CONNECT".into());
        }
        answer.extend_from_slice(&buf[..n]);
        if let Some(i) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if answer.len() > MAX_HEAD {
            return Err("CONNECT answer head too long".into());
        }
    };
    let text = String::from_utf8_lossy(&answer[..end]);
    let status_line = text.lines().next().unwrap_or_default();
    let code = status_line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0);
    if !(200..300).contains(&code) {
        return Err(format!("CONNECT {}: {status_line}", setup.target).into());
    }
    if end != answer.len() {
        return Err("bytes after the CONNECT answer before the TLS handshake".into());
    }
    let tls = setup.tls.connect(setup.server_name.clone(), tcp).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// How one request went.
enum Sent {
    Status(u16),
    Read(String),
    Write(String),
}

async fn one(sender: &mut SendRequest<Full<Bytes>>, setup: &Setup) -> Sent {
    let req = http::Request::post(setup.path.as_str())
        .header(HOST, setup.target.as_str())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())));
    let req = match req {
        Ok(r) => r,
        Err(e) => return Sent::Write(e.to_string()),
    };
    let resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => return Sent::Read(e.to_string()),
    };
    let status = resp.status().as_u16();
    match resp.into_body().collect().await {
        Ok(_) => Sent::Status(status),
        Err(e) => Sent::Read(e.to_string()),
    }
}

/// One connection's loop until `deadline`.
async fn connection(setup: Arc<Setup>, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    while Instant::now() < deadline {
        // A connection the server closed between requests is opened again, not counted.
        if let Some(s) = sender.as_mut() {
            if s.ready().await.is_err() {
                sender = None;
            }
        }
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match tokio::time::timeout(TIMEOUT, open(&setup)).await {
                Ok(Ok(s)) => sender.insert(s),
                Ok(Err(e)) => {
                    tally.connect += 1;
                    tally.failed(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => {
                    tally.connect += 1;
                    tally.failed("connect: timed out".into());
                    continue;
                }
            },
        };
        let started = Instant::now();
        match tokio::time::timeout(TIMEOUT, one(s, &setup)).await {
            Ok(Sent::Status(status)) => {
                tally.latencies.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
                tally.requests += 1;
                if !(200..300).contains(&status) {
                    tally.status += 1;
                    tally.failed(format!("status {status}"));
                }
            }
            Ok(Sent::Read(e)) => {
                tally.read += 1;
                tally.failed(format!("read: {e}"));
                sender = None;
            }
            Ok(Sent::Write(e)) => {
                tally.write += 1;
                tally.failed(format!("write: {e}"));
                sender = None;
            }
            Err(_) => {
                tally.timeout += 1;
                tally.failed("timeout".into());
                sender = None;
            }
        }
    }
    tally
}

/// The value at percentile `p` (0–100): the smallest latency that `p` % of them do not exceed.
fn percentile(sorted: &[u64], p: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let n = sorted.len() as u64;
    let rank = (n * p).div_ceil(100).max(1);
    sorted[usize::try_from(rank - 1).unwrap_or(0).min(sorted.len() - 1)]
}

async fn run(setup: Setup, connections: usize, duration: Duration) -> Result<(), Error> {
    let setup = Arc::new(setup);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        tasks.spawn(connection(setup.clone(), deadline));
    }
    let mut all = Tally::default();
    while let Some(done) = tasks.join_next().await {
        all.add(done?);
    }
    let elapsed = started.elapsed();
    all.latencies.sort_unstable();
    let mean = if all.latencies.is_empty() {
        0.0
    } else {
        all.latencies.iter().sum::<u64>() as f64 / all.latencies.len() as f64
    };
    if let Some(e) = &all.first_error {
        eprintln!("connect_load: first error: {e}");
    }
    println!(
        "RESULT {{\"requests\":{},\"duration_us\":{},\"connect\":{},\"read\":{},\"write\":{},\"status\":{},\
         \"timeout\":{},\"p50\":{},\"p99\":{},\"mean\":{mean:.1}}}",
        all.requests,
        elapsed.as_micros(),
        all.connect,
        all.read,
        all.write,
        all.status,
        all.timeout,
        percentile(&all.latencies, 50),
        percentile(&all.latencies, 99),
    );
    Ok(())
}

fn main() -> ExitCode {
    // `cargo bench` runs every bench target with `--bench`: this one needs its arguments.
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let under_cargo_bench = raw.iter().any(|a| a == "--bench");
    let args: Vec<&String> = raw.iter().filter(|a| !a.starts_with("--")).collect();
    let [proxy, target, path, ca, connections, secs] = args.as_slice() else {
        if under_cargo_bench {
            println!("connect_load: the load generator of bench/run.sh (forward mode); {USAGE}");
            return ExitCode::SUCCESS;
        }
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let (Ok(connections), Ok(secs)) = (connections.parse::<usize>(), secs.parse::<f64>()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if connections == 0 || !(secs > 0.0 && secs <= 3600.0) {
        eprintln!("connect_load: CONNECTIONS must be > 0 and SECONDS in (0, 3600]");
        return ExitCode::from(2);
    }
    let setup = match setup(proxy, target, path, &PathBuf::from(ca)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("connect_load: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("connect_load: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(setup, connections, Duration::from_secs_f64(secs))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connect_load: {e}");
            ExitCode::FAILURE
        }
    }
}
