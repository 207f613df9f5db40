//! Creating the key material a config names and is missing: client and DPoP signing keys,
//! self-signed mTLS client certificates, the local CA, the demo AS's CA. Used by
//! `tokenrelay init` and, for the demo AS CA, by every load (routes may trust it).
//!
//! Private keys are written 0600 (see [`crate::keys::write_private`]). Existing files are
//! kept unless `force`.

use std::path::{Path, PathBuf};

use crate::config::{AuthMethod, Config};
use crate::jose::SigningKey;
use crate::keys::write_private;

/// Why a file could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{what}: cannot write {}: {source}", path.display())]
    Write { what: String, path: PathBuf, source: std::io::Error },
    #[error("{what}: cannot generate it: {reason}")]
    Generate { what: String, reason: String },
    #[error(transparent)]
    LocalCa(#[from] crate::local_ca::CaError),
}

fn write_error(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError {
    let (what, path) = (what.to_string(), path.to_path_buf());
    move |source| ProvisionError::Write { what, path, source }
}

fn write_public(path: &Path, pem: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, pem)
}

/// Whether to (re)create `path`: it is missing, or `force` and it was removed.
fn replace(path: &Path, force: bool) -> Result<bool, ProvisionError> {
    if !path.exists() {
        return Ok(true);
    }
    if !force {
        return Ok(false);
    }
    std::fs::remove_file(path).map_err(write_error("replacing", path))?;
    Ok(true)
}

/// Creates every missing file `config` names; returns a line per file made.
pub fn init(config: &Config, force: bool) -> Result<Vec<String>, ProvisionError> {
    let mut made = Vec::new();
    let mut done = std::collections::HashSet::new();
    for r in &config.routes {
        let mut keys = Vec::new();
        if let Some(c) = &r.client {
            if c.auth == AuthMethod::PrivateKeyJwt {
                if let Some(k) = &c.key {
                    keys.push((format!("route {:?} client.key", r.name), k.clone(), c.alg));
                }
            }
        }
        if let Some(d) = &r.dpop {
            keys.push((format!("route {:?} dpop.key", r.name), d.key.clone(), d.alg));
        }
        for (what, path, alg) in keys {
            if !done.insert(path.clone()) || !replace(&path, force)? {
                continue;
            }
            let key = SigningKey::generate(alg)
                .map_err(|e| ProvisionError::Generate { what: format!("{what} ({alg})"), reason: e.to_string() })?;
            write_private(&path, key.pkcs8_pem()).map_err(write_error(&what, &path))?;
            made.push(format!("{} ({what}, {alg}, kid {})", path.display(), key.thumbprint()));
        }
        if let Some(m) = &r.mtls {
            if done.insert(m.cert.clone()) && (replace(&m.cert, force)? | (!m.key.exists() || force)) {
                let what = format!("route {:?} mtls", r.name);
                let cn = r.client.as_ref().map(|c| c.id.as_str()).unwrap_or("tokenrelay-client");
                let minted = crate::pki::self_signed_client(cn, 365)
                    .map_err(|e| ProvisionError::Generate { what: what.clone(), reason: e.to_string() })?;
                if m.key.exists() {
                    std::fs::remove_file(&m.key).map_err(write_error(&what, &m.key))?;
                }
                write_private(&m.key, minted.key_pem.as_bytes()).map_err(write_error(&what, &m.key))?;
                write_public(&m.cert, minted.cert_pem.as_bytes()).map_err(write_error(&what, &m.cert))?;
                made.push(format!(
                    "{} + {} (route {:?} self-signed client certificate, CN={cn}, 365 days)",
                    m.cert.display(),
                    m.key.display(),
                    r.name
                ));
            }
        }
    }
    if config.listen_tls.is_some() || config.forward.is_some() {
        let present = config.ca_cert.exists() || config.ca_key.exists();
        if force {
            for path in [&config.ca_cert, &config.ca_key] {
                if path.exists() {
                    std::fs::remove_file(path).map_err(write_error("local CA", path))?;
                }
            }
        }
        if !present || force {
            let ca = crate::local_ca::LocalCa::create(config)?;
            let scope = ca.constraints().map(|c| c.describe()).unwrap_or_else(|| "any name".into());
            made.push(format!(
                "{} + {} (local CA, name-constrained to {scope}; trust it with `tokenrelay ca`)",
                config.ca_cert.display(),
                config.ca_key.display()
            ));
        }
    }
    if ensure_demo_as_ca(config)? {
        made.push(format!("{} (demo AS CA for [demo_as] tls = true)", demo_as_ca_paths(config).0.display()));
    }
    Ok(made)
}

/// Where the demo AS's CA lives when `[demo_as] tls = true`.
pub fn demo_as_ca_paths(config: &Config) -> (PathBuf, PathBuf) {
    (config.dir.join("certs/demo-as-ca.pem"), config.dir.join("certs/demo-as-ca-key.pem"))
}

/// Creates the demo AS's CA (certificate + 0600 key) when TLS is on and it is missing, so
/// routes can name `trust = ["certs/demo-as-ca.pem"]`. Returns true when it was created.
pub fn ensure_demo_as_ca(config: &Config) -> Result<bool, ProvisionError> {
    if !config.demo_as.as_ref().is_some_and(|d| d.tls) {
        return Ok(false);
    }
    let (cert, key) = demo_as_ca_paths(config);
    if cert.exists() && key.exists() {
        return Ok(false);
    }
    let what = "demo AS CA";
    let ca = crate::pki::generate_ca("tokenrelay demo AS CA")
        .map_err(|e| ProvisionError::Generate { what: what.into(), reason: e.to_string() })?;
    let _ = std::fs::remove_file(&key);
    write_private(&key, ca.key_pem.as_bytes()).map_err(write_error(what, &key))?;
    std::fs::write(&cert, ca.cert_pem.as_bytes()).map_err(write_error(what, &cert))?;
    tracing::info!(file = %cert.display(), "created the demo AS CA (add it to a route's trust to reach the demo AS over HTTPS)");
    Ok(true)
}
