//! Creating the key material a config names and is missing: client and DPoP signing keys,
//! self-signed mTLS client certificates, the local CA, the demo AS's CA. Used by
//! `tokenrelay init`; the demo AS CA is also made in memory by every load that may create
//! files (routes may trust it) and written once that config is accepted.
//!
//! Private keys are written 0600 (see [`crate::keys::write_private`]). Existing files are
//! kept unless the caller names their [`Part`] to replace.

use std::path::{Path, PathBuf};

use crate::config::{AuthMethod, Config};
use crate::jose::SigningKey;
use crate::keys::{write_private, NewFile};

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

/// A kind of key material, as `tokenrelay init --only` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// `private_key_jwt` client keys (and the certificate `client.cert` names for them).
    Client,
    /// DPoP keys.
    Dpop,
    /// mTLS client certificates and their keys.
    Mtls,
    /// The local CA.
    Ca,
}

impl Part {
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Client => "client",
            Part::Dpop => "dpop",
            Part::Mtls => "mtls",
            Part::Ca => "ca",
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    /// A signing key, and the self-signed certificate of it `client.cert` names.
    Key {
        path: PathBuf,
        alg: crate::jose::Alg,
        cert: Option<(PathBuf, String)>,
    },
    Mtls {
        cert: PathBuf,
        key: PathBuf,
        cn: String,
    },
    Ca,
}

/// One piece of key material a config names (files shared by several routes appear once).
#[derive(Debug, Clone)]
pub struct Item {
    pub part: Part,
    /// `route "demo" dpop.key`, `local CA`, ...
    pub what: String,
    kind: Kind,
    paths: Vec<PathBuf>,
}

impl Item {
    /// The files it consists of.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Whether any of its files exists (replacing it would then destroy something).
    pub fn present(&self) -> bool {
        self.paths.iter().any(|p| p.exists())
    }

    /// What replacing it breaks, for the confirmation prompt.
    pub fn consequence(&self) -> &'static str {
        match self.part {
            Part::Client => "the AS knows the old public key: register the new one (`tokenrelay jwks`)",
            Part::Dpop => "tokens and refresh tokens bound to the old key stop working (RFC 9449 §5)",
            Part::Mtls => "the AS knows the old certificate; tokens bound to it (cnf.x5t#S256) stop working",
            Part::Ca => "everything that trusts the old CA must trust the new one (`eval \"$(tokenrelay ca)\"` again, Java trust stores)",
        }
    }
}

/// Every piece of key material `config` names that tokenrelay can create: `private_key_jwt`
/// client keys, DPoP keys, mTLS client certificates, and the local CA when a listener uses
/// it or `[proxy] ca_cert` / `ca_key` name it.
pub fn items(config: &Config) -> Vec<Item> {
    let mut out: Vec<Item> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for r in &config.routes {
        if let Some(c) = r.client.as_ref().filter(|c| c.auth == AuthMethod::PrivateKeyJwt) {
            if let Some(k) = &c.key {
                if seen.insert(k.clone()) {
                    let cert = c.cert.clone().map(|p| (p, c.id.clone()));
                    let mut paths = vec![k.clone()];
                    paths.extend(cert.iter().map(|(p, _)| p.clone()));
                    out.push(Item {
                        part: Part::Client,
                        what: format!("route {:?} client.key", r.name),
                        kind: Kind::Key { path: k.clone(), alg: c.alg, cert },
                        paths,
                    });
                }
            }
        }
        if let Some(d) = &r.dpop {
            if seen.insert(d.key.clone()) {
                out.push(Item {
                    part: Part::Dpop,
                    what: format!("route {:?} dpop.key", r.name),
                    kind: Kind::Key { path: d.key.clone(), alg: d.alg, cert: None },
                    paths: vec![d.key.clone()],
                });
            }
        }
        if let Some(m) = &r.mtls {
            if seen.insert(m.cert.clone()) {
                let cn = r.client.as_ref().map(|c| c.id.clone()).unwrap_or_else(|| "tokenrelay-client".into());
                out.push(Item {
                    part: Part::Mtls,
                    what: format!("route {:?} mtls", r.name),
                    kind: Kind::Mtls { cert: m.cert.clone(), key: m.key.clone(), cn },
                    paths: vec![m.cert.clone(), m.key.clone()],
                });
            }
        }
    }
    if config.listen_tls.is_some() || config.forward.is_some() || config.ca_named {
        out.push(Item {
            part: Part::Ca,
            what: "local CA".into(),
            kind: Kind::Ca,
            paths: vec![config.ca_cert.clone(), config.ca_key.clone()],
        });
    }
    out
}

fn remove(what: &str, path: &Path) -> Result<(), ProvisionError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(write_error(what, path)(e)),
        _ => Ok(()),
    }
}

fn generate(what: &str, e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::Generate { what: what.to_string(), reason: e.to_string() }
}

/// Creates what is missing of `item`, or all of it anew when `replace`; returns a line per
/// file made (none when everything was there).
fn make(config: &Config, item: &Item, replace: bool) -> Result<Vec<String>, ProvisionError> {
    let what = item.what.as_str();
    if replace {
        for p in &item.paths {
            remove(what, p)?;
        }
    }
    let mut made = Vec::new();
    match &item.kind {
        Kind::Key { path, alg, cert } => {
            let key = if path.exists() {
                None
            } else {
                let key = SigningKey::generate(*alg).map_err(|e| generate(&format!("{what} ({alg})"), e))?;
                write_private(path, key.pkcs8_pem().expose()).map_err(write_error(what, path))?;
                made.push(format!("{} ({what}, {alg}, kid {})", path.display(), key.thumbprint()));
                Some(key)
            };
            if let Some((cert_path, cn)) = cert.as_ref().filter(|(p, _)| !p.exists()) {
                let key = match key {
                    Some(k) => k,
                    None => {
                        let bytes = crate::config::file::read(path, crate::config::file::SMALL_CAP)
                            .map(crate::redact::SecretBytes::new)
                            .map_err(|e| generate(what, format!("cannot read {}: {e}", path.display())))?;
                        SigningKey::load(bytes.expose(), *alg).map_err(|e| generate(what, e))?
                    }
                };
                let pem = key.pkcs8_pem();
                let pem = std::str::from_utf8(pem.expose()).map_err(|e| generate(what, e))?;
                let cert_pem = crate::pki::self_signed_for_key(pem, cn, 365).map_err(|e| generate(what, e))?;
                write_public(cert_path, cert_pem.as_bytes()).map_err(write_error(what, cert_path))?;
                made.push(format!(
                    "{} ({what} certificate: self-signed, CN={cn}, 365 days; upload it to the AS)",
                    cert_path.display()
                ));
            }
        }
        Kind::Mtls { cert, key, cn } => {
            if !cert.exists() || !key.exists() {
                let minted = crate::pki::self_signed_client(cn, 365).map_err(|e| generate(what, e))?;
                remove(what, key)?;
                write_private(key, minted.key_pem.expose().as_bytes()).map_err(write_error(what, key))?;
                write_public(cert, minted.cert_pem.as_bytes()).map_err(write_error(what, cert))?;
                made.push(format!(
                    "{} + {} ({what}: self-signed client certificate, CN={cn}, 365 days)",
                    cert.display(),
                    key.display()
                ));
            }
        }
        Kind::Ca => {
            // Both present: kept. One of the two: load_or_create says which one to delete.
            if !(config.ca_cert.exists() && config.ca_key.exists()) {
                let (ca, _) = crate::local_ca::LocalCa::load_or_create(config)?;
                let scope = ca.constraints().map(|c| c.describe()).unwrap_or_else(|| "any name".into());
                made.push(format!(
                    "{} + {} (local CA, name-constrained to {scope}; trust it with `tokenrelay ca`)",
                    config.ca_cert.display(),
                    config.ca_key.display()
                ));
            }
        }
    }
    Ok(made)
}

/// Creates every missing file `config` names and replaces the existing ones of the `replace`
/// parts; returns a line per file made. Replacing is the caller's decision to confirm:
/// a new DPoP key or CA breaks what was bound to the old one.
pub fn init(config: &Config, replace: &[Part]) -> Result<Vec<String>, ProvisionError> {
    let mut made = Vec::new();
    for item in items(config) {
        made.extend(make(config, &item, replace.contains(&item.part))?);
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
    let files = new_demo_as_ca(config)?;
    for f in &files {
        f.write().map_err(|e| ProvisionError::Write { what: e.what, path: e.path, source: e.source })?;
    }
    Ok(!files.is_empty())
}

/// The demo AS's CA when TLS is on and it is missing, made in memory (key first, then the
/// certificate); empty otherwise. Nothing is written: see [`NewFile::write`].
pub fn new_demo_as_ca(config: &Config) -> Result<Vec<NewFile>, ProvisionError> {
    if !config.demo_as.as_ref().is_some_and(|d| d.tls) {
        return Ok(Vec::new());
    }
    let (cert, key) = demo_as_ca_paths(config);
    if cert.exists() && key.exists() {
        return Ok(Vec::new());
    }
    let what = "demo AS CA";
    let ca = crate::pki::generate_ca("tokenrelay demo AS CA")
        .map_err(|e| ProvisionError::Generate { what: what.into(), reason: e.to_string() })?;
    Ok(vec![
        NewFile::private(&key, "demo AS CA key", ca.key_pem.expose().as_bytes().to_vec()).replacing(),
        NewFile::public(
            &cert,
            "demo AS CA (add it to a route's trust to reach the demo AS over HTTPS)",
            ca.cert_pem.into_bytes(),
        )
        .replacing(),
    ])
}
