//! The README's recipes that can run here, run: Python `requests` and authlib (a code flow
//! with PKCE, the proxy's discovery document) against the real binary in front of its demo
//! AS, which verifies what tokenrelay signed. `tests/recipes_py` is the script; its venv is
//! made on first use (`pip install -r requirements.txt`), as the forward-mode Python test does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::process::{install_once, run, tests_dir, ProxyProcess, BIN};
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The Python of `tests/recipes_py/.venv`, with requests and authlib.
fn python() -> PathBuf {
    let dir = tests_dir("recipes_py");
    let python = dir.join(".venv/bin/python");
    let marker = dir.join(".venv/.installed");
    install_once(&dir, &marker, || {
        run("python3", &["-m", "venv", ".venv"], &dir)?;
        run(python.to_str().unwrap_or_default(), &["-m", "pip", "install", "-q", "-r", "requirements.txt"], &dir)?;
        std::fs::write(&marker, b"").map_err(|e| e.to_string())
    })
    .unwrap_or_else(|e| panic!("python3 with venv and pip is required for the README recipes: {e}"));
    python
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_recipes_get_tokens_through_tokenrelay() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).arg("init").current_dir(dir.path()).env_remove("TOKENRELAY_CONFIG").output().unwrap();
    assert!(out.status.success());
    let (listen, demo) = (free_port(), free_port());
    let config = std::fs::read_to_string(dir.path().join("proxy.toml"))
        .unwrap()
        .replace("127.0.0.1:8787", &format!("127.0.0.1:{listen}"))
        .replace("127.0.0.1:9443", &format!("127.0.0.1:{demo}"))
        .replace("[routes.demo.client]", "rewrite_metadata = true\n\n[routes.demo.client]");
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    let proxy = ProxyProcess::start(&["run"], &dir.path().join("proxy.toml"), "info");
    let route = format!("{}/demo", proxy.base);
    let script = tests_dir("recipes_py").join("recipes.py");
    let out = tokio::task::spawn_blocking(move || Command::new(python).arg(script).arg(route).output().unwrap())
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}\nproxy log:\n{}", String::from_utf8_lossy(&out.stderr), proxy.log());
    let got: Value = serde_json::from_str(said.trim()).unwrap();
    // What the demo AS verified: tokenrelay's assertion and proof, for the app's client.
    for recipe in ["requests", "authlib"] {
        let verified = &got[recipe]["verified"];
        assert_eq!(verified["client_id"], "demo-app", "{recipe}: {got}");
        assert_eq!(verified["auth_method"], "private_key_jwt", "{recipe}: {got}");
        assert_eq!(got[recipe]["token_type"], "DPoP", "{recipe}: {got}");
    }
    assert_eq!(
        got["authlib"]["token_endpoint"],
        format!("{}/demo/token", proxy.base),
        "the app was pointed at tokenrelay"
    );
    assert_eq!(got["authlib"]["id_token"], true);
    proxy.stop();
}

/// openid-client v6, as the README shows it: discovery through tokenrelay's rewritten
/// document, `None()` client authentication, `allowInsecureRequests` for the loopback proxy.
#[tokio::test(flavor = "multi_thread")]
async fn the_openid_client_recipe_gets_a_token_through_tokenrelay() {
    let node_dir = tests_dir("recipes_node");
    let install = node_dir.clone();
    tokio::task::spawn_blocking(move || {
        install_once(&install, &install.join("node_modules/openid-client/package.json"), || {
            common::process::npm_install(&install)
        })
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("Node.js and npm are required for the openid-client recipe: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).arg("init").current_dir(dir.path()).env_remove("TOKENRELAY_CONFIG").output().unwrap();
    assert!(out.status.success());
    let (listen, demo) = (free_port(), free_port());
    let config = std::fs::read_to_string(dir.path().join("proxy.toml"))
        .unwrap()
        .replace("127.0.0.1:8787", &format!("127.0.0.1:{listen}"))
        .replace("127.0.0.1:9443", &format!("127.0.0.1:{demo}"))
        .replace("[routes.demo.client]", "rewrite_metadata = true\n\n[routes.demo.client]");
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    let proxy = ProxyProcess::start(&["run"], &dir.path().join("proxy.toml"), "info");
    let route = format!("{}/demo", proxy.base);
    let script = node_dir.join("recipes.mjs");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node").arg(script).arg(route).arg("demo-app").current_dir(node_dir).output().unwrap()
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}\nproxy log:\n{}", String::from_utf8_lossy(&out.stderr), proxy.log());
    let got: Value = serde_json::from_str(said.trim()).unwrap();
    assert_eq!(got["token_endpoint"], format!("{}/demo/token", proxy.base), "{got}");
    assert_eq!(got["verified"]["client_id"], "demo-app", "{got}");
    assert_eq!(got["verified"]["auth_method"], "private_key_jwt", "{got}");
    proxy.stop();
}
