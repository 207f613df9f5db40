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
pub use crate::keys::Credential;
use crate::keys::{self, KeyFileError, KeyRef};
use crate::redact::Secret;
use crate::upstream::{self, HttpClient};

/// Why a config could not be loaded into a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot create the demo AS CA: {0}")]
    DemoAsCa(#[source] crate::provision::ProvisionError),
    #[error(transparent)]
    Create(#[from] keys::CreateError),
}

/// Loads the config at `path` and builds its snapshot: the one validation `run`, `check` and
/// every reload share. Blocking (reads files): call it off the async runtime's threads.
/// Writes nothing: files it may create are in [`Snapshot::new_files`].
pub fn load(path: &std::path::Path, opts: BuildOptions) -> Result<Snapshot, LoadError> {
    let config = crate::config::load(path)?;
    // Routes may trust the demo AS's CA: it is made (in memory) before their TLS clients.
    let new_files = match opts.create_missing {
        true => crate::provision::new_demo_as_ca(&config).map_err(LoadError::DemoAsCa)?,
        false => Vec::new(),
    };
    let config_path = config.path.clone();
    Ok(Snapshot::build_with(config, opts, new_files).map_err(|e| match e {
        BuildError::Key(k) => BuildError::Key(k.locate_in(&config_path)),
        other => other,
    })?)
}

/// Why a snapshot could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error("route {route:?}: {message}")]
    Route { route: String, message: String },
}

pub use crate::endpoints::{EndpointSource, Endpoints, SignedEndpoint};

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
    /// `x5t#S256` of `client.cert`, sent in the assertion header (RFC 7515 §4.1.8).
    pub assertion_x5t: Option<String>,
    /// AS metadata discovery, when the route names an `issuer` (see [`crate::discovery`]).
    pub discovery: Option<Arc<crate::discovery::Discovery>>,
    /// The configured token endpoint URL ([`RouteConfig::token_endpoint_url`]), built once.
    pub token_endpoint: String,
    /// The signed endpoints without metadata (configured or `/token`), built once.
    configured: Arc<Endpoints>,
    /// The signed endpoints for the last metadata document seen (discovery replaces the
    /// document rarely; every request asks).
    by_meta: std::sync::Mutex<Option<(Arc<crate::discovery::Metadata>, Arc<Endpoints>)>>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route").field("name", &self.cfg.name).field("prefix", &self.cfg.prefix).finish_non_exhaustive()
    }
}

impl Route {
    /// Warnings about `meta` for this route: what it signs with but the AS does not
    /// advertise, and (with `rewrite_metadata`) endpoints on another origin than the upstream,
    /// which the rewritten document leaves as published.
    pub fn metadata_warnings(&self, meta: &crate::discovery::Metadata) -> Vec<String> {
        metadata_warnings(&self.cfg, &self.expect(), meta)
    }

    /// What this route signs with, for checking against the AS's advertised algorithms.
    pub fn expect(&self) -> crate::discovery::Expect {
        let client_alg = match (&self.cfg.client, &self.credential) {
            (Some(c), Credential::Key(_)) => Some(c.alg),
            (Some(c), Credential::Secret(_)) if c.auth == AuthMethod::ClientSecretJwt => Some(c.alg),
            _ => None,
        };
        crate::discovery::Expect {
            auth_method: self.cfg.client.as_ref().map(|c| c.auth.as_str()),
            client_alg,
            dpop_alg: self.dpop_key.as_ref().map(|k| k.alg()),
        }
    }

    /// The AS metadata to use for this request (see [`crate::discovery`]): `Ok(None)` when the
    /// route has no issuer or discovery failed, `Err` on an issuer mismatch.
    pub async fn metadata(
        &self,
    ) -> Result<Option<Arc<crate::discovery::Metadata>>, Arc<crate::discovery::DiscoveryError>> {
        match &self.discovery {
            Some(d) => d.current(self.cfg.timeout).await,
            None => Ok(None),
        }
    }

    /// The endpoints this route authenticates the client on, keyed by the path the app calls
    /// (see [`crate::endpoints`]). Built afresh: for `check` and other one-off callers.
    pub fn signed_endpoints(&self, meta: Option<&crate::discovery::Metadata>) -> Endpoints {
        Endpoints::build(&self.cfg, meta)
    }

    /// [`Route::signed_endpoints`] for the request path: built once per metadata document.
    pub fn endpoints(&self, meta: Option<&Arc<crate::discovery::Metadata>>) -> Arc<Endpoints> {
        let Some(meta) = meta else { return self.configured.clone() };
        let mut cached = self.by_meta.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((m, table)) = cached.as_ref() {
            if Arc::ptr_eq(m, meta) {
                return table.clone();
            }
        }
        let table = Arc::new(Endpoints::build(&self.cfg, Some(meta)));
        *cached = Some((meta.clone(), table.clone()));
        table
    }

    /// The public keys to register at the AS for this route's client authentication (RFC 7517):
    /// the client key (`kid`, `use`, `alg`), and for mTLS with a self-signed certificate the
    /// certificate's key with `x5c` (RFC 8705 §2.2). Never the DPoP key.
    pub fn client_jwks(&self) -> Vec<serde_json::Value> {
        use crate::config::AuthMethod;
        let mut keys = Vec::new();
        if let Credential::Key(k) = &self.credential {
            let mut jwk = k.public_jwk().clone();
            let kid =
                self.cfg.client.as_ref().and_then(|c| c.kid.clone()).unwrap_or_else(|| k.thumbprint().to_string());
            jwk.insert("kid".into(), kid.into());
            jwk.insert("use".into(), "sig".into());
            jwk.insert("alg".into(), k.alg().as_str().into());
            keys.push(serde_json::Value::Object(jwk));
        }
        let mtls_auth = self
            .cfg
            .client
            .as_ref()
            .is_some_and(|c| matches!(c.auth, AuthMethod::SelfSignedTlsClientAuth | AuthMethod::TlsClientAuth));
        if let Some(der) = self.cert_der.as_deref().filter(|d| mtls_auth && crate::pki::is_self_signed(d)) {
            use base64::Engine as _;
            let mut jwk = crate::pki::public_jwk_of_cert(der).unwrap_or_default();
            jwk.insert("x5c".into(), serde_json::json!([base64::engine::general_purpose::STANDARD.encode(der)]));
            jwk.insert("use".into(), "sig".into());
            keys.push(serde_json::Value::Object(jwk));
        }
        keys
    }

    /// Does this route sign requests (so must never forward them unsigned)?
    pub fn signs(&self) -> bool {
        self.cfg.client.as_ref().is_some_and(|c| c.auth != AuthMethod::None) || self.dpop_key.is_some()
    }
}

/// Options for building a snapshot.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Make key files marked `create = true` (and the demo AS's CA) when missing (not in
    /// `check`), in memory: [`Snapshot::create_files`] writes them once the config is accepted.
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
    /// Files this config creates (`create = true` keys, the demo AS's CA) that building it
    /// made in memory: not on disk until [`Snapshot::create_files`], so a config that is
    /// refused leaves nothing behind.
    pub new_files: Vec<keys::NewFile>,
    /// The config version this snapshot is (1 at start, +1 per applied reload; the number
    /// `GET /.tokenrelay/status` shows and every exchange record carries).
    pub version: u64,
}

impl Snapshot {
    /// Builds a complete snapshot or fails with the first problem found. Writes nothing.
    pub fn build(config: Config, opts: BuildOptions) -> Result<Snapshot, BuildError> {
        Snapshot::build_with(config, opts, Vec::new())
    }

    /// Writes [`Snapshot::new_files`]: call once the config is accepted (start, an accepted
    /// reload), before the snapshot is published.
    pub fn create_files(&mut self) -> Result<(), keys::CreateError> {
        for f in std::mem::take(&mut self.new_files) {
            f.write()?;
        }
        Ok(())
    }

    /// [`Snapshot::build`], with files already made in memory (trust files may name them).
    fn build_with(
        config: Config,
        opts: BuildOptions,
        mut new_files: Vec<keys::NewFile>,
    ) -> Result<Snapshot, BuildError> {
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
        let mut load = |route: &str,
                        field: &str,
                        path: &PathBuf,
                        alg: Alg,
                        create: bool,
                        warnings: &mut Vec<String>,
                        new_files: &mut Vec<keys::NewFile>| {
            if let Some(k) = key_cache.get(&(path.clone(), alg)) {
                return Ok::<_, KeyFileError>(k.clone());
            }
            let at = KeyRef { route, field, path };
            let marked = create || creatable.contains(path);
            let create = marked && opts.create_missing && !opts.never_create.contains(path);
            if marked && !create && !opts.create_missing && !path.exists() {
                // `check`: the file is missing, but `run` would create it.
                return Err(at.error(
                        "not created yet: `tokenrelay run` creates it (create = true), or create it now with `tokenrelay init`",
                    ));
            }
            let key = if let Some(made) = new_files.iter().find(|f| f.path == *path) {
                // Another route named the same new file with another alg: the same error as
                // loading it from disk would give.
                Arc::new(SigningKey::load(made.contents(), alg).map_err(|e| at.error(e.to_string()))?)
            } else if create && !path.exists() {
                let (key, file) = keys::new_signing_key(&at, alg)?;
                new_files.push(file);
                key
            } else {
                let (key, w) = keys::load_signing_key(&at, alg)?;
                warnings.extend(w);
                key
            };
            key_cache.insert((path.clone(), alg), key.clone());
            Ok(key)
        };
        let mut routes = Vec::new();
        for rc in &config.routes {
            let name = rc.name.as_str();
            let credential = match &rc.client {
                None => Credential::None,
                Some(c) => match c.auth {
                    AuthMethod::PrivateKeyJwt if c.assertion.is_some() => match &c.assertion {
                        Some(source) => Credential::Assertion(Arc::new(crate::assertion::ExternalAssertion::new(
                            name,
                            source.clone(),
                        ))),
                        None => Credential::None,
                    },
                    AuthMethod::PrivateKeyJwt => {
                        let path = c.key.clone().ok_or_else(|| BuildError::Route {
                            route: name.into(),
                            message: "client.key is required for private_key_jwt".into(),
                        })?;
                        Credential::Key(load(
                            name,
                            "client.key",
                            &path,
                            c.alg,
                            c.create,
                            &mut warnings,
                            &mut new_files,
                        )?)
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
                Some(d) => Some(load(name, "dpop.key", &d.key, d.alg, d.create, &mut warnings, &mut new_files)?),
                None => None,
            };
            let identity = match &rc.mtls {
                Some(m) => Some(keys::load_identity(name, m, &mut warnings)?),
                None => None,
            };
            let cert_der = identity.as_ref().map(|id| id.leaf.to_vec());
            let cert_thumbprint = cert_der.as_deref().map(crate::jose::sha256_b64url);
            let made = |path: &std::path::Path| new_files.iter().find(|f| f.path == path);
            let read = |path: &std::path::Path| match made(path) {
                Some(f) => upstream::parse_certs(f.contents()),
                None => upstream::read_certs(path),
            };
            let tls = upstream::tls_config_with(&rc.trust, identity.map(|id| (id.chain(), id.key)), read)
                .map_err(|e| BuildError::Route { route: name.into(), message: e.to_string() })?;
            let assertion_x5t = match (&rc.client, &credential) {
                (Some(c), Credential::Key(key)) => match &c.cert {
                    Some(path) => Some(assertion_cert_thumbprint(name, path, key)?),
                    None => None,
                },
                _ => None,
            };
            let client = upstream::client(tls);
            let mut route = Route {
                cfg: rc.clone(),
                credential,
                dpop_key,
                client: client.clone(),
                cert_thumbprint,
                cert_der,
                assertion_x5t,
                discovery: None,
                token_endpoint: rc.token_endpoint_url(),
                configured: Arc::new(Endpoints::build(rc, None)),
                by_meta: std::sync::Mutex::new(None),
            };
            route.discovery = rc.issuer.as_ref().map(|issuer| {
                crate::discovery::Discovery::new(crate::discovery::Job {
                    route: rc.name.clone(),
                    urls: upstream::RouteUrls::new(
                        &rc.name,
                        rc.upstream.url(""),
                        rc.issuer.clone(),
                        !rc.trust.is_empty(),
                    ),
                    issuer: issuer.clone(),
                    client,
                    timeout: rc.timeout,
                    check: {
                        let (cfg, expect) = (rc.clone(), route.expect());
                        Arc::new(move |meta| metadata_warnings(&cfg, &expect, meta))
                    },
                })
            });
            routes.push(Arc::new(route));
        }
        Ok(Snapshot { config: Arc::new(config), routes, warnings, new_files, version: 1 })
    }

    /// Starts AS discovery in the background for every route with an `issuer` (call once the
    /// snapshot is published, from a Tokio runtime). Listeners do not wait for it.
    pub fn start_discovery(&self) {
        for d in self.routes.iter().filter_map(|r| r.discovery.as_ref()) {
            d.start();
        }
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

fn metadata_warnings(
    cfg: &RouteConfig,
    expect: &crate::discovery::Expect,
    meta: &crate::discovery::Metadata,
) -> Vec<String> {
    let mut out = meta.unsupported(expect);
    out.extend(Endpoints::build(cfg, Some(meta)).notes);
    out
}

/// Reads `client.cert`, checks it holds `key`'s public key, and returns its `x5t#S256`.
fn assertion_cert_thumbprint(route: &str, path: &std::path::Path, key: &SigningKey) -> Result<String, BuildError> {
    use rustls::pki_types::pem::PemObject as _;
    let at = KeyRef { route, field: "client.cert", path };
    let bytes = keys::read(&at)?;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(bytes.expose())
        .map_err(|e| at.error(format!("not a PEM certificate: {e}")))?;
    let public =
        crate::pki::public_jwk_of_cert(&der).ok_or_else(|| at.error("cannot read the certificate's public key"))?;
    if crate::jose::thumbprint(&public) != key.thumbprint() {
        return Err(at.error("the certificate does not hold client.key's public key (different key pair)").into());
    }
    Ok(crate::jose::sha256_b64url(&der))
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
