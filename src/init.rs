//! `tokenrelay init`: create whatever key material the config names and is missing.
//!
//! Client signing keys and DPoP keys (PKCS#8 PEM, 0600), self-signed mTLS client
//! certificates, and the local CA. Existing files are kept unless `--force`.

use std::path::Path;

use anyhow::Context as _;

use crate::config::{self, AuthMethod};
use crate::jose::SigningKey;
use crate::keys::write_private;

fn write_public(path: &Path, pem: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, pem)
}

fn replace(path: &Path, force: bool) -> anyhow::Result<bool> {
    if !path.exists() {
        return Ok(true);
    }
    if !force {
        return Ok(false);
    }
    std::fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(true)
}

/// Creates missing files; returns a line per file made.
pub fn init(config_path: &Path, force: bool) -> anyhow::Result<Vec<String>> {
    let config = config::load(config_path)?;
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
            let key = SigningKey::generate(alg).with_context(|| format!("{what}: cannot generate a {alg} key"))?;
            write_private(&path, key.pkcs8_pem())
                .with_context(|| format!("{what}: cannot write {}", path.display()))?;
            made.push(format!("{} ({what}, {alg}, kid {})", path.display(), key.thumbprint()));
        }
        if let Some(m) = &r.mtls {
            if done.insert(m.cert.clone()) && (replace(&m.cert, force)? | (!m.key.exists() || force)) {
                let cn = r.client.as_ref().map(|c| c.id.as_str()).unwrap_or("tokenrelay-client");
                let minted = crate::pki::self_signed_client(cn, 365)?;
                if m.key.exists() {
                    std::fs::remove_file(&m.key).with_context(|| format!("cannot replace {}", m.key.display()))?;
                }
                write_private(&m.key, minted.key_pem.as_bytes())
                    .with_context(|| format!("cannot write {}", m.key.display()))?;
                write_public(&m.cert, minted.cert_pem.as_bytes())
                    .with_context(|| format!("cannot write {}", m.cert.display()))?;
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
                    std::fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?;
                }
            }
        }
        if !present || force {
            let ca = crate::ca::LocalCa::create(&config)?;
            let scope = ca.constraints().map(|c| c.describe()).unwrap_or_else(|| "any name".into());
            made.push(format!(
                "{} + {} (local CA, name-constrained to {scope}; trust it with `tokenrelay ca`)",
                config.ca_cert.display(),
                config.ca_key.display()
            ));
        }
    }
    if crate::demo_as::ensure_ca(&config).map_err(|e| anyhow::anyhow!("demo AS CA: {e}"))? {
        made.push(format!("{} (demo AS CA for [demo_as] tls = true)", crate::demo_as::ca_paths(&config).0.display()));
    }
    Ok(made)
}
