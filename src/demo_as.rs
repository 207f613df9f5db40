//! The built-in demo authorization server: small, strict, and honest about what it checked.
//!
//! It knows the clients of every configured route (their public keys and secrets come from
//! the live snapshot), verifies client assertions (RFC 7523 §3: signature, `iss`, `sub`,
//! `aud`, `exp`, `jti` replay) and DPoP proofs (RFC 9449 §4.3), and answers
//! `client_credentials` with a token plus a `verified` object listing each check it made.
//! It also hosts a resource endpoint (`/resource`) that verifies DPoP-bound tokens with `ath`.
//! It is a development aid for `cargo run`, not a production AS.

// Checks return `Result<_, Response>`: the error *is* the OAuth error answer, built once per
// failed request, so its size does not matter.
#![allow(clippy::result_large_err)]

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
use subtle::ConstantTimeEq as _;
use tokio::sync::watch;

use crate::body::{full, Body};
use crate::config::AuthMethod;
use crate::jose::{self, Alg, VerifyKey};
use crate::rewrite::client_auth::JWT_BEARER;
use crate::rewrite::form::Form;
use crate::snapshot::{Credential, Snapshot};

/// How far `iat` may be from now, in seconds (RFC 9449 §11.1 leaves it to the server).
const CLOCK_SKEW: i64 = 60;

/// The demo AS state.
pub struct DemoAs {
    issuer: String,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    require_nonce: bool,
    nonce: String,
    seen_jti: Mutex<HashMap<String, u64>>,
    tokens: Mutex<HashMap<String, IssuedToken>>,
}

#[derive(Debug, Clone)]
struct IssuedToken {
    client_id: String,
    jkt: Option<String>,
    exp: u64,
}

type Answer = Response<Body>;

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
            issuer: format!("{scheme}://{addr}"),
            snapshot,
            require_nonce,
            nonce: crate::jose::new_jti(),
            seen_jti: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Records `jti` for its lifetime; false when already seen (replay).
    fn first_use(&self, jti: &str, exp: u64) -> bool {
        let Ok(mut seen) = self.seen_jti.lock() else {
            return false;
        };
        let t = now();
        seen.retain(|_, e| *e + CLOCK_SKEW as u64 >= t);
        seen.insert(jti.to_string(), exp).is_none()
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

    fn metadata(&self) -> Answer {
        let algs: Vec<&str> = Alg::ASYMMETRIC.iter().map(|a| a.as_str()).collect();
        json_response(
            StatusCode::OK,
            json!({
                "issuer": self.issuer,
                "token_endpoint": format!("{}/token", self.issuer),
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
        let jkt = self.check_dpop(headers, "POST", "/token", None, &mut verified)?;
        let token = crate::jose::new_jti() + &crate::jose::new_jti();
        let exp = now() + 300;
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.retain(|_, t| t.exp > now());
            tokens.insert(token.clone(), IssuedToken { client_id: client_id.clone(), jkt: jkt.clone(), exp });
        }
        let mut answer = json!({
            "access_token": token,
            "token_type": if jkt.is_some() { "DPoP" } else { "Bearer" },
            "expires_in": 300,
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

    /// Finds and verifies the client; returns its id.
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
                self.verify_assertion(&client_id, &assertion, &route.credential, client.auth, verified)?
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

    fn verify_assertion(
        &self,
        client_id: &str,
        assertion: &str,
        credential: &Credential,
        registered: AuthMethod,
        verified: &mut Map<String, Value>,
    ) -> Result<AuthMethod, Answer> {
        let invalid = |d: String| oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", d);
        let header = jose::peek_header(assertion).map_err(|e| invalid(format!("client_assertion: {e}")))?;
        let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("none");
        let alg =
            Alg::parse(alg_name).ok_or_else(|| invalid(format!("client_assertion alg {alg_name:?} not accepted")))?;
        let (checked, method) = match credential {
            Credential::Key(key) => {
                if alg != key.alg() {
                    return Err(invalid(format!("assertion alg {alg} but the registered key is for {}", key.alg())));
                }
                if let Some(kid) = header.get("kid").and_then(Value::as_str) {
                    verified.insert("kid".into(), kid.into());
                }
                (jose::verify(assertion, alg, VerifyKey::Jwk(key.public_jwk())), AuthMethod::PrivateKeyJwt)
            }
            Credential::Secret(secret) if registered == AuthMethod::ClientSecretJwt => (
                jose::verify(assertion, alg, VerifyKey::Secret(secret.expose().as_bytes())),
                AuthMethod::ClientSecretJwt,
            ),
            _ => return Err(invalid(format!("client {client_id:?} is not registered for assertions"))),
        };
        let claims = checked.map_err(|e| invalid(format!("client_assertion signature invalid: {e}")))?.claims;
        let mut checks = vec!["signature"];
        let s = |n: &str| claims.get(n).and_then(Value::as_str).map(str::to_string);
        if s("iss").as_deref() != Some(client_id) {
            return Err(invalid(format!("assertion iss {:?} is not the client id {client_id:?}", s("iss"))));
        }
        checks.push("iss");
        if s("sub").as_deref() != Some(client_id) {
            return Err(invalid(format!("assertion sub {:?} is not the client id {client_id:?}", s("sub"))));
        }
        checks.push("sub");
        let token_endpoint = format!("{}/token", self.issuer);
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == self.issuer || *a == token_endpoint,
            Some(Value::Array(list)) => list.iter().any(|a| a == &self.issuer || a == &token_endpoint),
            _ => false,
        };
        if !aud_ok {
            return Err(invalid(format!(
                "assertion aud {} is neither the issuer {:?} nor the token endpoint {token_endpoint:?}",
                claims.get("aud").map(Value::to_string).unwrap_or_else(|| "(missing)".into()),
                self.issuer
            )));
        }
        checks.push("aud");
        let t = now();
        let exp = claims.get("exp").and_then(Value::as_u64).ok_or_else(|| invalid("assertion has no exp".into()))?;
        if exp + (CLOCK_SKEW as u64) < t {
            return Err(invalid(format!("assertion expired at {exp} (now {t})")));
        }
        checks.push("exp");
        let jti = s("jti").ok_or_else(|| invalid("assertion has no jti".into()))?;
        if !self.first_use(&format!("assertion:{client_id}:{jti}"), exp) {
            return Err(invalid(format!("assertion jti {jti:?} was already used (replay)")));
        }
        checks.push("jti");
        verified.insert("assertion_alg".into(), alg.as_str().into());
        verified.insert("assertion_jti".into(), jti.into());
        verified.insert("assertion_aud".into(), claims.get("aud").cloned().unwrap_or(Value::Null));
        verified.insert("assertion_checks".into(), json!(checks));
        Ok(method)
    }

    /// RFC 9449 §4.3 checks. Returns the key thumbprint (`jkt`) when a valid proof came.
    fn check_dpop(
        &self,
        headers: &HeaderMap,
        method: &str,
        path: &str,
        access_token: Option<&str>,
        verified: &mut Map<String, Value>,
    ) -> Result<Option<String>, Answer> {
        let proofs: Vec<&HeaderValue> = headers.get_all("dpop").iter().collect();
        let bad = |d: String| oauth_error(StatusCode::BAD_REQUEST, "invalid_dpop_proof", d);
        let proof = match proofs.as_slice() {
            [] => return Ok(None),
            [one] => one.to_str().map_err(|_| bad("DPoP header is not ASCII".into()))?,
            _ => return Err(bad("more than one DPoP header (RFC 9449 §4.3 check 1)".into())),
        };
        let header = jose::peek_header(proof).map_err(|e| bad(format!("DPoP proof: {e}")))?;
        if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
            return Err(bad("DPoP proof typ is not dpop+jwt".into()));
        }
        let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("none");
        let alg = Alg::parse(alg_name)
            .filter(|a| *a != Alg::HS256)
            .ok_or_else(|| bad(format!("DPoP alg {alg_name:?} is not an accepted asymmetric algorithm")))?;
        let Some(Value::Object(jwk)) = header.get("jwk") else {
            return Err(bad("DPoP proof has no jwk header".into()));
        };
        if jwk.contains_key("d") {
            return Err(bad("DPoP jwk contains a private key".into()));
        }
        let v =
            jose::verify(proof, alg, VerifyKey::Jwk(jwk)).map_err(|e| bad(format!("DPoP signature invalid: {e}")))?;
        let s = |n: &str| v.claims.get(n).and_then(Value::as_str).map(str::to_string);
        if s("htm").as_deref() != Some(method) {
            return Err(bad(format!("DPoP htm {:?} is not {method}", s("htm"))));
        }
        let htu = format!("{}{path}", self.issuer);
        if s("htu").as_deref() != Some(htu.as_str()) {
            return Err(bad(format!("DPoP htu {:?} is not {htu:?} (the URL this server is reached at)", s("htu"))));
        }
        let iat = v.claims.get("iat").and_then(Value::as_i64).ok_or_else(|| bad("DPoP proof has no iat".into()))?;
        if (iat - now() as i64).abs() > CLOCK_SKEW {
            return Err(bad(format!("DPoP iat {iat} is too far from now")));
        }
        if self.require_nonce && s("nonce").as_deref() != Some(self.nonce.as_str()) {
            let mut resp = match access_token {
                None => oauth_error(
                    StatusCode::BAD_REQUEST,
                    "use_dpop_nonce",
                    "Authorization server requires nonce in DPoP proof",
                ),
                Some(_) => {
                    let mut r = oauth_error(
                        StatusCode::UNAUTHORIZED,
                        "use_dpop_nonce",
                        "Resource server requires nonce in DPoP proof",
                    );
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("DPoP error=\"use_dpop_nonce\", error_description=\"nonce required\""),
                    );
                    r
                }
            };
            if let Ok(v) = HeaderValue::from_str(&self.nonce) {
                resp.headers_mut().insert("dpop-nonce", v);
            }
            return Err(resp);
        }
        if let Some(token) = access_token {
            if s("ath").as_deref() != Some(jose::sha256_b64url(token.as_bytes()).as_str()) {
                return Err(bad("DPoP ath does not match the access token".into()));
            }
        }
        let jti = s("jti").ok_or_else(|| bad("DPoP proof has no jti".into()))?;
        if !self.first_use(&format!("dpop:{jti}"), iat.max(0) as u64 + CLOCK_SKEW as u64) {
            return Err(bad(format!("DPoP jti {jti:?} was already used (replay)")));
        }
        let jkt = jose::thumbprint(jwk);
        verified.insert("dpop_jkt".into(), jkt.clone().into());
        verified.insert("dpop_jti".into(), jti.into());
        verified.insert("dpop_htu".into(), htu.into());
        let mut checks = vec!["typ", "alg", "jwk", "signature", "htm", "htu", "iat", "jti"];
        if self.require_nonce {
            checks.push("nonce");
        }
        if access_token.is_some() {
            checks.push("ath");
        }
        verified.insert("dpop_checks".into(), json!(checks));
        Ok(Some(jkt))
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
            (Some(jkt), "dpop") => match self.check_dpop(headers, &method, "/resource", Some(token), &mut verified) {
                Ok(Some(seen)) if &seen == jkt => {}
                Ok(_) => {
                    return oauth_error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_token",
                        "DPoP key does not match the token's cnf.jkt",
                    )
                }
                Err(resp) => return resp,
            },
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

/// RFC 8705 §2: `self_signed_tls_client_auth` matches the registered certificate exactly;
/// `tls_client_auth` matches the registered subject DN. (The demo AS registers what the
/// route presents; it does not validate chains — a real AS does.)
fn check_certificate(
    method: AuthMethod,
    registered: Option<&[u8]>,
    presented: Option<&[u8]>,
    verified: &mut Map<String, Value>,
) -> Result<AuthMethod, Answer> {
    let invalid = |d: &str| oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", d.to_string());
    let Some(presented) = presented else {
        return Err(invalid("no client certificate was presented in the TLS handshake (RFC 8705 §2)"));
    };
    let Some(registered) = registered else {
        return Err(invalid("the client has no registered certificate"));
    };
    let ok = match method {
        AuthMethod::SelfSignedTlsClientAuth => presented == registered,
        _ => {
            crate::pki::subject_dn(presented).is_some()
                && crate::pki::subject_dn(presented) == crate::pki::subject_dn(registered)
        }
    };
    if !ok {
        return Err(invalid("the client certificate does not match the registered one"));
    }
    verified.insert("client_cert_x5t#S256".into(), jose::sha256_b64url(presented).into());
    Ok(method)
}

fn check_secret(credential: &Credential, sent: &str, method: AuthMethod) -> Result<AuthMethod, Answer> {
    match credential {
        // Constant time in the content; a length mismatch fails at once (as before).
        Credential::Secret(s) if bool::from(s.expose().as_bytes().ct_eq(sent.as_bytes())) => Ok(method),
        _ => Err(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client secret does not match")),
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

/// Accepts any client certificate in the handshake (or none): the demo AS decides per
/// client what it requires, as an AS supporting both RFC 8705 methods must.
#[derive(Debug)]
struct AnyClientCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::server::danger::ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn server_config(config: &crate::config::Config) -> Result<Arc<rustls::ServerConfig>, String> {
    let (cert, key) = crate::provision::demo_as_ca_paths(config);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let ca = crate::pki::Minted { cert_pem: read(&cert)?, key_pem: read(&key)? };
    let leaf = crate::pki::issue_leaf(&ca, &["localhost", "127.0.0.1", "::1"], crate::pki::LeafUse::Server, 30)
        .map_err(|e| e.to_string())?;
    use rustls::pki_types::pem::{self, PemObject as _};
    let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls::pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => "generated leaf has no key".to_string(),
        e => e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(AnyClientCert(provider)))
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// Serves the demo AS on `listener` until shutdown: plain HTTP, or HTTPS requesting (not
/// requiring) a client certificate when `[demo_as] tls = true`. Returns the issuer.
pub fn spawn(
    listener: tokio::net::TcpListener,
    config: &crate::config::Config,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    shutdown: watch::Receiver<bool>,
) -> Result<(String, tokio::task::JoinHandle<()>), String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let settings =
        config.demo_as.clone().unwrap_or(crate::config::DemoAsConfig { listen: addr, dpop_nonce: false, tls: false });
    if !settings.tls {
        let demo = Arc::new(DemoAs::new(addr, snapshot, settings.dpop_nonce));
        let issuer = demo.issuer.clone();
        return Ok((issuer, tokio::spawn(crate::server::serve(listener, demo, shutdown))));
    }
    let tls = server_config(config)?;
    let demo = Arc::new(DemoAs::with_scheme("https", addr, snapshot, settings.dpop_nonce));
    let issuer = demo.issuer.clone();
    let task = tokio::spawn(crate::server::serve_tls(listener, tls, demo, shutdown));
    Ok((issuer, task))
}
