//! X.509: the one module that touches `rcgen`. Loads mTLS identities (RFC 8705) and mints
//! the certificates tokenrelay needs: a local CA, server leaves, client certificates.
//!
//! rustls refuses a CA certificate as a server's end-entity certificate, so every server
//! certificate here is a leaf issued by a CA, never the CA itself.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

use crate::config::MtlsConfig;
use crate::keys::{self, KeyRef};
use crate::snapshot::BuildError;

/// A client certificate chain (leaf first) and its private key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Loads `[routes.X.mtls]`, checking that key and certificate belong together and warning
/// about expired or not-yet-valid certificates and loose key permissions.
pub fn load_identity(route: &str, m: &MtlsConfig, warnings: &mut Vec<String>) -> Result<Identity, BuildError> {
    let cert_at = KeyRef { route, field: "mtls.cert", path: &m.cert };
    let key_at = KeyRef { route, field: "mtls.key", path: &m.key };
    let cert_bytes = keys::read(&cert_at)?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_bytes.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| cert_at.error(format!("not a PEM certificate file: {e}")))?;
    if chain.is_empty() {
        return Err(cert_at
            .error("no CERTIFICATE block found (expected the client certificate in PEM, leaf first)")
            .into());
    }
    let key_bytes = keys::read(&key_at)?;
    let key = match rustls_pemfile::read_one(&mut key_bytes.as_slice()) {
        Ok(Some(rustls_pemfile::Item::Pkcs8Key(k))) => PrivateKeyDer::Pkcs8(k),
        Ok(Some(rustls_pemfile::Item::Sec1Key(k))) => PrivateKeyDer::Sec1(k),
        Ok(Some(rustls_pemfile::Item::Pkcs1Key(k))) => PrivateKeyDer::Pkcs1(k),
        Ok(Some(rustls_pemfile::Item::X509Certificate(_))) => {
            return Err(key_at.error("holds a certificate, not a private key (are cert and key swapped?)").into());
        }
        Ok(Some(_)) => return Err(key_at.error("holds a public key or CSR; mtls.key needs the private key").into()),
        Ok(None) | Err(_) => return Err(key_at.error("not a PEM private key (PKCS#8, SEC1 or PKCS#1)").into()),
    };
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| key_at.error(format!("unsupported private key: {e}")))?;
    rustls::sign::CertifiedKey::new(chain.clone(), signing).keys_match().map_err(|_| {
        cert_at.error(format!(
            "the certificate does not match mtls.key {:?} (different key pair)",
            m.key.display().to_string()
        ))
    })?;
    warnings.extend(keys::permission_warning(&m.key));
    if let Some(w) = validity_warning(&chain[0]) {
        warnings.push(format!("route {route:?}: mtls.cert {:?}: {w}", m.cert.display().to_string()));
    }
    Ok(Identity { chain, key })
}

/// "expired on ..." / "not valid until ..." for a certificate outside its validity window.
pub fn validity_warning(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let validity = cert.validity();
    if validity.not_after.timestamp() < now {
        return Some(format!(
            "certificate expired on {} (renew it; `tokenrelay init --force` makes a new one)",
            validity.not_after
        ));
    }
    if validity.not_before.timestamp() > now {
        return Some(format!("certificate is not valid until {}", validity.not_before));
    }
    None
}

/// A generated certificate and key, PEM-encoded.
pub struct Minted {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("certificate generation: {0}")]
pub struct PkiError(String);

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        PkiError(e.to_string())
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn window(params: &mut CertificateParams, days: i64) {
    // Backdated a little so clocks that disagree by a minute still accept it.
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
}

/// A CA certificate (for the local CA, or a test PKI).
pub fn generate_ca(cn: &str) -> Result<Minted, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    window(&mut params, 3650);
    let cert = params.self_signed(&key)?;
    Ok(Minted { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// An intermediate CA issued by `issuer`.
pub fn issue_intermediate(issuer: &Minted, cn: &str) -> Result<Minted, PkiError> {
    let (ca, ca_key) = reissue(issuer)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    window(&mut params, 3650);
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    Ok(Minted { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn reissue(issuer: &Minted) -> Result<(rcgen::Certificate, KeyPair), PkiError> {
    let key = KeyPair::from_pem(&issuer.key_pem)?;
    let params = CertificateParams::from_ca_cert_pem(&issuer.cert_pem)?;
    let cert = params.self_signed(&key)?;
    Ok((cert, key))
}

/// What a leaf is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafUse {
    Server,
    Client,
}

/// A leaf issued by `issuer` for `names` (DNS names or IP literals); the first is the CN.
pub fn issue_leaf(issuer: &Minted, names: &[&str], usage: LeafUse, days: i64) -> Result<Minted, PkiError> {
    let (ca, ca_key) = reissue(issuer)?;
    let key = KeyPair::generate()?;
    let params = leaf_params(names, usage, days)?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    Ok(Minted { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A self-signed client certificate (`self_signed_tls_client_auth`, RFC 8705 §2.2).
pub fn self_signed_client(cn: &str, days: i64) -> Result<Minted, PkiError> {
    let now = OffsetDateTime::now_utc();
    self_signed_client_window(cn, now - Duration::minutes(5), now + Duration::days(days))
}

/// A self-signed client certificate valid from `not_before` to `not_after` (tests use this
/// to make expired certificates).
pub fn self_signed_client_window(
    cn: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Minted, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = leaf_params(&[cn], LeafUse::Client, 1)?;
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.self_signed(&key)?;
    Ok(Minted { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn leaf_params(names: &[&str], usage: LeafUse, days: i64) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(names.first().copied().unwrap_or("tokenrelay"));
    for name in names {
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) if usage == LeafUse::Server => SanType::DnsName((*name).try_into()?),
            Err(_) => continue,
        };
        params.subject_alt_names.push(san);
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match usage {
        LeafUse::Server => ExtendedKeyUsagePurpose::ServerAuth,
        LeafUse::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    window(&mut params, days);
    Ok(params)
}

/// Is this DER certificate self-signed (issuer = subject, and the signature verifies)?
pub fn is_self_signed(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    cert.subject() == cert.issuer() && cert.verify_signature(None).is_ok()
}

/// The subject DN in RFC 4514 form, as `tls_client_auth_subject_dn` expects.
pub fn subject_dn(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.subject().to_string())
}

/// The public JWK (RFC 7517) of a certificate's key: EC P-256/P-384 or RSA.
pub fn public_jwk_of_cert(der: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use x509_parser::public_key::PublicKey;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut jwk = serde_json::Map::new();
    match cert.public_key().parsed().ok()? {
        PublicKey::EC(point) => {
            let data = point.data();
            let (crv, len) = match data.len() {
                65 => ("P-256", 32),
                97 => ("P-384", 48),
                _ => return None,
            };
            jwk.insert("kty".into(), "EC".into());
            jwk.insert("crv".into(), crv.into());
            jwk.insert("x".into(), URL_SAFE_NO_PAD.encode(&data[1..1 + len]).into());
            jwk.insert("y".into(), URL_SAFE_NO_PAD.encode(&data[1 + len..]).into());
        }
        PublicKey::RSA(rsa) => {
            let strip = |b: &[u8]| b.iter().skip_while(|x| **x == 0).copied().collect::<Vec<u8>>();
            jwk.insert("kty".into(), "RSA".into());
            jwk.insert("n".into(), URL_SAFE_NO_PAD.encode(strip(rsa.modulus)).into());
            jwk.insert("e".into(), URL_SAFE_NO_PAD.encode(strip(rsa.exponent)).into());
        }
        _ => return None,
    }
    Some(jwk)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ca_issues_leaf_and_self_signed_is_detected() {
        let ca = generate_ca("test ca").unwrap();
        let leaf = issue_leaf(&ca, &["localhost", "127.0.0.1"], LeafUse::Server, 1).unwrap();
        let der = rustls_pemfile::certs(&mut leaf.cert_pem.as_bytes()).next().unwrap().unwrap();
        assert!(!is_self_signed(&der));
        let ss = self_signed_client("app", 1).unwrap();
        let der = rustls_pemfile::certs(&mut ss.cert_pem.as_bytes()).next().unwrap().unwrap();
        assert!(is_self_signed(&der));
        assert_eq!(subject_dn(&der).unwrap(), "CN=app");
        assert!(validity_warning(&der).is_none());
    }
}
