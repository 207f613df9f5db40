//! Starting tokenrelay in-process for tests: one builder for every listener and reload option.
//!
//! ```ignore
//! let builder = TestProxy::builder(config).forward().tls();
//! write_key(builder.dir(), "client.pem", Alg::ES256);
//! let proxy = builder.start().await;
//! ```
//!
//! The config is written to `<dir>/proxy.toml`: a fresh temp folder that lives as long as the
//! proxy, or the folder `.in_dir` names (which the test keeps, to restart in it).
//!
//! Every listener is pre-bound on 127.0.0.1:0. Where the config must name a pre-bound address,
//! it says `$FORWARD` (`[proxy] forward`, with `.forward()`), `$LISTEN_TLS` (`[proxy]
//! listen_tls`, with `.tls()`) or `$DEMO_AS` (`[demo_as] listen` and routes to it, with
//! `.demo_as()`), and the builder writes the address in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokenrelay::app::{Options, Running, StartError};
use tokenrelay::jose::{Alg, SigningKey};
use tokio::net::TcpListener;

pub struct TestProxy {
    pub running: Running,
    /// The folder holding `proxy.toml`; relative paths in the config start here.
    pub dir: PathBuf,
    /// `http://<addr>` of the reverse listener.
    pub base: String,
    pub http: reqwest::Client,
    _temp: Option<tempfile::TempDir>,
}

/// Options for [`TestProxy`]; see the module doc.
pub struct Builder {
    config: String,
    dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    forward: bool,
    tls: bool,
    demo_as: bool,
    watch: bool,
}

/// A generated key written as PKCS#8 PEM (0600) at `dir/name`.
pub fn write_key(dir: &Path, name: &str, alg: Alg) -> (PathBuf, Arc<SigningKey>) {
    let key = SigningKey::generate(alg).unwrap();
    let path = dir.join(name);
    tokenrelay::keys::write_private(&path, key.pkcs8_pem().expose()).unwrap();
    (path, Arc::new(key))
}

/// An HTTP client that neither follows redirects nor uses a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build().unwrap()
}

/// `text` with `from` replaced by `to`; panics unless `from` occurs exactly once, so that an
/// edit of a config template can never silently do nothing.
pub fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} must occur exactly once in:\n{text}");
    text.replacen(from, to, 1)
}

impl Builder {
    /// The folder `proxy.toml` goes to: write the files the config names here before `start`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Use `dir`, which the test keeps, instead of a fresh temp folder.
    pub fn in_dir(mut self, dir: &Path) -> Builder {
        self.dir = dir.to_path_buf();
        self.temp = None;
        self
    }

    /// Pre-bind the forward proxy listener: `$FORWARD` in the config.
    pub fn forward(mut self) -> Builder {
        self.forward = true;
        self
    }

    /// Pre-bind the HTTPS reverse listener: `$LISTEN_TLS` in the config.
    pub fn tls(mut self) -> Builder {
        self.tls = true;
        self
    }

    /// Pre-bind the demo AS listener: `$DEMO_AS` in the config.
    pub fn demo_as(mut self) -> Builder {
        self.demo_as = true;
        self
    }

    /// Watch the config and the files it names (on by default, as in `tokenrelay run`); off,
    /// only `Running::reload_now` reloads.
    pub fn watch(mut self, on: bool) -> Builder {
        self.watch = on;
        self
    }

    /// Starts the proxy; panics with the start error.
    pub async fn start(self) -> TestProxy {
        self.try_start().await.unwrap_or_else(|e| panic!("proxy failed to start: {e}"))
    }

    /// Starts the proxy, returning the start error.
    pub async fn try_start(self) -> Result<TestProxy, StartError> {
        let mut config = self.config;
        let forward = prebind(&mut config, "$FORWARD", self.forward).await;
        let tls = prebind(&mut config, "$LISTEN_TLS", self.tls).await;
        let demo_as = prebind(&mut config, "$DEMO_AS", self.demo_as).await;
        let path = self.dir.join("proxy.toml");
        // Not rewritten when it already says this: it may be a link the test set up.
        if std::fs::read_to_string(&path).ok().as_deref() != Some(config.as_str()) {
            std::fs::write(&path, &config).unwrap();
        }
        let addr = |l: &Option<TcpListener>| l.as_ref().map(|l| l.local_addr().unwrap());
        let (forward_addr, tls_addr, demo_as_addr) = (addr(&forward), addr(&tls), addr(&demo_as));
        let mut opts = Options::new(&path);
        opts.listener = Some(TcpListener::bind("127.0.0.1:0").await.unwrap());
        opts.forward_listener = forward;
        opts.tls_listener = tls;
        opts.demo_as_listener = demo_as;
        opts.reload.watch = self.watch;
        let running = tokenrelay::app::start(opts).await?;
        for (what, serving, prebound) in [
            ("forward proxy", running.forward_addr, forward_addr),
            ("HTTPS listener", running.tls_addr, tls_addr),
            ("demo AS", running.demo_as_addr, demo_as_addr),
        ] {
            if prebound.is_some() {
                assert_eq!(serving, prebound, "the {what} serves on the pre-bound listener");
            }
        }
        let base = format!("http://{}", running.addr);
        Ok(TestProxy { running, dir: self.dir, base, http: client(), _temp: self.temp })
    }
}

/// With `on`, a listener on 127.0.0.1:0 whose address replaces `placeholder` in `config`.
async fn prebind(config: &mut String, placeholder: &str, on: bool) -> Option<TcpListener> {
    assert_eq!(
        config.contains(placeholder),
        on,
        "{placeholder} is in the config exactly when its listener is pre-bound"
    );
    if !on {
        return None;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    *config = config.replace(placeholder, &listener.local_addr().unwrap().to_string());
    Some(listener)
}

impl TestProxy {
    /// A builder for a proxy running `config`; see the module doc.
    pub fn builder(config: impl Into<String>) -> Builder {
        let temp = tempfile::tempdir().unwrap();
        Builder {
            config: config.into(),
            dir: temp.path().to_path_buf(),
            temp: Some(temp),
            forward: false,
            tls: false,
            demo_as: false,
            watch: true,
        }
    }

    /// `rel` under the proxy's folder.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// `http://<addr>` of the forward proxy (what `HTTPS_PROXY` says).
    pub fn forward_url(&self) -> String {
        format!("http://{}", self.forward_addr())
    }

    pub fn forward_addr(&self) -> SocketAddr {
        self.running.forward_addr.expect("no forward listener: use .forward()")
    }

    /// The port of the HTTPS reverse listener.
    pub fn tls_port(&self) -> u16 {
        self.running.tls_addr.expect("no HTTPS listener: use .tls()").port()
    }

    pub fn demo_as_addr(&self) -> SocketAddr {
        self.running.demo_as_addr.expect("no demo AS: use .demo_as()")
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

    pub async fn stop(self) {
        self.running.stop().await;
    }
}
