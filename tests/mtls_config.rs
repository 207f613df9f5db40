//! mTLS identities at load time (RFC 8705): what a user sees for broken key material.
//! These need no network: they exercise `Snapshot::build`, the validation `run`, `check`
//! and reload share.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::pki;
use tokenrelay::snapshot::{BuildOptions, Snapshot};

const CONFIG: &str = r#"
[routes.m]
prefix = "/m"
upstream = "https://as.example.com"
[routes.m.client]
id = "app"
auth = "self_signed_tls_client_auth"
[routes.m.mtls]
cert = "cert.pem"
key = "key.pem"
"#;

fn build(dir: &Path) -> Result<Snapshot, String> {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, CONFIG).unwrap();
    let cfg = tokenrelay::config::load(&path).map_err(|e| e.to_string())?;
    Snapshot::build(cfg, BuildOptions::default()).map_err(|e| e.to_string())
}

fn write(dir: &Path, name: &str, data: &str, mode: u32) {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

#[test]
fn good_identity_loads_with_thumbprint() {
    let dir = tempfile::tempdir().unwrap();
    let id = pki::self_signed_client("app");
    write(dir.path(), "cert.pem", &id.cert_pem, 0o644);
    write(dir.path(), "key.pem", &id.key_pem, 0o600);
    let snap = build(dir.path()).unwrap();
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    assert_eq!(snap.routes[0].cert_thumbprint.as_deref(), Some(tokenrelay::jose::sha256_b64url(&id.der).as_str()));
}

#[test]
fn cert_and_key_mismatch_names_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = pki::self_signed_client("app");
    let b = pki::self_signed_client("app");
    write(dir.path(), "cert.pem", &a.cert_pem, 0o644);
    write(dir.path(), "key.pem", &b.key_pem, 0o600);
    let err = build(dir.path()).unwrap_err();
    assert!(
        err.contains("mtls.cert")
            && err.contains("cert.pem")
            && err.contains("does not match")
            && err.contains("key.pem"),
        "{err}"
    );
}

#[test]
fn wrong_pem_types_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let a = pki::self_signed_client("app");
    // Swapped: the key file holds the certificate.
    write(dir.path(), "cert.pem", &a.cert_pem, 0o644);
    write(dir.path(), "key.pem", &a.cert_pem, 0o600);
    let err = build(dir.path()).unwrap_err();
    assert!(err.contains("mtls.key") && err.contains("certificate, not a private key"), "{err}");
    // The cert file holds a key.
    write(dir.path(), "cert.pem", &a.key_pem, 0o644);
    write(dir.path(), "key.pem", &a.key_pem, 0o600);
    let err = build(dir.path()).unwrap_err();
    assert!(err.contains("mtls.cert") && err.contains("no CERTIFICATE"), "{err}");
    // Garbage.
    write(dir.path(), "cert.pem", &a.cert_pem, 0o644);
    write(dir.path(), "key.pem", "not a key at all", 0o600);
    let err = build(dir.path()).unwrap_err();
    assert!(err.contains("mtls.key") && err.contains("not a PEM private key"), "{err}");
}

#[cfg(unix)]
#[test]
fn unreadable_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let a = pki::self_signed_client("app");
    write(dir.path(), "cert.pem", &a.cert_pem, 0o644);
    // A directory where the key should be: unreadable as a file for root too.
    std::fs::create_dir(dir.path().join("key.pem")).unwrap();
    let err = build(dir.path()).unwrap_err();
    assert!(err.contains("mtls.key") && err.contains("key.pem") && err.contains("cannot read"), "{err}");
}

#[test]
fn expired_cert_and_loose_key_permissions_are_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let old = pki::self_signed_client_valid("app", now - time::Duration::days(30), now - time::Duration::days(1));
    write(dir.path(), "cert.pem", &old.cert_pem, 0o644);
    write(dir.path(), "key.pem", &old.key_pem, 0o644);
    let snap = build(dir.path()).unwrap();
    let all = snap.warnings.join("\n");
    assert!(all.contains("cert.pem") && all.contains("expired"), "{all}");
    #[cfg(unix)]
    assert!(all.contains("chmod 600") && all.contains("key.pem"), "{all}");
}

#[test]
fn tls_client_auth_without_mtls_table_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, "[routes.m]\nprefix = \"/m\"\nupstream = \"https://as.example\"\n[routes.m.client]\nid = \"a\"\nauth = \"tls_client_auth\"\n").unwrap();
    let err = tokenrelay::config::load(&path).unwrap_err().to_string();
    assert!(err.contains("routes.m.client.auth") && err.contains("[routes.m.mtls]"), "{err}");
}
