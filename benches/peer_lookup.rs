//! What the accept-time peer check (`src/peer/`) costs: `cargo bench --bench peer_lookup`.
//!
//! 1. The lookup alone, `peer::lookup` on a fresh loopback connection (IPv4 and IPv6), with
//!    `BACKGROUND` other established connections open, and the `/proc/net/tcp` fallback for
//!    comparison.
//! 2. At the server: `server::serve` with a handler that answers `200 ok`, once with the check
//!    (the default: the running user and root) and once with `allow_users = ["*"]` (no
//!    lookup), in interleaved rounds: a new connection per request (connect, request, whole
//!    answer), then requests on one kept-alive connection, which must cost the same both ways
//!    (the check runs once per connection, never per request).
//!
//! Prints p50/p99 in µs. Linux only (elsewhere there is no lookup to measure).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const LOOKUPS: usize = 5_000;
const BACKGROUND: usize = 500;
const ROUNDS: usize = 5;
const PER_ROUND: usize = 400;

fn pct(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i].as_secs_f64() * 1e6
}

fn report(what: &str, samples: &mut [Duration]) {
    let (p50, p99) = (pct(samples, 0.50), pct(samples, 0.99));
    println!("{what:<58} n={:<6} p50 {p50:>7.1} µs   p99 {p99:>7.1} µs", samples.len());
}

/// Times `lookup` on `n` fresh connections to `bind`.
fn time_lookups(
    bind: &str,
    n: usize,
    lookup: impl Fn(SocketAddr, SocketAddr) -> Result<tokenrelay::peer::Owner, tokenrelay::peer::LookupError>,
) -> Vec<Duration> {
    let listener = TcpListener::bind(bind).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let me = tokenrelay::peer::running_uid();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let client = TcpStream::connect(addr).expect("connect");
        let (accepted, peer) = listener.accept().expect("accept");
        let local = accepted.local_addr().expect("local");
        let start = Instant::now();
        let owner = lookup(local, peer);
        out.push(start.elapsed());
        assert_eq!(owner, Ok(tokenrelay::peer::Owner::Uid(me)), "the lookup must name this process's uid");
        drop((client, accepted));
    }
    out
}

struct Ok200;

impl tokenrelay::server::Handler for Ok200 {
    async fn call(
        self: Arc<Self>,
        _req: http::Request<hyper::body::Incoming>,
        _conn: tokenrelay::server::Conn,
    ) -> http::Response<tokenrelay::body::Body> {
        http::Response::new(tokenrelay::body::full("ok"))
    }
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n";

/// Sends one request on `stream` and reads the whole answer (`200`, body `ok`, chunked).
async fn round_trip(stream: &mut tokio::net::TcpStream, buf: &mut [u8]) {
    stream.write_all(REQUEST).await.expect("write");
    let mut have = 0;
    loop {
        let n = stream.read(&mut buf[have..]).await.expect("read");
        assert!(n > 0, "closed before the answer: {:?}", String::from_utf8_lossy(&buf[..have]));
        have += n;
        let text = &buf[..have];
        // The handler's body has no length: hyper sends it chunked.
        if text.ends_with(b"\r\n2\r\nok\r\n0\r\n\r\n") {
            assert!(text.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(text));
            return;
        }
    }
}

async fn start(peers: tokenrelay::peer::Gate) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tracker = tokenrelay::server::Tracker::with_peers(1024, peers);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(tokenrelay::server::serve(listener, Arc::new(Ok200), tracker, stopped));
    (addr, stop)
}

async fn at_the_server() {
    let (checked, _s1) = start(tokenrelay::peer::Gate::default()).await;
    let any = Arc::new(tokenrelay::peer::AllowUsers::any());
    let (unchecked, _s2) = start(tokenrelay::peer::Gate::fixed(any)).await;
    let mut buf = vec![0u8; 4096];
    let (mut new_checked, mut new_unchecked, mut kept_checked, mut kept_unchecked) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for (addr, samples) in [(checked, &mut new_checked), (unchecked, &mut new_unchecked)] {
            for _ in 0..PER_ROUND {
                let start = Instant::now();
                let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                s.set_nodelay(true).expect("nodelay");
                round_trip(&mut s, &mut buf).await;
                samples.push(start.elapsed());
            }
        }
        for (addr, samples) in [(checked, &mut kept_checked), (unchecked, &mut kept_unchecked)] {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).expect("nodelay");
            round_trip(&mut s, &mut buf).await;
            for _ in 0..PER_ROUND {
                let start = Instant::now();
                round_trip(&mut s, &mut buf).await;
                samples.push(start.elapsed());
            }
        }
    }
    report("server, new connection + request, peer check on", &mut new_checked);
    report("server, new connection + request, allow_users = [\"*\"]", &mut new_unchecked);
    report("server, kept-alive request, peer check on", &mut kept_checked);
    report("server, kept-alive request, allow_users = [\"*\"]", &mut kept_unchecked);
    let d50 = pct(&mut new_checked, 0.5) - pct(&mut new_unchecked, 0.5);
    let d99 = pct(&mut new_checked, 0.99) - pct(&mut new_unchecked, 0.99);
    println!("added to a new connection: p50 {d50:+.1} µs, p99 {d99:+.1} µs (includes noise)");
}

fn main() {
    if !tokenrelay::peer::LOOKUP_SUPPORTED {
        println!("peer_lookup: no peer lookup on {}; nothing to measure", std::env::consts::OS);
        return;
    }
    // Other connections in the kernel's tables, as on a busy machine.
    let bg = TcpListener::bind("127.0.0.1:0").expect("bind");
    let bg_addr = bg.local_addr().expect("addr");
    let _background: Vec<(TcpStream, TcpStream)> = (0..BACKGROUND)
        .map(|_| {
            let c = TcpStream::connect(bg_addr).expect("connect");
            (c, bg.accept().expect("accept").0)
        })
        .collect();
    println!("peer_lookup: {BACKGROUND} other loopback connections open");
    // Warm up (the first netlink answer also settles the fallback question).
    let _ = time_lookups("127.0.0.1:0", 200, tokenrelay::peer::lookup);
    report("lookup, NETLINK_SOCK_DIAG, IPv4", &mut time_lookups("127.0.0.1:0", LOOKUPS, tokenrelay::peer::lookup));
    report("lookup, NETLINK_SOCK_DIAG, IPv6", &mut time_lookups("[::1]:0", LOOKUPS, tokenrelay::peer::lookup));
    #[cfg(target_os = "linux")]
    report(
        "lookup, /proc/net/tcp fallback, IPv4",
        &mut time_lookups("127.0.0.1:0", 100, tokenrelay::peer::lookup_via_proc),
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(at_the_server());
}
