//! The checks that turn [`RawConfig`] into [`Config`]: every URL split, every duration
//! parsed, every path resolved against the config file's folder, every combination of fields
//! that cannot work refused with `file:line:column: key: message`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::{self, Preset, RawClient, RawConfig, RawDpop, RawRoute};
use super::*;
use crate::jose::Alg;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

/// Checks config `text` as if read from `path` (paths resolve against its folder).
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let cx = Cx { text, path };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| cx.line_col(s.start)).unwrap_or((1, 1));
        ConfigError::Invalid {
            path: path.display().to_string(),
            line,
            column,
            key: String::new(),
            message: e.message().trim_end().to_string(),
        }
    })?;
    cx.check(raw)
}

struct Cx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Cx<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    fn err(&self, span: std::ops::Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.line_col(span.start);
        ConfigError::Invalid {
            path: self.path.display().to_string(),
            line,
            column,
            key: if key.is_empty() { String::new() } else { format!("{key}: ") },
            message: message.into(),
        }
    }

    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir().join(p)
        }
    }

    fn addr(&self, s: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
        let addr: SocketAddr = s.get_ref().parse().map_err(|_| {
            self.err(s.span(), key, format!("{:?} is not an address like \"127.0.0.1:8787\"", s.get_ref()))
        })?;
        Ok(addr)
    }

    /// A listener address: loopback only, unless `[proxy] allow_remote = true` (RFC 9700
    /// §4.13; TLS does not authenticate the caller, so `listen_tls` is no exception).
    fn listener(&self, s: &Spanned<String>, key: &str, allow_remote: bool) -> Result<SocketAddr, ConfigError> {
        let addr = self.addr(s, key)?;
        if !addr.ip().is_loopback() && !allow_remote {
            return Err(self.err(
                s.span(),
                key,
                format!(
                    "{addr} is not a loopback address: whoever reaches a signing proxy gets signed tokens. \
                     Listen on 127.0.0.1 or [::1], or set [proxy] allow_remote = true to expose it on purpose"
                ),
            ));
        }
        Ok(addr)
    }

    fn check(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let p = raw.proxy;
        let remote = p.allow_remote;
        let listen = match &p.listen {
            Some(s) => self.listener(s, "proxy.listen", remote)?,
            None => SocketAddr::from(([127, 0, 0, 1], 8787)),
        };
        let listen_tls = p.listen_tls.as_ref().map(|s| self.listener(s, "proxy.listen_tls", remote)).transpose()?;
        let forward = p.forward.as_ref().map(|s| self.listener(s, "proxy.forward", remote)).transpose()?;
        let demo_as = match &raw.demo_as {
            Some(d) => Some(DemoAsConfig {
                listen: self.listener(&d.get_ref().listen, "demo_as.listen", remote)?,
                dpop_nonce: d.get_ref().dpop_nonce,
                tls: d.get_ref().tls,
            }),
            None => None,
        };
        let max_body = match &p.max_body {
            Some(n) if *n.get_ref() == 0 => {
                return Err(self.err(
                    n.span(),
                    "proxy.max_body",
                    "0 would refuse every request body; the default is 65536",
                ))
            }
            Some(n) => *n.get_ref(),
            None => DEFAULT_MAX_BODY,
        };
        let max_connections = match &p.max_connections {
            Some(n) if *n.get_ref() < 2 => {
                return Err(self.err(
                    n.span(),
                    "proxy.max_connections",
                    "must be at least 2 (default: min(512, open-file limit - 64))",
                ))
            }
            Some(n) => Some(*n.get_ref()),
            None => None,
        };
        let mut routes = Vec::new();
        for (name, route) in raw.routes {
            routes.push(self.route(&name, route)?);
        }
        for (i, a) in routes.iter().enumerate() {
            if let Some(b) = routes[i + 1..].iter().find(|b| b.prefix == a.prefix) {
                return Err(ConfigError::Invalid {
                    path: self.path.display().to_string(),
                    line: 1,
                    column: 1,
                    key: format!("routes.{}.prefix: ", b.name),
                    message: format!("prefix {:?} is also used by route {:?}; prefixes must differ", a.prefix, a.name),
                });
            }
        }
        routes.sort_by(|a, b| b.prefix.len().cmp(&a.prefix.len()).then(a.name.cmp(&b.name)));
        Ok(Config {
            path: self.path.to_path_buf(),
            dir: self.dir(),
            listen,
            listen_tls,
            forward,
            unknown_hosts: p.unknown_hosts.unwrap_or_default(),
            ca_cert: self.resolve(p.ca_cert.as_deref().unwrap_or("certs/ca.pem")),
            ca_key: self.resolve(p.ca_key.as_deref().unwrap_or("certs/ca-key.pem")),
            max_body,
            allow_origins: p.allow_origins,
            allow_remote: remote,
            max_connections,
            demo_as,
            routes,
        })
    }

    fn route(&self, name: &str, spanned: Spanned<RawRoute>) -> Result<RouteConfig, ConfigError> {
        let span = spanned.span();
        let r = spanned.into_inner();
        let key = |k: &str| format!("routes.{name}.{k}");

        let prefix = r.prefix.get_ref().trim_end_matches('/').to_string();
        if !prefix.starts_with('/') || prefix.contains(['?', '#']) {
            return Err(self.err(
                r.prefix.span(),
                &key("prefix"),
                format!("{:?} must be a path that starts with '/', like \"/{name}\"", r.prefix.get_ref()),
            ));
        }
        let issuer = r.issuer.as_ref().map(|s| s.get_ref().clone());
        let upstream = match (&r.upstream, &r.issuer) {
            (Some(u), _) => self.upstream(u, &key("upstream"))?,
            // An issuer alone is enough: its origin is the upstream, endpoints come from metadata.
            (None, Some(i)) => self.upstream(i, &key("issuer"))?.origin_only(),
            (None, None) => {
                return Err(self.err(
                    span,
                    &key("upstream"),
                    "a route needs upstream = \"https://as.example.com\" or issuer = \"https://as.example.com\"",
                ))
            }
        };
        let preset = r.preset;
        let timeout = match &r.timeout {
            Some(s) => self.duration(s, &key("timeout"))?,
            None => DEFAULT_TIMEOUT,
        };
        let endpoints_configured = r.endpoints.is_some();
        let endpoints = match r.endpoints {
            Some(list) => {
                if let Some(bad) = list.iter().find(|e| !e.starts_with('/')) {
                    return Err(self.err(span, &key("endpoints"), format!("{bad:?} must be a path starting with '/'")));
                }
                list
            }
            None => vec!["/token".to_string()],
        };
        let hosts = match &r.hosts {
            None => vec![HostEntry { host: upstream.host.clone(), port: None }],
            Some(list) => list
                .iter()
                .map(|entry| {
                    HostEntry::parse(entry).ok_or_else(|| {
                        self.err(
                            span.clone(),
                            &key("hosts"),
                            format!(
                                "{entry:?} is not a host name, IP address or host:port like \"as.example.com:8443\""
                            ),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let client = r.client.map(|c| self.client(name, c, issuer.is_some(), preset)).transpose()?;
        let mut dpop = r.dpop.map(|d| self.dpop(name, d)).transpose()?;
        let mtls = r.mtls.map(|m| {
            let m = m.into_inner();
            MtlsConfig { cert: self.resolve(&m.cert), key: self.resolve(&m.key) }
        });
        if let Some(c) = &client {
            if matches!(c.auth, AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth) && mtls.is_none() {
                return Err(self.err(
                    span,
                    &key("client.auth"),
                    format!(
                        "\"{}\" needs a client certificate: add [routes.{name}.mtls] with cert and key",
                        c.auth.as_str()
                    ),
                ));
            }
        }
        if preset == Some(Preset::Fapi2) {
            // FAPI 2.0 Security Profile §5.3.2.1: sender-constrained tokens (DPoP or mTLS).
            if dpop.is_none() && mtls.is_none() {
                return Err(self.err(
                    span,
                    &key("preset"),
                    format!(
                        "preset = \"fapi2\" needs sender-constrained tokens (FAPI 2.0 §5.3.2.1): add [routes.{name}.dpop] or [routes.{name}.mtls]"
                    ),
                ));
            }
            if let Some(d) = &mut dpop {
                d.require_bound = true;
            }
        }
        if r.rewrite_metadata && issuer.is_none() {
            return Err(self.err(
                span,
                &key("rewrite_metadata"),
                "rewrite_metadata needs issuer = \"...\" on the route (the metadata comes from the issuer)",
            ));
        }
        let headers = self.headers(name, r.headers, span.clone())?;
        let params = ParamRules { add: r.params.add, set: r.params.set, remove: r.params.remove };
        Ok(RouteConfig {
            name: name.to_string(),
            prefix,
            hosts,
            upstream,
            issuer,
            preset,
            rewrite_metadata: r.rewrite_metadata,
            trust: r.trust.iter().map(|t| self.resolve(t)).collect(),
            timeout,
            endpoints,
            endpoints_configured,
            client,
            dpop,
            mtls,
            headers,
            params,
        })
    }

    fn upstream(&self, s: &Spanned<String>, key: &str) -> Result<Upstream, ConfigError> {
        let bad = |why: &str| self.err(s.span(), key, format!("{:?}: {why}", s.get_ref()));
        let url = url::Url::parse(s.get_ref())
            .map_err(|e| bad(&format!("not a URL like \"https://as.example.com\" ({e})")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(bad("scheme must be https (or http for a loopback upstream)"));
        }
        let upstream = Upstream::parse(&url).ok_or_else(|| bad("missing host"))?;
        if upstream.scheme == "http" && !is_loopback_upstream(&upstream.host) {
            return Err(bad(
                "plain http is allowed only to a loopback IP or localhost; use https (tokens and assertions must not cross a network in clear)",
            ));
        }
        if url.query().is_some() {
            return Err(bad("must not have a query string"));
        }
        if url.fragment().is_some() {
            return Err(bad("must not have a #fragment"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("must not carry user:password@ (credentials go in [routes.NAME.client])"));
        }
        Ok(upstream)
    }

    fn duration(&self, s: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
        humantime::parse_duration(s.get_ref()).map_err(|e| {
            self.err(s.span(), key, format!("{:?} is not a duration like \"10s\" or \"500ms\": {e}", s.get_ref()))
        })
    }

    fn alg(&self, s: &Spanned<String>, key: &str) -> Result<Alg, ConfigError> {
        Alg::parse(s.get_ref()).ok_or_else(|| {
            self.err(s.span(), key, format!("unknown alg {:?}; use ES256, ES384, PS256, RS256 or EdDSA", s.get_ref()))
        })
    }

    fn client(
        &self,
        route: &str,
        spanned: Spanned<RawClient>,
        has_issuer: bool,
        preset: Option<Preset>,
    ) -> Result<ClientConfig, ConfigError> {
        let span = spanned.span();
        let c = spanned.into_inner();
        let key = |k: &str| format!("routes.{route}.client.{k}");
        let auth = c.auth;
        let default_alg = match (auth, preset) {
            (AuthMethod::ClientSecretJwt, _) => Alg::HS256,
            (_, Some(p)) => p.default_alg(),
            (_, None) => Alg::ES256,
        };
        let alg = match &c.alg {
            Some(s) => self.alg(s, &key("alg"))?,
            None => default_alg,
        };
        if let Some(p) = preset.filter(|p| auth == AuthMethod::PrivateKeyJwt && !p.allows(alg)) {
            return Err(self.err(
                span,
                &key("alg"),
                format!("preset = \"{}\" allows {}, not {alg}", p.as_str(), p.allowed_algs()),
            ));
        }
        if preset == Some(Preset::Entra) && auth == AuthMethod::PrivateKeyJwt && c.cert.is_none() {
            return Err(self.err(
                span,
                &key("cert"),
                "preset = \"entra\" needs cert = \"certs/client-cert.pem\": Entra identifies the key by the \
                 certificate's x5t#S256 thumbprint (the certificate you uploaded to the app registration)",
            ));
        }
        let needs_key = auth == AuthMethod::PrivateKeyJwt;
        let needs_secret =
            matches!(auth, AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost | AuthMethod::ClientSecretJwt);
        if needs_key && c.key.is_none() {
            return Err(self.err(
                span,
                &key("key"),
                "auth = \"private_key_jwt\" needs key = \"certs/client.pem\" (run `tokenrelay init` to create one)",
            ));
        }
        if needs_key && alg == Alg::HS256 {
            return Err(self.err(
                span,
                &key("alg"),
                "private_key_jwt needs an asymmetric alg (ES256, ES384, PS256, RS256, EdDSA)",
            ));
        }
        if auth == AuthMethod::ClientSecretJwt && alg != Alg::HS256 {
            return Err(self.err(span, &key("alg"), "client_secret_jwt signs with HS256"));
        }
        let secret = match (c.secret, c.secret_env) {
            (Some(_), Some(_)) => {
                return Err(self.err(span, &key("secret"), "set either secret or secret_env, not both"));
            }
            (Some(s), None) => Some(SecretSource::Inline(crate::redact::Secret::new(s))),
            (None, Some(var)) => Some(SecretSource::Env(var)),
            (None, None) => None,
        };
        if needs_secret && secret.is_none() {
            return Err(self.err(
                span,
                &key("secret"),
                format!("auth = \"{}\" needs secret = \"...\" or secret_env = \"VAR\"", auth.as_str()),
            ));
        }
        let audience = match c.audience.as_deref() {
            None => match preset.map(Preset::audience) {
                Some(Audience::Issuer) if !has_issuer => {
                    return Err(self.err(
                        span,
                        &key("audience"),
                        format!(
                            "preset = \"{}\" sends aud = the issuer: add issuer = \"...\" to the route (or set audience)",
                            preset.map_or("", Preset::as_str)
                        ),
                    ));
                }
                Some(a) => a,
                None if has_issuer => Audience::Issuer,
                None => Audience::TokenEndpoint,
            },
            Some("issuer") if !has_issuer => {
                return Err(self.err(
                    span,
                    &key("audience"),
                    "audience = \"issuer\" needs issuer = \"...\" on the route",
                ));
            }
            Some("issuer") => Audience::Issuer,
            Some("token_endpoint") => Audience::TokenEndpoint,
            Some("endpoint") => Audience::Endpoint,
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                Audience::Literal(url.to_string())
            }
            Some(other) => {
                return Err(self.err(
                    span,
                    &key("audience"),
                    format!("{other:?}: use issuer, token_endpoint, endpoint or a URL"),
                ));
            }
        };
        let lifetime = match &c.lifetime {
            Some(s) => self.duration(s, &key("lifetime"))?,
            None => DEFAULT_LIFETIME,
        };
        Ok(ClientConfig {
            id: c.id,
            auth,
            key: c.key.as_deref().map(|k| self.resolve(k)),
            create: c.create,
            secret,
            alg,
            audience,
            lifetime,
            kid: c.kid,
            typ: c.typ.or_else(|| preset.and_then(Preset::typ).map(str::to_string)),
            cert: c.cert.as_deref().map(|p| self.resolve(p)),
            nbf: preset == Some(Preset::Entra),
        })
    }

    fn dpop(&self, route: &str, spanned: Spanned<RawDpop>) -> Result<DpopConfig, ConfigError> {
        let d = spanned.into_inner();
        let alg = match &d.alg {
            Some(s) => self.alg(s, &format!("routes.{route}.dpop.alg"))?,
            None => Alg::ES256,
        };
        if alg == Alg::HS256 {
            let span = d.alg.as_ref().map(Spanned::span).unwrap_or(0..0);
            return Err(self.err(
                span,
                &format!("routes.{route}.dpop.alg"),
                "DPoP needs an asymmetric alg (RFC 9449 §4.2)",
            ));
        }
        Ok(DpopConfig {
            key: self.resolve(&d.key),
            alg,
            create: d.create,
            upgrade_bearer: d.upgrade_bearer.unwrap_or(true),
            require_bound: d.require_bound,
        })
    }

    fn headers(
        &self,
        route: &str,
        h: raw::RawHeaders,
        span: std::ops::Range<usize>,
    ) -> Result<HeaderRules, ConfigError> {
        let key = format!("routes.{route}.headers");
        let mut rules = HeaderRules::default();
        for (name, value) in h.set {
            let n = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| self.err(span.clone(), &key, format!("{name:?} is not a valid header name")))?;
            let v = http::HeaderValue::from_str(&value)
                .map_err(|_| self.err(span.clone(), &key, format!("value of {name:?} is not a valid header value")))?;
            // Configured values may be API keys: keep them out of any Debug print.
            let mut v = v;
            v.set_sensitive(true);
            rules.set.push((n, v));
        }
        for name in h.remove {
            let n = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| self.err(span.clone(), &key, format!("{name:?} is not a valid header name")))?;
            rules.remove.push(n);
        }
        Ok(rules)
    }
}
