//! Reading a compact JWS without verifying it (RFC 7515 §7.1): what a test needs to look at
//! the header or the claims of an assertion or a DPoP proof that an upstream received.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

/// The protected header of `token`.
pub fn header(token: &str) -> Value {
    part(token, 0)
}

/// The claims (payload) of `token`.
pub fn claims(token: &str) -> Value {
    part(token, 1)
}

fn part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap_or_else(|| panic!("not a compact JWS: {token:?}"));
    let json = URL_SAFE_NO_PAD.decode(part).unwrap_or_else(|e| panic!("JWS part {index} is not base64url: {e}"));
    serde_json::from_slice(&json).unwrap_or_else(|e| panic!("JWS part {index} is not JSON: {e}"))
}
