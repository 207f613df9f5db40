//! Step 3: client authentication (RFC 6749 §2.3, RFC 7521/7523, RFC 8705 §2).
//!
//! One method per request (RFC 6749 §2.3): whatever the app sent that competes with the
//! configured method (`client_secret`, `Authorization: Basic`, `client_assertion(_type)`) is
//! removed before tokenrelay's own credential goes in. Time and `jti` come in as arguments
//! so the step is a pure function that tests can pin.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use serde::Serialize;
use serde_json::{Map, Value};

use super::form::Form;
use crate::config::{Audience, AuthMethod, ClientConfig, RouteConfig};
use crate::error::ProxyError;
use crate::jose;
use crate::keys::Credential;

/// RFC 7523 §2.2.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Parameters tokenrelay reads or writes for client authentication: duplicates are refused.
pub const OWNED_PARAMS: [&str; 4] = ["client_id", "client_secret", "client_assertion", "client_assertion_type"];

/// What was injected, for the log line (never the credential itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Injected {
    pub method: &'static str,
    pub kid: Option<String>,
    pub jti: Option<String>,
    pub removed: Vec<&'static str>,
    /// The assertion sent, without its signature (for the exchange record).
    pub assertion: Option<crate::explain::Sent>,
}

/// The request being signed, as the AS will see it.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// Upstream URL of the endpoint called, without query (`aud = "endpoint"`).
    pub endpoint_url: &'a str,
    /// Token endpoint URL as used (the mTLS alias when one applies): `aud = "token_endpoint"`.
    pub token_endpoint: &'a str,
    pub now: u64,
    pub jti: String,
    /// `x5t#S256` of `client.cert` (RFC 7515 §4.1.8), when configured.
    pub x5t_s256: Option<&'a str>,
}

/// The `aud` claim (RFC 7523 §3, draft-ietf-oauth-rfc7523bis §4): from config, never from the incoming request.
pub fn audience(route: &RouteConfig, client: &ClientConfig, call: &Call<'_>) -> String {
    match &client.audience {
        Audience::Issuer => route.issuer.clone().unwrap_or_else(|| call.token_endpoint.to_string()),
        Audience::TokenEndpoint => call.token_endpoint.to_string(),
        Audience::Endpoint => call.endpoint_url.to_string(),
        Audience::Literal(url) => url.clone(),
    }
}

/// Applies the route's client authentication to `headers` and `form`.
pub fn apply(
    route: &RouteConfig,
    credential: &Credential,
    call: &Call<'_>,
    headers: &mut HeaderMap,
    form: &mut Form,
) -> Result<Injected, ProxyError> {
    let Some(client) = &route.client else {
        return Ok(Injected::default());
    };
    form.check_single(OWNED_PARAMS).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    // RFC 7521 §4.2: a client_id the app sent must name the configured client.
    if let Some(sent) = form.get("client_id").map_err(|e| ProxyError::BadRequest(e.to_string()))? {
        if sent != client.id {
            return Err(ProxyError::BadRequest(format!(
                "the app sent client_id {sent:?} but route {:?} is configured for client {:?} (routes.{}.client.id)",
                route.name, client.id, route.name
            )));
        }
    }
    let mut injected = Injected { method: client.auth.as_str(), ..Injected::default() };
    if client.auth == AuthMethod::None {
        form.set("client_id", &client.id);
        return Ok(injected);
    }
    // RFC 6749 §2.3: one method per request; remove whatever competes with ours.
    for name in ["client_secret", "client_assertion", "client_assertion_type"] {
        if form.remove(name) {
            injected.removed.push(name);
        }
    }
    let is_basic = |v: &HeaderValue| v.as_bytes().len() >= 6 && v.as_bytes()[..6].eq_ignore_ascii_case(b"basic ");
    if headers.get(header::AUTHORIZATION).is_some_and(is_basic) {
        headers.remove(header::AUTHORIZATION);
        injected.removed.push("authorization: basic");
    }

    match (client.auth, credential) {
        (AuthMethod::ClientSecretBasic, Credential::Secret(secret)) => {
            // RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
            let id: String = form_urlencoded::byte_serialize(client.id.as_bytes()).collect();
            let pw: String = form_urlencoded::byte_serialize(secret.expose().as_bytes()).collect();
            let value = format!("Basic {}", STANDARD.encode(format!("{id}:{pw}")));
            let value = HeaderValue::from_str(&value)
                .map_err(|_| ProxyError::Signing("client secret cannot be sent in a header".into()))?;
            headers.insert(header::AUTHORIZATION, value);
        }
        (AuthMethod::ClientSecretPost, Credential::Secret(secret)) => {
            form.set("client_id", &client.id);
            form.set("client_secret", secret.expose());
        }
        (AuthMethod::ClientSecretJwt, Credential::Secret(secret)) => {
            let (header, claims) = assertion_parts(route, client, call, None);
            let jwt = jose::sign_hs256(secret.expose().as_bytes(), header, &claims).map_err(|e| {
                ProxyError::Signing(format!("route {:?}: client_secret_jwt signing failed: {e}", route.name))
            })?;
            set_assertion(form, &client.id, &jwt);
            injected.assertion = Some(crate::explain::Sent::of(&jwt));
            injected.jti = Some(call.jti.clone());
        }
        (AuthMethod::PrivateKeyJwt, Credential::Key(key)) => {
            let kid = client.kid.clone().unwrap_or_else(|| key.thumbprint().to_string());
            let (header, claims) = assertion_parts(route, client, call, Some(&kid));
            let jwt = key.sign(header, &claims).map_err(|e| {
                ProxyError::Signing(format!("route {:?}: signing with client.key failed: {e}", route.name))
            })?;
            set_assertion(form, &client.id, &jwt);
            injected.assertion = Some(crate::explain::Sent::of(&jwt));
            injected.kid = Some(kid);
            injected.jti = Some(call.jti.clone());
        }
        (AuthMethod::PrivateKeyJwt, Credential::Fetched(fetched)) => {
            // Made elsewhere: sent as it is (RFC 7523 §2.2), its own `kid` and `jti`.
            let jwt = fetched.jwt.expose();
            set_assertion(form, &client.id, jwt);
            injected.assertion = Some(crate::explain::Sent::of(jwt));
            injected.kid =
                jose::peek_header(jwt).ok().and_then(|h| h.get("kid").and_then(Value::as_str).map(str::to_string));
            injected.jti = fetched.claims.get("jti").and_then(Value::as_str).map(str::to_string);
        }
        (AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth, _) => {
            // RFC 8705 §2: the certificate authenticates; client_id names the client.
            form.set("client_id", &client.id);
        }
        (method, _) => {
            return Err(ProxyError::Signing(format!(
                "route {:?}: no credential loaded for {} (check routes.{}.client)",
                route.name,
                method.as_str(),
                route.name
            )));
        }
    }
    Ok(injected)
}

fn set_assertion(form: &mut Form, client_id: &str, jwt: &str) {
    form.set("client_id", client_id);
    form.set("client_assertion_type", JWT_BEARER);
    form.set("client_assertion", jwt);
}

/// The claims of a client assertion (RFC 7523 §3), in the order the map they replace had them
/// (serde_json keeps insertion order here: josekit turns on `preserve_order`), so the JSON is
/// the same bytes without a map of owned strings per request.
#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: String,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    exp: u64,
    jti: &'a str,
}

/// Header and claims of a client assertion (RFC 7523 §3).
fn assertion_parts<'a>(
    route: &RouteConfig,
    client: &'a ClientConfig,
    call: &'a Call<'_>,
    kid: Option<&str>,
) -> (Map<String, Value>, AssertionClaims<'a>) {
    let mut header = Map::new();
    if let Some(kid) = kid {
        header.insert("kid".into(), kid.into());
    }
    if let Some(typ) = &client.typ {
        header.insert("typ".into(), typ.clone().into());
    }
    if let Some(x5t) = call.x5t_s256 {
        header.insert("x5t#S256".into(), x5t.into());
    }
    let claims = AssertionClaims {
        iss: &client.id,
        sub: &client.id,
        aud: audience(route, client, call),
        iat: call.now,
        nbf: client.nbf.then_some(call.now),
        exp: call.now + client.lifetime.as_secs(),
        jti: &call.jti,
    };
    (header, claims)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::jose::{Alg, SigningKey, VerifyKey};
    use crate::redact::Secret;

    fn route(auth: &str, extra: &str) -> RouteConfig {
        let toml = format!(
            "[routes.r]\nprefix = \"/r\"\nupstream = \"https://as.example.com\"\nissuer = \"https://as.example.com/\"\n\
             [routes.r.client]\nid = \"app\"\nauth = \"{auth}\"\nkey = \"k.pem\"\nsecret = \"s3cr3t\"\n{extra}"
        );
        crate::config::parse(&toml, Path::new("proxy.toml")).unwrap().routes.remove(0)
    }

    fn call() -> Call<'static> {
        Call {
            endpoint_url: "https://as.example.com/token",
            token_endpoint: "https://as.example.com/token",
            now: 1_700_000_000,
            jti: "jti-1".into(),
            x5t_s256: None,
        }
    }

    #[test]
    fn pkj_private_key_jwt_claims_and_competitors_removed() {
        let r = route("private_key_jwt", "");
        let key = Arc::new(SigningKey::generate(Alg::ES256).unwrap());
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Basic YXBwOnNlY3JldA==".parse().unwrap());
        let mut form =
            Form::parse(b"grant_type=client_credentials&client_secret=x&client_assertion=old&client_assertion_type=t");
        let inj = apply(&r, &Credential::Key(key.clone()), &call(), &mut headers, &mut form).unwrap();
        assert!(headers.get("authorization").is_none(), "RFC 6749 §2.3: Basic removed");
        assert_eq!(form.get("client_secret").unwrap(), None, "RFC 6749 §2.3: client_secret removed");
        assert_eq!(form.get("client_assertion_type").unwrap().as_deref(), Some(JWT_BEARER), "RFC 7523 §2.2");
        let jwt = form.get("client_assertion").unwrap().unwrap();
        let v = jose::verify(&jwt, Alg::ES256, VerifyKey::Jwk(key.public_jwk())).unwrap();
        assert_eq!(v.claims["iss"], "app", "RFC 7523 §3: iss = sub = client_id");
        assert_eq!(v.claims["sub"], "app", "RFC 7523 §3: iss = sub = client_id");
        assert_eq!(v.claims["aud"], "https://as.example.com/", "aud: the issuer as a single string");
        assert_eq!(v.claims["exp"].as_u64().unwrap() - v.claims["iat"].as_u64().unwrap(), 60, "exp - iat = lifetime");
        assert_eq!(v.header["kid"], key.thumbprint(), "kid = RFC 7638 thumbprint");
        assert_eq!(inj.jti.as_deref(), Some("jti-1"));
        assert_eq!(form.get("client_id").unwrap().as_deref(), Some("app"));
    }

    #[test]
    fn pkj3_audience_choices() {
        let r = route("private_key_jwt", "audience = \"token_endpoint\"\n");
        assert_eq!(audience(&r, r.client.as_ref().unwrap(), &call()), "https://as.example.com/token");
        let r = route("private_key_jwt", "audience = \"endpoint\"\n");
        let par = Call { endpoint_url: "https://as.example.com/par", ..call() };
        assert_eq!(audience(&r, r.client.as_ref().unwrap(), &par), "https://as.example.com/par");
        let r = route("private_key_jwt", "audience = \"https://aud.example\"\n");
        assert_eq!(audience(&r, r.client.as_ref().unwrap(), &call()), "https://aud.example");
    }

    #[test]
    fn pkj2_foreign_client_id_refused() {
        let r = route("private_key_jwt", "");
        let key = Arc::new(SigningKey::generate(Alg::ES256).unwrap());
        let mut form = Form::parse(b"client_id=someone-else");
        let err = apply(&r, &Credential::Key(key), &call(), &mut HeaderMap::new(), &mut form).unwrap_err();
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn tr2_duplicate_client_id_refused() {
        let r = route("client_secret_post", "");
        let mut form = Form::parse(b"client_id=app&client_id=app");
        let err =
            apply(&r, &Credential::Secret(Secret::new("s")), &call(), &mut HeaderMap::new(), &mut form).unwrap_err();
        assert!(err.to_string().contains("more than once"), "{err}");
    }

    #[test]
    fn client_secret_basic_encodes_per_rfc6749() {
        let r = route("client_secret_basic", "");
        let mut headers = HeaderMap::new();
        let mut form = Form::parse(b"grant_type=client_credentials&client_secret=app-sent");
        apply(&r, &Credential::Secret(Secret::new("a b:c")), &call(), &mut headers, &mut form).unwrap();
        let basic = headers["authorization"].to_str().unwrap().strip_prefix("Basic ").unwrap();
        assert_eq!(STANDARD.decode(basic).unwrap(), b"app:a+b%3Ac");
        assert_eq!(form.encode(), b"grant_type=client_credentials");
    }
}
