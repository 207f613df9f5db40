//! Step 4: DPoP proofs (RFC 9449) and the per-origin nonce cache.
//!
//! A proof is made fresh for every attempt (RFC 9449 §4.2) with `htu` = the URL as the
//! upstream sees it, never the proxy's own URL (RFC 9449 §4.3). Nonces are remembered per
//! upstream origin from every response, 200s included (RFC 9449 §8).

use std::collections::HashMap;
use std::sync::Mutex;

use http::header::{HeaderMap, HeaderValue};
use serde::Serialize;
use serde_json::Value;

use crate::jose::{self, SigningKey};

/// Inputs of one proof. `htu` is already normalized (see [`crate::config::Upstream::url`]).
#[derive(Clone)]
pub struct ProofInput<'a> {
    pub htm: &'a str,
    pub htu: &'a str,
    pub now: u64,
    pub jti: String,
    pub nonce: Option<&'a str>,
    /// The access token, for `ath` on resource requests (RFC 9449 §4.2, §7).
    pub access_token: Option<&'a str>,
}

impl std::fmt::Debug for ProofInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProofInput")
            .field("htm", &self.htm)
            .field("htu", &self.htu)
            .field("jti", &self.jti)
            .field("nonce", &self.nonce)
            .field("access_token", &self.access_token.map(|_| "[redacted]"))
            .finish()
    }
}

/// The claims of a proof (RFC 9449 §4.2), in the order the map they replace had them (serde_json
/// keeps insertion order here: josekit turns on `preserve_order`), so the JSON is the same bytes
/// without a map of owned strings per proof.
#[derive(Serialize)]
struct ProofClaims<'a> {
    jti: &'a str,
    htm: &'a str,
    htu: &'a str,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<String>,
}

/// Signs a DPoP proof JWT (RFC 9449 §4.2): header `typ: dpop+jwt` with the public `jwk`.
pub fn proof(key: &SigningKey, input: &ProofInput<'_>) -> Result<String, jose::JoseError> {
    let claims = ProofClaims {
        jti: &input.jti,
        htm: input.htm,
        htu: input.htu,
        iat: input.now,
        nonce: input.nonce,
        ath: input.access_token.map(|token| jose::sha256_b64url(token.as_bytes())),
    };
    key.sign_with_jwk("dpop+jwt", &claims)
}

/// RFC 9449 §8.1: `nonce = 1*NQCHAR`, NQCHAR = %x21 / %x23-5B / %x5D-7E.
pub fn is_valid_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// The newest `DPoP-Nonce` seen per upstream origin (RFC 9449 §8). Survives reloads.
#[derive(Debug, Default)]
pub struct NonceCache {
    by_origin: Mutex<HashMap<String, String>>,
}

/// What a response said about nonces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NonceHeader {
    Absent,
    Valid(String),
    /// Malformed or repeated: ignored with a warning (RFC 9449 §8: `1*NQCHAR`).
    Ignored(String),
}

/// Reads the `DPoP-Nonce` header of a response.
pub fn nonce_header(headers: &HeaderMap) -> NonceHeader {
    let values: Vec<&HeaderValue> = headers.get_all("dpop-nonce").iter().collect();
    match values.as_slice() {
        [] => NonceHeader::Absent,
        [one] => match one.to_str() {
            Ok(s) if is_valid_nonce(s) => NonceHeader::Valid(s.to_string()),
            _ => NonceHeader::Ignored("malformed DPoP-Nonce header (RFC 9449 §8.1: 1*NQCHAR)".into()),
        },
        _ => NonceHeader::Ignored(format!("{} DPoP-Nonce headers in one response", values.len())),
    }
}

impl NonceCache {
    pub fn get(&self, origin: &str) -> Option<String> {
        self.by_origin.lock().ok()?.get(origin).cloned()
    }

    /// Remembers a valid nonce from `headers`; returns it when there was one.
    pub fn observe(&self, origin: &str, headers: &HeaderMap) -> Option<String> {
        match nonce_header(headers) {
            NonceHeader::Valid(n) => {
                if let Ok(mut map) = self.by_origin.lock() {
                    map.insert(origin.to_string(), n.clone());
                }
                Some(n)
            }
            NonceHeader::Ignored(why) => {
                tracing::warn!(origin, "ignoring DPoP nonce: {why}");
                None
            }
            NonceHeader::Absent => None,
        }
    }
}

/// Did the server ask for a (new) nonce? AS: 400 `{"error":"use_dpop_nonce"}` (§8);
/// RS: 401 with `WWW-Authenticate: DPoP error="use_dpop_nonce"` (§9).
pub fn wants_nonce(status: u16, headers: &HeaderMap, body: Option<&[u8]>) -> bool {
    match status {
        400 => body
            .and_then(|b| serde_json::from_slice::<Value>(b).ok())
            .is_some_and(|v| v.get("error").and_then(Value::as_str) == Some("use_dpop_nonce")),
        401 => headers.get_all("www-authenticate").iter().filter_map(|v| v.to_str().ok()).any(dpop_asks_for_nonce),
        _ => false,
    }
}

/// Does a `WWW-Authenticate` field value hold a `DPoP` challenge with
/// `error="use_dpop_nonce"`? One field may carry several challenges (RFC 9110 §11.6.1:
/// `Bearer, DPoP error="use_dpop_nonce"`), whose parameters are comma-separated too: an
/// element whose first token is not followed by `=` starts a new challenge.
fn dpop_asks_for_nonce(value: &str) -> bool {
    let mut in_dpop = false;
    for element in split_outside_quotes(value) {
        let element = element.trim();
        if element.is_empty() {
            continue;
        }
        let (first, rest) = element.split_once([' ', '\t']).unwrap_or((element, ""));
        let param = if first.contains('=') {
            element
        } else {
            in_dpop = first.eq_ignore_ascii_case("dpop");
            rest.trim()
        };
        if !in_dpop {
            continue;
        }
        if let Some((name, v)) = param.split_once('=') {
            if name.trim().eq_ignore_ascii_case("error") && v.trim().trim_matches('"') == "use_dpop_nonce" {
                return true;
            }
        }
    }
    false
}

/// Splits on commas that are not inside a quoted string (RFC 9110 §5.6.4).
fn split_outside_quotes(value: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::jose::{Alg, VerifyKey};

    #[test]
    fn nonce_challenges_are_found_among_several() {
        let asks = |v: &str| dpop_asks_for_nonce(v);
        assert!(asks(r#"DPoP error="use_dpop_nonce", error_description="x""#));
        assert!(asks(r#"Bearer, DPoP error="use_dpop_nonce""#));
        assert!(asks(r#"Bearer realm="a,b", DPoP algs="ES256", error=use_dpop_nonce"#));
        assert!(!asks(r#"Bearer error="use_dpop_nonce""#), "not a DPoP challenge");
        assert!(!asks(r#"DPoP error="invalid_token", error_description="use_dpop_nonce""#));
        assert!(!asks(""));
    }

    #[test]
    fn dp2_dp3_proof_shape() {
        let key = SigningKey::generate(Alg::ES256).unwrap();
        let input = ProofInput {
            htm: "POST",
            htu: "https://as.example.com:8443/token",
            now: 1_700_000_000,
            jti: "j1".into(),
            nonce: Some("n-1"),
            access_token: Some("tok"),
        };
        let jwt = proof(&key, &input).unwrap();
        let v = jose::verify(&jwt, Alg::ES256, VerifyKey::Jwk(key.public_jwk())).unwrap();
        assert_eq!(v.header["typ"], "dpop+jwt");
        assert_eq!(v.header["jwk"], Value::Object(key.public_jwk().clone()));
        assert!(v.header["jwk"].get("d").is_none(), "RFC 9449 §4.2: public members only");
        assert_eq!(v.claims["htm"], "POST");
        assert_eq!(v.claims["htu"], "https://as.example.com:8443/token");
        assert_eq!(v.claims["nonce"], "n-1");
        assert_eq!(v.claims["ath"], jose::sha256_b64url(b"tok"));
    }

    #[test]
    fn dp4_nonce_syntax_and_repeats() {
        assert!(is_valid_nonce("abc!#[]~"));
        assert!(!is_valid_nonce("has space"));
        assert!(!is_valid_nonce("quo\"te"));
        assert!(!is_valid_nonce(""));
        let mut h = HeaderMap::new();
        h.append("dpop-nonce", "a".parse().unwrap());
        h.append("dpop-nonce", "b".parse().unwrap());
        assert!(matches!(nonce_header(&h), NonceHeader::Ignored(_)));
        let cache = NonceCache::default();
        let mut h = HeaderMap::new();
        h.insert("dpop-nonce", "n1".parse().unwrap());
        cache.observe("https://as", &h);
        assert_eq!(cache.get("https://as").as_deref(), Some("n1"));
        assert_eq!(cache.get("https://other"), None);
    }

    #[test]
    fn dp5_use_dpop_nonce_detection() {
        let h = HeaderMap::new();
        assert!(wants_nonce(400, &h, Some(br#"{"error":"use_dpop_nonce"}"#)));
        assert!(!wants_nonce(400, &h, Some(br#"{"error":"invalid_grant"}"#)));
        let mut h = HeaderMap::new();
        h.insert("www-authenticate", r#"DPoP error="use_dpop_nonce", algs="ES256""#.parse().unwrap());
        assert!(wants_nonce(401, &h, None));
    }
}
