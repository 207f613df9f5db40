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

/// Refuses a foreign `Host` (DNS rebinding), a foreign `Origin` and `Sec-Fetch-Site: cross-site`.
pub(super) fn check_exposure(headers: &HeaderMap, uri: &http::Uri, allow_origins: &[String]) -> Result<(), ProxyError> {
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

/// The browser half of the exposure guard: foreign `Origin`, `Sec-Fetch-Site: cross-site`.
pub(super) fn check_origin(headers: &HeaderMap, allow_origins: &[String]) -> Result<(), ProxyError> {
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

/// Is the body declared a form (RFC 6749 Appendix B)?
pub(super) fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
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
pub(super) fn check_endpoint_spelling(rest: &str, endpoints: &[String]) -> Result<(), ProxyError> {
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
}
