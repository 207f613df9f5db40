//! Hot reload: notice a saved `proxy.toml` (or any key, certificate or trust file it names),
//! build and validate the complete new [`Snapshot`] off the request path, and publish it in
//! one `watch` swap. Requests hold the `Arc<Snapshot>` they started with, so in-flight
//! requests finish on the old config; the next request sees the new one.
//!
//! What triggers a reload:
//! - **File changes.** A non-recursive notify watch on the folder of the config and of every
//!   file it names (and, for symlinks, the folder of the resolved target). Folders, not
//!   files, because editors save by rename, some tools delete and recreate, and Kubernetes
//!   swaps a `..data` symlink: a watch on the old inode would go deaf. Events are filtered to
//!   the names we care about, then debounced ([`ReloadOptions::debounce`] of quiet, at most
//!   [`DEBOUNCE_MAX`] after the first event), so one save is one reload. Whether anything
//!   changed is decided by hashing the files' contents, not by event kinds, which differ
//!   between editors and platforms.
//! - **`SIGHUP`**, and [`Handle::reload_now`]: always reload, whatever the hashes say.
//!
//! Validation is [`crate::snapshot::load`], the same function `tokenrelay run` and
//! `tokenrelay check` use, run on a blocking thread (key loading is synchronous). It writes
//! nothing: the `create = true` keys a new config names are written
//! ([`crate::snapshot::Snapshot::create_files`]) only once it is accepted. If it fails,
//! the last good snapshot keeps serving and the error is logged with file, line, column and
//! key; the next successful reload says it fixed that. Two guards against reading a save
//! halfway: the files are hashed before and after the load, and a load that raced a write is
//! read again; and an empty `proxy.toml` (what an in-place save leaves for a moment) is
//! refused, although `check` would accept it.
//!
//! Listeners (`[proxy] listen`, `listen_tls`, `forward`, `[demo_as]`, and the local CA the
//! HTTPS listener and forward mode serve with) are set up once at start. A reload that
//! changes them applies everything else and logs, in its one line, that those changes need a
//! restart; [`ReloadStats::restart_needed`] lists them until the config matches the running
//! listeners again.
//!
//! [`ReloadStatus`] (counters and times) is shared with the status endpoint
//! ([`crate::status::STATUS_PATH`] on the reverse listener).

mod diff;
mod files;
mod load;

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::Event;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::snapshot::Snapshot;
pub use crate::status::{ReloadEvent, ReloadStats, ReloadStatus};
use diff::{describe_changes, Listeners};
pub use files::{config_hash, named_files};
use files::{fingerprint, Fingerprint, Watch};
pub use load::ReloadError;
use load::{loaded_key_files, LoadJob, Loaded};

/// Default quiet period after the last file event before reloading. Editors and atomic
/// writers finish a save (temp file, write, rename, chmod) within a few milliseconds, and
/// the content is complete before a slow `fsync` returns; 50 ms is ten times that, and short
/// enough that saves 100 ms apart are reloaded one by one.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

/// A burst that never goes quiet (a tool rewriting a file in a loop) still reloads this
/// long after its first event, so saves are never starved.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(500);

/// A reload's file work (hash, read, parse, load keys) that takes longer than this is
/// refused, so a file that never finishes reading cannot hold up the next save. Loading reads
/// a few small files; on a loaded 2-core machine it takes well under 100 ms.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(2);

/// How reloads are triggered.
#[derive(Debug, Clone)]
pub struct ReloadOptions {
    /// Watch the config and every file it names.
    pub watch: bool,
    /// Reload on `SIGHUP` (Unix).
    pub sighup: bool,
    /// Quiet period that ends a burst of file events.
    pub debounce: Duration,
}

impl Default for ReloadOptions {
    fn default() -> ReloadOptions {
        ReloadOptions { watch: true, sighup: true, debounce: DEFAULT_DEBOUNCE }
    }
}

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new snapshot serves from now on.
    Applied { version: u64, changes: String },
    /// The files were refused; the last good snapshot keeps serving.
    Failed { error: String },
    /// File events, but the watched files hash the same as at the last reload.
    Unchanged,
}

/// Triggers reloads and reads their status.
#[derive(Debug, Clone)]
pub struct Handle {
    status: Arc<ReloadStatus>,
    requests: mpsc::UnboundedSender<oneshot::Sender<Outcome>>,
}

impl Handle {
    pub fn status(&self) -> ReloadStats {
        self.status.stats()
    }

    /// Reloads now, without waiting for a debounce, and returns what happened.
    pub async fn reload_now(&self) -> Outcome {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(tx).is_err() {
            return Outcome::Failed { error: "the reloader has stopped (the proxy is shutting down)".into() };
        }
        rx.await.unwrap_or_else(|_| Outcome::Failed { error: "the reloader stopped before reloading".into() })
    }
}

/// Starts the reloader for the config at `path`, whose first snapshot `snapshot` holds.
pub async fn spawn(
    path: PathBuf,
    snapshot: watch::Sender<Arc<Snapshot>>,
    status: Arc<ReloadStatus>,
    opts: ReloadOptions,
    shutdown: watch::Receiver<bool>,
    loaded_config_hash: Option<Vec<u8>>,
) -> (Handle, JoinHandle<()>) {
    let (requests_tx, requests) = mpsc::unbounded_channel();
    let handle = Handle { status: status.clone(), requests: requests_tx };
    // Everything that defines "changed" is in place before `start` returns: the watch, the
    // hashes of the files as loaded, and the SIGHUP handler (a signal sent right after the
    // "listening" line must reload, not kill the process). Set up later, a save made just
    // after start would become the baseline and never be applied.
    let (events_tx, events) = mpsc::unbounded_channel();
    let config = snapshot.borrow().config.clone();
    let watch_path = path.clone();
    // Hashing, canonicalizing and inotify setup block: off the runtime's threads.
    let setup = tokio::task::spawn_blocking(move || {
        let files = named_files(&config);
        let watch = opts.watch.then(|| start_watching(&watch_path, &files, events_tx)).flatten();
        let fingerprint = fingerprint(&files);
        (Listeners::read(&config), files, watch, fingerprint, config_hash(&watch_path))
    })
    .await;
    let (listeners, files, watch, fingerprint, config_now) = match setup {
        Ok(setup) => setup,
        Err(e) => {
            tracing::error!("cannot set up config reloading: {e}; changes apply on restart");
            let idle = tokio::spawn(async move {
                let mut shutdown = shutdown;
                crate::server::stopped(&mut shutdown).await;
            });
            return (handle, idle);
        }
    };
    let reloader = Reloader {
        listeners,
        path,
        snapshot,
        status,
        fingerprint: Some(fingerprint),
        watch,
        debounce: opts.debounce,
        files,
    };
    // A save between the first load and now produced no event we could see: if the config
    // no longer matches what was loaded, reload once right away.
    if loaded_config_hash.is_some() && config_now != loaded_config_hash {
        let (tx, _ignored) = oneshot::channel();
        let _ = handle.requests.send(tx);
    }
    let hangup = Hangup::new(opts.sighup);
    // The span names the config on every reload line (several proxies may share a log).
    let span = tracing::info_span!("reload", config = %reloader.path.display());
    let task = tokio::spawn(reloader.run(events, hangup, requests, shutdown).instrument(span));
    (handle, task)
}

/// Watches the folders of `files` (blocking: canonicalizes paths and sets up inotify).
fn start_watching(
    config: &std::path::Path,
    files: &[PathBuf],
    events: mpsc::UnboundedSender<notify::Result<Event>>,
) -> Option<Watch> {
    let watcher = notify::recommended_watcher(move |event| {
        let _ = events.send(event);
    });
    match watcher {
        Ok(watcher) => {
            let mut w = Watch { watcher, dirs: BTreeSet::new(), relevant: HashSet::new() };
            w.refresh(files);
            tracing::debug!(folders = ?w.dirs, "watching for config changes");
            Some(w)
        }
        Err(e) => {
            tracing::warn!(
                "cannot watch {} for changes: {e}; saved changes apply on SIGHUP or restart \
                 (on Linux, raise fs.inotify.max_user_instances)",
                config.display()
            );
            None
        }
    }
}

/// What woke the reloader.
enum Wake {
    Stop,
    /// A relevant file event: debounce, then reload if the contents changed.
    Files,
    /// SIGHUP or [`Handle::reload_now`]: reload now.
    Forced(Option<oneshot::Sender<Outcome>>),
}

struct Reloader {
    path: PathBuf,
    snapshot: watch::Sender<Arc<Snapshot>>,
    status: Arc<ReloadStatus>,
    listeners: Listeners,
    /// Absolute paths of the config and every file it names (from the last config parsed).
    files: Vec<PathBuf>,
    /// Contents when the last reload (or start) read them.
    fingerprint: Option<Fingerprint>,
    watch: Option<Watch>,
    debounce: Duration,
}

type FileEvents = mpsc::UnboundedReceiver<notify::Result<Event>>;

impl Reloader {
    async fn run(
        mut self,
        mut events: FileEvents,
        mut hangup: Hangup,
        mut requests: mpsc::UnboundedReceiver<oneshot::Sender<Outcome>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let wake = tokio::select! {
                _ = crate::server::stopped(&mut shutdown) => Wake::Stop,
                Some(tx) = requests.recv() => Wake::Forced(Some(tx)),
                () = hangup.recv() => Wake::Forced(None),
                Some(event) = events.recv() => match self.relevant(event) {
                    true => Wake::Files,
                    false => continue,
                },
            };
            let wake = match wake {
                Wake::Files => self.debounce(&mut events, &mut requests, &mut hangup, &mut shutdown).await,
                other => other,
            };
            // The trigger goes into the reload's log line; file changes are the usual one.
            let (trigger, waiter) = match wake {
                Wake::Stop => return,
                Wake::Files => (None, None),
                Wake::Forced(None) => (Some("SIGHUP"), None),
                Wake::Forced(Some(waiter)) => (Some("request"), Some(waiter)),
            };
            let outcome = self.reload(trigger).await;
            if let Some(tx) = waiter {
                let _ = tx.send(outcome);
            }
        }
    }

    /// Re-plans the watched folders for the current files, off the runtime's threads.
    async fn refresh_watch(&mut self) {
        let Some(mut w) = self.watch.take() else { return };
        let files = self.files.clone();
        let refreshed = tokio::task::spawn_blocking(move || {
            w.refresh(&files);
            w
        })
        .await;
        match refreshed {
            Ok(w) => self.watch = Some(w),
            Err(e) => tracing::warn!("file watching stopped: {e}; changes apply on SIGHUP or restart"),
        }
    }

    fn relevant(&self, event: notify::Result<Event>) -> bool {
        match (event, &self.watch) {
            (Ok(event), Some(w)) => {
                // Only events about the named files are logged: a log file written into the
                // config's folder (`tokenrelay -vv run 2> err.log`) must not log its own writes.
                let relevant = w.is_relevant(&event);
                if relevant {
                    tracing::trace!(kind = ?event.kind, paths = ?event.paths, "file event");
                }
                relevant
            }
            (Ok(_), None) => false,
            // Queue overflow and the like: we may have missed something, look again.
            (Err(e), _) => {
                tracing::debug!("file watch error: {e}; checking the config files");
                true
            }
        }
    }

    /// Waits until file events have been quiet for `debounce` (at most [`DEBOUNCE_MAX`]
    /// after the first). A forced reload or shutdown cuts the wait short.
    async fn debounce(
        &self,
        events: &mut FileEvents,
        requests: &mut mpsc::UnboundedReceiver<oneshot::Sender<Outcome>>,
        hangup: &mut Hangup,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Wake {
        let deadline = Instant::now() + DEBOUNCE_MAX;
        let mut quiet_until = Instant::now() + self.debounce;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(quiet_until.min(deadline)) => return Wake::Files,
                _ = crate::server::stopped(shutdown) => return Wake::Stop,
                Some(tx) = requests.recv() => return Wake::Forced(Some(tx)),
                () = hangup.recv() => return Wake::Forced(None),
                Some(event) = events.recv() => {
                    if self.relevant(event) {
                        quiet_until = Instant::now() + self.debounce;
                    }
                }
            }
        }
    }

    /// Loads, validates and publishes the config, unless nothing changed and no `trigger`
    /// (SIGHUP, request) forces it. Logs exactly one line (a debug line when nothing changed).
    async fn reload(&mut self, trigger: Option<&'static str>) -> Outcome {
        let forced = trigger.is_some();
        let by = trigger.map(|t| format!(" on {t}")).unwrap_or_default();
        self.refresh_watch().await;
        let job = LoadJob {
            path: self.path.clone(),
            files: self.files.clone(),
            last: if forced { None } else { self.fingerprint.clone() },
            settle: self.debounce,
            loaded_keys: loaded_key_files(&self.snapshot.borrow().config),
        };
        // A load stuck in the kernel (a hung network mount) is left to finish on its blocking
        // thread; the reloader refuses it and stays free for the next save.
        let loaded = match tokio::time::timeout(LOAD_TIMEOUT, tokio::task::spawn_blocking(move || job.run())).await {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) => Loaded::Done { result: Err(ReloadError::Internal(e.to_string())), read: None, files: None },
            Err(_) => Loaded::Done {
                result: Err(ReloadError::TimedOut { path: self.path.clone(), after: LOAD_TIMEOUT }),
                read: None,
                files: None,
            },
        };
        let (result, read, files) = match loaded {
            Loaded::Unchanged => {
                tracing::debug!("config files saved without changes; nothing to reload");
                return Outcome::Unchanged;
            }
            Loaded::Done { result, read, files } => (result, read, files),
        };
        let changed = changed_files(&self.path, self.fingerprint.as_ref(), read.as_ref());
        if read.is_some() {
            self.fingerprint = read;
        }
        if let Some(files) = files.filter(|f| *f != self.files) {
            self.files = files;
            self.refresh_watch().await;
        }
        let outcome = match result {
            Ok(loaded) => {
                let (snapshot, listeners) = *loaded;
                self.publish(snapshot, listeners, &by)
            }
            Err(error) => self.refuse(error, &by),
        };
        let mut event = ReloadEvent::now(self.status.stats().version, trigger.unwrap_or("files"), changed);
        match &outcome {
            Outcome::Applied { changes, .. } => {
                event.accepted = true;
                event.changes = Some(changes.clone());
            }
            Outcome::Failed { error } => event.error = Some(error.clone()),
            Outcome::Unchanged => {}
        }
        self.status.attempted(event);
        outcome
    }

    fn publish(&mut self, mut new: Snapshot, listeners: Listeners, by: &str) -> Outcome {
        let old = self.snapshot.borrow().clone();
        for w in new.warnings.iter().filter(|w| !old.warnings.contains(w)) {
            tracing::warn!("{w}");
        }
        if let Some(w) = new.config.exposure_warning() {
            tracing::warn!("{w}");
        }
        if let Some(w) = new.config.allow_users.warning() {
            tracing::warn!("{w}");
        }
        let restart = self.listeners.changes(&listeners);
        let changes = describe_changes(&old, &new);
        new.start_discovery();
        // The reloader is the only writer of the version: the snapshot carries the number it
        // will have, so a request never pairs a snapshot with another version.
        new.version = self.status.stats().version + 1;
        self.snapshot.send_replace(Arc::new(new));
        let before = self.status.applied(restart.clone());
        let version = before.version + 1;
        let mut line = format!("config reloaded{by}: version {version}: {changes}");
        if before.failing {
            let _ = write!(line, " (fixed: the last reload was refused; that error is resolved)");
        }
        if restart.is_empty() {
            tracing::info!(version, reloads = before.reloads + 1, "{line}");
        } else {
            tracing::warn!(
                version,
                reloads = before.reloads + 1,
                "{line}; restart needed for {} (still listening as started; everything else applied)",
                restart.join(", ")
            );
        }
        Outcome::Applied { version, changes }
    }

    fn refuse(&mut self, error: ReloadError, by: &str) -> Outcome {
        let error = error.to_string();
        let s = self.status.failed(error.clone());
        tracing::error!(
            version = s.version,
            failures = s.failures,
            "config reload{by} refused, still serving version {} loaded at {}: {error}",
            s.version,
            humantime::format_rfc3339_seconds(s.last_good)
        );
        Outcome::Failed { error }
    }
}

/// The files whose contents differ between `before` and `after` (added, removed or
/// changed), shown relative to the config's folder when under it.
fn changed_files(config: &std::path::Path, before: Option<&Fingerprint>, after: Option<&Fingerprint>) -> Vec<String> {
    let (Some(before), Some(after)) = (before, after) else { return Vec::new() };
    let base = std::path::absolute(config).ok().and_then(|p| p.parent().map(std::path::Path::to_path_buf));
    let shown =
        |p: &std::path::Path| base.as_deref().and_then(|b| p.strip_prefix(b).ok()).unwrap_or(p).display().to_string();
    let mut out = Vec::new();
    for (path, hash) in after {
        if before.iter().find(|(p, _)| p == path).map(|(_, h)| h) != Some(hash) {
            out.push(shown(path));
        }
    }
    for (path, _) in before {
        if !after.iter().any(|(p, _)| p == path) {
            out.push(shown(path));
        }
    }
    out
}

/// `SIGHUP`, when asked for and available; otherwise never fires.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn new(enabled: bool) -> Hangup {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signal = if enabled {
                signal(SignalKind::hangup())
                    .map_err(|e| tracing::warn!("cannot listen for SIGHUP: {e}; reload by saving the config"))
                    .ok()
            } else {
                None
            };
            Hangup { signal }
        }
        #[cfg(not(unix))]
        {
            let _ = enabled;
            Hangup {}
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.signal {
            if s.recv().await.is_some() {
                return;
            }
            // The signal driver is gone: stop listening rather than spin.
            self.signal = None;
        }
        std::future::pending::<()>().await;
    }
}
