//! X.509: the one module that touches `rcgen`. Mints the certificates tokenrelay needs (a
//! local CA, server leaves, client certificates) and inspects them (validity, subject DN,
//! public key).
//!
//! rustls refuses a CA certificate as a server's end-entity certificate, so every server
//! certificate here is a leaf issued by a CA, never the CA itself.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// "expired on ..." / "not valid until ..." for a certificate outside its validity window.
pub fn validity_warning(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let validity = cert.validity();
    if validity.not_after.timestamp() < now {
        return Some(format!(
            "certificate expired on {} (renew it; `tokenrelay init --only mtls` makes a new one)",
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
    /// The private key: redacted in `Debug`, wiped on drop.
    pub key_pem: crate::redact::Secret,
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
    Ok(Minted { cert_pem: cert_pem(&cert), key_pem: key_pem(&key) })
}

/// How long a local CA made by tokenrelay is valid: a year, so a forgotten trusted CA does
/// not stay trusted for a decade.
pub const LOCAL_CA_DAYS: i64 = 365;

/// tokenrelay's local CA (for `listen_tls` and forward mode): may sign leaves only (path length
/// 0), key usage `keyCertSign` + `cRLSign`, extended key usage `serverAuth`, valid
/// [`LOCAL_CA_DAYS`], and name-constrained
/// (RFC 5280 §4.2.1.10) to `permitted`: DNS names (each also covers its subdomains) and IP
/// literals. Loopback (`localhost`, `127.0.0.0/8`, `::1`) is always permitted. A stolen key can
/// then mint certificates for these names only, in every verifier that honours constraints on
/// a trust anchor (OpenSSL, rustls/webpki, Go, ...).
pub fn generate_local_ca(cn: &str, permitted: &[String]) -> Result<Minted, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // Verifiers that treat a CA's EKU as a constraint on its chain (OpenSSL, Windows, NSS)
    // then accept it for TLS servers only: no code signing, no client or email certificates.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let mut subtrees = vec![
        GeneralSubtree::DnsName("localhost".into()),
        GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([127, 0, 0, 0], 8)),
        GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(IpAddr::from(std::net::Ipv6Addr::LOCALHOST), 128)),
    ];
    for name in permitted {
        let subtree = match name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip @ IpAddr::V4(_)) => GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, 32)),
            Ok(ip @ IpAddr::V6(_)) => GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, 128)),
            Err(_) => GeneralSubtree::DnsName(name.to_ascii_lowercase()),
        };
        if !subtrees.contains(&subtree) {
            subtrees.push(subtree);
        }
    }
    params.name_constraints = Some(rcgen::NameConstraints { permitted_subtrees: subtrees, excluded_subtrees: vec![] });
    window(&mut params, LOCAL_CA_DAYS);
    let cert = params.self_signed(&key)?;
    Ok(Minted { cert_pem: cert_pem(&cert), key_pem: key_pem(&key) })
}

/// The name constraints of a CA certificate (RFC 5280 §4.2.1.10), as far as tokenrelay needs
/// them: DNS and IP subtrees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameConstraints {
    pub permitted_dns: Vec<String>,
    pub permitted_ip: Vec<(IpAddr, u8)>,
    pub excluded_dns: Vec<String>,
    pub excluded_ip: Vec<(IpAddr, u8)>,
}

impl NameConstraints {
    /// Would a leaf for `host` (a DNS name or IP literal) pass these constraints?
    pub fn permits(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        match host.parse::<IpAddr>() {
            Ok(ip) => {
                !self.excluded_ip.iter().any(|n| in_subnet(ip, *n))
                    && (self.permitted_ip.is_empty() || self.permitted_ip.iter().any(|n| in_subnet(ip, *n)))
            }
            Err(_) => {
                !self.excluded_dns.iter().any(|c| in_dns_subtree(&host, c))
                    && (self.permitted_dns.is_empty() || self.permitted_dns.iter().any(|c| in_dns_subtree(&host, c)))
            }
        }
    }

    /// The permitted subtrees, for messages: `localhost, 127.0.0.0/8, ::1/128, as.example.com`.
    pub fn describe(&self) -> String {
        let dns = self.permitted_dns.iter().cloned();
        let ip = self.permitted_ip.iter().map(|(ip, len)| format!("{ip}/{len}"));
        let all: Vec<String> = dns.chain(ip).collect();
        if all.is_empty() {
            "any name".into()
        } else {
            all.join(", ")
        }
    }
}

/// RFC 5280 §4.2.1.10: a DNS constraint matches the name itself and every name built by adding
/// labels on the left; a leading dot means subdomains only.
fn in_dns_subtree(host: &str, constraint: &str) -> bool {
    let c = constraint.to_ascii_lowercase();
    if c.is_empty() {
        return true;
    }
    if let Some(parent) = c.strip_prefix('.') {
        return host.ends_with(&format!(".{parent}"));
    }
    host == c || host.ends_with(&format!(".{c}"))
}

fn in_subnet(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Reads the name constraints of a CA certificate; `None` when it has none (any name).
pub fn name_constraints(der: &[u8]) -> Option<NameConstraints> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let split = |subtrees: &Option<Vec<x509_parser::extensions::GeneralSubtree<'_>>>,
                 dns: &mut Vec<String>,
                 ip: &mut Vec<(IpAddr, u8)>| {
        for s in subtrees.iter().flatten() {
            match &s.base {
                GeneralName::DNSName(name) => dns.push(name.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => ip.extend(subnet(bytes)),
                _ => {}
            }
        }
    };
    for ext in cert.iter_extensions() {
        if let ParsedExtension::NameConstraints(nc) = ext.parsed_extension() {
            let mut out = NameConstraints::default();
            split(&nc.permitted_subtrees, &mut out.permitted_dns, &mut out.permitted_ip);
            split(&nc.excluded_subtrees, &mut out.excluded_dns, &mut out.excluded_ip);
            return Some(out);
        }
    }
    None
}

/// An `iPAddress` subtree: address then mask, 8 or 32 bytes.
fn subnet(bytes: &[u8]) -> Option<(IpAddr, u8)> {
    let (addr, mask) = bytes.split_at(bytes.len() / 2);
    let len = mask.iter().map(|b| b.count_ones()).sum::<u32>() as u8;
    let addr = match addr.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(addr).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(addr).ok()?),
        _ => return None,
    };
    Some((addr, len))
}

/// An intermediate CA issued by `issuer`.
pub fn issue_intermediate(issuer: &Minted, cn: &str) -> Result<Minted, PkiError> {
    let ca = reissue(issuer)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    window(&mut params, 3650);
    let cert = params.signed_by(&key, &ca)?;
    Ok(Minted { cert_pem: cert_pem(&cert), key_pem: key_pem(&key) })
}

/// The issuer (subject DN, key identifier, key usages, key) of a PEM CA certificate and key.
fn reissue(issuer: &Minted) -> Result<Issuer<'static, KeyPair>, PkiError> {
    use rustls::pki_types::pem::PemObject as _;
    let key = key_from_pem(issuer.key_pem.expose())?;
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(issuer.cert_pem.as_bytes())
        .map_err(|e| PkiError(format!("not a PEM certificate: {e}")))?;
    Ok(Issuer::from_ca_cert_der(&cert, key)?)
}

/// A PEM block (RFC 7468 §2): base64 in 64-column lines, LF line endings. Written here, with
/// the `base64` the rest of tokenrelay uses, rather than by the `pem` crate (which would
/// bring a second `base64` version into the binary).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn cert_pem(cert: &rcgen::Certificate) -> String {
    pem_encode("CERTIFICATE", cert.der())
}

/// PKCS#8 (`PRIVATE KEY`), as `SigningKey::pkcs8_pem` writes keys too.
fn key_pem(key: &KeyPair) -> crate::redact::Secret {
    crate::redact::Secret::new(pem_encode("PRIVATE KEY", key.serialized_der()))
}

/// The first private key in a PEM text (PKCS#8 for the keys rcgen signs with under ring).
fn key_from_pem(pem: &str) -> Result<KeyPair, PkiError> {
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError(format!("not a PEM private key: {e}")))?;
    Ok(KeyPair::try_from(&der)?)
}

/// What a leaf is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafUse {
    Server,
    Client,
}

/// A leaf issued by `issuer` for `names` (DNS names or IP literals); the first is the CN.
pub fn issue_leaf(issuer: &Minted, names: &[&str], usage: LeafUse, days: i64) -> Result<Minted, PkiError> {
    let ca = reissue(issuer)?;
    let key = KeyPair::generate()?;
    let params = leaf_params(names, usage, days)?;
    let cert = params.signed_by(&key, &ca)?;
    Ok(Minted { cert_pem: cert_pem(&cert), key_pem: key_pem(&key) })
}

/// A self-signed client certificate (`self_signed_tls_client_auth`, RFC 8705 §2.2).
pub fn self_signed_client(cn: &str, days: i64) -> Result<Minted, PkiError> {
    let now = OffsetDateTime::now_utc();
    self_signed_client_window(cn, now - Duration::minutes(5), now + Duration::days(days))
}

/// A self-signed client certificate for an existing private key (PKCS#8 PEM): the
/// certificate `client.cert` names for presets that identify the key by it (Entra).
pub fn self_signed_for_key(key_pem: &str, cn: &str, days: i64) -> Result<String, PkiError> {
    let key = key_from_pem(key_pem)?;
    let params = leaf_params(&[cn], LeafUse::Client, days)?;
    Ok(cert_pem(&params.self_signed(&key)?))
}

/// A self-signed client certificate for an EC P-256 or P-384 key that does not leave where it
/// is (a PKCS#11 token): rcgen hands the to-be-signed bytes to [`crate::jose::SigningKey`].
pub fn self_signed_for_signer(key: &crate::jose::SigningKey, cn: &str, days: i64) -> Result<String, PkiError> {
    use base64::Engine as _;
    let jwk = key.public_jwk();
    let part = |n: &str| {
        jwk.get(n)
            .and_then(serde_json::Value::as_str)
            .and_then(|v| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(v).ok())
            .ok_or_else(|| PkiError(format!("the key has no EC {n}")))
    };
    let alg = match key.alg() {
        crate::jose::Alg::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        crate::jose::Alg::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        other => {
            return Err(PkiError(format!(
                "a certificate for a {other} key on a token is not supported (use ES256 or ES384)"
            )))
        }
    };
    let remote = External { key, point: [vec![4], part("x")?, part("y")?].concat(), alg };
    let params = leaf_params(&[cn], LeafUse::Client, days)?;
    Ok(cert_pem(&params.self_signed(&remote)?))
}

/// A key rcgen cannot see: it signs through [`crate::jose::SigningKey::sign_input`].
struct External<'a> {
    key: &'a crate::jose::SigningKey,
    /// The uncompressed EC point (the SPKI's BIT STRING).
    point: Vec<u8>,
    alg: &'static rcgen::SignatureAlgorithm,
}

impl rcgen::PublicKeyData for External<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg
    }
}

impl rcgen::SigningKey for External<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        // JWS gives `R || S`; X.509 wants the DER `Ecdsa-Sig-Value` (RFC 3279 §2.2.3).
        let raw = self.key.sign_input(msg).map_err(|_| rcgen::Error::RemoteKeyError)?;
        Ok(crate::jose::pkcs11::ecdsa_der(&raw))
    }
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
    Ok(Minted { cert_pem: cert_pem(&cert), key_pem: key_pem(&key) })
}

fn leaf_params(names: &[&str], usage: LeafUse, days: i64) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let first = names.first().copied().unwrap_or("tokenrelay");
    // OpenSSL checks a CN that looks like a host name against the issuer's DNS name
    // constraints when the leaf has no DNS SAN, and "127.0.0.1" looks like one: an IP-only
    // server leaf gets a CN that is no host name (the SAN carries the identity anyway).
    let cn =
        if usage == LeafUse::Server && first.parse::<std::net::IpAddr>().is_ok() { "tokenrelay server" } else { first };
    params.distinguished_name = dn(cn);
    for name in names {
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) if usage == LeafUse::Server => SanType::DnsName((*name).try_into()?),
            Err(_) => continue,
        };
        params.subject_alt_names.push(san);
    }
    params.is_ca = IsCa::ExplicitNoCa;
    // RFC 5280 §4.2.1.1: strict verifiers (Python 3.13's VERIFY_X509_STRICT) want the AKI.
    params.use_authority_key_identifier_extension = true;
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

/// Is this DER certificate a CA (basicConstraints `cA` set)?
pub fn is_ca(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    cert.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca)
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
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;

    use super::*;

    #[test]
    fn pem_is_rfc_7468_and_reads_back() {
        let ca = generate_ca("pem test").unwrap();
        for (text, label) in [(ca.cert_pem.as_str(), "CERTIFICATE"), (ca.key_pem.expose(), "PRIVATE KEY")] {
            let lines: Vec<&str> = text.split('\n').collect();
            assert_eq!(lines[0], format!("-----BEGIN {label}-----"));
            assert_eq!(lines[lines.len() - 2], format!("-----END {label}-----"));
            assert_eq!(lines.last(), Some(&""), "ends with LF");
            let body = &lines[1..lines.len() - 2];
            assert!(body[..body.len() - 1].iter().all(|l| l.len() == 64) && body.last().unwrap().len() <= 64);
            assert!(!text.contains('\r'));
        }
        let der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
        assert_eq!(pem_encode("CERTIFICATE", &der), ca.cert_pem, "same bytes back");
        // The key reads back as the one that signed: a leaf issued with it chains to the CA.
        let leaf = issue_leaf(&ca, &["localhost"], LeafUse::Server, 1).unwrap();
        let leaf_der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        assert!(!is_self_signed(&leaf_der));
    }

    #[test]
    fn ca_issues_leaf_and_self_signed_is_detected() {
        let ca = generate_ca("test ca").unwrap();
        let leaf = issue_leaf(&ca, &["localhost", "127.0.0.1"], LeafUse::Server, 1).unwrap();
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        assert!(!is_self_signed(&der));
        let ss = self_signed_client("app", 1).unwrap();
        let der = CertificateDer::from_pem_slice(ss.cert_pem.as_bytes()).unwrap();
        assert!(is_self_signed(&der));
        assert_eq!(subject_dn(&der).unwrap(), "CN=app");
        assert!(validity_warning(&der).is_none());
    }

    #[test]
    fn local_ca_is_name_constrained_and_leaf_only() {
        let ca = generate_local_ca("tokenrelay local CA", &["as.example.com".into(), "10.1.2.3".into()]).unwrap();
        let der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
        let nc = name_constraints(&der).unwrap();
        for ok in [
            "localhost",
            "a.localhost",
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "[::1]",
            "as.example.com",
            "x.as.example.com",
            "10.1.2.3",
        ] {
            assert!(nc.permits(ok), "{ok} should be permitted by {nc:?}");
        }
        for bad in ["example.com", "evilas.example.com", "10.1.2.4", "::2", "bank.example"] {
            assert!(!nc.permits(bad), "{bad} should not be permitted");
        }
        assert!(nc.describe().contains("127.0.0.0/8"), "{}", nc.describe());
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth && !eku.code_signing && !eku.any, "{eku:?}");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca && bc.path_len_constraint == Some(0));
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.key_cert_sign() && !ku.value.digital_signature());
        // Unconstrained CAs permit anything.
        let plain = generate_ca("t").unwrap();
        let der = CertificateDer::from_pem_slice(plain.cert_pem.as_bytes()).unwrap();
        assert!(name_constraints(&der).is_none());
    }

    #[test]
    fn dns_and_ip_subtree_matching() {
        assert!(in_dns_subtree("a.b.c", ".b.c") && !in_dns_subtree("b.c", ".b.c"));
        assert!(in_dns_subtree("B.C".to_ascii_lowercase().as_str(), "b.c"));
        assert!(in_subnet("192.168.1.9".parse().unwrap(), ("192.168.0.0".parse().unwrap(), 16)));
        assert!(!in_subnet("192.169.1.9".parse().unwrap(), ("192.168.0.0".parse().unwrap(), 16)));
        assert!(in_subnet("1.2.3.4".parse().unwrap(), ("0.0.0.0".parse().unwrap(), 0)));
        assert!(!in_subnet("::1".parse().unwrap(), ("127.0.0.0".parse().unwrap(), 8)));
    }
}
