//! AS metadata discovery (RFC 8414, OpenID Connect Discovery 1.0), fetched once per
//! snapshot and route, through the route's own client (same trust roots, same identity).
//!
//! Used for: the issuer check (RFC 8414 §3.3), the client-authenticated endpoints when
//! `endpoints` is not configured, and `mtls_endpoint_aliases` (RFC 8705 §5) for routes that
//! present a client certificate. A failed fetch is not cached, so an AS that starts after
//! tokenrelay is discovered on a later request.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt as _, Full, Limited};
use serde::Deserialize;

use crate::snapshot::Route;

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The metadata members tokenrelay uses.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Metadata {
    pub issuer: String,
    pub token_endpoint: Option<String>,
    pub pushed_authorization_request_endpoint: Option<String>,
    pub introspection_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub device_authorization_endpoint: Option<String>,
    pub backchannel_authentication_endpoint: Option<String>,
    #[serde(default)]
    pub mtls_endpoint_aliases: BTreeMap<String, String>,
    #[serde(default)]
    pub token_endpoint_auth_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    pub dpop_signing_alg_values_supported: Vec<String>,
}

impl Metadata {
    /// Client-authenticated endpoints (token, PAR, introspection, revocation, device
    /// authorization, CIBA) as full URLs, with the name of the metadata member.
    pub fn client_auth_endpoints(&self) -> Vec<(&'static str, &str)> {
        [
            ("token_endpoint", &self.token_endpoint),
            ("pushed_authorization_request_endpoint", &self.pushed_authorization_request_endpoint),
            ("introspection_endpoint", &self.introspection_endpoint),
            ("revocation_endpoint", &self.revocation_endpoint),
            ("device_authorization_endpoint", &self.device_authorization_endpoint),
            ("backchannel_authentication_endpoint", &self.backchannel_authentication_endpoint),
        ]
        .into_iter()
        .filter_map(|(name, url)| url.as_deref().map(|u| (name, u)))
        .collect()
    }

    /// The mTLS alias of endpoint `url` (RFC 8705 §5), if the AS publishes one.
    pub fn mtls_alias(&self, url: &str) -> Option<&str> {
        let (name, _) = self.client_auth_endpoints().into_iter().find(|(_, u)| *u == url)?;
        self.mtls_endpoint_aliases.get(name).map(String::as_str)
    }
}

/// Well-known URLs for `issuer`: RFC 8414 §3.1 inserts the suffix before the issuer's path;
/// OIDC Discovery appends it.
pub fn well_known_urls(issuer: &str) -> Vec<String> {
    let issuer = issuer.trim_end_matches('/');
    let (origin, path) = match issuer.find("://").and_then(|i| issuer[i + 3..].find('/').map(|j| i + 3 + j)) {
        Some(split) => (&issuer[..split], &issuer[split..]),
        None => (issuer, ""),
    };
    vec![
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{issuer}/.well-known/openid-configuration"),
    ]
}

/// Fetches and checks the metadata of `route`'s issuer.
pub async fn fetch(route: &Route) -> Result<Metadata, String> {
    let Some(issuer) = route.cfg.issuer.as_deref() else {
        return Err("route has no issuer".into());
    };
    let mut last_err = String::new();
    for url in well_known_urls(issuer) {
        match fetch_one(route, &url).await {
            Ok(meta) => {
                // RFC 8414 §3.3: the issuer in the metadata must be identical to the one used.
                if meta.issuer != issuer {
                    return Err(format!(
                        "metadata at {url} says issuer {:?}, but routes.{}.issuer is {issuer:?}; they must be identical (RFC 8414 §3.3)",
                        meta.issuer, route.cfg.name
                    ));
                }
                return Ok(meta);
            }
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

async fn fetch_one(route: &Route, url: &str) -> Result<Metadata, String> {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    req.headers_mut().insert(http::header::ACCEPT, http::HeaderValue::from_static("application/json"));
    let resp = tokio::time::timeout(FETCH_TIMEOUT, route.client.request(req))
        .await
        .map_err(|_| format!("{url}: no answer within {}s", FETCH_TIMEOUT.as_secs()))?
        .map_err(|e| crate::upstream::describe_error(&e, url, &route.cfg.name))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), 512 * 1024)
        .collect()
        .await
        .map_err(|e| format!("{url}: reading metadata failed: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("{url}: HTTP {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not AS metadata JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8414_well_known_placement() {
        assert_eq!(
            well_known_urls("https://as.example.com/tenant/1"),
            vec![
                "https://as.example.com/.well-known/oauth-authorization-server/tenant/1".to_string(),
                "https://as.example.com/tenant/1/.well-known/openid-configuration".to_string()
            ]
        );
        assert_eq!(
            well_known_urls("https://as.example.com")[0],
            "https://as.example.com/.well-known/oauth-authorization-server"
        );
    }

    #[test]
    fn mtls_alias_by_endpoint_url() {
        let meta: Metadata = serde_json::from_str(
            r#"{"issuer":"https://as","token_endpoint":"https://as/token",
                "mtls_endpoint_aliases":{"token_endpoint":"https://mtls.as/token"}}"#,
        )
        .unwrap_or_default();
        assert_eq!(meta.mtls_alias("https://as/token"), Some("https://mtls.as/token"));
        assert_eq!(meta.mtls_alias("https://as/other"), None);
    }
}
