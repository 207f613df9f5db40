//! The demo AS's HTTPS side: the server TLS configuration and a client-certificate verifier
//! that requests, but does not require or validate, a client certificate.
//!
//! RFC 8705 §2: the AS asks for a client certificate in the handshake and decides per client,
//! after the handshake, what it must match (`tls_client_auth`, §2.1, or
//! `self_signed_tls_client_auth`, §2.2); that matching lives in `verify`.

use std::sync::Arc;

/// Accepts any client certificate in the handshake (or none): the demo AS decides per
/// client what it requires, as an AS supporting both RFC 8705 methods must (RFC 8705 §2).
/// Handshake signatures are still checked, so the client proves it holds the key.
#[derive(Debug)]
struct AnyClientCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::server::danger::ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why the demo AS cannot serve HTTPS.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("demo AS CA {}: {source} (run `tokenrelay init` to create it)", path.display())]
    ReadCa { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot issue the demo AS's server certificate: {0}")]
    Leaf(#[source] crate::pki::PkiError),
    #[error("the demo AS's server certificate does not load: {0}")]
    Pem(#[source] rustls::pki_types::pem::Error),
    #[error("demo AS TLS settings: {0}")]
    Rustls(#[source] rustls::Error),
}

/// The server configuration for `[demo_as] tls = true`: a fresh leaf for `localhost`,
/// `127.0.0.1` and `::1` issued by the demo AS CA (`certs/demo-as-ca.pem`), HTTP/1.1 over
/// ALPN, and [`AnyClientCert`] so RFC 8705 clients can present their certificate.
pub(super) fn server_config(config: &crate::config::Config) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = crate::provision::demo_as_ca_paths(config);
    let read = |path: &std::path::Path| {
        crate::config::file::read_to_string(path, crate::config::file::SMALL_CAP)
            .map_err(|source| TlsSetupError::ReadCa { path: path.to_path_buf(), source })
    };
    let ca = crate::pki::Minted { cert_pem: read(&cert)?, key_pem: crate::redact::Secret::new(read(&key)?) };
    let leaf = crate::pki::issue_leaf(&ca, &["localhost", "127.0.0.1", "::1"], crate::pki::LeafUse::Server, 30)
        .map_err(TlsSetupError::Leaf)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(TlsSetupError::Pem)?;
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.expose().as_bytes()).map_err(TlsSetupError::Pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Rustls)?
        .with_client_cert_verifier(Arc::new(AnyClientCert(provider)))
        .with_single_cert(chain, key)
        .map_err(TlsSetupError::Rustls)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}
