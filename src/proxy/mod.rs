//! The request pipeline: route match → exposure checks → buffer body (limited) → rewrite
//! steps in fixed order (hop-by-hop → headers/params → client auth → DPoP) → upstream →
//! `use_dpop_nonce`? re-sign everything and retry once → response back to the app.
//!
//! - [`guard`]: who may make the proxy sign (loopback `Host`, no foreign `Origin`) and which
//!   spellings of a signed endpoint are accepted;
//! - [`target`]: the upstream URL as the AS sees it (mTLS aliases, DPoP `htu`);
//! - [`signing`]: the one sign → send → nonce → retry loop.
//!
//! Fail closed: a route that signs never forwards a request it could not sign.

mod guard;
mod metadata;
mod signing;
mod target;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::body::Body;
use crate::error::ProxyError;
use crate::rewrite::client_auth::{self, Injected};
use crate::rewrite::dpop::NonceCache;
use crate::rewrite::form::Form;
use crate::rewrite::{headers as header_rules, hop, params};
use crate::snapshot::{Route, Snapshot};
use crate::status::{self, ReloadStatus};
use guard::{check_exposure, check_origin};
use signing::{Outgoing, Payload};
use target::resolve_target;

/// State shared by every connection: the live snapshot and what outlives reloads.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub nonces: NonceCache,
    /// Reload counters for `GET /.tokenrelay/status` (set by `app::start`).
    pub reload: Arc<ReloadStatus>,
}

impl Shared {
    pub fn new(snapshot: watch::Receiver<Arc<Snapshot>>) -> Shared {
        Shared { snapshot, nonces: NonceCache::default(), reload: Arc::default() }
    }
}

/// What one exchange did, for its log line.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    route: String,
    injected: Injected,
    dpop_jti: Option<String>,
    attempts: u32,
    upstream_ms: u128,
    changed_params: Vec<String>,
}

/// How a request reached the pipeline.
#[derive(Debug, Clone)]
pub enum Entry {
    /// Reverse mode: the route is chosen by path prefix; Host/Origin exposure checks apply.
    /// `https`: the app came in over the HTTPS listener.
    Reverse { https: bool },
    /// Forward mode: the listener already chose the route (by CONNECT host, after checking
    /// that target, SNI and Host agree); `rest` is the path relative to the route's upstream.
    /// `snapshot` is the one the route was chosen from, so a reload in between cannot send
    /// the request to an upstream that no longer claims the host.
    Forward { snapshot: Arc<Snapshot>, route: Arc<Route>, rest: String },
}

/// Serves one reverse-mode request from the app. Never panics on input; every failure is
/// an answer.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>, conn: crate::server::Conn) -> Response<Body> {
    handle_entry(shared, req, conn.peer, Entry::Reverse { https: conn.tls }).await
}

/// Serves one request that entered through `entry`.
pub async fn handle_entry(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
    entry: Entry,
) -> Response<Body> {
    let snapshot = match &entry {
        Entry::Forward { snapshot, .. } => snapshot.clone(),
        Entry::Reverse { .. } => shared.snapshot.borrow().clone(),
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("exchange", %method, %path, %peer);
    async move {
        let started = Instant::now();
        let mut outcome = Outcome::default();
        let (resp, refused) = match relay(&shared, &snapshot, req, entry, &mut outcome).await {
            Ok(resp) => (resp, None),
            Err(e) => {
                let why = e.to_string();
                (e.into_response(), Some(why))
            }
        };
        // One line per exchange; a refusal is the same line at warn, with the reason.
        macro_rules! exchange_line {
            ($level:ident) => {
                tracing::$level!(
                    route = %outcome.route,
                    status = resp.status().as_u16(),
                    upstream_ms = outcome.upstream_ms as u64,
                    total_ms = started.elapsed().as_millis() as u64,
                    attempts = outcome.attempts,
                    auth = outcome.injected.method,
                    kid = outcome.injected.kid.as_deref().unwrap_or("-"),
                    jti = outcome.injected.jti.as_deref().unwrap_or("-"),
                    dpop_jti = outcome.dpop_jti.as_deref().unwrap_or("-"),
                    removed = ?outcome.injected.removed,
                    params = ?outcome.changed_params,
                    refused = refused.as_deref().unwrap_or("-"),
                    "exchange"
                )
            };
        }
        if refused.is_some() {
            exchange_line!(warn);
        } else {
            exchange_line!(info);
        }
        resp
    }
    .instrument(span)
    .await
}

/// A form POST needs no CORS preflight, so any web page could make a
async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ProxyError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ProxyError::TooLarge { limit }),
        Err(e) => Err(ProxyError::BadRequest(format!("could not read the request body: {e}"))),
    }
}

async fn relay(
    shared: &Shared,
    snapshot: &Snapshot,
    req: Request<Incoming>,
    entry: Entry,
    outcome: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    if let Entry::Reverse { https } = &entry {
        let https = *https;
        if path == status::STATUS_PATH {
            check_exposure(&parts.headers, &parts.uri, &snapshot.config.allow_origins)?;
            outcome.route = "status".into();
            return Ok(status::response(&shared.reload));
        }
        if let Some(route) = metadata::route_for(snapshot, &parts.method, path) {
            check_exposure(&parts.headers, &parts.uri, &snapshot.config.allow_origins)?;
            outcome.route = route.cfg.name.clone();
            return metadata::answer(route, &parts, https).await;
        }
    }
    let (route, rest) = match &entry {
        Entry::Reverse { .. } => {
            check_exposure(&parts.headers, &parts.uri, &snapshot.config.allow_origins)?;
            snapshot
                .route_for(path)
                .ok_or_else(|| ProxyError::NoRoute { path: path.to_string(), prefixes: snapshot.prefixes() })?
        }
        Entry::Forward { route, rest, .. } => {
            // Browsers can be configured to use a forward proxy too: same cross-site guard.
            check_origin(&parts.headers, &snapshot.config.allow_origins)?;
            (route, rest.as_str())
        }
    };
    outcome.route = route.cfg.name.clone();
    // RFC 9112 §6.1: Content-Length with Transfer-Encoding is a smuggling vector.
    if parts.headers.contains_key(header::CONTENT_LENGTH) && parts.headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(ProxyError::BadRequest("both Content-Length and Transfer-Encoding sent (RFC 9112 §6.1)".into()));
    }
    let limit = snapshot.config.max_body;
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ProxyError::TooLarge { limit });
    }
    // A client that stalls mid-body must not hold the task: hyper's header timeout ends
    // with the headers.
    let body = tokio::time::timeout(crate::server::HEADER_READ_TIMEOUT, read_body(body, limit))
        .await
        .map_err(|_| ProxyError::BadRequest("the request body did not arrive in time".into()))??;

    let target = resolve_target(route, rest, parts.uri.query()).await?;
    let mut headers = parts.headers.clone();
    hop::strip(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    header_rules::apply(&route.cfg.headers, &mut headers);

    let exchange = if target.auth_endpoint {
        Exchange::token(route, &parts.method, &headers, &body)?
    } else {
        Exchange::resource(route, &headers)
    };
    let payload = match exchange {
        Exchange::Token { mut form } => {
            outcome.changed_params = params::apply(&route.cfg.params, &mut form);
            Payload::Token(form)
        }
        Exchange::Resource { access_token: Some(token) } if route.dpop_key.is_some() => {
            return signing::exchange(
                shared,
                route,
                Outgoing {
                    method: &parts.method,
                    target: &target,
                    headers,
                    payload: Payload::Resource { body, token: &token },
                },
                outcome,
            )
            .await;
        }
        Exchange::Resource { .. } => Payload::Plain(body),
    };
    signing::exchange(shared, route, Outgoing { method: &parts.method, target: &target, headers, payload }, outcome)
        .await
}

/// What kind of exchange a request is.
enum Exchange {
    /// A client-authenticated endpoint (token, PAR, ...): form POST, to be signed.
    Token { form: Form },
    /// Anything else; carries the access token when the app sent one.
    Resource { access_token: Option<String> },
}

impl Exchange {
    fn token(route: &Route, method: &Method, headers: &HeaderMap, body: &Bytes) -> Result<Exchange, ProxyError> {
        let rewrites =
            route.cfg.client.is_some() || route.dpop_key.is_some() || route.cfg.params.names().next().is_some();
        if !rewrites {
            return Ok(Exchange::Resource { access_token: None });
        }
        if method != Method::POST {
            return Err(ProxyError::BadRequest(format!(
                "{method} to a token endpoint; token requests must be POST (RFC 6749 §3.2)"
            )));
        }
        if !guard::is_form(headers) {
            return Err(ProxyError::BadRequest(
                "token requests must be application/x-www-form-urlencoded (RFC 6749 §3.2, Appendix B)".into(),
            ));
        }
        let form = Form::parse(body);
        // RFC 6749 §3.1: no parameter twice; for those tokenrelay reads or writes, refuse.
        form.check_single(client_auth::OWNED_PARAMS.iter().copied().chain(route.cfg.params.names()))
            .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        Ok(Exchange::Token { form })
    }

    fn resource(route: &Route, headers: &HeaderMap) -> Exchange {
        let none = Exchange::Resource { access_token: None };
        let Some(dpop) = &route.cfg.dpop else {
            return none;
        };
        let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return none;
        };
        let (scheme, token) = auth.split_once(' ').unwrap_or((auth, ""));
        let token = token.trim();
        let is_dpop = scheme.eq_ignore_ascii_case("dpop");
        let is_bearer = scheme.eq_ignore_ascii_case("bearer");
        if token.is_empty() || !(is_dpop || (is_bearer && dpop.upgrade_bearer)) {
            return none;
        }
        Exchange::Resource { access_token: Some(token.to_string()) }
    }
}
