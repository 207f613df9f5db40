//! Where a request goes upstream, as the AS will see it: the route's upstream URL, or the
//! RFC 8705 §5 mTLS alias, and whether the request is one that carries a DPoP proof.

use crate::discovery::Metadata;
use crate::error::ProxyError;
use crate::snapshot::Route;

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

/// Is `url` a token or PAR endpoint? By metadata when known, else by the last path segment.
fn is_token_or_par(url: &str, meta: Option<&Metadata>) -> bool {
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
    match url::Url::parse(url) {
        Ok(u) if u.has_host() => u.origin().ascii_serialization(),
        _ => url.to_string(),
    }
}

/// Resolves the upstream URL for `rest`: the route's upstream, or the RFC 8705 §5 mTLS
/// alias when the route presents a certificate and the AS metadata has one (`htu` and `aud`
/// follow the URL actually used). Metadata comes from the route's background discovery; an
/// issuer mismatch (RFC 8414 §3.3) refuses the request before anything is sent. On a route
/// that signs, a path that is not exactly a signed endpoint but that a lenient server would
/// treat as one is refused (see [`super::guard::check_spelling`]).
pub(super) async fn resolve_target(route: &Route, rest: &str, query: Option<&str>) -> Result<Target, ProxyError> {
    let meta =
        route.metadata().await.map_err(|error| ProxyError::Discovery { route: route.cfg.name.clone(), error })?;
    let meta = meta.as_deref();
    let mut url = route.cfg.upstream.url(rest);
    let auth_endpoint = route.is_signed_endpoint(&url, meta);
    if !auth_endpoint && route.signs() {
        super::guard::check_spelling(&url, &route.signed_endpoints(meta))?;
    }
    let mut origin = None;
    if let Some(alias) = route.mtls_alias(&url, meta) {
        url = alias.to_string();
        origin = Some(origin_of(&url));
    }
    // Only a signed request needs the token endpoint (an assertion's `aud`).
    let token_endpoint = if auth_endpoint {
        let configured = match meta.and_then(|m| m.token_endpoint.as_deref()) {
            Some(t) if !route.cfg.endpoints_configured => t,
            _ => &route.token_endpoint,
        };
        route.mtls_alias(configured, meta).unwrap_or(configured).to_string()
    } else {
        String::new()
    };
    let wants_proof = is_token_or_par(&url, meta);
    let full = match query {
        Some(q) => format!("{url}?{q}"),
        None => url.clone(),
    };
    // The upstream's origin was normalized once, at load; an alias is normalized here.
    let origin = origin.unwrap_or_else(|| route.cfg.upstream.origin().to_string());
    Ok(Target { origin, full, url, token_endpoint, auth_endpoint, wants_proof })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn proofs_only_for_token_and_par() {
        assert!(is_token_or_par("https://as/token", None));
        assert!(is_token_or_par("https://as/par", None));
        assert!(!is_token_or_par("https://as/token/introspect", None));
        assert!(!is_token_or_par("https://as/oauth2/revoke", None));
        let meta: Metadata = serde_json::from_str(
            r#"{"issuer":"https://as","token_endpoint":"https://as/t","introspection_endpoint":"https://as/check"}"#,
        )
        .unwrap();
        assert!(is_token_or_par("https://as/t", Some(&meta)));
        assert!(!is_token_or_par("https://as/check", Some(&meta)));
    }

    #[test]
    fn origins_are_normalized() {
        assert_eq!(origin_of("HTTPS://AS.example:443/x"), "https://as.example");
        assert_eq!(origin_of("http://127.0.0.1:8080/t?q"), "http://127.0.0.1:8080");
    }
}
