//! The request pipeline: route match → exposure checks → buffer body (limited) → rewrite
//! steps in fixed order (hop-by-hop → headers/params → client auth → DPoP) → upstream →
//! `use_dpop_nonce`? re-sign everything and retry once → response back to the app.
//!
//! Fail closed: a route that signs never forwards a request it could not sign.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use rand::RngCore as _;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::body::{self, Body};
use crate::config::is_loopback_host;
use crate::error::ProxyError;
use crate::rewrite::client_auth::{self, Call, Injected};
use crate::rewrite::dpop::{self, NonceCache, ProofInput};
use crate::rewrite::form::Form;
use crate::rewrite::{headers as header_rules, hop, params};
use crate::snapshot::{Route, Snapshot};

/// State shared by every connection: the live snapshot and what outlives reloads.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub nonces: NonceCache,
    /// Reload counters for `GET /.tokenrelay/status` (set by `app::start`).
    pub reload: Arc<crate::reload::ReloadStatus>,
}

impl Shared {
    pub fn new(snapshot: watch::Receiver<Arc<Snapshot>>) -> Shared {
        Shared { snapshot, nonces: NonceCache::default(), reload: Arc::default() }
    }
}

/// A fresh `jti`: 128 random bits, base64url (CHECKLIST PKJ-4, DP-3).
pub fn new_jti() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What one exchange did, for its log line.
#[derive(Debug, Default)]
struct Outcome {
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
    Reverse,
    /// Forward mode: the listener already chose the route (by CONNECT host, after checking
    /// that target, SNI and Host agree); `rest` is the path relative to the route's upstream.
    /// `snapshot` is the one the route was chosen from, so a reload in between cannot send
    /// the request to an upstream that no longer claims the host.
    Forward { snapshot: Arc<Snapshot>, route: String, rest: String },
}

/// A path reduced to what a lenient server may treat as the same resource: percent-decoded,
/// lowercased, empty and `.` segments dropped, `..` applied, no trailing slash.
fn loose_path(path: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy().to_ascii_lowercase();
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// Fail closed on path spellings: a request that is not exactly a client-authenticated
/// endpoint, but that a server normalizing paths would route to one (`/./token`, `//token`,
/// `/%74oken`, `/Token`, `/token/`), is refused instead of being relayed unsigned.
fn check_endpoint_spelling(rest: &str, endpoints: &[String]) -> Result<(), ProxyError> {
    if endpoints.iter().any(|e| e == rest) {
        return Ok(());
    }
    let loose = loose_path(rest);
    match endpoints.iter().find(|e| loose_path(e) == loose) {
        Some(e) => Err(ProxyError::BadRequest(format!(
            "path {rest:?} is an unusual spelling of the client-authenticated endpoint {e:?}; send it as {e:?}"
        ))),
        None => Ok(()),
    }
}

/// Serves one reverse-mode request from the app. Never panics on input; every failure is
/// an answer.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    handle_entry(shared, req, peer, Entry::Reverse).await
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
        Entry::Reverse => shared.snapshot.borrow().clone(),
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

/// CHECKLIST "Transport": a form POST needs no CORS preflight, so any web page could make a
/// localhost signer sign. Refuse foreign `Host` (DNS rebinding), foreign `Origin` and
/// `Sec-Fetch-Site: cross-site`.
fn check_exposure(headers: &HeaderMap, uri: &http::Uri, allow_origins: &[String]) -> Result<(), ProxyError> {
    let raw = match headers.get(header::HOST) {
        Some(h) => Some(h.to_str().map_err(|_| ProxyError::Forbidden("Host header is not ASCII".into()))?.to_string()),
        None => uri.authority().map(|a| a.to_string()),
    };
    if let Some(raw) = raw {
        // Parse strictly: `localhost:8787.evil` or `localhost@evil` is not a loopback Host.
        let loopback = split_host_port(&raw).is_some_and(|(host, _)| is_loopback_host(host));
        if !loopback {
            return Err(ProxyError::Forbidden(format!(
                "Host {raw:?} is not a loopback name; tokenrelay answers only localhost / 127.0.0.1 / [::1] (DNS-rebinding guard)"
            )));
        }
    }
    check_origin(headers, allow_origins)
}

/// Splits a `Host` value into host and port, strictly (RFC 9110 §7.2: `uri-host [":" port]`).
pub fn split_host_port(raw: &str) -> Option<(&str, Option<u16>)> {
    let (host, rest) = match raw.strip_prefix('[') {
        Some(inner) => {
            let end = inner.find(']')?;
            (&inner[..end], &inner[end + 1..])
        }
        None => match raw.split_once(':') {
            Some((h, _)) => (h, &raw[h.len()..]),
            None => (raw, ""),
        },
    };
    if host.is_empty() || host.contains(['@', '/', ' ']) {
        return None;
    }
    match rest {
        "" => Some((host, None)),
        _ => {
            let port = rest.strip_prefix(':')?;
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((host, Some(port.parse().ok()?)))
        }
    }
}

/// The browser half of the exposure guard: foreign `Origin`, `Sec-Fetch-Site: cross-site`.
fn check_origin(headers: &HeaderMap, allow_origins: &[String]) -> Result<(), ProxyError> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let allowed = allow_origins.iter().any(|o| o == origin)
            || origin.parse::<http::Uri>().ok().and_then(|u| u.host().map(is_loopback_host)).unwrap_or(false);
        if !allowed {
            return Err(ProxyError::Forbidden(format!(
                "Origin {origin:?} is not allowed to use the signing proxy; add it to [proxy] allow_origins if intended"
            )));
        }
    }
    if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site")) {
        return Err(ProxyError::Forbidden("cross-site browser request refused (Sec-Fetch-Site: cross-site)".into()));
    }
    Ok(())
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

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
    if matches!(entry, Entry::Reverse) && path == crate::reload::STATUS_PATH {
        check_exposure(&parts.headers, &parts.uri, &snapshot.config.allow_origins)?;
        outcome.route = "status".into();
        return Ok(crate::reload::status_response(&shared.reload));
    }
    let (route, rest) = match &entry {
        Entry::Reverse => {
            check_exposure(&parts.headers, &parts.uri, &snapshot.config.allow_origins)?;
            snapshot
                .route_for(path)
                .ok_or_else(|| ProxyError::NoRoute { path: path.to_string(), prefixes: snapshot.prefixes() })?
        }
        Entry::Forward { route, rest, .. } => {
            // Browsers can be configured to use a forward proxy too: same cross-site guard.
            check_origin(&parts.headers, &snapshot.config.allow_origins)?;
            let found = snapshot
                .routes
                .iter()
                .find(|r| &r.cfg.name == route)
                .ok_or_else(|| ProxyError::NoRoute { path: path.to_string(), prefixes: snapshot.prefixes() })?;
            (found, rest.as_str())
        }
    };
    outcome.route = route.cfg.name.clone();
    if route.signs() {
        check_endpoint_spelling(rest, &route.cfg.endpoints)?;
    }
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

    let target = resolve_target(route, rest, parts.uri.query()).await;
    let mut headers = parts.headers.clone();
    hop::strip(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    header_rules::apply(&route.cfg.headers, &mut headers);

    let is_auth_endpoint = route.cfg.endpoints.iter().any(|e| e == rest) || target.discovered_auth_endpoint;
    let exchange = if is_auth_endpoint {
        Exchange::token(route, &parts.method, &headers, &body)?
    } else {
        Exchange::resource(route, &mut headers)?
    };
    if let Exchange::Token { form, .. } = &exchange {
        let mut form = form.clone();
        outcome.changed_params = params::apply(&route.cfg.params, &mut form);
        return send_signed(shared, route, &parts.method, &target, headers, form, outcome).await;
    }
    let access_token = match &exchange {
        Exchange::Resource { access_token } => access_token.clone(),
        _ => None,
    };
    if let (Some(token), Some(_)) = (access_token, &route.dpop_key) {
        return send_resource_with_dpop(shared, route, &parts.method, &target, headers, body, &token, outcome).await;
    }
    // Pass-through: header rules only.
    let (resp, _) = send(route, &parts.method, &target.full, headers, body, outcome).await?;
    shared.nonces.observe(&target.origin, resp.headers());
    Ok(into_app_response(resp))
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
        if !is_form(headers) {
            return Err(ProxyError::BadRequest(
                "token requests must be application/x-www-form-urlencoded (RFC 6749 §3.2, Appendix B)".into(),
            ));
        }
        let form = Form::parse(body);
        // TR-2: every parameter tokenrelay reads or writes must appear at most once.
        form.check_single(client_auth::OWNED_PARAMS.iter().copied().chain(route.cfg.params.names()))
            .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        Ok(Exchange::Token { form })
    }

    fn resource(route: &Route, headers: &mut HeaderMap) -> Result<Exchange, ProxyError> {
        let Some(dpop) = &route.cfg.dpop else {
            return Ok(Exchange::Resource { access_token: None });
        };
        let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return Ok(Exchange::Resource { access_token: None });
        };
        let (scheme, token) = auth.split_once(' ').unwrap_or((auth, ""));
        let token = token.trim();
        let is_dpop = scheme.eq_ignore_ascii_case("dpop");
        let is_bearer = scheme.eq_ignore_ascii_case("bearer");
        if token.is_empty() || !(is_dpop || (is_bearer && dpop.upgrade_bearer)) {
            return Ok(Exchange::Resource { access_token: None });
        }
        Ok(Exchange::Resource { access_token: Some(token.to_string()) })
    }
}

/// Where a request goes upstream, as the AS will see it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The endpoint URL without query: `htu` (RFC 9449 §4.2) and `aud = "endpoint"`.
    pub url: String,
    /// `url` plus the app's query string: what is requested.
    pub full: String,
    /// Normalized origin of `url`: the nonce cache key (DP-4).
    pub origin: String,
    /// The token endpoint URL as used (mTLS alias when the route presents a certificate).
    pub token_endpoint: String,
    /// Discovery lists this URL as client-authenticated (when `endpoints` is not configured).
    pub discovered_auth_endpoint: bool,
    /// A DPoP proof belongs on this request: token and PAR endpoints (RFC 9449 §5, §7),
    /// not introspection, revocation, device or CIBA endpoints.
    pub wants_proof: bool,
}

/// Is `url` a token or PAR endpoint? By metadata when known, else by the last path segment.
fn is_token_or_par(url: &str, meta: Option<&crate::discovery::Metadata>) -> bool {
    if let Some(meta) = meta {
        let named = [&meta.token_endpoint, &meta.pushed_authorization_request_endpoint];
        let aliases =
            ["token_endpoint", "pushed_authorization_request_endpoint"].map(|n| meta.mtls_endpoint_aliases.get(n));
        if named.iter().any(|u| u.as_deref() == Some(url)) || aliases.iter().any(|u| u.map(String::as_str) == Some(url))
        {
            return true;
        }
        if meta.client_auth_endpoints().iter().any(|(_, u)| *u == url) {
            return false;
        }
    }
    let last = url.rsplit('/').next().unwrap_or_default().to_ascii_lowercase();
    ![
        "introspect",
        "introspection",
        "revoke",
        "revocation",
        "device_authorization",
        "device",
        "bc-authorize",
        "backchannel",
    ]
    .contains(&last.as_str())
}

/// Normalized origin of an absolute URL: lowercase scheme and host, default port omitted.
pub fn origin_of(url: &str) -> String {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return url.to_string();
    };
    let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
    let host = uri.host().unwrap_or_default().to_ascii_lowercase();
    match (scheme.as_str(), uri.port_u16()) {
        ("https", Some(443)) | ("http", Some(80)) | (_, None) => format!("{scheme}://{host}"),
        (_, Some(port)) => format!("{scheme}://{host}:{port}"),
    }
}

/// Resolves the upstream URL for `rest`: the route's upstream, or the RFC 8705 §5 mTLS
/// alias when the route presents a certificate and the AS metadata has one (MT-3: `htu`
/// and `aud` follow the URL actually used).
async fn resolve_target(route: &Route, rest: &str, query: Option<&str>) -> Target {
    let mut url = route.cfg.upstream.url(rest);
    let mut token_endpoint = route.cfg.token_endpoint_url();
    let mut discovered_auth_endpoint = false;
    if let Some(meta) = route.metadata().await {
        if !route.cfg.endpoints_configured {
            discovered_auth_endpoint = meta.client_auth_endpoints().iter().any(|(_, u)| *u == url);
            if let Some(t) = &meta.token_endpoint {
                token_endpoint = t.clone();
            }
        }
        if route.cfg.mtls.is_some() {
            if let Some(alias) = meta.mtls_alias(&token_endpoint) {
                token_endpoint = alias.to_string();
            }
            if let Some(alias) = meta.mtls_alias(&url) {
                discovered_auth_endpoint = discovered_auth_endpoint || !route.cfg.endpoints_configured;
                url = alias.to_string();
            }
        }
    }
    let wants_proof = is_token_or_par(&url, route.metadata.get());
    let full = match query {
        Some(q) => format!("{url}?{q}"),
        None => url.clone(),
    };
    Target { origin: origin_of(&url), full, url, token_endpoint, discovered_auth_endpoint, wants_proof }
}

/// Sends `body` once, with the route's timeout. Returns the response and the upstream time.
async fn send(
    route: &Route,
    method: &Method,
    target: &str,
    headers: HeaderMap,
    body: Bytes,
    outcome: &mut Outcome,
) -> Result<(Response<Incoming>, u128), ProxyError> {
    let mut req = Request::new(Full::new(body.clone()));
    *req.method_mut() = method.clone();
    *req.uri_mut() = target
        .parse()
        .map_err(|_| ProxyError::BadRequest("the request path or query does not form a valid upstream URL".into()))?;
    *req.headers_mut() = headers;
    if !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        req.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    outcome.attempts += 1;
    // Messages name the URL without its query: a query may carry values that are not ours to log.
    let shown = target.split('?').next().unwrap_or(target);
    let started = Instant::now();
    let timeout = route.cfg.timeout;
    let result = tokio::time::timeout(timeout, route.client.request(req)).await;
    let elapsed = started.elapsed().as_millis();
    outcome.upstream_ms += elapsed;
    match result {
        Err(_) => Err(ProxyError::Timeout(format!(
            "upstream {shown} did not answer within {} (routes.{}.timeout)",
            humantime::format_duration(timeout),
            route.cfg.name
        ))),
        Ok(Err(e)) => Err(ProxyError::Upstream(crate::upstream::describe_error(&e, shown, &route.cfg.name))),
        Ok(Ok(resp)) => Ok((resp, elapsed)),
    }
}

/// The signing loop for client-authenticated endpoints. Every attempt is signed afresh (new
/// `jti` for the assertion and the proof); a `use_dpop_nonce` answer with a nonce that
/// differs from the one sent is retried exactly once (CHECKLIST DP-5, PKJ-4).
#[allow(clippy::too_many_arguments)]
async fn send_signed(
    shared: &Shared,
    route: &Route,
    method: &Method,
    target: &Target,
    headers: HeaderMap,
    form: Form,
    outcome: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    let origin = &target.origin;
    let mut nonce = shared.nonces.get(origin);
    loop {
        let mut headers = headers.clone();
        let mut form = form.clone();
        let now = unix_now();
        let call = Call { endpoint_url: &target.url, token_endpoint: &target.token_endpoint, now, jti: new_jti() };
        outcome.injected = client_auth::apply(&route.cfg, &route.credential, &call, &mut headers, &mut form)?;
        let sent_nonce = nonce.clone();
        if let Some(key) = route.dpop_key.as_ref().filter(|_| target.wants_proof) {
            let jti = new_jti();
            let input = ProofInput {
                htm: method.as_str(),
                htu: &target.url,
                now,
                jti: jti.clone(),
                nonce: sent_nonce.as_deref(),
                access_token: None,
            };
            let proof = dpop::proof(key, &input).map_err(|e| {
                ProxyError::Signing(format!("route {:?}: DPoP proof signing failed: {e}", route.cfg.name))
            })?;
            headers.remove("dpop");
            headers.insert(
                "dpop",
                HeaderValue::from_str(&proof)
                    .map_err(|_| ProxyError::Signing("DPoP proof is not a header value".into()))?,
            );
            outcome.dpop_jti = Some(jti);
        }
        let body = Bytes::from(form.encode());
        let (resp, _) = send(route, method, &target.full, headers, body, outcome).await?;
        let fresh = shared.nonces.observe(origin, resp.headers());
        if route.dpop_key.is_none() || !target.wants_proof {
            return Ok(into_app_response(resp));
        }
        let (resp, bytes) = tokio::time::timeout(route.cfg.timeout, buffer_small(resp)).await.map_err(|_| {
            ProxyError::Timeout(format!(
                "upstream {} did not finish its answer within {} (routes.{}.timeout)",
                target.url,
                humantime::format_duration(route.cfg.timeout),
                route.cfg.name
            ))
        })??;
        let retry = outcome.attempts == 1
            && dpop::wants_nonce(resp.status().as_u16(), resp.headers(), Some(&bytes))
            && fresh.as_ref().is_some_and(|n| Some(n) != sent_nonce.as_ref());
        if retry {
            tracing::debug!(route = %route.cfg.name, "use_dpop_nonce: re-signing with the new nonce");
            nonce = fresh;
            continue;
        }
        check_token_type(route, &resp, &bytes)?;
        return Ok(rebuild(resp, bytes));
    }
}

/// DPoP for API calls: proof with `ath`, `Authorization: DPoP` (CHECKLIST DP-3, DP-6).
#[allow(clippy::too_many_arguments)]
async fn send_resource_with_dpop(
    shared: &Shared,
    route: &Route,
    method: &Method,
    target: &Target,
    headers: HeaderMap,
    body: Bytes,
    token: &str,
    outcome: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    let Some(key) = &route.dpop_key else {
        return Err(ProxyError::Signing("route has no DPoP key".into()));
    };
    let origin = &target.origin;
    let mut nonce = shared.nonces.get(origin);
    loop {
        let mut headers = headers.clone();
        let jti = new_jti();
        let sent_nonce = nonce.clone();
        let input = ProofInput {
            htm: method.as_str(),
            htu: &target.url,
            now: unix_now(),
            jti: jti.clone(),
            nonce: sent_nonce.as_deref(),
            access_token: Some(token),
        };
        let proof = dpop::proof(key, &input)
            .map_err(|e| ProxyError::Signing(format!("route {:?}: DPoP proof signing failed: {e}", route.cfg.name)))?;
        headers.remove("dpop");
        let bad = |_| ProxyError::Signing("DPoP proof or token is not a valid header value".into());
        headers.insert("dpop", HeaderValue::from_str(&proof).map_err(bad)?);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("DPoP {token}")).map_err(bad)?);
        outcome.dpop_jti = Some(jti);
        outcome.injected.method = "dpop";
        let (resp, _) = send(route, method, &target.full, headers, body.clone(), outcome).await?;
        let fresh = shared.nonces.observe(origin, resp.headers());
        let retry = outcome.attempts == 1
            && dpop::wants_nonce(resp.status().as_u16(), resp.headers(), None)
            && fresh.as_ref().is_some_and(|n| Some(n) != sent_nonce.as_ref());
        if retry {
            nonce = fresh;
            continue;
        }
        return Ok(into_app_response(resp));
    }
}

/// Reads a (small) upstream answer whole: needed to see `use_dpop_nonce` and `token_type`.
async fn buffer_small(resp: Response<Incoming>) -> Result<(Response<()>, Bytes), ProxyError> {
    let (parts, body) = resp.into_parts();
    let bytes = Limited::new(body, 1024 * 1024)
        .collect()
        .await
        .map_err(|e| ProxyError::Upstream(format!("reading the upstream answer failed: {e}")))?
        .to_bytes();
    Ok((Response::from_parts(parts, ()), bytes))
}

/// CHECKLIST DP-8: a token answer without `token_type: DPoP` on a DPoP route.
fn check_token_type(route: &Route, resp: &Response<()>, body: &[u8]) -> Result<(), ProxyError> {
    if resp.status() != StatusCode::OK {
        return Ok(());
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Ok(());
    };
    let Some(token_type) = json.get("token_type").and_then(|v| v.as_str()) else {
        return Ok(());
    };
    if json.get("access_token").is_none() || token_type.eq_ignore_ascii_case("dpop") {
        return Ok(());
    }
    let msg = format!(
        "route {:?} sent a DPoP proof but the AS issued token_type {token_type:?}, not \"DPoP\" (RFC 9449 §5): the token is not bound to the DPoP key",
        route.cfg.name
    );
    if route.cfg.dpop.as_ref().is_some_and(|d| d.require_bound) {
        return Err(ProxyError::Upstream(format!(
            "{msg}; refused because routes.{}.dpop.require_bound = true",
            route.cfg.name
        )));
    }
    tracing::warn!("{msg}");
    Ok(())
}

fn rebuild(resp: Response<()>, bytes: Bytes) -> Response<Body> {
    let (mut parts, ()) = resp.into_parts();
    hop::strip(&mut parts.headers);
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Response::from_parts(parts, body::full(bytes))
}

/// Streams the upstream answer back: status, headers (minus hop-by-hop) and body intact.
fn into_app_response(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, incoming) = resp.into_parts();
    hop::strip(&mut parts.headers);
    Response::from_parts(parts, body::boxed(incoming))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn exposure_guard() {
        let uri: http::Uri = "/demo/token".parse().unwrap();
        assert!(check_exposure(&headers(&[("host", "127.0.0.1:8787")]), &uri, &[]).is_ok());
        assert!(check_exposure(&headers(&[("host", "localhost")]), &uri, &[]).is_ok());
        assert!(check_exposure(&headers(&[("host", "[::1]:8787")]), &uri, &[]).is_ok());
        assert!(check_exposure(&headers(&[("host", "evil.example:8787")]), &uri, &[]).is_err());
        assert!(check_exposure(&headers(&[("host", "localhost:8787.evil")]), &uri, &[]).is_err());
        let foreign = headers(&[("host", "localhost:8787"), ("origin", "https://evil.example")]);
        assert!(check_exposure(&foreign, &uri, &[]).is_err());
        assert!(check_exposure(&foreign, &uri, &["https://evil.example".into()]).is_ok());
        let local = headers(&[("host", "localhost:8787"), ("origin", "http://localhost:3000")]);
        assert!(check_exposure(&local, &uri, &[]).is_ok());
        let cross = headers(&[("host", "localhost:8787"), ("sec-fetch-site", "cross-site")]);
        assert!(check_exposure(&cross, &uri, &[]).is_err());
    }

    #[test]
    fn unusual_spellings_of_signed_endpoints_are_refused() {
        let eps = vec!["/token".to_string()];
        assert!(check_endpoint_spelling("/token", &eps).is_ok());
        assert!(check_endpoint_spelling("/resource", &eps).is_ok());
        for bad in ["/./token", "/x/../token", "//token", "/%74oken", "/Token", "/token/"] {
            assert!(check_endpoint_spelling(bad, &eps).is_err(), "{bad}");
        }
    }

    #[test]
    fn proofs_only_for_token_and_par() {
        assert!(is_token_or_par("https://as/token", None));
        assert!(is_token_or_par("https://as/par", None));
        assert!(!is_token_or_par("https://as/token/introspect", None));
        assert!(!is_token_or_par("https://as/oauth2/revoke", None));
        let meta: crate::discovery::Metadata = serde_json::from_str(
            r#"{"issuer":"https://as","token_endpoint":"https://as/t","introspection_endpoint":"https://as/check"}"#,
        )
        .unwrap();
        assert!(is_token_or_par("https://as/t", Some(&meta)));
        assert!(!is_token_or_par("https://as/check", Some(&meta)));
    }

    #[test]
    fn jti_has_128_bits() {
        let a = new_jti();
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 16);
        assert_ne!(a, new_jti());
    }
}
