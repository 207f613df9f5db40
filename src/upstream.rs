//! The upstream side: rustls client configs and pooled hyper clients, one per route identity.
//!
//! Server certificates are always verified against the system roots plus the route's `trust`
//! files; there is no switch to turn verification off (FAPI 2.0 §5.2.1). A route with
//! `[mtls]` gets its own client, so a pooled connection never carries another identity
//! (RFC 8705 §3: tokens bind to the certificate presented); a reload that changes the certificate builds a new client and pool.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;

/// The pooled HTTP(S) client a route sends through.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why a TLS client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("trust file {path:?}: {reason}")]
    Trust { path: PathBuf, reason: String },
    #[error("client certificate: {0}")]
    Identity(String),
}

/// System roots, loaded once per process (reading them takes milliseconds, not microseconds).
fn native_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for e in &loaded.errors {
            tracing::debug!("system root store: {e}");
        }
        loaded.certs
    })
}

/// Reads every certificate in a PEM file (a trust bundle: at most
/// [`crate::config::file::BUNDLE_CAP`]).
pub fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = crate::config::file::read(path, crate::config::file::BUNDLE_CAP).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "file not found".to_string(),
        _ => format!("cannot read: {e}"),
    })?;
    parse_certs(&bytes)
}

/// The PEM certificates in `bytes` (at least one).
pub fn parse_certs(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found (expected PEM certificates)".into());
    }
    Ok(certs)
}

/// A rustls client config: system roots + `trust` files, optional client identity.
pub fn tls_config(
    trust: &[PathBuf],
    identity: Option<(Vec<CertificateDer<'static>>, Arc<dyn rustls::sign::SigningKey>)>,
) -> Result<rustls::ClientConfig, TlsError> {
    tls_config_with(trust, identity, read_certs)
}

/// [`tls_config`], reading each `trust` file with `read` (a config being validated may trust
/// a CA that is made in memory and not written yet).
pub fn tls_config_with(
    trust: &[PathBuf],
    identity: Option<(Vec<CertificateDer<'static>>, Arc<dyn rustls::sign::SigningKey>)>,
    read: impl Fn(&std::path::Path) -> Result<Vec<CertificateDer<'static>>, String>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let _ = roots.add_parsable_certificates(native_roots().iter().cloned());
    for path in trust {
        let certs = read(path).map_err(|reason| TlsError::Trust { path: path.clone(), reason })?;
        for cert in certs {
            roots.add(cert).map_err(|e| TlsError::Trust {
                path: path.clone(),
                reason: format!("not a usable CA certificate: {e}"),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Identity(e.to_string()))?
        .with_root_certificates(roots);
    let config = match identity {
        // The key may be on a PKCS#11 token: rustls signs through it (RFC 8705 §2).
        Some((chain, key)) => builder
            .with_client_cert_resolver(Arc::new(OneIdentity(Arc::new(rustls::sign::CertifiedKey::new(chain, key))))),
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// The one client certificate a route presents, whatever the server asks (the key and
/// certificate were checked to match at load).
#[derive(Debug)]
struct OneIdentity(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for OneIdentity {
    fn resolve(
        &self,
        _issuers: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A pooled client over `tls`. Redirects are never followed (RFC 9700 §4.12): the legacy
/// client does not follow them, and nothing here adds a layer that would.
pub fn client(tls: rustls::ClientConfig) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .build(https)
}

/// Where a route spells the URLs of its AS, so that advice which changes one URL names every
/// field that must change with it: `upstream` and `issuer` when they share the origin, and
/// `trust` for the AS's CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteUrls {
    pub route: String,
    /// `routes.NAME.upstream` as configured (origin and base path).
    pub upstream: String,
    pub issuer: Option<String>,
    /// Whether `routes.NAME.trust` names any file.
    pub trust: bool,
}

impl RouteUrls {
    pub fn new(route: &str, upstream: String, issuer: Option<String>, trust: bool) -> RouteUrls {
        RouteUrls { route: route.to_string(), upstream, issuer, trust }
    }

    /// The fields (`upstream`, `issuer`) that spell `url`'s origin over plain `http://`, each
    /// with its `https://` value. Fields already on `https://` (or on another origin) are not
    /// named: advice follows what the config says now.
    pub fn https_changes(&self, url: &str) -> Vec<(&'static str, String)> {
        let Some(origin) = http_origin(url) else { return Vec::new() };
        [("upstream", Some(&self.upstream)), ("issuer", self.issuer.as_ref())]
            .into_iter()
            .filter_map(|(field, value)| {
                let value = value?;
                (http_origin(value).as_ref() == Some(&origin)).then(|| (field, format!("https{}", &value[4..])))
            })
            .collect()
    }
}

/// The origin of an `http://` URL (lower-case, default port explicit), `None` for anything else.
fn http_origin(url: &str) -> Option<(String, u16)> {
    let u = url::Url::parse(url).ok()?;
    (u.scheme() == "http").then_some(())?;
    Some((u.host_str()?.to_ascii_lowercase(), u.port_or_known_default()?))
}

/// What `routes.NAME.trust` must become for an AS moving to TLS, as [`https_advice`] takes
/// it: a placeholder when it names nothing yet, `None` (keep it, with the AS's CA) otherwise.
pub fn trust_value(trust_set: bool) -> Option<&'static str> {
    (!trust_set).then_some("\"<the AS's CA certificate, PEM>\"")
}

/// `routes.demo.upstream = "https://…", routes.demo.issuer = "https://…" and
/// routes.demo.trust = [...]`: every field that changes when an AS moves to TLS. `trust` is
/// the new `trust` entry, or `None` when the route's `trust` stays (holding the AS's CA).
pub fn https_advice(route: &str, changes: &[(&'static str, String)], trust: Option<&str>) -> String {
    let mut parts: Vec<String> =
        changes.iter().map(|(field, value)| format!("routes.{route}.{field} = {value:?}")).collect();
    parts.push(match trust {
        Some(value) => format!("routes.{route}.trust = [{value}]"),
        None => format!("routes.{route}.trust (with the AS's CA among its files)"),
    });
    let last = parts.pop().unwrap_or_default();
    if parts.is_empty() {
        last
    } else {
        format!("{} and {last}", parts.join(", "))
    }
}

/// Why an upstream request failed, classified from the client error's source chain by type
/// (`rustls::Error`, `std::io::ErrorKind`), never by its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error(
        "upstream {url}: TLS certificate not trusted ({reason}); add the AS's CA certificate (PEM) to routes.{route}.trust"
    )]
    Untrusted { url: String, route: String, reason: String },
    #[error("upstream {url}: TLS certificate does not match the host name ({reason})")]
    WrongName { url: String, route: String, reason: String },
    #[error("upstream {url}: the AS refused our client certificate ({reason}); check routes.{route}.mtls and what the AS trusts")]
    ClientCertRefused { url: String, route: String, reason: String },
    #[error("upstream {url} unreachable: connection refused (is the authorization server running?)")]
    Refused { url: String, route: String },
    /// A TLS server answered a plain-HTTP request. `changes` are the route's fields that spell
    /// this origin over `http://` now, with their `https://` values.
    #[error("upstream {url} did not answer in HTTP: it speaks TLS; use {}", NotHttpFix { route, changes, trust: *trust })]
    NotHttp { url: String, route: String, changes: Vec<(&'static str, String)>, trust: bool },
    /// The answer started but could not be read to its end.
    #[error("upstream {url}: reading the answer failed: {reason}")]
    Unreadable { url: String, reason: String },
    #[error("upstream {url} failed: {chain}")]
    Other { url: String, chain: String },
}

/// The fix of [`UpstreamError::NotHttp`], naming every field that changes together.
struct NotHttpFix<'a> {
    route: &'a str,
    changes: &'a [(&'static str, String)],
    trust: bool,
}

impl std::fmt::Display for NotHttpFix<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let route = self.route;
        if self.changes.is_empty() {
            return write!(f, "an https:// URL for it (and routes.{route}.trust for its CA)");
        }
        f.write_str(&https_advice(route, self.changes, trust_value(self.trust)))
    }
}

impl UpstreamError {
    /// The URL the failed request was for.
    pub fn url(&self) -> &str {
        match self {
            UpstreamError::Untrusted { url, .. }
            | UpstreamError::WrongName { url, .. }
            | UpstreamError::ClientCertRefused { url, .. }
            | UpstreamError::Refused { url, .. }
            | UpstreamError::NotHttp { url, .. }
            | UpstreamError::Unreadable { url, .. }
            | UpstreamError::Other { url, .. } => url,
        }
    }
}

/// The TLS or I/O cause somewhere in `err`'s source chain. `io::Error` hides a wrapped
/// error from `source()`, so its inner error is looked at explicitly.
fn cause<'a>(err: &'a (dyn std::error::Error + 'static)) -> (Option<&'a rustls::Error>, Option<std::io::ErrorKind>) {
    let mut kind = None;
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return (Some(tls), kind);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            kind = Some(io.kind());
            // io::Error wraps (possibly another io::Error wrapping) the TLS error.
            if let Some(inner) = io.get_ref() {
                cur = Some(inner as &(dyn std::error::Error + 'static));
                continue;
            }
        }
        cur = e.source();
    }
    (None, kind)
}

/// Classifies a client error for `url` on the route whose URLs are `urls`.
pub fn classify(err: &(dyn std::error::Error + 'static), url: &str, urls: &RouteUrls) -> UpstreamError {
    use rustls::CertificateError as C;
    let (url, route) = (url.to_string(), urls.route.clone());
    let (tls, io) = cause(err);
    if let Some(tls) = tls {
        let reason = tls.to_string();
        return match tls {
            rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                UpstreamError::WrongName { url, route, reason }
            }
            rustls::Error::InvalidCertificate(_) => UpstreamError::Untrusted { url, route, reason },
            rustls::Error::AlertReceived(
                rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::UnknownCA
                | rustls::AlertDescription::CertificateRequired
                | rustls::AlertDescription::CertificateUnknown
                | rustls::AlertDescription::AccessDenied,
            ) => UpstreamError::ClientCertRefused { url, route, reason },
            _ => UpstreamError::Other { url, chain: reason },
        };
    }
    if io == Some(std::io::ErrorKind::ConnectionRefused) {
        return UpstreamError::Refused { url, route };
    }
    // A TLS server answering a plain-HTTP request sends bytes hyper cannot parse as HTTP.
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_parse) && url.starts_with("http://") {
            let changes = urls.https_changes(&url);
            return UpstreamError::NotHttp { url, route, changes, trust: urls.trust };
        }
        cur = e.source();
    }
    let mut chain = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        chain.push(e.to_string());
        cur = e.source();
    }
    UpstreamError::Other { url, chain: chain.join(": ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_found_by_type_through_io_wrappers() {
        // What hyper-rustls hands over: io::Error(Other, io::Error(InvalidData, rustls::Error)).
        let unknown = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        let e = classify(&unknown, "https://as/token", &RouteUrls::new("demo", "https://as".into(), None, false));
        assert!(matches!(e, UpstreamError::Untrusted { .. }), "{e:?}");
        assert!(e.to_string().contains("routes.demo.trust"), "{e}");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let r = RouteUrls::new("r", "http://x".into(), None, false);
        assert_eq!(
            classify(&refused, "http://x", &r),
            UpstreamError::Refused { url: "http://x".into(), route: "r".into() }
        );
        let name = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        assert!(matches!(classify(&name, "u", &r), UpstreamError::WrongName { .. }));
    }

    /// Advice that moves an AS to TLS names every field on that origin still on `http://`,
    /// and only those: once `upstream` is fixed, only `issuer` is named.
    #[test]
    fn https_advice_names_every_field_that_spells_the_origin() {
        let both = RouteUrls::new("demo", "http://127.0.0.1:9443".into(), Some("http://127.0.0.1:9443".into()), false);
        let changes = both.https_changes("http://127.0.0.1:9443/token");
        assert_eq!(
            changes,
            [("upstream", "https://127.0.0.1:9443".to_string()), ("issuer", "https://127.0.0.1:9443".to_string())]
        );
        let text = UpstreamError::NotHttp {
            url: "http://127.0.0.1:9443/token".into(),
            route: "demo".into(),
            changes,
            trust: false,
        }
        .to_string();
        for field in [
            "routes.demo.upstream = \"https://127.0.0.1:9443\"",
            "routes.demo.issuer = \"https://127.0.0.1:9443\"",
            "routes.demo.trust",
        ] {
            assert!(text.contains(field), "{field} missing: {text}");
        }
        let upstream_fixed =
            RouteUrls::new("demo", "https://127.0.0.1:9443".into(), Some("http://127.0.0.1:9443".into()), true);
        let changes = upstream_fixed.https_changes("http://127.0.0.1:9443/.well-known/openid-configuration");
        assert_eq!(changes, [("issuer", "https://127.0.0.1:9443".to_string())]);
        let fixed =
            RouteUrls::new("demo", "https://127.0.0.1:9443".into(), Some("https://127.0.0.1:9443".into()), true);
        assert!(fixed.https_changes("http://127.0.0.1:9443/token").is_empty());
        let other_origin =
            RouteUrls::new("demo", "http://localhost:9443".into(), Some("http://127.0.0.1:8080".into()), false);
        assert_eq!(other_origin.https_changes("http://LOCALHOST:9443/token").len(), 1);
    }
}
