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
use crate::snapshot::SignedEndpoint;

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
    allow_origins.iter().any(|o| o == origin).then(|| origin.to_string())
}

/// The browser half of the exposure guard: a foreign `Origin`, and `Sec-Fetch-Site:
/// cross-site` unless the `Origin` is one of `allow_origins`. tokenrelay's own endpoints
/// pass `&[]`: `allow_origins` never opens them.
pub(super) fn check_origin(headers: &HeaderMap, allow_origins: &[String]) -> Result<(), ProxyError> {
    let mut listed = false;
    if let Some(origin) = single(headers, "origin")? {
        let origin = origin.to_str().unwrap_or("");
        listed = allow_origins.iter().any(|o| o == origin);
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
/// the signed body (and some servers merge query and body): refused.
pub(super) fn check_query(query: Option<&str>, owned: &[&str]) -> Result<(), ProxyError> {
    let Some(query) = query else { return Ok(()) };
    for (name, _) in form_urlencoded::parse(query.as_bytes()) {
        if owned.iter().any(|o| *o == name) {
            return Err(ProxyError::BadRequest(format!(
                "{name:?} in the query of a client-authenticated endpoint; send parameters in the form body (RFC 6749 §2.3.1)"
            )));
        }
    }
    Ok(())
}

/// Is the body declared a form (RFC 6749 Appendix B)?
pub(super) fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

/// A path reduced to what a lenient server may treat as the same resource. Deliberately
/// looser than RFC 3986 §6.2.2, because real servers are: percent-decoded until nothing
/// changes (`%252f`), backslashes as slashes, `;` path parameters, surrounding whitespace and
/// control characters (`%20`, `%09`, `%00`) and empty and `.` segments dropped, `..` applied,
/// a `.ext` suffix on the last segment dropped, lowercased.
pub fn loose_path(path: &str) -> String {
    let mut decoded = path.to_string();
    for _ in 0..8 {
        let next = percent_encoding::percent_decode_str(&decoded).decode_utf8_lossy().into_owned();
        if next == decoded {
            break;
        }
        decoded = next;
    }
    let decoded = decoded.replace('\\', "/").to_lowercase();
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        let seg = seg.split(';').next().unwrap_or_default();
        match seg.trim_matches(|c: char| c.is_whitespace() || c.is_control()) {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    // The last segment: servers map `token.json`, `token..`, `token.a.b` and `token%20.json`
    // to `token`; cut at the first dot that is not the first character and trim, until
    // nothing changes.
    if let Some(last) = out.pop() {
        let mut last = last;
        loop {
            let trimmed = last.trim_matches(|c: char| c.is_whitespace() || c.is_control());
            let cut = match trimmed.char_indices().skip(1).find(|(_, c)| *c == '.') {
                Some((i, _)) => &trimmed[..i],
                None => trimmed,
            };
            if cut == last {
                break;
            }
            last = cut;
        }
        if !last.is_empty() {
            out.push(last);
        }
    }
    format!("/{}", out.join("/"))
}

/// Fail closed on path spellings: a request to `url` that is not exactly a signed endpoint,
/// but whose loose form ([`loose_path`]) is one on the same origin (`/./token`, `//token`,
/// `/%74oken`, `/Token`, `/token/`, `/token;x`, `/b/../token`, `/token.json`), is refused
/// with the spelling to use instead of being relayed unsigned.
pub(super) fn check_spelling(url: &str, signed: &[SignedEndpoint]) -> Result<(), ProxyError> {
    let Some((origin, path)) = split_origin(url) else {
        return Ok(());
    };
    let loose = loose_path(path);
    let hit = signed.iter().find(|e| split_origin(&e.url).is_some_and(|(o, p)| o == origin && loose_path(p) == loose));
    match hit {
        Some(e) => Err(ProxyError::BadRequest(format!(
            "path {path:?} is an unusual spelling of the client-authenticated endpoint {}; send it as {:?}",
            e.url,
            split_origin(&e.url).map_or("", |(_, p)| p)
        ))),
        None => Ok(()),
    }
}

/// `("https://as:8443", "/path?q")` from an absolute URL, without parsing (the path is kept
/// exactly as sent, which a URL parser would normalize).
fn split_origin(url: &str) -> Option<(&str, &str)> {
    let after_scheme = url.find("://")? + 3;
    let path_start = url[after_scheme..].find('/').map_or(url.len(), |i| after_scheme + i);
    Some((&url[..path_start], url[path_start..].split(['?', '#']).next().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::snapshot::EndpointSource;

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

    fn signed(urls: &[&str]) -> Vec<SignedEndpoint> {
        urls.iter().map(|u| SignedEndpoint { url: u.to_string(), source: EndpointSource::Config }).collect()
    }

    #[test]
    fn unusual_spellings_of_signed_endpoints_are_refused() {
        let eps = signed(&["https://as.example/oauth2/token"]);
        assert!(check_spelling("https://as.example/oauth2/resource", &eps).is_ok());
        assert!(check_spelling("https://other.example/oauth2/Token", &eps).is_ok(), "another origin");
        for bad in [
            "/oauth2/./token",
            "/oauth2/x/../token",
            "/oauth2//token",
            "/oauth2/%74oken",
            "/oauth2/%2574oken",
            "/oauth2/Token",
            "/oauth2/token/",
            "/oauth2/token;x=1",
            "/oauth2/token%3Bx",
            "/oauth2/token%20",
            "/oauth2/token%09",
            "/oauth2/token%00",
            "/oauth2/token.json",
            "/oauth2/token..",
            "/oauth2/token.a.b",
            "/oauth2/token%20.json",
            "/oauth2/token%00.json",
            "/oauth2\\token",
            "/oauth2%252ftoken",
            "/oauth2/../oauth2/token",
            "/oauth2/b/%2e%2e/token",
            "/oauth2/b/x/../../token",
        ] {
            let url = format!("https://as.example{bad}");
            let err = check_spelling(&url, &eps).err().unwrap_or_else(|| panic!("{bad} passed"));
            assert!(err.to_string().contains("\"/oauth2/token\""), "{err}");
        }
    }
}
