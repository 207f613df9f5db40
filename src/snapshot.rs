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
}

/// Loads the config at `path` and builds its snapshot: the one validation `run`, `check` and
/// every reload share. Blocking (reads files): call it off the async runtime's threads.
pub fn load(path: &std::path::Path, opts: BuildOptions) -> Result<Snapshot, LoadError> {
    let config = crate::config::load(path)?;
    if opts.create_missing {
        // Routes may trust the demo AS's CA: it must exist before their TLS clients are built.
        crate::provision::ensure_demo_as_ca(&config).map_err(LoadError::DemoAsCa)?;
    }
    Ok(Snapshot::build(config, opts)?)
}

/// Why a snapshot could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error("route {route:?}: {message}")]
    Route { route: String, message: String },
}

/// Where a signed endpoint's URL came from (what `tokenrelay check` shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointSource {
    /// `endpoints` in the config.
    Config,
    /// `/token`, when neither config nor metadata names endpoints.
    Default,
    /// The AS metadata member that lists it.
    Metadata(&'static str),
    /// An RFC 8705 §5 `mtls_endpoint_aliases` entry.
    Alias,
}

impl std::fmt::Display for EndpointSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointSource::Config => f.write_str("config"),
            EndpointSource::Default => f.write_str("default"),
            EndpointSource::Metadata(member) => write!(f, "metadata {member}"),
            EndpointSource::Alias => f.write_str("mtls alias"),
        }
    }
}

/// One endpoint a route authenticates the client on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEndpoint {
    pub url: String,
    pub source: EndpointSource,
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
    /// `x5t#S256` of `client.cert`, sent in the assertion header (RFC 7515 §4.1.8).
    pub assertion_x5t: Option<String>,
    /// AS metadata discovery, when the route names an `issuer` (see [`crate::discovery`]).
    pub discovery: Option<Arc<crate::discovery::Discovery>>,
    /// The configured token endpoint URL ([`RouteConfig::token_endpoint_url`]), built once.
    pub token_endpoint: String,
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

    /// The endpoints this route authenticates the client on, as upstream URLs, and where each
    /// came from: the configured `endpoints`; else, when metadata is in use, every
    /// client-authenticated endpoint it lists (token, PAR, introspection, revocation, device
    /// authorization, CIBA); else `/token`. Plus their RFC 8705 §5 mTLS aliases when the
    /// route presents a certificate (https aliases only: a certificate-bound call never goes
    /// out in clear).
    pub fn signed_endpoints(&self, meta: Option<&crate::discovery::Metadata>) -> Vec<SignedEndpoint> {
        let cfg = &self.cfg;
        let mut out: Vec<SignedEndpoint> = match meta {
            Some(meta) if !cfg.endpoints_configured => meta
                .client_auth_endpoints()
                .into_iter()
                .map(|(member, url)| SignedEndpoint { url: url.to_string(), source: EndpointSource::Metadata(member) })
                .collect(),
            _ => {
                let source = if cfg.endpoints_configured { EndpointSource::Config } else { EndpointSource::Default };
                cfg.endpoints.iter().map(|e| SignedEndpoint { url: cfg.upstream.url(e), source }).collect()
            }
        };
        if let (Some(meta), Some(_)) = (meta, &cfg.mtls) {
            let aliases: Vec<SignedEndpoint> = out
                .iter()
                .filter_map(|e| meta.mtls_alias(&e.url))
                .filter(|alias| alias.starts_with("https://"))
                .map(|alias| SignedEndpoint { url: alias.to_string(), source: EndpointSource::Alias })
                .collect();
            out.extend(aliases);
        }
        out
    }

    /// Is `url` one of [`Route::signed_endpoints`]? Without building the list when the
    /// answer is plain (every request asks this).
    pub fn is_signed_endpoint(&self, url: &str, meta: Option<&crate::discovery::Metadata>) -> bool {
        let cfg = &self.cfg;
        let direct = match meta {
            Some(meta) if !cfg.endpoints_configured => meta.client_auth_endpoints().iter().any(|(_, u)| *u == url),
            _ => cfg.endpoints.iter().any(|e| cfg.upstream.is_url_of(e, url)),
        };
        direct || (meta.is_some() && cfg.mtls.is_some() && self.signed_endpoints(meta).iter().any(|e| e.url == url))
    }

    /// The mTLS alias to call instead of `url` (RFC 8705 §5), when the route presents a
    /// certificate and the metadata has an https alias for it.
    pub fn mtls_alias<'m>(&self, url: &str, meta: Option<&'m crate::discovery::Metadata>) -> Option<&'m str> {
        self.cfg.mtls.as_ref()?;
        meta?.mtls_alias(url).filter(|alias| alias.starts_with("https://"))
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
        let mut load = |route: &str,
                        field: &str,
                        path: &PathBuf,
                        alg: Alg,
                        create: bool,
                        warnings: &mut Vec<String>| {
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
                Some(m) => Some(keys::load_identity(name, m, &mut warnings)?),
                None => None,
            };
            let cert_der = identity.as_ref().map(|id| id.leaf.to_vec());
            let cert_thumbprint = cert_der.as_deref().map(crate::jose::sha256_b64url);
            let tls = upstream::tls_config(&rc.trust, identity.map(|id| (id.chain(), id.key)))
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
            };
            route.discovery = rc.issuer.as_ref().map(|issuer| {
                crate::discovery::Discovery::new(crate::discovery::Job {
                    route: rc.name.clone(),
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
        Ok(Snapshot { config: Arc::new(config), routes, warnings })
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
    if cfg.rewrite_metadata {
        for (member, url) in meta.client_auth_endpoints() {
            if cfg.proxy_path(url).is_none() {
                out.push(format!(
                    "rewrite_metadata: {member} {url} is outside the upstream {}; the rewritten metadata leaves it as published (tokenrelay does not sign it)",
                    cfg.upstream.url("")
                ));
            }
        }
    }
    out
}

/// Reads `client.cert`, checks it holds `key`'s public key, and returns its `x5t#S256`.
fn assertion_cert_thumbprint(route: &str, path: &std::path::Path, key: &SigningKey) -> Result<String, BuildError> {
    use rustls::pki_types::pem::PemObject as _;
    let at = KeyRef { route, field: "client.cert", path };
    let bytes = keys::read(&at)?;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&bytes)
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
