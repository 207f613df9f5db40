//! Keys on a PKCS#11 token (RFC 7512 URIs), with SoftHSM2: the test makes its own token in a
//! temp folder (`SOFTHSM2_CONF`), generates non-extractable keys on it, and has the demo AS
//! verify what tokenrelay signed there: `private_key_jwt` with ES256 and PS256, DPoP proofs,
//! a token that goes away (502 naming it) and comes back (200).
//!
//! SoftHSM2 is the Debian package `softhsm2`, installed with apt-get when absent (once,
//! across concurrent tests); without it (and without root to install it) the tests fail
//! saying so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::proxy::TestProxy;
use rustls::pki_types::pem::PemObject as _;
use tokenrelay::jose::pkcs11::{generate, Pkcs11Uri};
use tokenrelay::jose::{Alg, SigningKey};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "4321";

fn apt_get(args: &[&str]) -> Result<(), String> {
    let out = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("apt-get {args:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr))),
    }
}

/// The process-wide SoftHSM2 set-up: the package, and a token folder of our own (SoftHSM
/// reads `SOFTHSM2_CONF` once, when tokenrelay first loads the module).
fn softhsm() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if !Path::new(MODULE).exists() || Command::new("softhsm2-util").arg("--version").output().is_err() {
            apt_get(&["install", "-y", "softhsm2"])
                .or_else(|first| apt_get(&["update"]).and_then(|()| apt_get(&["install", "-y", "softhsm2"])).map_err(|e| format!("{first}\n{e}")))
                .unwrap_or_else(|e| {
                    panic!("these tests need SoftHSM2 ({MODULE}); install it (Debian/Ubuntu: `apt-get install softhsm2`, as root): {e}")
                });
        }
        // Kept for the life of this process (SoftHSM reads it at every rescan); folders left by
        // earlier runs, over an hour old, are removed.
        for old in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
            let stale = old.metadata().and_then(|m| m.modified()).is_ok_and(|t| {
                t.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(3600))
            });
            if stale && old.file_name().to_string_lossy().starts_with("tokenrelay-softhsm-") {
                let _ = std::fs::remove_dir_all(old.path());
            }
        }
        let dir = tempfile::Builder::new().prefix("tokenrelay-softhsm-").tempdir().unwrap().keep();
        std::fs::create_dir_all(dir.join("tokens")).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!("directories.tokendir = {}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n", dir.display()),
        )
        .unwrap();
        // SAFETY (edition 2021: safe): set before any thread loads the module.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        dir
    })
}

/// A fresh token labelled `label` (user PIN [`PIN`]).
fn token(label: &str) {
    softhsm();
    // softhsm2-util runs do not share the token folder well: one at a time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", label, "--so-pin", "123456", "--pin", PIN])
        .output()
        .unwrap();
    assert!(out.status.success(), "softhsm2-util --init-token: {}", String::from_utf8_lossy(&out.stderr));
}

fn uri(token: &str, object: &str) -> String {
    format!("pkcs11:token={token};object={object}?module-path={MODULE}&pin-env=TR_TEST_PKCS11_PIN")
}

fn set_pin() {
    std::env::set_var("TR_TEST_PKCS11_PIN", PIN);
}

fn demo_route(client_uri: &str, alg: &str, dpop_uri: Option<&str>) -> String {
    let mut config = format!(
        "[demo_as]\nlisten = \"$DEMO_AS\"\n[routes.hsm]\nprefix = \"/hsm\"\nupstream = \"http://$DEMO_AS\"\n\
         [routes.hsm.client]\nid = \"hsm-app\"\nauth = \"private_key_jwt\"\nalg = \"{alg}\"\nkey = \"{client_uri}\"\n"
    );
    if let Some(d) = dpop_uri {
        config.push_str(&format!("[routes.hsm.dpop]\nkey = \"{d}\"\n"));
    }
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn es256_client_key_and_dpop_key_on_the_token_are_verified_by_the_demo_as() {
    token("es-token");
    set_pin();
    let (client, dpop) = (uri("es-token", "client"), uri("es-token", "dpop"));
    for object in [&client, &dpop] {
        generate(&Pkcs11Uri::parse(object, Path::new("/")).unwrap(), Alg::ES256).unwrap();
    }
    let key = SigningKey::pkcs11(&client, Alg::ES256, Path::new("/")).unwrap();
    assert!(key.token_protected().unwrap().unwrap(), "created sensitive and non-extractable");
    assert!(key.pkcs8_pem().expose().is_empty(), "nothing to export");
    let proxy = TestProxy::builder(demo_route(&client, "ES256", Some(&dpop))).demo_as().start().await;
    let (status, body) = proxy.post_form("/hsm/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{body}");
    let v = &body["verified"];
    assert_eq!(v["assertion_alg"], "ES256", "{body}");
    assert_eq!(v["kid"], key.thumbprint(), "kid from the public key read from the token");
    assert!(v["dpop_jti"].is_string(), "{body}");
    assert_eq!(body["token_type"], "DPoP", "{body}");
    let dpop_key = SigningKey::pkcs11(&dpop, Alg::ES256, Path::new("/")).unwrap();
    assert_eq!(
        v["jkt"].as_str().or(body["cnf"]["jkt"].as_str()).unwrap_or(dpop_key.thumbprint()),
        dpop_key.thumbprint()
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ps256_client_key_on_the_token_is_verified_by_the_demo_as() {
    token("rsa-token");
    set_pin();
    let client = uri("rsa-token", "client");
    generate(&Pkcs11Uri::parse(&client, Path::new("/")).unwrap(), Alg::PS256).unwrap();
    let proxy = TestProxy::builder(demo_route(&client, "PS256", None)).demo_as().start().await;
    for _ in 0..2 {
        let (status, body) = proxy.post_form("/hsm/token", "grant_type=client_credentials").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["verified"]["assertion_alg"], "PS256", "{body}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_token_is_a_load_error_naming_it() {
    softhsm();
    set_pin();
    let err = SigningKey::pkcs11(&uri("no-such-token", "client"), Alg::ES256, Path::new("/")).unwrap_err().to_string();
    assert!(err.contains("\"no-such-token\"") && err.contains("no such token"), "{err}");
    let result =
        TestProxy::builder(demo_route(&uri("no-such-token", "client"), "ES256", None)).demo_as().try_start().await;
    let err = result.err().expect("start fails").to_string();
    assert!(err.contains("no-such-token") && err.contains("client.key"), "{err}");
}

/// The token's folder under SoftHSM's token directory (one per token).
fn token_dir(label: &str) -> PathBuf {
    for entry in std::fs::read_dir(softhsm().join("tokens")).unwrap() {
        let dir = entry.unwrap().path();
        let out = Command::new("grep").arg("-rlq").arg(label).arg(&dir).status().unwrap();
        if out.success() {
            return dir;
        }
    }
    panic!("no token folder for {label}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_token_is_a_502_naming_it_and_a_restored_one_works_again() {
    token("gone-token");
    set_pin();
    let client = uri("gone-token", "client");
    generate(&Pkcs11Uri::parse(&client, Path::new("/")).unwrap(), Alg::ES256).unwrap();
    let proxy = TestProxy::builder(demo_route(&client, "ES256", None)).demo_as().watch(false).start().await;
    let (status, body) = proxy.post_form("/hsm/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{body}");
    // Unplug: the token's folder goes away (kept aside to plug it back in).
    let dir = token_dir("gone-token");
    let aside = softhsm().join("unplugged-gone-token");
    std::fs::rename(&dir, &aside).unwrap();
    let (status, body) = proxy.post_form("/hsm/token", "grant_type=client_credentials").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.to_string().contains("gone-token"), "names the token: {body}");
    std::fs::rename(&aside, &dir).unwrap();
    let (status, body) = proxy.post_form("/hsm/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "the same key works again once the token is back: {body}");
    proxy.stop().await;
}

#[test]
fn jwks_prints_the_public_key_read_from_the_token() {
    token("jwks-token");
    set_pin();
    let client = uri("jwks-token", "client");
    generate(&Pkcs11Uri::parse(&client, Path::new("/")).unwrap(), Alg::ES256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, demo_route(&client, "ES256", None).replace("$DEMO_AS", "127.0.0.1:9")).unwrap();
    let doc = tokenrelay::cli::jwks_document(&path, None).unwrap();
    let key = SigningKey::pkcs11(&client, Alg::ES256, Path::new("/")).unwrap();
    let jwk = &doc["routes"]["hsm"]["jwks"]["keys"][0];
    assert_eq!(jwk["x"], key.public_jwk()["x"], "{doc}");
    assert_eq!(jwk["kid"], key.thumbprint(), "{doc}");
}

/// The cost of one signature on the token against one with the same algorithm from a key
/// file (BENCHMARKS.md): `cargo test --release --test pkcs11 -- --ignored --nocapture`.
#[test]
#[ignore]
fn signature_cost_token_vs_file() {
    token("bench-token");
    set_pin();
    for (alg, object) in [(Alg::ES256, "es"), (Alg::PS256, "ps")] {
        let uri = uri("bench-token", object);
        generate(&Pkcs11Uri::parse(&uri, Path::new("/")).unwrap(), alg).unwrap();
        let on_token = SigningKey::pkcs11(&uri, alg, Path::new("/")).unwrap();
        let file = SigningKey::generate(alg).unwrap();
        let input = [b'x'; 400];
        for (what, key) in [("token", &on_token), ("file", &file)] {
            let mut samples = Vec::new();
            for _ in 0..7 {
                let n = 200;
                let start = std::time::Instant::now();
                for _ in 0..n {
                    key.sign_input(&input).unwrap();
                }
                samples.push(start.elapsed().as_secs_f64() * 1e6 / f64::from(n));
            }
            samples.sort_by(f64::total_cmp);
            println!("{alg} {what}: median {:.1} µs per signature (min {:.1})", samples[3], samples[0]);
        }
    }
}

#[test]
fn init_generates_a_non_extractable_key_on_the_token() {
    token("init-token");
    set_pin();
    let client = uri("init-token", "made-by-init");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::process::BIN)
        .args(["init", "--only", "client", "--pkcs11", &client, "--config"])
        .arg(dir.path().join("proxy.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("not extractable") && stderr.contains("init-token"), "{stderr}");
    let jwks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = SigningKey::pkcs11(&client, Alg::ES256, Path::new("/")).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], key.thumbprint());
    assert!(key.token_protected().unwrap().unwrap(), "sensitive and not extractable");
}

/// The independent check: oidc-provider verifies ES256 and PS256 assertions signed on the
/// token, against the JWK read from the token.
#[tokio::test(flavor = "multi_thread")]
async fn private_key_jwt_es256_and_ps256_on_the_token_verified_by_oidc_provider() {
    use common::oidc::{cc_client, param, OidcProvider};
    use serde_json::json;
    token("op-token");
    set_pin();
    let mut keys = Vec::new();
    for (name, alg) in [("es256", Alg::ES256), ("ps256", Alg::PS256)] {
        let u = uri("op-token", name);
        generate(&Pkcs11Uri::parse(&u, Path::new("/")).unwrap(), alg).unwrap();
        let key = SigningKey::pkcs11(&u, alg, Path::new("/")).unwrap();
        keys.push((name, alg, u, key));
    }
    let clients: Vec<serde_json::Value> = keys
        .iter()
        .map(|(n, a, _, k)| {
            cc_client(
                &format!("hsm-{n}"),
                json!({ "token_endpoint_auth_method": "private_key_jwt", "token_endpoint_auth_signing_alg": a.as_str(), "jwks": common::oidc::jwks(k) }),
            )
        })
        .collect();
    let op = OidcProvider::start(json!({ "clients": clients })).await;
    let config: String = keys
        .iter()
        .map(|(n, a, u, _)| {
            format!(
                "[routes.{n}]\nprefix = \"/{n}\"\nupstream = \"{issuer}\"\nissuer = \"{issuer}\"\n[routes.{n}.client]\n\
                 id = \"hsm-{n}\"\nauth = \"private_key_jwt\"\nalg = \"{a}\"\nkey = \"{u}\"\n",
                issuer = op.issuer
            )
        })
        .collect();
    let proxy = TestProxy::builder(config).start().await;
    for (i, (n, alg, _, key)) in keys.iter().enumerate() {
        let (status, body) = proxy.post_form(&format!("/{n}/token"), "grant_type=client_credentials").await;
        assert_eq!(status, 200, "{n}: {body}\n{}", op.stderr());
        let seen = &op.token_requests().await[i];
        assert_eq!(seen["status"], 200, "{seen}");
        let assertion = param(seen, "client_assertion").unwrap();
        assert_eq!(common::jwt::header(&assertion)["alg"], alg.as_str());
        assert_eq!(common::jwt::header(&assertion)["kid"], key.thumbprint());
    }
    proxy.stop().await;
}

/// `self_signed_tls_client_auth` with the certificate's key on the token: the TLS handshake
/// signs through the token, and the demo AS binds the token to the certificate
/// (`cnf.x5t#S256`, RFC 8705 §3).
#[tokio::test(flavor = "multi_thread")]
async fn mtls_with_the_certificate_key_on_the_token_gets_a_certificate_bound_token() {
    token("tls-token");
    set_pin();
    let key_uri = uri("tls-token", "tls");
    generate(&Pkcs11Uri::parse(&key_uri, Path::new("/")).unwrap(), Alg::ES256).unwrap();
    let key = SigningKey::pkcs11(&key_uri, Alg::ES256, Path::new("/")).unwrap();
    let cert_pem = tokenrelay::pki::self_signed_for_signer(&key, "tls-app", 30).unwrap();
    let config = format!(
        "[demo_as]\nlisten = \"$DEMO_AS\"\ntls = true\n[routes.ss]\nprefix = \"/ss\"\nupstream = \"https://$DEMO_AS\"\n\
         issuer = \"https://$DEMO_AS\"\ntrust = [\"certs/demo-as-ca.pem\"]\n[routes.ss.client]\nid = \"tls-app\"\n\
         auth = \"self_signed_tls_client_auth\"\n[routes.ss.mtls]\ncert = \"tls-cert.pem\"\nkey = \"{key_uri}\"\n"
    );
    let builder = TestProxy::builder(config).demo_as();
    std::fs::write(builder.dir().join("tls-cert.pem"), &cert_pem).unwrap();
    let proxy = builder.start().await;
    let (status, answer) = proxy.post_form("/ss/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{answer}");
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    assert_eq!(answer["cnf"]["x5t#S256"], tokenrelay::jose::sha256_b64url(&der), "{answer}");
    assert_eq!(answer["verified"]["auth_method"], "self_signed_tls_client_auth");
    proxy.stop().await;
}
