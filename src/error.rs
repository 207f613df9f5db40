//! Errors the proxy answers itself, as OAuth-style JSON (README "Failure policy").
//!
//! Every answer names the cause and, where there is one, the fix. The app always gets
//! `{"error": ..., "error_description": ...}` so OAuth client libraries surface the text.

use bytes::Bytes;
use http::{header, Response, StatusCode};

use crate::body::{full, Body};

/// An answer tokenrelay gives instead of (or after failing to get) the upstream's.
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
    /// The upstream could not be reached or failed mid-exchange.
    #[error("{0}")]
    Upstream(String),
    #[error("{0}")]
    Timeout(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::NoRoute { .. } | ProxyError::NotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::Conflict(_) => StatusCode::CONFLICT,
            ProxyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Signing(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
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
