//! The snapshot: everything derived from one config version, built whole, swapped whole.
//!
//! [`Snapshot::build`] reads every key and certificate the config names and builds each
//! route's upstream client. It either succeeds completely or returns the first error; a
//! half-built snapshot is never published. Requests hold an `Arc<Snapshot>` for their whole
//! life, so a reload never changes the identity a request is signed with midway.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{AuthMethod, Config, RouteConfig, SecretSource};
use crate::jose::{Alg, SigningKey};
use crate::keys::{self, KeyFileError, KeyRef};
use crate::redact::Secret;
use crate::upstream::{self, HttpClient};

/// Why a snapshot could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error("route {route:?}: {message}")]
    Route { route: String, message: String },
}

/// The credential a route's client authentication uses.
#[derive(Debug, Clone)]
pub enum Credential {
    None,
    Secret(Secret),
    Key(Arc<SigningKey>),
}

/// One route, ready to serve.
pub struct Route {
    pub cfg: RouteConfig,
    pub credential: Credential,
    pub dpop_key: Option<Arc<SigningKey>>,
    pub client: HttpClient,
    /// `x5t#S256` of the mTLS certificate, when the route presents one.
    pub cert_thumbprint: Option<String>,
    /// The mTLS leaf certificate (DER), for `jwks` and the demo AS.
    pub cert_der: Option<Vec<u8>>,
    /// AS metadata, fetched on first need (see [`crate::discovery`]).
    pub metadata: tokio::sync::OnceCell<crate::discovery::Metadata>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route").field("name", &self.cfg.name).field("prefix", &self.cfg.prefix).finish_non_exhaustive()
    }
}

impl Route {
    /// Configured algorithms the AS does not advertise (RFC 8414 §2, RFC 9449 §5.1).
    pub fn check_algs(&self, meta: &crate::discovery::Metadata) -> Vec<String> {
        let mut out = Vec::new();
        let client_alg = match (&self.cfg.client, &self.credential) {
            (Some(c), Credential::Key(_)) => Some(c.alg),
            (Some(c), Credential::Secret(_)) if c.auth == AuthMethod::ClientSecretJwt => Some(c.alg),
            _ => None,
        };
        let supported = &meta.token_endpoint_auth_signing_alg_values_supported;
        if let Some(alg) = client_alg.filter(|a| !supported.is_empty() && !supported.iter().any(|s| s == a.as_str())) {
            out.push(format!(
                "client.alg {alg} is not in the AS's token_endpoint_auth_signing_alg_values_supported {supported:?}"
            ));
        }
        let dpop_supported = &meta.dpop_signing_alg_values_supported;
        if let Some(key) = self.dpop_key.as_ref() {
            let alg = key.alg();
            if !dpop_supported.is_empty() && !dpop_supported.iter().any(|s| s == alg.as_str()) {
                out.push(format!(
                    "dpop.alg {alg} is not in the AS's dpop_signing_alg_values_supported {dpop_supported:?}"
                ));
            }
        }
        out
    }

    /// The AS metadata, when the route has an issuer and needs it (mTLS aliases, or
    /// endpoints not configured). Fetched once per snapshot; failures are logged and retried.
    pub async fn metadata(&self) -> Option<&crate::discovery::Metadata> {
        self.cfg.issuer.as_ref()?;
        if self.cfg.endpoints_configured && self.cfg.mtls.is_none() {
            return None;
        }
        let fetch = || async {
            let meta = crate::discovery::fetch(self).await?;
            for warning in self.check_algs(&meta) {
                tracing::warn!(route = %self.cfg.name, "{warning}");
            }
            Ok::<_, String>(meta)
        };
        match self.metadata.get_or_try_init(fetch).await {
            Ok(meta) => Some(meta),
            Err(e) => {
                tracing::warn!(route = %self.cfg.name, "AS discovery failed; using the configured upstream: {e}");
                None
            }
        }
    }

    /// Does this route sign requests (so must never forward them unsigned)?
    pub fn signs(&self) -> bool {
        self.cfg.client.as_ref().is_some_and(|c| c.auth != AuthMethod::None) || self.dpop_key.is_some()
    }
}

/// Options for building a snapshot.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Create key files marked `create = true` when missing (not in `check`).
    pub create_missing: bool,
    /// Key files the running config already loaded: never re-created, even with
    /// `create = true`. A vanished DPoP key must not be silently replaced: refresh tokens
    /// and bound tokens depend on it (RFC 9449 §5); the reload is refused instead.
    pub never_create: Vec<PathBuf>,
}

/// Everything derived from one config version.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub routes: Vec<Arc<Route>>,
    pub warnings: Vec<String>,
}

impl Snapshot {
    /// Builds a complete snapshot or fails with the first problem found.
    pub fn build(config: Config, opts: BuildOptions) -> Result<Snapshot, BuildError> {
        let mut warnings = Vec::new();
        // Routes naming the same key file share one loaded key (a DPoP-bound token from the
        // AS route must verify on the API route).
        let mut key_cache: HashMap<(PathBuf, Alg), Arc<SigningKey>> = HashMap::new();
        // A file that any route marks `create = true` is created whichever route loads it first.
        let creatable: std::collections::HashSet<PathBuf> = config
            .routes
            .iter()
            .flat_map(|r| {
                let client = r.client.as_ref().filter(|c| c.create).and_then(|c| c.key.clone());
                let dpop = r.dpop.as_ref().filter(|d| d.create).map(|d| d.key.clone());
                client.into_iter().chain(dpop)
            })
            .collect();
        let mut load =
            |route: &str, field: &str, path: &PathBuf, alg: Alg, create: bool, warnings: &mut Vec<String>| {
                if let Some(k) = key_cache.get(&(path.clone(), alg)) {
                    return Ok::<_, KeyFileError>(k.clone());
                }
                let at = KeyRef { route, field, path };
                let create =
                    (create || creatable.contains(path)) && opts.create_missing && !opts.never_create.contains(path);
                let (key, w) = keys::load_signing_key(&at, alg, create)?;
                warnings.extend(w);
                key_cache.insert((path.clone(), alg), key.clone());
                Ok(key)
            };
        let mut routes = Vec::new();
        for rc in &config.routes {
            let name = rc.name.as_str();
            let credential = match &rc.client {
                None => Credential::None,
                Some(c) => match c.auth {
                    AuthMethod::PrivateKeyJwt => {
                        let path = c.key.clone().ok_or_else(|| BuildError::Route {
                            route: name.into(),
                            message: "client.key is required for private_key_jwt".into(),
                        })?;
                        Credential::Key(load(name, "client.key", &path, c.alg, c.create, &mut warnings)?)
                    }
                    AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost | AuthMethod::ClientSecretJwt => {
                        let secret = resolve_secret(name, c.secret.as_ref())?;
                        // RFC 7518 §3.2: an HS256 key must be at least 256 bits.
                        if c.auth == AuthMethod::ClientSecretJwt && secret.expose().len() < 32 {
                            return Err(BuildError::Route {
                                route: name.into(),
                                message: format!(
                                    "client.secret: client_secret_jwt (HS256) needs a secret of at least 32 bytes \
                                     (RFC 7518 §3.2); this one has {}",
                                    secret.expose().len()
                                ),
                            });
                        }
                        Credential::Secret(secret)
                    }
                    AuthMethod::None | AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth => {
                        Credential::None
                    }
                },
            };
            let dpop_key = match &rc.dpop {
                Some(d) => Some(load(name, "dpop.key", &d.key, d.alg, d.create, &mut warnings)?),
                None => None,
            };
            let identity = match &rc.mtls {
                Some(m) => Some(crate::pki::load_identity(name, m, &mut warnings)?),
                None => None,
            };
            let cert_der = identity.as_ref().map(|id| id.chain[0].to_vec());
            let cert_thumbprint = cert_der.as_deref().map(crate::jose::sha256_b64url);
            let tls = upstream::tls_config(&rc.trust, identity.map(|id| (id.chain, id.key)))
                .map_err(|e| BuildError::Route { route: name.into(), message: e.to_string() })?;
            routes.push(Arc::new(Route {
                cfg: rc.clone(),
                credential,
                dpop_key,
                client: upstream::client(tls),
                cert_thumbprint,
                cert_der,
                metadata: tokio::sync::OnceCell::new(),
            }));
        }
        Ok(Snapshot { config: Arc::new(config), routes, warnings })
    }

    /// The route whose prefix claims `path`, and the rest of the path (always starts with `/`).
    pub fn route_for<'a>(&self, path: &'a str) -> Option<(&Arc<Route>, &'a str)> {
        self.routes.iter().find_map(|r| {
            let rest = path.strip_prefix(r.cfg.prefix.as_str())?;
            if rest.is_empty() {
                Some((r, "/"))
            } else if rest.starts_with('/') {
                Some((r, rest))
            } else {
                None
            }
        })
    }

    /// The configured prefixes, for 404 messages.
    pub fn prefixes(&self) -> Vec<String> {
        self.routes.iter().map(|r| r.cfg.prefix.clone()).collect()
    }
}

fn resolve_secret(route: &str, source: Option<&SecretSource>) -> Result<Secret, BuildError> {
    match source {
        Some(SecretSource::Inline(s)) => Ok(s.clone()),
        Some(SecretSource::Env(var)) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Secret::new(v)),
            _ => Err(BuildError::Route {
                route: route.into(),
                message: format!("client.secret_env: environment variable {var} is not set (export {var}=...)"),
            }),
        },
        None => Err(BuildError::Route { route: route.into(), message: "client.secret is required".into() }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn configured_algs_are_checked_against_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(
            &path,
            "[routes.a]\nprefix = \"/a\"\nupstream = \"https://as.example\"\n[routes.a.client]\nid = \"c\"\n\
             auth = \"private_key_jwt\"\nkey = \"k.pem\"\nalg = \"EdDSA\"\ncreate = true\n\
             [routes.a.dpop]\nkey = \"d.pem\"\ncreate = true\n",
        )
        .unwrap();
        let cfg = crate::config::load(&path).unwrap();
        let snap = Snapshot::build(cfg, BuildOptions { create_missing: true, ..Default::default() }).unwrap();
        let meta: crate::discovery::Metadata = serde_json::from_str(
            r#"{"issuer":"https://as.example","token_endpoint_auth_signing_alg_values_supported":["ES256","PS256"],
                "dpop_signing_alg_values_supported":["ES256"]}"#,
        )
        .unwrap();
        let warnings = snap.routes[0].check_algs(&meta);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("client.alg EdDSA"), "{warnings:?}");
    }
}
