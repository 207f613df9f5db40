//! The token endpoint (RFC 6749 §3.2): `client_credentials` (§4.4), `authorization_code`
//! (§4.1.3, with PKCE: RFC 7636 §4.5–4.6) and `refresh_token` (§6).
//!
//! Every grant first authenticates the client (RFC 6749 §2.3, RFC 7523 §2.2, RFC 8705 §2)
//! and checks the DPoP proof (RFC 9449 §4.3), and lists what it checked in the answer's
//! `verified` object. Access tokens are bound to the proof's key (`cnf.jkt`) and, over mTLS,
//! to the certificate (`cnf.x5t#S256`, RFC 8705 §3). Refresh tokens are rotated on every use;
//! a public client's are bound to its DPoP key, a confidential client's are not (RFC 9449 §5).

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use super::grants::{check_pkce, Access, Ledger, Refresh, Refused, REFRESH_LIFETIME};
use super::verify::{check_certificate, check_secret, Registration};
use super::{json_response, now, oauth_error, read_body, Answer, DemoAs, TOKEN_LIFETIME};
use crate::config::AuthMethod;
use crate::jose;
use crate::redact::Secret;
use crate::rewrite::client_auth::JWT_BEARER;
use crate::rewrite::form::Form;

/// The authenticated client of a token request.
pub(super) struct Client {
    pub(super) id: String,
    pub(super) auth: AuthMethod,
}

/// What an access token issued on this request is bound to.
struct Binding {
    /// The DPoP proof's key thumbprint (RFC 9449 §6.1).
    jkt: Option<String>,
    /// The client certificate's thumbprint (RFC 8705 §3.1).
    x5t: Option<String>,
}

fn invalid_grant(description: impl Into<String>) -> Answer {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

fn server_error(description: impl Into<String>) -> Answer {
    oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", description)
}

/// The `invalid_grant` answer for a code or refresh token refused by the [`Ledger`].
fn refused(what: &str, why: Refused) -> Answer {
    match why {
        Refused::Unknown => invalid_grant(format!("unknown {what} (never issued here, or expired and forgotten)")),
        Refused::Expired => invalid_grant(format!("the {what} has expired")),
        Refused::Replayed { revoked } => invalid_grant(format!(
            "the {what} was already used; the {revoked} token(s) issued from it are revoked (RFC 6749 §4.1.2, RFC 9700 §4.14.2)"
        )),
        Refused::Revoked => invalid_grant(format!(
            "the {what} was revoked, never used: another code or refresh token of the same grant was replayed, \
             so every token of the grant was revoked (RFC 9700 §4.14.2); start a new authorization"
        )),
    }
}

impl DemoAs {
    pub(super) async fn token(&self, req: Request<Incoming>, peer_cert: Option<&[u8]>) -> Answer {
        let (parts, body) = req.into_parts();
        let body: Bytes = match read_body(body).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        match self.token_inner(&parts.headers, &body, peer_cert) {
            Ok(resp) | Err(resp) => resp,
        }
    }

    /// The token endpoint: which grant, who the client is, the DPoP proof, then the grant.
    fn token_inner(&self, headers: &HeaderMap, body: &[u8], peer_cert: Option<&[u8]>) -> Result<Answer, Answer> {
        let bad = |e: &dyn std::fmt::Display| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", e.to_string());
        let form = Form::parse(body);
        let names: Vec<String> = form.names().map(str::to_string).collect();
        form.check_single(names.iter().map(String::as_str)).map_err(|e| bad(&e))?;
        let grant = form.get("grant_type").ok().flatten().unwrap_or_default();
        if !matches!(grant.as_str(), "client_credentials" | "authorization_code" | "refresh_token") {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!(
                    "the demo AS answers grant_type client_credentials, authorization_code and refresh_token (got {grant:?})"
                ),
            ));
        }
        let mut verified = Map::new();
        let client = self.authenticate(headers, &form, peer_cert, &mut verified)?;
        let jkt = self.verifier.dpop(headers, "POST", "/token", None, now(), &mut verified)?;
        // RFC 8705 §3: a token issued over mTLS is bound to the certificate.
        let binding = Binding { jkt, x5t: peer_cert.map(jose::sha256_b64url) };
        verified.insert("grant_type".into(), grant.clone().into());
        let get = |n: &str| form.get(n).ok().flatten();
        let now = now();
        let mut ledger = self.ledger()?;
        let answer = match grant.as_str() {
            "authorization_code" => {
                self.authorization_code(&mut ledger, &client, &form, &binding, &mut verified, now)?
            }
            "refresh_token" => self.refresh(&mut ledger, &client, &form, &binding, &mut verified, now)?,
            _ => self.access_token(&mut ledger, &client.id, None, None, get("scope"), &binding, now).1,
        };
        drop(ledger);
        let mut answer = answer;
        answer.insert("verified".into(), Value::Object(verified));
        Ok(json_response(StatusCode::OK, Value::Object(answer)))
    }

    /// Issues an access token for `client_id` (and the user `sub`, from `grant`) with
    /// `scope`, bound as `binding` says; returns it and the answer members that describe it.
    #[allow(clippy::too_many_arguments)]
    fn access_token(
        &self,
        ledger: &mut Ledger,
        client_id: &str,
        sub: Option<&str>,
        grant: Option<u64>,
        scope: Option<String>,
        binding: &Binding,
        now: u64,
    ) -> (Secret, Map<String, Value>) {
        let access = Access {
            client_id: client_id.to_string(),
            sub: sub.map(str::to_string),
            scope: scope.clone(),
            jkt: binding.jkt.clone(),
            grant,
            exp: now.saturating_add(TOKEN_LIFETIME),
        };
        let mut claims = Map::new();
        claims.insert("sub".into(), sub.unwrap_or(client_id).into());
        claims.insert("client_id".into(), client_id.into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), access.exp.into());
        claims.insert("jti".into(), jose::new_jti().into());
        if let Some(scope) = &scope {
            claims.insert("scope".into(), scope.clone().into());
        }
        let mut cnf = Map::new();
        if let Some(jkt) = &binding.jkt {
            cnf.insert("jkt".into(), jkt.clone().into());
        }
        if let Some(x5t) = &binding.x5t {
            cnf.insert("x5t#S256".into(), x5t.clone().into());
        }
        if !cnf.is_empty() {
            claims.insert("cnf".into(), Value::Object(cnf.clone()));
        }
        // A JWT access token (RFC 9068), so apps and tokenrelay's inspector can read what is
        // bound; the ledger still decides whether it is live.
        let token = match self.id_key.sign_access(self.issuer(), claims) {
            Ok(jwt) => ledger.add_access_as(Secret::new(jwt), access, now),
            Err(e) => {
                tracing::warn!("demo AS: signing a JWT access token failed ({e}); issuing an opaque one");
                ledger.add_access(access, now)
            }
        };
        let mut answer = Map::new();
        answer.insert("access_token".into(), token.expose().into());
        answer.insert("token_type".into(), if binding.jkt.is_some() { "DPoP" } else { "Bearer" }.into());
        answer.insert("expires_in".into(), TOKEN_LIFETIME.into());
        if let Some(scope) = scope {
            answer.insert("scope".into(), scope.into());
        }
        if !cnf.is_empty() {
            answer.insert("cnf".into(), Value::Object(cnf));
        }
        (token, answer)
    }

    /// Adds the refresh token (bound to `jkt` when given) and, for `openid`, the ID token.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        ledger: &mut Ledger,
        answer: &mut Map<String, Value>,
        access_token: &str,
        refresh: Refresh,
        nonce: Option<&str>,
        verified: &mut Map<String, Value>,
        now: u64,
    ) -> Result<(), Answer> {
        match &refresh.jkt {
            Some(jkt) => {
                verified.insert("refresh_token_binding".into(), "dpop".into());
                verified.insert("refresh_token_jkt".into(), jkt.clone().into());
            }
            None => {
                verified.insert("refresh_token_binding".into(), "none".into());
            }
        }
        if refresh.authz.has_scope("openid") {
            let id_token = self
                .id_key
                .sign(self.issuer(), &refresh.authz, nonce, access_token, now)
                .map_err(|e| server_error(format!("cannot sign the ID token: {e}")))?;
            answer.insert("id_token".into(), id_token.into());
        }
        let value = ledger.add_refresh(refresh, now);
        answer.insert("refresh_token".into(), value.expose().into());
        Ok(())
    }

    /// RFC 6749 §4.1.3 with RFC 7636 §4.6: the code, its client, its redirect URI, the PKCE
    /// verifier and (RFC 9449 §10) its `dpop_jkt`; then the code is used up.
    fn authorization_code(
        &self,
        ledger: &mut Ledger,
        client: &Client,
        form: &Form,
        binding: &Binding,
        verified: &mut Map<String, Value>,
        now: u64,
    ) -> Result<Map<String, Value>, Answer> {
        let get = |n: &str| form.get(n).ok().flatten();
        let invalid_request = |d: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", d);
        let value = get("code").ok_or_else(|| invalid_request("no code"))?;
        let code = ledger.code(&value, now).map_err(|why| refused("authorization code", why))?;
        let mut checks = vec!["single_use", "exp"];
        if code.authz.client_id != client.id {
            return Err(invalid_grant(format!("the code was issued to another client, not {:?}", client.id)));
        }
        checks.push("client_id");
        match (get("redirect_uri"), code.redirect_uri_sent) {
            (Some(sent), _) if sent == code.redirect_uri => {}
            (None, false) => {}
            (Some(sent), _) => {
                return Err(invalid_grant(format!(
                    "redirect_uri {sent:?} is not the one the code was issued for (RFC 6749 §4.1.3)"
                )))
            }
            (None, true) => {
                return Err(invalid_grant(
                    "redirect_uri is required: the authorization request sent one (RFC 6749 §4.1.3)",
                ))
            }
        }
        checks.push("redirect_uri");
        let verifier =
            get("code_verifier").ok_or_else(|| invalid_grant("no code_verifier; the code was issued with PKCE"))?;
        check_pkce(&verifier, &code.code_challenge).map_err(invalid_grant)?;
        checks.push("code_verifier");
        if let Some(expected) = &code.dpop_jkt {
            if binding.jkt.as_ref() != Some(expected) {
                return Err(invalid_grant("the DPoP proof's key is not the dpop_jkt of the authorization request"));
            }
            checks.push("dpop_jkt");
        }
        let grant = ledger.redeem_code(&value, now);
        verified.insert("code_checks".into(), json!(checks));
        verified.insert("code_challenge_method".into(), "S256".into());
        let authz = &code.authz;
        let (token, mut answer) = self.access_token(
            ledger,
            &authz.client_id,
            Some(&authz.sub),
            Some(grant),
            authz.scope.clone(),
            binding,
            now,
        );
        // RFC 9449 §5: a public client's refresh token is bound to its DPoP key.
        let jkt = if client.auth == AuthMethod::None { binding.jkt.clone() } else { None };
        let exp = now.saturating_add(REFRESH_LIFETIME);
        let refresh = Refresh { grant, authz: code.authz.clone(), jkt, exp };
        self.finish(ledger, &mut answer, token.expose(), refresh, code.nonce.as_deref(), verified, now)?;
        Ok(answer)
    }

    /// RFC 6749 §6: the refresh token, its client, its DPoP key when bound (RFC 9449 §5),
    /// a narrower `scope` when asked (§6: not beyond the original grant); then rotation.
    fn refresh(
        &self,
        ledger: &mut Ledger,
        client: &Client,
        form: &Form,
        binding: &Binding,
        verified: &mut Map<String, Value>,
        now: u64,
    ) -> Result<Map<String, Value>, Answer> {
        let get = |n: &str| form.get(n).ok().flatten();
        let value = get("refresh_token")
            .ok_or_else(|| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "no refresh_token"))?;
        let old = ledger.refresh_token(&value, now).map_err(|why| refused("refresh token", why))?;
        let mut checks = vec!["single_use", "exp"];
        if old.authz.client_id != client.id {
            return Err(invalid_grant(format!("the refresh token was issued to another client, not {:?}", client.id)));
        }
        checks.push("client_id");
        if let Some(bound) = &old.jkt {
            match &binding.jkt {
                Some(jkt) if jkt == bound => {}
                Some(_) => {
                    return Err(invalid_grant(
                        "the DPoP proof's key is not the one the refresh token is bound to (RFC 9449 §5)",
                    ))
                }
                None => {
                    return Err(invalid_grant(
                        "the refresh token is bound to a DPoP key (RFC 9449 §5); send a DPoP proof signed with it",
                    ))
                }
            }
            checks.push("dpop_jkt");
        }
        let scope = match get("scope") {
            Some(asked) => {
                if let Some(extra) = asked.split(' ').find(|s| !s.is_empty() && !old.authz.has_scope(s)) {
                    return Err(oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_scope",
                        format!("scope {extra:?} was not granted (RFC 6749 §6)"),
                    ));
                }
                checks.push("scope");
                Some(asked)
            }
            None => old.authz.scope.clone(),
        };
        if !ledger.rotate(&value) {
            return Err(invalid_grant("the refresh token was used concurrently"));
        }
        verified.insert("refresh_checks".into(), json!(checks));
        verified.insert("refresh_token_rotated".into(), true.into());
        let authz = &old.authz;
        let (token, mut answer) =
            self.access_token(ledger, &authz.client_id, Some(&authz.sub), Some(old.grant), scope, binding, now);
        let refresh = Refresh { exp: now.saturating_add(REFRESH_LIFETIME), ..old };
        // OIDC Core §12.2: a refreshed ID token carries no nonce.
        self.finish(ledger, &mut answer, token.expose(), refresh, None, verified, now)?;
        Ok(answer)
    }

    /// Finds and verifies the client (RFC 6749 §2.3: exactly one authentication method).
    fn authenticate(
        &self,
        headers: &HeaderMap,
        form: &Form,
        peer_cert: Option<&[u8]>,
        verified: &mut Map<String, Value>,
    ) -> Result<Client, Answer> {
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
        let route = super::client_route(&snapshot, &client_id).ok_or_else(|| {
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
                    federated: self.federated.get(&client_id),
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
        Ok(Client { id: client_id, auth: methods })
    }
}
