//! Key files: read, check, and (when asked) create the private keys a config names; load
//! mTLS identities (certificate chain and key, RFC 8705).
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
use crate::redact::Secret;

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
#[error("route {route:?}: {field} {path:?}: {reason}")]
pub struct KeyFileError {
    pub route: String,
    pub field: String,
    pub path: PathBuf,
    pub reason: String,
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
        }
    }
}

/// Reads a file, mapping "not found" to a message with the fix.
pub fn read(at: &KeyRef<'_>) -> Result<Vec<u8>, KeyFileError> {
    std::fs::read(at.path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => at.error("file not found (run `tokenrelay init` to create it)"),
        std::io::ErrorKind::PermissionDenied => at.error("permission denied (check the file's owner and mode)"),
        _ => at.error(format!("cannot read: {e}")),
    })
}

/// Loads a private signing key for `alg`; creates it first when `create` and missing.
/// Returns the key and any warnings (such as loose file permissions).
pub fn load_signing_key(
    at: &KeyRef<'_>,
    alg: Alg,
    create: bool,
) -> Result<(Arc<SigningKey>, Vec<String>), KeyFileError> {
    if let Some(uri) = at.path.to_str().filter(|p| crate::jose::pkcs11::is_uri(p)) {
        // On a token: signed there, never read (the config made the PIN file path absolute).
        let key = SigningKey::pkcs11(uri, alg, Path::new("/")).map_err(|e| at.error(e.to_string()))?;
        return Ok((Arc::new(key), Vec::new()));
    }
    if create && !at.path.exists() {
        let key = SigningKey::generate(alg).map_err(|e| at.error(format!("cannot generate a {alg} key: {e}")))?;
        write_private(at.path, &key.pkcs8_pem()).map_err(|e| at.error(format!("cannot create: {e}")))?;
        tracing::info!(route = at.route, file = %at.path.display(), %alg, kid = key.thumbprint(), "created {}", at.field);
    }
    let bytes = read(at)?;
    let key = SigningKey::load(&bytes, alg).map_err(|e| at.error(e.to_string()))?;
    let warnings = permission_warning(at.path).into_iter().collect();
    Ok((Arc::new(key), warnings))
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
    let mut chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_bytes)
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
    let key = match <(SectionKind, Vec<u8>)>::from_pem_slice(&key_bytes) {
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
        let err = load_signing_key(&at, Alg::ES256, false).unwrap_err().to_string();
        assert!(err.contains("route \"demo\": client.key") && err.contains("tokenrelay init"), "{err}");
    }

    #[test]
    fn create_writes_0600_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let at = KeyRef { route: "demo", field: "dpop.key", path: &path };
        let (a, warnings) = load_signing_key(&at, Alg::ES256, true).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let (b, _) = load_signing_key(&at, Alg::ES256, true).unwrap();
        assert_eq!(a.thumbprint(), b.thumbprint(), "the key persists across loads");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let (_, warnings) = load_signing_key(&at, Alg::ES256, false).unwrap();
            assert!(warnings[0].contains("chmod 600"), "{warnings:?}");
        }
    }
}
