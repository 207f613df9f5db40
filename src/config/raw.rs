//! The `proxy.toml` file as written: serde structs that mirror it field for field.
//!
//! Field names are a contract other tools depend on (README "Config walkthrough"). Unknown fields are rejected
//! (`deny_unknown_fields`) so a typo is an error with a line and column, not a silent default.
//! Semantic checks (which fields go together, paths, URLs) happen in `check` (`src/config/check.rs`).

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub proxy: RawProxy,
    pub demo_as: Option<Spanned<RawDemoAs>>,
    #[serde(default)]
    pub routes: BTreeMap<String, Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub listen: Option<Spanned<String>>,
    pub listen_tls: Option<Spanned<String>>,
    pub forward: Option<Spanned<String>>,
    pub unknown_hosts: Option<UnknownHosts>,
    pub ca_cert: Option<String>,
    pub ca_key: Option<String>,
    /// Largest request body accepted, in bytes (default 65536).
    pub max_body: Option<Spanned<usize>>,
    /// Let listeners bind non-loopback addresses (warned at every start and reload).
    #[serde(default)]
    pub allow_remote: bool,
    /// Exchange records kept for the inspector (default 200, 0 = off).
    pub exchanges: Option<usize>,
    /// Concurrent connections, all listeners together (default min(512, open-file limit - 64)).
    pub max_connections: Option<Spanned<usize>>,
    /// Extra `Origin` values allowed to use the proxy (default: none; a form POST needs no CORS preflight, so other origins are refused).
    #[serde(default)]
    pub allow_origins: Vec<Spanned<String>>,
    /// Local users served besides the one running tokenrelay and root: names, uids, or `"*"`.
    #[serde(default)]
    pub allow_users: Vec<Spanned<RawUser>>,
}

/// An `allow_users` entry: a user name (or `"*"`) or a uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawUser {
    Name(String),
    Uid(i64),
}

impl<'de> Deserialize<'de> for RawUser {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawUser, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawUser;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a user name (\"alice\"), a uid (1001), or \"*\" for any local user")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawUser, E> {
                Ok(RawUser::Uid(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawUser, E> {
                Ok(RawUser::Uid(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawUser, E> {
                Ok(RawUser::Name(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnknownHosts {
    #[default]
    Tunnel,
    Refuse,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDemoAs {
    pub listen: Spanned<String>,
    /// Demand a DPoP nonce on every token request (exercises the nonce engine).
    #[serde(default)]
    pub dpop_nonce: bool,
    /// Serve HTTPS (leaf from `certs/demo-as-ca.pem`, created on first start) and request
    /// client certificates, for `tls_client_auth` / `self_signed_tls_client_auth`.
    #[serde(default)]
    pub tls: bool,
    /// The user `/authorize` signs in without a login page: the ID token's `sub`
    /// (default `"demo-user"`).
    pub user: Option<Spanned<String>>,
    /// Per client id, the redirect URIs `/authorize` accepts; a client not listed may use
    /// loopback URIs on any port (RFC 8252 §7.3).
    #[serde(default)]
    pub redirect_uris: BTreeMap<String, Vec<Spanned<String>>>,
    /// Per client id, a federated identity credential (see [`RawFederated`]).
    #[serde(default)]
    pub federated: BTreeMap<String, RawFederated>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub prefix: Spanned<String>,
    pub hosts: Option<Vec<String>>,
    /// Optional when `issuer` is set: then the issuer's origin.
    pub upstream: Option<Spanned<String>>,
    pub issuer: Option<Spanned<String>>,
    /// Vendor defaults for the client assertion (see [`Preset`]).
    pub preset: Option<Preset>,
    /// Answer `<prefix>/.well-known/openid-configuration` with the AS's metadata pointing
    /// the client-authenticated endpoints at tokenrelay.
    #[serde(default)]
    pub rewrite_metadata: bool,
    #[serde(default)]
    pub trust: Vec<String>,
    pub timeout: Option<Spanned<String>>,
    pub endpoints: Option<Vec<String>>,
    pub client: Option<Spanned<RawClient>>,
    pub dpop: Option<Spanned<RawDpop>>,
    pub mtls: Option<Spanned<RawMtls>>,
    #[serde(default)]
    pub headers: RawHeaders,
    #[serde(default)]
    pub params: RawParams,
}

/// Vendor defaults for a route's client assertion; explicit fields override them.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Keycloak,
    Okta,
    Entra,
    Auth0,
    Fapi2,
}

impl Preset {
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Keycloak => "keycloak",
            Preset::Okta => "okta",
            Preset::Entra => "entra",
            Preset::Auth0 => "auth0",
            Preset::Fapi2 => "fapi2",
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    None,
    ClientSecretBasic,
    ClientSecretPost,
    ClientSecretJwt,
    PrivateKeyJwt,
    TlsClientAuth,
    SelfSignedTlsClientAuth,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::ClientSecretJwt => "client_secret_jwt",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::TlsClientAuth => "tls_client_auth",
            AuthMethod::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub id: String,
    pub auth: AuthMethod,
    pub key: Option<String>,
    /// The certificate of `key` (PEM), for presets whose assertions carry `x5t#S256`.
    pub cert: Option<String>,
    pub secret: Option<String>,
    pub secret_env: Option<String>,
    pub alg: Option<Spanned<String>>,
    pub audience: Option<String>,
    pub lifetime: Option<Spanned<String>>,
    /// `kid` header value; default: the RFC 7638 thumbprint of the public key.
    pub kid: Option<String>,
    /// `typ` header of the assertion, e.g. `client-authentication+jwt` (rfc7523bis).
    pub typ: Option<String>,
    /// Generate `key` on first start when the file does not exist.
    #[serde(default)]
    pub create: bool,
    /// A client assertion made elsewhere (a workload identity token), sent as it is instead
    /// of one signed with `key` (RFC 7523 §2.2).
    pub assertion: Option<Spanned<RawAssertion>>,
}

/// `assertion = { file = "..." }` or `assertion = { command = ["...", ...] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAssertion {
    pub file: Option<String>,
    pub command: Option<Vec<String>>,
    /// How long `command` may run (default 10s).
    pub timeout: Option<Spanned<String>>,
}

/// `[demo_as.federated.CLIENT_ID]`: a federated identity credential, registered the way
/// Entra registers one: the external issuer, its JWKS, the expected `sub` and `aud`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFederated {
    pub issuer: String,
    /// The issuer's JWKS (a file, `{"keys": [...]}`).
    pub jwks: String,
    pub subject: String,
    /// Default `api://AzureADTokenExchange` (Entra's).
    pub audience: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDpop {
    pub key: String,
    pub alg: Option<Spanned<String>>,
    /// Generate `key` on first start when the file does not exist.
    #[serde(default)]
    pub create: bool,
    /// Upgrade `Authorization: Bearer` to `DPoP` on API calls (default true).
    pub upgrade_bearer: Option<bool>,
    /// Refuse (502) token responses whose `token_type` is not `DPoP` (default: warn only).
    #[serde(default)]
    pub require_bound: bool,
    /// `"Bearer"`: rewrite a `DPoP` answer's `token_type` for libraries that reject it.
    pub token_type: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMtls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawParams {
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}
