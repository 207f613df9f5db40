//! Key files: read, check, and (when asked) generate the private keys a config names, to be
//! written once the config is accepted ([`NewFile`]); load mTLS identities (certificate
//! chain and key, RFC 8705).
//!
//! Errors name the route, the config key and the file, and say how to fix it:
//! `route "demo": client.key "certs/client.pem": file not found (run \`tokenrelay init\`)`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{PemObject as _, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::MtlsConfig;
use crate::jose::{Alg, SigningKey};
use crate::redact::{Secret, SecretBytes};

/// The credential a route's client authentication uses.
#[derive(Debug, Clone)]
pub enum Credential {
    None,
    Secret(Secret),
    Key(Arc<SigningKey>),
    /// A client assertion made elsewhere (`client.assertion`), fetched per request.
    Assertion(Arc<crate::assertion::ExternalAssertion>),
    /// That assertion as fetched for one request: sent as it is on every attempt, the
    /// `use_dpop_nonce` retry included.
    Fetched(Arc<crate::assertion::Fetched>),
}

/// A key file problem, with enough context to act on.
#[derive(Debug, thiserror::Error)]
#[error("{}route {route:?}: {field} {path:?}: {reason}", location.as_deref().map(|l| format!("{l}: ")).unwrap_or_default())]
pub struct KeyFileError {
    pub route: String,
    pub field: String,
    pub path: PathBuf,
    pub reason: String,
    /// `file:line:column` of the path in the config, when known (a file not found).
    pub location: Option<String>,
}

impl KeyFileError {
    /// Adds where the config names the file (`file:line:column` of its quoted path), for a
    /// file that was not found: that is where the typo is.
    pub fn locate_in(mut self, config: &Path) -> KeyFileError {
        if self.location.is_some() || !self.reason.starts_with("file not found") {
            return self;
        }
        let Ok(text) = std::fs::read_to_string(config) else { return self };
        let folder = config.parent().unwrap_or(Path::new(""));
        let rel = self.path.strip_prefix(folder).unwrap_or(&self.path);
        // `./certs/x.pem` as resolved against a config in the working folder: the config
        // says `certs/x.pem`.
        let rel: PathBuf = rel.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect();
        for written in [rel.display().to_string(), self.path.display().to_string()] {
            let quoted = format!("\"{written}\"");
            if let Some(at) = text.find(&quoted) {
                let line = text[..at].matches('\n').count() + 1;
                let column = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
                self.location = Some(format!("{}:{line}:{column}", config.display()));
                break;
            }
        }
        self
    }
}

/// Where a key is used, for messages.
#[derive(Debug, Clone)]
pub struct KeyRef<'a> {
    pub route: &'a str,
    pub field: &'a str,
    pub path: &'a Path,
}

impl KeyRef<'_> {
    pub fn error(&self, reason: impl Into<String>) -> KeyFileError {
        KeyFileError {
            route: self.route.to_string(),
            field: self.field.to_string(),
            path: self.path.to_path_buf(),
            reason: reason.into(),
            location: None,
        }
    }
}

/// Reads a file, mapping "not found" to a message with the fix.
/// The bytes are a [`SecretBytes`]: a key file's PEM is wiped from memory once parsed.
pub fn read(at: &KeyRef<'_>) -> Result<SecretBytes, KeyFileError> {
    crate::config::file::read(at.path, crate::config::file::SMALL_CAP).map(SecretBytes::new).map_err(|e| {
        match e.kind() {
            std::io::ErrorKind::NotFound => at.error(not_found(at.path)),
            std::io::ErrorKind::PermissionDenied => at.error("permission denied (check the file's owner and mode)"),
            _ => at.error(format!("cannot read: {e}")),
        }
    })
}

/// Names `init` creates (its starter configs' defaults): for these, `init` is the fix.
const INIT_NAMES: [&str; 6] = ["client.pem", "dpop.pem", "client-cert.pem", "client-key.pem", "ca.pem", "ca-key.pem"];

/// Why `path` is missing and what to do: a did-you-mean among the files in its folder when
/// one is close (a typo: `init` would create an unregistered key under the wrong name), else
/// `tokenrelay init` when it makes files of that name, else a plain "check the path".
fn not_found(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let folder = path.parent().unwrap_or(Path::new("."));
    let close = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|other| *other != name)
        .map(|other| (strsim::damerau_levenshtein(&name, &other), other))
        .filter(|(d, other)| *d <= 2.max(other.len() / 5))
        .min();
    if let Some((_, other)) = close {
        let shown = folder.join(&other);
        return format!(
            "file not found; did you mean {:?}? (fix the path in the config; `tokenrelay init` would create a new, unregistered key under the mistyped name)",
            shown.display().to_string()
        );
    }
    if !folder.exists() {
        return format!("file not found: the folder {:?} does not exist either (check the path; `tokenrelay init` creates certs/ with the starter's keys)", folder.display().to_string());
    }
    if INIT_NAMES.contains(&name.as_str()) {
        "file not found (run `tokenrelay init` to create it)".into()
    } else {
        "file not found (check the path; for a new key, `tokenrelay init` or create = true)".into()
    }
}

/// Loads a private signing key for `alg`. Never writes: a key marked `create = true` that is
/// missing is made by [`new_signing_key`] instead. Returns the key and any warnings (such as
/// loose file permissions).
pub fn load_signing_key(at: &KeyRef<'_>, alg: Alg) -> Result<(Arc<SigningKey>, Vec<String>), KeyFileError> {
    if let Some(uri) = at.path.to_str().filter(|p| crate::jose::pkcs11::is_uri(p)) {
        // On a token: signed there, never read (the config made the PIN file path absolute).
        let key = SigningKey::pkcs11(uri, alg, Path::new("/")).map_err(|e| at.error(e.to_string()))?;
        return Ok((Arc::new(key), Vec::new()));
    }
    let bytes = read(at)?;
    let key = SigningKey::load(bytes.expose(), alg).map_err(|e| at.error(e.to_string()))?;
    let warnings = permission_warning(at.path).into_iter().collect();
    Ok((Arc::new(key), warnings))
}

/// Generates the signing key `at` names, in memory: the file is written by
/// [`NewFile::write`] once the config that asks for it has been accepted.
pub fn new_signing_key(at: &KeyRef<'_>, alg: Alg) -> Result<(Arc<SigningKey>, NewFile), KeyFileError> {
    let key = SigningKey::generate(alg).map_err(|e| at.error(format!("cannot generate a {alg} key: {e}")))?;
    let what = format!("route {:?} {} ({alg}, kid {})", at.route, at.field, key.thumbprint());
    let file = NewFile::private(at.path, what, key.pkcs8_pem().expose().to_vec());
    Ok((Arc::new(key), file))
}

/// A file a config asks for (a `create = true` key, the demo AS's CA) that is missing: made
/// in memory while the config is validated, so that validating writes nothing; written by
/// [`NewFile::write`] only once the config is accepted (at start, at an accepted reload).
pub struct NewFile {
    pub path: PathBuf,
    /// What it is, for the log line: `route "demo" dpop.key (ES256, kid ...)`.
    pub what: String,
    /// Wiped on drop: it may be a private key.
    contents: crate::redact::SecretBytes,
    /// A private key: mode 0600, never over an existing file.
    private: bool,
    /// Remove what is at `path` first (one half of a pair that is regenerated whole).
    replace: bool,
}

impl std::fmt::Debug for NewFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the contents: they may be a private key.
        f.debug_struct("NewFile").field("path", &self.path).field("what", &self.what).finish_non_exhaustive()
    }
}

/// A [`NewFile`] that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot create {what} at {}: {source}", path.display())]
pub struct CreateError {
    pub what: String,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl NewFile {
    /// A private key (written 0600, refusing to overwrite).
    pub fn private(path: &Path, what: impl Into<String>, pem: Vec<u8>) -> NewFile {
        NewFile {
            path: path.to_path_buf(),
            what: what.into(),
            contents: crate::redact::SecretBytes::new(pem),
            private: true,
            replace: false,
        }
    }

    /// A public file (a certificate).
    pub fn public(path: &Path, what: impl Into<String>, pem: Vec<u8>) -> NewFile {
        NewFile {
            path: path.to_path_buf(),
            what: what.into(),
            contents: crate::redact::SecretBytes::new(pem),
            private: false,
            replace: false,
        }
    }

    /// Removes what is at the path before writing.
    pub fn replacing(mut self) -> NewFile {
        self.replace = true;
        self
    }

    /// What will be written.
    pub fn contents(&self) -> &[u8] {
        self.contents.expose()
    }

    /// Writes it (creating its folder), and logs one line naming it.
    pub fn write(&self) -> Result<(), CreateError> {
        let error = |source| CreateError { what: self.what.clone(), path: self.path.clone(), source };
        if self.replace {
            match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(error(e)),
                _ => {}
            }
        }
        if self.private {
            write_private(&self.path, self.contents.expose()).map_err(error)?;
        } else {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir).map_err(error)?;
            }
            std::fs::write(&self.path, self.contents.expose()).map_err(error)?;
        }
        tracing::info!(file = %self.path.display(), "created {}", self.what);
        Ok(())
    }
}

/// A client certificate chain (leaf first) and its private key.
pub struct Identity {
    pub leaf: CertificateDer<'static>,
    /// Sent after the leaf in the handshake (RFC 8705 §2: the AS may need them to build a path).
    pub intermediates: Vec<CertificateDer<'static>>,
    /// Signs the handshake: from the key file, or on a PKCS#11 token.
    pub key: Arc<dyn rustls::sign::SigningKey>,
}

impl Identity {
    /// The chain as sent in the TLS handshake: leaf first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(self.leaf.clone()).chain(self.intermediates.iter().cloned()).collect()
    }
}

/// Loads `[routes.X.mtls]`, checking that key and certificate belong together and warning
/// about expired or not-yet-valid certificates and loose key permissions.
pub fn load_identity(route: &str, m: &MtlsConfig, warnings: &mut Vec<String>) -> Result<Identity, KeyFileError> {
    let cert_at = KeyRef { route, field: "mtls.cert", path: &m.cert };
    let key_at = KeyRef { route, field: "mtls.key", path: &m.key };
    let cert_bytes = read(&cert_at)?;
    let mut chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_bytes.expose())
        .collect::<Result<_, _>>()
        .map_err(|e| cert_at.error(format!("not a PEM certificate file: {e}")))?;
    if chain.is_empty() {
        return Err(cert_at.error("no CERTIFICATE block found (expected the client certificate in PEM, leaf first)"));
    }
    let on_token = m.key.to_str().filter(|p| crate::jose::pkcs11::is_uri(p));
    let signing = match on_token {
        Some(uri) => crate::jose::pkcs11::tls_key(uri, Path::new("/")).map_err(|e| key_at.error(e.to_string()))?,
        None => file_tls_key(&key_at)?,
    };
    rustls::sign::CertifiedKey::new(chain.clone(), signing.clone()).keys_match().map_err(|_| {
        cert_at.error(format!(
            "the certificate does not match mtls.key {:?} (different key pair)",
            m.key.display().to_string()
        ))
    })?;
    if on_token.is_none() {
        warnings.extend(permission_warning(&m.key));
    }
    if let Some(w) = crate::pki::validity_warning(&chain[0]) {
        warnings.push(format!("route {route:?}: mtls.cert {:?}: {w}", m.cert.display().to_string()));
    }
    let leaf = chain.remove(0);
    Ok(Identity { leaf, intermediates: chain, key: signing })
}

/// An `mtls.key` file as a rustls signing key.
fn file_tls_key(key_at: &KeyRef<'_>) -> Result<Arc<dyn rustls::sign::SigningKey>, KeyFileError> {
    let key_bytes = read(key_at)?;
    // The first PEM section decides, whatever its kind.
    let key = match <(SectionKind, Vec<u8>)>::from_pem_slice(key_bytes.expose()) {
        Ok((SectionKind::Certificate, _)) => {
            return Err(key_at.error("holds a certificate, not a private key (are cert and key swapped?)"));
        }
        Ok((kind, der)) => match PrivateKeyDer::from_pem(kind, der) {
            Some(key) => key,
            None => return Err(key_at.error("holds a public key or CSR; mtls.key needs the private key")),
        },
        Err(_) => return Err(key_at.error("not a PEM private key (PKCS#8, SEC1 or PKCS#1)")),
    };
    rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| key_at.error(format!("unsupported private key: {e}")))
}

/// Writes a private key with mode 0600, refusing to overwrite.
pub fn write_private(path: &Path, pem: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(pem)?;
    f.sync_all()
}

/// A warning when a private key file is readable by group or others.
pub fn permission_warning(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        if mode & 0o077 != 0 {
            return Some(format!(
                "private key {} is readable by group or others (mode {:o}); fix: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn missing_file_says_run_init() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.pem");
        let at = KeyRef { route: "demo", field: "client.key", path: &path };
        let err = load_signing_key(&at, Alg::ES256).unwrap_err().to_string();
        assert!(err.contains("route \"demo\": client.key") && err.contains("tokenrelay init"), "{err}");
    }

    #[test]
    fn a_new_key_is_written_0600_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/k.pem");
        let at = KeyRef { route: "demo", field: "dpop.key", path: &path };
        let (a, file) = new_signing_key(&at, Alg::ES256).unwrap();
        assert!(!path.exists(), "generating writes nothing");
        assert!(!format!("{file:?}").contains("PRIVATE"), "Debug never shows the key: {file:?}");
        file.write().unwrap();
        let (b, warnings) = load_signing_key(&at, Alg::ES256).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(a.thumbprint(), b.thumbprint(), "the key written is the key used");
        let again = file.write().unwrap_err().to_string();
        assert!(again.contains("route \"demo\" dpop.key"), "never over an existing file: {again}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let (_, warnings) = load_signing_key(&at, Alg::ES256).unwrap();
            assert!(warnings[0].contains("chmod 600"), "{warnings:?}");
        }
    }
}
