//! A recording upstream over TLS: an "AS" on 127.0.0.1:0 with a CA and a server certificate of
//! its own from the test PKI ([`super::pki`]). Keeps every request as it arrived, like
//! [`super::upstream::Recorder`], plus the SNI and ALPN of every TLS session, so tests can tell
//! an intercepted connection from a tunnelled one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use super::pki::TestCa;
use super::upstream::{Behaviour, Reply, Seen};

/// One TLS session as the server saw it.
#[derive(Debug, Clone)]
pub struct Session {
    pub sni: Option<String>,
    pub alpn: Option<String>,
}

pub struct TlsRecorder {
    pub addr: SocketAddr,
    /// The test PKI's CA certificate (PEM): what a client must trust.
    pub ca_path: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
    sessions: Arc<Mutex<Vec<Session>>>,
    task: tokio::task::JoinHandle<()>,
}

/// A rustls server config for `names` issued by a fresh CA written to `ca_path`.
pub fn server_config(ca_path: &Path, names: &[&str]) -> rustls::ServerConfig {
    let ca = TestCa::new("tokenrelay test AS CA");
    ca.write(ca_path);
    let leaf = ca.server(names);
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(leaf.der)], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

impl TlsRecorder {
    /// Starts on 127.0.0.1:0 with a leaf for `localhost` and `127.0.0.1`; the CA goes to
    /// `dir/<ca_file>`.
    pub async fn start(
        dir: &Path,
        ca_file: &str,
        behaviour: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static,
    ) -> TlsRecorder {
        let ca_path = dir.join(ca_file);
        let config = Arc::new(server_config(&ca_path, &["localhost", "127.0.0.1"]));
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let sessions: Arc<Mutex<Vec<Session>>> = Arc::default();
        let behaviour: Arc<Behaviour> = Arc::new(behaviour);
        let (seen2, sessions2) = (seen.clone(), sessions.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (seen, sessions, behaviour, acceptor) =
                    (seen2.clone(), sessions2.clone(), behaviour.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let conn = tls.get_ref().1;
                    sessions.lock().unwrap().push(Session {
                        sni: conn.server_name().map(str::to_string),
                        alpn: conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
                    });
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        super::upstream::record_and_reply(seen.clone(), behaviour.clone(), req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsRecorder { addr, ca_path, seen, sessions, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn sessions(&self) -> Vec<Session> {
        self.sessions.lock().unwrap().clone()
    }
}

impl Drop for TlsRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
