//! Configuration: `proxy.toml` text → [`raw::RawConfig`] (serde, as written) → checked
//! [`Config`] (this file's types; the checks are in `check.rs`, host names in [`host`]).
//!
//! "Parse, don't validate": after [`load`] succeeds every URL is split, every duration
//! parsed, every path resolved against the config file's folder, and every combination of
//! fields that cannot work has been refused with an error naming file, line, column and key.
//! Keys and certificates are *not* read here; that is [`crate::snapshot`]'s job.

mod charset;
mod check;
pub mod file;
pub mod host;
pub mod interpolate;
pub mod raw;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::jose::Alg;
pub use check::{parse, parse_with};
pub use host::{is_loopback_host, is_loopback_upstream, HostEntry};
pub use raw::{AuthMethod, Preset, UnknownHosts};

/// Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded, never set by a header rule.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Headers that frame the message or the connection: the proxy sets them, a rule cannot.
pub fn is_framing(name: &http::HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
        || [http::header::HOST, http::header::CONTENT_LENGTH, http::header::TRANSFER_ENCODING].contains(name)
}

/// Default body limit: token requests are small; 64 KiB leaves room for big assertions.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// A config error with where it is: `proxy.toml:12:1: routes.demo.client: ...`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file does not exist. `init` is the fix (the OS error is in `reason`, once).
    #[error("{}", missing_message(path, init, reason))]
    Missing { path: String, init: String, reason: String },
    /// The config file exists but cannot be read. The OS error is in `reason`, not a
    /// `source`, so `{:#}` chains print it once.
    #[error("{path}: cannot read config: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}:{line}:{column}: {key}{message}")]
    Invalid { path: String, line: usize, column: usize, key: String, message: String },
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub listen_tls: Option<SocketAddr>,
    pub forward: Option<SocketAddr>,
    pub unknown_hosts: UnknownHosts,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// `[proxy] ca_cert` or `ca_key` is set: `tokenrelay init` creates the CA even when no
    /// listener uses it yet.
    pub ca_named: bool,
    pub max_body: usize,
    pub allow_origins: Vec<String>,
    /// Exchange records kept for the inspector (`[proxy] exchanges`; 0 = off).
    pub exchanges: usize,
    /// Listeners may bind non-loopback addresses (`[proxy] allow_remote`).
    pub allow_remote: bool,
    /// `[proxy] max_connections`; `None`: the default, derived from the open-file limit.
    pub max_connections: Option<usize>,
    /// `[proxy] allow_users`: local users served besides the running one and root (names
    /// resolved at load); checked at accept by [`crate::peer::Gate`].
    pub allow_users: std::sync::Arc<crate::peer::AllowUsers>,
    pub demo_as: Option<DemoAsConfig>,
    /// Routes, longest prefix first so the most specific one matches.
    pub routes: Vec<RouteConfig>,
    /// Values `${VAR}` put into secret positions (client secrets, header and parameter
    /// values): `check` prints `[redacted]` in their place ([`interpolate`]).
    pub env_secrets: Vec<crate::redact::Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoAsConfig {
    pub listen: SocketAddr,
    pub dpop_nonce: bool,
    /// Serve HTTPS with a leaf from `certs/demo-as-ca.pem`, requesting client certificates.
    pub tls: bool,
    /// Whom `/authorize` signs in, without a login page: the ID token's `sub`.
    pub user: String,
    /// Per client id, the redirect URIs `/authorize` accepts (absolute, no fragment). A client
    /// not listed may use `http://127.0.0.1`, `http://[::1]` or `http://localhost` URIs on any
    /// port (RFC 8252 §7.3).
    pub redirect_uris: BTreeMap<String, Vec<String>>,
    /// Per client id, the federated identity credential it authenticates with.
    pub federated: BTreeMap<String, FederatedCredential>,
}

/// A federated identity credential as Entra registers one: assertions from `issuer`, signed
/// by a key of its JWKS, with this `sub` and `aud`, authenticate the client (their `iss` is
/// the external issuer, not the client id; a `jti` may be used again until `exp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedCredential {
    pub issuer: String,
    /// The issuer's JWKS file (`{"keys": [...]}`).
    pub jwks: PathBuf,
    pub subject: String,
    pub audience: String,
}

/// Entra's audience for federated credentials.
pub const FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Where a client assertion made elsewhere comes from (`client.assertion`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssertionSource {
    /// A file holding the JWT, re-read when it changes (a projected token rotated in place).
    File(PathBuf),
    /// A command whose stdout is the JWT, run without a shell, within `timeout`.
    Command { argv: Vec<String>, timeout: Duration },
}

impl std::fmt::Display for AssertionSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AssertionSource::File(p) => write!(f, "file {}", p.display()),
            // The program only: arguments may carry secrets (a token, a client secret), and
            // this text reaches 502 answers, logs and `check`.
            AssertionSource::Command { argv, .. } => match argv.split_first() {
                Some((program, [])) => write!(f, "command {program:?}"),
                Some((program, args)) => write!(f, "command {program:?} (+{} arguments, not shown)", args.len()),
                None => f.write_str("command (empty)"),
            },
        }
    }
}

impl DemoAsConfig {
    /// The `[demo_as] user` default.
    pub const DEFAULT_USER: &'static str = "demo-user";

    /// The defaults, listening on `listen`.
    pub fn at(listen: SocketAddr) -> DemoAsConfig {
        DemoAsConfig {
            listen,
            dpop_nonce: false,
            tls: false,
            user: Self::DEFAULT_USER.to_string(),
            redirect_uris: BTreeMap::new(),
            federated: BTreeMap::new(),
        }
    }
}

/// `scheme://host:port/base` of a route's upstream, parsed once (by `url::Url`, WHATWG rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: String,
    /// Lowercase; IPv6 without brackets.
    pub host: String,
    pub port: u16,
    /// The path below which the route's endpoints live, without a trailing `/`.
    pub base_path: String,
    /// Origin as the AS sees it: lowercase scheme and host, default port omitted
    /// (RFC 6454 §6.1, RFC 9449 §4.3 normalization).
    origin: String,
}

impl Upstream {
    /// Splits `url`; `None` when it is not an absolute URL with a host.
    pub fn parse(url: &url::Url) -> Option<Upstream> {
        let host = match url.host()? {
            url::Host::Domain(d) => d.to_string(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => ip.to_string(),
        };
        Some(Upstream {
            scheme: url.scheme().to_string(),
            host,
            port: url.port_or_known_default()?,
            base_path: url.path().trim_end_matches('/').to_string(),
            origin: url.origin().ascii_serialization(),
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Full URL of `path` (which starts with `/`) at the upstream.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}{}", self.origin, self.base_path, path)
    }

    /// Is `url` exactly [`Upstream::url`]`(path)`? (No allocation.)
    pub fn is_url_of(&self, path: &str, url: &str) -> bool {
        url.strip_prefix(self.origin.as_str()).and_then(|rest| rest.strip_prefix(self.base_path.as_str())) == Some(path)
    }

    /// The same origin with no base path (an issuer-only route's upstream).
    pub fn origin_only(mut self) -> Upstream {
        self.base_path.clear();
        self
    }
}

impl Preset {
    /// What the vendor documents for `aud` (README "Presets").
    pub fn audience(self) -> Audience {
        match self {
            Preset::Keycloak | Preset::Auth0 | Preset::Fapi2 => Audience::Issuer,
            Preset::Okta => Audience::Endpoint,
            Preset::Entra => Audience::TokenEndpoint,
        }
    }

    /// The vendor's token endpoint path (from the issuer's origin) for `issuer`: where the
    /// route signs when the AS metadata cannot be fetched.
    pub fn token_path(self, issuer: &str) -> String {
        let path = url::Url::parse(issuer).map(|u| u.path().trim_end_matches('/').to_string()).unwrap_or_default();
        match self {
            Preset::Keycloak => format!("{path}/protocol/openid-connect/token"),
            Preset::Okta => format!("{path}/v1/token"),
            Preset::Entra => format!("{}/oauth2/v2.0/token", path.strip_suffix("/v2.0").unwrap_or(&path)),
            Preset::Auth0 => "/oauth/token".to_string(),
            Preset::Fapi2 => format!("{path}/token"),
        }
    }

    pub fn default_alg(self) -> Alg {
        match self {
            Preset::Keycloak | Preset::Okta | Preset::Auth0 => Alg::RS256,
            Preset::Entra | Preset::Fapi2 => Alg::PS256,
        }
    }

    /// Assertion algorithms the vendor accepts (of those tokenrelay signs with).
    pub fn allows(self, alg: Alg) -> bool {
        match self {
            Preset::Keycloak => alg != Alg::HS256,
            Preset::Okta => matches!(alg, Alg::RS256 | Alg::ES256 | Alg::ES384),
            Preset::Entra => matches!(alg, Alg::RS256 | Alg::PS256),
            Preset::Auth0 => matches!(alg, Alg::RS256 | Alg::PS256),
            // FAPI 2.0 Security Profile §5.4.1: PS256, ES256 or EdDSA (Ed25519).
            Preset::Fapi2 => matches!(alg, Alg::PS256 | Alg::ES256 | Alg::EdDSA),
        }
    }

    pub fn allowed_algs(self) -> String {
        Alg::ASYMMETRIC.iter().filter(|a| self.allows(**a)).map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// The assertion's `typ` header, when the vendor documents one.
    pub fn typ(self) -> Option<&'static str> {
        match self {
            Preset::Entra => Some("JWT"),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub name: String,
    pub prefix: String,
    /// Forward mode: the hosts this route intercepts, parsed once (see [`host::HostEntry`]).
    pub hosts: Vec<HostEntry>,
    pub upstream: Upstream,
    pub issuer: Option<String>,
    /// Vendor defaults applied to the client settings (already folded in).
    pub preset: Option<Preset>,
    /// Serve the AS's metadata with the client-authenticated endpoints pointing at tokenrelay.
    pub rewrite_metadata: bool,
    pub trust: Vec<PathBuf>,
    pub timeout: Duration,
    pub endpoints: Vec<String>,
    /// `endpoints` was set in the file (otherwise discovery may add endpoints).
    pub endpoints_configured: bool,
    pub client: Option<ClientConfig>,
    pub dpop: Option<DpopConfig>,
    pub mtls: Option<MtlsConfig>,
    pub headers: HeaderRules,
    pub params: ParamRules,
}

impl Config {
    /// The warning `allow_remote` earns at every start, reload and `check`, if any listener is
    /// exposed.
    pub fn exposure_warning(&self) -> Option<String> {
        let exposed = self.exposed_listeners();
        (!exposed.is_empty()).then(|| {
            format!(
                "[proxy] allow_remote = true: {} reachable from other machines; anyone who reaches them gets requests signed with your keys",
                exposed.join(", ")
            )
        })
    }

    /// Listeners bound to non-loopback addresses, as `key address` (only with `allow_remote`).
    pub fn exposed_listeners(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut add = |key: &str, addr: Option<SocketAddr>| {
            if let Some(a) = addr.filter(|a| !a.ip().is_loopback()) {
                out.push(format!("{key} {a}"));
            }
        };
        add("proxy.listen", Some(self.listen));
        add("proxy.listen_tls", self.listen_tls);
        add("proxy.forward", self.forward);
        add("demo_as.listen", self.demo_as.as_ref().map(|d| d.listen));
        out
    }
}

impl RouteConfig {
    /// Where the route's token endpoint is: the first configured endpoint.
    pub fn token_endpoint_url(&self) -> String {
        let path = self.endpoints.first().map(String::as_str).unwrap_or("/token");
        self.upstream.url(path)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    Issuer,
    TokenEndpoint,
    Endpoint,
    Literal(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Inline(crate::redact::Secret),
    Env(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    pub id: String,
    pub auth: AuthMethod,
    pub key: Option<PathBuf>,
    pub create: bool,
    pub secret: Option<SecretSource>,
    pub alg: Alg,
    pub audience: Audience,
    pub lifetime: Duration,
    pub kid: Option<String>,
    pub typ: Option<String>,
    /// The certificate of `key`: its SHA-256 thumbprint goes in the `x5t#S256` header.
    pub cert: Option<PathBuf>,
    /// Send `nbf` (= `iat`) in the assertion (Entra requires it).
    pub nbf: bool,
    /// A client assertion made elsewhere, sent instead of one signed with `key`.
    pub assertion: Option<AssertionSource>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopConfig {
    pub key: PathBuf,
    pub alg: Alg,
    pub create: bool,
    pub upgrade_bearer: bool,
    pub require_bound: bool,
    /// `token_type = "Bearer"`: the app gets `"Bearer"` where the AS answered `"DPoP"`
    /// (for OAuth libraries that refuse `DPoP`; pair with `upgrade_bearer`).
    pub answer_bearer: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove: Vec<http::HeaderName>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamRules {
    pub add: BTreeMap<String, String>,
    pub set: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

impl ParamRules {
    /// Every parameter name these rules read or write.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.add.keys().chain(self.set.keys()).chain(self.remove.iter()).map(String::as_str)
    }
}

/// Reads and checks the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = file::read_to_string(path, file::SMALL_CAP).map_err(|e| {
        let shown = path.display().to_string();
        if e.kind() == std::io::ErrorKind::NotFound {
            let init = if path == Path::new("proxy.toml") {
                "tokenrelay init".to_string()
            } else {
                format!("tokenrelay init --config {shown}")
            };
            ConfigError::Missing { path: shown, init, reason: e.to_string() }
        } else {
            ConfigError::Read { path: shown, reason: e.to_string() }
        }
    })?;
    parse(&text, path)
}

fn missing_message(path: &str, init: &str, reason: &str) -> String {
    if path == "proxy.toml" {
        format!("no proxy.toml here: run `{init}` to create one ({reason})")
    } else {
        format!("no config at {path}: run `{init}` to create one ({reason})")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse_str(s: &str) -> Result<Config, ConfigError> {
        parse(s, Path::new("/etc/tr/proxy.toml"))
    }

    const MIN: &str = r#"
[routes.demo]
prefix = "/demo/"
upstream = "https://AS.example.com:8443/oauth2/"
[routes.demo.client]
id = "app"
auth = "private_key_jwt"
key = "certs/client.pem"
"#;

    #[test]
    fn minimal_route_resolves() {
        let c = parse_str(MIN).unwrap();
        let r = &c.routes[0];
        assert_eq!(r.prefix, "/demo");
        assert_eq!(r.upstream.origin(), "https://as.example.com:8443");
        assert_eq!(r.token_endpoint_url(), "https://as.example.com:8443/oauth2/token");
        let client = r.client.as_ref().unwrap();
        assert_eq!(client.key.as_deref(), Some(Path::new("/etc/tr/certs/client.pem")));
        assert_eq!(client.audience, Audience::TokenEndpoint);
        assert_eq!(client.lifetime, Duration::from_secs(60));
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 8787)));
    }

    #[test]
    fn unknown_field_names_line_and_column() {
        let err = parse_str("[proxy]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n").unwrap_err().to_string();
        assert!(err.starts_with("/etc/tr/proxy.toml:3:1:"), "{err}");
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn missing_key_names_the_key_and_the_fix() {
        let err = parse_str(&MIN.replace("key = \"certs/client.pem\"\n", "")).unwrap_err().to_string();
        assert!(err.contains("routes.demo.client.key") && err.contains("tokenrelay init"), "{err}");
    }

    #[test]
    fn plain_http_upstream_only_on_loopback() {
        let err = parse_str(&MIN.replace("https://AS.example.com:8443/oauth2/", "http://as.example.com")).unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
        assert!(parse_str(&MIN.replace("https://AS.example.com:8443/oauth2/", "http://127.0.0.1:9")).is_ok());
    }

    #[test]
    fn upstream_with_credentials_or_fragment_is_refused() {
        for (bad, why) in [
            ("https://user:pw@as.example.com", "user:password@"),
            ("https://as.example.com/#x", "#fragment"),
            ("https://as.example.com/?q=1", "query"),
            ("ftp://as.example.com", "scheme"),
        ] {
            let err = parse_str(&MIN.replace("https://AS.example.com:8443/oauth2/", bad)).unwrap_err().to_string();
            assert!(err.contains("routes.demo.upstream") && err.contains(why), "{bad}: {err}");
        }
        let ipv6 = parse_str(&MIN.replace("https://AS.example.com:8443/oauth2/", "http://[::1]:9443/x")).unwrap();
        assert_eq!(ipv6.routes[0].upstream.host, "::1");
        assert_eq!(ipv6.routes[0].upstream.url("/token"), "http://[::1]:9443/x/token");
    }

    #[test]
    fn listeners_are_loopback_unless_allow_remote() {
        for (table, key) in [("[proxy]\nlisten_tls", "proxy.listen_tls"), ("[demo_as]\nlisten", "demo_as.listen")] {
            let err = parse_str(&format!("{table} = \"0.0.0.0:8443\"\n")).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("allow_remote"), "{err}");
        }
        let open = parse_str("[proxy]\nallow_remote = true\nlisten_tls = \"0.0.0.0:8443\"\n").unwrap();
        assert_eq!(open.exposed_listeners(), ["proxy.listen_tls 0.0.0.0:8443"]);
    }

    #[test]
    fn allow_users_takes_names_uids_or_star_alone() {
        let users = parse_str("[proxy]\nallow_users = [\"root\", 1001]\n").unwrap().allow_users;
        let listed: Vec<u32> = users.users().iter().map(|u| u.uid).collect();
        assert_eq!(listed, [0, 1001]);
        assert!(parse_str("[proxy]\nallow_users = [\"*\"]\n").unwrap().allow_users.is_any());
        assert_eq!(*parse_str("").unwrap().allow_users, crate::peer::AllowUsers::default());
        for (bad, why) in [
            ("[\"no-such-user-tokenrelay\"]", "no local user is named \"no-such-user-tokenrelay\""),
            ("[\"*\", \"root\"]", "list it alone"),
            ("[-1]", "not a uid"),
            ("[4294967295]", "not a uid"),
            ("[1.5]", "a user name (\"alice\"), a uid (1001)"),
        ] {
            let err = parse_str(&format!("[proxy]\nallow_users = {bad}\n")).unwrap_err().to_string();
            assert!(err.contains("proxy.allow_users") && err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn zero_limits_and_framing_header_rules_are_refused() {
        let err =
            parse_str(&MIN.replace("[routes.demo.client]", "timeout = \"0s\"\n[routes.demo.client]")).unwrap_err();
        assert!(err.to_string().contains("routes.demo.timeout") && err.to_string().contains("zero"), "{err}");
        let err = parse_str("[proxy]\nmax_body = 0\n").unwrap_err().to_string();
        assert!(err.contains("proxy.max_body"), "{err}");
        for name in ["Host", "content-length", "Transfer-Encoding", "connection", "upgrade"] {
            let text = format!("{MIN}[routes.demo.headers]\nset = {{ \"{name}\" = \"x\" }}\n");
            let err = parse_str(&text).unwrap_err().to_string();
            assert!(err.contains("routes.demo.headers.set") && err.contains("cannot be set"), "{name}: {err}");
        }
    }

    #[test]
    fn a_mistyped_secret_is_not_echoed() {
        let text = MIN.replace("key = \"certs/client.pem\"", "key = \"certs/client.pem\"\nsecret = 987654321012");
        let err = parse_str(&text).unwrap_err().to_string();
        assert!(!err.contains("987654321012"), "{err}");
        assert!(err.contains("[redacted]"), "{err}");
    }

    #[test]
    fn issuer_must_be_https_or_loopback() {
        let with =
            |issuer: &str| MIN.replace("[routes.demo.client]", &format!("issuer = \"{issuer}\"\n[routes.demo.client]"));
        let err = parse_str(&with("http://as.example.com")).unwrap_err().to_string();
        assert!(err.contains("routes.demo.issuer") && err.contains("loopback"), "{err}");
        assert!(parse_str(&with("http://127.0.0.1:9443")).is_ok());
        let err = parse_str(&with("https://as.example.com/?tenant=1")).unwrap_err().to_string();
        assert!(err.contains("routes.demo.issuer"), "{err}");
    }

    #[test]
    fn default_port_is_omitted_from_origin() {
        let c = parse_str(&MIN.replace(":8443", ":443")).unwrap();
        assert_eq!(c.routes[0].upstream.origin(), "https://as.example.com");
    }

    #[test]
    fn listen_must_be_loopback() {
        let err = parse_str("[proxy]\nlisten = \"0.0.0.0:8787\"\n").unwrap_err().to_string();
        assert!(err.contains("proxy.listen") && err.contains("loopback"), "{err}");
    }

    #[test]
    fn bad_duration_is_named() {
        let err =
            parse_str(&MIN.replace("[routes.demo.client]", "timeout = \"ten\"\n[routes.demo.client]")).unwrap_err();
        assert!(err.to_string().contains("routes.demo.timeout"), "{err}");
    }

    #[test]
    fn longest_prefix_first() {
        let two = format!("{MIN}\n[routes.deep]\nprefix = \"/demo/deep\"\nupstream = \"https://b.example\"\n");
        let c = parse_str(&two).unwrap();
        assert_eq!(c.routes[0].name, "deep");
    }
}
