//! Puts the git commit into `tokenrelay --version` (`TOKENRELAY_GIT_COMMIT`): the output of
//! `git rev-parse --short HEAD`, or "unknown" when git or the repository is unavailable
//! (a crates.io tarball, a container without git).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(&dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TOKENRELAY_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves (a commit, a checkout). Only paths that exist: a missing one
    // would make cargo rerun this script on every build.
    let git = Path::new(&dir).join(".git");
    let mut watch = vec![git.join("HEAD"), git.join("packed-refs")];
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
        if let Some(r) = head.trim().strip_prefix("ref: ") {
            watch.push(git.join(r));
        }
    }
    for p in watch.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
