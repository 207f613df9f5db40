//! Forward mode (`[proxy] forward`): an HTTP proxy for apps that cannot change their token
//! endpoint. The app runs with `HTTPS_PROXY=http://127.0.0.1:8788` and the local CA trusted.
//!
//! - `CONNECT host:port` to a host a route claims is intercepted: TLS is terminated with a leaf
//!   for that host minted by the [local CA](crate::local_ca) (h2 or http/1.1 by ALPN), and every
//!   inner request runs through the same pipeline as reverse mode ([`proxy::handle_entry`] with
//!   [`Entry::Forward`]), relayed with the route's TLS identity to the route's `upstream`.
//! - The CONNECT target, the SNI and each inner request's `Host` / `:authority` must name the
//!   same host (and port): the SNI is checked by the certificate resolver, which refuses the
//!   handshake (`access_denied` alert) on a mismatch; `Host` is checked per request, a
//!   mismatch is answered `421` with an OAuth-style JSON body and nothing is signed or relayed.
//! - `CONNECT` to any other host is tunnelled byte for byte, or refused with `403` when
//!   `[proxy] unknown_hosts = "refuse"`.
//! - Absolute-form requests (`POST http://host/token`, what `HTTP_PROXY` clients send) follow
//!   the same rules: claimed hosts go through the pipeline, others are relayed as they are or
//!   refused.
//!
//! Which route claims a target: see `claim` (`src/forward/claim.rs`).
//!
//! A request on a claimed host whose path lies outside the route's upstream base path (say
//! discovery at `/.well-known/...` when `upstream = "https://as/oauth2"`) cannot be an endpoint
//! the route signs, so it is relayed untouched through the route's TLS client rather than
//! refused: refusing would break the app's other calls to the same host.
//!
//! [`spawn`] serves this listener; [`crate::app`] binds it and loads the local CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::body::{self, Body};
use crate::local_ca::{self, LocalCa};
mod claim;

use crate::config::host::Authority as Target;
use crate::config::{Config, UnknownHosts};
use crate::error::ProxyError;
use crate::proxy::{self, Entry, Shared};
use crate::rewrite::hop;
use crate::server::{self, Handler};
use crate::snapshot::{Route, Snapshot};
use claim::{check_authority, claim, rest_of};

/// How long connecting to a tunnelled host may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an unclaimed plain-HTTP host may take to answer.
const PLAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves forward mode on `listener` until shutdown, intercepting with leaves from `ca`.
/// Its connections, tunnels included, count against `connections`, the budget every
/// listener shares.
pub fn spawn(
    listener: TcpListener,
    ca: Arc<LocalCa>,
    config: &Config,
    shared: &Arc<Shared>,
    connections: &Arc<server::Tracker>,
    shutdown: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    for route in &config.routes {
        for entry in &route.hosts {
            if let Some(why) = ca.refusal(&entry.host) {
                tracing::warn!(route = %route.name, "forward mode cannot intercept {}: {why}", entry.host);
            }
        }
    }
    let proxy = Arc::new(ForwardProxy::new(shared.clone(), ca, shutdown.clone()));
    tokio::spawn(server::serve_upgradable(listener, proxy, connections.clone(), shutdown.clone()))
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    msg.push('\n');
    let mut resp = Response::new(body::full(Bytes::from(msg)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// `421 Misdirected Request` with the OAuth-style body the pipeline uses for its own errors.
fn misdirected(msg: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": "tokenrelay_error", "error_description": msg });
    let mut resp = Response::new(body::full(Bytes::from(body.to_string())));
    *resp.status_mut() = StatusCode::MISDIRECTED_REQUEST;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The forward proxy: one per `[proxy] forward` listener.
pub struct ForwardProxy {
    shared: Arc<Shared>,
    ca: Arc<LocalCa>,
    plain: Client<HttpConnector, Incoming>,
    shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for ForwardProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardProxy").field("ca", &self.ca).finish_non_exhaustive()
    }
}

impl ForwardProxy {
    /// A forward proxy over the live snapshot in `shared`, minting from `ca`. Tunnels and
    /// intercepted connections end when `shutdown` turns true.
    pub fn new(shared: Arc<Shared>, ca: Arc<LocalCa>, shutdown: watch::Receiver<bool>) -> ForwardProxy {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let plain = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(http);
        ForwardProxy { shared, ca, plain, shutdown }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.borrow().clone()
    }

    async fn connect(self: Arc<Self>, mut req: Request<Incoming>, conn: server::Conn) -> Response<Body> {
        let peer = conn.peer;
        let Some(target) = req.uri().authority().and_then(|a| Target::parse(a.as_str(), 443)) else {
            return text(StatusCode::BAD_REQUEST, format!("CONNECT needs host:port, got {:?}", req.uri().to_string()));
        };
        let snapshot = self.snapshot();
        if let Some(route) = claim(&snapshot, &target) {
            if let Some(why) = self.ca.refusal(&target.host) {
                tracing::warn!(%target, route = %route.cfg.name, "CONNECT refused: {why}");
                return text(StatusCode::BAD_GATEWAY, format!("tokenrelay: {why}"));
            }
            // Mint before answering 200, so a CA problem is a clear answer, not a failed handshake.
            let key = match self.ca.server_key(&[target.host.as_str()]) {
                Ok(key) => key,
                Err(e) => {
                    tracing::error!(%target, "CONNECT refused: {e}");
                    return text(StatusCode::BAD_GATEWAY, format!("tokenrelay: {e}"));
                }
            };
            tracing::info!(%target, %peer, route = %route.cfg.name, "CONNECT intercepted");
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(self.intercept(on_upgrade, target, key, conn));
            return Response::new(body::full(Bytes::new()));
        }
        if snapshot.config.unknown_hosts == UnknownHosts::Refuse {
            tracing::info!(%target, %peer, "CONNECT refused: no route claims the host");
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "tokenrelay: CONNECT to {target} refused: no route claims this host and [proxy] unknown_hosts = \"refuse\" \
                     (claim it with routes.<name>.hosts, or set unknown_hosts = \"tunnel\")"
                ),
            );
        }
        let upstream = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return text(StatusCode::BAD_GATEWAY, format!("tokenrelay: cannot connect to {target}: {e}")),
            Err(_) => {
                return text(StatusCode::GATEWAY_TIMEOUT, format!("tokenrelay: connecting to {target} timed out"))
            }
        };
        let _ = upstream.set_nodelay(true);
        tracing::info!(%target, %peer, "CONNECT tunnelled (no route claims this host)");
        let on_upgrade = hyper::upgrade::on(&mut req);
        // The tunnel keeps the connection's slot: it counts against the cap until it ends.
        conn.slot.mark_tunnel();
        tokio::spawn(tunnel(on_upgrade, upstream, target, conn.slot, self.shutdown.clone()));
        Response::new(body::full(Bytes::new()))
    }

    async fn intercept(
        self: Arc<Self>,
        on_upgrade: hyper::upgrade::OnUpgrade,
        target: Target,
        key: Arc<CertifiedKey>,
        conn: server::Conn,
    ) {
        let peer = conn.peer;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return tracing::debug!(%target, "CONNECT upgrade failed: {e}"),
        };
        let resolver = Arc::new(SniCheck { host: target.host.clone(), key });
        let config = match local_ca::server_config(resolver) {
            Ok(c) => c,
            Err(e) => return tracing::error!(%target, "{e}"),
        };
        let accepted =
            tokio::time::timeout(server::HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(TokioIo::new(upgraded)))
                .await;
        let tls = match accepted {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return tracing::warn!(%target, %peer, "TLS handshake inside CONNECT failed: {e}"),
            Err(_) => return tracing::warn!(%target, %peer, "TLS handshake inside CONNECT timed out"),
        };
        let handler = Arc::new(Intercepted { proxy: self.clone(), target });
        // The inner connection keeps the CONNECT connection's slot: its requests count as in
        // flight, and it idles out or is shed like any other connection.
        let conn = server::Conn { tls: false, peer_cert: None, ..conn };
        server::serve_connection(tls, handler, conn, self.shutdown.clone()).await;
    }

    /// A request for a claimed host: the pipeline when the path is under the route's upstream
    /// path, untouched otherwise. The route is looked up again on the live snapshot.
    async fn relay_claimed(&self, req: Request<Incoming>, peer: SocketAddr, target: &Target) -> Response<Body> {
        let snapshot = self.snapshot();
        let Some(route) = claim(&snapshot, target) else {
            return misdirected(&format!(
                "no route claims {target} any more (the config changed); open a new connection"
            ));
        };
        // The path as the AS will resolve it (RFC 3986 §5.2.4): `/base/../token` is `/token`,
        // outside the base path, never the pipeline's `/base` + `/../token`.
        let resolved = match proxy::resolve_upstream_path(route, req.uri().path()) {
            Ok(p) => p.into_owned(),
            Err(e) => return e.into_response(),
        };
        // A host the route's `hosts` claim is relayed to the upstream. A host claimed for a
        // metadata endpoint on another origin goes to that origin, which has no base path:
        // every path on it goes through the pipeline (signed at the endpoint, guarded elsewhere).
        let origin = claim::metadata_origin(route, target).unwrap_or_else(|| route.cfg.upstream.origin().to_string());
        let base = if origin == route.cfg.upstream.origin() { route.cfg.upstream.base_path.as_str() } else { "" };
        match rest_of(&resolved, base) {
            Some(rest) => {
                let entry = Entry::Forward { snapshot: snapshot.clone(), route: route.clone(), origin, rest };
                proxy::handle_entry(self.shared.clone(), req, peer, entry).await
            }
            None => match passthrough(route, &origin, snapshot.config.max_body, req).await {
                Ok(resp) => resp,
                Err(e) => e.into_response(),
            },
        }
    }

    /// An absolute-form request (`POST http://host/path`), what `HTTP_PROXY` clients send.
    async fn absolute(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let default_port = if req.uri().scheme_str() == Some("https") { 443 } else { 80 };
        let Some(target) = req.uri().authority().and_then(|a| Target::parse(a.as_str(), default_port)) else {
            return text(StatusCode::BAD_REQUEST, "tokenrelay: absolute-form request without a host");
        };
        if let Err(why) = check_authority(req.uri(), req.headers(), &target, default_port) {
            tracing::warn!(%target, %peer, "refused: {why}");
            return misdirected(&why);
        }
        let snapshot = self.snapshot();
        if claim(&snapshot, &target).is_some() {
            return self.relay_claimed(req, peer, &target).await;
        }
        if snapshot.config.unknown_hosts == UnknownHosts::Refuse {
            return text(
                StatusCode::FORBIDDEN,
                format!("tokenrelay: request to {target} refused: no route claims this host and [proxy] unknown_hosts = \"refuse\""),
            );
        }
        if req.uri().scheme_str() != Some("http") {
            return text(StatusCode::BAD_REQUEST, "tokenrelay: use CONNECT for https:// URLs");
        }
        let (mut parts, body) = req.into_parts();
        hop::strip(&mut parts.headers);
        parts.headers.remove("proxy-connection");
        parts.headers.remove(header::PROXY_AUTHORIZATION);
        let req = Request::from_parts(parts, body);
        match tokio::time::timeout(PLAIN_TIMEOUT, self.plain.request(req)).await {
            Ok(Ok(resp)) => {
                let (mut parts, incoming) = resp.into_parts();
                hop::strip(&mut parts.headers);
                Response::from_parts(parts, body::boxed(incoming))
            }
            Ok(Err(e)) => text(StatusCode::BAD_GATEWAY, format!("tokenrelay: {target}: {e}")),
            Err(_) => text(StatusCode::GATEWAY_TIMEOUT, format!("tokenrelay: {target} did not answer in time")),
        }
    }
}

impl Handler for ForwardProxy {
    async fn call(self: Arc<Self>, req: Request<Incoming>, conn: server::Conn) -> Response<Body> {
        let peer = conn.peer;
        if req.method() == Method::CONNECT {
            return self.connect(req, conn).await;
        }
        if req.uri().scheme().is_some() && req.uri().authority().is_some() {
            return self.absolute(req, peer).await;
        }
        text(
            StatusCode::BAD_REQUEST,
            "tokenrelay: this is the forward proxy (HTTPS_PROXY); send CONNECT or absolute-form requests. \
             For reverse mode use the [proxy] listen address with a route prefix.",
        )
    }
}

/// The TLS session inside one intercepted CONNECT.
struct Intercepted {
    proxy: Arc<ForwardProxy>,
    target: Target,
}

impl Handler for Intercepted {
    async fn call(self: Arc<Self>, req: Request<Incoming>, conn: server::Conn) -> Response<Body> {
        let peer = conn.peer;
        if let Err(why) = check_authority(req.uri(), req.headers(), &self.target, 443) {
            tracing::warn!(target = %self.target, %peer, "refused: {why}");
            return misdirected(&why);
        }
        self.proxy.relay_claimed(req, peer, &self.target).await
    }
}

/// Serves the minted leaf only when the client's SNI (if any) names the CONNECT target;
/// otherwise resolves nothing, and rustls ends the handshake with `access_denied`. Clients
/// send no SNI for IP literals (RFC 6066 §3), so a missing SNI is accepted.
#[derive(Debug)]
struct SniCheck {
    host: String,
    key: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniCheck {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            Some(sni) if !sni.eq_ignore_ascii_case(&self.host) => {
                tracing::warn!(connect = %self.host, sni, "TLS refused: SNI does not match the CONNECT target");
                None
            }
            _ => Some(self.key.clone()),
        }
    }
}

/// Relays bytes both ways between the app and `target` until either side closes, the tunnel
/// carries nothing for [`server::TUNNEL_IDLE_TIMEOUT`], it is shed at the connection cap
/// (only once quiet), or shutdown, after which it lives until quiet for a second (a tunnel
/// is opaque: quiet is the only sign that nothing is in flight inside), at most until the
/// listener's shutdown grace ends.
async fn tunnel(
    on_upgrade: hyper::upgrade::OnUpgrade,
    upstream: TcpStream,
    target: Target,
    slot: server::Slot,
    mut shutdown: watch::Receiver<bool>,
) {
    let upgraded = tokio::select! {
        u = on_upgrade => match u {
            Ok(u) => u,
            Err(e) => return tracing::debug!(%target, "CONNECT upgrade failed: {e}"),
        },
        why = slot.closed(server::IDLE_TIMEOUT) => return tracing::debug!(%target, "CONNECT upgrade abandoned: {why}"),
    };
    slot.touch();
    let mut client = server::Metered::new(TokioIo::new(upgraded), slot.clone());
    let mut upstream = server::Metered::new(upstream, slot.clone());
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
            Ok((up, down)) => tracing::debug!(%target, up, down, "tunnel closed"),
            Err(e) => tracing::debug!(%target, "tunnel ended: {e}"),
        },
        why = slot.closed(server::TUNNEL_IDLE_TIMEOUT) => tracing::debug!(%target, "tunnel closed: {why}"),
        why = async {
            server::stopped(&mut shutdown).await;
            slot.closed(Duration::from_secs(1)).await
        } => tracing::debug!(%target, "tunnel closed at shutdown: {why}"),
    }
}

/// Relays a request on a claimed host outside the route's upstream path as it is, through
/// the route's client (its TLS identity and trust), hop-by-hop headers removed.
async fn passthrough(
    route: &Route,
    origin: &str,
    limit: usize,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let (parts, body) = req.into_parts();
    // A client that stalls mid-body must not hold its connection slot.
    let collected = tokio::time::timeout(server::HEADER_READ_TIMEOUT, Limited::new(body, limit).collect())
        .await
        .map_err(|_| ProxyError::BadRequest("the request body did not arrive in time".into()))?;
    let body = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err(ProxyError::TooLarge { limit })
        }
        Err(e) => return Err(ProxyError::BadRequest(format!("could not read the request body: {e}"))),
    };
    // Fail closed: on a signing route, a form POST outside the upstream path may be a token
    // endpoint the config does not describe; never relay it unsigned.
    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    if route.signs() {
        // A spelling of a signed endpoint (`/b/../oauth2/token`) outside the base path, or
        // credentials on their way to the AS unsigned.
        proxy::check_unsigned(route, origin, parts.uri.path(), parts.uri.query(), &parts.headers, &body).await?;
    }
    if route.signs() && parts.method == http::Method::POST && is_form {
        return Err(ProxyError::Signing(format!(
            "route {:?} signs requests, but {} is outside its upstream {}; refusing to relay a form POST unsigned \
             (point routes.{}.upstream at the base path that holds the token endpoint)",
            route.cfg.name,
            parts.uri.path(),
            route.cfg.upstream.url(""),
            route.cfg.name
        )));
    }
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("{origin}{path}");
    // Logs and error texts name the URL without its query (it may carry tokens or codes).
    let shown = format!("{origin}{}", parts.uri.path());
    let mut headers = parts.headers;
    hop::strip(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    if !body.is_empty() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = parts.method;
    *out.uri_mut() = url
        .parse()
        .map_err(|_| ProxyError::BadRequest("the request path does not form a valid upstream URL".into()))?;
    *out.headers_mut() = headers;
    let resp = match tokio::time::timeout(route.cfg.timeout, route.client.request(out)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            return Err(ProxyError::Upstream(crate::upstream::classify(&e, &shown, &proxy::route_urls(route))))
        }
        Err(_) => {
            return Err(ProxyError::Timeout {
                url: shown,
                route: route.cfg.name.clone(),
                after: route.cfg.timeout,
                finishing: false,
            })
        }
    };
    tracing::info!(route = %route.cfg.name, url = %shown, status = resp.status().as_u16(), "relayed untouched (outside the route's upstream path)");
    let (mut parts, incoming) = resp.into_parts();
    hop::strip(&mut parts.headers);
    Ok(Response::from_parts(parts, body::boxed(incoming)))
}
