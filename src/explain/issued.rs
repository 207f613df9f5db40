//! What the AS issued: when the access token or ID token in a token answer is a JWT (RFC
//! 9068, OIDC Core §2), its header and claims (never the signature, never the whole token),
//! and a binding verdict: `cnf.jkt` against the route's DPoP key thumbprint (RFC 9449 §6.1),
//! `cnf.x5t#S256` against the route's mTLS certificate (RFC 8705 §3.1), and `token_type`
//! against what was asked for (`DPoP` when a proof was sent, RFC 9449 §5; else `Bearer`).

use serde::Serialize;
use serde_json::Value;

use super::Jwt;

/// The issued tokens, decoded when they are JWTs, and the binding verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Issued {
    /// Header and claims of a JWT access token (RFC 9068).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<Jwt>,
    /// Header and claims of the ID token (OIDC Core §2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<Jwt>,
    /// Set for a successful token answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binding: Option<Binding>,
}

impl Issued {
    /// True when nothing was issued (or nothing is known about it).
    pub fn is_empty(&self) -> bool {
        self.access_token.is_none() && self.id_token.is_none() && self.binding.is_none()
    }
}

/// One expectation about the issued token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub expected: String,
    /// What the token says; `null` when it says nothing (or is opaque).
    pub got: Option<String>,
    /// `None` when the token is opaque and the check cannot be made.
    pub ok: Option<bool>,
}

/// The binding verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Binding {
    /// `bound` (every expected binding is there and matches), `unbound` (none expected,
    /// none present), `mismatch` (one differs or is missing), `unknown` (expected, but the
    /// access token is opaque: only `token_type` could be checked), `unexpected` (bound,
    /// although the route asked for no binding).
    pub verdict: &'static str,
    pub token_type: Check,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jkt: Option<Check>,
    #[serde(rename = "x5t#S256", skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<Check>,
}

/// What the route asked the AS to bind the token to.
#[derive(Debug, Clone, Default)]
pub struct Expected<'a> {
    /// The DPoP key's thumbprint, when a proof was sent.
    pub jkt: Option<&'a str>,
    /// The mTLS certificate's `x5t#S256`, when one was presented.
    pub x5t_s256: Option<&'a str>,
}

/// The JWT parts of a token answer's `access_token` and `id_token` (RFC 6749 §5.1), and the
/// raw `token_type`; nothing for a body that is not a JSON object.
pub fn read(body: &[u8]) -> Issued {
    #[derive(serde::Deserialize)]
    struct Tokens {
        access_token: Option<Value>,
        id_token: Option<Value>,
    }
    let Ok(tokens) = serde_json::from_slice::<Tokens>(body) else { return Issued::default() };
    let jwt = |v: Option<Value>| {
        v.as_ref().and_then(Value::as_str).filter(|t| t.split('.').count() == 3).and_then(Jwt::decode)
    };
    Issued { access_token: jwt(tokens.access_token), id_token: jwt(tokens.id_token), binding: None }
}

/// The verdict for `issued` with `token_type` (as answered), against `expected`.
pub fn verdict(issued: &Issued, token_type: Option<&str>, expected: &Expected) -> Binding {
    let asked = if expected.jkt.is_some() { "DPoP" } else { "Bearer" };
    let token_type = Check {
        expected: asked.into(),
        got: token_type.map(str::to_string),
        ok: Some(token_type.is_some_and(|t| t.eq_ignore_ascii_case(asked))),
    };
    let cnf = issued.access_token.as_ref().map(|t| t.claims.get("cnf").and_then(Value::as_object));
    let member = |name: &str| -> Option<Option<String>> {
        // Some(None): a JWT without it; None: an opaque token.
        cnf.map(|c| c.and_then(|c| c.get(name)).and_then(Value::as_str).map(str::to_string))
    };
    let check = |expected: Option<&str>, name: &str| {
        expected.map(|e| {
            let got = member(name);
            Check { expected: e.to_string(), ok: got.as_ref().map(|g| g.as_deref() == Some(e)), got: got.flatten() }
        })
    };
    let jkt = check(expected.jkt, "jkt");
    let x5t_s256 = check(expected.x5t_s256, "x5t#S256");
    let checks: Vec<&Check> = [Some(&token_type), jkt.as_ref(), x5t_s256.as_ref()].into_iter().flatten().collect();
    let verdict = if checks.iter().any(|c| c.ok == Some(false)) {
        "mismatch"
    } else if jkt.is_none() && x5t_s256.is_none() {
        let bound = member("jkt").flatten().is_some() || member("x5t#S256").flatten().is_some();
        if bound {
            "unexpected"
        } else {
            "unbound"
        }
    } else if checks.iter().any(|c| c.ok.is_none()) {
        "unknown"
    } else {
        "bound"
    };
    Binding { verdict, token_type, jkt, x5t_s256 }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn token(claims: Value) -> String {
        use base64::Engine as _;
        let enc = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.SIGNATURE", enc(serde_json::json!({"alg": "ES256", "typ": "at+jwt"})), enc(claims))
    }

    #[test]
    fn verdicts() {
        let body = serde_json::json!({
            "access_token": token(serde_json::json!({"sub": "a", "cnf": {"jkt": "J", "x5t#S256": "X"}})),
            "id_token": "opaque",
        });
        let issued = read(body.to_string().as_bytes());
        assert_eq!(issued.access_token.as_ref().unwrap().header["typ"], "at+jwt");
        assert!(issued.id_token.is_none());
        assert!(!serde_json::to_string(&issued).unwrap().contains("SIGNATURE"));
        let both = Expected { jkt: Some("J"), x5t_s256: Some("X") };
        assert_eq!(verdict(&issued, Some("DPoP"), &both).verdict, "bound");
        assert_eq!(verdict(&issued, Some("Bearer"), &both).verdict, "mismatch");
        let other = Expected { jkt: Some("K"), x5t_s256: None };
        let v = verdict(&issued, Some("DPoP"), &other);
        assert_eq!((v.verdict, v.jkt.unwrap().got.as_deref()), ("mismatch", Some("J")));
        assert_eq!(verdict(&issued, Some("Bearer"), &Expected::default()).verdict, "unexpected");
        let plain =
            read(serde_json::json!({"access_token": token(serde_json::json!({"sub": "a"}))}).to_string().as_bytes());
        assert_eq!(verdict(&plain, Some("Bearer"), &Expected::default()).verdict, "unbound");
        let opaque = read(br#"{"access_token":"abc"}"#);
        assert_eq!(verdict(&opaque, Some("DPoP"), &Expected { jkt: Some("J"), x5t_s256: None }).verdict, "unknown");
    }
}
