//! The local CA behind `[proxy] listen_tls` and forward mode: load it, or create it on first
//! use, and mint the server leaves the app is shown.
//!
//! - The CA lives at `[proxy] ca_cert` / `ca_key`. When both are missing it is created (key
//!   written 0600 with `create_new`, so a concurrent start never clobbers it); when one of the
//!   two is missing, tokenrelay refuses to guess and says which file to delete. An existing CA
//!   (yours, or one made earlier) is used as is.
//! - A CA tokenrelay creates is name-constrained (RFC 5280 §4.2.1.10) to loopback plus the
//!   hosts the routes claim *at creation time* (see [`crate::pki::generate_local_ca`]). A route
//!   that later claims a host outside those constraints is refused with the fix (delete both
//!   files, restart, trust the new CA again) instead of handing the app a leaf its TLS stack
//!   would reject with a cryptic error.
//! - Leaves are short-lived (1 day, backdated 5 minutes), cached in memory per name set, and
//!   re-minted an hour before they expire, so a long-running proxy never serves an expired one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::{PemObject as _, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::Config;
use crate::keys::write_private;
use crate::pki::{self, LeafUse, Minted};

/// The subject CN of every CA tokenrelay creates.
pub const CA_CN: &str = "tokenrelay local CA";
/// Names on the `listen_tls` leaf.
pub const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Lifetime of a minted leaf.
pub const LEAF_DAYS: i64 = 1;
/// A cached leaf is re-minted this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(3600);
/// Bound on the leaf cache (claimed hosts are few; this only guards against a runaway).
const MAX_CACHED: usize = 1024;

/// Why the local CA is unusable.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("[proxy] ca_cert {path:?}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("[proxy] ca_key {path:?}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("local CA: {0}")]
    Mint(String),
}

struct Cached {
    key: Arc<CertifiedKey>,
    renew_at: Instant,
}

/// A loaded local CA and its leaf cache.
pub struct LocalCa {
    cert_path: PathBuf,
    issuer: Minted,
    constraints: Option<pki::NameConstraints>,
    expiry_warning: Option<String>,
    leaves: Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("cert_path", &self.cert_path)
            .field("constraints", &self.constraints)
            .finish_non_exhaustive()
    }
}

/// The names a new local CA is constrained to: the hosts the routes claim when forward mode
/// is on (ports stripped). Loopback is always added by [`pki::generate_local_ca`].
pub fn permitted_names(config: &Config) -> Vec<String> {
    if config.forward.is_none() {
        return Vec::new();
    }
    let mut names: Vec<String> = Vec::new();
    for route in &config.routes {
        for entry in &route.hosts {
            if !names.contains(&entry.host) {
                names.push(entry.host.clone());
            }
        }
    }
    names
}

impl LocalCa {
    /// Loads the CA at `[proxy] ca_cert` / `ca_key`, creating it when both are missing.
    /// Returns the CA and whether it was created now.
    pub fn load_or_create(config: &Config) -> Result<(LocalCa, bool), CaError> {
        let (cert, key) = (&config.ca_cert, &config.ca_key);
        match (cert.exists(), key.exists()) {
            (true, true) => Ok((LocalCa::load(cert, key)?, false)),
            (false, false) => Ok((LocalCa::create(config)?, true)),
            (true, false) => Err(CaError::Key {
                path: key.clone(),
                reason: format!(
                    "missing, but ca_cert {:?} exists; restore the key, or delete the certificate so a new CA is created",
                    cert.display().to_string()
                ),
            }),
            (false, true) => Err(CaError::Cert {
                path: cert.clone(),
                reason: format!(
                    "missing, but ca_key {:?} exists; restore the certificate, or delete the key so a new CA is created",
                    key.display().to_string()
                ),
            }),
        }
    }

    /// Creates a new CA at `[proxy] ca_cert` / `ca_key` (neither may exist).
    pub fn create(config: &Config) -> Result<LocalCa, CaError> {
        let minted =
            pki::generate_local_ca(CA_CN, &permitted_names(config)).map_err(|e| CaError::Mint(e.to_string()))?;
        write_private(&config.ca_key, minted.key_pem.expose().as_bytes())
            .map_err(|e| CaError::Key { path: config.ca_key.clone(), reason: format!("cannot create: {e}") })?;
        let written = config
            .ca_cert
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&config.ca_cert, minted.cert_pem.as_bytes()));
        if let Err(e) = written {
            // Do not leave a key without its certificate behind.
            let _ = std::fs::remove_file(&config.ca_key);
            return Err(CaError::Cert { path: config.ca_cert.clone(), reason: format!("cannot create: {e}") });
        }
        LocalCa::load(&config.ca_cert, &config.ca_key)
    }

    /// Loads an existing CA, checking that it is a CA and that the key belongs to it.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<LocalCa, CaError> {
        let cert_err = |reason: String| CaError::Cert { path: cert_path.to_path_buf(), reason };
        let key_err = |reason: String| CaError::Key { path: key_path.to_path_buf(), reason };
        let read = |p: &Path| {
            crate::config::file::read_to_string(p, crate::config::file::SMALL_CAP).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => "file not found".to_string(),
                _ => format!("cannot read: {e}"),
            })
        };
        let cert_pem = read(cert_path).map_err(cert_err)?;
        let key_pem = crate::redact::Secret::new(read(key_path).map_err(key_err)?);
        let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .ok_or_else(|| cert_err("no CERTIFICATE block found".into()))?
            .map_err(|e| cert_err(format!("not a PEM certificate: {e}")))?;
        if !pki::is_ca(&der) {
            return Err(cert_err("not a CA certificate (basicConstraints cA is not set)".into()));
        }
        let key = private_key(key_pem.expose()).ok_or_else(|| key_err("not a PEM private key".into()))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| key_err(format!("unsupported private key: {e}")))?;
        CertifiedKey::new(vec![der.clone()], signer)
            .keys_match()
            .map_err(|_| key_err(format!("does not belong to ca_cert {:?}", cert_path.display().to_string())))?;
        let issuer = Minted { cert_pem, key_pem };
        // Fail now, not at the first handshake, when rcgen cannot sign with this CA.
        pki::issue_leaf(&issuer, &["localhost"], LeafUse::Server, LEAF_DAYS)
            .map_err(|e| key_err(format!("cannot issue certificates with this CA: {e}")))?;
        let mut warnings = Vec::new();
        warnings.extend(crate::keys::permission_warning(key_path));
        warnings.extend(
            pki::validity_warning(&der).map(|w| format!("[proxy] ca_cert {:?}: {w}", cert_path.display().to_string())),
        );
        Ok(LocalCa {
            cert_path: cert_path.to_path_buf(),
            constraints: pki::name_constraints(&der),
            expiry_warning: (!warnings.is_empty()).then(|| warnings.join("; ")),
            issuer,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    pub fn cert_pem(&self) -> &str {
        &self.issuer.cert_pem
    }

    /// Loose key permissions or an expired/expiring CA, to log at start.
    pub fn warning(&self) -> Option<&str> {
        self.expiry_warning.as_deref()
    }

    /// The CA's name constraints, `None` when it has none.
    pub fn constraints(&self) -> Option<&pki::NameConstraints> {
        self.constraints.as_ref()
    }

    /// Can this CA issue a leaf for `host` that verifiers accept?
    pub fn permits(&self, host: &str) -> bool {
        self.constraints.as_ref().is_none_or(|c| c.permits(host))
    }

    /// Why `host` cannot be served, with the fix; `None` when it can.
    pub fn refusal(&self, host: &str) -> Option<String> {
        let c = self.constraints.as_ref()?;
        if c.permits(host) {
            return None;
        }
        Some(format!(
            "the local CA {:?} is name-constrained to [{}] (the hosts routes claimed when it was created) and cannot \
             issue a certificate for {host:?}; add it to the route's `hosts` (a metadata endpoint on another host \
             is claimed by its route, but the CA covers only what the config lists), run `tokenrelay ca --regenerate` \
             for a new CA covering every listed host, and trust that again (`tokenrelay ca`)",
            self.cert_path.display().to_string(),
            c.describe()
        ))
    }

    /// A server leaf for `names` (DNS names or IP literals), from the cache when fresh.
    pub fn server_key(&self, names: &[&str]) -> Result<Arc<CertifiedKey>, CaError> {
        let cache_key = names.join(",").to_ascii_lowercase();
        let now = Instant::now();
        if let Some(hit) = self.lock().get(&cache_key).filter(|c| c.renew_at > now) {
            return Ok(hit.key.clone());
        }
        let minted = pki::issue_leaf(&self.issuer, names, LeafUse::Server, LEAF_DAYS)
            .map_err(|e| CaError::Mint(e.to_string()))?;
        let key = Arc::new(certified_key(&minted).ok_or_else(|| CaError::Mint("minted leaf does not parse".into()))?);
        let lifetime = Duration::from_secs(LEAF_DAYS as u64 * 86_400);
        let mut leaves = self.lock();
        if leaves.len() >= MAX_CACHED {
            leaves.retain(|_, c| c.renew_at > now);
            if leaves.len() >= MAX_CACHED {
                leaves.clear();
            }
        }
        leaves.insert(cache_key, Cached { key: key.clone(), renew_at: now + lifetime - RENEW_BEFORE });
        tracing::debug!(names = ?names, "minted a server certificate from the local CA");
        Ok(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.leaves.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The private key in the first PEM section (PKCS#8, SEC1 or PKCS#1); `None` when that section
/// holds anything else.
fn private_key(pem: &str) -> Option<PrivateKeyDer<'static>> {
    let (kind, der) = <(SectionKind, Vec<u8>)>::from_pem_slice(pem.as_bytes()).ok()?;
    PrivateKeyDer::from_pem(kind, der)
}

fn certified_key(minted: &Minted) -> Option<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(minted.cert_pem.as_bytes()).collect::<Result<_, _>>().ok()?;
    let key = private_key(minted.key_pem.expose())?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).ok()?;
    Some(CertifiedKey::new(chain, signer))
}

/// A rustls server config with `resolver`, ALPN h2 + http/1.1, ring provider. No session
/// resumption across connections: each handshake goes through the resolver's checks.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<rustls::ServerConfig>, CaError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CaError::Mint(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// Serves the `listen_tls` leaf (`localhost`, `127.0.0.1`, `::1`), re-minted before expiry.
#[derive(Debug)]
pub struct LoopbackResolver(pub Arc<LocalCa>);

impl ResolvesServerCert for LoopbackResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.0.server_key(&LOOPBACK_NAMES) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::error!("listen_tls: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A forward-mode config claiming two hosts, with `extra` in `[proxy]`.
    pub(crate) fn config(dir: &Path, extra: &str) -> Config {
        let text = format!(
            "[proxy]\nforward = \"127.0.0.1:8788\"\n{extra}\n[routes.a]\nprefix = \"/a\"\nupstream = \"https://127.0.0.1:9443\"\nhosts = [\"as.example.com\", \"127.0.0.1:9443\"]\n"
        );
        crate::config::parse(&text, &dir.join("proxy.toml")).unwrap()
    }

    #[test]
    fn created_once_with_a_private_key_and_constraints_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "");
        let (ca, created) = LocalCa::load_or_create(&cfg).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&cfg.ca_key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(ca.permits("as.example.com") && ca.permits("127.0.0.1") && ca.permits("localhost"));
        assert!(!ca.permits("bank.example"));
        assert!(ca.refusal("bank.example").unwrap().contains("name-constrained"));
        let (again, created) = LocalCa::load_or_create(&cfg).unwrap();
        assert!(!created);
        assert_eq!(again.cert_pem(), ca.cert_pem());
    }

    #[test]
    fn half_a_ca_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "");
        LocalCa::load_or_create(&cfg).unwrap();
        std::fs::remove_file(&cfg.ca_key).unwrap();
        let err = LocalCa::load_or_create(&cfg).unwrap_err().to_string();
        assert!(err.contains("ca_key") && err.contains("delete the certificate"), "{err}");
    }

    #[test]
    fn leaves_are_cached_per_name_set() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = LocalCa::load_or_create(&config(dir.path(), "")).unwrap();
        let a = ca.server_key(&["as.example.com"]).unwrap();
        let b = ca.server_key(&["as.example.com"]).unwrap();
        let c = ca.server_key(&["127.0.0.1"]).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        let (_, leaf) = x509_parser::parse_x509_certificate(&a.cert[0]).unwrap();
        let v = leaf.validity();
        let span = v.not_after.timestamp() - v.not_before.timestamp();
        assert_eq!(span, 86_400 + 300, "1 day, backdated 5 minutes");
    }
}
