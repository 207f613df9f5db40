//! The running proxy: load config, build the first snapshot, bind listeners, start the
//! demo AS, and publish new snapshots on reload (the reloader lives in [`crate::reload`]).
//!
//! [`start`] is what `tokenrelay run` and the integration tests call. Tests pass pre-bound
//! listeners (`127.0.0.1:0`) so they can learn the ports before writing the config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::local_ca::LocalCa;
use crate::proxy::Shared;
use crate::reload::{self, ReloadOptions, ReloadStats, ReloadStatus};
use crate::snapshot::{self, BuildOptions, LoadError, Snapshot};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the demo AS: {0}")]
    DemoAs(#[from] crate::demo_as::SpawnError),
    #[error("loading the config stopped unexpectedly: {0}")]
    Internal(String),
    #[error("cannot listen on {addr} ({key} in {}): {source} (is another tokenrelay running? change {key} in {})", config.display(), config.display())]
    Bind { addr: SocketAddr, key: &'static str, config: PathBuf, source: std::io::Error },
    #[error(transparent)]
    LocalCa(#[from] crate::local_ca::CaError),
}

/// What to start.
#[derive(Debug, Default)]
pub struct Options {
    pub config: PathBuf,
    /// Use this listener instead of binding `[proxy] listen`.
    pub listener: Option<TcpListener>,
    /// Use this listener instead of binding `[demo_as] listen`.
    pub demo_as_listener: Option<TcpListener>,
    /// Use this listener instead of binding `[proxy] forward` (when set).
    pub forward_listener: Option<TcpListener>,
    /// Use this listener instead of binding `[proxy] listen_tls` (when set).
    pub tls_listener: Option<TcpListener>,
    /// Hot reload: file watching, SIGHUP, debounce (all on by default).
    pub reload: ReloadOptions,
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
    /// The forward proxy (`[proxy] forward`), when configured.
    pub forward_addr: Option<SocketAddr>,
    /// The HTTPS reverse listener (`[proxy] listen_tls`), when configured.
    pub tls_addr: Option<SocketAddr>,
    config_path: PathBuf,
    snapshot: watch::Sender<Arc<Snapshot>>,
    reload: reload::Handle,
    /// Stops the listeners apps and clients connect to (reverse, `listen_tls`, forward).
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Stops what those listeners' requests may still need (the demo AS, often their
    /// upstream) and the reloader: sent only once the front listeners have drained.
    shutdown_back: watch::Sender<bool>,
    back_tasks: Vec<JoinHandle<()>>,
    connections: Arc<crate::server::Tracker>,
}

/// `given` (tests pre-bind `127.0.0.1:0`), or a new listener on `addr`; and its address.
async fn bind(
    given: Option<TcpListener>,
    addr: SocketAddr,
    key: &'static str,
    config: &std::path::Path,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let failed = |source| StartError::Bind { addr, key, config: config.to_path_buf(), source };
    let listener = match given {
        Some(l) => l,
        None => TcpListener::bind(addr).await.map_err(failed)?,
    };
    let local = listener.local_addr().map_err(failed)?;
    Ok((listener, local))
}

/// The local CA, when a listener serves with it (`listen_tls`, `forward`): loaded, or created
/// on first use (file work, off the runtime's threads).
async fn local_ca(config: &Arc<crate::config::Config>) -> Result<Option<Arc<LocalCa>>, StartError> {
    if config.listen_tls.is_none() && config.forward.is_none() {
        return Ok(None);
    }
    let c = config.clone();
    let (ca, created) = tokio::task::spawn_blocking(move || LocalCa::load_or_create(&c))
        .await
        .map_err(|e| StartError::Internal(e.to_string()))??;
    if created {
        tracing::info!(cert = %config.ca_cert.display(), "created the local CA; trust it with `tokenrelay ca`");
    }
    if let Some(w) = ca.warning() {
        tracing::warn!("{w}");
    }
    Ok(Some(Arc::new(ca)))
}

/// Starts the proxy (and the demo AS when configured).
pub async fn start(opts: Options) -> Result<Running, StartError> {
    // Reading and hashing files blocks: keep it off the runtime's threads.
    let path = opts.config.clone();
    let (loaded_hash, snapshot) = tokio::task::spawn_blocking(move || {
        let hash = reload::config_hash(&path);
        (hash, snapshot::load(&path, BuildOptions { create_missing: true, ..Default::default() }))
    })
    .await
    .map_err(|e| StartError::Internal(e.to_string()))?;
    let snapshot = snapshot?;
    for w in &snapshot.warnings {
        tracing::warn!("{w}");
    }
    if let Some(w) = snapshot.config.exposure_warning() {
        tracing::warn!("{w}");
    }
    if let Some(w) = snapshot.config.allow_users.warning() {
        tracing::warn!("{w}");
    }
    let config = snapshot.config.clone();
    let (listener, addr) = bind(opts.listener, config.listen, "[proxy] listen", &config.path).await?;
    let demo = match &config.demo_as {
        Some(d) => Some(bind(opts.demo_as_listener, d.listen, "[demo_as] listen", &config.path).await?),
        None => None,
    };
    let tls = match config.listen_tls {
        Some(a) => Some(bind(opts.tls_listener, a, "[proxy] listen_tls", &config.path).await?),
        None => None,
    };
    let forward = match config.forward {
        Some(a) => Some(bind(opts.forward_listener, a, "[proxy] forward", &config.path).await?),
        None => None,
    };
    let (demo_as_addr, tls_addr, forward_addr) =
        (demo.as_ref().map(|d| d.1), tls.as_ref().map(|t| t.1), forward.as_ref().map(|f| f.1));
    // Before the reloader starts: it must see the CA as it was at start, not as a change.
    let ca = local_ca(&config).await?;
    // Config, listeners and local CA are all good: only now are the config's `create = true`
    // files written (a start refused earlier leaves none), before the demo AS reads its CA.
    let mut snapshot = snapshot;
    let snapshot = tokio::task::spawn_blocking(move || snapshot.create_files().map(|()| snapshot))
        .await
        .map_err(|e| StartError::Internal(e.to_string()))?
        .map_err(LoadError::from)?;
    // Discovery runs in the background: listeners start without waiting for any AS.
    snapshot.start_discovery();
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(snapshot));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (back_tx, back_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut back_tasks = Vec::new();
    // One connection budget for every listener (see `crate::server`): a flood on one
    // cannot starve the others of descriptors.
    // Who may connect: the live config's `allow_users`, read at each accept (`crate::peer`).
    let peers = {
        let snapshot = snapshot_rx.clone();
        crate::peer::Gate::live(move || snapshot.borrow().config.allow_users.clone())
    };
    let connections =
        crate::server::Tracker::with_peers(crate::server::connection_limit(config.max_connections), peers);
    tracing::debug!(limit = connections.limit(), "connection limit");
    if let Some((l, _)) = demo {
        let (issuer, task) =
            crate::demo_as::spawn(l, &config, snapshot_rx.clone(), connections.clone(), back_rx.clone())?;
        tracing::info!(%issuer, "demo AS listening");
        back_tasks.push(task);
    }
    let reload_status = Arc::new(ReloadStatus::default());
    let mut shared = Shared::new(snapshot_rx);
    shared.reload = reload_status.clone();
    let shared = Arc::new(shared);
    tracing::info!(%addr, routes = ?snapshot_tx.borrow().prefixes(), "tokenrelay listening");
    tracing::info!("who may connect: {}", config.allow_users.describe());
    if let (Some((l, local)), Some(ca)) = (tls, &ca) {
        let resolver = Arc::new(crate::local_ca::LoopbackResolver(ca.clone()));
        let server_tls = crate::local_ca::server_config(resolver)?;
        tracing::info!(addr = %local, "tokenrelay listening over HTTPS (local CA leaf for localhost, 127.0.0.1, ::1)");
        tasks.push(tokio::spawn(crate::server::serve_tls(
            l,
            server_tls,
            shared.clone(),
            connections.clone(),
            shutdown_rx.clone(),
        )));
    }
    if let (Some((l, local)), Some(ca)) = (forward, &ca) {
        tracing::info!(addr = %local, unknown_hosts = ?config.unknown_hosts, "forward proxy listening (HTTPS_PROXY)");
        tasks.push(crate::forward::spawn(l, ca.clone(), &config, &shared, &connections, &shutdown_rx));
    }
    let (reload, reloader) =
        reload::spawn(opts.config.clone(), snapshot_tx.clone(), reload_status, opts.reload, back_rx, loaded_hash).await;
    back_tasks.push(reloader);
    tasks.push(tokio::spawn(crate::server::serve(listener, shared, connections.clone(), shutdown_rx)));
    Ok(Running {
        addr,
        demo_as_addr,
        forward_addr,
        tls_addr,
        config_path: opts.config,
        snapshot: snapshot_tx,
        reload,
        shutdown: shutdown_tx,
        tasks,
        shutdown_back: back_tx,
        back_tasks,
        connections,
    })
}

impl crate::server::Handler for Shared {
    async fn call(
        self: Arc<Self>,
        req: http::Request<hyper::body::Incoming>,
        conn: crate::server::Conn,
    ) -> http::Response<crate::body::Body> {
        crate::proxy::handle(self, req, conn).await
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

    /// Reload counters and times (what `GET /.tokenrelay/status` answers).
    pub fn reload_status(&self) -> ReloadStats {
        self.reload.status()
    }

    /// Reloads the config now, as `SIGHUP` does, and says what happened.
    pub async fn reload_now(&self) -> reload::Outcome {
        self.reload.reload_now().await
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

    /// Connections (and tunnels) open now, across every listener, and the cap they share.
    pub fn connections(&self) -> (usize, usize) {
        (self.connections.open(), self.connections.limit())
    }

    /// Stops gracefully: the listeners close at once (new connections are refused), requests
    /// in flight finish (at most [`crate::server::SHUTDOWN_GRACE`]), then the demo AS and the
    /// reloader stop. The demo AS goes last because in-flight requests may be on their way to
    /// it.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = self.shutdown_back.send(true);
        for t in self.back_tasks {
            let _ = t.await;
        }
    }
}
