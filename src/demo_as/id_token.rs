//! The demo AS's OpenID Connect side: the ES256 key it signs ID tokens with (generated at
//! start, never written to disk), the JWKS that publishes it (`jwks_uri`), and the ID tokens
//! themselves (OpenID Connect Core 1.0 §2, §3.1.3.6).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

use super::grants::Authorization;
use crate::jose::{Alg, JoseError, SigningKey};

/// How long an ID token is valid, in seconds.
const ID_TOKEN_LIFETIME: u64 = 300;

/// The ID token signing key and its `kid` (its RFC 7638 thumbprint).
pub(super) struct IdTokenKey {
    key: SigningKey,
}

impl IdTokenKey {
    /// A fresh ES256 key.
    pub(super) fn generate() -> Result<IdTokenKey, JoseError> {
        Ok(IdTokenKey { key: SigningKey::generate(Alg::ES256)? })
    }

    /// `id_token_signing_alg_values_supported`.
    pub(super) fn alg(&self) -> Alg {
        self.key.alg()
    }

    fn kid(&self) -> &str {
        self.key.thumbprint()
    }

    /// The JWK Set served at `jwks_uri` (RFC 7517 §5): the public key with `kid`, `use`, `alg`.
    pub(super) fn jwks(&self) -> Value {
        let mut jwk = self.key.public_jwk().clone();
        jwk.insert("kid".into(), self.kid().into());
        jwk.insert("use".into(), "sig".into());
        jwk.insert("alg".into(), self.alg().as_str().into());
        json!({ "keys": [jwk] })
    }

    /// An ID token for `authz`, issued with `access_token` (OIDC Core §2: `iss`, `sub`, `aud`
    /// = the client, `exp`, `iat`, `auth_time`, `nonce` when the authorization request sent
    /// one; §3.1.3.6 `at_hash`).
    pub(super) fn sign(
        &self,
        issuer: &str,
        authz: &Authorization,
        nonce: Option<&str>,
        access_token: &str,
        now: u64,
    ) -> Result<String, JoseError> {
        let mut claims = Map::new();
        claims.insert("iss".into(), issuer.into());
        claims.insert("sub".into(), authz.sub.clone().into());
        claims.insert("aud".into(), authz.client_id.clone().into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), now.saturating_add(ID_TOKEN_LIFETIME).into());
        claims.insert("auth_time".into(), authz.auth_time.into());
        if let Some(nonce) = nonce {
            claims.insert("nonce".into(), nonce.into());
        }
        claims.insert("at_hash".into(), at_hash(access_token).into());
        let mut header = Map::new();
        header.insert("typ".into(), "JWT".into());
        header.insert("kid".into(), self.kid().into());
        self.key.sign(header, &claims)
    }
}

impl IdTokenKey {
    /// A JWT access token (RFC 9068 §2: `typ` `at+jwt`; `iss`, `exp`, `aud`, `sub`,
    /// `client_id`, `iat`, `jti`, and `scope` when granted), with the binding in `cnf`
    /// (RFC 9449 §6.1 `jkt`, RFC 8705 §3.1 `x5t#S256`), signed with the key `jwks_uri` serves.
    pub(super) fn sign_access(&self, issuer: &str, mut claims: Map<String, Value>) -> Result<String, JoseError> {
        claims.insert("iss".into(), issuer.into());
        // RFC 9068 §3: the resource the token is for; the demo AS's only resource is itself.
        claims.entry("aud").or_insert_with(|| issuer.into());
        let mut header = Map::new();
        header.insert("typ".into(), "at+jwt".into());
        header.insert("kid".into(), self.kid().into());
        self.key.sign(header, &claims)
    }
}

/// OIDC Core §3.1.3.6: base64url of the left half of SHA-256 of the access token (ES256).
fn at_hash(access_token: &str) -> String {
    let digest = Sha256::digest(access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..digest.len() / 2])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::jose::{self, VerifyKey};

    #[test]
    fn id_tokens_verify_against_the_jwks() {
        let key = IdTokenKey::generate().unwrap();
        let authz = Authorization { client_id: "app".into(), sub: "demo-user".into(), scope: None, auth_time: 10 };
        let jwt = key.sign("http://127.0.0.1:9443", &authz, Some("n-0S6_WzA2Mj"), "token", 20).unwrap();
        let jwks = key.jwks();
        let jwk = jwks["keys"][0].as_object().unwrap();
        assert_eq!(jose::peek_header(&jwt).unwrap()["kid"], jwk["kid"]);
        let v = jose::verify(&jwt, Alg::ES256, VerifyKey::Jwk(jwk)).unwrap();
        assert_eq!(v.claims["iss"], "http://127.0.0.1:9443");
        assert_eq!(v.claims["sub"], "demo-user");
        assert_eq!(v.claims["aud"], "app");
        assert_eq!(v.claims["nonce"], "n-0S6_WzA2Mj");
        assert_eq!((v.claims["iat"].as_u64(), v.claims["exp"].as_u64()), (Some(20), Some(20 + ID_TOKEN_LIFETIME)));
        assert_eq!(v.claims["auth_time"], 10);
        assert_eq!(jwk["use"], "sig");
        assert!(!jwk.contains_key("d"));
    }

    #[test]
    fn at_hash_is_the_left_half_of_sha256() {
        // OIDC Core §A.3's example token "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y" has
        // at_hash (RS256, also SHA-256) "77QmUPtjPfzWtF2AnpK9RQ".
        assert_eq!(at_hash("jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"), "77QmUPtjPfzWtF2AnpK9RQ");
    }
}
