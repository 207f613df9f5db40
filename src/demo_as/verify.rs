//! What the demo AS checks before it issues or honours a token.
//!
//! - Client assertions (`private_key_jwt`, `client_secret_jwt`; RFC 7523 §2.2): the §3
//!   processing rules — signature or MAC (item 9), `iss` (1), `sub` (2), `aud` (3), `exp`
//!   (4), `nbf` (5) and `iat` (6) when sent, and `jti` replay (7).
//! - DPoP proofs: the RFC 9449 §4.3 checks, the server nonce (§8), `ath` at the resource
//!   (§7.1) and proof replay (§11.1).
//! - Client certificates: RFC 8705 §2.1 (`tls_client_auth`) and §2.2
//!   (`self_signed_tls_client_auth`).
//! - Client secrets: RFC 6749 §2.3.1 (`client_secret_basic`, `client_secret_post`).
//! - The replay cache of used `jti` values.
//!
//! Time claims come from untrusted JWTs, so every comparison with them is checked
//! arithmetic (`saturating_*`, `abs_diff`): a hostile `iat`, `exp` or `nbf` is refused with
//! an OAuth error, never a panic or a wrapped value, and cannot keep a replay-cache entry
//! alive for longer than the window this server accepts.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq as _;

use super::{oauth_error, Answer};
use crate::config::{AuthMethod, FederatedCredential};
use crate::jose::{self, Alg, VerifyKey};
use crate::snapshot::Credential;

/// Allowed clock difference, in seconds: how far a DPoP `iat` may be from now (RFC 9449
/// §11.1 leaves the window to the server), how long after `exp` and how early before `nbf`
/// or `iat` an assertion is still taken (RFC 7523 §3 items 4–6 allow for clock skew).
const CLOCK_SKEW: u64 = 60;

/// The assertion lifetime every client is allowed, in seconds; a route whose
/// `client.lifetime` is longer is allowed that. An `exp` further ahead (plus skew) is
/// "unreasonably far in the future" and refused (RFC 7523 §3 item 4), which also bounds how
/// long its `jti` is remembered.
const MIN_ASSERTION_LIFETIME: u64 = 300;

/// How many seconds ahead of now an assertion's `exp` may be for a client registered with
/// `lifetime` (skew included).
fn assertion_window(lifetime: Duration) -> u64 {
    lifetime.as_secs().max(MIN_ASSERTION_LIFETIME).saturating_add(CLOCK_SKEW)
}

/// A time claim as whole seconds since 1970 (RFC 7519 §2 NumericDate). `Ok(None)` when
/// absent. This server takes only non-negative integers, which is what tokenrelay sends:
/// fractions, negative values, strings, `null` and numbers past `u64::MAX` are refused.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            format!("{name} {v} is not a whole, non-negative number of seconds since 1970 (RFC 7519 §2 NumericDate)")
        }),
    }
}

/// RFC 7523 §3 items 4–6: the assertion is within its validity window at `now`. `window`
/// is how far ahead `exp` may be ([`assertion_window`]). Returns the last second at which
/// the assertion could still be accepted, which is how long its `jti` must be remembered
/// (item 7).
fn assertion_times(claims: &Map<String, Value>, now: u64, window: u64) -> Result<u64, String> {
    let exp = numeric_date(claims, "exp")?.ok_or("assertion has no exp")?;
    if exp.saturating_add(CLOCK_SKEW) < now {
        return Err(format!("assertion expired at {exp} (now {now})"));
    }
    if exp > now.saturating_add(window) {
        return Err(format!(
            "assertion exp {exp} is more than {window}s after now ({now}); RFC 7523 §3 item 4 lets the AS refuse it"
        ));
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if nbf > now.saturating_add(CLOCK_SKEW) {
            return Err(format!("assertion is not valid before {nbf} (now {now})"));
        }
    }
    if let Some(iat) = numeric_date(claims, "iat")? {
        if iat > now.saturating_add(CLOCK_SKEW) {
            return Err(format!("assertion iat {iat} is in the future (now {now})"));
        }
        if now.saturating_sub(iat) > window {
            return Err(format!("assertion iat {iat} is more than {window}s before now ({now})"));
        }
    }
    Ok(exp.saturating_add(CLOCK_SKEW))
}

/// A federated identity credential's assertion, checked the way Entra checks one: signed by a
/// key of the external issuer's JWKS, `iss` = that issuer (not the client id), `sub` = the
/// registered subject, `aud` containing the registered audience, within `exp` (and `nbf`).
/// Its `jti` is not replay-checked: the workload presents the same token until it expires.
fn federated_assertion(
    client_id: &str,
    fed: &FederatedCredential,
    assertion: &str,
    now: u64,
    verified: &mut Map<String, Value>,
) -> Result<AuthMethod, Answer> {
    let invalid = |d: String| oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", d);
    let header = jose::peek_header(assertion).map_err(|e| invalid(format!("client_assertion: {e}")))?;
    let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("none");
    let alg = Alg::parse(alg_name)
        .filter(|a| *a != Alg::HS256)
        .ok_or_else(|| invalid(format!("client_assertion alg {alg_name:?} not accepted")))?;
    let jwks: Value = std::fs::read(&fed.jwks)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| invalid(format!("the federated issuer's JWKS {} is unreadable", fed.jwks.display())))?;
    let kid = header.get("kid").and_then(Value::as_str);
    let claims = jwks["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .filter(|k| kid.is_none() || k.get("kid").and_then(Value::as_str) == kid)
        .find_map(|k| jose::verify(assertion, alg, VerifyKey::Jwk(k)).ok())
        .ok_or_else(|| {
            invalid(format!("client_assertion signature does not verify with any key of {:?}'s JWKS", fed.issuer))
        })?
        .claims;
    let mut checks = vec!["signature"];
    let s = |n: &str| claims.get(n).and_then(Value::as_str).map(str::to_string);
    if s("iss").as_deref() != Some(fed.issuer.as_str()) {
        return Err(invalid(format!(
            "assertion iss {:?} is not the federated issuer {:?} registered for {client_id:?}",
            s("iss"),
            fed.issuer
        )));
    }
    checks.push("iss");
    if s("sub").as_deref() != Some(fed.subject.as_str()) {
        return Err(invalid(format!(
            "assertion sub {:?} is not the subject {:?} registered for {client_id:?}",
            s("sub"),
            fed.subject
        )));
    }
    checks.push("sub");
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => *a == fed.audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(fed.audience.as_str())),
        _ => false,
    };
    if !aud_ok {
        return Err(invalid(format!(
            "assertion aud {} does not contain the registered audience {:?}",
            claims.get("aud").map(Value::to_string).unwrap_or_else(|| "(missing)".into()),
            fed.audience
        )));
    }
    checks.push("aud");
    let exp = numeric_date(&claims, "exp").map_err(invalid)?.ok_or_else(|| invalid("assertion has no exp".into()))?;
    if exp.saturating_add(CLOCK_SKEW) < now {
        return Err(invalid(format!("assertion expired at {exp} (now {now})")));
    }
    if let Some(nbf) = numeric_date(&claims, "nbf").map_err(invalid)? {
        if nbf > now.saturating_add(CLOCK_SKEW) {
            return Err(invalid(format!("assertion is not valid before {nbf} (now {now})")));
        }
    }
    checks.push("exp");
    verified.insert("federated".into(), true.into());
    verified.insert("assertion_alg".into(), alg.as_str().into());
    verified.insert("assertion_iss".into(), fed.issuer.clone().into());
    verified.insert("assertion_sub".into(), fed.subject.clone().into());
    if let Some(jti) = s("jti") {
        verified.insert("assertion_jti".into(), jti.into());
    }
    verified.insert("assertion_checks".into(), json!(checks));
    Ok(AuthMethod::PrivateKeyJwt)
}

/// RFC 9449 §4.3 check 11 with §11.1: `iat` is within [`CLOCK_SKEW`] of `now`. Returns the
/// last second at which the proof could still be accepted.
fn dpop_iat(claims: &Map<String, Value>, now: u64) -> Result<u64, String> {
    let iat = numeric_date(claims, "iat").map_err(|e| format!("DPoP {e}"))?.ok_or("DPoP proof has no iat")?;
    if iat.abs_diff(now) > CLOCK_SKEW {
        return Err(format!("DPoP iat {iat} is too far from now"));
    }
    Ok(iat.saturating_add(CLOCK_SKEW))
}

/// Used `jti` values, each kept while the JWT that carried it could still be accepted
/// (RFC 7523 §3 item 7, RFC 9449 §11.1), and never longer than the cap its caller gives.
#[derive(Debug, Default)]
pub(super) struct ReplayCache(Mutex<HashMap<String, u64>>);

impl ReplayCache {
    /// Records `key` as used until `until` (the last second its JWT is acceptable), stored
    /// no later than `now + cap`; false when it is already recorded (a replay), which
    /// leaves the record as it was. Expired entries are dropped first.
    pub(super) fn first_use(&self, key: &str, until: u64, now: u64, cap: u64) -> bool {
        let Ok(mut seen) = self.0.lock() else {
            return false;
        };
        seen.retain(|_, kept_until| *kept_until >= now);
        match seen.entry(key.to_string()) {
            // A replay does not extend the first use's record.
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                slot.insert(until.min(now.saturating_add(cap)));
                true
            }
        }
    }

    #[cfg(test)]
    fn kept_until(&self, key: &str) -> Option<u64> {
        self.0.lock().ok().and_then(|seen| seen.get(key).copied())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().map(|seen| seen.len()).unwrap_or(0)
    }
}

/// What a route's `[client]` registers, as the assertion check needs it.
pub(super) struct Registration<'a> {
    pub(super) id: &'a str,
    pub(super) auth: AuthMethod,
    pub(super) credential: &'a Credential,
    /// `client.lifetime`: how long the assertions this client signs live.
    pub(super) lifetime: Duration,
    /// `[demo_as.federated.ID]`: the client authenticates with assertions from an external
    /// issuer instead.
    pub(super) federated: Option<&'a FederatedCredential>,
}

/// The JWT checks of one demo AS: its issuer, nonce policy and replay cache.
pub(super) struct Verifier {
    pub(super) issuer: String,
    require_nonce: bool,
    nonce: String,
    replay: ReplayCache,
}

impl Verifier {
    pub(super) fn new(issuer: String, require_nonce: bool) -> Verifier {
        Verifier { issuer, require_nonce, nonce: jose::new_jti(), replay: ReplayCache::default() }
    }

    /// Verifies a client assertion (RFC 7523 §3) for `client` at `now`; returns the
    /// authentication method it proves.
    pub(super) fn assertion(
        &self,
        client: &Registration<'_>,
        assertion: &str,
        now: u64,
        verified: &mut Map<String, Value>,
    ) -> Result<AuthMethod, Answer> {
        let client_id = client.id;
        if let Some(federated) = client.federated {
            return federated_assertion(client_id, federated, assertion, now, verified);
        }
        let invalid = |d: String| oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", d);
        let header = jose::peek_header(assertion).map_err(|e| invalid(format!("client_assertion: {e}")))?;
        let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("none");
        let alg =
            Alg::parse(alg_name).ok_or_else(|| invalid(format!("client_assertion alg {alg_name:?} not accepted")))?;
        let (checked, method) = match client.credential {
            Credential::Key(key) => {
                if alg != key.alg() {
                    return Err(invalid(format!("assertion alg {alg} but the registered key is for {}", key.alg())));
                }
                if let Some(kid) = header.get("kid").and_then(Value::as_str) {
                    verified.insert("kid".into(), kid.into());
                }
                (jose::verify(assertion, alg, VerifyKey::Jwk(key.public_jwk())), AuthMethod::PrivateKeyJwt)
            }
            Credential::Secret(secret) if client.auth == AuthMethod::ClientSecretJwt => (
                jose::verify(assertion, alg, VerifyKey::Secret(secret.expose().as_bytes())),
                AuthMethod::ClientSecretJwt,
            ),
            _ => return Err(invalid(format!("client {client_id:?} is not registered for assertions"))),
        };
        // RFC 7523 §3 item 9.
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
        // Items 4-6: "exp" names the whole validity window (`exp`, and `nbf`/`iat` when sent).
        let window = assertion_window(client.lifetime);
        let until = assertion_times(&claims, now, window).map_err(invalid)?;
        checks.push("exp");
        let jti = s("jti").ok_or_else(|| invalid("assertion has no jti".into()))?;
        let key = format!("assertion:{client_id}:{jti}");
        if !self.replay.first_use(&key, until, now, window.saturating_add(CLOCK_SKEW)) {
            return Err(invalid(format!("assertion jti {jti:?} was already used (replay)")));
        }
        checks.push("jti");
        verified.insert("assertion_alg".into(), alg.as_str().into());
        verified.insert("assertion_jti".into(), jti.into());
        verified.insert("assertion_aud".into(), claims.get("aud").cloned().unwrap_or(Value::Null));
        verified.insert("assertion_checks".into(), json!(checks));
        Ok(method)
    }

    /// RFC 9449 §4.3 checks at `now`. Returns the key thumbprint (`jkt`) when a valid proof
    /// came, `None` when none did.
    pub(super) fn dpop(
        &self,
        headers: &HeaderMap,
        method: &str,
        path: &str,
        access_token: Option<&str>,
        now: u64,
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
        let until = dpop_iat(&v.claims, now).map_err(bad)?;
        if self.require_nonce && s("nonce").as_deref() != Some(self.nonce.as_str()) {
            return Err(self.use_dpop_nonce(access_token.is_some()));
        }
        if let Some(token) = access_token {
            if s("ath").as_deref() != Some(jose::sha256_b64url(token.as_bytes()).as_str()) {
                return Err(bad("DPoP ath does not match the access token".into()));
            }
        }
        let jti = s("jti").ok_or_else(|| bad("DPoP proof has no jti".into()))?;
        // A proof is acceptable at most `CLOCK_SKEW` past now (its `iat` may be that far
        // ahead) plus `CLOCK_SKEW` after its `iat`.
        if !self.replay.first_use(&format!("dpop:{jti}"), until, now, 2 * CLOCK_SKEW) {
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

    /// The `use_dpop_nonce` answer carrying the nonce: from the token endpoint (RFC 9449
    /// §8) or, with `WWW-Authenticate`, from the resource (RFC 9449 §9).
    fn use_dpop_nonce(&self, at_resource: bool) -> Answer {
        let mut resp = if at_resource {
            let mut r =
                oauth_error(StatusCode::UNAUTHORIZED, "use_dpop_nonce", "Resource server requires nonce in DPoP proof");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("DPoP error=\"use_dpop_nonce\", error_description=\"nonce required\""),
            );
            r
        } else {
            oauth_error(StatusCode::BAD_REQUEST, "use_dpop_nonce", "Authorization server requires nonce in DPoP proof")
        };
        if let Ok(v) = HeaderValue::from_str(&self.nonce) {
            resp.headers_mut().insert("dpop-nonce", v);
        }
        resp
    }
}

/// RFC 8705 §2: `self_signed_tls_client_auth` (§2.2) matches the registered certificate
/// exactly; `tls_client_auth` (§2.1) matches the registered subject DN. (The demo AS
/// registers what the route presents; it does not validate chains — a real AS does.)
pub(super) fn check_certificate(
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

/// RFC 6749 §2.3.1: the secret sent (Basic or form) equals the registered one.
pub(super) fn check_secret(credential: &Credential, sent: &str, method: AuthMethod) -> Result<AuthMethod, Answer> {
    match credential {
        // Constant time in the content; a length mismatch fails at once (as before).
        Credential::Secret(s) if bool::from(s.expose().as_bytes().ct_eq(sent.as_bytes())) => Ok(method),
        _ => Err(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client secret does not match")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use http_body_util::BodyExt as _;

    use super::*;
    use crate::jose::SigningKey;

    const ISSUER: &str = "http://demo.test";
    const NOW: u64 = 1_700_000_000;
    const CLIENT: &str = "demo-app";

    /// Time-claim values a hostile or broken client may send; none is acceptable anywhere
    /// near [`NOW`].
    fn hostile() -> Vec<Value> {
        vec![
            json!(i64::MIN),
            json!(i64::MIN + 1),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(u64::MAX - 1),
            json!(-1),
            json!(-(NOW as i64)),
            json!(1.5),
            json!(NOW as f64 + 0.5),
            json!(1e300),
            json!(-1e300),
            json!(NOW.to_string()),
            json!(true),
            json!([NOW]),
            Value::Null,
        ]
    }

    /// The OAuth error an answer carries: status and `error`.
    async fn oauth_error_of(resp: Answer) -> (u16, String) {
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        (status, body["error"].as_str().unwrap().to_string())
    }

    fn claims(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect()
    }

    fn assertion_claims(jti: &str) -> Map<String, Value> {
        claims(&[
            ("iss", json!(CLIENT)),
            ("sub", json!(CLIENT)),
            ("aud", json!(ISSUER)),
            ("jti", json!(jti)),
            ("iat", json!(NOW)),
            ("exp", json!(NOW + 60)),
        ])
    }

    struct Client {
        key: Arc<SigningKey>,
        credential: Credential,
    }

    impl Client {
        fn new() -> Client {
            let key = Arc::new(SigningKey::generate(Alg::ES256).unwrap());
            Client { credential: Credential::Key(key.clone()), key }
        }

        fn registration(&self) -> Registration<'_> {
            Registration {
                id: CLIENT,
                auth: AuthMethod::PrivateKeyJwt,
                credential: &self.credential,
                lifetime: Duration::from_secs(60),
                federated: None,
            }
        }

        fn sign(&self, claims: &Map<String, Value>) -> String {
            self.key.sign(Map::new(), claims).unwrap()
        }
    }

    fn dpop_headers(key: &SigningKey, claims: &Map<String, Value>) -> HeaderMap {
        let mut header = Map::new();
        header.insert("typ".into(), json!("dpop+jwt"));
        header.insert("jwk".into(), Value::Object(key.public_jwk().clone()));
        let proof = key.sign(header, claims).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("dpop", HeaderValue::from_str(&proof).unwrap());
        headers
    }

    fn dpop_claims(jti: &str, iat: Value) -> Map<String, Value> {
        claims(&[("htm", json!("POST")), ("htu", json!(format!("{ISSUER}/token"))), ("jti", json!(jti)), ("iat", iat)])
    }

    #[tokio::test]
    async fn a_well_formed_assertion_passes_once() {
        let verifier = Verifier::new(ISSUER.into(), false);
        let client = Client::new();
        let jws = client.sign(&assertion_claims("ok"));
        let mut verified = Map::new();
        let method = verifier.assertion(&client.registration(), &jws, NOW, &mut verified);
        assert!(matches!(method, Ok(AuthMethod::PrivateKeyJwt)));
        assert_eq!(verified["assertion_checks"], json!(["signature", "iss", "sub", "aud", "exp", "jti"]));
        let replay = verifier.assertion(&client.registration(), &jws, NOW + 1, &mut Map::new()).err().unwrap();
        assert_eq!(oauth_error_of(replay).await, (401, "invalid_client".to_string()));
    }

    #[tokio::test]
    async fn hostile_assertion_time_claims_are_invalid_client() {
        let verifier = Verifier::new(ISSUER.into(), false);
        let client = Client::new();
        for name in ["exp", "iat", "nbf"] {
            for (i, value) in hostile().into_iter().enumerate() {
                let mut c = assertion_claims(&format!("{name}-{i}"));
                c.insert(name.into(), value.clone());
                let jws = client.sign(&c);
                let mut verified = Map::new();
                let Err(resp) = verifier.assertion(&client.registration(), &jws, NOW, &mut verified) else {
                    panic!("{name} = {value} was accepted");
                };
                assert_eq!(oauth_error_of(resp).await, (401, "invalid_client".to_string()), "{name} = {value}");
                assert!(!verified.contains_key("assertion_checks"), "{name} = {value}");
            }
        }
        assert_eq!(verifier.replay.len(), 0, "no refused assertion is remembered");
    }

    #[tokio::test]
    async fn assertion_window_edges() {
        let verifier = Verifier::new(ISSUER.into(), false);
        let client = Client::new();
        let window = assertion_window(Duration::from_secs(60));
        let cases = [
            ("exp", json!(NOW - CLOCK_SKEW), true),
            ("exp", json!(NOW - CLOCK_SKEW - 1), false),
            ("exp", json!(NOW + window), true),
            ("exp", json!(NOW + window + 1), false),
            ("nbf", json!(NOW + CLOCK_SKEW), true),
            ("nbf", json!(NOW + CLOCK_SKEW + 1), false),
            ("nbf", json!(0), true),
            ("iat", json!(NOW + CLOCK_SKEW + 1), false),
            ("iat", json!(NOW - window - 1), false),
            ("iat", json!(0), false),
        ];
        for (i, (name, value, ok)) in cases.into_iter().enumerate() {
            let mut c = assertion_claims(&format!("edge-{i}"));
            c.insert(name.into(), value.clone());
            let result = verifier.assertion(&client.registration(), &client.sign(&c), NOW, &mut Map::new());
            assert_eq!(result.is_ok(), ok, "{name} = {value}");
        }
        // A route registered with a long lifetime may send assertions that long.
        let long = Registration { lifetime: Duration::from_secs(3600), ..client.registration() };
        let mut c = assertion_claims("long");
        c.insert("exp".into(), json!(NOW + 3600));
        assert!(verifier.assertion(&long, &client.sign(&c), NOW, &mut Map::new()).is_ok());
    }

    #[test]
    fn time_arithmetic_never_panics_at_the_extremes() {
        let values = [0, 1, CLOCK_SKEW, NOW, i64::MAX as u64, u64::MAX - CLOCK_SKEW, u64::MAX - 1, u64::MAX];
        for now in values {
            for window in [0, CLOCK_SKEW, u64::MAX] {
                for name in ["exp", "iat", "nbf"] {
                    for v in hostile().into_iter().chain(values.iter().map(|v| json!(v))) {
                        let mut c = claims(&[("exp", json!(now)), ("iat", json!(now))]);
                        c.insert(name.into(), v);
                        if let Ok(until) = assertion_times(&c, now, window) {
                            assert!(until >= now);
                        }
                        let _ = dpop_iat(&c, now);
                    }
                }
            }
        }
        assert_eq!(assertion_window(Duration::MAX), u64::MAX);
    }

    #[tokio::test]
    async fn hostile_dpop_iat_is_invalid_dpop_proof() {
        let verifier = Verifier::new(ISSUER.into(), false);
        let key = SigningKey::generate(Alg::ES256).unwrap();
        let mut iats = hostile();
        iats.extend([json!(0), json!(NOW - CLOCK_SKEW - 1), json!(NOW + CLOCK_SKEW + 1)]);
        for (i, iat) in iats.into_iter().enumerate() {
            let headers = dpop_headers(&key, &dpop_claims(&format!("iat-{i}"), iat.clone()));
            let mut verified = Map::new();
            let Err(resp) = verifier.dpop(&headers, "POST", "/token", None, NOW, &mut verified) else {
                panic!("iat = {iat} was accepted");
            };
            assert_eq!(oauth_error_of(resp).await, (400, "invalid_dpop_proof".to_string()), "iat = {iat}");
            assert!(verified.is_empty(), "iat = {iat}");
        }
        let mut c = dpop_claims("no-iat", json!(NOW));
        c.remove("iat");
        let headers = dpop_headers(&key, &c);
        let resp = verifier.dpop(&headers, "POST", "/token", None, NOW, &mut Map::new()).err().unwrap();
        assert_eq!(oauth_error_of(resp).await, (400, "invalid_dpop_proof".to_string()));
        assert_eq!(verifier.replay.len(), 0, "no refused proof is remembered");
    }

    #[tokio::test]
    async fn dpop_iat_window_edges_and_replay() {
        let verifier = Verifier::new(ISSUER.into(), false);
        let key = SigningKey::generate(Alg::ES256).unwrap();
        for (jti, iat) in [("early", NOW - CLOCK_SKEW), ("late", NOW + CLOCK_SKEW), ("now", NOW)] {
            let headers = dpop_headers(&key, &dpop_claims(jti, json!(iat)));
            let jkt = verifier.dpop(&headers, "POST", "/token", None, NOW, &mut Map::new());
            assert_eq!(jkt.ok().flatten().as_deref(), Some(key.thumbprint()), "iat = {iat}");
            let kept = verifier.replay.kept_until(&format!("dpop:{jti}")).unwrap();
            assert!(kept <= NOW + 2 * CLOCK_SKEW, "iat = {iat}: kept until {kept}");
            let replay = verifier.dpop(&headers, "POST", "/token", None, NOW, &mut Map::new()).err().unwrap();
            assert_eq!(oauth_error_of(replay).await, (400, "invalid_dpop_proof".to_string()));
        }
    }

    #[test]
    fn replay_cache_caps_a_huge_expiry() {
        let cache = ReplayCache::default();
        assert!(cache.first_use("a", u64::MAX, NOW, 300));
        assert_eq!(cache.kept_until("a"), Some(NOW + 300), "stored expiry is capped at now + cap");
        assert!(!cache.first_use("a", u64::MAX, NOW + 300, 300), "still a replay inside the cap");
        // Past the cap the entry is gone, although its JWT claimed to live forever.
        assert!(cache.first_use("b", NOW + 400, NOW + 301, 300));
        assert_eq!(cache.kept_until("a"), None);
        assert_eq!(cache.len(), 1);
        // Extreme clocks and caps do not overflow.
        assert!(cache.first_use("c", u64::MAX, u64::MAX, u64::MAX));
        assert!(!cache.first_use("c", u64::MAX, u64::MAX, u64::MAX));
        assert!(cache.first_use("d", u64::MAX, 0, u64::MAX));
    }

    #[tokio::test]
    async fn assertion_with_huge_exp_leaves_no_lasting_cache_entry() {
        let verifier = Verifier::new(ISSUER.into(), false);
        let client = Client::new();
        let window = assertion_window(Duration::from_secs(60));
        // The furthest exp accepted: its entry lives until exp + skew and no longer.
        let mut c = assertion_claims("far");
        c.insert("exp".into(), json!(NOW + window));
        assert!(verifier.assertion(&client.registration(), &client.sign(&c), NOW, &mut Map::new()).is_ok());
        let key = format!("assertion:{CLIENT}:far");
        assert_eq!(verifier.replay.kept_until(&key), Some(NOW + window + CLOCK_SKEW));
        // A huge exp is refused and not recorded at all.
        c.insert("exp".into(), json!(u64::MAX));
        c.insert("jti".into(), json!("huge"));
        assert!(verifier.assertion(&client.registration(), &client.sign(&c), NOW, &mut Map::new()).is_err());
        assert_eq!(verifier.replay.kept_until(&format!("assertion:{CLIENT}:huge")), None);
        // After the window the first entry is dropped.
        let later = NOW + window + CLOCK_SKEW + 1;
        assert!(verifier.replay.first_use("other", later, later, 0));
        assert_eq!(verifier.replay.kept_until(&key), None);
    }
}
