//! Listeners: accept connections and serve them with hyper until shutdown.
//!
//! `serve(listener, handler, shutdown)` takes an already-bound listener so tests can bind
//! `127.0.0.1:0` and read the port. Header reads are bounded by a timeout (which only works
//! because a timer is configured), so an idle or slow client cannot hold a task forever.
//! [`serve_tls`] is the same over TLS (the `listen_tls` listener), with a bounded handshake;
//! [`serve_upgradable`] lets the forward proxy take over a connection after `CONNECT`, and
//! [`serve_connection`] serves the TLS stream inside such a tunnel.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::body::Body;

/// How long a client may take to send request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to finish a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection a request arrived on.
#[derive(Debug, Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    /// The client certificate (leaf, DER) presented in the TLS handshake, if any: the demo
    /// AS checks it for RFC 8705 client authentication.
    pub peer_cert: Option<Arc<[u8]>>,
    /// The connection is TLS (the app used an `https://` URL).
    pub tls: bool,
}

impl Conn {
    /// A plain-TCP connection from `peer`.
    pub fn plain(peer: SocketAddr) -> Conn {
        Conn { peer, peer_cert: None, tls: false }
    }
}

/// A request handler: `(request, connection) -> response`.
pub trait Handler: Send + Sync + 'static {
    fn call(self: Arc<Self>, req: Request<Incoming>, conn: Conn) -> impl Future<Output = Response<Body>> + Send;
}

/// Resolves when `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Accepts connections on `listener` until `shutdown` turns true, serving each with `handler`.
/// In-flight connections finish gracefully on shutdown.
pub async fn serve<H: Handler>(listener: TcpListener, handler: Arc<H>, shutdown: watch::Receiver<bool>) {
    serve_with(listener, Mode::Plain, handler, shutdown).await
}

/// Like [`serve`], over TLS with `tls` (ALPN h2 and http/1.1 are negotiated by the config).
/// A client gets [`HANDSHAKE_TIMEOUT`] to finish the handshake.
pub async fn serve_tls<H: Handler>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handler: Arc<H>,
    shutdown: watch::Receiver<bool>,
) {
    serve_with(listener, Mode::Tls(TlsAcceptor::from(tls)), handler, shutdown).await
}

/// Like [`serve`], with HTTP/1.1 upgrades enabled so the handler can take over a connection
/// after answering `CONNECT` (the forward proxy).
pub async fn serve_upgradable<H: Handler>(listener: TcpListener, handler: Arc<H>, shutdown: watch::Receiver<bool>) {
    serve_with(listener, Mode::Upgrades, handler, shutdown).await
}

#[derive(Clone)]
enum Mode {
    Plain,
    Tls(TlsAcceptor),
    Upgrades,
}

fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    // Idle HTTP/2 connections are pinged and closed when the peer is gone.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

fn service<H: Handler>(
    handler: Arc<H>,
    conn: Conn,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    service_fn(move |req| {
        let (handler, conn) = (handler.clone(), conn.clone());
        async move { Ok::<_, Infallible>(handler.call(req, conn).await) }
    })
}

async fn serve_with<H: Handler>(
    listener: TcpListener,
    mode: Mode,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let mode = mode.clone();
        tokio::spawn(async move {
            let result = match mode {
                Mode::Plain => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service(handler, Conn::plain(peer)));
                    watcher.watch(conn.into_owned()).await
                }
                Mode::Upgrades => {
                    let service = service(handler, Conn::plain(peer));
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
                Mode::Tls(acceptor) => {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    };
                    let peer_cert =
                        tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Arc::from(c.as_ref()));
                    let conn = builder
                        .serve_connection(TokioIo::new(tls), service(handler, Conn { peer, peer_cert, tls: true }));
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => tracing::debug!("shutdown: gave up waiting for connections"),
    }
}

/// Serves one already-established connection (a TLS stream inside a `CONNECT` tunnel) with
/// HTTP/1.1 or HTTP/2 until it ends; on `shutdown` it is closed gracefully, waiting at most
/// 5 seconds for requests in flight.
pub async fn serve_connection<I, H>(io: I, handler: Arc<H>, conn: Conn, mut shutdown: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let builder = builder();
    let peer = conn.peer;
    let conn = builder.serve_connection(TokioIo::new(io), service(handler, conn));
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}
