//! Who may make the proxy sign, and which spellings of a signed endpoint it accepts.
//!
//! A form POST needs no CORS preflight, so any web page the developer opens could make a
//! localhost signer sign. The exposure guard refuses a foreign `Host` (DNS rebinding), a
//! foreign `Origin` and `Sec-Fetch-Site: cross-site` (RFC 9700 §4.13 on loopback listeners).
//! The spelling guard refuses paths that a lenient AS would route to a signed endpoint but
//! that are not its exact spelling, so nothing reaches a signed endpoint unsigned.

use http::header::{self, HeaderMap};

use crate::config::host::split_host_port;
use crate::config::is_loopback_host;
use crate::error::ProxyError;
use crate::urlnorm::lenient_names;

/// Refuses a foreign `Host` (DNS rebinding), a foreign `Origin` and `Sec-Fetch-Site:
/// cross-site`; and requests whose `Host` framing is broken (RFC 9112 §3.2: an HTTP/1.1
/// request has exactly one `Host`).
pub(super) fn check_exposure(
    version: http::Version,
    headers: &HeaderMap,
    uri: &http::Uri,
    allow_origins: &[String],
) -> Result<(), ProxyError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("two Host headers (RFC 9112 §3.2)".into()));
    }
    // HTTP/1.0 made Host optional, but a request without one could not be checked against
    // the DNS-rebinding guard at all: refused in every version (RFC 9112 §3.2, RFC 9113 §8.3.1).
    if first.is_none() && uri.authority().is_none() {
        return Err(ProxyError::BadRequest(format!(
            "an {version:?} request without Host: tokenrelay checks that Host names this machine (RFC 9112 §3.2); send Host"
        )));
    }
    // An absolute-form target (RFC 9112 §3.2.2) names the authority the request is for, and
    // a server uses it over `Host`: it must be loopback too, whatever `Host` says.
    if let Some(authority) = uri.authority() {
        let loopback = split_host_port(authority.as_str()).is_some_and(|(host, _)| is_loopback_host(host));
        if !loopback {
            return Err(ProxyError::Forbidden(format!(
                "request target names {:?}; this is tokenrelay's reverse listener, which answers only for \
                 localhost / 127.0.0.1 / [::1] (for HTTPS_PROXY use [proxy] forward)",
                authority.as_str()
            )));
        }
    }
    let raw = match first {
        Some(h) => Some(h.to_str().map_err(|_| ProxyError::Forbidden("Host header is not ASCII".into()))?),
        None => uri.authority().map(|a| a.as_str()),
    };
    if let Some(raw) = raw {
        // Parse strictly: `localhost:8787.evil` or `localhost@evil` is not a loopback Host.
        let loopback = split_host_port(raw).is_some_and(|(host, _)| is_loopback_host(host));
        if !loopback {
            return Err(ProxyError::Forbidden(format!(
                "Host {raw:?} is not a loopback name; tokenrelay answers only localhost / 127.0.0.1 / [::1] (DNS-rebinding guard)"
            )));
        }
    }
    check_origin(headers, allow_origins)
}

/// The single value of header `name`; a repeated one is refused (a guard that read only the
/// first could be steered by the second).
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h http::HeaderValue>, ProxyError> {
    let mut all = headers.get_all(name).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(ProxyError::Forbidden(format!("{name} sent twice; refused")));
    }
    Ok(first)
}

/// The request's `Origin` when it is one of `allow_origins` (exactly): it gets real CORS.
pub(super) fn cors_origin(headers: &HeaderMap, allow_origins: &[String]) -> Option<String> {
    let origin = single(headers, "origin").ok()??.to_str().ok()?;
    listed(origin, allow_origins).then(|| origin.to_string())
}

/// Is `origin` (as the browser sent it) one of `allow_origins` (normalized at load)?
fn listed(origin: &str, allow_origins: &[String]) -> bool {
    if allow_origins.is_empty() {
        return false;
    }
    match crate::urlnorm::normalize_origin(origin) {
        Some(o) => allow_origins.contains(&o),
        None => false,
    }
}

/// The browser half of the exposure guard: a foreign `Origin`, and `Sec-Fetch-Site:
/// cross-site` unless the `Origin` is one of `allow_origins`. tokenrelay's own endpoints
/// pass `&[]`: `allow_origins` never opens them.
pub(super) fn check_origin(headers: &HeaderMap, allow_origins: &[String]) -> Result<(), ProxyError> {
    let mut listed = false;
    if let Some(origin) = single(headers, "origin")? {
        let origin = origin.to_str().unwrap_or("");
        listed = self::listed(origin, allow_origins);
        let loopback = origin.parse::<http::Uri>().ok().and_then(|u| u.host().map(is_loopback_host)).unwrap_or(false);
        if !listed && !loopback {
            return Err(ProxyError::Forbidden(format!(
                "Origin {origin:?} is not allowed to use the signing proxy; add it to [proxy] allow_origins if intended"
            )));
        }
    }
    let cross_site =
        single(headers, "sec-fetch-site")?.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    if cross_site && !listed {
        return Err(ProxyError::Forbidden(
            "cross-site browser request refused (Sec-Fetch-Site: cross-site); add its Origin to [proxy] allow_origins if intended"
                .into(),
        ));
    }
    Ok(())
}

/// Headers that make a relayed page inert in tokenrelay's origin: no MIME sniffing, and a
/// sandbox so an upstream HTML page can never run script as the signer.
pub(super) fn harden(headers: &mut HeaderMap) {
    headers.insert("x-content-type-options", http::HeaderValue::from_static("nosniff"));
    // The inspector page brings its own, stricter policy.
    headers.entry(header::CONTENT_SECURITY_POLICY).or_insert(http::HeaderValue::from_static("sandbox"));
}

/// CORS for an allowed origin (Fetch standard, "CORS protocol"): the browser may read the
/// answer, including the DPoP nonce.
pub(super) fn allow_cors(headers: &mut HeaderMap, origin: &str) {
    if let Ok(v) = http::HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        headers.append(header::VARY, http::HeaderValue::from_static("Origin"));
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            http::HeaderValue::from_static("DPoP-Nonce, WWW-Authenticate"),
        );
    }
}

/// The answer to a CORS preflight from an allowed origin.
pub(super) fn preflight(origin: &str, headers: &HeaderMap) -> http::Response<crate::body::Body> {
    let mut resp = http::Response::new(crate::body::full(bytes::Bytes::new()));
    *resp.status_mut() = http::StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    allow_cors(h, origin);
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, http::HeaderValue::from_static("GET, POST, OPTIONS"));
    let asked = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        asked.unwrap_or_else(|| http::HeaderValue::from_static("content-type, authorization, dpop")),
    );
    h.insert(header::ACCESS_CONTROL_MAX_AGE, http::HeaderValue::from_static("600"));
    resp
}

/// RFC 6749 §2.3.1: client credentials MUST NOT be in the request URI. On a client-
/// authenticated endpoint, a query naming a parameter tokenrelay owns would travel beside
/// the signed body (and some servers merge query and body): refused, never stripped. Names
/// are compared as lenient servers read them ([`lenient_names`]: `?Client_Secret=`,
/// `?x=1;client_secret=`, `?client_secret[]=`, `?client_secret%00=` are all `client_secret`).
pub(super) fn check_query(query: Option<&str>, owned: &[&str]) -> Result<(), ProxyError> {
    let Some(query) = query else { return Ok(()) };
    for name in lenient_names(query.as_bytes()) {
        if let Some(o) = owned.iter().find(|o| o.eq_ignore_ascii_case(&name)) {
            return Err(ProxyError::BadRequest(format!(
                "{o:?} in the query of a client-authenticated endpoint; send parameters in the form body (RFC 6749 §2.3.1)"
            )));
        }
    }
    Ok(())
}

/// Parameters that carry client credentials or an OAuth grant: a request with one of them in
/// its body goes to a signed endpoint or nowhere.
pub const GRANT_PARAMS: [&str; 13] = [
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "token",
    "request",
    "device_code",
    "auth_req_id",
    "refresh_token",
    "code_verifier",
    "subject_token",
    "assertion",
];

/// The same, for a query: `client_id` and `request` are legitimate in an authorization
/// request's query (RFC 6749 §4.1.1, RFC 9101 §5) and pass.
const GRANT_QUERY_PARAMS: [&str; 10] = [
    "grant_type",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "device_code",
    "auth_req_id",
    "refresh_token",
    "code_verifier",
    "subject_token",
    "token",
];

/// The fail-closed backstop on a route that authenticates: a request that is *not* going to
/// a signed endpoint but carries client credentials or a grant (in its query, its body, in
/// any spelling lenient servers accept, or as `Authorization: Basic`) is refused with 400
/// naming why. Never relayed as it came: it would reach the AS unsigned, perhaps with the
/// app's own secret.
pub(super) fn check_no_credentials(
    route: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ProxyError> {
    let refuse = |what: String| {
        ProxyError::BadRequest(format!(
            "{what} on {path:?}, which is not a client-authenticated endpoint of route {route:?}; refused, never relayed \
             unsigned. Call the route's token endpoint (`tokenrelay check` lists them), or add the path to \
             routes.{route}.endpoints if the AS authenticates clients there"
        ))
    };
    if let Some(q) = query {
        if let Some(n) = lenient_names(q.as_bytes()).into_iter().find(|n| GRANT_QUERY_PARAMS.contains(&n.as_str())) {
            return Err(refuse(format!("{n:?} in the query")));
        }
    }
    let basic = headers.get_all(header::AUTHORIZATION).iter().any(|v| {
        let v = v.as_bytes();
        v.len() >= 6 && v[..6].eq_ignore_ascii_case(b"basic ")
    });
    if basic {
        return Err(refuse("Authorization: Basic (client credentials)".into()));
    }
    if !body.is_empty() {
        if let Some(n) = lenient_names(body).into_iter().find(|n| GRANT_PARAMS.contains(&n.as_str())) {
            return Err(refuse(format!("{n:?} in the body")));
        }
    }
    Ok(())
}

/// Browser headers that stay at tokenrelay on a confidential client's client-authenticated
/// requests: tokenrelay is the browser's endpoint, its upstream request is a server's. (Entra
/// refuses a confidential client's redemption that carries `Origin`, AADSTS90023;
/// oidc-provider checks `Origin` against the client's registration.)
pub(super) fn strip_browser_headers(headers: &mut HeaderMap) {
    for name in [header::ORIGIN, header::REFERER, header::COOKIE] {
        headers.remove(name);
    }
    let fetch: Vec<http::HeaderName> =
        headers.keys().filter(|k| k.as_str().starts_with("sec-fetch-")).cloned().collect();
    for name in fetch {
        headers.remove(name);
    }
}

/// Is the body declared a form (RFC 6749 Appendix B)?
pub(super) fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
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
        let check_exposure =
            |h: &HeaderMap, uri: &http::Uri, o: &[String]| check_exposure(http::Version::HTTP_11, h, uri, o);
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
        let listed =
            headers(&[("host", "localhost:8787"), ("origin", "https://app.example"), ("sec-fetch-site", "cross-site")]);
        assert!(check_exposure(&listed, &uri, &["https://app.example".into()]).is_ok(), "allowed origins are exempt");
        assert!(check_exposure(&HeaderMap::new(), &uri, &[]).is_err(), "HTTP/1.1 without Host");
        for version in [http::Version::HTTP_10, http::Version::HTTP_2] {
            assert!(super::check_exposure(version, &HeaderMap::new(), &uri, &[]).is_err(), "{version:?} without Host");
        }
        let mut two = headers(&[("host", "localhost:8787")]);
        two.append(header::HOST, "localhost:8787".parse().unwrap());
        assert!(check_exposure(&two, &uri, &[]).is_err(), "two Host headers");
        let mut origins = headers(&[("host", "localhost:8787"), ("origin", "http://localhost:3000")]);
        origins.append(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(check_exposure(&origins, &uri, &[]).is_err(), "two Origin headers");
    }
}
