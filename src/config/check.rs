//! The checks that turn [`RawConfig`] into [`Config`]: every URL split, every duration
//! parsed, every path resolved against the config file's folder, every combination of fields
//! that cannot work refused with `file:line:column: key: message`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize as _;
use toml::Spanned;

use super::raw::{self, Preset, RawClient, RawConfig, RawDpop, RawRoute};
use super::*;
use crate::jose::Alg;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

/// Checks config `text` as if read from `path` (paths resolve against its folder), with
/// `${VAR}` read from the process environment and the process's `--set` overrides
/// ([`super::interpolate`]).
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_with(text, path, interpolate::overrides(), &|var| std::env::var(var).ok())
}

/// [`parse`] with the overrides and the environment given.
pub fn parse_with(
    text: &str,
    path: &Path,
    overrides: &[interpolate::Override],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let file = Cx { text, path, file_len: text.len() };
    let mut table = toml::de::DeTable::parse(text).map_err(|e| file.toml_error(&e))?;
    let secrets = interpolate::interpolate(table.get_mut(), text, env).map_err(|e| file.prepare_error(e))?;
    let sources = interpolate::override_sources(text, overrides, table.get_ref()).map_err(|e| file.prepare_error(e))?;
    let cx = Cx { text: &sources.text, path, file_len: sources.file_len };
    sources.apply(table.get_mut()).map_err(|e| cx.prepare_error(e))?;
    let raw = RawConfig::deserialize(toml::de::Deserializer::from(table)).map_err(|e| cx.toml_error(&e))?;
    let mut config = cx.check(raw)?;
    config.env_secrets = secrets.into_iter().map(crate::redact::Secret::new).collect();
    Ok(config)
}

impl Cx<'_> {
    /// A TOML or serde error in our words, at its place.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let cx = self;
        let mut message = e.message().trim_end().to_string();
        let secret = e.span().is_some_and(|s| cx.is_secret_line(s.start));
        let place = e.span().map(|s| cx.place(s.start)).unwrap_or_default();
        // Our own words for serde's unknown-field / unknown-variant texts: the table path and
        // the closest name, not a list of backticked names.
        let mut key = place.key();
        // Field names are never secret; a refused value might be.
        if let Some((better, k)) =
            rephrase(&message, &place).filter(|_| !secret || message.starts_with("unknown field"))
        {
            message = better;
            key = k;
        }
        // A mistyped secret (`secret = 987654321012`, an API key in a header rule, however
        // the TOML spells the table) must not be echoed into logs or the status endpoint:
        // serde quotes the value it refused in backticks. Type errors never show the value.
        if message.starts_with("invalid type") || message.starts_with("invalid value") || secret {
            message = redact_quoted(&message);
        }
        self.err(e.span().unwrap_or(0..0), &key, message)
    }

    /// An interpolation or `--set` error, naming the variable or the option.
    fn prepare_error(&self, e: interpolate::PrepareError) -> ConfigError {
        use interpolate::PrepareError as E;
        match e {
            E::Toml(e) => self.toml_error(&e),
            E::Unset { offset, var } => {
                let key = self.place(offset).key();
                self.err(
                    offset..offset,
                    &key,
                    format!(
                        "environment variable {var} is not set (export {var}=..., or write ${{{var}:-default}} for a default)"
                    ),
                )
            }
            E::Malformed { offset, message } => {
                let key = self.place(offset).key();
                self.err(offset..offset, &key, message)
            }
            E::BadKey { index, message } => {
                ConfigError::Invalid { path: "--set".into(), line: index, column: 1, key: String::new(), message }
            }
        }
    }
}

/// Where in the file an error points: the `[table]` it is in, and the key of its line.
#[derive(Debug, Default)]
struct Place {
    /// `routes.demo.client` (from the last `[header]` before the error).
    table: String,
    /// `timeout`, `client.id`, ... (the part before `=` on the error's line), or the whole
    /// path when the line is a `[header]` itself.
    line_key: Option<String>,
    header: bool,
}

impl Place {
    /// The dotted path of what the line sets.
    fn key(&self) -> String {
        match (&self.line_key, self.header) {
            (Some(k), true) => k.clone(),
            (Some(k), false) => join(&self.table, k),
            (None, _) => self.table.clone(),
        }
    }

    /// The table an unknown field `field` was found in.
    fn parent_of(&self, field: &str) -> String {
        match (&self.line_key, self.header) {
            (Some(k), true) => k.rsplit_once('.').map(|(p, _)| p.to_string()).unwrap_or_default(),
            (Some(k), false) => match k.rsplit_once('.') {
                Some((p, last)) if last == field => join(&self.table, p),
                None if k == field => self.table.clone(),
                // An inline table: `client = { bogus = 1 }`.
                _ => join(&self.table, k),
            },
            (None, _) => self.table.clone(),
        }
    }
}

fn join(table: &str, key: &str) -> String {
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (_, true) => table.to_string(),
        _ => format!("{table}.{key}"),
    }
}

/// A dotted TOML key as written (`routes."my api".client`) without quotes and spaces.
fn dotted(key: &str) -> String {
    key.split('.').map(|p| p.trim().trim_matches('"').trim_matches('\'')).collect::<Vec<_>>().join(".")
}

/// The names between backticks in serde's "expected one of `a`, `b`" (or "`a` or `b`").
fn backticked(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// The candidate closest to `name`, when it is close enough to be a typo.
pub(crate) fn closest<'a>(name: &str, candidates: &'a [String]) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

/// serde's "unknown field `x`, expected one of ..." and "unknown variant `x`, expected ..."
/// in our words, with the key path: `(message, key)`.
fn rephrase(message: &str, place: &Place) -> Option<(String, String)> {
    if let Some(rest) = message.strip_prefix("missing field ") {
        let name = backticked(rest).into_iter().next()?;
        return Some((format!("missing field {name:?}"), place.key()));
    }
    let (kind, rest) = if let Some(rest) = message.strip_prefix("unknown field ") {
        ("field", rest)
    } else if let Some(rest) = message.strip_prefix("unknown variant ") {
        ("value", rest)
    } else {
        return None;
    };
    let name = backticked(rest).into_iter().next()?;
    let expected: Vec<String> = rest.split_once(", ").map(|(_, e)| backticked(e)).unwrap_or_default();
    let hint = match closest(&name, &expected) {
        Some(c) => format!("; did you mean {c:?}?"),
        None if expected.is_empty() => String::new(),
        None => format!(" (expected one of: {})", expected.join(", ")),
    };
    Some(match kind {
        "field" => ("unknown field".to_string() + &hint, join(&place.parent_of(&name), &name)),
        _ => (format!("unknown value {name:?}{hint}"), place.key()),
    })
}

/// `message` with every `` `...` `` quoted value replaced by `` `[redacted]` ``.
fn redact_quoted(message: &str) -> String {
    let mut out = String::new();
    let mut parts = message.split('`');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push('`');
        out.push_str(if i % 2 == 0 { "[redacted]" } else { part });
    }
    out
}

struct Cx<'a> {
    /// The file's text, then the `--set` lines ([`interpolate::OverrideSources::text`]).
    text: &'a str,
    path: &'a Path,
    /// Where the file's own text ends in `text`.
    file_len: usize,
}

impl Cx<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    /// The table and line key at `offset` (see [`Place`]).
    fn place(&self, offset: usize) -> Place {
        let before = &self.text[..offset.min(self.text.len())];
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[start..].lines().next().unwrap_or_default().trim();
        let header = |l: &str| {
            let l = l.trim();
            l.starts_with('[').then(|| dotted(l.trim_start_matches('[').split(']').next().unwrap_or_default()))
        };
        let table = self.text[..start].lines().rev().find_map(header).unwrap_or_default();
        if let Some(h) = header(line) {
            return Place { table, line_key: Some(h), header: true };
        }
        let line_key = line.split_once('=').map(|(k, _)| dotted(k)).filter(|k| !k.is_empty());
        Place { table, line_key, header: false }
    }

    /// Is `offset` on a line that sets a secret (`secret`, `secret_env`, a header value)?
    fn is_secret_line(&self, offset: usize) -> bool {
        let start = self.text[..offset.min(self.text.len())].rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[start..].lines().next().unwrap_or_default();
        let key = line.split('=').next().unwrap_or_default().trim().trim_matches('"').to_ascii_lowercase();
        key.contains("secret") || line.trim_start().starts_with("set")
    }

    fn err(&self, span: std::ops::Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.line_col(span.start);
        // A value from `--set`: `--set:N:COLUMN`, N counting the options.
        let (path, line) = match self.text.get(self.file_len..span.start) {
            Some(tail) if span.start > self.file_len => ("--set".to_string(), tail.matches("\n[]\n").count()),
            _ => (self.path.display().to_string(), line),
        };
        ConfigError::Invalid {
            path,
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

    /// Resolves a path against the config's folder; a control character in it is refused
    /// ([`super::charset::no_control`]).
    fn resolve(&self, p: &str, span: std::ops::Range<usize>, key: &str) -> Result<PathBuf, ConfigError> {
        super::charset::no_control(p).map_err(|why| self.err(span, key, why))?;
        // A key on a PKCS#11 token (RFC 7512): the URI stays, its PIN file resolves here.
        if crate::jose::pkcs11::is_uri(p) {
            return Ok(PathBuf::from(crate::jose::pkcs11::with_absolute_pin_file(p, &self.dir())));
        }
        let p = Path::new(p);
        Ok(if p.is_absolute() { p.to_path_buf() } else { self.dir().join(p) })
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

    /// `[demo_as]`: the listener, the signed-in user, and each client's redirect URIs
    /// (absolute, without fragment: RFC 6749 §3.1.2).
    fn demo_as(&self, spanned: &Spanned<raw::RawDemoAs>, remote: bool) -> Result<DemoAsConfig, ConfigError> {
        let d = spanned.get_ref();
        let listen = self.listener(&d.listen, "demo_as.listen", remote)?;
        let user = match &d.user {
            Some(u) if u.get_ref().trim().is_empty() => {
                return Err(self.err(u.span(), "demo_as.user", "must not be empty (default \"demo-user\")"))
            }
            Some(u) => u.get_ref().clone(),
            None => DemoAsConfig::DEFAULT_USER.to_string(),
        };
        let mut redirect_uris = BTreeMap::new();
        for (client, uris) in &d.redirect_uris {
            let key = format!("demo_as.redirect_uris.{client}");
            let mut list = Vec::new();
            for uri in uris {
                let text = uri.get_ref();
                let why = match url::Url::parse(text) {
                    Ok(u) if u.fragment().is_some() => Some("has a fragment (RFC 6749 §3.1.2)".to_string()),
                    Ok(_) => None,
                    Err(e) => Some(format!("is not an absolute URI (RFC 6749 §3.1.2): {e}")),
                };
                if let Some(why) = why {
                    return Err(self.err(uri.span(), &key, format!("{text:?} {why}")));
                }
                list.push(text.clone());
            }
            if list.is_empty() {
                return Err(self.err(
                    spanned.span(),
                    &key,
                    "an empty list allows no redirect at all; list the URIs or remove the entry (loopback URIs are the default)",
                ));
            }
            redirect_uris.insert(client.clone(), list);
        }
        let federated = d
            .federated
            .iter()
            .map(|(client, f)| {
                let credential = FederatedCredential {
                    issuer: f.issuer.clone(),
                    jwks: self.resolve(&f.jwks, 0..0, &format!("demo_as.federated.{client}.jwks"))?,
                    subject: f.subject.clone(),
                    audience: f.audience.clone().unwrap_or_else(|| FEDERATED_AUDIENCE.to_string()),
                };
                Ok((client.clone(), credential))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(DemoAsConfig { listen, dpop_nonce: d.dpop_nonce, tls: d.tls, user, redirect_uris, federated })
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
            Some(d) => Some(self.demo_as(d, remote)?),
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
        let allow_users = std::sync::Arc::new(self.allow_users(&p.allow_users)?);
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
        // Parsed into origins once (RFC 6454 §6.1 serialization): `https://App.example/` is
        // `https://app.example`, and every comparison is between normalized origins.
        let allow_origins = p
            .allow_origins
            .iter()
            .map(|o| {
                crate::urlnorm::normalize_origin(o.get_ref()).ok_or_else(|| {
                    self.err(
                        o.span(),
                        "proxy.allow_origins",
                        format!(
                            "{:?} is not an origin; write scheme://host[:port] with no path, like \"http://localhost:3000\"",
                            o.get_ref()
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            path: self.path.to_path_buf(),
            dir: self.dir(),
            listen,
            listen_tls,
            forward,
            unknown_hosts: p.unknown_hosts.unwrap_or_default(),
            ca_cert: self.resolve(p.ca_cert.as_deref().unwrap_or("certs/ca.pem"), 0..0, "proxy.ca_cert")?,
            ca_key: self.resolve(p.ca_key.as_deref().unwrap_or("certs/ca-key.pem"), 0..0, "proxy.ca_key")?,
            ca_named: p.ca_cert.is_some() || p.ca_key.is_some(),
            max_body,
            allow_origins,
            allow_remote: remote,
            exchanges: p.exchanges.unwrap_or(200),
            max_connections,
            allow_users,
            env_secrets: Vec::new(),
            demo_as,
            routes,
        })
    }

    /// `[proxy] allow_users`: names resolved through the user database now (at every load, so
    /// a reload sees a new user), uids taken as they are (a container's uid may have no name
    /// on the host).
    fn allow_users(&self, list: &[Spanned<raw::RawUser>]) -> Result<crate::peer::AllowUsers, ConfigError> {
        use crate::peer::{AllowUsers, User};
        const KEY: &str = "proxy.allow_users";
        let mut users = Vec::new();
        for entry in list {
            let user = match entry.get_ref() {
                raw::RawUser::Name(n) if n == "*" => {
                    if list.len() > 1 {
                        return Err(self.err(
                            entry.span(),
                            KEY,
                            "\"*\" lets every local user in; list it alone, or list the users instead",
                        ));
                    }
                    return Ok(AllowUsers::any());
                }
                raw::RawUser::Name(n) => match crate::peer::uid_of(n) {
                    Ok(Some(uid)) => User { uid, name: Some(n.clone()) },
                    Ok(None) => {
                        return Err(self.err(
                            entry.span(),
                            KEY,
                            format!("no local user is named {n:?} (`getent passwd {n}` finds none); check the spelling, or give the uid, like 1001"),
                        ))
                    }
                    Err(e) => {
                        return Err(self.err(entry.span(), KEY, format!("cannot look up user {n:?}: {e}; give the uid instead")))
                    }
                },
                raw::RawUser::Uid(uid) => match u32::try_from(*uid) {
                    Ok(uid) if uid != u32::MAX => User::from_uid(uid),
                    _ => {
                        return Err(self.err(
                            entry.span(),
                            KEY,
                            format!("{uid} is not a uid (0 to 4294967294); `id -u NAME` prints one"),
                        ))
                    }
                },
            };
            users.push(user);
        }
        Ok(AllowUsers::listed(users))
    }

    fn route(&self, name: &str, spanned: Spanned<RawRoute>) -> Result<RouteConfig, ConfigError> {
        let span = spanned.span();
        let r = spanned.into_inner();
        let key = |k: &str| format!("routes.{name}.{k}");

        super::charset::route_name(name).map_err(|why| self.err(span.clone(), &format!("routes.{name}"), why))?;
        let prefix = r.prefix.get_ref().trim_end_matches('/').to_string();
        if let Err(why) = super::charset::path(r.prefix.get_ref()).and_then(|()| super::charset::path(&prefix)) {
            return Err(self.err(r.prefix.span(), &key("prefix"), why));
        }
        if !prefix.starts_with('/') || prefix.contains(['?', '#']) {
            return Err(self.err(
                r.prefix.span(),
                &key("prefix"),
                format!("{:?} must be a path that starts with '/', like \"/{name}\"", r.prefix.get_ref()),
            ));
        }
        let issuer = r.issuer.as_ref().map(|s| s.get_ref().clone());
        // RFC 8414 §2: an https URL without query or fragment (http only to this machine).
        let issuer_url = r.issuer.as_ref().map(|i| self.upstream(i, &key("issuer"))).transpose()?;
        let upstream = match (&r.upstream, issuer_url) {
            (Some(u), _) => self.upstream(u, &key("upstream"))?,
            // An issuer alone is enough: its origin is the upstream, endpoints come from metadata.
            (None, Some(i)) => i.origin_only(),
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
                if let Some(why) = list.iter().find_map(|e| super::charset::path(e).err()) {
                    return Err(self.err(span, &key("endpoints"), why));
                }
                list
            }
            // Without metadata, a vendor preset's own token path under the issuer (what its
            // starter config's comment shows), when the upstream is the issuer's origin.
            None => match (preset, &r.upstream, issuer.as_deref()) {
                (Some(p), None, Some(i)) => vec![p.token_path(i)],
                _ => vec!["/token".to_string()],
            },
        };
        let hosts = match &r.hosts {
            None => vec![HostEntry { host: upstream.host.clone(), port: None }],
            Some(list) => list
                .iter()
                .map(|entry| {
                    let parsed = HostEntry::parse(entry).ok_or_else(|| {
                        self.err(
                            span.clone(),
                            &key("hosts"),
                            format!(
                                "{entry:?} is not a host name, IP address or host:port like \"as.example.com:8443\""
                            ),
                        )
                    })?;
                    parsed
                        .check_claimable()
                        .map_err(|why| self.err(span.clone(), &key("hosts"), format!("{entry:?}: {why}")))?;
                    Ok(parsed)
                })
                .collect::<Result<_, _>>()?,
        };
        let client = r.client.map(|c| self.client(name, c, issuer.is_some(), preset)).transpose()?;
        let mut dpop = r.dpop.map(|d| self.dpop(name, d)).transpose()?;
        let mtls = match r.mtls {
            Some(m) => {
                let m = m.into_inner();
                Some(MtlsConfig {
                    cert: self.resolve(&m.cert, span.clone(), &key("mtls.cert"))?,
                    key: self.resolve(&m.key, span.clone(), &key("mtls.key"))?,
                })
            }
            None => None,
        };
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
            trust: r.trust.iter().map(|t| self.resolve(t, span.clone(), &key("trust"))).collect::<Result<_, _>>()?,
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
        super::charset::no_control(s.get_ref()).map_err(|why| self.err(s.span(), key, why))?;
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
        let d = humantime::parse_duration(s.get_ref()).map_err(|e| {
            // Our words, not humantime's ("expected number at 0").
            use humantime::DurationError as E;
            let why = match e {
                E::Empty => "it is empty".to_string(),
                E::UnknownUnit { unit, .. } => format!("unknown unit {unit:?} (use ms, s, m or h)"),
                E::NumberOverflow => "it is too long".to_string(),
                E::InvalidCharacter(_) | E::NumberExpected(_) => "write a number, then a unit: ms, s, m or h".into(),
            };
            self.err(s.span(), key, format!("{:?} is not a duration like \"10s\" or \"500ms\": {why}", s.get_ref()))
        })?;
        if d.is_zero() {
            return Err(self.err(
                s.span(),
                key,
                format!("{:?} is zero; use a duration like \"10s\" or \"500ms\"", s.get_ref()),
            ));
        }
        Ok(d)
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
        let assertion = match c.assertion {
            Some(a) => Some(self.assertion(route, a, auth, c.key.is_some())?),
            None => None,
        };
        let needs_key = auth == AuthMethod::PrivateKeyJwt && assertion.is_none();
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
            key: c.key.as_deref().map(|k| self.resolve(k, span.clone(), &key("key"))).transpose()?,
            create: c.create,
            secret,
            alg,
            audience,
            lifetime,
            kid: c.kid,
            typ: c.typ.or_else(|| preset.and_then(Preset::typ).map(str::to_string)),
            cert: c.cert.as_deref().map(|p| self.resolve(p, span.clone(), &key("cert"))).transpose()?,
            nbf: preset == Some(Preset::Entra),
            assertion,
        })
    }

    /// `client.assertion`: exactly one of `file` and `command`, with `auth = "private_key_jwt"`
    /// and no `key` (the assertion is made elsewhere; RFC 7523 §2.2).
    fn assertion(
        &self,
        route: &str,
        spanned: Spanned<raw::RawAssertion>,
        auth: AuthMethod,
        has_key: bool,
    ) -> Result<AssertionSource, ConfigError> {
        let span = spanned.span();
        let a = spanned.into_inner();
        let key = format!("routes.{route}.client.assertion");
        if auth != AuthMethod::PrivateKeyJwt {
            return Err(self.err(
                span,
                &key,
                format!(
                    "an assertion made elsewhere is sent with auth = \"private_key_jwt\" (RFC 7523 §2.2), not {:?}",
                    auth.as_str()
                ),
            ));
        }
        if has_key {
            return Err(self.err(
                span,
                &key,
                "set either key (tokenrelay signs the assertion) or assertion (it is made elsewhere), not both",
            ));
        }
        let timeout = match &a.timeout {
            Some(t) => self.duration(t, &format!("{key}.timeout"))?,
            None => DEFAULT_TIMEOUT,
        };
        match (a.file, a.command) {
            (Some(file), None) if !file.is_empty() => {
                Ok(AssertionSource::File(self.resolve(&file, span.clone(), &format!("{key}.file"))?))
            }
            (None, Some(argv)) if argv.first().is_some_and(|p| !p.is_empty()) => {
                Ok(AssertionSource::Command { argv, timeout })
            }
            (None, Some(_)) => Err(self.err(
                span,
                &key,
                "command is empty: name the program and its arguments, e.g. command = [\"gcloud\", \"auth\", \"print-identity-token\"]",
            )),
            _ => Err(self.err(
                span,
                &key,
                "set exactly one of file = \"path/to/token\" and command = [\"program\", \"arg\", ...]",
            )),
        }
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
        let answer_bearer = match &d.token_type {
            None => false,
            Some(t) if t.get_ref().eq_ignore_ascii_case("bearer") => true,
            Some(t) if t.get_ref().eq_ignore_ascii_case("dpop") => false,
            Some(t) => {
                return Err(self.err(
                    t.span(),
                    &format!("routes.{route}.dpop.token_type"),
                    format!("{:?} is not a token_type tokenrelay can answer with; use \"Bearer\" (or leave it out for the AS's own)", t.get_ref()),
                ))
            }
        };
        if answer_bearer && d.upgrade_bearer == Some(false) {
            return Err(self.err(
                d.token_type.as_ref().map(Spanned::span).unwrap_or(0..0),
                &format!("routes.{route}.dpop.token_type"),
                "token_type = \"Bearer\" needs upgrade_bearer = true: the app will call APIs with Bearer, which only the upgrade turns into DPoP",
            ));
        }
        Ok(DpopConfig {
            key: self.resolve(&d.key, 0..0, &format!("routes.{route}.dpop.key"))?,
            alg,
            create: d.create,
            upgrade_bearer: d.upgrade_bearer.unwrap_or(true),
            require_bound: d.require_bound,
            answer_bearer,
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
            // RFC 9110 §7.6.1 / RFC 9112 §6: framing and connection headers are the proxy's own.
            if is_framing(&n) {
                return Err(self.err(
                    span.clone(),
                    &format!("{key}.set"),
                    format!("{name:?} cannot be set by a header rule: it frames the message or the connection (RFC 9110 §7.6.1)"),
                ));
            }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn closest_name_is_a_typo_away_or_none() {
        let names: Vec<String> = ["listen", "listen_tls", "forward"].iter().map(|s| s.to_string()).collect();
        assert_eq!(strsim::levenshtein("lisen", "listen"), 1);
        assert_eq!(closest("lisen", &names), Some("listen"));
        assert_eq!(closest("Forwrd", &names), Some("forward"));
        assert_eq!(closest("zzzzzzz", &names), None);
    }

    #[test]
    fn duration_errors_are_in_our_words() {
        let text = "[routes.demo]\nprefix = \"/demo\"\nupstream = \"https://as.example\"\ntimeout = \"ten\"\n";
        let err = parse(text, Path::new("/x/proxy.toml")).unwrap_err().to_string();
        assert_eq!(
            err,
            "/x/proxy.toml:4:11: routes.demo.timeout: \"ten\" is not a duration like \"10s\" or \"500ms\": write a number, then a unit: ms, s, m or h"
        );
    }
}
