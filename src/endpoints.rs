//! The endpoints a route authenticates the client on, keyed by what the app calls.
//!
//! A signed endpoint is a pair: the path the app calls under the route prefix, and the URL
//! tokenrelay sends to. Both come from one place: the configured `endpoints` (paths under the
//! upstream), else the AS metadata's client-authenticated endpoints (token, PAR,
//! introspection, revocation, device authorization, CIBA), else `/token`. Every URL is an
//! [`EndpointUrl`] in normal form, so `http://LOCALHOST:80/token` and `http://localhost/token`
//! are one endpoint.
//!
//! Metadata may put endpoints on another origin than the issuer (Google's issuer is
//! `https://accounts.google.com`, its token endpoint `https://oauth2.googleapis.com/token`).
//! Such an endpoint is signed and sent to the metadata's URL over the route's verified TLS
//! client; the app calls it at `<prefix><its path>` (or `<prefix>/<member>` when another
//! endpoint already has that path). With a client certificate, the RFC 8705 §5 mTLS alias
//! is where the request is sent (`htu` and `aud` follow it).

use crate::config::host::is_loopback_upstream;
use crate::config::RouteConfig;
use crate::discovery::Metadata;
use crate::urlnorm::{normalize_path, EndpointUrl};

/// What an endpoint is for, which decides whether it carries a DPoP proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    Token,
    Par,
    Introspection,
    Revocation,
    DeviceAuthorization,
    Ciba,
    /// A configured path the metadata does not name: judged by its last segment.
    Other,
}

impl EndpointKind {
    /// The kind a metadata member names.
    pub fn of_member(member: &str) -> EndpointKind {
        match member {
            "token_endpoint" => EndpointKind::Token,
            "pushed_authorization_request_endpoint" => EndpointKind::Par,
            "introspection_endpoint" => EndpointKind::Introspection,
            "revocation_endpoint" => EndpointKind::Revocation,
            "device_authorization_endpoint" => EndpointKind::DeviceAuthorization,
            "backchannel_authentication_endpoint" => EndpointKind::Ciba,
            _ => EndpointKind::Other,
        }
    }
}

/// Where a signed endpoint's URL came from (what `tokenrelay check` shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointSource {
    /// `endpoints` in the config.
    Config,
    /// `/token`, when neither config nor metadata names endpoints.
    Default,
    /// The AS metadata member that lists it.
    Metadata(&'static str),
}

impl std::fmt::Display for EndpointSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointSource::Config => f.write_str("config"),
            EndpointSource::Default => f.write_str("default"),
            EndpointSource::Metadata(member) => write!(f, "metadata {member}"),
        }
    }
}

/// One endpoint a route authenticates the client on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEndpoint {
    /// The path the app calls, below the route prefix (normalized, starts with `/`).
    pub app_path: String,
    /// The endpoint as configured or published.
    pub url: EndpointUrl,
    /// Where tokenrelay sends it: `url`, or its https mTLS alias (RFC 8705 §5) when the route
    /// presents a certificate.
    pub send: EndpointUrl,
    pub kind: EndpointKind,
    pub source: EndpointSource,
}

impl SignedEndpoint {
    /// Does this endpoint carry a DPoP proof? Token and PAR endpoints (RFC 9449 §5, §7); not
    /// introspection, revocation, device or CIBA endpoints. A configured path the metadata
    /// does not name is judged by its last segment.
    pub fn wants_proof(&self) -> bool {
        match self.kind {
            EndpointKind::Token | EndpointKind::Par => true,
            EndpointKind::Other => {
                let last = self.url.path().rsplit('/').next().unwrap_or_default().to_ascii_lowercase();
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
            _ => false,
        }
    }

    /// On another origin than the route's upstream, or outside its base path.
    pub fn off_upstream(&self, cfg: &RouteConfig) -> bool {
        self.url.below(cfg.upstream.origin(), &cfg.upstream.base_path).is_none()
    }
}

/// A route's signed endpoints for one metadata document (or none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub list: Vec<SignedEndpoint>,
    /// What was learned while building the table (endpoints on other origins, aliases, and
    /// endpoints left out), for the log at discovery and for `check`.
    pub notes: Vec<String>,
}

impl Endpoints {
    /// The endpoint the app reaches at `<prefix><app_path>` (`app_path` normalized).
    pub fn by_app_path(&self, app_path: &str) -> Option<&SignedEndpoint> {
        self.list.iter().find(|e| e.app_path == app_path)
    }

    /// The endpoint published or sent at `url` (forward mode, where the app calls the AS's URL).
    pub fn by_url(&self, url: &EndpointUrl) -> Option<&SignedEndpoint> {
        self.list
            .iter()
            .find(|e| e.url.origin() == url.origin() && e.url.path() == url.path())
            .or_else(|| self.list.iter().find(|e| e.send.origin() == url.origin() && e.send.path() == url.path()))
    }

    /// The token endpoint: the metadata's, else the first configured endpoint.
    pub fn token(&self) -> Option<&SignedEndpoint> {
        self.list
            .iter()
            .find(|e| e.kind == EndpointKind::Token)
            .or_else(|| self.list.iter().find(|e| matches!(e.source, EndpointSource::Config | EndpointSource::Default)))
    }

    /// Builds the table for `cfg` with `meta` (see the module docs).
    pub fn build(cfg: &RouteConfig, meta: Option<&Metadata>) -> Endpoints {
        let mut table = Endpoints::default();
        let upstream_origin = cfg.upstream.origin();
        let base = cfg.upstream.base_path.as_str();
        // Metadata endpoints by member, normalized once.
        let published: Vec<(&'static str, EndpointUrl)> = meta
            .map(|m| {
                m.client_auth_endpoints()
                    .into_iter()
                    .filter_map(|(member, raw)| match EndpointUrl::parse(raw) {
                        Ok(u) => Some((member, u)),
                        Err(e) => {
                            table.notes.push(format!("metadata {member} is not usable and is not signed: {e}"));
                            None
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let alias_of = |member: &str, notes: &mut Vec<String>| -> Option<EndpointUrl> {
            cfg.mtls.as_ref()?;
            let raw = meta?.mtls_endpoint_aliases.get(member)?;
            match EndpointUrl::parse(raw) {
                Ok(a) if a.is_https() => {
                    if a.origin() != upstream_origin {
                        notes.push(format!(
                            "{member}: the mTLS alias {a} is on another origin than the upstream {upstream_origin}; \
                             certificate-bound calls go there (RFC 8705 §5)"
                        ));
                    }
                    Some(a)
                }
                Ok(a) => {
                    notes.push(format!("{member}: the mTLS alias {a} is not https and is not used"));
                    None
                }
                Err(e) => {
                    notes.push(format!("{member}: the mTLS alias is not usable: {e}"));
                    None
                }
            }
        };
        if let (Some(_), false) = (meta, cfg.endpoints_configured) {
            for (member, url) in &published {
                if !url.is_https() && !is_loopback_upstream(url.host()) {
                    table.notes.push(format!(
                        "metadata {member} {url} is plain http on a non-loopback host: tokenrelay never sends client \
                         credentials in clear, so it is not signed"
                    ));
                    continue;
                }
                let below = url.below(upstream_origin, base).map(|r| if r.is_empty() { "/" } else { r });
                let mut app_path = below.unwrap_or(url.path()).to_string();
                if table.by_app_path(&app_path).is_some() {
                    app_path = format!("/{member}");
                }
                let send = alias_of(member, &mut table.notes).unwrap_or_else(|| url.clone());
                if below.is_none() {
                    table.notes.push(format!(
                        "{member} {url} is outside the upstream {}{base}: signed and sent there; the app calls {}{app_path}",
                        upstream_origin, cfg.prefix
                    ));
                }
                table.list.push(SignedEndpoint {
                    app_path,
                    url: url.clone(),
                    send,
                    kind: EndpointKind::of_member(member),
                    source: EndpointSource::Metadata(member),
                });
            }
            // Metadata that names no token endpoint still gets `/token` signed.
            if table.list.is_empty() {
                table.push_configured(cfg, &published, &alias_of);
            }
        } else {
            table.push_configured(cfg, &published, &alias_of);
        }
        table
    }

    fn push_configured(
        &mut self,
        cfg: &RouteConfig,
        published: &[(&'static str, EndpointUrl)],
        alias_of: &dyn Fn(&str, &mut Vec<String>) -> Option<EndpointUrl>,
    ) {
        let source = if cfg.endpoints_configured { EndpointSource::Config } else { EndpointSource::Default };
        for path in &cfg.endpoints {
            let app_path = match normalize_path(path) {
                Ok(p) => p.into_owned(),
                Err(_) => continue, // refused at load (config::check)
            };
            let url = EndpointUrl::join(cfg.upstream.origin(), &cfg.upstream.base_path, &app_path);
            let member = published.iter().find(|(_, u)| u.origin() == url.origin() && u.path() == url.path());
            let kind = member.map_or(EndpointKind::Other, |(m, _)| EndpointKind::of_member(m));
            let send = member.and_then(|(m, _)| alias_of(m, &mut self.notes)).unwrap_or_else(|| url.clone());
            if self.by_app_path(&app_path).is_none() {
                self.list.push(SignedEndpoint { app_path, url, send, kind, source });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg(toml: &str) -> RouteConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, toml).unwrap();
        crate::config::load(&path).unwrap().routes.remove(0)
    }

    fn meta(json: &str) -> Metadata {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn metadata_spellings_and_other_origins_are_signed_where_published() {
        let c = cfg(r#"
[routes.iss]
prefix = "/iss"
issuer = "http://localhost:9000"
[routes.iss.client]
id = "app"
auth = "client_secret_post"
secret = "s"
"#);
        let m = meta(
            r#"{"issuer":"http://localhost:9000","token_endpoint":"http://LOCALHOST:9000/token",
            "pushed_authorization_request_endpoint":"http://127.0.0.1:9001/par",
            "introspection_endpoint":"http://127.0.0.1:9001/token",
            "revocation_endpoint":"http://as.example/revoke"}"#,
        );
        let t = Endpoints::build(&c, Some(&m));
        let token = t.by_app_path("/token").unwrap();
        assert_eq!(token.send.to_string(), "http://localhost:9000/token");
        assert_eq!(token.kind, EndpointKind::Token);
        let par = t.by_app_path("/par").unwrap();
        assert_eq!(par.send.to_string(), "http://127.0.0.1:9001/par");
        assert!(par.off_upstream(&c));
        // Same path as the token endpoint on another origin: reachable by member name.
        let introspect = t.by_app_path("/introspection_endpoint").unwrap();
        assert_eq!(introspect.send.to_string(), "http://127.0.0.1:9001/token");
        assert!(!introspect.wants_proof());
        // Plain http off loopback is never signed (nor sent with credentials).
        assert!(t.list.iter().all(|e| e.url.host() != "as.example"));
        assert!(t.notes.iter().any(|n| n.contains("plain http")), "{:?}", t.notes);
        assert_eq!(t.token().unwrap().app_path, "/token");
        let found = t.by_url(&EndpointUrl::parse("http://127.0.0.1:9001/par").unwrap()).unwrap();
        assert_eq!(found.kind, EndpointKind::Par);
    }

    #[test]
    fn an_mtls_alias_on_another_origin_is_followed_and_noted() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&format!(
            r#"
[routes.m]
prefix = "/m"
issuer = "https://as.example"
[routes.m.mtls]
cert = "{0}/c.pem"
key = "{0}/k.pem"
"#,
            dir.path().display()
        ));
        let m = meta(
            r#"{"issuer":"https://as.example","token_endpoint":"https://as.example/token",
            "mtls_endpoint_aliases":{"token_endpoint":"https://MTLS.as.example:443/token","revocation_endpoint":"http://mtls.as.example/revoke"},
            "revocation_endpoint":"https://as.example/revoke"}"#,
        );
        let t = Endpoints::build(&c, Some(&m));
        let token = t.by_app_path("/token").unwrap();
        assert_eq!(token.send.to_string(), "https://mtls.as.example/token");
        assert_eq!(token.url.to_string(), "https://as.example/token");
        assert!(t.notes.iter().any(|n| n.contains("another origin") && n.contains("RFC 8705")), "{:?}", t.notes);
        // A plain-http alias is never used.
        assert_eq!(t.by_app_path("/revoke").unwrap().send.to_string(), "https://as.example/revoke");
        assert!(t.notes.iter().any(|n| n.contains("not https")), "{:?}", t.notes);
    }

    #[test]
    fn configured_endpoints_are_normalized_paths_under_the_upstream() {
        let c = cfg(r#"
[routes.a]
prefix = "/a"
upstream = "https://AS.example:443/base"
endpoints = ["/oauth2/./token", "/revoke"]
"#);
        let t = Endpoints::build(&c, None);
        assert_eq!(t.list[0].app_path, "/oauth2/token");
        assert_eq!(t.list[0].send.to_string(), "https://as.example/base/oauth2/token");
        assert!(t.list[0].wants_proof());
        assert!(!t.list[1].wants_proof());
        assert_eq!(t.token().unwrap().app_path, "/oauth2/token");
    }
}
