//! Starting tokenrelay in-process for tests: config written to a temp folder, listeners
//! pre-bound on 127.0.0.1:0, stopped when the test ends.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokenrelay::app::{Options, Running};
use tokenrelay::jose::{Alg, SigningKey};
use tokio::net::TcpListener;

pub struct TestProxy {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub http: reqwest::Client,
}

/// A generated key written as PKCS#8 PEM (0600) at `dir/name`.
pub fn write_key(dir: &Path, name: &str, alg: Alg) -> (PathBuf, Arc<SigningKey>) {
    let key = SigningKey::generate(alg).unwrap();
    let path = dir.join(name);
    tokenrelay::keys::write_private(&path, key.pkcs8_pem()).unwrap();
    (path, Arc::new(key))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build().unwrap()
}

impl TestProxy {
    /// Starts the proxy with `config` (TOML) written to `dir/proxy.toml`.
    pub async fn start_in(dir: tempfile::TempDir, config: &str) -> TestProxy {
        Self::try_start_in(dir, config, None).await.unwrap_or_else(|e| panic!("proxy failed to start: {e}"))
    }

    /// Like `start_in`, with a pre-bound demo AS listener, returning the start error.
    pub async fn try_start_in(
        dir: tempfile::TempDir,
        config: &str,
        demo: Option<TcpListener>,
    ) -> Result<TestProxy, tokenrelay::app::StartError> {
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, config).unwrap();
        let mut opts = Options::new(&path);
        opts.listener = Some(TcpListener::bind("127.0.0.1:0").await.unwrap());
        opts.demo_as_listener = demo;
        let running = tokenrelay::app::start(opts).await?;
        let base = format!("http://{}", running.addr);
        Ok(TestProxy { running: Some(running), dir, base, http: client() })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// POSTs a form body (as raw bytes) to `path` on the proxy.
    pub async fn post_form(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, json)
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}
