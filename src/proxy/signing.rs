//! The one sign → send → `use_dpop_nonce`? → re-sign → retry loop, for every kind of request
//! the pipeline relays ([`Payload`]): token requests (client authentication, and a DPoP proof
//! on token and PAR endpoints), API calls with an access token (a DPoP proof with `ath`) and
//! requests relayed with header rules only.
//!
//! Every attempt is signed afresh: a new assertion `jti` and a new proof `jti` (RFC 7523 §3,
//! RFC 9449 §4.2; an AS replay-checks both). The one exception is a client assertion made
//! elsewhere (`client.assertion`, [`crate::assertion`]): fetched once per request and sent as
//! it is on every attempt (the retry gets a fresh DPoP proof with the same assertion), since
//! the federated credential that accepts it accepts it until its `exp`. A `use_dpop_nonce` answer (RFC 9449 §8 from an
//! AS, §9 from a resource server) whose nonce differs from the one sent is retried exactly
//! once. Nonces are cached per upstream origin from every response.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;

use super::target::Target;
use super::{Outcome, Shared};
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::explain::{issued, Answer, Attempt, Sent};
use crate::jose::{new_jti, SigningKey};
use crate::rewrite::client_auth::{self, Call};
use crate::rewrite::dpop::{self, ProofInput};
use crate::rewrite::form::Form;
use crate::rewrite::hop;
use crate::snapshot::{Credential, Route};

/// Token answers are small; this bounds what is buffered to look for `use_dpop_nonce`.
const MAX_BUFFERED_ANSWER: usize = 1024 * 1024;

/// What a request carries, which decides how it is signed.
pub(super) enum Payload<'a> {
    /// A client-authenticated endpoint: client authentication on every attempt, and a DPoP
    /// proof when the target wants one (token and PAR endpoints, RFC 9449 §5, §10.1).
    Token(Form),
    /// An API call with an access token on a DPoP route: a proof with `ath` and
    /// `Authorization: DPoP` (RFC 9449 §7.1).
    Resource { body: Bytes, token: &'a str },
    /// Anything else: relayed once, with the route's header rules only.
    Plain(Bytes),
}

/// One request on its way upstream.
pub(super) struct Outgoing<'a> {
    pub method: &'a Method,
    pub target: &'a Target,
    pub headers: HeaderMap,
    pub payload: Payload<'a>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Signs and sends `out`, retrying once on `use_dpop_nonce` with a new nonce.
pub(super) async fn exchange(
    shared: &Shared,
    route: &Route,
    out: Outgoing<'_>,
    outcome: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    let Outgoing { method, target, mut headers, mut payload } = out;
    let proof_key = match &payload {
        Payload::Token(_) => route.dpop_key.as_ref().filter(|_| target.wants_proof),
        Payload::Resource { .. } => route.dpop_key.as_ref(),
        Payload::Plain(_) => None,
    };
    let mut nonce = proof_key.and_then(|_| shared.nonces.get(&target.origin));
    let fetched;
    let credential = match (&route.credential, &payload) {
        (Credential::Assertion(source), Payload::Token(_)) => {
            fetched = Credential::Fetched(source.current().await.map_err(|e| ProxyError::Signing(e.to_string()))?);
            &fetched
        }
        (credential, _) => credential,
    };
    let mut first = true;
    loop {
        // Every attempt starts from the app's request: kept while a retry may follow (a first
        // attempt with a proof), moved into the attempt otherwise.
        let may_retry = proof_key.is_some() && first;
        first = false;
        let mut headers = if may_retry { headers.clone() } else { std::mem::take(&mut headers) };
        let now = unix_now();
        let body = match &mut payload {
            Payload::Token(form) => {
                let mut form = if may_retry { form.clone() } else { std::mem::take(form) };
                let call = Call {
                    endpoint_url: &target.url,
                    token_endpoint: &target.token_endpoint,
                    now,
                    jti: new_jti(),
                    x5t_s256: route.assertion_x5t.as_deref(),
                };
                outcome.injected = client_auth::apply(&route.cfg, credential, &call, &mut headers, &mut form)?;
                outcome.sent_params = form.names().map(str::to_string).collect();
                Bytes::from(form.encode())
            }
            Payload::Resource { body, .. } | Payload::Plain(body) => body.clone(),
        };
        let sent_nonce = nonce.clone();
        if let Some(key) = proof_key {
            let access_token = match &payload {
                Payload::Resource { token, .. } => Some(*token),
                _ => None,
            };
            let proof = Proof { key, method, target, now, nonce: sent_nonce.as_deref(), access_token };
            proof.attach(route, &mut headers, outcome)?;
        }
        let resp = send(route, method, &target.full, headers, body, outcome).await?;
        let fresh = shared.nonces.observe(&target.origin, resp.headers());
        let retry = |status: StatusCode, headers: &HeaderMap, body: Option<&[u8]>| {
            proof_key.is_some()
                && outcome.attempts == 1
                && dpop::wants_nonce(status.as_u16(), headers, body)
                && fresh.as_ref().is_some_and(|n| Some(n) != sent_nonce.as_ref())
        };
        if let Payload::Token(_) = payload {
            // Token answers are small and read whole: an AS says `use_dpop_nonce` in a JSON
            // body (RFC 9449 §8), and its `error` explains a refusal.
            let (resp, bytes) = tokio::time::timeout(route.cfg.timeout, buffer_small(resp, &target.url))
                .await
                .map_err(|_| ProxyError::Timeout {
                    url: target.url.clone(),
                    route: route.cfg.name.clone(),
                    after: route.cfg.timeout,
                    finishing: true,
                })??;
            let answer = Answer::read(resp.headers(), Some(&bytes), std::time::SystemTime::now());
            if retry(resp.status(), resp.headers(), Some(&bytes)) {
                outcome.answer = Some(answer);
                tracing::debug!(route = %route.cfg.name, "use_dpop_nonce: re-signing with the new nonce");
                outcome.retried("use_dpop_nonce");
                nonce = fresh;
                continue;
            }
            let checked = if proof_key.is_some() { check_token_type(route, resp.status(), &answer) } else { Ok(()) };
            let mut bytes = bytes;
            if resp.status() == StatusCode::OK && answer.access_token {
                let expected = issued::Expected {
                    jkt: proof_key.map(|k| k.thumbprint()),
                    // A certificate is presented over TLS only.
                    x5t_s256: route.cert_thumbprint.as_deref().filter(|_| target.url.starts_with("https:")),
                };
                let mut tokens = issued::read(&bytes);
                tokens.binding = Some(issued::verdict(&tokens, answer.token_type.as_deref(), &expected));
                outcome.issued = tokens;
                if route.cfg.dpop.as_ref().is_some_and(|d| d.answer_bearer) {
                    if let Some(rewritten) = bearer_answer(&bytes) {
                        bytes = rewritten;
                        outcome.answered_bearer = true;
                    }
                }
            }
            outcome.answer = Some(answer);
            checked?;
            return Ok(rebuild(resp, bytes));
        }
        outcome.answer = Some(Answer::read(resp.headers(), None, std::time::SystemTime::now()));
        // A resource server says it in `WWW-Authenticate` (RFC 9449 §9): stream the answer.
        if retry(resp.status(), resp.headers(), None) {
            outcome.retried("use_dpop_nonce");
            nonce = fresh;
            continue;
        }
        return Ok(into_app_response(resp));
    }
}

/// The inputs of one DPoP proof (RFC 9449 §4.2).
struct Proof<'a> {
    key: &'a SigningKey,
    method: &'a Method,
    target: &'a Target,
    now: u64,
    nonce: Option<&'a str>,
    access_token: Option<&'a str>,
}

impl Proof<'_> {
    /// Signs the proof into the one `DPoP` header (RFC 9449 §4.1), replacing the app's; with
    /// an access token, also `Authorization: DPoP <token>` (RFC 9449 §7.1).
    fn attach(&self, route: &Route, headers: &mut HeaderMap, outcome: &mut Outcome) -> Result<(), ProxyError> {
        let jti = new_jti();
        let input = ProofInput {
            htm: self.method.as_str(),
            htu: &self.target.url,
            now: self.now,
            jti: jti.clone(),
            nonce: self.nonce,
            access_token: self.access_token,
        };
        let proof = dpop::proof(self.key, &input)
            .map_err(|e| ProxyError::Signing(format!("route {:?}: DPoP proof signing failed: {e}", route.cfg.name)))?;
        let bad = |_| ProxyError::Signing("DPoP proof or token is not a valid header value".into());
        headers.remove("dpop");
        headers.insert("dpop", HeaderValue::from_str(&proof).map_err(bad)?);
        if let Some(token) = self.access_token {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("DPoP {token}")).map_err(bad)?);
            outcome.injected.method = "dpop";
        }
        outcome.dpop_jti = Some(jti);
        outcome.proof = Some(Sent::of(&proof));
        Ok(())
    }
}

/// Sends `body` once, with the route's timeout. Error texts name the URL without its query:
/// a query may carry values that are not ours to log.
pub(crate) async fn send(
    route: &Route,
    method: &Method,
    target: &str,
    headers: HeaderMap,
    body: Bytes,
    outcome: &mut Outcome,
) -> Result<Response<Incoming>, ProxyError> {
    let mut req = Request::new(Full::new(body.clone()));
    *req.method_mut() = method.clone();
    *req.uri_mut() = target
        .parse()
        .map_err(|_| ProxyError::BadRequest("the request path or query does not form a valid upstream URL".into()))?;
    *req.headers_mut() = headers;
    if !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        req.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let sent_headers: Vec<http::HeaderName> = req.headers().keys().cloned().collect();
    outcome.attempts += 1;
    let shown = target.split('?').next().unwrap_or(target);
    let started = Instant::now();
    let timeout = route.cfg.timeout;
    let result = tokio::time::timeout(timeout, route.client.request(req)).await;
    let elapsed = started.elapsed();
    outcome.upstream_ms += elapsed.as_millis();
    let mut attempt = Attempt {
        url: shown.to_string(),
        ms: elapsed.as_millis() as u64,
        sent_headers,
        sent_params: std::mem::take(&mut outcome.sent_params),
        ..Attempt::default()
    };
    let result = match result {
        Err(_) => Err(ProxyError::Timeout {
            url: shown.to_string(),
            route: route.cfg.name.clone(),
            after: timeout,
            finishing: false,
        }),
        Ok(Err(e)) => Err(ProxyError::Upstream(crate::upstream::classify(&e, shown, &super::route_urls(route)))),
        Ok(Ok(resp)) => Ok(resp),
    };
    match &result {
        Ok(resp) => attempt.status = Some(resp.status().as_u16()),
        Err(e) => attempt.error = Some(e.to_string()),
    }
    outcome.attempt_log.push(attempt);
    result
}

/// Reads a (small) upstream answer whole: needed to see `use_dpop_nonce` and `token_type`.
async fn buffer_small(resp: Response<Incoming>, url: &str) -> Result<(Response<()>, Bytes), ProxyError> {
    let (parts, body) = resp.into_parts();
    let bytes = Limited::new(body, MAX_BUFFERED_ANSWER)
        .collect()
        .await
        .map_err(|e| {
            ProxyError::Upstream(crate::upstream::UpstreamError::Unreadable {
                url: url.to_string(),
                reason: e.to_string(),
            })
        })?
        .to_bytes();
    Ok((Response::from_parts(parts, ()), bytes))
}

/// RFC 9449 §5: a token answer on a DPoP route whose `token_type` is not `DPoP` means the
/// token is not bound: a warning, or a 502 with `require_bound`.
fn check_token_type(route: &Route, status: StatusCode, answer: &Answer) -> Result<(), ProxyError> {
    if status != StatusCode::OK || !answer.access_token {
        return Ok(());
    }
    let Some(token_type) = answer.token_type.as_deref() else {
        return Ok(());
    };
    if token_type.eq_ignore_ascii_case("dpop") {
        return Ok(());
    }
    if route.cfg.dpop.as_ref().is_some_and(|d| d.require_bound) {
        return Err(ProxyError::Unbound { route: route.cfg.name.clone(), token_type: token_type.to_string() });
    }
    let msg = format!(
        "route {:?} sent a DPoP proof but the AS issued token_type {token_type:?}, not \"DPoP\" (RFC 9449 §5): the token is not bound to the DPoP key",
        route.cfg.name
    );
    tracing::warn!("{msg}");
    Ok(())
}

/// `routes.NAME.dpop.token_type = "Bearer"`: the token answer with `token_type` `"Bearer"`
/// where the AS said `"DPoP"`, for OAuth libraries that refuse an unknown token type. The
/// token stays DPoP-bound: API calls through a route with `upgrade_bearer` get their proof.
/// `None` when there is nothing to rewrite.
fn bearer_answer(bytes: &[u8]) -> Option<Bytes> {
    let mut answer: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes).ok()?;
    let token_type = answer.get_mut("token_type")?;
    if !token_type.as_str().is_some_and(|t| t.eq_ignore_ascii_case("dpop")) {
        return None;
    }
    *token_type = "Bearer".into();
    serde_json::to_vec(&answer).ok().map(Bytes::from)
}

fn rebuild(resp: Response<()>, bytes: Bytes) -> Response<Body> {
    let (mut parts, ()) = resp.into_parts();
    hop::strip(&mut parts.headers);
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Response::from_parts(parts, body::full(bytes))
}

/// Streams the upstream answer back: status, headers (minus hop-by-hop) and body intact.
pub(crate) fn into_app_response(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, incoming) = resp.into_parts();
    hop::strip(&mut parts.headers);
    Response::from_parts(parts, body::boxed(incoming))
}
