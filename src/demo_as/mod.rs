//! The built-in demo authorization server: small, strict, and honest about what it checked.
//!
//! It knows the clients of every configured route (their public keys and secrets come from
//! the live snapshot), authenticates them at the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2,
//! RFC 8705 §2), checks DPoP proofs (RFC 9449 §4.3), and answers `client_credentials`
//! (RFC 6749 §4.4), `authorization_code` with PKCE S256 (RFC 6749 §4.1, RFC 7636) and
//! `refresh_token` (RFC 6749 §6, rotated) with tokens plus a `verified` object listing each
//! check it made. `/authorize` signs a configured demo user in without a login page and
//! redirects back with a code; `openid` adds an ID token signed with a key generated at
//! start and published at `/jwks`. It publishes its metadata (RFC 8414 §3, OpenID Connect
//! Discovery 1.0 §3) and hosts a resource endpoint (`/resource`) that accepts DPoP-bound
//! tokens only with a matching proof and `ath` (RFC 9449 §7).
//! It is a development aid for `cargo run`, not a production AS.
//!
//! This file holds the [`DemoAs`] type, routing, the metadata, JWKS and resource endpoints
//! and [`spawn`]; `authorize` holds the authorization endpoint and the redirect URI rules,
//! `token` the token endpoint and client authentication, `grants` the codes and tokens
//! issued (single use, rotation, revocation), `id_token` the ID token key and JWKS, `verify`
//! the checks (assertions, DPoP proofs, certificates, secrets, the `jti` replay cache) and
//! `tls` the HTTPS server configuration.

// Checks return `Result<_, Response>`: the error *is* the OAuth error answer, built once per
// failed request, so its size does not matter.
#![allow(clippy::result_large_err)]

mod authorize;
mod grants;
mod id_token;
mod tls;
mod token;
mod verify;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::body::{full, Body};
use crate::config::DemoAsConfig;
use crate::jose::{Alg, JoseError};
use crate::snapshot::{Route, Snapshot};

use grants::Ledger;
use id_token::IdTokenKey;
use verify::Verifier;

/// How long an access token this AS issues lives, in seconds (RFC 6749 §5.1 `expires_in`).
const TOKEN_LIFETIME: u64 = 300;

/// The largest request body read (token and POSTed authorization requests).
const MAX_BODY: usize = 64 * 1024;

/// The demo AS state.
pub struct DemoAs {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    verifier: Verifier,
    /// Codes, refresh and access tokens issued.
    ledger: Mutex<Ledger>,
    /// Signs ID tokens; published at `/jwks`.
    id_key: IdTokenKey,
    /// `[demo_as] user`: whom `/authorize` signs in.
    user: String,
    /// `[demo_as] redirect_uris`, per client id.
    redirect_uris: BTreeMap<String, Vec<String>>,
    /// Served over HTTPS (then it takes the RFC 8705 client authentication methods).
    tls: bool,
    /// `[demo_as.federated]`: clients that authenticate with an external issuer's assertions.
    federated: BTreeMap<String, crate::config::FederatedCredential>,
}

type Answer = Response<Body>;

/// Seconds since the Unix epoch (0 if the clock is before it).
fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn json_response(status: StatusCode, body: Value) -> Answer {
    json_typed(status, body, "application/json")
}

fn json_typed(status: StatusCode, body: Value, content_type: &'static str) -> Answer {
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An OAuth error answer (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: impl Into<String>) -> Answer {
    json_response(status, json!({ "error": error, "error_description": description.into() }))
}

/// A request body of at most [`MAX_BODY`] bytes, within the header-read deadline (a client
/// that stalls mid-body must not hold its connection slot).
async fn read_body(body: Incoming) -> Result<Bytes, Answer> {
    let read = tokio::time::timeout(crate::server::HEADER_READ_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await;
    match read {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(_)) => Err(oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "body unreadable or over 64 KiB")),
        Err(_) => {
            Err(oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "the request body did not arrive in time"))
        }
    }
}

/// The live route whose client is `client_id`: how the demo AS knows its clients.
fn client_route<'a>(snapshot: &'a Snapshot, client_id: &str) -> Option<&'a Arc<Route>> {
    snapshot.routes.iter().find(|r| r.cfg.client.as_ref().is_some_and(|c| c.id == client_id))
}

impl DemoAs {
    /// A demo AS whose issuer is `http://<addr>` (or `https://` with `settings.tls`), with
    /// a fresh ID token key.
    pub fn new(
        addr: SocketAddr,
        snapshot: watch::Receiver<Arc<Snapshot>>,
        settings: &DemoAsConfig,
    ) -> Result<DemoAs, JoseError> {
        let scheme = if settings.tls { "https" } else { "http" };
        Ok(DemoAs {
            snapshot,
            verifier: Verifier::new(format!("{scheme}://{addr}"), settings.dpop_nonce),
            ledger: Mutex::new(Ledger::default()),
            id_key: IdTokenKey::generate()?,
            user: settings.user.clone(),
            redirect_uris: settings.redirect_uris.clone(),
            tls: settings.tls,
            federated: settings.federated.clone(),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.verifier.issuer
    }

    /// The ledger, or a `server_error` answer if a panic poisoned it.
    fn ledger(&self) -> Result<MutexGuard<'_, Ledger>, Answer> {
        self.ledger.lock().map_err(|_| {
            oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the demo AS's token state is unavailable")
        })
    }

    async fn serve(self: Arc<Self>, req: Request<Incoming>, peer_cert: Option<&[u8]>) -> Answer {
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/.well-known/oauth-authorization-server" | "/.well-known/openid-configuration") => {
                self.metadata()
            }
            (Method::GET, "/jwks") => json_typed(StatusCode::OK, self.id_key.jwks(), "application/jwk-set+json"),
            (Method::GET | Method::POST, "/authorize") => self.authorize(req).await,
            (Method::POST, "/token") => self.token(req, peer_cert).await,
            (_, "/resource") => self.resource(req),
            (_, "/authorize" | "/token" | "/jwks") => {
                oauth_error(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", format!("{} {path}", req.method()))
            }
            _ => oauth_error(StatusCode::NOT_FOUND, "not_found", format!("the demo AS has no {path}")),
        }
    }

    /// Authorization server metadata (RFC 8414 §2, served as §3 describes; the same
    /// document as OpenID Connect Discovery 1.0 §3): exactly what this server does.
    fn metadata(&self) -> Answer {
        let issuer = self.issuer();
        let algs: Vec<&str> = Alg::ASYMMETRIC.iter().map(|a| a.as_str()).collect();
        let mut auth_methods =
            vec!["private_key_jwt", "client_secret_jwt", "client_secret_post", "client_secret_basic", "none"];
        if self.tls {
            auth_methods.extend(["tls_client_auth", "self_signed_tls_client_auth"]);
        }
        let mut doc = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "scopes_supported": ["openid"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": auth_methods,
            "token_endpoint_auth_signing_alg_values_supported": algs.iter().chain(["HS256"].iter()).collect::<Vec<_>>(),
            "dpop_signing_alg_values_supported": algs,
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self.id_key.alg().as_str()],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "at_hash"],
            "authorization_response_iss_parameter_supported": true,
            "request_parameter_supported": false,
            "request_uri_parameter_supported": false,
        });
        if self.tls {
            doc["tls_client_certificate_bound_access_tokens"] = true.into();
        }
        json_response(StatusCode::OK, doc)
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
        let issued = self.ledger.lock().ok().and_then(|l| l.access(token, now()));
        let Some(issued) = issued else {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_token", "unknown, expired or revoked access token");
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
        let mut answer = json!({ "ok": true, "client_id": issued.client_id, "verified": verified });
        if let Some(sub) = issued.sub {
            answer["sub"] = sub.into();
        }
        if let Some(scope) = issued.scope {
            answer["scope"] = scope.into();
        }
        json_response(StatusCode::OK, answer)
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
    #[error("cannot generate its ID token signing key: {0}")]
    Key(#[source] JoseError),
}

/// Serves the demo AS on `listener` until shutdown: plain HTTP, or HTTPS requesting (not
/// requiring) a client certificate when `[demo_as] tls = true`, within the connection budget
/// `connections` that the proxy's listeners share. Returns the issuer.
pub fn spawn(
    listener: tokio::net::TcpListener,
    config: &crate::config::Config,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    connections: Arc<crate::server::Tracker>,
    shutdown: watch::Receiver<bool>,
) -> Result<(String, tokio::task::JoinHandle<()>), SpawnError> {
    let addr = listener.local_addr().map_err(SpawnError::Addr)?;
    let settings = config.demo_as.clone().unwrap_or_else(|| DemoAsConfig::at(addr));
    let demo = Arc::new(DemoAs::new(addr, snapshot, &settings).map_err(SpawnError::Key)?);
    if !settings.tls {
        let issuer = demo.issuer().to_string();
        return Ok((issuer, tokio::spawn(crate::server::serve(listener, demo, connections, shutdown))));
    }
    let tls = tls::server_config(config)?;
    let issuer = demo.issuer().to_string();
    let task = tokio::spawn(crate::server::serve_tls(listener, tls, demo, connections, shutdown));
    Ok((issuer, task))
}
