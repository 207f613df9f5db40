//! Redaction and the secret newtypes: secrets never reach `Debug`, logs or error texts
//! (RFC 9700 §4.9), compare in constant time, and are wiped from memory when dropped.
//!
//! [`Secret`] (text: client secrets, tokens, PEM private keys) and [`SecretBytes`] (file
//! contents that may hold a private key) print `[redacted]`, compare with
//! [`subtle::ConstantTimeEq`] (only the length can show in the timing), and zeroize their
//! buffer on drop ([`zeroize`]). Every secret byte tokenrelay itself holds lives in one of
//! them; keys parsed into OpenSSL, ring or rustls are held by those libraries.
//! [`short_hash`] gives a stable 8-hex-digit fingerprint that lets a log line be matched to a
//! value without revealing it.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroize as _;

/// A secret string: client secrets, tokens, PEM private keys. Prints as `[redacted]`,
/// compares in constant time, zeroized on drop.
#[derive(Clone)]
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

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        bool::from(self.0.as_bytes().ct_eq(other.0.as_bytes()))
    }
}

impl Eq for Secret {}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
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

/// Secret bytes: the contents of a key file as read. Prints as `[redacted]`, compares in
/// constant time, zeroized on drop.
#[derive(Clone, Default)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(bytes)
    }

    /// The bytes themselves; call only where they are parsed, never where they are logged.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        SecretBytes(bytes)
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &SecretBytes) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl Eq for SecretBytes {}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[redacted {} bytes]", self.0.len())
    }
}

/// First 8 hex digits of SHA-256: enough to correlate log lines, useless to an attacker.
pub fn short_hash(data: impl AsRef<[u8]>) -> String {
    let digest = Sha256::digest(data.as_ref());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "hunter2");
        let b = SecretBytes::new(b"pem header of a private key".to_vec());
        assert_eq!(format!("{b:?}"), "[redacted 27 bytes]");
    }

    #[test]
    fn secrets_compare_by_value() {
        assert_eq!(Secret::new("abc"), Secret::new("abc"));
        assert_ne!(Secret::new("abc"), Secret::new("abd"));
        assert_ne!(Secret::new("abc"), Secret::new("abcd"));
        assert_ne!(SecretBytes::new(vec![1, 2]), SecretBytes::new(vec![1, 3]));
    }

    /// Dropping wipes the buffer: `zeroize` writes zeros through a volatile pointer before
    /// the allocation is freed. Checked on the bytes in place, before they are freed.
    #[test]
    fn secrets_are_wiped_on_drop() {
        let mut s = std::mem::ManuallyDrop::new(Secret::new("hunter2-hunter2"));
        let (ptr, len) = (s.expose().as_ptr(), s.expose().len());
        // Run Drop's wipe without freeing: the String's buffer stays allocated in `s`.
        s.0.zeroize();
        // SAFETY: the buffer is still owned by `s` (ManuallyDrop), len bytes long.
        let wiped = unsafe { std::slice::from_raw_parts(ptr, len) };
        assert!(wiped.iter().all(|b| *b == 0), "{wiped:?}");
        let mut b = std::mem::ManuallyDrop::new(SecretBytes::new(b"key".to_vec()));
        b.0.zeroize();
        assert!(b.expose().is_empty(), "zeroize clears the Vec after wiping its capacity");
        // SAFETY: dropped once, here.
        unsafe { std::mem::ManuallyDrop::drop(&mut s) };
        unsafe { std::mem::ManuallyDrop::drop(&mut b) };
    }

    #[test]
    fn short_hash_is_stable_and_short() {
        assert_eq!(short_hash("abc"), "ba7816bf");
    }
}
