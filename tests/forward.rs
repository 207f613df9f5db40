//! Forward mode and the HTTPS reverse listener, end to end. Every test asserts on what the TLS
//! "AS" on 127.0.0.1 received: signed when a route claims the host, the app's own bytes when
//! the host is tunnelled, nothing at all when tokenrelay refuses.
//!
//! The Node and Python apps (tests/node_app, tests/py_app) know nothing about tokenrelay: they
//! run with the environment `tokenrelay ca` prints. Their dependencies are installed on first
//! use (npm ci from the lock file; a venv under tests/py_app/.venv); a missing `node`, `npm` or
//! `python3` fails the test with a message, it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::jwt;
use common::process::{install_once, npm_install, run, tests_dir, BIN};
use common::proxy::{write_key, TestProxy};
use common::tls_upstream::TlsRecorder;
use common::upstream::{Reply, Seen};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use tokenrelay::jose::{self, Alg, SigningKey, VerifyKey};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "upstream-issued-token-VALUE";

/// `[proxy]` with forward + listen_tls, one private_key_jwt route to `as_port`.
fn config(as_port: u16, unknown: &str, hosts: &str) -> String {
    format!(
        r#"
[proxy]
forward = "$FORWARD"
listen_tls = "$LISTEN_TLS"
unknown_hosts = "{unknown}"
ca_cert = "ca.pem"
ca_key = "ca-key.pem"

[routes.as]
prefix = "/as"
upstream = "https://127.0.0.1:{as_port}"
trust = ["as-ca.pem"]
timeout = "5s"
endpoints = ["/token"]
{hosts}

[routes.as.client]
id = "app-1"
auth = "private_key_jwt"
key = "client.pem"
alg = "ES256"

[routes.as.headers]
set = {{ "x-request-source" = "tokenrelay" }}
"#
    )
}

/// Starts tokenrelay with forward and HTTPS listeners in `dir` (which holds `as-ca.pem`)
/// against the AS on `as_port`, with the client key in `dir/client.pem` (made if missing).
async fn start(dir: &Path, as_port: u16, unknown: &str, hosts: &str) -> TestProxy {
    if !dir.join("client.pem").exists() {
        write_key(dir, "client.pem", Alg::ES256);
    }
    TestProxy::builder(config(as_port, unknown, hosts)).in_dir(dir).forward().tls().start().await
}

async fn as_and_proxy(unknown: &str, hosts: &str) -> (tempfile::TempDir, TlsRecorder, TestProxy) {
    let dir = tempfile::tempdir().unwrap();
    let up = TlsRecorder::start(dir.path(), "as-ca.pem", |_, _| Reply::token()).await;
    let proxy = start(dir.path(), up.port(), unknown, hosts).await;
    (dir, up, proxy)
}

/// What the AS on `as_port` must have received for a token request signed by `proxy`
/// (RFC 7523 §2.2 and §3, the route's header rules, and the real upstream's authority).
fn assert_signed(seen: &Seen, proxy: &TestProxy, as_port: u16) {
    let key = SigningKey::load(&std::fs::read(proxy.path("client.pem")).unwrap(), Alg::ES256).unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.param("grant_type").as_deref(), Some("client_credentials"));
    assert_eq!(
        seen.param("client_assertion_type").as_deref(),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    let assertion = seen.param("client_assertion").expect("client_assertion injected");
    jose::verify(&assertion, Alg::ES256, VerifyKey::Jwk(key.public_jwk())).unwrap();
    let claims = jwt::claims(&assertion);
    assert_eq!(claims["iss"], "app-1");
    assert_eq!(claims["sub"], "app-1");
    // aud describes the real upstream, never the name the app used or localhost.
    assert_eq!(claims["aud"], format!("https://127.0.0.1:{as_port}/token"));
    assert_eq!(seen.header("x-request-source").as_deref(), Some("tokenrelay"));
    // The request names the real upstream: HTTP/2 in `:authority` (a `Host`, if also sent,
    // must agree: RFC 9113 §8.3.1), HTTP/1.1 in `Host`.
    let upstream = format!("127.0.0.1:{as_port}");
    if seen.version == http::Version::HTTP_2 {
        assert_eq!(seen.authority.as_deref(), Some(upstream.as_str()), ":authority");
        assert!(seen.header("host").is_none_or(|host| host == upstream), "Host {:?}", seen.header("host"));
    } else {
        assert_eq!(seen.header("host"), Some(upstream), "Host");
    }
}

/// Runs curl; returns (http status, http version, body).
async fn curl(args: &[&str]) -> (u16, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code} %{http_version}"])
        .args(args)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("curl is required for the forward-mode tests: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut tail = tail.split(' ');
    let status = tail.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let version = tail.next().unwrap_or("").to_string();
    if status == 0 {
        panic!("curl {args:?} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    }
    (status, version, body.to_string())
}

/// Sends `CONNECT target` to the forward proxy; returns the response head and the stream.
async fn connect(forward: SocketAddr, target: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(forward).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    (head, s)
}

/// Reads an HTTP response head (and, for errors, whatever body follows within 2 s).
async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await.unwrap().unwrap();
        assert!(n > 0, "proxy closed before the end of the response head: {}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

async fn read_rest(s: &mut TcpStream) -> String {
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
    String::from_utf8_lossy(&rest).into_owned()
}

fn tls_client(ca: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// POSTs a token request with `host` over an HTTP/1.1 connection on `io`.
async fn post_token<I>(io: I, host: &str) -> (u16, serde_json::Value)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/token")
        .header("host", host)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(b"grant_type=client_credentials")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn curl_through_the_forward_proxy_gets_a_token_signed_for_the_real_host() {
    let (_dir, up, proxy) = as_and_proxy("tunnel", "").await;
    let url = format!("https://127.0.0.1:{}/token", up.port());
    let ca = proxy.path("ca.pem").display().to_string();
    for (flag, want_version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (status, version, body) =
            curl(&["-x", &proxy.forward_url(), "--cacert", &ca, flag, &url, "-d", "grant_type=client_credentials"])
                .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(version, want_version, "ALPN between the app and tokenrelay");
        assert!(body.contains(TOKEN), "{body}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_signed(s, &proxy, up.port());
    }
    let j1 = seen[0].param("client_assertion").unwrap();
    let j2 = seen[1].param("client_assertion").unwrap();
    assert_ne!(jwt::claims(&j1)["jti"], jwt::claims(&j2)["jti"], "RFC 7523 §3: a fresh jti per request");
    proxy.stop().await;
}

#[tokio::test]
async fn a_claimed_name_is_intercepted_and_relayed_to_the_upstream() {
    // The app uses a name that does not even resolve: tokenrelay claims it and relays to the
    // route's upstream; the query string and the path under the upstream survive.
    let (_dir, up, proxy) = as_and_proxy("refuse", r#"hosts = ["as.tokenrelay.test"]"#).await;
    let ca = proxy.path("ca.pem").display().to_string();
    let (status, _, body) = curl(&[
        "-x",
        &proxy.forward_url(),
        "--cacert",
        &ca,
        "https://as.tokenrelay.test/token?tenant=a",
        "-d",
        "grant_type=client_credentials",
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/token?tenant=a");
    assert_signed(&seen[0], &proxy, up.port());
    // 127.0.0.1 is no longer claimed (hosts replaces the default) and unknown hosts are refused.
    let (head, _) = connect(proxy.forward_addr(), &format!("127.0.0.1:{}", up.port())).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(up.seen().len(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn absolute_form_plain_http_to_a_claimed_host_is_signed() {
    let (_dir, up, proxy) = as_and_proxy("refuse", "").await;
    let http = reqwest::Client::builder().proxy(reqwest::Proxy::http(proxy.forward_url()).unwrap()).build().unwrap();
    let resp = http
        .post(format!("http://127.0.0.1:{}/token", up.port()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains(TOKEN));
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_signed(&seen[0], &proxy, up.port());
    proxy.stop().await;
}

#[tokio::test]
async fn mismatched_connect_target_host_or_sni_is_refused_and_nothing_is_signed() {
    let (_dir, up, proxy) = as_and_proxy("tunnel", "").await;
    let target = format!("127.0.0.1:{}", up.port());
    let ip = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();

    // Inner Host names another host than the CONNECT target: 421, OAuth-style JSON.
    let (head, stream) = connect(proxy.forward_addr(), &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let tls = tls_client(&proxy.path("ca.pem")).connect(ip.clone(), stream).await.unwrap();
    let (status, body) = post_token(tls, "evil.example").await;
    assert_eq!(status, 421, "{body}");
    assert_eq!(body["error"], "tokenrelay_error");
    assert!(body["error_description"].as_str().unwrap().contains("evil.example"), "{body}");

    // Same host, other port: also another origin.
    let (_, stream) = connect(proxy.forward_addr(), &target).await;
    let tls = tls_client(&proxy.path("ca.pem")).connect(ip.clone(), stream).await.unwrap();
    let (status, _) = post_token(tls, "127.0.0.1:1").await;
    assert_eq!(status, 421);

    // SNI names another host: the handshake is refused before any request.
    let (_, stream) = connect(proxy.forward_addr(), &target).await;
    let evil = rustls::pki_types::ServerName::try_from("evil.example").unwrap();
    let err = tls_client(&proxy.path("ca.pem")).connect(evil, stream).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("access"), "{err}");

    // Absolute-form with a disagreeing Host.
    let mut s = TcpStream::connect(proxy.forward_addr()).await.unwrap();
    let req = format!(
        "POST http://{target}/token HTTP/1.1\r\nHost: evil.example\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 29\r\nconnection: close\r\n\r\ngrant_type=client_credentials"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 421"), "{head}");
    assert!(read_rest(&mut s).await.contains("tokenrelay_error"));

    // The matching request on the same kind of connection works, so the refusals above were
    // about the mismatch alone.
    let (_, stream) = connect(proxy.forward_addr(), &target).await;
    let tls = tls_client(&proxy.path("ca.pem")).connect(ip, stream).await.unwrap();
    let (status, body) = post_token(tls, &target).await;
    assert_eq!(status, 200, "{body}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "only the matching request reached the AS");
    assert_signed(&seen[0], &proxy, up.port());
    proxy.stop().await;
}

/// A TCP server that records every byte it receives and answers `reply` once it has `expect`.
async fn raw_recorder(expect: usize, reply: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = vec![0u8; expect];
        s.read_exact(&mut got).await.unwrap();
        s.write_all(reply).await.unwrap();
        got
    });
    (addr, task)
}

#[tokio::test]
async fn connect_to_an_unclaimed_host_is_tunnelled_byte_for_byte() {
    let (dir, up, proxy) = as_and_proxy("tunnel", "").await;
    // Raw bytes: a TLS-looking record header followed by every byte value.
    let mut blob = b"\x16\x03\x01\x02\x00".to_vec();
    blob.extend((0..=255u8).cycle().take(4096));
    let (addr, server) = raw_recorder(blob.len(), b"pong").await;
    let (head, mut stream) = connect(proxy.forward_addr(), &addr.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream.write_all(&blob).await.unwrap();
    let mut pong = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut pong)).await.unwrap().unwrap();
    assert_eq!(&pong, b"pong");
    assert_eq!(server.await.unwrap(), blob, "the server saw the client's original bytes");

    // A real TLS session to another TLS server: the client verifies that server's own
    // certificate (not one from tokenrelay's CA) and the server sees the client's SNI.
    let other =
        TlsRecorder::start(dir.path(), "other-ca.pem", |_, _| Reply::json(200, serde_json::json!({"ok": true}))).await;
    let other_ca = reqwest::Certificate::from_pem(&std::fs::read(&other.ca_path).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .proxy(reqwest::Proxy::https(proxy.forward_url()).unwrap())
        .tls_built_in_root_certs(false)
        .add_root_certificate(other_ca)
        .build()
        .unwrap();
    let resp =
        http.post(format!("https://localhost:{}/token", other.port())).body("grant_type=x").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(other.sessions()[0].sni.as_deref(), Some("localhost"));
    let seen = other.seen();
    assert_eq!(seen[0].body_str(), "grant_type=x", "nothing injected into a tunnelled request");
    assert!(seen[0].param("client_assertion").is_none());
    assert!(up.seen().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn connect_to_an_unclaimed_host_is_refused_with_unknown_hosts_refuse() {
    let (_dir, up, proxy) = as_and_proxy("refuse", "").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (head, mut stream) = connect(proxy.forward_addr(), &addr.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let text = read_rest(&mut stream).await;
    assert!(text.contains("unknown_hosts") && text.contains(&addr.to_string()), "{text}");
    // Plain-HTTP absolute form is refused the same way.
    let mut s = TcpStream::connect(proxy.forward_addr()).await.unwrap();
    s.write_all(format!("GET http://{addr}/ HTTP/1.1\r\nHost: {addr}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 403"));
    // Nothing ever connected to the target.
    assert!(tokio::time::timeout(Duration::from_millis(200), listener.accept()).await.is_err());
    assert!(up.seen().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn https_reverse_listener_serves_a_leaf_from_the_local_ca() {
    let (_dir, up, proxy) = as_and_proxy("tunnel", "").await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(proxy.path("ca.pem")).unwrap()).unwrap();
    let http =
        reqwest::Client::builder().no_proxy().tls_built_in_root_certs(false).add_root_certificate(ca).build().unwrap();
    for host in ["localhost", "127.0.0.1"] {
        let resp = http
            .post(format!("https://{host}:{}/as/token", proxy.tls_port()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host}");
        assert!(resp.text().await.unwrap().contains(TOKEN));
    }
    // OpenSSL (curl) checks the CA's name constraints against the leaf too.
    let ca = proxy.path("ca.pem").display().to_string();
    let (status, _, body) = curl(&[
        "--cacert",
        &ca,
        &format!("https://localhost:{}/as/token", proxy.tls_port()),
        "-d",
        "grant_type=client_credentials",
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_signed(s, &proxy, up.port());
    }
    proxy.stop().await;
}

#[tokio::test]
async fn the_local_ca_is_created_once_with_a_private_key_and_reused() {
    let (dir, up, proxy) = as_and_proxy("tunnel", "").await;
    let pem = std::fs::read(proxy.path("ca.pem")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("ca-key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let der = CertificateDer::from_pem_slice(&pem).unwrap();
    let nc = tokenrelay::pki::name_constraints(&der).expect("the local CA is name-constrained");
    assert!(nc.permits("localhost") && nc.permits("127.0.0.1") && nc.permits("::1"));
    assert!(!nc.permits("example.com"));
    proxy.stop().await;
    let proxy = start(dir.path(), up.port(), "tunnel", "").await;
    assert_eq!(std::fs::read(proxy.path("ca.pem")).unwrap(), pem, "reused, not re-created");
    proxy.stop().await;
}

#[tokio::test]
async fn a_host_outside_the_ca_constraints_is_refused_with_the_fix() {
    let (dir, up, proxy) = as_and_proxy("tunnel", "").await;
    proxy.stop().await;
    // The CA was made for 127.0.0.1; the config now claims a new name.
    let proxy = start(dir.path(), up.port(), "tunnel", r#"hosts = ["new.tokenrelay.test"]"#).await;
    let (head, mut stream) = connect(proxy.forward_addr(), "new.tokenrelay.test:443").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let text = read_rest(&mut stream).await;
    assert!(text.contains("name-constrained") && text.contains("tokenrelay ca"), "{text}");
    assert!(up.seen().is_empty());
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------
// Apps that only know the printed environment.

/// Runs `tokenrelay ca` (the real binary) and returns its `export` lines as pairs.
fn printed_env(config: &Path) -> Vec<(String, String)> {
    let out =
        std::process::Command::new(BIN).args(["ca", "--config"]).arg(config).env("RUST_LOG", "warn").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "tokenrelay ca failed: {}", String::from_utf8_lossy(&out.stderr));
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            let v = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(v).replace(r"'\''", "'");
            (k.to_string(), v)
        })
        .collect()
}

fn env_value<'a>(env: &'a [(String, String)], name: &str) -> &'a str {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("{name} not printed"))
}

#[tokio::test]
async fn ca_command_prints_the_environment_and_a_merged_bundle() {
    let (_dir, up, proxy) = as_and_proxy("tunnel", "").await;
    let env = printed_env(&proxy.path("proxy.toml"));
    assert_eq!(env_value(&env, "HTTPS_PROXY"), proxy.forward_url());
    assert_eq!(env_value(&env, "NO_PROXY"), "localhost,::1", "127.0.0.1 is claimed, so it must go through the proxy");
    assert_eq!(env_value(&env, "NODE_USE_ENV_PROXY"), "1");
    assert_eq!(Path::new(env_value(&env, "NODE_EXTRA_CA_CERTS")), std::path::absolute(proxy.path("ca.pem")).unwrap());
    let bundle = env_value(&env, "SSL_CERT_FILE");
    assert_eq!(env_value(&env, "REQUESTS_CA_BUNDLE"), bundle);
    assert_eq!(env_value(&env, "CURL_CA_BUNDLE"), bundle);
    let text = std::fs::read_to_string(bundle).unwrap();
    let ca = std::fs::read_to_string(proxy.path("ca.pem")).unwrap();
    assert!(text.contains(ca.trim()), "the bundle holds the local CA");
    assert!(text.matches("BEGIN CERTIFICATE").count() > 10, "the bundle keeps the system roots");
    // Running it again (with SSL_CERT_FILE already pointing at the bundle) does not pile up.
    let again = std::process::Command::new(BIN)
        .args(["ca", "--config"])
        .arg(proxy.path("proxy.toml"))
        .env("SSL_CERT_FILE", bundle)
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(std::fs::read_to_string(bundle).unwrap().matches(ca.trim()).count(), 1);
    // curl with nothing but the printed environment.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-d", "grant_type=client_credentials"])
        .arg(format!("https://127.0.0.1:{}/token", up.port()))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(TOKEN), "{}", String::from_utf8_lossy(&out.stderr));
    assert_signed(&up.seen()[0], &proxy, up.port());
    proxy.stop().await;
}

/// Runs `cmd` with the printed environment; parses the JSON line the app prints.
async fn run_app(mut cmd: tokio::process::Command, env: &[(String, String)]) -> serde_json::Value {
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))).stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output()).await.expect("app timed out").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "app failed ({}):\n{stdout}\n{stderr}", out.status);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("app printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// `tests/node_app` with its dependencies installed.
fn node_app() -> PathBuf {
    let dir = tests_dir("node_app");
    install_once(&dir, &dir.join("node_modules/undici/package.json"), || npm_install(&dir))
        .unwrap_or_else(|e| panic!("Node.js (>= 20) and npm are required for the forward-mode Node test: {e}"));
    dir
}

/// The Python of `tests/py_app/.venv`, with `requests` installed.
fn py_app() -> PathBuf {
    let dir = tests_dir("py_app");
    let python = dir.join(".venv/bin/python");
    let marker = dir.join(".venv/.requests-installed");
    install_once(&dir, &marker, || {
        run("python3", &["-m", "venv", ".venv"], &dir)?;
        run(python.to_str().unwrap_or_default(), &["-m", "pip", "install", "-q", "-r", "requirements.txt"], &dir)?;
        std::fs::write(&marker, b"").map_err(|e| e.to_string())
    })
    .unwrap_or_else(|e| panic!("python3 with venv and pip is required for the forward-mode Python test: {e}"));
    python
}

/// Runs `program script <token URL>` in the script's folder with nothing but the printed
/// environment: the app gets its token, and the AS received one signed request carrying the
/// app's own `scope`.
async fn app_gets_a_token(program: &Path, script: &Path, scope: &str) {
    let (_dir, up, proxy) = as_and_proxy("tunnel", "").await;
    let env = printed_env(&proxy.path("proxy.toml"));
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(script).arg(format!("https://127.0.0.1:{}/token", up.port())).current_dir(script.parent().unwrap());
    let out = run_app(cmd, &env).await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["body"]["access_token"], TOKEN);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_signed(&seen[0], &proxy, up.port());
    assert_eq!(seen[0].param("scope").as_deref(), Some(scope));
    proxy.stop().await;
}

#[tokio::test]
async fn node_fetch_app_with_the_printed_environment_gets_a_token() {
    let dir = tokio::task::spawn_blocking(node_app).await.unwrap();
    app_gets_a_token(Path::new("node"), &dir.join("app.mjs"), "node").await;
}

#[tokio::test]
async fn python_requests_app_with_the_printed_environment_gets_a_token() {
    let python = tokio::task::spawn_blocking(py_app).await.unwrap();
    app_gets_a_token(&python, &tests_dir("py_app").join("app.py"), "python").await;
}
