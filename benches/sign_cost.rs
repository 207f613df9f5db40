//! What one signature costs, for `bench/run.sh`: the full path's CPU per request minus its
//! two signatures is what the proxy itself costs. Prints one JSON line (CPU time of this
//! thread, so a busy machine stretches the wall clock but not the figures):
//!
//! - `es256_sign_us`: one ES256 signature over a typical signing input, as tokenrelay makes
//!   it (`SigningKey::sign_input`: SHA-256 + ECDSA P-256 by ring's fixed-length signing,
//!   raw R||S): the crypto and nothing else;
//! - `es256_josekit_us`: the same signature through josekit's own signer (the bare josekit
//!   sign call the JOSE layer is compared with);
//! - `dpop_proof_us`: a whole DPoP proof as the pipeline makes it (header and claims JSON,
//!   base64url, signature);
//! - `assertion_us`: a whole `private_key_jwt` client assertion through
//!   `rewrite::client_auth::apply` (form edits included);
//! - `es256_ring_us`: for comparison, the same signature by ring through rustls's TLS
//!   signing API (ASN.1 DER output).
//!
//! `BENCH_MS` (default 800) bounds each loop.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use josekit::jws::JwsSigner as _;
use tokenrelay::jose::{new_jti, Alg, SigningKey};
use tokenrelay::keys::Credential;
use tokenrelay::rewrite::client_auth::{self, Call};
use tokenrelay::rewrite::dpop::{proof, ProofInput};
use tokenrelay::rewrite::form::Form;

/// CPU time this thread has run, in ns (`/proc/thread-self/schedstat`, first field).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// µs of thread CPU per call of `f`, run for `budget` of wall time after a warm-up.
fn cpu_us_per_op(budget: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..50 {
        f();
    }
    let (wall, cpu) = (Instant::now(), thread_cpu_ns());
    let mut n = 0u64;
    while wall.elapsed() < budget {
        for _ in 0..16 {
            f();
        }
        n += 16;
    }
    let cpu = thread_cpu_ns().saturating_sub(cpu);
    if cpu == 0 {
        // No schedstat (not Linux): fall back to wall time.
        return wall.elapsed().as_secs_f64() * 1e6 / n as f64;
    }
    cpu as f64 / 1e3 / n as f64
}

fn main() {
    let budget = Duration::from_millis(std::env::var("BENCH_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(800));
    let key = SigningKey::generate(Alg::ES256).unwrap_or_else(|e| panic!("key: {e}"));
    let raw = josekit::jws::ES256.signer_from_pem(key.pkcs8_pem().expose()).unwrap_or_else(|e| panic!("signer: {e}"));
    // A signing input of the usual size: base64url(header) "." base64url(claims), ~420 bytes.
    let input = vec![b'e'; 420];
    let es256 = cpu_us_per_op(budget, || {
        std::hint::black_box(key.sign_input(std::hint::black_box(&input)).ok());
    });
    let josekit = cpu_us_per_op(budget, || {
        std::hint::black_box(raw.sign(std::hint::black_box(&input)).ok());
    });

    // For comparison: the same signature by ring through rustls's TLS signing API (ASN.1
    // DER output), beside tokenrelay's fixed-length one.
    let ring_key = {
        use rustls::pki_types::pem::PemObject as _;
        let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.pkcs8_pem().expose())
            .unwrap_or_else(|e| panic!("{e}"));
        rustls::crypto::ring::sign::any_ecdsa_type(&der).unwrap_or_else(|e| panic!("ring key: {e}"))
    };
    let ring_signer = ring_key
        .choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])
        .unwrap_or_else(|| panic!("ring: no ECDSA P-256 scheme"));
    let ring = cpu_us_per_op(budget, || {
        std::hint::black_box(ring_signer.sign(std::hint::black_box(&input)).ok());
    });

    let mut i = 0u64;
    let dpop = cpu_us_per_op(budget, || {
        i += 1;
        let input = ProofInput {
            htm: "POST",
            htu: "https://127.0.0.1:8443/token",
            now: 1_700_000_000 + i,
            jti: new_jti(),
            nonce: None,
            access_token: None,
        };
        std::hint::black_box(proof(&key, &input).ok());
    });

    let config = tokenrelay::config::parse(
        "[routes.b]\nprefix = \"/b\"\nupstream = \"https://127.0.0.1:8443\"\n\
         [routes.b.client]\nid = \"bench\"\nauth = \"private_key_jwt\"\nkey = \"client.pem\"\n",
        Path::new("proxy.toml"),
    )
    .unwrap_or_else(|e| panic!("config: {e}"));
    let route = &config.routes[0];
    let credential = Credential::Key(Arc::new(key));
    let form = Form::parse(b"grant_type=client_credentials&scope=read");
    let assertion = cpu_us_per_op(budget, || {
        i += 1;
        let call = Call {
            endpoint_url: "https://127.0.0.1:8443/token",
            token_endpoint: "https://127.0.0.1:8443/token",
            now: 1_700_000_000 + i,
            jti: new_jti(),
            x5t_s256: None,
        };
        let mut form = form.clone();
        let mut headers = HeaderMap::new();
        std::hint::black_box(client_auth::apply(route, &credential, &call, &mut headers, &mut form).ok());
        std::hint::black_box(form.encode());
    });
    println!(
        r#"{{"es256_sign_us":{es256:.2},"es256_josekit_us":{josekit:.2},"dpop_proof_us":{dpop:.2},"assertion_us":{assertion:.2},"es256_ring_us":{ring:.2}}}"#
    );
}
