//! Redaction: secrets never reach `Debug`, logs or error texts (RFC 9700 §4.9).
//!
//! [`Secret`] wraps a value whose `Debug`/`Display` print `[redacted]`; [`short_hash`] gives
//! a stable 8-hex-digit fingerprint that lets a log line be matched to a value without
//! revealing it.

use std::fmt;

use sha2::{Digest, Sha256};

/// A secret string: client secrets, tokens. Prints as `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself; call only where it is sent, never where it is logged.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// First 8 hex digits of SHA-256: enough to correlate log lines, useless to an attacker.
pub fn short_hash(data: impl AsRef<[u8]>) -> String {
    let digest = Sha256::digest(data.as_ref());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn short_hash_is_stable_and_short() {
        assert_eq!(short_hash("abc"), "ba7816bf");
    }
}
