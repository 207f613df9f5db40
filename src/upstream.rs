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

/// Reads every certificate in a PEM file.
pub fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "file not found".to_string(),
        _ => format!("cannot read: {e}"),
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
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
    let mut roots = rustls::RootCertStore::empty();
    let _ = roots.add_parsable_certificates(native_roots().iter().cloned());
    for path in trust {
        let certs = read_certs(path).map_err(|reason| TlsError::Trust { path: path.clone(), reason })?;
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

/// Why an upstream request failed, classified from the client error's source chain by type
/// (`rustls::Error`, `std::io::ErrorKind`), never by its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error(
        "upstream {url}: TLS certificate not trusted ({reason}); add the AS's CA certificate (PEM) to routes.{route}.trust"
    )]
    Untrusted { url: String, route: String, reason: String },
    #[error("upstream {url}: TLS certificate does not match the host name ({reason})")]
    WrongName { url: String, reason: String },
    #[error("upstream {url}: the AS refused our client certificate ({reason}); check routes.{route}.mtls and what the AS trusts")]
    ClientCertRefused { url: String, route: String, reason: String },
    #[error("upstream {url} unreachable: connection refused (is the authorization server running?)")]
    Refused { url: String },
    #[error("upstream {url} did not answer in HTTP: does it speak TLS? use https:// in routes.{route}.upstream (and routes.{route}.trust for its CA)")]
    NotHttp { url: String, route: String },
    #[error("upstream {url} failed: {chain}")]
    Other { url: String, chain: String },
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

/// Classifies a client error for `url` on route `route`.
pub fn classify(err: &(dyn std::error::Error + 'static), url: &str, route: &str) -> UpstreamError {
    use rustls::CertificateError as C;
    let (url, route) = (url.to_string(), route.to_string());
    let (tls, io) = cause(err);
    if let Some(tls) = tls {
        let reason = tls.to_string();
        return match tls {
            rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                UpstreamError::WrongName { url, reason }
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
        return UpstreamError::Refused { url };
    }
    // A TLS server answering a plain-HTTP request sends bytes hyper cannot parse as HTTP.
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_parse) && url.starts_with("http://") {
            return UpstreamError::NotHttp { url, route };
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

/// Turns a client error into a sentence a user can act on.
pub fn describe_error(err: &(dyn std::error::Error + 'static), url: &str, route: &str) -> String {
    classify(err, url, route).to_string()
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
        let e = classify(&unknown, "https://as/token", "demo");
        assert!(matches!(e, UpstreamError::Untrusted { .. }), "{e:?}");
        assert!(e.to_string().contains("routes.demo.trust"), "{e}");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&refused, "http://x", "r"), UpstreamError::Refused { url: "http://x".into() });
        let name = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        assert!(matches!(classify(&name, "u", "r"), UpstreamError::WrongName { .. }));
    }
}
