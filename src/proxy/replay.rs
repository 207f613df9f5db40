//! `POST /.tokenrelay/exchanges/{id}/replay`: the app's recorded request sent again through
//! the *current* config (a fresh assertion and proof, nonce handling, the route's rules as
//! they are now), recorded as a new exchange with `replay_of` = `id`.
//!
//! What is re-sent is the recorded method, path, query and form (see
//! [`crate::explain::ReplayInput`]); the app's header values are not kept and not replayed.
//! A request that carried a value tokenrelay never keeps gets `409` naming it. The endpoint
//! sits behind the same guards as every `/.tokenrelay/*` path and no others: a browser sends
//! `Origin` on every cross-origin POST, so the exposure guard's `Origin` and `Sec-Fetch-Site`
//! checks refuse a foreign page, while `curl -X POST` needs no header or body. With `Accept:
//! text/plain` (what `tokenrelay replay` sends) the answer is the record as text.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

use super::{Entry, Shared};
use crate::body::{full, Body};
use crate::error::ProxyError;

/// Marks a request as the replay of exchange `.0` (a request extension).
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplayOf(pub u64);

/// The exchange id in `/.tokenrelay/exchanges/{id}/replay`.
pub(super) fn path_id(path: &str) -> Option<u64> {
    path.strip_prefix(super::local::PREFIX)?.strip_prefix("exchanges/")?.strip_suffix("/replay")?.parse().ok()
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

/// Replays exchange `id` (boxed: the replay runs the pipeline that called it).
pub(super) fn answer(shared: Arc<Shared>, method: &Method, id: u64, headers: &HeaderMap) -> Answer {
    let method = method.clone();
    let text = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/plain") && !a.contains("json"));
    Box::pin(async move {
        if method != Method::POST {
            return Err(ProxyError::BadRequest(format!(
                "{method} /.tokenrelay/exchanges/{id}/replay: a replay is a POST (curl -X POST)"
            )));
        }
        let Some(record) = shared.exchanges.get(id) else {
            return Err(ProxyError::NotFound(format!("no exchange {id} (kept: the last [proxy] exchanges)")));
        };
        if !record.replay.replayable() {
            return Err(ProxyError::Conflict(format!("exchange {id} cannot be replayed: {}", record.replay.why_not())));
        }
        let snapshot = shared.snapshot.borrow().clone();
        let request = &record.request;
        let path_and_query = match &record.replay.query {
            Some(q) => format!("{}?{q}", request.path),
            None => request.path.clone(),
        };
        let method: Method = request.method.parse().map_err(|_| {
            ProxyError::BadRequest(format!("exchange {id}: its method {:?} is not valid", request.method))
        })?;
        let mut req = Request::builder().method(method).uri(&path_and_query).header(header::HOST, "127.0.0.1");
        let body = match &record.replay.form {
            Some(form) => {
                req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Bytes::from(form.clone())
            }
            None => Bytes::new(),
        };
        let mut req = req
            .body(Full::new(body))
            .map_err(|e| ProxyError::BadRequest(format!("exchange {id} does not form a request again: {e}")))?;
        req.extensions_mut().insert(ReplayOf(id));
        let entry = match record.entry {
            "forward" => {
                let name = record.route.as_deref().unwrap_or_default();
                let route = snapshot.routes.iter().find(|r| r.cfg.name == name).cloned().ok_or_else(|| {
                    ProxyError::Conflict(format!(
                        "exchange {id} went through route {name:?}, which the config no longer has"
                    ))
                })?;
                // The recorded path is the one on the intercepted host: relative to the
                // upstream's base path, as forward mode hands it to the pipeline.
                let rest = request.path.strip_prefix(route.cfg.upstream.base_path.as_str()).unwrap_or(&request.path);
                let rest = if rest.is_empty() { "/".to_string() } else { rest.to_string() };
                let origin = route.cfg.upstream.origin().to_string();
                Entry::Forward { snapshot, route, origin, rest }
            }
            https => Entry::Reverse { https: https == "reverse-tls" },
        };
        let peer = SocketAddr::from(([127, 0, 0, 1], 0));
        let (_, new) = super::handle_recorded(shared.clone(), req, peer, entry).await;
        let Some(new) = new else {
            return Err(ProxyError::NotFound(format!("exchange {id} replayed into one of tokenrelay's own paths")));
        };
        let (body, content_type) = if text {
            (crate::explain::render(&new), "text/plain; charset=utf-8")
        } else {
            (serde_json::to_string(&*new).unwrap_or_default(), "application/json")
        };
        let mut resp = Response::new(full(Bytes::from(body)));
        *resp.status_mut() = StatusCode::OK;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_paths() {
        assert_eq!(path_id("/.tokenrelay/exchanges/12/replay"), Some(12));
        assert_eq!(path_id("/.tokenrelay/exchanges/12"), None);
        assert_eq!(path_id("/.tokenrelay/exchanges/x/replay"), None);
    }
}
