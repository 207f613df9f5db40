//! `rewrite_metadata = true`: tokenrelay answers the route's discovery documents itself, so an
//! app configured by issuer URL (openid-client, Spring `issuer-uri`, authlib, oauth4webapi)
//! sends its token requests through the proxy with only its discovery URL changed.
//!
//! Served at `<prefix>/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 §4),
//! `/.well-known/oauth-authorization-server<prefix>` (RFC 8414 §3.1) and
//! `<prefix>/.well-known/oauth-authorization-server`. The AS's document is returned as
//! published, except that every client-authenticated endpoint (and its RFC 8705 §5 mTLS
//! alias) points at the proxy URL the app used: same scheme, host and port as the request,
//! the path the app calls for it under the route prefix ([`crate::endpoints`]; endpoints on
//! other origins included). `issuer`, `jwks_uri`, `authorization_endpoint` and
//! `userinfo_endpoint` stay as published, so ID token `iss` checks still pass.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response};
use serde_json::{Map, Value};

use crate::body::{full, Body};
use crate::config::RouteConfig;
use crate::discovery::Metadata;
use crate::error::ProxyError;
use crate::snapshot::{Endpoints, Route, Snapshot};

const OIDC: &str = "/.well-known/openid-configuration";
const RFC8414: &str = "/.well-known/oauth-authorization-server";

/// The route whose discovery document `path` asks for, when it has `rewrite_metadata`.
pub(super) fn route_for<'a>(snapshot: &'a Snapshot, method: &Method, path: &str) -> Option<&'a Arc<Route>> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    snapshot.routes.iter().filter(|r| r.cfg.rewrite_metadata).find(|r| {
        let prefix = r.cfg.prefix.as_str();
        path.strip_prefix(prefix).is_some_and(|rest| rest == OIDC || rest == RFC8414)
            || path.strip_prefix(RFC8414).is_some_and(|rest| rest == prefix)
    })
}

/// The rewritten document, or 502 when the AS's metadata is not available.
pub(super) async fn answer(
    route: &Route,
    parts: &http::request::Parts,
    https: bool,
) -> Result<Response<Body>, ProxyError> {
    let meta = route
        .metadata()
        .await
        .map_err(|error| ProxyError::Discovery { route: route.cfg.name.clone(), error })?
        .ok_or_else(|| ProxyError::MetadataUnavailable { route: route.cfg.name.clone() })?;
    let host = match parts.headers.get(header::HOST) {
        Some(h) => h.to_str().map_err(|_| ProxyError::BadRequest("Host header is not ASCII".into()))?.to_string(),
        None => parts.uri.authority().map(|a| a.to_string()).unwrap_or_default(),
    };
    let base = format!("{}://{host}", if https { "https" } else { "http" });
    let table = route.endpoints(Some(&meta));
    let doc = rewrite(&route.cfg, &table, &meta, &base);
    let mut resp = Response::new(full(Bytes::from(Value::Object(doc).to_string())));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// `meta`'s document with the client-authenticated endpoints and their mTLS aliases at
/// `base` (`scheme://host:port` as the app called tokenrelay): each at the path the app calls
/// for it ([`crate::endpoints`]), wherever the AS publishes it.
pub fn rewrite(cfg: &RouteConfig, table: &Endpoints, meta: &Metadata, base: &str) -> Map<String, Value> {
    let mut doc = meta.document.clone();
    let mut aliases = Map::new();
    for (member, raw) in meta.client_auth_endpoints() {
        // The endpoint the route signs at this URL (configured or from this metadata); one
        // it does not sign stays as published.
        let Ok(url) = crate::urlnorm::EndpointUrl::parse(raw) else { continue };
        let Some(e) = table.by_url(&url) else { continue };
        let proxied = format!("{base}{}{}", cfg.prefix, e.app_path);
        doc.insert(member.into(), proxied.clone().into());
        // The proxy presents the certificate and calls the alias itself: the app's "alias"
        // is the same proxy URL.
        if meta.mtls_endpoint_aliases.contains_key(member) {
            aliases.insert(member.into(), proxied.into());
        }
    }
    if let Some(Value::Object(published)) = doc.get_mut("mtls_endpoint_aliases") {
        published.extend(aliases);
    }
    doc
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn client_authenticated_endpoints_point_at_the_proxy_and_the_rest_stays() {
        let text = "[routes.okta]\nprefix = \"/okta\"\nissuer = \"https://as.example/oauth2/default\"\nrewrite_metadata = true\n";
        let config = crate::config::parse(text, std::path::Path::new("/tmp/proxy.toml")).unwrap();
        let cfg = &config.routes[0];
        let document: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "issuer": "https://as.example/oauth2/default",
            "authorization_endpoint": "https://as.example/oauth2/default/v1/authorize",
            "token_endpoint": "https://as.example/oauth2/default/v1/token",
            "introspection_endpoint": "https://as.example/oauth2/default/v1/introspect",
            "revocation_endpoint": "https://elsewhere.example/revoke",
            "jwks_uri": "https://as.example/oauth2/default/v1/keys",
            "mtls_endpoint_aliases": { "token_endpoint": "https://mtls.as.example/oauth2/default/v1/token" },
        }))
        .unwrap();
        let mut meta: Metadata = serde_json::from_value(Value::Object(document.clone())).unwrap();
        meta.document = document;
        let table = Endpoints::build(cfg, Some(&meta));
        let doc = rewrite(cfg, &table, &meta, "http://127.0.0.1:8787");
        assert_eq!(doc["token_endpoint"], "http://127.0.0.1:8787/okta/oauth2/default/v1/token");
        assert_eq!(doc["introspection_endpoint"], "http://127.0.0.1:8787/okta/oauth2/default/v1/introspect");
        // Another origin: signed too, at its own path under the prefix.
        assert_eq!(doc["revocation_endpoint"], "http://127.0.0.1:8787/okta/revoke");
        assert_eq!(
            doc["mtls_endpoint_aliases"]["token_endpoint"],
            "http://127.0.0.1:8787/okta/oauth2/default/v1/token"
        );
        for kept in ["issuer", "authorization_endpoint", "jwks_uri"] {
            assert_eq!(doc[kept], meta.document[kept], "{kept} stays as published");
        }
    }
}
