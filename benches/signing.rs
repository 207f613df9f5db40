//! Signing throughput: DPoP proofs and client assertions per second, per key type.
//! `cargo bench --bench signing` prints one line per algorithm. Not a timed test: numbers
//! only, recorded in BENCHMARKS.md.

use std::time::{Duration, Instant};

use tokenrelay::jose::{Alg, SigningKey};
use tokenrelay::rewrite::dpop::{proof, ProofInput};

fn per_second(budget: Duration, mut f: impl FnMut()) -> (f64, u64) {
    // Warm up, then run for `budget`.
    for _ in 0..20 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        f();
        n += 1;
    }
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

fn main() {
    let budget = Duration::from_millis(std::env::var("BENCH_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1500));
    println!("DPoP proofs (with ath and nonce) per second, one core, {} ms per alg:", budget.as_millis());
    println!("{:<8} {:>12} {:>10} {:>14}", "alg", "proofs/s", "n", "µs/proof");
    for alg in Alg::ASYMMETRIC {
        let Ok(key) = SigningKey::generate(alg) else {
            println!("{alg:<8} key generation failed");
            continue;
        };
        let mut i = 0u64;
        let (rate, n) = per_second(budget, || {
            i += 1;
            let input = ProofInput {
                htm: "POST",
                htu: "https://as.example.com/token",
                now: 1_700_000_000 + i,
                jti: format!("jti-{i}"),
                nonce: Some("server-nonce"),
                access_token: Some("access-token-value"),
            };
            std::hint::black_box(proof(&key, &input).ok());
        });
        println!("{:<8} {:>12.0} {:>10} {:>14.1}", alg.as_str(), rate, n, 1e6 / rate);
    }
}
