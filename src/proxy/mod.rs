//! The request pipeline: route match → exposure checks → buffer body (limited) → rewrite
//! steps in fixed order (hop-by-hop → headers/params → client auth → DPoP) → upstream →
//! `use_dpop_nonce`? re-sign everything and retry once → response back to the app.
//!
//! - `guard`: who may make the proxy sign (loopback `Host`, no foreign `Origin`) and which
//!   spellings of a signed endpoint are accepted;
//! - `target`: the upstream URL as the AS sees it (mTLS aliases, DPoP `htu`);
//! - `signing`: the one sign → send → nonce → retry loop.
//!
//! Fail closed: a route that signs never forwards a request it could not sign.

mod guard;
mod local;
mod metadata;
mod replay;
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
use crate::explain::{
    hints, Actions, Answer, AppRequest, Attempt, Exchanges, Issued, Param, Record, Refusal, ReplayInput, RouteFacts,
    Sent, Timestamp, NEVER_SECRET, SKEW_WARNING_S,
};
use crate::rewrite::client_auth::{self, Injected};
use crate::rewrite::dpop::NonceCache;
use crate::rewrite::form::Form;
use crate::rewrite::{headers as header_rules, hop, params};
use crate::snapshot::{Route, Snapshot};
use crate::status::ReloadStatus;
use guard::{check_exposure, check_origin};
use signing::{Outgoing, Payload};
use target::{resolve_target, Called};

/// State shared by every connection: the live snapshot and what outlives reloads.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub nonces: NonceCache,
    /// Reload counters for `GET /.tokenrelay/status` (set by `app::start`).
    pub reload: Arc<ReloadStatus>,
    /// The last `[proxy] exchanges` records, for `/.tokenrelay/exchanges` and the inspector.
    pub exchanges: Exchanges,
}

impl Shared {
    pub fn new(snapshot: watch::Receiver<Arc<Snapshot>>) -> Shared {
        Shared { snapshot, nonces: NonceCache::default(), reload: Arc::default(), exchanges: Exchanges::default() }
    }
}

/// What one exchange did: its log line and its [`crate::explain::Record`].
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    route: String,
    route_ref: Option<Arc<Route>>,
    request: AppRequest,
    injected: Injected,
    dpop_jti: Option<String>,
    attempts: u32,
    upstream_ms: u128,
    changed_params: Vec<String>,
    attempt_log: Vec<Attempt>,
    /// The last DPoP proof sent, without its signature.
    proof: Option<Sent>,
    answer: Option<Answer>,
    /// Form parameter names of the attempt being sent (moved into its [`Attempt`]).
    sent_params: Vec<String>,
    /// What the AS issued, decoded, and the binding verdict.
    issued: Issued,
    /// The answer's `token_type` was rewritten to `Bearer` (`dpop.token_type`).
    answered_bearer: bool,
    /// What a replay of this exchange needs.
    replay: ReplayInput,
}

impl Outcome {
    /// Marks the last attempt as followed by a retry, and why.
    fn retried(&mut self, why: &str) {
        if let Some(last) = self.attempt_log.last_mut() {
            last.retried_because = Some(why.to_string());
        }
    }

    /// The record of this exchange, with hints. Takes what only the record needs (the app's
    /// request, the assertion and proof); the rest stays for the exchange's log line.
    fn record(
        &mut self,
        id: u64,
        entry: &'static str,
        status: u16,
        refused: Option<&ProxyError>,
        total_ms: u64,
    ) -> Record {
        let mut actions = Actions {
            auth: (!self.injected.method.is_empty()).then_some(self.injected.method),
            kid: self.injected.kid.clone(),
            assertion_jti: self.injected.jti.clone(),
            dpop_jti: self.dpop_jti.clone(),
            params_changed: self.changed_params.clone(),
            credentials_removed: self.injected.removed.clone(),
            answer_token_type: self.answered_bearer.then_some("Bearer"),
            ..Actions::default()
        };
        if let Some(route) = &self.route_ref {
            actions.headers_set = route.cfg.headers.set.iter().map(|(n, _)| n.as_str().to_owned()).collect();
            actions.headers_removed = route.cfg.headers.remove.iter().map(|n| n.as_str().to_owned()).collect();
        }
        let mut record = Record {
            id,
            time: Timestamp(std::time::SystemTime::now()),
            entry,
            route: (!self.route.is_empty()).then(|| self.route.clone()),
            request: std::mem::take(&mut self.request),
            actions,
            attempts: self.attempt_log.clone(),
            assertion: self.injected.assertion.take(),
            proof: self.proof.take(),
            status,
            answer: self.answer.clone(),
            refused: refused.cloned().map(Refusal),
            hints: Vec::new(),
            total_ms,
            config_version: 0,
            replay_of: None,
            replay: std::mem::take(&mut self.replay),
            issued: std::mem::take(&mut self.issued),
        };
        // Hints (which name the route's client and endpoints) when something went wrong.
        let skewed = self.answer.as_ref().and_then(|a| a.clock_skew_s).is_some_and(|s| s.abs() > SKEW_WARNING_S);
        if status >= 400 || refused.is_some() || skewed || self.answer.as_ref().is_some_and(|a| a.error.is_some()) {
            let facts = self.route_ref.as_ref().map(|r| RouteFacts {
                name: r.cfg.name.clone(),
                client_id: r.cfg.client.as_ref().map(|c| c.id.clone()),
                issuer: r.cfg.issuer.clone(),
                token_endpoint: r.token_endpoint.clone(),
                urls: route_urls(r),
            });
            record.hints = hints(&record, facts.as_ref());
        }
        record
    }
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
    /// `origin` is the host the app called (the upstream's, or a metadata endpoint's on
    /// another origin, which has no base path).
    Forward { snapshot: Arc<Snapshot>, route: Arc<Route>, origin: String, rest: String },
}

/// Serves one reverse-mode request from the app. Never panics on input; every failure is
/// an answer.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>, conn: crate::server::Conn) -> Response<Body> {
    handle_entry(shared, req, conn.peer, Entry::Reverse { https: conn.tls }).await
}

/// The route's URLs as advice about them needs them (see [`crate::upstream::RouteUrls`]).
pub fn route_urls(route: &Route) -> crate::upstream::RouteUrls {
    let cfg = &route.cfg;
    crate::upstream::RouteUrls::new(&cfg.name, cfg.upstream.url(""), cfg.issuer.clone(), !cfg.trust.is_empty())
}

/// Fails when relaying a request unsigned at `path` (absolute, on the route's upstream origin)
/// would reach one of `route`'s signed endpoints under any spelling, or would carry client
/// credentials or a grant to the AS (for paths the pipeline does not sign, such as forward
/// mode's requests outside the upstream's base path).
pub async fn check_unsigned(
    route: &Route,
    origin: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ProxyError> {
    let called = target::Called::Upstream { origin };
    let resolved = target::resolve_rest(route, path, called)?;
    let meta =
        route.metadata().await.map_err(|error| ProxyError::Discovery { route: route.cfg.name.clone(), error })?;
    let table = route.endpoints(meta.as_ref());
    let url = crate::urlnorm::EndpointUrl::join(origin, "", &resolved);
    if let Some(e) = table.by_url(&url) {
        return Err(ProxyError::Signing(format!(
            "route {:?}: {url} is the signed endpoint {} but reached the unsigned path; refused (call it as {}{})",
            route.cfg.name, e.url, route.cfg.prefix, e.app_path
        )));
    }
    target::check_spelling(route, &table, &resolved, &url)?;
    guard::check_no_credentials(&route.cfg.name, path, query, headers, body)
}

/// `path` (absolute, on the host the app called) resolved as the AS will resolve it; a path
/// whose dot segments climb above the root, strictly or leniently decoded, is refused.
pub fn resolve_upstream_path<'a>(route: &Route, path: &'a str) -> Result<std::borrow::Cow<'a, str>, ProxyError> {
    target::resolve_rest(route, path, target::Called::Upstream { origin: route.cfg.upstream.origin() })
}

/// Serves one request that entered through `entry`.
pub async fn handle_entry<B: AppBody>(
    shared: Arc<Shared>,
    req: Request<B>,
    peer: SocketAddr,
    entry: Entry,
) -> Response<Body> {
    handle_recorded(shared, req, peer, entry).await.0
}

/// [`handle_entry`], also returning the exchange's record (kept in [`Shared::exchanges`]
/// as well when `[proxy] exchanges` is not 0); `None` for tokenrelay's own endpoints.
pub async fn handle_recorded<B: AppBody>(
    shared: Arc<Shared>,
    req: Request<B>,
    peer: SocketAddr,
    entry: Entry,
) -> (Response<Body>, Option<Arc<Record>>) {
    let snapshot = match &entry {
        Entry::Forward { snapshot, .. } => snapshot.clone(),
        Entry::Reverse { .. } => shared.snapshot.borrow().clone(),
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let replay_of = req.extensions().get::<replay::ReplayOf>().map(|r| r.0);
    let reverse = matches!(entry, Entry::Reverse { .. });
    let entry_label = match &entry {
        Entry::Reverse { https: false } => "reverse",
        Entry::Reverse { https: true } => "reverse-tls",
        Entry::Forward { .. } => "forward",
    };
    // tokenrelay's own endpoints never get CORS, whatever allow_origins says.
    let own = path.starts_with("/.tokenrelay/") || path == "/.tokenrelay";
    let cors = (reverse && !own).then(|| guard::cors_origin(req.headers(), &snapshot.config.allow_origins)).flatten();
    let span = tracing::info_span!("exchange", %method, %path, %peer);
    async move {
        let started = Instant::now();
        let mut outcome = Outcome::default();
        let (mut resp, refused) = match relay(&shared, &snapshot, req, entry, &mut outcome).await {
            Ok(resp) => (resp, None),
            Err(e) => (e.clone().into_response(), Some(e)),
        };
        // Forward mode keeps the AS's own headers: there the page is the AS's origin.
        if reverse {
            guard::harden(resp.headers_mut());
            if let Some(origin) = &cors {
                guard::allow_cors(resp.headers_mut(), origin);
            }
        }
        let status = resp.status().as_u16();
        let total_ms = started.elapsed().as_millis() as u64;
        // Tokenrelay's own endpoints are not exchanges worth recording.
        let record = (!own).then(|| {
            let mut record = outcome.record(shared.exchanges.next_id(), entry_label, status, refused.as_ref(), total_ms);
            record.config_version = snapshot.version;
            record.replay_of = replay_of;
            record
        });
        let refused = refused.map(|e| e.to_string());
        let hint = record.as_ref().and_then(|r| r.hints.first().cloned());
        let answer = outcome.answer.as_ref();
        // One line per exchange; a refusal or an AS error is the same line at warn, with why.
        // Empty fields are left out (an `Option` field that is `None` is not recorded), so the
        // line says only what happened; lists are comma-separated.
        let list = |v: &[String]| (!v.is_empty()).then(|| v.join(","));
        let removed = list(&outcome.injected.removed.iter().map(|r| r.to_string()).collect::<Vec<_>>());
        let params = list(&outcome.changed_params);
        let called = outcome.attempt_log.last();
        macro_rules! exchange_line {
            ($level:ident) => {
                tracing::$level!(
                    route = (!outcome.route.is_empty()).then(|| tracing::field::display(&outcome.route)),
                    status,
                    upstream = called.map(|a| a.url.as_str()),
                    upstream_ms = called.map(|_| outcome.upstream_ms as u64),
                    total_ms,
                    attempts = (outcome.attempts > 1).then_some(outcome.attempts),
                    retry = outcome.attempt_log.iter().find_map(|a| a.retried_because.as_deref()),
                    auth = (!outcome.injected.method.is_empty()).then_some(outcome.injected.method),
                    kid = outcome.injected.kid.as_deref(),
                    jti = outcome.injected.jti.as_deref(),
                    dpop_jti = outcome.dpop_jti.as_deref(),
                    removed = removed.as_deref(),
                    params = params.as_deref(),
                    as_error = answer.and_then(|a| a.error.as_deref()),
                    as_error_description = answer.and_then(|a| a.error_description.as_deref()),
                    refused = refused.as_deref(),
                    hint = hint.as_deref(),
                    "exchange"
                )
            };
        }
        if refused.is_some() || answer.is_some_and(|a| a.error.is_some()) {
            exchange_line!(warn);
        } else {
            exchange_line!(info);
        }
        if let Some(skew) = answer.and_then(|a| a.clock_skew_s).filter(|s| s.abs() > crate::explain::SKEW_WARNING_S) {
            tracing::warn!(route = %outcome.route, skew_s = skew, "this machine's clock differs from the AS's by {skew} s (its Date header): assertions and proofs may be rejected");
        }
        let record = record.map(Arc::new);
        if let Some(record) = &record {
            shared.exchanges.push(record.clone(), snapshot.config.exchanges);
        }
        (resp, record)
    }
    .instrument(span)
    .await
}

/// A form POST needs no CORS preflight, so any web page could make a
/// A request body the pipeline can read: hyper's `Incoming` from a listener, or a buffer
/// (`tokenrelay token` runs one request through the pipeline in-process).
pub trait AppBody:
    hyper::body::Body<Data = Bytes, Error: std::error::Error + Send + Sync + 'static> + Send + Unpin + 'static
{
}
impl<B> AppBody for B where
    B: hyper::body::Body<Data = Bytes, Error: std::error::Error + Send + Sync + 'static> + Send + Unpin + 'static
{
}

async fn read_body<B: AppBody>(body: B, limit: usize) -> Result<Bytes, ProxyError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ProxyError::TooLarge { limit }),
        Err(e) => Err(ProxyError::BadRequest(format!("could not read the request body: {e}"))),
    }
}

async fn relay<B: AppBody>(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    req: Request<B>,
    entry: Entry,
    outcome: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    outcome.request = AppRequest {
        method: parts.method.to_string(),
        path: path.to_string(),
        query_names: parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).map(|(k, _)| k.into_owned()).collect())
            .unwrap_or_default(),
        header_names: parts.headers.keys().map(|k| k.as_str().to_owned()).collect(),
        params: Vec::new(),
    };
    outcome.replay.keep_query(parts.uri.query());
    let allow_origins = snapshot.config.allow_origins.as_slice();
    if let Entry::Reverse { https } = &entry {
        let https = *https;
        let own = path.starts_with("/.tokenrelay/") || path == "/.tokenrelay";
        // A CORS preflight: answered for allowed origins, never for tokenrelay's own endpoints.
        if parts.method == Method::OPTIONS && parts.headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
            check_exposure(parts.version, &parts.headers, &parts.uri, if own { &[] } else { allow_origins })?;
            return match guard::cors_origin(&parts.headers, allow_origins).filter(|_| !own) {
                Some(origin) => Ok(guard::preflight(&origin, &parts.headers)),
                None => Err(ProxyError::Forbidden(
                    "CORS preflight refused: the Origin is not in [proxy] allow_origins".into(),
                )),
            };
        }
        if own {
            check_exposure(parts.version, &parts.headers, &parts.uri, &[])?;
            if path == "/.tokenrelay" {
                outcome.route = "tokenrelay".into();
                return Ok(local::redirect_to_page());
            }
            if let Some(id) = replay::path_id(path) {
                outcome.route = "tokenrelay".into();
                return replay::answer(shared.clone(), &parts.method, id, &parts.headers).await;
            }
            if let Some(answer) = local::answer(shared, &parts.method, path, parts.uri.query()) {
                outcome.route = "tokenrelay".into();
                return answer;
            }
        }
        if let Some(route) = metadata::route_for(snapshot, &parts.method, path) {
            check_exposure(parts.version, &parts.headers, &parts.uri, allow_origins)?;
            outcome.route = route.cfg.name.clone();
            return metadata::answer(route, &parts, https).await;
        }
    }
    let mut called = Called::Prefix;
    let (route, rest) = match &entry {
        Entry::Reverse { .. } => {
            check_exposure(parts.version, &parts.headers, &parts.uri, allow_origins)?;
            snapshot
                .route_for(path)
                .ok_or_else(|| ProxyError::NoRoute { path: path.to_string(), prefixes: snapshot.prefixes() })?
        }
        Entry::Forward { route, rest, origin, .. } => {
            // Browsers can be configured to use a forward proxy too: same cross-site guard.
            check_origin(&parts.headers, allow_origins)?;
            called = Called::Upstream { origin: origin.as_str() };
            (route, rest.as_str())
        }
    };
    outcome.route = route.cfg.name.clone();
    outcome.route_ref = Some(route.clone());
    // RFC 9112 §6.1: Content-Length with Transfer-Encoding is a smuggling vector. hyper already
    // applies §6.3 (Transfer-Encoding wins, Content-Length dropped) to HTTP/1.1 requests, and
    // the body is re-framed below; this refuses whatever still carries both.
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

    outcome.replay.body_len = Some(body.len());
    let target = resolve_target(route, rest, parts.uri.query(), called).await?;
    let mut headers = parts.headers.clone();
    hop::strip(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    header_rules::apply(&route.cfg.headers, &mut headers);

    if target.auth_endpoint {
        let owned: Vec<&str> = client_auth::OWNED_PARAMS.iter().copied().chain(route.cfg.params.names()).collect();
        guard::check_query(parts.uri.query(), &owned)?;
        if route.cfg.client.as_ref().is_some_and(|c| c.auth != crate::config::AuthMethod::None) {
            guard::strip_browser_headers(&mut headers);
        }
    } else if route.signs() {
        guard::check_no_credentials(&route.cfg.name, &target.url, parts.uri.query(), &parts.headers, &body)?;
    }
    let exchange = if target.auth_endpoint {
        Exchange::token(route, &parts.method, &headers, &body)?
    } else {
        Exchange::resource(route, &headers)
    };
    let payload = match exchange {
        Exchange::Token { mut form } => {
            outcome.request.params = form
                .names()
                .map(|name| Param {
                    name: name.to_string(),
                    value: NEVER_SECRET.contains(&name).then(|| form.get(name).ok().flatten()).flatten(),
                })
                .collect();
            outcome.replay.keep_form(&outcome.request.params);
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
                    payload: Payload::Resource { body, token: token.expose() },
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
    /// Anything else; carries the access token when the app sent one (wiped on drop).
    Resource { access_token: Option<crate::redact::Secret> },
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
        Exchange::Resource { access_token: Some(crate::redact::Secret::new(token)) }
    }
}
