//! The running proxy: load config, build the first snapshot, bind listeners, start the
//! demo AS, and publish new snapshots on reload.
//!
//! [`start`] is what `tokenrelay run` and the integration tests call. Tests pass pre-bound
//! listeners (`127.0.0.1:0`) so they can learn the ports before writing the config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{self, ConfigError};
use crate::demo_as::DemoAs;
use crate::proxy::Shared;
use crate::snapshot::{BuildError, BuildOptions, Snapshot};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot listen on {addr} ({key}): {source} (is another tokenrelay running? change {key} in proxy.toml)")]
    Bind { addr: SocketAddr, key: &'static str, source: std::io::Error },
}

/// What to start.
#[derive(Debug, Default)]
pub struct Options {
    pub config: PathBuf,
    /// Use this listener instead of binding `[proxy] listen`.
    pub listener: Option<TcpListener>,
    /// Use this listener instead of binding `[demo_as] listen`.
    pub demo_as_listener: Option<TcpListener>,
}

impl Options {
    pub fn new(config: impl Into<PathBuf>) -> Options {
        Options { config: config.into(), ..Options::default() }
    }
}

/// A running proxy. Dropping it does not stop it; call [`Running::stop`].
pub struct Running {
    pub addr: SocketAddr,
    pub demo_as_addr: Option<SocketAddr>,
    config_path: PathBuf,
    snapshot: watch::Sender<Arc<Snapshot>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Loads config and builds a snapshot: the one validation `run`, `check` and reload share.
pub fn load(path: &Path, opts: BuildOptions) -> Result<Snapshot, StartError> {
    let config = config::load(path)?;
    Ok(Snapshot::build(config, opts)?)
}

async fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, key, source })
}

/// Starts the proxy (and the demo AS when configured).
pub async fn start(opts: Options) -> Result<Running, StartError> {
    let snapshot = load(&opts.config, BuildOptions { create_missing: true })?;
    for w in &snapshot.warnings {
        tracing::warn!("{w}");
    }
    let config = snapshot.config.clone();
    let listener = match opts.listener {
        Some(l) => l,
        None => bind(config.listen, "[proxy] listen").await?,
    };
    let demo_listener = match (opts.demo_as_listener, &config.demo_as) {
        (Some(l), _) => Some((l, config.demo_as.as_ref().is_some_and(|d| d.dpop_nonce))),
        (None, Some(d)) => Some((bind(d.listen, "[demo_as] listen").await?, d.dpop_nonce)),
        (None, None) => None,
    };
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        key: "[proxy] listen",
        source,
    })?;
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(snapshot));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut demo_as_addr = None;
    if let Some((l, nonce)) = demo_listener {
        let demo_addr = l.local_addr().map_err(|source| StartError::Bind { addr, key: "[demo_as] listen", source })?;
        let demo = Arc::new(DemoAs::new(demo_addr, snapshot_rx.clone(), nonce));
        tracing::info!(issuer = demo.issuer(), "demo AS listening");
        tasks.push(tokio::spawn(crate::server::serve(l, demo, shutdown_rx.clone())));
        demo_as_addr = Some(demo_addr);
    }
    let shared = Arc::new(Shared::new(snapshot_rx));
    tracing::info!(%addr, routes = ?snapshot_tx.borrow().prefixes(), "tokenrelay listening");
    tasks.push(tokio::spawn(crate::server::serve(listener, shared, shutdown_rx)));
    Ok(Running { addr, demo_as_addr, config_path: opts.config, snapshot: snapshot_tx, shutdown: shutdown_tx, tasks })
}

impl crate::server::Handler for Shared {
    async fn call(
        self: Arc<Self>,
        req: http::Request<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> http::Response<crate::body::Body> {
        crate::proxy::handle(self, req, peer).await
    }
}

impl Running {
    /// The snapshot requests are served with now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// A ready-to-paste curl command that gets a token through the first route.
    pub fn curl_line(&self) -> Option<String> {
        let snapshot = self.snapshot();
        let route = snapshot.routes.iter().find(|r| r.cfg.client.is_some())?;
        let token = route.cfg.endpoints.first().map(String::as_str).unwrap_or("/token");
        Some(format!(
            "curl -s -X POST http://{}{}{} -d grant_type=client_credentials",
            self.addr, route.cfg.prefix, token
        ))
    }

    /// Stops the listeners and waits for them to finish.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
