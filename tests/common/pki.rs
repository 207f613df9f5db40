//! The test PKI, made with rcgen at test time and independent of `tokenrelay::pki` (the code
//! under test): CAs, intermediates, server and client certificates.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

/// A certificate authority: a root, or an intermediate issued by one.
pub struct TestCa {
    pub cert_pem: String,
    pub key_pem: String,
    /// What a peer sends after a leaf this CA issued (RFC 8446 §4.4.2: the root may be left
    /// out): nothing for a root, this CA's certificate for an intermediate.
    sent_with_leaf: String,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

/// A certificate and its key.
pub struct Cert {
    /// The certificate alone.
    pub cert_pem: String,
    /// The certificate and its intermediate, if any: what a server or an mTLS client sends.
    pub chain_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl TestCa {
    /// A root CA named `CN=<cn>`.
    pub fn new(cn: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(cn, BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let key_pem = key.serialize_pem();
        TestCa { cert_pem: cert.pem(), key_pem, sent_with_leaf: String::new(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// An intermediate CA issued by this one; it may issue leaves only.
    pub fn intermediate(&self, cn: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(cn, BasicConstraints::Constrained(0));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key_pem = key.serialize_pem();
        TestCa { cert_pem: cert.pem(), key_pem, sent_with_leaf: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// A server certificate for `names` (DNS names or IP literals; the first is the CN).
    pub fn server(&self, names: &[&str]) -> Cert {
        let params = leaf_params(names[0], names, ExtendedKeyUsagePurpose::ServerAuth);
        self.issue(params)
    }

    /// A client certificate with subject `CN=<cn>` (RFC 8705 §2.1 `tls_client_auth`).
    pub fn client(&self, cn: &str) -> Cert {
        self.issue(leaf_params(cn, &[], ExtendedKeyUsagePurpose::ClientAuth))
    }

    /// Writes the CA certificate (what a peer must trust) to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.cert_pem).unwrap();
    }

    fn issue(&self, params: CertificateParams) -> Cert {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Cert {
            chain_pem: format!("{}{}", cert.pem(), self.sent_with_leaf),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

impl Cert {
    /// Writes `<name>-cert.pem` (the chain) and `<name>-key.pem` (0600) into `dir`: the files
    /// a `[routes.X.mtls]` table names.
    pub fn write(&self, dir: &Path, name: &str) {
        std::fs::write(dir.join(format!("{name}-cert.pem")), &self.chain_pem).unwrap();
        tokenrelay::keys::write_private(&dir.join(format!("{name}-key.pem")), self.key_pem.as_bytes()).unwrap();
    }
}

/// A self-signed client certificate (RFC 8705 §2.2 `self_signed_tls_client_auth`).
pub fn self_signed_client(cn: &str) -> Cert {
    let params = leaf_params(cn, &[], ExtendedKeyUsagePurpose::ClientAuth);
    self_signed(params)
}

/// A self-signed client certificate valid from `not_before` to `not_after`.
pub fn self_signed_client_valid(cn: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Cert {
    let mut params = leaf_params(cn, &[], ExtendedKeyUsagePurpose::ClientAuth);
    params.not_before = not_before;
    params.not_after = not_after;
    self_signed(params)
}

/// A self-signed certificate for an existing private key (PKCS#8 PEM; RSA, EC or Ed25519),
/// as registered with ASes that identify a client key by its certificate (Entra).
pub fn self_signed_for_key(cn: &str, key_pem: &str) -> Cert {
    let key = KeyPair::from_pem(key_pem).unwrap();
    let cert = leaf_params(cn, &[], ExtendedKeyUsagePurpose::ClientAuth).self_signed(&key).unwrap();
    Cert { chain_pem: cert.pem(), cert_pem: cert.pem(), key_pem: key_pem.to_string(), der: cert.der().to_vec() }
}

/// The DER of the first certificate in `pem`.
pub fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

fn self_signed(params: CertificateParams) -> Cert {
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Cert { chain_pem: cert.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
}

fn ca_params(cn: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn leaf_params(cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::ExplicitNoCa;
    // RFC 5280 §4.2.1.1: strict verifiers (Python 3.13's VERIFY_X509_STRICT) want the AKI.
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}
