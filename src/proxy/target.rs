//! Where a request goes upstream, as the AS will see it: the route's upstream URL, or the
//! RFC 8705 §5 mTLS alias, and whether the request is one that carries a DPoP proof.

use crate::error::ProxyError;
use crate::snapshot::{Endpoints, Route};
use crate::urlnorm::{loose_path, loose_segments, normalize_path, EndpointUrl};

#[derive(Debug, Clone)]
pub struct Target {
    /// The endpoint URL without query: `htu` (RFC 9449 §4.2) and `aud = "endpoint"`.
    pub url: String,
    /// `url` plus the app's query string: what is requested.
    pub full: String,
    /// Normalized origin of `url`: the nonce cache key (RFC 9449 §8: nonces are per server).
    pub origin: String,
    /// The token endpoint URL as used (mTLS alias when the route presents a certificate);
    /// empty unless `auth_endpoint`.
    pub token_endpoint: String,
    /// The route authenticates the client here (see `Route::signed_endpoints`).
    pub auth_endpoint: bool,
    /// A DPoP proof belongs on this request: token and PAR endpoints (RFC 9449 §5, §7),
    /// not introspection, revocation, device or CIBA endpoints.
    pub wants_proof: bool,
}

/// How the app named the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Called<'a> {
    /// Reverse mode: a path under the route prefix ([`crate::endpoints::SignedEndpoint::app_path`]).
    Prefix,
    /// Forward mode: the AS's own URL on `origin` (normalized): below the upstream's base
    /// path on the upstream's origin, the whole path on another origin a metadata endpoint is on.
    Upstream { origin: &'a str },
}

/// The 400 for a path whose dot segments leave the route (README "Failure policy").
fn leaves(route: &Route, rest: &str, called: Called<'_>) -> ProxyError {
    let what = match called {
        Called::Prefix => format!(
            "the route prefix {} and the upstream base path {:?}",
            route.cfg.prefix, route.cfg.upstream.base_path
        ),
        Called::Upstream { .. } => format!("the upstream base path {:?}", route.cfg.upstream.base_path),
    };
    ProxyError::BadRequest(format!(
        "path {rest:?} climbs out of {what} with dot segments (`..`, encoded or not); refused, never relayed"
    ))
}

/// The path relative to the route's upstream base, resolved (RFC 3986 §5.2.4, §6.2.2):
/// dot segments applied, percent-encoding normalized. A path whose dot segments climb above
/// its root, strictly or as a lenient server decodes them (`..%2f`, `%c0%ae%c0%ae`), is refused.
pub(super) fn resolve_rest<'a>(
    route: &Route,
    rest: &'a str,
    called: Called<'_>,
) -> Result<std::borrow::Cow<'a, str>, ProxyError> {
    let strict = normalize_path(rest).map_err(|_| leaves(route, rest, called))?;
    if loose_segments(rest).is_err() {
        return Err(leaves(route, rest, called));
    }
    Ok(strict)
}

/// Resolves where `rest` (relative to the upstream base path, as the app called it) goes: a
/// signed endpoint (sent to its URL or RFC 8705 §5 mTLS alias; `htu` and `aud` follow the
/// URL actually used) or the upstream. Metadata comes from the route's background discovery;
/// an issuer mismatch (RFC 8414 §3.3) refuses the request before anything is sent. On a route
/// that signs, a path that is not a signed endpoint but that a lenient server would treat as
/// one is refused.
pub(super) async fn resolve_target(
    route: &Route,
    rest: &str,
    query: Option<&str>,
    called: Called<'_>,
) -> Result<Target, ProxyError> {
    let rest = resolve_rest(route, rest, called)?;
    let meta =
        route.metadata().await.map_err(|error| ProxyError::Discovery { route: route.cfg.name.clone(), error })?;
    let table = route.endpoints(meta.as_ref());
    let upstream = &route.cfg.upstream;
    let (origin, base) = match called {
        Called::Upstream { origin } if origin != upstream.origin() => (origin, ""),
        _ => (upstream.origin(), upstream.base_path.as_str()),
    };
    let plain = EndpointUrl::join(origin, base, &rest);
    let hit = match called {
        Called::Prefix => table.by_app_path(&rest).or_else(|| table.by_url(&plain)),
        Called::Upstream { .. } => table.by_url(&plain),
    };
    let with_query = |url: &str, published: Option<&str>| {
        let mut full = url.to_string();
        for (i, q) in published.into_iter().chain(query).enumerate() {
            full.push(if i == 0 { '?' } else { '&' });
            full.push_str(q);
        }
        full
    };
    let Some(endpoint) = hit else {
        if route.signs() {
            check_spelling(route, &table, &rest, &plain)?;
        }
        let url = plain.to_string();
        return Ok(Target {
            full: with_query(&url, None),
            origin: origin.to_string(),
            url,
            token_endpoint: String::new(),
            auth_endpoint: false,
            wants_proof: false,
        });
    };
    let url = endpoint.send.to_string();
    let token_endpoint = table.token().map_or_else(|| route.token_endpoint.clone(), |t| t.send.to_string());
    Ok(Target {
        full: with_query(&url, endpoint.send.query()),
        origin: endpoint.send.origin().to_string(),
        url,
        token_endpoint,
        auth_endpoint: true,
        wants_proof: endpoint.wants_proof(),
    })
}

/// Fail closed on spellings: `rest` (resolved) is not a signed endpoint, but a lenient server
/// may read it as one (`//token`, `/%74oken`, `/Token`, `/token/`, `/token;x`, `/token.json`,
/// look-alikes): refused with the spelling to use instead of being relayed unsigned.
pub(super) fn check_spelling(
    route: &Route,
    table: &Endpoints,
    rest: &str,
    plain: &EndpointUrl,
) -> Result<(), ProxyError> {
    let loose_rest = loose_path(rest);
    let loose_url = loose_path(plain.path());
    let hit = table.list.iter().find(|e| {
        loose_path(&e.app_path) == loose_rest
            || (e.url.origin() == plain.origin() && loose_path(e.url.path()) == loose_url)
            || (e.send.origin() == plain.origin() && loose_path(e.send.path()) == loose_url)
    });
    match hit {
        Some(e) => Err(ProxyError::BadRequest(format!(
            "path {rest:?} is an unusual spelling of the client-authenticated endpoint {}; send it as \"{}{}\"",
            e.url, route.cfg.prefix, e.app_path
        ))),
        None => Ok(()),
    }
}
