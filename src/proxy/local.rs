//! tokenrelay's own endpoints on the reverse listener(s), behind the same exposure guard as
//! everything else and never opened by `allow_origins`:
//!
//! - `GET /.tokenrelay/status`: reload state (see [`crate::status`]);
//! - `GET /.tokenrelay/exchanges[?route=NAME][&failed=1]`: the last exchanges, newest first;
//! - `GET /.tokenrelay/exchanges/{id}`: one exchange;
//! - `POST /.tokenrelay/exchanges/{id}/replay`: the exchange again, through the current
//!   config (see [`super::replay`]);
//! - `GET /.tokenrelay/exchanges/{a}/diff/{b}`: what differs between two exchanges
//!   ([`crate::explain::compare`]);
//! - `GET /.tokenrelay/exchanges.har`: every kept exchange as HAR 1.2
//!   ([`crate::explain::har`]);
//! - `GET /.tokenrelay/reloads`: the recent reload attempts ([`crate::status::ReloadEvent`]);
//! - `GET /.tokenrelay/jwks/{route}`: the route's public client keys (a JWKS for ASes that
//!   register clients by `jwks_uri`; public keys only, never the DPoP key);
//! - `GET /.tokenrelay/`: the inspector page (one embedded HTML file, inline JS and CSS, no
//!   network access but its own JSON, under a strict CSP that allows exactly its inline
//!   script and style by hash).

use std::sync::OnceLock;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};

use super::Shared;
use crate::body::{full, Body};
use crate::error::ProxyError;

pub(super) const PREFIX: &str = "/.tokenrelay/";
const PAGE: &str = include_str!("../inspector.html");

/// Answers `path` (under [`PREFIX`]), or `None` when it is not one of ours.
pub(super) fn answer(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Option<Result<Response<Body>, ProxyError>> {
    let rest = path.strip_prefix(PREFIX)?;
    if method != Method::GET && method != Method::HEAD {
        return Some(Err(ProxyError::BadRequest(format!(
            "{method} {path}: tokenrelay's own endpoints answer GET only (POST: exchanges/{{id}}/replay)"
        ))));
    }
    Some(match rest {
        "" => Ok(page()),
        "status" => Ok(crate::status::response(&shared.reload)),
        "reloads" => Ok(crate::status::reloads_response(&shared.reload)),
        "exchanges.har" => {
            let list = shared.exchanges.list(None, false);
            let mut resp = json(serde_json::to_string_pretty(&crate::explain::har(&list)));
            resp.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"tokenrelay-exchanges.har\""),
            );
            Ok(resp)
        }
        "exchanges" => {
            let mut route = None;
            let mut failed = false;
            for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
                match k.as_ref() {
                    "route" => route = Some(v.into_owned()),
                    "failed" => failed = v == "1" || v == "true",
                    _ => {}
                }
            }
            let list = shared.exchanges.list(route.as_deref(), failed);
            Ok(json(serde_json::to_string(&list.iter().map(|r| &**r).collect::<Vec<_>>())))
        }
        other if other.starts_with("jwks/") => {
            let name = &other["jwks/".len()..];
            let snapshot = shared.snapshot.borrow().clone();
            match snapshot.routes.iter().find(|r| r.cfg.name == name) {
                Some(route) => Ok(json(serde_json::to_string(&serde_json::json!({ "keys": route.client_jwks() })))),
                None => Err(ProxyError::NotFound(format!("no route named {name:?}"))),
            }
        }
        other if diff_ids(other).is_some() => {
            let (a, b) = diff_ids(other).unwrap_or_default();
            let missing = |id| ProxyError::NotFound(format!("no exchange {id} (kept: the last [proxy] exchanges)"));
            let ra = shared.exchanges.get(a).ok_or_else(|| missing(a));
            let rb = shared.exchanges.get(b).ok_or_else(|| missing(b));
            ra.and_then(|ra| rb.map(|rb| (ra, rb))).map(|(ra, rb)| {
                let differences = crate::explain::compare(&ra, &rb);
                json(serde_json::to_string(&serde_json::json!({ "a": a, "b": b, "differences": differences })))
            })
        }
        other => match other.strip_prefix("exchanges/").and_then(|id| id.parse::<u64>().ok()) {
            Some(id) => match shared.exchanges.get(id) {
                Some(record) => Ok(json(serde_json::to_string(&*record))),
                None => Err(ProxyError::NotFound(format!("no exchange {id} (kept: the last [proxy] exchanges)"))),
            },
            None => Err(ProxyError::NotFound(format!("tokenrelay has no {path}; see {PREFIX}"))),
        },
    })
}

/// `(a, b)` from `exchanges/{a}/diff/{b}`.
fn diff_ids(rest: &str) -> Option<(u64, u64)> {
    let (a, b) = rest.strip_prefix("exchanges/")?.split_once("/diff/")?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// `/.tokenrelay` without its slash: a redirect to the inspector page.
pub(super) fn redirect_to_page() -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from_static(b"")));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(header::LOCATION, HeaderValue::from_static(PREFIX));
    resp
}

fn json(body: Result<String, serde_json::Error>) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(body.unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")))));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The inspector page with a CSP naming the hashes of its inline script and style.
fn page() -> Response<Body> {
    static CSP: OnceLock<Option<HeaderValue>> = OnceLock::new();
    let csp = CSP.get_or_init(|| {
        let hash = |tag: &str| {
            let open = format!("<{tag}>");
            let start = PAGE.find(&open)? + open.len();
            let end = start + PAGE[start..].find(&format!("</{tag}>"))?;
            use base64::Engine as _;
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(&PAGE.as_bytes()[start..end]);
            Some(format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest)))
        };
        let policy = format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash("script").unwrap_or_else(|| "'none'".into()),
            hash("style").unwrap_or_else(|| "'none'".into())
        );
        HeaderValue::from_str(&policy).ok()
    });
    let mut resp = Response::new(full(Bytes::from_static(PAGE.as_bytes())));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if let Some(csp) = csp {
        h.insert(header::CONTENT_SECURITY_POLICY, csp.clone());
    }
    resp
}
