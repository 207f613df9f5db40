//! Errors the proxy answers itself, as OAuth-style JSON (README "Failure policy").
//!
//! Every answer names the cause and, where there is one, the fix. The app always gets
//! `{"error": ..., "error_description": ...}` so OAuth client libraries surface the text.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Response, StatusCode};

use crate::body::{full, Body};
use crate::discovery::DiscoveryError;
use crate::upstream::UpstreamError;

/// An answer tokenrelay gives instead of (or after failing to get) the upstream's.
///
/// The error stays typed until it is shown: the exchange record keeps it (its text as
/// `refused`, its [`ProxyError::kind`] as `refused_kind`) and hints are chosen by variant
/// (see [`crate::explain::hints`]), never by matching its text.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// The app's request is malformed (RFC 6749 §5.2 `invalid_request`).
    #[error("{0}")]
    BadRequest(String),
    /// Refused for exposure reasons (foreign Host/Origin, cross-site).
    #[error("{0}")]
    Forbidden(String),
    /// Something of tokenrelay's own that does not exist (an exchange id, a local path).
    #[error("{0}")]
    NotFound(String),
    /// A request to tokenrelay's own endpoints that the state does not allow (an exchange
    /// that cannot be replayed).
    #[error("{0}")]
    Conflict(String),
    #[error("no route claims {path}; configured prefixes: {}", if prefixes.is_empty() { "(none)".to_string() } else { prefixes.join(", ") })]
    NoRoute { path: String, prefixes: Vec<String> },
    #[error("request body is over the {limit}-byte limit (raise [proxy] max_body if this is intended)")]
    TooLarge { limit: usize },
    /// Signing could not happen; the request was not forwarded.
    #[error("{0}")]
    Signing(String),
    /// The upstream could not be reached or failed mid-exchange (classified by type in
    /// [`crate::upstream::classify`]).
    #[error(transparent)]
    Upstream(UpstreamError),
    /// The upstream did not answer, or did not finish its answer, within `routes.NAME.timeout`.
    #[error(
        "upstream {url} did not {} within {} (routes.{route}.timeout)",
        if *finishing { "finish its answer" } else { "answer" },
        humantime::format_duration(*after)
    )]
    Timeout { url: String, route: String, after: Duration, finishing: bool },
    /// AS discovery found another AS than configured (RFC 8414 §3.3): the route refuses
    /// everything until the config is fixed.
    #[error("route {route:?} refuses to relay: AS discovery: {error}")]
    Discovery { route: String, error: Arc<DiscoveryError> },
    /// `rewrite_metadata` was asked for the AS's metadata before any was found.
    #[error(
        "route {route:?}: the AS's metadata is not available yet (discovery failed or is still running; see the log)"
    )]
    MetadataUnavailable { route: String },
    /// RFC 9449 §5: a DPoP route got a token that is not DPoP-bound, and `require_bound` is on.
    #[error(
        "route {route:?} sent a DPoP proof but the AS issued token_type {token_type:?}, not \"DPoP\" (RFC 9449 §5): \
         the token is not bound to the DPoP key; refused because routes.{route}.dpop.require_bound = true"
    )]
    Unbound { route: String, token_type: String },
}

/// What kind of refusal a [`ProxyError`] is, for scripts reading the exchange record
/// (`refused_kind`): one stable name per cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    BadRequest,
    Forbidden,
    NotFound,
    Conflict,
    NoRoute,
    TooLarge,
    Signing,
    UpstreamUntrusted,
    UpstreamWrongName,
    UpstreamClientCertRefused,
    UpstreamRefused,
    UpstreamNotHttp,
    UpstreamUnreadable,
    UpstreamFailed,
    Timeout,
    IssuerMismatch,
    Discovery,
    MetadataUnavailable,
    Unbound,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::NoRoute { .. } | ProxyError::NotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::Conflict(_) => StatusCode::CONFLICT,
            ProxyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Signing(_)
            | ProxyError::Upstream(_)
            | ProxyError::Discovery { .. }
            | ProxyError::MetadataUnavailable { .. }
            | ProxyError::Unbound { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The refusal's kind, as the exchange record names it.
    pub fn kind(&self) -> RefusalKind {
        match self {
            ProxyError::BadRequest(_) => RefusalKind::BadRequest,
            ProxyError::Forbidden(_) => RefusalKind::Forbidden,
            ProxyError::NotFound(_) => RefusalKind::NotFound,
            ProxyError::Conflict(_) => RefusalKind::Conflict,
            ProxyError::NoRoute { .. } => RefusalKind::NoRoute,
            ProxyError::TooLarge { .. } => RefusalKind::TooLarge,
            ProxyError::Signing(_) => RefusalKind::Signing,
            ProxyError::Upstream(e) => match e {
                UpstreamError::Untrusted { .. } => RefusalKind::UpstreamUntrusted,
                UpstreamError::WrongName { .. } => RefusalKind::UpstreamWrongName,
                UpstreamError::ClientCertRefused { .. } => RefusalKind::UpstreamClientCertRefused,
                UpstreamError::Refused { .. } => RefusalKind::UpstreamRefused,
                UpstreamError::NotHttp { .. } => RefusalKind::UpstreamNotHttp,
                UpstreamError::Unreadable { .. } => RefusalKind::UpstreamUnreadable,
                UpstreamError::Other { .. } => RefusalKind::UpstreamFailed,
            },
            ProxyError::Timeout { .. } => RefusalKind::Timeout,
            ProxyError::Discovery { error, .. } if error.is_mismatch() => RefusalKind::IssuerMismatch,
            ProxyError::Discovery { .. } => RefusalKind::Discovery,
            ProxyError::MetadataUnavailable { .. } => RefusalKind::MetadataUnavailable,
            ProxyError::Unbound { .. } => RefusalKind::Unbound,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "invalid_request",
            _ => "tokenrelay_error",
        }
    }

    /// The JSON answer. `Cache-Control: no-store` like any token-endpoint answer.
    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "error": self.code(), "error_description": self.to_string() });
        let mut resp = Response::new(full(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
        h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
        resp
    }
}
