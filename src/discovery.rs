//! AS metadata discovery (RFC 8414, OpenID Connect Discovery 1.0), off the request path.
//!
//! Each route with an `issuer` owns one [`Discovery`]. It starts when the snapshot holding
//! the route is published (start, reload, SIGHUP) and runs in the background, through the
//! route's own client (same trust roots, same identity). Requests never fetch metadata
//! themselves; they read the latest [`State`]:
//!
//! - while the first attempt runs, a request waits for it, at most the route's `timeout`;
//! - after a failed attempt, requests use the configured endpoints at once, and the next
//!   attempt comes no sooner than [`FIRST_RETRY`] later, backing off to [`MAX_RETRY`];
//! - after an issuer mismatch (RFC 8414 §3.3) the route refuses every request with 502:
//!   a route whose AS is not the one configured must not sign anything for it.
//!
//! One attempt is in flight per route at any time, and a failure streak logs one warning.
//! Used for: the issuer check, the client-authenticated endpoints when `endpoints` is not
//! configured, and `mtls_endpoint_aliases` (RFC 8705 §5) for routes that present a
//! client certificate.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt as _, Full, Limited};
use serde::Deserialize;
use tokio::sync::watch;

use crate::jose::Alg;
use crate::upstream::{HttpClient, RouteUrls, UpstreamError};

/// The first retry after a failed attempt.
pub const FIRST_RETRY: Duration = Duration::from_secs(10);
/// Retries back off (doubling) up to this interval.
pub const MAX_RETRY: Duration = Duration::from_secs(300);
/// Metadata documents are small; anything bigger is not one.
const MAX_METADATA: usize = 512 * 1024;

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
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// The whole document as published (for `rewrite_metadata`).
    #[serde(skip)]
    pub document: serde_json::Map<String, serde_json::Value>,
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

    /// Configured algorithms and methods the AS does not advertise (RFC 8414 §2, RFC 9449
    /// §5.1), as warnings naming the config key.
    pub fn unsupported(&self, expect: &Expect) -> Vec<String> {
        let mut out = Vec::new();
        let methods = &self.token_endpoint_auth_methods_supported;
        if let Some(m) = expect.auth_method.filter(|m| !methods.is_empty() && !methods.iter().any(|s| s == m)) {
            out.push(format!("client.auth {m} is not in the AS's token_endpoint_auth_methods_supported {methods:?}"));
        }
        let supported = &self.token_endpoint_auth_signing_alg_values_supported;
        if let Some(alg) =
            expect.client_alg.filter(|a| !supported.is_empty() && !supported.iter().any(|s| s == a.as_str()))
        {
            out.push(format!(
                "client.alg {alg} is not in the AS's token_endpoint_auth_signing_alg_values_supported {supported:?}"
            ));
        }
        let supported = &self.dpop_signing_alg_values_supported;
        if let Some(alg) =
            expect.dpop_alg.filter(|a| !supported.is_empty() && !supported.iter().any(|s| s == a.as_str()))
        {
            out.push(format!("dpop.alg {alg} is not in the AS's dpop_signing_alg_values_supported {supported:?}"));
        }
        out
    }
}

/// What a route will sign with, checked against what the AS advertises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expect {
    pub auth_method: Option<&'static str>,
    pub client_alg: Option<Alg>,
    pub dpop_alg: Option<Alg>,
}

/// Why metadata could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// RFC 8414 §3.3: the metadata's `issuer` must be identical to the configured one.
    #[error(
        "metadata at {url} says issuer {found:?}, but routes.{route}.issuer is {configured:?}; they must be \
         identical (RFC 8414 §3.3): fix routes.{route}.issuer"
    )]
    IssuerMismatch { route: String, url: String, found: String, configured: String },
    #[error("{url}: no answer within {} (routes.{route}.timeout)", humantime::format_duration(*after))]
    Timeout { route: String, url: String, after: Duration },
    #[error("{0}")]
    Unreachable(UpstreamError),
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: not AS metadata: {reason}")]
    NotMetadata { url: String, reason: String },
    #[error("{0:?} is not a URL")]
    BadUrl(String),
}

impl DiscoveryError {
    /// A mismatch means the route talks to another AS than configured: refuse, don't fall back.
    pub fn is_mismatch(&self) -> bool {
        matches!(self, DiscoveryError::IssuerMismatch { .. })
    }
}

/// Well-known URLs for `issuer`: RFC 8414 §3.1 inserts the suffix before the issuer's path;
/// OIDC Discovery appends it.
pub fn well_known_urls(issuer: &str) -> [String; 2] {
    let trimmed = issuer.trim_end_matches('/');
    let rfc8414 = match url::Url::parse(issuer) {
        Ok(u) if u.has_host() => format!(
            "{}/.well-known/oauth-authorization-server{}",
            u.origin().ascii_serialization(),
            u.path().trim_end_matches('/')
        ),
        _ => format!("{trimmed}/.well-known/oauth-authorization-server"),
    };
    [rfc8414, format!("{trimmed}/.well-known/openid-configuration")]
}

/// Fetches and checks `issuer`'s metadata: the RFC 8414 URL first, then the OIDC one, each
/// bounded by `timeout`. `urls` names the route (and the fields a fix changes) in errors.
pub async fn fetch(
    client: &HttpClient,
    issuer: &str,
    timeout: Duration,
    urls: &RouteUrls,
) -> Result<Metadata, DiscoveryError> {
    let route = urls.route.as_str();
    let mut last = None;
    for url in well_known_urls(issuer) {
        match fetch_one(client, &url, timeout, urls).await {
            Ok(meta) if meta.issuer != issuer => {
                return Err(DiscoveryError::IssuerMismatch {
                    route: route.to_string(),
                    url,
                    found: meta.issuer,
                    configured: issuer.to_string(),
                });
            }
            Ok(meta) => return Ok(meta),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| DiscoveryError::BadUrl(issuer.to_string())))
}

async fn fetch_one(
    client: &HttpClient,
    url: &str,
    timeout: Duration,
    urls: &RouteUrls,
) -> Result<Metadata, DiscoveryError> {
    let route = urls.route.as_str();
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = url.parse().map_err(|_| DiscoveryError::BadUrl(url.to_string()))?;
    req.headers_mut().insert(http::header::ACCEPT, http::HeaderValue::from_static("application/json"));
    let timed_out = || DiscoveryError::Timeout { route: route.to_string(), url: url.to_string(), after: timeout };
    let deadline = tokio::time::Instant::now() + timeout;
    let resp = tokio::time::timeout_at(deadline, client.request(req))
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| DiscoveryError::Unreachable(crate::upstream::classify(&e, url, urls)))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(DiscoveryError::Status { url: url.to_string(), status: status.as_u16() });
    }
    let body = tokio::time::timeout_at(deadline, Limited::new(resp.into_body(), MAX_METADATA).collect())
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| DiscoveryError::NotMetadata { url: url.to_string(), reason: format!("reading it failed: {e}") })?
        .to_bytes();
    let not_metadata = |e: serde_json::Error| DiscoveryError::NotMetadata {
        url: url.to_string(),
        reason: format!("not JSON metadata: {e}"),
    };
    let document: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body).map_err(not_metadata)?;
    let mut meta: Metadata =
        serde_json::from_value(serde_json::Value::Object(document.clone())).map_err(not_metadata)?;
    meta.document = document;
    Ok(meta)
}

/// Where a route's discovery stands.
#[derive(Debug, Clone)]
pub enum State {
    /// The first attempt has not finished.
    Pending,
    Found(Arc<Metadata>),
    /// The last attempt failed; another comes later (see the module docs).
    Failed(Arc<DiscoveryError>),
}

/// Warnings about found metadata, as one route sees it.
pub type MetadataCheck = Arc<dyn Fn(&Metadata) -> Vec<String> + Send + Sync>;

/// What a background attempt needs: everything is owned, so the task outlives no borrow.
#[derive(Clone)]
pub struct Job {
    pub route: String,
    /// The route's URLs, for errors whose fix changes them.
    pub urls: RouteUrls,
    pub issuer: String,
    pub client: HttpClient,
    pub timeout: Duration,
    /// Warnings about found metadata (unadvertised algorithms, endpoints a rewrite cannot
    /// point at tokenrelay), logged once when it is found.
    pub check: MetadataCheck,
}

/// One route's discovery: the background task's latest result, shared with requests.
pub struct Discovery {
    state: watch::Sender<State>,
    job: Job,
    started: AtomicBool,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").field("issuer", &self.job.issuer).field("state", &*self.state.borrow()).finish()
    }
}

impl Discovery {
    /// A discovery that has not started: call [`Discovery::start`] from a Tokio runtime.
    pub fn new(job: Job) -> Arc<Discovery> {
        Arc::new(Discovery { state: watch::Sender::new(State::Pending), job, started: AtomicBool::new(false) })
    }

    /// Starts the background task (once; later calls do nothing). It ends when the last
    /// `Arc` of this discovery (the route of a replaced snapshot) is gone.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(run(Arc::downgrade(self), self.job.clone()));
    }

    /// The latest state, without waiting.
    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// The metadata to use now. While the first attempt runs, waits for it up to `wait`;
    /// `Ok(None)` means "use the configured endpoints"; `Err` is an issuer mismatch.
    pub async fn current(self: &Arc<Self>, wait: Duration) -> Result<Option<Arc<Metadata>>, Arc<DiscoveryError>> {
        if matches!(*self.state.borrow(), State::Pending) {
            self.start();
            let mut rx = self.state.subscribe();
            let _ = tokio::time::timeout(wait, rx.wait_for(|s| !matches!(s, State::Pending))).await;
        }
        match self.state() {
            State::Found(meta) => Ok(Some(meta)),
            State::Failed(e) if e.is_mismatch() => Err(e),
            State::Failed(_) | State::Pending => Ok(None),
        }
    }
}

/// The background loop: attempt, publish, and after a failure wait (doubling from
/// [`FIRST_RETRY`] to [`MAX_RETRY`]) before the next attempt. Ends after a success or when
/// the route is gone.
async fn run(discovery: Weak<Discovery>, job: Job) {
    let mut retry = FIRST_RETRY;
    let mut streak = 0u32;
    loop {
        let result = fetch(&job.client, &job.issuer, job.timeout, &job.urls).await;
        let Some(d) = discovery.upgrade() else { return };
        match result {
            Ok(meta) => {
                if streak > 0 {
                    tracing::info!(route = %job.route, issuer = %job.issuer, "AS discovery succeeded after {streak} failed attempts");
                } else {
                    tracing::debug!(route = %job.route, issuer = %job.issuer, "AS metadata discovered");
                }
                for warning in (job.check)(&meta) {
                    tracing::warn!(route = %job.route, "{warning}");
                }
                d.state.send_replace(State::Found(Arc::new(meta)));
                return;
            }
            Err(e) => {
                let previous = d.state.send_replace(State::Failed(Arc::new(e.clone())));
                let kind_changed = match &previous {
                    State::Failed(p) => p.is_mismatch() != e.is_mismatch(),
                    _ => false,
                };
                if streak == 0 || kind_changed {
                    let consequence = if e.is_mismatch() {
                        "requests on this route are refused with 502 until it is fixed"
                    } else {
                        "using the configured endpoints"
                    };
                    tracing::warn!(
                        route = %job.route,
                        "AS discovery failed: {e}; {consequence}; retrying in {} (and on reload)",
                        humantime::format_duration(retry)
                    );
                } else {
                    tracing::debug!(route = %job.route, streak, "AS discovery failed again: {e}");
                }
                streak += 1;
            }
        }
        drop(d);
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rfc8414_well_known_placement() {
        assert_eq!(
            well_known_urls("https://as.example.com/tenant/1"),
            [
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

    #[test]
    fn configured_algs_are_checked_against_metadata() {
        let meta: Metadata = serde_json::from_str(
            r#"{"issuer":"https://as.example","token_endpoint_auth_signing_alg_values_supported":["ES256","PS256"],
                "dpop_signing_alg_values_supported":["ES256"]}"#,
        )
        .unwrap();
        let warnings =
            meta.unsupported(&Expect { auth_method: None, client_alg: Some(Alg::EdDSA), dpop_alg: Some(Alg::ES256) });
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("client.alg EdDSA"), "{warnings:?}");
        let none = Metadata { issuer: "https://as".into(), ..Default::default() };
        assert!(none
            .unsupported(&Expect { auth_method: None, client_alg: Some(Alg::EdDSA), dpop_alg: None })
            .is_empty());
    }
}
