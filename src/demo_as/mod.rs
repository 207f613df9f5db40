//! The built-in demo authorization server: small, strict, and honest about what it checked.
//!
//! It knows the clients of every configured route (their public keys and secrets come from
//! the live snapshot), authenticates them at the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2,
//! RFC 8705 §2), checks DPoP proofs (RFC 9449 §4.3), and answers `client_credentials`
//! (RFC 6749 §4.4) with a token plus a `verified` object listing each check it made. It
//! publishes its metadata (RFC 8414 §3) and hosts a resource endpoint (`/resource`) that
//! accepts DPoP-bound tokens only with a matching proof and `ath` (RFC 9449 §7).
//! It is a development aid for `cargo run`, not a production AS.
//!
//! This file holds the [`DemoAs`] type, routing, the token, metadata and resource endpoints
//! and [`spawn`]; `verify` holds the checks (assertions, DPoP proofs, certificates,
//! secrets, the `jti` replay cache) and `tls` the HTTPS server configuration.

// Checks return `Result<_, Response>`: the error *is* the OAuth error answer, built once per
// failed request, so its size does not matter.
#![allow(clippy::result_large_err)]

mod tls;
mod verify;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::body::{full, Body};
use crate::config::AuthMethod;
use crate::jose::{self, Alg};
use crate::rewrite::client_auth::JWT_BEARER;
use crate::rewrite::form::Form;
use crate::snapshot::Snapshot;

use verify::{check_certificate, check_secret, Registration, Verifier};

/// How long an access token this AS issues lives, in seconds (RFC 6749 §5.1 `expires_in`).
const TOKEN_LIFETIME: u64 = 300;

/// The demo AS state.
pub struct DemoAs {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    verifier: Verifier,
    tokens: Mutex<HashMap<String, IssuedToken>>,
}

#[derive(Debug, Clone)]
struct IssuedToken {
    client_id: String,
    jkt: Option<String>,
    exp: u64,
}

type Answer = Response<Body>;

/// Seconds since the Unix epoch (0 if the clock is before it).
fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn json_response(status: StatusCode, body: Value) -> Answer {
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An OAuth error answer (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: impl Into<String>) -> Answer {
    json_response(status, json!({ "error": error, "error_description": description.into() }))
}

impl DemoAs {
    /// A demo AS whose issuer is `http://<addr>` (or `https://` when `tls`).
    pub fn new(addr: SocketAddr, snapshot: watch::Receiver<Arc<Snapshot>>, require_nonce: bool) -> DemoAs {
        Self::with_scheme("http", addr, snapshot, require_nonce)
    }

    fn with_scheme(
        scheme: &str,
        addr: SocketAddr,
        snapshot: watch::Receiver<Arc<Snapshot>>,
        require_nonce: bool,
    ) -> DemoAs {
        DemoAs {
            snapshot,
            verifier: Verifier::new(format!("{scheme}://{addr}"), require_nonce),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.verifier.issuer
    }

    async fn serve(self: Arc<Self>, req: Request<Incoming>, peer_cert: Option<&[u8]>) -> Answer {
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/.well-known/oauth-authorization-server" | "/.well-known/openid-configuration") => {
                self.metadata()
            }
            (Method::POST, "/token") => self.token(req, peer_cert).await,
            (_, "/resource") => self.resource(req),
            _ => oauth_error(StatusCode::NOT_FOUND, "not_found", format!("the demo AS has no {path}")),
        }
    }

    /// Authorization server metadata (RFC 8414 §2, served as §3 describes).
    fn metadata(&self) -> Answer {
        let issuer = self.issuer();
        let algs: Vec<&str> = Alg::ASYMMETRIC.iter().map(|a| a.as_str()).collect();
        json_response(
            StatusCode::OK,
            json!({
                "issuer": issuer,
                "token_endpoint": format!("{issuer}/token"),
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_jwt", "client_secret_post", "client_secret_basic", "none"],
                "token_endpoint_auth_signing_alg_values_supported": algs.iter().chain(["HS256"].iter()).collect::<Vec<_>>(),
                "dpop_signing_alg_values_supported": algs,
            }),
        )
    }

    async fn token(&self, req: Request<Incoming>, peer_cert: Option<&[u8]>) -> Answer {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "body unreadable or over 64 KiB"),
        };
        match self.token_inner(&parts.headers, &body, peer_cert) {
            Ok(resp) | Err(resp) => resp,
        }
    }

    /// The token endpoint (RFC 6749 §3.2), `client_credentials` grant only (RFC 6749 §4.4).
    fn token_inner(&self, headers: &HeaderMap, body: &[u8], peer_cert: Option<&[u8]>) -> Result<Answer, Answer> {
        let bad = |e: &dyn std::fmt::Display| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", e.to_string());
        let form = Form::parse(body);
        let names: Vec<String> = form.names().map(str::to_string).collect();
        form.check_single(names.iter().map(String::as_str)).map_err(|e| bad(&e))?;
        let get = |n: &str| form.get(n).ok().flatten();
        let grant = get("grant_type").unwrap_or_default();
        if grant != "client_credentials" {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("the demo AS answers grant_type=client_credentials only (got {grant:?})"),
            ));
        }
        let mut verified = Map::new();
        let client_id = self.authenticate(headers, &form, peer_cert, &mut verified)?;
        let jkt = self.verifier.dpop(headers, "POST", "/token", None, now(), &mut verified)?;
        let token = crate::jose::new_jti() + &crate::jose::new_jti();
        let issued_at = now();
        let exp = issued_at.saturating_add(TOKEN_LIFETIME);
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.retain(|_, t| t.exp > issued_at);
            tokens.insert(token.clone(), IssuedToken { client_id: client_id.clone(), jkt: jkt.clone(), exp });
        }
        let mut answer = json!({
            "access_token": token,
            "token_type": if jkt.is_some() { "DPoP" } else { "Bearer" },
            "expires_in": TOKEN_LIFETIME,
            "verified": Value::Object(verified),
        });
        if let Some(scope) = get("scope") {
            answer["scope"] = scope.into();
        }
        let mut cnf = Map::new();
        if let Some(jkt) = jkt {
            cnf.insert("jkt".into(), jkt.into());
        }
        // RFC 8705 §3: a token issued over mTLS is bound to the certificate.
        if let Some(der) = peer_cert {
            cnf.insert("x5t#S256".into(), jose::sha256_b64url(der).into());
        }
        if !cnf.is_empty() {
            answer["cnf"] = Value::Object(cnf);
        }
        Ok(json_response(StatusCode::OK, answer))
    }

    /// Finds and verifies the client (RFC 6749 §2.3: exactly one authentication method);
    /// returns its id.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        form: &Form,
        peer_cert: Option<&[u8]>,
        verified: &mut Map<String, Value>,
    ) -> Result<String, Answer> {
        let invalid = |d: String| oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", d);
        let get = |n: &str| form.get(n).ok().flatten();
        let snapshot = self.snapshot.borrow().clone();
        // RFC 6749 §2.3.1: Basic credentials are form-urlencoded before base64.
        let basic = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
            let b64 = v.strip_prefix("Basic ")?;
            let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (id, secret) = text.split_once(':')?;
            let dec = |s: &str| form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
            Some((dec(id)?, dec(secret)?))
        });
        let client_id = get("client_id")
            .or_else(|| basic.as_ref().map(|(id, _)| id.clone()))
            .ok_or_else(|| invalid("no client_id, client assertion or Basic credentials".into()))?;
        let route = snapshot
            .routes
            .iter()
            .find(|r| r.cfg.client.as_ref().is_some_and(|c| c.id == client_id))
            .ok_or_else(|| {
                invalid(format!("unknown client {client_id:?} (no route in proxy.toml has client.id = {client_id:?})"))
            })?;
        let Some(client) = &route.cfg.client else {
            return Err(invalid("client has no configuration".into()));
        };
        verified.insert("client_id".into(), client_id.clone().into());
        let methods = match (get("client_assertion"), get("client_secret"), &basic) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return Err(invalid("more than one client authentication method (RFC 6749 §2.3)".into()));
            }
            (Some(assertion), None, None) => {
                if get("client_assertion_type").as_deref() != Some(JWT_BEARER) {
                    return Err(invalid(format!("client_assertion_type must be {JWT_BEARER}")));
                }
                let registration = Registration {
                    id: &client_id,
                    auth: client.auth,
                    credential: &route.credential,
                    lifetime: client.lifetime,
                };
                self.verifier.assertion(&registration, &assertion, now(), verified)?
            }
            (None, Some(secret), None) => check_secret(&route.credential, &secret, AuthMethod::ClientSecretPost)?,
            (None, None, Some((_, secret))) => check_secret(&route.credential, secret, AuthMethod::ClientSecretBasic)?,
            (None, None, None) if client.auth == AuthMethod::None => AuthMethod::None,
            (None, None, None)
                if matches!(client.auth, AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth) =>
            {
                check_certificate(client.auth, route.cert_der.as_deref(), peer_cert, verified)?
            }
            (None, None, None) => {
                return Err(invalid(format!("client {client_id:?} must authenticate ({})", client.auth.as_str())))
            }
        };
        if methods != client.auth {
            return Err(invalid(format!(
                "client {client_id:?} is registered for {} but used {}",
                client.auth.as_str(),
                methods.as_str()
            )));
        }
        verified.insert("auth_method".into(), methods.as_str().into());
        Ok(client_id)
    }

    /// A protected resource: accepts a token this AS issued, DPoP-bound ones only with a
    /// valid proof and `ath` (RFC 9449 §7).
    fn resource(&self, req: Request<Incoming>) -> Answer {
        let headers = req.headers();
        let method = req.method().as_str().to_string();
        let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_token", "no Authorization header");
        };
        let (scheme, token) = auth.split_once(' ').unwrap_or((auth, ""));
        let issued = self.tokens.lock().ok().and_then(|t| t.get(token).cloned());
        let Some(issued) = issued.filter(|t| t.exp > now()) else {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_token", "unknown or expired access token");
        };
        let mut verified = Map::new();
        match (&issued.jkt, scheme.to_ascii_lowercase().as_str()) {
            (Some(jkt), "dpop") => {
                match self.verifier.dpop(headers, &method, "/resource", Some(token), now(), &mut verified) {
                    Ok(Some(seen)) if &seen == jkt => {}
                    Ok(_) => {
                        return oauth_error(
                            StatusCode::UNAUTHORIZED,
                            "invalid_token",
                            "DPoP key does not match the token's cnf.jkt",
                        )
                    }
                    Err(resp) => return resp,
                }
            }
            (Some(_), _) => {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    "DPoP-bound token sent without the DPoP scheme (RFC 9449 §7.1)",
                );
            }
            (None, "bearer") => {}
            (None, _) => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_token", "use the Bearer scheme"),
        }
        json_response(StatusCode::OK, json!({ "ok": true, "client_id": issued.client_id, "verified": verified }))
    }
}

impl crate::server::Handler for DemoAs {
    async fn call(self: Arc<Self>, req: Request<Incoming>, conn: crate::server::Conn) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let resp = self.serve(req, conn.peer_cert.as_deref()).await;
        tracing::debug!(target: "tokenrelay::demo_as", %method, %path, status = resp.status().as_u16(), "demo AS");
        resp
    }
}

/// Why the demo AS could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("its listener has no address: {0}")]
    Addr(#[source] std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
}

/// Serves the demo AS on `listener` until shutdown: plain HTTP, or HTTPS requesting (not
/// requiring) a client certificate when `[demo_as] tls = true`. Returns the issuer.
pub fn spawn(
    listener: tokio::net::TcpListener,
    config: &crate::config::Config,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    shutdown: watch::Receiver<bool>,
) -> Result<(String, tokio::task::JoinHandle<()>), SpawnError> {
    let addr = listener.local_addr().map_err(SpawnError::Addr)?;
    let settings =
        config.demo_as.clone().unwrap_or(crate::config::DemoAsConfig { listen: addr, dpop_nonce: false, tls: false });
    if !settings.tls {
        let demo = Arc::new(DemoAs::new(addr, snapshot, settings.dpop_nonce));
        let issuer = demo.issuer().to_string();
        return Ok((issuer, tokio::spawn(crate::server::serve(listener, demo, shutdown))));
    }
    let tls = tls::server_config(config)?;
    let demo = Arc::new(DemoAs::with_scheme("https", addr, snapshot, settings.dpop_nonce));
    let issuer = demo.issuer().to_string();
    let task = tokio::spawn(crate::server::serve_tls(listener, tls, demo, shutdown));
    Ok((issuer, task))
}
