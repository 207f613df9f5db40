//! Keys on a PKCS#11 token (an HSM, SoftHSM2, a YubiKey through `ykcs11`), named by a
//! PKCS#11 URI (RFC 7512): `pkcs11:token=dev;object=client?module-path=/usr/lib/softhsm/
//! libsofthsm2.so&pin-source=file:pin.txt` (or `pin-env=VAR`; the PIN is never in the
//! config).
//!
//! The private key never leaves the token: signatures are made by `C_Sign` (ES256/ES384 as
//! `CKM_ECDSA` over the SHA-2 digest, which yields `R || S` as RFC 7518 §3.4 wants it;
//! RS256 as `CKM_SHA256_RSA_PKCS`; PS256 as `CKM_SHA256_RSA_PKCS_PSS` with MGF1-SHA-256 and a
//! 32-byte salt, RFC 7518 §3.5). The public key is read from the token's public key object
//! (same label) for the JWK, `kid` and `jkt`.
//!
//! One logged-in session per key is kept and reused. When the token goes away (removed,
//! its slot deleted) a signature fails with the token named; the next one opens a new session
//! (finding the token again by label), so the key works again as soon as the token is back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha384};

use super::Alg;

/// Does `key` name a token key rather than a file?
pub fn is_uri(key: &str) -> bool {
    key.starts_with("pkcs11:")
}

/// `uri` with a relative `pin-source=file:` made absolute against `base` (the config's
/// folder), so the URI means the same wherever it is used.
pub fn with_absolute_pin_file(uri: &str, base: &Path) -> String {
    let Some(i) = uri.find("pin-source=file:") else { return uri.to_string() };
    let start = i + "pin-source=file:".len();
    let end = uri[start..].find('&').map_or(uri.len(), |j| start + j);
    let file = pct_decode(&uri[start..end]);
    if Path::new(&file).is_absolute() {
        return uri.to_string();
    }
    let abs = base.join(file).display().to_string();
    let encoded: String = percent_encoding::utf8_percent_encode(&abs, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2F", "/")
        .replace("%2E", ".")
        .replace("%2D", "-")
        .replace("%5F", "_");
    format!("{}{encoded}{}", &uri[..start], &uri[end..])
}

/// A PKCS#11 URI (RFC 7512 §2.3), the parts tokenrelay uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=`: the token label.
    pub token: String,
    /// `object=`: the key's label (private and public key objects share it).
    pub object: String,
    /// `module-path=`: the PKCS#11 library.
    pub module: PathBuf,
    pin: PinSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PinSource {
    /// `pin-source=file:...` (RFC 7512 §2.3), relative to the config's folder.
    File(PathBuf),
    /// `pin-env=VAR` (tokenrelay's own query attribute).
    Env(String),
}

/// A token problem, naming the token and what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Pkcs11Error(pub String);

fn pct_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

impl Pkcs11Uri {
    /// Parses `uri`; relative `pin-source` files resolve against `base`.
    pub fn parse(uri: &str, base: &Path) -> Result<Pkcs11Uri, Pkcs11Error> {
        let bad = |why: String| Pkcs11Error(format!("PKCS#11 URI {uri:?}: {why}"));
        let rest = uri.strip_prefix("pkcs11:").ok_or_else(|| bad("does not start with pkcs11:".into()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut attrs = HashMap::new();
        for part in path.split(';').chain(query.split('&')).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| bad(format!("{part:?} is not name=value")))?;
            attrs.insert(k.to_string(), pct_decode(v));
        }
        let need =
            |k: &str, example: &str| attrs.get(k).cloned().ok_or_else(|| bad(format!("no {k}= (e.g. {k}={example})")));
        let token = need("token", "dev")?;
        let object = need("object", "client")?;
        let module = PathBuf::from(need("module-path", "/usr/lib/softhsm/libsofthsm2.so")?);
        if attrs.contains_key("pin-value") {
            // Not `bad`: that would echo the URI, PIN and all.
            return Err(Pkcs11Error(
                "PKCS#11 URI: pin-value puts the PIN in the config; use pin-source=file:PATH or pin-env=VAR".into(),
            ));
        }
        let pin = match (attrs.get("pin-source"), attrs.get("pin-env")) {
            (Some(src), None) => {
                let file = src.strip_prefix("file:").unwrap_or(src);
                let p = Path::new(file);
                PinSource::File(if p.is_absolute() { p.to_path_buf() } else { base.join(p) })
            }
            (None, Some(var)) => PinSource::Env(var.clone()),
            _ => return Err(bad("give the PIN with exactly one of pin-source=file:PATH and pin-env=VAR".into())),
        };
        Ok(Pkcs11Uri { token, object, module, pin })
    }

    fn pin(&self) -> Result<AuthPin, Pkcs11Error> {
        let pin = match &self.pin {
            PinSource::File(p) => std::fs::read_to_string(p)
                .map_err(|e| Pkcs11Error(format!("token {:?}: PIN file {}: {e}", self.token, p.display())))?,
            PinSource::Env(var) => std::env::var(var).map_err(|_| {
                Pkcs11Error(format!("token {:?}: environment variable {var} (the PIN) is not set", self.token))
            })?,
        };
        Ok(AuthPin::from(pin.trim_end_matches(['\r', '\n']).to_string()))
    }

    /// `token "dev" (module /usr/lib/...)`, for messages.
    pub fn describe(&self) -> String {
        format!("PKCS#11 token {:?} key {:?} (module {})", self.token, self.object, self.module.display())
    }
}

/// The loaded modules: one `C_Initialize` per module for the whole process (a second one
/// fails with `CKR_CRYPTOKI_ALREADY_INITIALIZED`).
static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

/// Every call into a module holds this shared; [`rescan`] holds it alone, so no call is in
/// flight while a module is finalised (a module may crash on that).
static GATE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Counts [`rescan`]s. A session opened before the last one is gone with the module's old
/// state, and its handle number may since have been given to a new session: it is forgotten,
/// never closed (closing it could close someone else's).
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn generation() -> u64 {
    GENERATION.load(std::sync::atomic::Ordering::SeqCst)
}

/// Drops `open`'s session: closed if it is of the current generation, forgotten otherwise.
fn discard(open: &mut Option<Open>) {
    if let Some(o) = open.take() {
        if o.generation != generation() {
            std::mem::forget(o.session);
        }
    }
}

/// `open`, unless it predates the last rescan.
fn current(open: &mut Option<Open>) -> Option<&Open> {
    if open.as_ref().is_some_and(|o| o.generation != generation()) {
        discard(open);
    }
    open.as_ref()
}

fn shared() -> Result<std::sync::RwLockReadGuard<'static, ()>, Pkcs11Error> {
    GATE.read().map_err(|_| Pkcs11Error("PKCS#11 gate poisoned".into()))
}

fn modules() -> Result<std::sync::MutexGuard<'static, HashMap<PathBuf, Pkcs11>>, Pkcs11Error> {
    MODULES.get_or_init(Default::default).lock().map_err(|_| Pkcs11Error("PKCS#11 module table poisoned".into()))
}

fn module(path: &Path) -> Result<Pkcs11, Pkcs11Error> {
    let mut modules = modules()?;
    if let Some(m) = modules.get(path) {
        return Ok(m.clone());
    }
    let m =
        Pkcs11::new(path).map_err(|e| Pkcs11Error(format!("cannot load PKCS#11 module {}: {e}", path.display())))?;
    m.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| Pkcs11Error(format!("PKCS#11 module {}: C_Initialize failed: {e}", path.display())))?;
    modules.insert(path.to_path_buf(), m.clone());
    Ok(m)
}

/// `C_Finalize` then `C_Initialize`: a module that lists its tokens once (SoftHSM2) sees a
/// token added, removed or restored since. Other keys' sessions on the module end; each
/// opens a new one on its next signature.
fn rescan(path: &Path) -> Result<(), Pkcs11Error> {
    let _alone = GATE.write().map_err(|_| Pkcs11Error("PKCS#11 gate poisoned".into()))?;
    let modules = modules()?;
    let Some(m) = modules.get(path) else { return Ok(()) };
    let _ = m.clone().finalize();
    GENERATION.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    m.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| Pkcs11Error(format!("PKCS#11 module {}: C_Initialize failed: {e}", path.display())))
}

/// The slot holding the token labelled `label` (call with the gate held shared).
fn find_slot(pkcs11_path: &Path, label: &str) -> Result<Option<(Pkcs11, cryptoki::slot::Slot)>, String> {
    let pkcs11 = module(pkcs11_path).map_err(|e| e.0)?;
    let slots = pkcs11.get_slots_with_token().map_err(|e| format!("cannot list slots: {e}"))?;
    Ok(slots
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).is_ok_and(|t| t.label().trim_end() == label))
        .map(|slot| (pkcs11, slot)))
}

/// Runs `op` with the gate held shared; when it fails, rescans the module once (a token
/// added, removed or restored since it was loaded) and runs it again.
fn with_rescan<T>(path: &Path, mut op: impl FnMut() -> Result<T, Pkcs11Error>) -> Result<T, Pkcs11Error> {
    let first = {
        let _gate = shared()?;
        op()
    };
    match first {
        Ok(v) => Ok(v),
        Err(_) => {
            rescan(path)?;
            let _gate = shared()?;
            op()
        }
    }
}

/// A logged-in session on the token and the private key's handle in it.
struct Open {
    session: Session,
    key: ObjectHandle,
    /// [`GENERATION`] when it was opened.
    generation: u64,
}

/// A private key on a token, for one algorithm.
pub struct TokenKey {
    uri: Pkcs11Uri,
    alg: Alg,
    open: Mutex<Option<Open>>,
}

impl Drop for TokenKey {
    fn drop(&mut self) {
        if let Ok(open) = self.open.get_mut() {
            discard(open);
        }
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri.describe())
    }
}

impl TokenKey {
    /// Opens the key named by `uri` for `alg`: finds the token, logs in, finds the key pair,
    /// reads the public key. A missing token or key is an error here, at load.
    pub fn open(uri: Pkcs11Uri, alg: Alg) -> Result<(TokenKey, Map<String, Value>), Pkcs11Error> {
        let key = TokenKey { uri, alg, open: Mutex::new(None) };
        let (open, jwk) = with_rescan(&key.uri.module, || key.connect())?;
        *key.open.lock().map_err(|_| Pkcs11Error("session lock poisoned".into()))? = Some(open);
        Ok((key, jwk))
    }

    fn err(&self, what: impl std::fmt::Display) -> Pkcs11Error {
        Pkcs11Error(format!("{}: {what}", self.uri.describe()))
    }

    fn session(&self) -> Result<Session, Pkcs11Error> {
        let (pkcs11, slot) =
            find_slot(&self.uri.module, &self.uri.token).map_err(|e| self.err(e))?.ok_or_else(|| {
                self.err("no such token present (plugged in? initialised? `softhsm2-util --show-slots` lists them)")
            })?;
        let session = pkcs11.open_ro_session(slot).map_err(|e| self.err(format!("cannot open a session: {e}")))?;
        match session.login(UserType::User, Some(&self.uri.pin()?)) {
            Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(self.err(format!("login failed (wrong PIN?): {e}"))),
        }
        Ok(session)
    }

    fn find(&self, session: &Session, class: ObjectClass) -> Result<ObjectHandle, Pkcs11Error> {
        let found = session
            .find_objects(&[Attribute::Class(class), Attribute::Label(self.uri.object.as_bytes().to_vec())])
            .map_err(|e| self.err(format!("cannot search the token: {e}")))?;
        found.into_iter().next().ok_or_else(|| {
            let what = if class == ObjectClass::PRIVATE_KEY { "private key" } else { "public key" };
            self.err(format!(
                "no {what} labelled {:?} on the token (`tokenrelay init --only client --pkcs11 URI` creates one)",
                self.uri.object
            ))
        })
    }

    fn connect(&self) -> Result<(Open, Map<String, Value>), Pkcs11Error> {
        let session = self.session()?;
        let key = self.find(&session, ObjectClass::PRIVATE_KEY)?;
        let public = self.find(&session, ObjectClass::PUBLIC_KEY)?;
        let jwk = self.public_jwk(&session, public)?;
        Ok((Open { session, key, generation: generation() }, jwk))
    }

    /// The public JWK (RFC 7518 §6.2.1 / §6.3.1 members) read from the public key object.
    fn public_jwk(&self, session: &Session, public: ObjectHandle) -> Result<Map<String, Value>, Pkcs11Error> {
        let attrs = session
            .get_attributes(
                public,
                &[
                    AttributeType::KeyType,
                    AttributeType::EcPoint,
                    AttributeType::Modulus,
                    AttributeType::PublicExponent,
                ],
            )
            .map_err(|e| self.err(format!("cannot read the public key: {e}")))?;
        let mut key_type = None;
        let (mut point, mut n, mut e) = (None, None, None);
        for a in attrs {
            match a {
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::EcPoint(p) => point = Some(p),
                Attribute::Modulus(m) => n = Some(m),
                Attribute::PublicExponent(x) => e = Some(x),
                _ => {}
            }
        }
        let b64 = |b: &[u8]| Value::String(URL_SAFE_NO_PAD.encode(b));
        let mut jwk = Map::new();
        match (key_type, self.alg) {
            (Some(KeyType::EC), Alg::ES256 | Alg::ES384) => {
                let half = if self.alg == Alg::ES384 { 48 } else { 32 };
                let raw = ec_point(&point.unwrap_or_default(), half)
                    .ok_or_else(|| self.err(format!("the EC key is not on the curve {} needs", self.alg)))?;
                jwk.insert("crv".into(), (if half == 48 { "P-384" } else { "P-256" }).into());
                jwk.insert("kty".into(), "EC".into());
                jwk.insert("x".into(), b64(&raw[1..1 + half]));
                jwk.insert("y".into(), b64(&raw[1 + half..]));
            }
            (Some(KeyType::RSA), Alg::RS256 | Alg::PS256) => {
                let n = n.unwrap_or_default();
                let n = &n[n.iter().take_while(|b| **b == 0).count()..];
                if n.len() * 8 < 2048 {
                    return Err(self
                        .err(format!("RSA key is {} bits; at least 2048 are required (RFC 7518 §3.3)", n.len() * 8)));
                }
                jwk.insert("e".into(), b64(&e.unwrap_or_default()));
                jwk.insert("kty".into(), "RSA".into());
                jwk.insert("n".into(), b64(n));
            }
            (t, alg) => return Err(self.err(format!("alg {alg} needs {}, but the token key is {t:?}", alg.key_kind()))),
        }
        Ok(jwk)
    }

    /// The JWS signature over `input` (RFC 7515 §5.1 step 5), made on the token. On failure
    /// the session is dropped, so the next call opens a new one (the token came back).
    pub fn sign(&self, input: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        let mut open = self.open.lock().map_err(|_| self.err("session lock poisoned"))?;
        // A session that went stale (the module was re-initialised, the token re-inserted)
        // is dropped and the signature made again on a new one, after a rescan.
        with_rescan(&self.uri.module, || self.sign_in(&mut open, self.alg, input))
    }

    /// Like [`TokenKey::sign`], with the mechanism of `alg` (RS256 or PS256 for an RSA key:
    /// a TLS handshake picks).
    pub fn sign_as(&self, alg: Alg, input: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        let mut open = self.open.lock().map_err(|_| self.err("session lock poisoned"))?;
        with_rescan(&self.uri.module, || self.sign_in(&mut open, alg, input))
    }

    fn sign_in(&self, open: &mut Option<Open>, alg: Alg, input: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        if current(open).is_none() {
            *open = Some(self.connect()?.0);
        }
        let Some(o) = open.as_ref() else { return Err(self.err("no session")) };
        let result = match alg {
            Alg::ES256 => o.session.sign(&Mechanism::Ecdsa, o.key, &Sha256::digest(input)),
            Alg::ES384 => o.session.sign(&Mechanism::Ecdsa, o.key, &Sha384::digest(input)),
            Alg::RS256 => o.session.sign(&Mechanism::Sha256RsaPkcs, o.key, input),
            Alg::PS256 => {
                let params = PkcsPssParams {
                    hash_alg: MechanismType::SHA256,
                    mgf: PkcsMgfType::MGF1_SHA256,
                    s_len: 32u64.into(),
                };
                o.session.sign(&Mechanism::Sha256RsaPkcsPss(params), o.key, input)
            }
            other => return Err(self.err(format!("alg {other} cannot be signed on a PKCS#11 token here"))),
        };
        result.map_err(|e| {
            discard(open);
            self.err(format!("signing failed (token removed?): {e}"))
        })
    }

    /// Is the private key marked sensitive and not extractable (`CKA_SENSITIVE`,
    /// `CKA_EXTRACTABLE`), so the token never lets it out?
    pub fn never_leaves(&self) -> Result<bool, Pkcs11Error> {
        let mut open = self.open.lock().map_err(|_| self.err("session lock poisoned"))?;
        let attrs = with_rescan(&self.uri.module, || {
            if current(&mut open).is_none() {
                *open = Some(self.connect()?.0);
            }
            let Some(o) = open.as_ref() else { return Err(self.err("no session")) };
            o.session.get_attributes(o.key, &[AttributeType::Sensitive, AttributeType::Extractable]).map_err(|e| {
                discard(&mut open);
                self.err(format!("cannot read the key's attributes: {e}"))
            })
        })?;
        let (mut sensitive, mut extractable) = (false, true);
        for a in attrs {
            match a {
                Attribute::Sensitive(v) => sensitive = v,
                Attribute::Extractable(v) => extractable = v,
                _ => {}
            }
        }
        Ok(sensitive && !extractable)
    }

    pub fn signature_len(&self) -> usize {
        match self.alg {
            Alg::ES256 => 64,
            Alg::ES384 => 96,
            _ => 512,
        }
    }
}

/// A TLS client key on a token: the RFC 8705 §2 handshake signs through the token. Its
/// `public_key` (SPKI, RFC 5280 §4.1) is built from the public key read from the token, so
/// rustls can check it against the certificate.
#[derive(Debug)]
pub struct TlsKey {
    key: std::sync::Arc<TokenKey>,
    spki: Vec<u8>,
}

/// Opens the key `uri` names as a TLS client key (EC P-256, P-384 or RSA, whichever it is).
pub fn tls_key(uri: &str, base: &Path) -> Result<std::sync::Arc<dyn rustls::sign::SigningKey>, Pkcs11Error> {
    let parsed = Pkcs11Uri::parse(uri, base)?;
    let mut last = None;
    for alg in [Alg::ES256, Alg::ES384, Alg::PS256] {
        match TokenKey::open(parsed.clone(), alg) {
            Ok((key, jwk)) => {
                let spki = spki(&jwk).ok_or_else(|| key.err("cannot encode its public key"))?;
                return Ok(std::sync::Arc::new(TlsKey { key: std::sync::Arc::new(key), spki }));
            }
            Err(e) if e.0.contains(" needs ") || e.0.contains("not on the curve") => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Pkcs11Error(format!("{}: no usable key", parsed.describe()))))
}

/// DER: a length.
fn der_len(n: usize, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
}

/// DER: tag, length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_len(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

/// DER: an unsigned INTEGER from big-endian bytes.
fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed = &bytes[bytes.iter().take_while(|b| **b == 0).count().min(bytes.len().saturating_sub(1))..];
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    der(0x02, &content)
}

/// A raw `R || S` ECDSA signature (RFC 7518 §3.4) as the DER `Ecdsa-Sig-Value` TLS and X.509
/// use (RFC 3279 §2.2.3).
pub fn ecdsa_der(raw: &[u8]) -> Vec<u8> {
    let (r, s) = raw.split_at(raw.len() / 2);
    der(0x30, &[der_uint(r), der_uint(s)].concat())
}

/// SubjectPublicKeyInfo DER of a public JWK (EC P-256/P-384, RSA).
pub fn spki(jwk: &Map<String, Value>) -> Option<Vec<u8>> {
    let part = |n: &str| jwk.get(n).and_then(Value::as_str).and_then(|v| URL_SAFE_NO_PAD.decode(v).ok());
    use rustls::pki_types::alg_id;
    let (alg, key) = match jwk.get("kty").and_then(Value::as_str)? {
        "EC" => {
            let alg = match jwk.get("crv").and_then(Value::as_str)? {
                "P-256" => alg_id::ECDSA_P256,
                "P-384" => alg_id::ECDSA_P384,
                _ => return None,
            };
            (alg, [vec![4], part("x")?, part("y")?].concat())
        }
        "RSA" => (alg_id::RSA_ENCRYPTION, der(0x30, &[der_uint(&part("n")?), der_uint(&part("e")?)].concat())),
        _ => return None,
    };
    Some(rustls::sign::public_key_to_spki(&alg, key).as_ref().to_vec())
}

impl rustls::sign::SigningKey for TlsKey {
    fn choose_scheme(&self, offered: &[rustls::SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        use rustls::SignatureScheme as S;
        let choices: &[(S, Alg)] = match self.key.alg {
            Alg::ES256 => &[(S::ECDSA_NISTP256_SHA256, Alg::ES256)],
            Alg::ES384 => &[(S::ECDSA_NISTP384_SHA384, Alg::ES384)],
            _ => &[(S::RSA_PSS_SHA256, Alg::PS256), (S::RSA_PKCS1_SHA256, Alg::RS256)],
        };
        let (scheme, alg) = choices.iter().find(|(s, _)| offered.contains(s))?;
        Some(Box::new(TlsSigner { key: self.key.clone(), scheme: *scheme, alg: *alg }))
    }

    fn public_key(&self) -> Option<rustls::pki_types::SubjectPublicKeyInfoDer<'_>> {
        Some(rustls::pki_types::SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        match self.key.alg {
            Alg::ES256 | Alg::ES384 => rustls::SignatureAlgorithm::ECDSA,
            _ => rustls::SignatureAlgorithm::RSA,
        }
    }
}

#[derive(Debug)]
struct TlsSigner {
    key: std::sync::Arc<TokenKey>,
    scheme: rustls::SignatureScheme,
    alg: Alg,
}

impl rustls::sign::Signer for TlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let raw = self.key.sign_as(self.alg, message).map_err(|e| rustls::Error::General(e.0))?;
        Ok(match self.alg {
            Alg::ES256 | Alg::ES384 => ecdsa_der(&raw),
            _ => raw,
        })
    }

    fn scheme(&self) -> rustls::SignatureScheme {
        self.scheme
    }
}

/// The uncompressed point `04 || X || Y` from `CKA_EC_POINT`, which tokens give DER-wrapped in
/// an OCTET STRING (PKCS#11 3.0 §2.3.3) or, some, bare.
fn ec_point(attr: &[u8], half: usize) -> Option<Vec<u8>> {
    let want = 1 + 2 * half;
    if attr.len() == want && attr[0] == 4 {
        return Some(attr.to_vec());
    }
    // 0x04 (OCTET STRING), a one-byte length (65 or 97 < 128), the point.
    match attr {
        [0x04, len, rest @ ..] if usize::from(*len) == want && rest.len() == want && rest[0] == 4 => {
            Some(rest.to_vec())
        }
        _ => None,
    }
}

/// Creates a key pair for `alg` on the token `uri` names, labelled `object`: the private key
/// sensitive and not extractable (it never leaves the token), the public key readable.
pub fn generate(uri: &Pkcs11Uri, alg: Alg) -> Result<(), Pkcs11Error> {
    let key = TokenKey { uri: uri.clone(), alg, open: Mutex::new(None) };
    with_rescan(&uri.module, || generate_on(&key, alg))
}

fn generate_on(key: &TokenKey, alg: Alg) -> Result<(), Pkcs11Error> {
    let uri = &key.uri;
    let (pkcs11, slot) =
        find_slot(&uri.module, &uri.token).map_err(|e| key.err(e))?.ok_or_else(|| key.err("no such token present"))?;
    let session = pkcs11.open_rw_session(slot).map_err(|e| key.err(format!("cannot open a session: {e}")))?;
    session.login(UserType::User, Some(&uri.pin()?)).map_err(|e| key.err(format!("login failed: {e}")))?;
    let label = Attribute::Label(uri.object.as_bytes().to_vec());
    let id = Attribute::Id(crate::jose::new_jti().into_bytes());
    let private = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        label.clone(),
        id.clone(),
    ];
    let (mechanism, public) = match alg {
        Alg::ES256 | Alg::ES384 => {
            // DER OIDs of the named curves (RFC 5480 §2.1.1.1): prime256v1, secp384r1.
            let oid: &[u8] = if alg == Alg::ES384 {
                &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]
            } else {
                &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
            };
            (
                Mechanism::EccKeyPairGen,
                vec![Attribute::Token(true), Attribute::Verify(true), Attribute::EcParams(oid.to_vec()), label, id],
            )
        }
        Alg::RS256 | Alg::PS256 => (
            Mechanism::RsaPkcsKeyPairGen,
            vec![
                Attribute::Token(true),
                Attribute::Verify(true),
                Attribute::ModulusBits(2048u64.into()),
                Attribute::PublicExponent(vec![1, 0, 1]),
                label,
                id,
            ],
        ),
        other => return Err(key.err(format!("alg {other}: a token key is ES256, ES384, PS256 or RS256"))),
    };
    session
        .generate_key_pair(&mechanism, &public, &private)
        .map_err(|e| key.err(format!("key generation failed: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn uris_parse_and_refuse_inline_pins() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=dev%20box;object=client?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:pin.txt",
            Path::new("/etc/tr"),
        )
        .unwrap();
        assert_eq!(u.token, "dev box");
        assert_eq!(u.object, "client");
        assert_eq!(u.pin, PinSource::File(PathBuf::from("/etc/tr/pin.txt")));
        let env = Pkcs11Uri::parse("pkcs11:token=t;object=o?module-path=/m.so&pin-env=PIN", Path::new("/")).unwrap();
        assert_eq!(env.pin, PinSource::Env("PIN".into()));
        let err =
            Pkcs11Uri::parse("pkcs11:token=t;object=o?module-path=/m.so&pin-value=1234", Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("pin-source") && !err.to_string().contains("1234"), "{err}");
        assert!(Pkcs11Uri::parse("pkcs11:object=o?module-path=/m.so&pin-env=P", Path::new("/")).is_err());
    }

    #[test]
    fn relative_pin_files_resolve_against_the_config_folder() {
        let uri = "pkcs11:token=t;object=o?module-path=/m.so&pin-source=file:pin.txt&x=1";
        let abs = with_absolute_pin_file(uri, Path::new("/etc/my tr"));
        assert_eq!(abs, "pkcs11:token=t;object=o?module-path=/m.so&pin-source=file:/etc/my%20tr/pin.txt&x=1");
        let u = Pkcs11Uri::parse(&abs, Path::new("/elsewhere")).unwrap();
        assert_eq!(u.pin, PinSource::File(PathBuf::from("/etc/my tr/pin.txt")));
    }

    #[test]
    fn ec_points_bare_or_wrapped() {
        let mut bare = vec![4u8];
        bare.extend([7u8; 64]);
        assert_eq!(ec_point(&bare, 32).unwrap(), bare);
        let mut wrapped = vec![0x04, 65];
        wrapped.extend(&bare);
        assert_eq!(ec_point(&wrapped, 32).unwrap(), bare);
        assert!(ec_point(&wrapped, 48).is_none());
    }
}
