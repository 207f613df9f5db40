//! JOSE: the one module that touches `josekit` (and the OpenSSL it is built on) and signs
//! with ring.
//!
//! Everything tokenrelay signs or verifies (client assertions, DPoP proofs, the demo AS's
//! checks) goes through the small API here: [`Alg`], [`SigningKey`], [`SigningKey::sign`] and
//! [`verify`]. Keeping josekit behind this wall means a change of JOSE library is a change
//! of one file.
//!
//! ES256 and ES384 signatures are made by ring's fixed-length ECDSA (the ring rustls already
//! links), from the key josekit parsed: one key pair built when the key loads, `R || S`
//! straight out (RFC 7518 §3.4), no signing context per signature and no ASN.1 DER round
//! trip (BENCHMARKS.md). josekit keeps key parsing, JWKs, verification and the other
//! algorithms. The output is verified by josekit in the tests here and by real authorization
//! servers in `tests/`. Keys on a PKCS#11 token sign on the token ([`pkcs11`]).

pub mod pkcs11;

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jwk::alg::ed::{EdCurve, EdKeyPair};
use josekit::jwk::alg::rsa::RsaKeyPair;
use josekit::jwk::{Jwk, KeyPair};
use josekit::jws::alg::ecdsa::EcdsaJwsAlgorithm;
use josekit::jws::alg::eddsa::EddsaJwsAlgorithm;
use josekit::jws::alg::hmac::HmacJwsAlgorithm;
use josekit::jws::alg::rsassa::RsassaJwsAlgorithm;
use josekit::jws::alg::rsassa_pss::RsassaPssJwsAlgorithm;
use josekit::jws::{JwsSigner, JwsVerifier};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A fresh `jti`: 128 random bits, base64url. Assertions and proofs get one per attempt
/// (RFC 7523 §3, RFC 9449 §4.2: servers replay-check them). The thread-local CSPRNG is
/// seeded from, and periodically reseeded by, the OS: no syscall per `jti`.
pub fn new_jti() -> String {
    use rand::Rng as _;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// JWS algorithms tokenrelay signs with (RFC 7518 §3.1; RSA >= 2048 bits). `none` is not representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    ES256,
    ES384,
    PS256,
    RS256,
    EdDSA,
    HS256,
}

impl Alg {
    pub const ASYMMETRIC: [Alg; 5] = [Alg::ES256, Alg::ES384, Alg::PS256, Alg::RS256, Alg::EdDSA];

    pub fn parse(s: &str) -> Option<Alg> {
        Some(match s {
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "PS256" => Alg::PS256,
            "RS256" => Alg::RS256,
            "EdDSA" => Alg::EdDSA,
            "HS256" => Alg::HS256,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::PS256 => "PS256",
            Alg::RS256 => "RS256",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
        }
    }

    /// What kind of key the algorithm needs, for error messages.
    pub fn key_kind(self) -> &'static str {
        match self {
            Alg::ES256 => "an EC P-256 private key",
            Alg::ES384 => "an EC P-384 private key",
            Alg::PS256 | Alg::RS256 => "an RSA private key of at least 2048 bits",
            Alg::EdDSA => "an Ed25519 private key",
            Alg::HS256 => "a shared secret",
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a key could not be loaded. The caller adds the file name and config key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("alg {alg} needs {}, but the file holds {found}", alg.key_kind())]
    WrongType { alg: Alg, found: String },
    #[error("the file holds a public key or certificate; tokenrelay needs the private key")]
    PublicOnly,
    #[error("RSA key is {bits} bits; at least 2048 are required (RFC 7518 §3.3)")]
    RsaTooShort { bits: u32 },
    #[error("not a PEM (PKCS#8, SEC1 or PKCS#1) private key or a JWK: {0}")]
    Unreadable(String),
    #[error("alg {0} cannot be used with a private key file (HS256 takes a secret)")]
    Symmetric(Alg),
    /// A key on a PKCS#11 token could not be used ([`pkcs11`]).
    #[error(transparent)]
    Token(#[from] pkcs11::Pkcs11Error),
}

/// Error from signing or verifying, with josekit's reason as text.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JoseError(String);

impl From<josekit::JoseError> for JoseError {
    fn from(e: josekit::JoseError) -> Self {
        JoseError(e.to_string())
    }
}

/// A loaded private key bound to one algorithm, with its public JWK and thumbprint.
pub struct SigningKey {
    alg: Alg,
    signer: Signer,
    public_jwk: Map<String, Value>,
    thumbprint: String,
    /// The key as loaded, for [`SigningKey::pkcs8_pem`] (PEM encoding is left until asked
    /// for: OpenSSL's encoders are code a running proxy never needs in memory). `None` for a
    /// key on a PKCS#11 token, which never leaves it.
    pair: Option<Pair>,
    /// `typ` and base64url of the header `{"alg", "jwk", "typ"}` [`SigningKey::sign_with_jwk`]
    /// puts on every JWS (a DPoP proof's, RFC 9449 §4.2): serialized once, on first use.
    jwk_header: OnceLock<(String, String)>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("thumbprint", &self.thumbprint)
            .field("private", &"[redacted]")
            .finish()
    }
}

enum Pair {
    Ec(EcKeyPair),
    Rsa(RsaKeyPair),
    Ed(EdKeyPair),
}

impl Pair {
    fn describe(&self) -> String {
        match self {
            Pair::Ec(k) => format!("an EC {} key", k.curve()),
            Pair::Rsa(k) => format!("an RSA key of {} bits", k.key_len() * 8),
            Pair::Ed(k) => format!("an {} key", k.curve()),
        }
    }

    fn as_key_pair(&self) -> &dyn KeyPair {
        match self {
            Pair::Ec(k) => k,
            Pair::Rsa(k) => k,
            Pair::Ed(k) => k,
        }
    }

    fn from_pem(bytes: &[u8]) -> Result<Pair, KeyError> {
        let text = String::from_utf8_lossy(bytes);
        if text.contains("PUBLIC KEY-----") && !text.contains("PRIVATE KEY-----")
            || text.contains("BEGIN CERTIFICATE") && !text.contains("PRIVATE KEY-----")
        {
            return Err(KeyError::PublicOnly);
        }
        if let Ok(k) = EcKeyPair::from_pem(bytes, None) {
            return Ok(Pair::Ec(k));
        }
        if let Ok(k) = RsaKeyPair::from_pem(bytes) {
            return Ok(Pair::Rsa(k));
        }
        match EdKeyPair::from_pem(bytes) {
            Ok(k) => Ok(Pair::Ed(k)),
            Err(e) => Err(KeyError::Unreadable(first_line(&e.to_string()))),
        }
    }

    fn from_jwk(bytes: &[u8]) -> Result<Pair, KeyError> {
        let jwk = Jwk::from_bytes(bytes).map_err(|e| KeyError::Unreadable(first_line(&e.to_string())))?;
        let unreadable = |e: josekit::JoseError| KeyError::Unreadable(first_line(&e.to_string()));
        if jwk.parameter("d").is_none() {
            return Err(KeyError::PublicOnly);
        }
        match jwk.key_type() {
            "EC" => EcKeyPair::from_jwk(&jwk).map(Pair::Ec).map_err(unreadable),
            "RSA" => RsaKeyPair::from_jwk(&jwk).map(Pair::Rsa).map_err(unreadable),
            "OKP" => EdKeyPair::from_jwk(&jwk).map(Pair::Ed).map_err(unreadable),
            other => Err(KeyError::Unreadable(format!("unsupported JWK kty {other:?}"))),
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

impl SigningKey {
    /// Loads a private key from PEM (PKCS#8, SEC1 `EC PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY`)
    /// or JWK bytes, and checks that its type fits `alg` (RFC 7518 §3.3-§3.5, RFC 8037).
    pub fn load(bytes: &[u8], alg: Alg) -> Result<SigningKey, KeyError> {
        if alg == Alg::HS256 {
            return Err(KeyError::Symmetric(alg));
        }
        let trimmed = bytes.iter().position(|b| !b.is_ascii_whitespace()).map(|i| &bytes[i..]);
        let pair = match trimmed {
            Some(rest) if rest.starts_with(b"{") => Pair::from_jwk(rest)?,
            _ => Pair::from_pem(bytes)?,
        };
        Self::from_pair(pair, alg)
    }

    /// Generates a fresh key for `alg` (RSA: 2048 bits).
    pub fn generate(alg: Alg) -> Result<SigningKey, JoseError> {
        let pair = match alg {
            Alg::ES256 => Pair::Ec(EcKeyPair::generate(EcCurve::P256)?),
            Alg::ES384 => Pair::Ec(EcKeyPair::generate(EcCurve::P384)?),
            Alg::PS256 | Alg::RS256 => Pair::Rsa(RsaKeyPair::generate(2048)?),
            Alg::EdDSA => Pair::Ed(EdKeyPair::generate(EdCurve::Ed25519)?),
            Alg::HS256 => return Err(JoseError("HS256 uses a shared secret, not a key pair".into())),
        };
        Self::from_pair(pair, alg).map_err(|e| JoseError(e.to_string()))
    }

    fn from_pair(pair: Pair, alg: Alg) -> Result<SigningKey, KeyError> {
        let wrong = |pair: &Pair| KeyError::WrongType { alg, found: pair.describe() };
        let der = pair.as_key_pair().to_der_private_key();
        let josekit: Box<dyn JwsSigner> = match (&pair, alg) {
            (Pair::Ec(k), Alg::ES256) if k.curve() == EcCurve::P256 => {
                Box::new(EcdsaJwsAlgorithm::Es256.signer_from_der(&der).map_err(|_| wrong(&pair))?)
            }
            (Pair::Ec(k), Alg::ES384) if k.curve() == EcCurve::P384 => {
                Box::new(EcdsaJwsAlgorithm::Es384.signer_from_der(&der).map_err(|_| wrong(&pair))?)
            }
            (Pair::Rsa(k), Alg::RS256 | Alg::PS256) => {
                let bits = k.key_len() * 8;
                if bits < 2048 {
                    return Err(KeyError::RsaTooShort { bits });
                }
                if alg == Alg::RS256 {
                    Box::new(RsassaJwsAlgorithm::Rs256.signer_from_der(&der).map_err(|_| wrong(&pair))?)
                } else {
                    Box::new(
                        RsassaPssJwsAlgorithm::Ps256
                            .signer_from_der(&der)
                            .map_err(|e| KeyError::Unreadable(first_line(&e.to_string())))?,
                    )
                }
            }
            (Pair::Ed(k), Alg::EdDSA) if k.curve() == EdCurve::Ed25519 => {
                Box::new(EddsaJwsAlgorithm::Eddsa.signer_from_der(&der).map_err(|_| wrong(&pair))?)
            }
            _ => return Err(wrong(&pair)),
        };
        let signer = match alg {
            Alg::ES256 | Alg::ES384 => match &pair {
                Pair::Ec(k) => Signer::Ecdsa(Ecdsa::from_pair(k, alg).map_err(KeyError::Unreadable)?),
                _ => return Err(wrong(&pair)),
            },
            _ => Signer::Josekit(josekit),
        };
        let jwk = pair.as_key_pair().to_jwk_public_key();
        let public_jwk = public_members(&jwk);
        let thumbprint = thumbprint(&public_jwk);
        Ok(SigningKey { alg, signer, public_jwk, thumbprint, pair: Some(pair), jwk_header: OnceLock::new() })
    }

    /// The key a PKCS#11 URI (RFC 7512) names, signing on the token ([`pkcs11`]); relative
    /// `pin-source` files resolve against `base`. A missing token or key is an error here.
    pub fn pkcs11(uri: &str, alg: Alg, base: &std::path::Path) -> Result<SigningKey, KeyError> {
        let uri = pkcs11::Pkcs11Uri::parse(uri, base)?;
        let (key, public_jwk) = pkcs11::TokenKey::open(uri, alg)?;
        let thumbprint = thumbprint(&public_jwk);
        Ok(SigningKey {
            alg,
            signer: Signer::Token(key),
            public_jwk,
            thumbprint,
            pair: None,
            jwk_header: OnceLock::new(),
        })
    }

    /// For a key on a PKCS#11 token: whether the token keeps it in (sensitive, not
    /// extractable). `None` for a key from a file.
    pub fn token_protected(&self) -> Option<Result<bool, pkcs11::Pkcs11Error>> {
        match &self.signer {
            Signer::Token(t) => Some(t.never_leaves()),
            _ => None,
        }
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The public JWK: required members only (`kty`, `crv`, `x`, `y`, `n`, `e`).
    pub fn public_jwk(&self) -> &Map<String, Value> {
        &self.public_jwk
    }

    /// RFC 7638 JWK thumbprint (SHA-256, base64url).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// PKCS#8 PEM of the private key, for writing generated keys to disk (wiped on drop).
    /// Empty for a key on a token: it cannot be exported.
    pub fn pkcs8_pem(&self) -> crate::redact::SecretBytes {
        crate::redact::SecretBytes::new(
            self.pair.as_ref().map(|p| p.as_key_pair().to_pem_private_key()).unwrap_or_default(),
        )
    }

    /// SubjectPublicKeyInfo PEM of the public key, for ASes that register a PEM public key
    /// instead of a JWKS (`tokenrelay jwks --format pem`). Empty for a key on a PKCS#11 token
    /// (its public key is printed as a JWK).
    pub fn public_pem(&self) -> Vec<u8> {
        self.pair.as_ref().map(|p| p.as_key_pair().to_pem_public_key()).unwrap_or_default()
    }

    /// Signs `claims` (a JSON object: a `Map` or a `Serialize` struct) as a compact JWS with
    /// `header` (`alg` is set here).
    pub fn sign(&self, header: Map<String, Value>, claims: &(impl Serialize + ?Sized)) -> Result<String, JoseError> {
        sign_with(&self.signer, self.alg, header, claims)
    }

    /// Signs `claims` as a compact JWS whose header is `{"alg", "jwk": <public JWK>, "typ"}`
    /// (RFC 7515 §4.1.3; a DPoP proof's, RFC 9449 §4.2). That header is the same for every
    /// JWS of this key and `typ`, so it is serialized once and reused.
    pub fn sign_with_jwk(&self, typ: &str, claims: &(impl Serialize + ?Sized)) -> Result<String, JoseError> {
        let header = match self.jwk_header.get() {
            Some((cached_typ, b64)) if cached_typ == typ => Cow::Borrowed(b64.as_str()),
            _ => {
                // The members in the order `sign` would give them (a `Map` keeps insertion
                // order: josekit turns on serde_json's `preserve_order`), `alg` last.
                let mut header = Map::new();
                header.insert("typ".into(), Value::String(typ.into()));
                header.insert("jwk".into(), Value::Object(self.public_jwk.clone()));
                header.insert("alg".into(), Value::String(self.alg.as_str().into()));
                let b64 = URL_SAFE_NO_PAD.encode(to_json(&header)?);
                // Only the first `typ` is kept (a key signs one kind of JWS with its JWK).
                let _ = self.jwk_header.set((typ.to_string(), b64.clone()));
                Cow::Owned(b64)
            }
        };
        compact(&self.signer, &header, &to_json(claims)?)
    }

    /// The JWS signature over `input` (RFC 7515 §5.1 step 5), as [`SigningKey::sign`] makes it.
    pub fn sign_input(&self, input: &[u8]) -> Result<Vec<u8>, JoseError> {
        self.signer.sign(input)
    }
}

/// The signature step under a JWS.
enum Signer {
    Josekit(Box<dyn JwsSigner>),
    Ecdsa(Ecdsa),
    Token(pkcs11::TokenKey),
}

impl Signer {
    fn signature_len(&self) -> usize {
        match self {
            Signer::Josekit(s) => s.signature_len(),
            Signer::Ecdsa(e) => e.len,
            Signer::Token(t) => t.signature_len(),
        }
    }

    // Not inlined, so profiles (bench/run.sh --instructions) can tell the signature apart.
    #[inline(never)]
    fn sign(&self, input: &[u8]) -> Result<Vec<u8>, JoseError> {
        match self {
            Signer::Josekit(s) => Ok(s.sign(input)?),
            Signer::Ecdsa(e) => e.sign(input),
            Signer::Token(t) => t.sign(input).map_err(|e| JoseError(e.0)),
        }
    }
}

/// ES256 / ES384 (RFC 7518 §3.4) by ring: SHA-256 / SHA-384 of the input, ECDSA, and the
/// signature as RFC 7518 §3.4 wants it, `R || S` each left-padded to the curve size (ring's
/// fixed-length encoding, no DER round trip). The key pair is built once, when the key loads.
struct Ecdsa {
    key: ring::signature::EcdsaKeyPair,
    /// Bytes of `R || S`: 64 for P-256, 96 for P-384.
    len: usize,
}

/// The randomness ECDSA's nonces come from (ring's deterministic-plus-random nonce), one for
/// the process.
static RNG: OnceLock<ring::rand::SystemRandom> = OnceLock::new();

fn rng() -> &'static ring::rand::SystemRandom {
    RNG.get_or_init(ring::rand::SystemRandom::new)
}

impl Ecdsa {
    /// From the private scalar `d` and public point `(x, y)` of the key josekit parsed (its
    /// private JWK, RFC 7518 §6.2), each left-padded to the curve size. ring checks that the
    /// point is `d`'s. (ring's PKCS#8 reader refuses the DER josekit gives for an EC key,
    /// `InvalidEncoding`: ring wants the public point inside, which josekit leaves out.)
    fn from_pair(pair: &EcKeyPair, alg: Alg) -> Result<Ecdsa, String> {
        let (algorithm, len) = if alg == Alg::ES384 {
            (&ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING, 96)
        } else {
            (&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, 64)
        };
        // josekit's private JWK of an EC key carries `d` only; `x` and `y` are in its public one.
        let (private, public) = (pair.to_jwk_private_key(), pair.to_jwk_public_key());
        let member = |name: &str| -> Result<Vec<u8>, String> {
            let jwk = if name == "d" { &private } else { &public };
            let b64 = jwk.parameter(name).and_then(Value::as_str).ok_or(format!("no {name:?} in the EC key"))?;
            let bytes = URL_SAFE_NO_PAD.decode(b64).map_err(|e| format!("EC key member {name:?}: {e}"))?;
            let bytes = bytes.strip_prefix(&[0][..]).filter(|_| bytes.len() > len / 2).unwrap_or(&bytes);
            if bytes.len() > len / 2 {
                return Err(format!("EC key member {name:?} is longer than the curve size"));
            }
            let mut padded = vec![0; len / 2 - bytes.len()];
            padded.extend_from_slice(bytes);
            Ok(padded)
        };
        let d = zeroize::Zeroizing::new(member("d")?);
        let mut point = vec![4];
        point.extend(member("x")?);
        point.extend(member("y")?);
        let key = ring::signature::EcdsaKeyPair::from_private_key_and_public_key(algorithm, &d, &point, rng())
            .map_err(|e| format!("EC key rejected by ring: {e}"))?;
        Ok(Ecdsa { key, len })
    }

    fn sign(&self, input: &[u8]) -> Result<Vec<u8>, JoseError> {
        let sig = self.key.sign(rng(), input).map_err(|_| JoseError("ECDSA signing failed".into()))?;
        Ok(sig.as_ref().to_vec())
    }
}

/// HS256 signing for `client_secret_jwt` (RFC 7523 §2.2 with a shared secret).
pub fn sign_hs256(
    secret: &[u8],
    header: Map<String, Value>,
    claims: &(impl Serialize + ?Sized),
) -> Result<String, JoseError> {
    let signer = Signer::Josekit(Box::new(HmacJwsAlgorithm::Hs256.signer_from_bytes(secret)?));
    sign_with(&signer, Alg::HS256, header, claims)
}

fn to_json(value: &(impl Serialize + ?Sized)) -> Result<Vec<u8>, JoseError> {
    serde_json::to_vec(value).map_err(|e| JoseError(e.to_string()))
}

fn sign_with(
    signer: &Signer,
    alg: Alg,
    mut header: Map<String, Value>,
    claims: &(impl Serialize + ?Sized),
) -> Result<String, JoseError> {
    header.insert("alg".into(), Value::String(alg.as_str().into()));
    let header = URL_SAFE_NO_PAD.encode(to_json(&header)?);
    compact(signer, &header, &to_json(claims)?)
}

/// RFC 7515 §7.1 compact serialization: `header.payload.signature`, each base64url, the
/// signature over the first two. Built here rather than by josekit's `serialize_compact`,
/// which re-validates and re-serializes a header that tokenrelay built itself: the output is
/// the same bytes, without that work per signature.
fn compact(signer: &Signer, header_b64: &str, payload: &[u8]) -> Result<String, JoseError> {
    let b64_len = |n: usize| n.div_ceil(3) * 4;
    let mut jws =
        String::with_capacity(header_b64.len() + b64_len(payload.len()) + b64_len(signer.signature_len()) + 2);
    jws.push_str(header_b64);
    jws.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut jws);
    let signature = signer.sign(jws.as_bytes())?;
    jws.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut jws);
    Ok(jws)
}

/// The public key (or secret) a verifier checks a JWS against.
pub enum VerifyKey<'a> {
    Jwk(&'a Map<String, Value>),
    Secret(&'a [u8]),
}

/// A verified JWS: its header and claims.
#[derive(Debug, Clone)]
pub struct Verified {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
}

/// Decodes the protected header without verifying, so a verifier can pick the key.
pub fn peek_header(token: &str) -> Result<Map<String, Value>, JoseError> {
    let first = token.split('.').next().unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD.decode(first).map_err(|e| JoseError(format!("header is not base64url: {e}")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JoseError("header is not a JSON object".into())),
    }
}

/// Verifies a compact JWS signed with `alg` by `key`; returns header and claims.
pub fn verify(token: &str, alg: Alg, key: VerifyKey<'_>) -> Result<Verified, JoseError> {
    let verifier: Box<dyn JwsVerifier> = match key {
        VerifyKey::Secret(secret) => {
            if alg != Alg::HS256 {
                return Err(JoseError(format!("alg {alg} cannot be checked with a secret")));
            }
            Box::new(HmacJwsAlgorithm::Hs256.verifier_from_bytes(secret)?)
        }
        VerifyKey::Jwk(map) => {
            let jwk = Jwk::from_map(map.clone())?;
            match alg {
                Alg::ES256 => Box::new(EcdsaJwsAlgorithm::Es256.verifier_from_jwk(&jwk)?),
                Alg::ES384 => Box::new(EcdsaJwsAlgorithm::Es384.verifier_from_jwk(&jwk)?),
                Alg::RS256 => Box::new(RsassaJwsAlgorithm::Rs256.verifier_from_jwk(&jwk)?),
                Alg::PS256 => Box::new(RsassaPssJwsAlgorithm::Ps256.verifier_from_jwk(&jwk)?),
                Alg::EdDSA => Box::new(EddsaJwsAlgorithm::Eddsa.verifier_from_jwk(&jwk)?),
                Alg::HS256 => return Err(JoseError("HS256 cannot be checked with a public key".into())),
            }
        }
    };
    let (payload, header) = josekit::jws::deserialize_compact(token, verifier.as_ref())?;
    let claims = match serde_json::from_slice(&payload) {
        Ok(Value::Object(m)) => m,
        _ => return Err(JoseError("payload is not a JSON object".into())),
    };
    Ok(Verified { header: header.claims_set().clone(), claims })
}

/// Keeps only the members RFC 7638 §3.2 names for the key type (no `d`, no `kid`).
fn public_members(jwk: &Jwk) -> Map<String, Value> {
    let names: &[&str] = match jwk.key_type() {
        "EC" => &["crv", "kty", "x", "y"],
        "RSA" => &["e", "kty", "n"],
        "OKP" => &["crv", "kty", "x"],
        _ => &["kty"],
    };
    names.iter().filter_map(|n| jwk.parameter(n).map(|v| ((*n).to_string(), v.clone()))).collect()
}

/// RFC 7638 thumbprint of a public JWK: the required members, sorted, no whitespace,
/// SHA-256, base64url. josekit has none, so it is computed here.
pub fn thumbprint(public_jwk: &Map<String, Value>) -> String {
    let required: &[&str] = match public_jwk.get("kty").and_then(Value::as_str) {
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("RSA") => &["e", "kty", "n"],
        Some("OKP") => &["crv", "kty", "x"],
        _ => &["kty"],
    };
    // A `Map` keeps insertion order (josekit turns on serde_json's `preserve_order`): the
    // members go in sorted, as RFC 7638 §3.3 wants them serialized.
    let canonical: Map<String, Value> =
        required.iter().filter_map(|n| public_jwk.get(*n).map(|v| ((*n).to_string(), v.clone()))).collect();
    let json = serde_json::to_string(&canonical).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(Sha256::digest(json.as_bytes()))
}

/// base64url(SHA-256(data)): `ath` (RFC 9449 §4.2) and `x5t#S256` (RFC 8705 §3.1).
pub fn sha256_b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn jti_has_128_bits() {
        let a = new_jti();
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 16);
        assert_ne!(a, new_jti());
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1 example key.
        let jwk: Map<String, Value> = serde_json::from_str(r#"{"kty":"RSA","e":"AQAB","alg":"RS256","kid":"2011-04-29","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}"#).unwrap();
        assert_eq!(thumbprint(&jwk), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn pkj6_each_alg_signs_and_verifies() {
        for alg in Alg::ASYMMETRIC {
            let key = SigningKey::generate(alg).unwrap();
            let mut claims = Map::new();
            claims.insert("iss".into(), "c".into());
            let jws = key.sign(Map::new(), &claims).unwrap();
            let v = verify(&jws, alg, VerifyKey::Jwk(key.public_jwk())).unwrap();
            assert_eq!(v.claims["iss"], "c");
            assert_eq!(v.header["alg"], alg.as_str());
            assert!(!key.public_jwk().contains_key("d"));
            // Round trip through PEM keeps the thumbprint.
            let again = SigningKey::load(key.pkcs8_pem().expose(), alg).unwrap();
            assert_eq!(again.thumbprint(), key.thumbprint());
        }
    }

    #[test]
    fn pkj6_es256_signature_is_raw_64_bytes() {
        let key = SigningKey::generate(Alg::ES256).unwrap();
        let jws = key.sign(Map::new(), &Map::new()).unwrap();
        let sig = URL_SAFE_NO_PAD.decode(jws.rsplit('.').next().unwrap()).unwrap();
        assert_eq!(sig.len(), 64);
    }

    #[test]
    fn ecdsa_signatures_verify_with_josekit_including_short_r_and_s() {
        // Signatures by ring (`Signer::Ecdsa`), verified by josekit. R or S below
        // 2^(8·(n-1)) (a leading zero byte, 1 in 256 each) must still be padded to the curve
        // size: 2000 ES256 signatures meet one with probability 1 - (254/256)^2000 > 1 - 1e-6,
        // and the test checks that they did.
        for alg in [Alg::ES256, Alg::ES384] {
            let key = SigningKey::generate(alg).unwrap();
            assert!(matches!(key.signer, Signer::Ecdsa(_)), "{alg} is not signed by ring");
            let verifier: Box<dyn JwsVerifier> = match alg {
                Alg::ES256 => Box::new(
                    EcdsaJwsAlgorithm::Es256
                        .verifier_from_jwk(&Jwk::from_map(key.public_jwk().clone()).unwrap())
                        .unwrap(),
                ),
                _ => Box::new(
                    EcdsaJwsAlgorithm::Es384
                        .verifier_from_jwk(&Jwk::from_map(key.public_jwk().clone()).unwrap())
                        .unwrap(),
                ),
            };
            let (n, half) = if alg == Alg::ES256 { (2000, 32) } else { (500, 48) };
            let mut short = 0;
            for i in 0..n {
                let claims: Map<String, Value> = [("i".to_string(), Value::from(i))].into_iter().collect();
                let jws = key.sign(Map::new(), &claims).unwrap();
                let (payload, _) = josekit::jws::deserialize_compact(&jws, verifier.as_ref())
                    .unwrap_or_else(|e| panic!("{alg} signature {i} does not verify: {e}"));
                assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap()["i"], i);
                let sig = URL_SAFE_NO_PAD.decode(jws.rsplit('.').next().unwrap()).unwrap();
                assert_eq!(sig.len(), 2 * half);
                short += usize::from(sig[0] == 0 || sig[half] == 0);
            }
            if alg == Alg::ES256 {
                assert!(short > 0, "no ES256 signature with a short R or S in {n}");
            }
        }
    }

    #[test]
    fn ec_keys_from_sec1_pem_and_jwk_sign_by_ring() {
        // ring builds its key pair from the key josekit parsed, whatever form the key file
        // had: SEC1 `EC PRIVATE KEY` PEM and a private JWK too.
        for alg in [Alg::ES256, Alg::ES384] {
            let generated = SigningKey::generate(alg).unwrap();
            let Some(Pair::Ec(pair)) = &generated.pair else { panic!("not an EC key") };
            for bytes in [pair.to_traditional_pem_private_key(), pair.to_jwk_private_key().to_string().into_bytes()] {
                let key = SigningKey::load(&bytes, alg).unwrap();
                assert!(matches!(key.signer, Signer::Ecdsa(_)));
                assert_eq!(key.thumbprint(), generated.thumbprint());
                let jws = key.sign(Map::new(), &Map::new()).unwrap();
                verify(&jws, alg, VerifyKey::Jwk(generated.public_jwk())).unwrap();
            }
        }
    }

    #[test]
    fn pkj6_wrong_key_type_is_named() {
        let ec = SigningKey::generate(Alg::ES256).unwrap();
        let err = SigningKey::load(ec.pkcs8_pem().expose(), Alg::RS256).unwrap_err().to_string();
        assert!(err.contains("RSA") && err.contains("EC P-256"), "{err}");
        let err = SigningKey::load(ec.pkcs8_pem().expose(), Alg::ES384).unwrap_err().to_string();
        assert!(err.contains("P-384"), "{err}");
    }

    #[test]
    fn public_jwk_file_is_refused() {
        let ec = SigningKey::generate(Alg::ES256).unwrap();
        let public = serde_json::to_vec(ec.public_jwk()).unwrap();
        assert!(matches!(SigningKey::load(&public, Alg::ES256), Err(KeyError::PublicOnly)));
    }

    #[test]
    fn compact_serialization_is_josekit_s() {
        // HS256 is deterministic: the JWS built here must be josekit's, byte for byte.
        let secret = b"0123456789abcdef0123456789abcdef";
        let mut header = Map::new();
        header.insert("kid".into(), "k-1".into());
        header.insert("typ".into(), "client-authentication+jwt".into());
        let mut claims = Map::new();
        claims.insert("iss".into(), "app".into());
        claims.insert("iat".into(), 1_700_000_000u64.into());
        let ours = sign_hs256(secret, header.clone(), &claims).unwrap();
        header.insert("alg".into(), "HS256".into());
        let josekit_header = josekit::jws::JwsHeader::from_map(header).unwrap();
        let signer = HmacJwsAlgorithm::Hs256.signer_from_bytes(secret).unwrap();
        let theirs =
            josekit::jws::serialize_compact(&serde_json::to_vec(&claims).unwrap(), &josekit_header, &signer).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn sign_with_jwk_header_is_cached_and_right() {
        let key = SigningKey::generate(Alg::ES256).unwrap();
        let mut claims = Map::new();
        claims.insert("htm".into(), "POST".into());
        for _ in 0..2 {
            let jws = key.sign_with_jwk("dpop+jwt", &claims).unwrap();
            let v = verify(&jws, Alg::ES256, VerifyKey::Jwk(key.public_jwk())).unwrap();
            assert_eq!(v.header.len(), 3, "{:?}", v.header);
            assert_eq!(v.header["alg"], "ES256");
            assert_eq!(v.header["typ"], "dpop+jwt");
            assert_eq!(v.header["jwk"], Value::Object(key.public_jwk().clone()));
            assert_eq!(v.claims, claims);
        }
        // Another typ is not served from the cache.
        let jws = key.sign_with_jwk("other+jwt", &claims).unwrap();
        assert_eq!(peek_header(&jws).unwrap()["typ"], "other+jwt");
    }

    #[test]
    fn hs256_round_trip() {
        let jws = sign_hs256(b"0123456789abcdef0123456789abcdef", Map::new(), &Map::new()).unwrap();
        assert!(verify(&jws, Alg::HS256, VerifyKey::Secret(b"0123456789abcdef0123456789abcdef")).is_ok());
        assert!(verify(&jws, Alg::HS256, VerifyKey::Secret(b"another-secret-another-secret-xx")).is_err());
    }
}
