//! What the demo AS has issued, and what it remembers having seen used.
//!
//! - Authorization codes (RFC 6749 §4.1.2): single use, [`CODE_LIFETIME`] seconds. A code
//!   presented again after a successful exchange is refused and every token issued from it
//!   is revoked (RFC 6749 §4.1.2, RFC 9700 §4.2.4).
//! - Refresh tokens (RFC 6749 §6): rotated on every use; a used one is refused afterwards
//!   and, because only a thief or a confused client sends it again, its whole grant is
//!   revoked (RFC 9700 §4.14.2).
//! - Access tokens: what the resource endpoint accepts.
//!
//! Everything issued from one code exchange shares a *grant* number, which is what a
//! revocation removes. Tokens are stored under base64url(SHA-256(token)), never as issued.
//! Checks that may refuse a request without consuming anything (the client, the redirect
//! URI, PKCE, the DPoP key) run between [`Ledger::code`] / [`Ledger::refresh_token`] and
//! [`Ledger::redeem_code`] / [`Ledger::rotate`], so someone holding a stolen code or refresh
//! token but not the client's credentials or key cannot burn it.

use std::collections::HashMap;

use subtle::ConstantTimeEq as _;

use crate::jose;
use crate::redact::Secret;

/// How long an authorization code can be exchanged, in seconds (RFC 6749 §4.1.2: "a maximum
/// authorization code lifetime of 10 minutes is RECOMMENDED"; shorter is better).
pub(super) const CODE_LIFETIME: u64 = 60;

/// How long a refresh token lives, in seconds; each rotation issues a fresh one.
pub(super) const REFRESH_LIFETIME: u64 = 24 * 3600;

/// A fresh opaque token or code: 256 random bits, base64url.
pub(super) fn new_token() -> Secret {
    Secret::new(jose::new_jti() + &jose::new_jti())
}

/// What a token is stored under: base64url(SHA-256(token)).
fn key_of(token: &str) -> String {
    jose::sha256_b64url(token.as_bytes())
}

/// What the user approved at `/authorize`: carried by the code, then by every refresh
/// token of the grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Authorization {
    pub(super) client_id: String,
    /// The signed-in user (`[demo_as] user`).
    pub(super) sub: String,
    pub(super) scope: Option<String>,
    /// When the user "signed in" (auto-approval time): the ID token's `auth_time`.
    pub(super) auth_time: u64,
}

impl Authorization {
    /// Whether the granted scope contains `name` (RFC 6749 §3.3: space-delimited).
    pub(super) fn has_scope(&self, name: &str) -> bool {
        self.scope.as_deref().is_some_and(|s| s.split(' ').any(|v| v == name))
    }
}

/// An issued authorization code.
#[derive(Debug, Clone)]
pub(super) struct Code {
    pub(super) authz: Authorization,
    /// The redirect URI the code was delivered to.
    pub(super) redirect_uri: String,
    /// Whether the authorization request named it (then the token request must repeat it,
    /// RFC 6749 §4.1.3).
    pub(super) redirect_uri_sent: bool,
    /// RFC 7636 `code_challenge`, method S256.
    pub(super) code_challenge: String,
    /// OIDC `nonce`, echoed in the ID token.
    pub(super) nonce: Option<String>,
    /// RFC 9449 §10 `dpop_jkt`: the key the token request's proof must be signed with.
    pub(super) dpop_jkt: Option<String>,
    pub(super) exp: u64,
}

/// An active refresh token.
#[derive(Debug, Clone)]
pub(super) struct Refresh {
    pub(super) grant: u64,
    pub(super) authz: Authorization,
    /// RFC 9449 §5: the DPoP key a public client's refresh token is bound to.
    pub(super) jkt: Option<String>,
    pub(super) exp: u64,
}

/// An issued access token, as the resource endpoint checks it.
#[derive(Debug, Clone)]
pub(super) struct Access {
    pub(super) client_id: String,
    pub(super) sub: Option<String>,
    pub(super) scope: Option<String>,
    /// RFC 9449 §6 `cnf.jkt`.
    pub(super) jkt: Option<String>,
    /// The code exchange it descends from (`None`: `client_credentials`).
    pub(super) grant: Option<u64>,
    pub(super) exp: u64,
}

#[derive(Debug)]
enum CodeSlot {
    Fresh(Code),
    /// Exchanged; remembered until `until` so a replay can revoke `grant`.
    Redeemed {
        grant: u64,
        until: u64,
    },
}

#[derive(Debug)]
enum RefreshSlot {
    Active(Refresh),
    /// Rotated; remembered until it would have expired so a reuse is recognised.
    Used {
        grant: u64,
        until: u64,
    },
    /// Never used, revoked with its grant when a code or refresh token of the grant was
    /// replayed; remembered until it would have expired so its use is named for what it is.
    Revoked {
        until: u64,
    },
}

/// Why a code or refresh token was refused before any other check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// Never issued here, or forgotten after it expired.
    Unknown,
    Expired,
    /// Used before: the grant's tokens (this many) were revoked.
    Replayed {
        revoked: usize,
    },
    /// Never used, but revoked with its grant after another token of the grant was replayed.
    Revoked,
}

/// Everything issued, behind the demo AS's one lock.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    codes: HashMap<String, CodeSlot>,
    refresh: HashMap<String, RefreshSlot>,
    access: HashMap<String, Access>,
    next_grant: u64,
}

impl Ledger {
    /// Drops what has expired at `now`.
    fn prune(&mut self, now: u64) {
        self.codes.retain(|_, slot| match slot {
            CodeSlot::Fresh(c) => c.exp >= now,
            CodeSlot::Redeemed { until, .. } => *until >= now,
        });
        self.refresh.retain(|_, slot| match slot {
            RefreshSlot::Active(r) => r.exp >= now,
            RefreshSlot::Used { until, .. } | RefreshSlot::Revoked { until } => *until >= now,
        });
        self.access.retain(|_, t| t.exp > now);
    }

    /// Stores `code` and returns its value.
    pub(super) fn add_code(&mut self, code: Code, now: u64) -> Secret {
        self.prune(now);
        let value = new_token();
        self.codes.insert(key_of(value.expose()), CodeSlot::Fresh(code));
        value
    }

    /// The fresh code `value`. A code exchanged before is refused and the tokens issued
    /// from it are revoked (RFC 6749 §4.1.2).
    pub(super) fn code(&mut self, value: &str, now: u64) -> Result<Code, Refused> {
        let key = key_of(value);
        match self.codes.get(&key) {
            None => Err(Refused::Unknown),
            Some(CodeSlot::Redeemed { grant, .. }) => {
                let grant = *grant;
                Err(Refused::Replayed { revoked: self.revoke(grant) })
            }
            Some(CodeSlot::Fresh(code)) if code.exp < now => {
                self.codes.remove(&key);
                Err(Refused::Expired)
            }
            Some(CodeSlot::Fresh(code)) => Ok(code.clone()),
        }
    }

    /// Marks code `value` used and returns the number of the grant its tokens belong to.
    pub(super) fn redeem_code(&mut self, value: &str, now: u64) -> u64 {
        self.next_grant += 1;
        let grant = self.next_grant;
        // Remembered as long as any token of the grant can live.
        let until = now.saturating_add(REFRESH_LIFETIME);
        self.codes.insert(key_of(value), CodeSlot::Redeemed { grant, until });
        grant
    }

    /// Stores a refresh token and returns its value.
    pub(super) fn add_refresh(&mut self, refresh: Refresh, now: u64) -> Secret {
        self.prune(now);
        let value = new_token();
        self.refresh.insert(key_of(value.expose()), RefreshSlot::Active(refresh));
        value
    }

    /// The active refresh token `value`. One used before is refused and its grant revoked
    /// (RFC 9700 §4.14.2).
    pub(super) fn refresh_token(&mut self, value: &str, now: u64) -> Result<Refresh, Refused> {
        let key = key_of(value);
        match self.refresh.get(&key) {
            None => Err(Refused::Unknown),
            Some(RefreshSlot::Used { grant, .. }) => {
                let grant = *grant;
                Err(Refused::Replayed { revoked: self.revoke(grant) })
            }
            Some(RefreshSlot::Revoked { .. }) => Err(Refused::Revoked),
            Some(RefreshSlot::Active(r)) if r.exp < now => {
                self.refresh.remove(&key);
                Err(Refused::Expired)
            }
            Some(RefreshSlot::Active(r)) => Ok(r.clone()),
        }
    }

    /// Marks refresh token `value` used (rotation, RFC 6749 §6); false if it was not active.
    pub(super) fn rotate(&mut self, value: &str) -> bool {
        let Some(slot) = self.refresh.get_mut(&key_of(value)) else {
            return false;
        };
        match slot {
            RefreshSlot::Active(r) => {
                *slot = RefreshSlot::Used { grant: r.grant, until: r.exp };
                true
            }
            RefreshSlot::Used { .. } | RefreshSlot::Revoked { .. } => false,
        }
    }

    /// Stores an access token and returns its value.
    pub(super) fn add_access(&mut self, access: Access, now: u64) -> Secret {
        self.add_access_as(new_token(), access, now)
    }

    /// Stores access token `value` (a signed JWT access token, RFC 9068) and returns it.
    pub(super) fn add_access_as(&mut self, value: Secret, access: Access, now: u64) -> Secret {
        self.prune(now);
        self.access.insert(key_of(value.expose()), access);
        value
    }

    /// The live access token `value`.
    pub(super) fn access(&self, value: &str, now: u64) -> Option<Access> {
        self.access.get(&key_of(value)).filter(|t| t.exp > now).cloned()
    }

    /// Revokes every access and active refresh token of `grant`; returns how many.
    fn revoke(&mut self, grant: u64) -> usize {
        let before = self.access.len();
        self.access.retain(|_, t| t.grant != Some(grant));
        let mut revoked = before - self.access.len();
        for slot in self.refresh.values_mut() {
            if let RefreshSlot::Active(r) = slot {
                if r.grant == grant {
                    *slot = RefreshSlot::Revoked { until: r.exp };
                    revoked += 1;
                }
            }
        }
        revoked
    }
}

/// RFC 7636 §4.2: an S256 `code_challenge` is base64url(SHA-256), 43 characters.
pub(super) fn is_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43 && challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 7636 §4.6 with §4.1: `verifier` is 43 to 128 unreserved characters and
/// base64url(SHA-256(verifier)) equals `challenge` (compared in constant time).
pub(super) fn check_pkce(verifier: &str, challenge: &str) -> Result<(), String> {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    if !(43..=128).contains(&verifier.len()) || !verifier.bytes().all(unreserved) {
        return Err("code_verifier must be 43 to 128 unreserved characters (RFC 7636 §4.1)".into());
    }
    let computed = jose::sha256_b64url(verifier.as_bytes());
    if bool::from(computed.as_bytes().ct_eq(challenge.as_bytes())) {
        Ok(())
    } else {
        Err("code_verifier does not match the code_challenge (RFC 7636 §4.6, S256)".into())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn authz() -> Authorization {
        Authorization {
            client_id: "app".into(),
            sub: "demo-user".into(),
            scope: Some("openid read".into()),
            auth_time: NOW,
        }
    }

    fn code() -> Code {
        Code {
            authz: authz(),
            redirect_uri: "http://127.0.0.1:5000/cb".into(),
            redirect_uri_sent: true,
            code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
            nonce: None,
            dpop_jkt: None,
            exp: NOW + CODE_LIFETIME,
        }
    }

    fn access(grant: Option<u64>) -> Access {
        Access { client_id: "app".into(), sub: None, scope: None, jkt: None, grant, exp: NOW + 300 }
    }

    #[test]
    fn rfc7636_appendix_b_verifier_matches() {
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(is_s256_challenge(challenge));
        assert_eq!(check_pkce("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", challenge), Ok(()));
        assert!(check_pkce("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXx", challenge).is_err());
        assert!(check_pkce("short", challenge).is_err());
        assert!(check_pkce(&"a".repeat(129), challenge).is_err());
        assert!(check_pkce(&format!("{}+", "a".repeat(43)), challenge).is_err());
        assert!(!is_s256_challenge("plain-challenge"));
    }

    #[test]
    fn a_code_is_single_use_and_its_replay_revokes_the_grant() {
        let mut ledger = Ledger::default();
        let value = ledger.add_code(code(), NOW);
        // Checks may fail without consuming it.
        assert!(ledger.code(value.expose(), NOW + 1).is_ok());
        assert!(ledger.code(value.expose(), NOW + 2).is_ok());
        let grant = ledger.redeem_code(value.expose(), NOW + 2);
        let at = ledger.add_access(access(Some(grant)), NOW + 2);
        let other = ledger.add_access(access(None), NOW + 2);
        let refresh = Refresh { grant, authz: authz(), jkt: None, exp: NOW + REFRESH_LIFETIME };
        let rt = ledger.add_refresh(refresh, NOW + 2);
        assert!(ledger.access(at.expose(), NOW + 3).is_some());
        assert_eq!(ledger.code(value.expose(), NOW + 3).unwrap_err(), Refused::Replayed { revoked: 2 });
        assert!(ledger.access(at.expose(), NOW + 3).is_none(), "the access token from the replayed code is revoked");
        assert!(ledger.access(other.expose(), NOW + 3).is_some(), "other grants are untouched");
        assert_eq!(ledger.refresh_token(rt.expose(), NOW + 3).unwrap_err(), Refused::Revoked, "revoked, never used");
        assert_eq!(ledger.code("never-issued", NOW).unwrap_err(), Refused::Unknown);
    }

    #[test]
    fn a_code_expires() {
        let mut ledger = Ledger::default();
        let value = ledger.add_code(code(), NOW);
        assert_eq!(ledger.code(value.expose(), NOW + CODE_LIFETIME + 1).unwrap_err(), Refused::Expired);
        assert_eq!(ledger.code(value.expose(), NOW + 1).unwrap_err(), Refused::Unknown, "an expired code is forgotten");
    }

    #[test]
    fn refresh_tokens_rotate_and_a_reuse_revokes_the_grant() {
        let mut ledger = Ledger::default();
        let grant = ledger.redeem_code("code", NOW);
        let first = ledger.add_refresh(Refresh { grant, authz: authz(), jkt: None, exp: NOW + 10 }, NOW);
        assert!(ledger.refresh_token(first.expose(), NOW + 1).is_ok());
        assert!(ledger.rotate(first.expose()));
        assert!(!ledger.rotate(first.expose()), "rotated once");
        let second = ledger.add_refresh(Refresh { grant, authz: authz(), jkt: None, exp: NOW + 100 }, NOW + 1);
        let at = ledger.add_access(access(Some(grant)), NOW + 1);
        assert!(ledger.refresh_token(second.expose(), NOW + 2).is_ok());
        assert_eq!(ledger.refresh_token(first.expose(), NOW + 2).unwrap_err(), Refused::Replayed { revoked: 2 });
        // The rotated-to token was never used: it is revoked, not "already used".
        assert_eq!(ledger.refresh_token(second.expose(), NOW + 2).unwrap_err(), Refused::Revoked);
        assert!(ledger.access(at.expose(), NOW + 2).is_none());
        // An expired refresh token is refused as expired, then forgotten.
        let grant = ledger.redeem_code("other", NOW);
        let old = ledger.add_refresh(Refresh { grant, authz: authz(), jkt: None, exp: NOW + 5 }, NOW);
        assert_eq!(ledger.refresh_token(old.expose(), NOW + 6).unwrap_err(), Refused::Expired);
        assert_eq!(ledger.refresh_token(old.expose(), NOW + 6).unwrap_err(), Refused::Unknown);
    }

    #[test]
    fn tokens_are_stored_hashed() {
        let mut ledger = Ledger::default();
        let value = ledger.add_access(access(None), NOW);
        assert!(!format!("{ledger:?}").contains(value.expose()));
        assert!(authz().has_scope("openid") && !authz().has_scope("open"));
    }
}
