//! Byte-exact `application/x-www-form-urlencoded` editing (RFC 6749 §3.2, Appendix B).
//!
//! A decode-then-re-encode round trip is lossy: `form_urlencoded::parse` replaces invalid
//! UTF-8, and re-encoding changes `%20` into `+` or `~` into `%7E`. A PKCE `code_verifier`
//! or an authorization `code` must reach the AS exactly as the app sent it, so [`Form`]
//! keeps every pair's original bytes and only the pairs tokenrelay touches are re-encoded.
//! Values tokenrelay *reads* are decoded strictly: invalid UTF-8 is an error, never a `�`.

use std::borrow::Cow;

/// Why a form could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormError {
    /// RFC 6749 §3.1: request parameters must not be included more than once.
    #[error("parameter {0:?} appears more than once (RFC 6749 §3.1)")]
    Duplicate(String),
    #[error("parameter {0:?} is not valid UTF-8 after percent-decoding (RFC 6749 Appendix B)")]
    NotUtf8(String),
}

#[derive(Clone)]
struct Pair {
    /// The pair exactly as it will be sent: original bytes, or the encoding of a new pair.
    raw: Vec<u8>,
    /// Decoded name, lossy: only compared against ASCII names tokenrelay owns.
    name: String,
}

/// A parsed form body that remembers every pair's original bytes.
///
/// ```
/// use tokenrelay::rewrite::form::Form;
///
/// // A PKCE verifier with `~`, a code with `%2F` and `+`: bytes tokenrelay must not touch.
/// let mut form = Form::parse(b"code=a%2Fb+c&code_verifier=x~y&client_secret=app");
/// form.remove("client_secret");
/// form.set("client_id", "my app");
/// assert_eq!(form.encode(), b"code=a%2Fb+c&code_verifier=x~y&client_id=my+app");
/// // Parameters tokenrelay reads are decoded strictly; duplicates are refused (RFC 6749 §3.1).
/// assert!(Form::parse(b"client_id=a&client_id=b").get("client_id").is_err());
/// ```
#[derive(Clone, Default)]
pub struct Form {
    pairs: Vec<Pair>,
}

/// Names only: values are secrets, codes and assertions.
impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Form").field("names", &self.pairs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>()).finish()
    }
}

fn decode(bytes: &[u8]) -> Vec<u8> {
    // Most values (ids, grant types, assertions) have nothing to decode: copied whole.
    if !bytes.iter().any(|&b| b == b'+' || b == b'%') {
        return bytes.to_vec();
    }
    let plus: Cow<'_, [u8]> = if bytes.contains(&b'+') {
        Cow::Owned(bytes.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect())
    } else {
        Cow::Borrowed(bytes)
    };
    percent_encoding::percent_decode(&plus).collect()
}

/// Bytes `application/x-www-form-urlencoded` leaves as they are (the WHATWG URL standard's
/// set, which `form_urlencoded::byte_serialize` keeps): ASCII alphanumerics and `*-._`.
const UNRESERVED: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_');
        i += 1;
    }
    table
};

/// Appends `part` form-urlencoded (as `form_urlencoded::byte_serialize` does: space as `+`,
/// other bytes outside [`UNRESERVED`] as `%XX`), copying the runs that need no escaping whole:
/// an assertion is one such run.
fn push_encoded(out: &mut Vec<u8>, part: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = part.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if UNRESERVED[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if b == b' ' {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

fn encode_pair(name: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + value.len() + 1);
    push_encoded(&mut out, name);
    out.push(b'=');
    push_encoded(&mut out, value);
    out
}

impl Form {
    /// Splits `body` into pairs. Never fails: undecodable pairs are kept as raw bytes and
    /// only become an error if tokenrelay needs to read them.
    pub fn parse(body: &[u8]) -> Form {
        let pairs = body
            .split(|&b| b == b'&')
            .filter(|seg| !seg.is_empty())
            .map(|seg| {
                let name_raw = seg.split(|&b| b == b'=').next().unwrap_or_default();
                let name = String::from_utf8(decode(name_raw))
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                Pair { raw: seg.to_vec(), name }
            })
            .collect();
        Form { pairs }
    }

    fn value_of(pair: &Pair) -> Result<String, FormError> {
        let value_raw = match pair.raw.iter().position(|&b| b == b'=') {
            Some(i) => &pair.raw[i + 1..],
            None => &[][..],
        };
        String::from_utf8(decode(value_raw)).map_err(|_| FormError::NotUtf8(pair.name.clone()))
    }

    /// The value of `name`, strictly decoded. Empty means absent (RFC 6749 §3.1);
    /// more than one occurrence is an error (RFC 6749 §3.1).
    pub fn get(&self, name: &str) -> Result<Option<String>, FormError> {
        let mut found = None;
        for pair in self.pairs.iter().filter(|p| p.name == name) {
            let value = Self::value_of(pair)?;
            if value.is_empty() {
                continue;
            }
            if found.is_some() {
                return Err(FormError::Duplicate(name.to_string()));
            }
            found = Some(value);
        }
        Ok(found)
    }

    /// Errors if any of `names` appears twice with a non-empty value, or is not UTF-8.
    pub fn check_single<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Result<(), FormError> {
        for name in names {
            self.get(name)?;
        }
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).ok().flatten().is_some()
    }

    /// Removes every occurrence of `name`.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.pairs.len();
        self.pairs.retain(|p| p.name != name);
        before != self.pairs.len()
    }

    /// Replaces every occurrence of `name` with one pair `name=value`, in place of the
    /// first occurrence (or at the end).
    pub fn set(&mut self, name: &str, value: &str) {
        let pair = Pair { raw: encode_pair(name, value), name: name.to_string() };
        match self.pairs.iter().position(|p| p.name == name) {
            Some(i) => {
                self.pairs[i] = pair;
                let mut seen = 0usize;
                self.pairs.retain(|p| {
                    if p.name != name {
                        return true;
                    }
                    seen += 1;
                    seen == 1
                });
            }
            None => self.pairs.push(pair),
        }
    }

    /// Adds `name=value` only when the app did not send a non-empty `name`.
    pub fn add_if_absent(&mut self, name: &str, value: &str) -> bool {
        if self.pairs.iter().any(|p| p.name == name && Self::value_of(p).map_or(true, |v| !v.is_empty())) {
            return false;
        }
        self.set(name, value);
        true
    }

    /// The body to send: original bytes of untouched pairs, joined with `&`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pairs.iter().map(|p| p.raw.len() + 1).sum());
        for (i, pair) in self.pairs.iter().enumerate() {
            if i > 0 {
                out.push(b'&');
            }
            out.extend_from_slice(&pair.raw);
        }
        out
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|p| p.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tr4_untouched_pairs_keep_their_bytes() {
        let body = b"grant_type=authorization_code&code=a%2Fb%7Ec+d&code_verifier=abc~DEF-_.&redirect_uri=http%3A%2F%2Flocalhost%3A3000%2Fcb&x=%FF%FE";
        let mut f = Form::parse(body);
        f.set("client_id", "my app");
        f.remove("nothing");
        let out = String::from_utf8_lossy(&f.encode()).into_owned();
        assert_eq!(
            out,
            "grant_type=authorization_code&code=a%2Fb%7Ec+d&code_verifier=abc~DEF-_.&redirect_uri=http%3A%2F%2Flocalhost%3A3000%2Fcb&x=%FF%FE&client_id=my+app"
        );
    }

    #[test]
    fn tr2_duplicate_is_error_empty_is_absent() {
        let f = Form::parse(b"client_id=a&client_id=b");
        assert_eq!(f.get("client_id"), Err(FormError::Duplicate("client_id".into())));
        let f = Form::parse(b"client_id=&client_id=b&scope=");
        assert_eq!(f.get("client_id").unwrap().as_deref(), Some("b"));
        assert_eq!(f.get("scope").unwrap(), None);
    }

    #[test]
    fn tr1_owned_values_decode_strictly() {
        let f = Form::parse(b"client_id=%FF");
        assert_eq!(f.get("client_id"), Err(FormError::NotUtf8("client_id".into())));
        let f = Form::parse(b"client_id=caf%C3%A9+x");
        assert_eq!(f.get("client_id").unwrap().as_deref(), Some("café x"));
    }

    #[test]
    fn set_replaces_in_place_and_dedups() {
        let mut f = Form::parse(b"a=1&scope=x&b=2&scope=y");
        f.set("scope", "read write");
        assert_eq!(f.encode(), b"a=1&scope=read+write&b=2");
    }

    #[test]
    fn add_if_absent_never_overrides() {
        let mut f = Form::parse(b"scope=mine&resource=");
        assert!(!f.add_if_absent("scope", "read"));
        assert!(f.add_if_absent("resource", "https://api"));
        assert_eq!(f.encode(), b"scope=mine&resource=https%3A%2F%2Fapi");
    }

    #[test]
    fn debug_shows_names_not_values() {
        let f = Form::parse(b"client_secret=hunter2&code=abc");
        let d = format!("{f:?}");
        assert!(d.contains("client_secret") && !d.contains("hunter2") && !d.contains("abc"), "{d}");
    }

    #[test]
    fn encode_pair_matches_form_urlencoded() {
        for (name, value) in [
            ("client_assertion", "eyJh.eyJz-_x*"),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("scope", "read write"),
            ("a b", "x~y/é&=+%\u{0}\u{7f}"),
            ("", ""),
            ("n", ""),
        ] {
            let expected: String = form_urlencoded::Serializer::new(String::new()).append_pair(name, value).finish();
            assert_eq!(String::from_utf8(encode_pair(name, value)).unwrap(), expected, "{name}={value}");
        }
    }

    #[test]
    fn encoded_names_match() {
        let f = Form::parse(b"client%5Fid=x");
        assert_eq!(f.get("client_id").unwrap().as_deref(), Some("x"));
    }
}
