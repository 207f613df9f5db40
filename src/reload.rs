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
//! Validation is [`crate::app::load`], the same function `tokenrelay run` and
//! `tokenrelay check` use, run on a blocking thread (key loading is synchronous). If it fails,
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
//! ([`STATUS_PATH`] on the reverse listener).

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::body::{full, Body};
use crate::config::Config;
use crate::snapshot::{BuildOptions, Credential, Route, Snapshot};

/// Where the reverse listener answers with [`ReloadStats`] as JSON.
pub const STATUS_PATH: &str = "/.tokenrelay/status";

/// Default quiet period after the last file event before reloading. Editors and atomic
/// writers finish a save (temp file, write, rename, chmod) within a few milliseconds, and
/// the content is complete before a slow `fsync` returns; 50 ms is ten times that, and short
/// enough that saves 100 ms apart are reloaded one by one.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

/// A burst that never goes quiet (a tool rewriting a file in a loop) still reloads this
/// long after its first event, so saves are never starved.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(500);

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

/// Reload counters and times, as the status endpoint shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadStats {
    /// Config version serving now: 1 at start, +1 per applied reload.
    pub version: u64,
    /// Reloads applied since start.
    pub reloads: u64,
    /// Reloads refused since start (the last good config kept serving).
    pub failures: u64,
    /// When the serving config was loaded (start, or the last applied reload).
    pub last_good: SystemTime,
    pub last_failed: Option<SystemTime>,
    /// The error of the last refused reload (kept after a fix, for the record).
    pub last_error: Option<String>,
    /// The files on disk are currently refused: the serving config is older than them.
    pub failing: bool,
    /// Listener changes in the config that only a restart applies.
    pub restart_needed: Vec<String>,
}

impl ReloadStats {
    /// The JSON the status endpoint answers with (times in RFC 3339, UTC).
    pub fn to_json(&self) -> serde_json::Value {
        let time = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
        serde_json::json!({
            "version": self.version,
            "reloads": self.reloads,
            "failures": self.failures,
            "last_good": time(self.last_good),
            "last_failed": self.last_failed.map(time),
            "last_error": self.last_error,
            "failing": self.failing,
            "restart_needed": self.restart_needed,
        })
    }
}

/// Reload state shared by the reloader, the status endpoint and [`crate::app::Running`].
#[derive(Debug)]
pub struct ReloadStatus {
    stats: Mutex<ReloadStats>,
}

impl Default for ReloadStatus {
    fn default() -> ReloadStatus {
        ReloadStatus {
            stats: Mutex::new(ReloadStats {
                version: 1,
                reloads: 0,
                failures: 0,
                last_good: SystemTime::now(),
                last_failed: None,
                last_error: None,
                failing: false,
                restart_needed: Vec::new(),
            }),
        }
    }
}

impl ReloadStatus {
    pub fn stats(&self) -> ReloadStats {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReloadStats> {
        // The stats stay consistent field by field; a panic elsewhere must not wedge them.
        self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records an applied reload; returns the stats before it.
    fn applied(&self, restart_needed: Vec<String>) -> ReloadStats {
        let mut s = self.lock();
        let before = s.clone();
        s.version += 1;
        s.reloads += 1;
        s.last_good = SystemTime::now();
        s.failing = false;
        s.restart_needed = restart_needed;
        before
    }

    fn failed(&self, error: String) -> ReloadStats {
        let mut s = self.lock();
        s.failures += 1;
        s.last_failed = Some(SystemTime::now());
        s.last_error = Some(error);
        s.failing = true;
        s.clone()
    }
}

/// The status endpoint's answer.
pub fn status_response(status: &ReloadStatus) -> Response<Body> {
    let body = status.stats().to_json().to_string();
    let mut resp = Response::new(full(Bytes::from(body)));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
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
pub fn spawn(
    path: PathBuf,
    snapshot: watch::Sender<Arc<Snapshot>>,
    status: Arc<ReloadStatus>,
    opts: ReloadOptions,
    shutdown: watch::Receiver<bool>,
    loaded_config_hash: Option<Vec<u8>>,
) -> (Handle, JoinHandle<()>) {
    let (requests_tx, requests) = mpsc::unbounded_channel();
    let handle = Handle { status: status.clone(), requests: requests_tx };
    let current = snapshot.borrow().clone();
    let files = named_files(&current.config);
    let mut reloader = Reloader {
        listeners: Listeners::read(&current.config),
        path,
        snapshot,
        status,
        fingerprint: None,
        watch: None,
        debounce: opts.debounce,
        files,
    };
    // Everything that defines "changed" is in place before `start` returns: the watch, the
    // hashes of the files as loaded, and the SIGHUP handler (a signal sent right after the
    // "listening" line must reload, not kill the process). Set up later, a save made just
    // after start would become the baseline and never be applied.
    let (events_tx, events) = mpsc::unbounded_channel();
    if opts.watch {
        reloader.start_watching(events_tx);
    }
    reloader.fingerprint = Some(fingerprint(&reloader.files));
    // A save between the first load and now produced no event we could see: if the config
    // no longer matches what was loaded, reload once right away.
    let config_now = config_hash(&reloader.path);
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

/// What the running listeners were started with. Only a restart changes these: the
/// listeners are bound once, and the HTTPS listener, forward mode and the demo AS keep the
/// settings and certificates they started with.
#[derive(Debug, Clone, PartialEq)]
struct Listeners {
    listen: SocketAddr,
    listen_tls: Option<SocketAddr>,
    forward: Option<SocketAddr>,
    /// `[demo_as]` as a whole (its `Debug` form: the type has no `PartialEq`).
    demo_as: Option<(SocketAddr, String)>,
    /// The local CA's files and a hash of their contents, when a listener serves with it.
    local_ca: Option<(PathBuf, PathBuf, Option<[u8; 32]>)>,
}

impl Listeners {
    /// Reads `c`'s listener settings (and hashes the local CA's files: blocking I/O).
    fn read(c: &Config) -> Listeners {
        let local_ca = (c.listen_tls.is_some() || c.forward.is_some()).then(|| {
            let mut hash = Sha256::new();
            let read = [&c.ca_cert, &c.ca_key].iter().all(|p| std::fs::read(p).map(|b| hash.update(b)).is_ok());
            (c.ca_cert.clone(), c.ca_key.clone(), read.then(|| hash.finalize().into()))
        });
        Listeners {
            listen: c.listen,
            listen_tls: c.listen_tls,
            forward: c.forward,
            demo_as: c.demo_as.as_ref().map(|d| (d.listen, format!("{d:?}"))),
            local_ca,
        }
    }

    /// What `new` asks for that only a restart gives, as `key old -> new`.
    fn changes(&self, new: &Listeners) -> Vec<String> {
        fn show<T: std::fmt::Display>(v: Option<T>) -> String {
            v.map_or_else(|| "(off)".to_string(), |v| v.to_string())
        }
        let mut out = Vec::new();
        if self.listen != new.listen {
            out.push(format!("proxy.listen {} -> {}", self.listen, new.listen));
        }
        if self.listen_tls != new.listen_tls {
            out.push(format!("proxy.listen_tls {} -> {}", show(self.listen_tls), show(new.listen_tls)));
        }
        if self.forward != new.forward {
            out.push(format!("proxy.forward {} -> {}", show(self.forward), show(new.forward)));
        }
        let demo_listen = |l: &Listeners| l.demo_as.as_ref().map(|d| d.0);
        if demo_listen(self) != demo_listen(new) {
            out.push(format!("demo_as.listen {} -> {}", show(demo_listen(self)), show(demo_listen(new))));
        } else if self.demo_as != new.demo_as {
            out.push("[demo_as] settings".into());
        }
        if let (Some(a), Some(b)) = (&self.local_ca, &new.local_ca) {
            if a != b {
                out.push("proxy.ca_cert/ca_key (the local CA the HTTPS listener and forward mode serve with)".into());
            }
        }
        out
    }
}

/// The contents of the watched files at one moment: path and SHA-256 (`None`: unreadable).
/// Kept in memory only; key files' hashes never reach a log.
type Fingerprint = Vec<(PathBuf, Option<[u8; 32]>)>;

/// SHA-256 of the config file, taken before the first load (see [`spawn`]).
pub fn config_hash(path: &std::path::Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok().map(|b| Sha256::digest(b).to_vec())
}

fn fingerprint(files: &[PathBuf]) -> Fingerprint {
    files.iter().map(|f| (f.clone(), std::fs::read(f).ok().map(|bytes| Sha256::digest(bytes).into()))).collect()
}

/// `path` made absolute (without resolving symlinks), so it compares equal to the paths
/// notify reports for the watched folders.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The config file and every file it names, absolute, without duplicates.
pub fn named_files(c: &Config) -> Vec<PathBuf> {
    let mut files = vec![c.path.clone()];
    for r in &c.routes {
        files.extend(r.client.as_ref().and_then(|cl| cl.key.clone()));
        files.extend(r.dpop.as_ref().map(|d| d.key.clone()));
        if let Some(m) = &r.mtls {
            files.push(m.cert.clone());
            files.push(m.key.clone());
        }
        files.extend(r.trust.iter().cloned());
    }
    files.push(c.ca_cert.clone());
    files.push(c.ca_key.clone());
    let mut seen = HashSet::new();
    files.into_iter().map(|f| absolute(&f)).filter(|f| seen.insert(f.clone())).collect()
}

/// The notify watcher and what it watches.
struct Watch {
    watcher: RecommendedWatcher,
    dirs: BTreeSet<PathBuf>,
    /// Paths whose events matter: the files, their resolved targets, the first hop of a
    /// relative symlink (`..data` in `proxy.toml -> ..data/proxy.toml`), missing folders.
    relevant: HashSet<PathBuf>,
}

impl Watch {
    /// Re-plans the watched folders for `files` and (un)watches the difference. Called
    /// before every reload: a symlink swap moves targets, a new config names new folders.
    fn refresh(&mut self, files: &[PathBuf]) {
        let mut dirs = BTreeSet::new();
        let mut relevant = HashSet::new();
        for f in files {
            relevant.insert(f.clone());
            dirs.insert(existing_folder(f, &mut relevant));
            if let Ok(target) = std::fs::read_link(f) {
                if let (Some(parent), Some(first)) = (f.parent(), target.components().next()) {
                    if target.is_relative() {
                        relevant.insert(parent.join(first));
                    }
                }
            }
            // A symlinked file edited in place changes in its target's folder, not ours.
            if let Ok(resolved) = std::fs::canonicalize(f) {
                if resolved != *f {
                    dirs.insert(existing_folder(&resolved, &mut relevant));
                    relevant.insert(resolved);
                }
            }
        }
        for gone in self.dirs.difference(&dirs) {
            // The folder may already be gone (a swapped-out Kubernetes `..<timestamp>` dir).
            let _ = self.watcher.unwatch(gone);
        }
        for dir in dirs.difference(&self.dirs) {
            if let Err(e) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(
                    folder = %dir.display(),
                    "cannot watch for config changes: {e} (saves there apply on SIGHUP or restart)"
                );
            }
        }
        self.dirs = dirs;
        self.relevant = relevant;
    }

    fn is_relevant(&self, event: &Event) -> bool {
        // Our own reads show up as opens; only writes, creations, renames and removals count.
        if let EventKind::Access(kind) = event.kind {
            if !matches!(kind, notify::event::AccessKind::Close(notify::event::AccessMode::Write)) {
                return false;
            }
        }
        event.need_rescan() || event.paths.is_empty() || event.paths.iter().any(|p| self.relevant.contains(p))
    }
}

/// The folder to watch for `file`: its parent, or the nearest existing ancestor when the
/// parent does not exist yet (the missing folders' creation is then relevant).
fn existing_folder(file: &Path, relevant: &mut HashSet<PathBuf>) -> PathBuf {
    let mut dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
    while !dir.is_dir() {
        relevant.insert(dir.clone());
        match dir.parent() {
            Some(up) => dir = up.to_path_buf(),
            None => break,
        }
    }
    dir
}

/// What woke the reloader.
enum Wake {
    Stop,
    /// A relevant file event: debounce, then reload if the contents changed.
    Files,
    /// SIGHUP or [`Handle::reload_now`]: reload now.
    Forced(Option<oneshot::Sender<Outcome>>),
}

/// How often a load is retried when the files change while it reads them.
const SETTLE_ATTEMPTS: usize = 5;

/// One reload's file work, run on a blocking thread: hash, load, hash again.
/// The signing key files a config names (client and DPoP keys).
fn loaded_key_files(config: &crate::config::Config) -> Vec<PathBuf> {
    config
        .routes
        .iter()
        .flat_map(|r| {
            r.client.as_ref().and_then(|c| c.key.clone()).into_iter().chain(r.dpop.as_ref().map(|d| d.key.clone()))
        })
        .collect()
}

struct LoadJob {
    path: PathBuf,
    files: Vec<PathBuf>,
    /// Hashes at the last reload; `None` forces a load.
    last: Option<Fingerprint>,
    settle: Duration,
    /// Key files the serving snapshot loaded (see `BuildOptions::never_create`).
    loaded_keys: Vec<PathBuf>,
}

enum Loaded {
    Unchanged,
    Done {
        /// The new snapshot and the listener settings it asks for.
        result: Result<Box<(Snapshot, Listeners)>, String>,
        /// The hashes the load saw (`None` when it never got a stable read).
        read: Option<Fingerprint>,
        /// The files the new config names, when it parsed.
        files: Option<Vec<PathBuf>>,
    },
}

impl LoadJob {
    fn run(self) -> Loaded {
        let mut files = None;
        for _ in 0..SETTLE_ATTEMPTS {
            let before = fingerprint(&self.files);
            if self.last.as_ref() == Some(&before) {
                return Loaded::Unchanged;
            }
            // An editor saving in place truncates first; an empty config would be valid
            // (no routes) and would turn every request into a 404, so it is never applied.
            if std::fs::metadata(&self.path).is_ok_and(|m| m.len() == 0) {
                let error = format!(
                    "{}: the file is empty (a save in progress?); to really run without routes, \
                     leave a comment in it",
                    self.path.display()
                );
                return Loaded::Done { result: Err(error), read: Some(before), files: None };
            }
            // THE validation `run` and `check` use.
            let opts = BuildOptions { create_missing: true, never_create: self.loaded_keys.clone() };
            let loaded = crate::app::load(&self.path, opts);
            // When only a key file is bad, still learn which files the new config names, so
            // that fixing it is noticed.
            files = match &loaded {
                Ok(snapshot) => Some(named_files(&snapshot.config)),
                Err(_) => crate::config::load(&self.path).ok().map(|c| named_files(&c)),
            };
            // A write that raced the load (a half-written file) shows up as changed hashes:
            // read again once it settles rather than publish what was half there.
            if fingerprint(&self.files) == before {
                let result = loaded.map(|s| {
                    let listeners = Listeners::read(&s.config);
                    Box::new((s, listeners))
                });
                return Loaded::Done { result: result.map_err(|e| e.to_string()), read: Some(before), files };
            }
            std::thread::sleep(self.settle);
        }
        // Still changing: refuse; the writes' own events bring another reload.
        let error = format!("{}: the config files kept changing while being read", self.path.display());
        Loaded::Done { result: Err(error), read: None, files }
    }
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

    fn start_watching(&mut self, events: mpsc::UnboundedSender<notify::Result<Event>>) {
        let watcher = notify::recommended_watcher(move |event| {
            let _ = events.send(event);
        });
        match watcher {
            Ok(watcher) => {
                let mut w = Watch { watcher, dirs: BTreeSet::new(), relevant: HashSet::new() };
                w.refresh(&self.files);
                tracing::debug!(folders = ?w.dirs, "watching for config changes");
                self.watch = Some(w);
            }
            Err(e) => tracing::warn!(
                "cannot watch {} for changes: {e}; saved changes apply on SIGHUP or restart \
                 (on Linux, raise fs.inotify.max_user_instances)",
                self.path.display()
            ),
        }
    }

    fn relevant(&self, event: notify::Result<Event>) -> bool {
        match (event, &self.watch) {
            (Ok(event), Some(w)) => {
                let relevant = w.is_relevant(&event);
                tracing::trace!(relevant, kind = ?event.kind, paths = ?event.paths, "file event");
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
        if let Some(w) = &mut self.watch {
            w.refresh(&self.files);
        }
        let job = LoadJob {
            path: self.path.clone(),
            files: self.files.clone(),
            last: if forced { None } else { self.fingerprint.clone() },
            settle: self.debounce,
            loaded_keys: loaded_key_files(&self.snapshot.borrow().config),
        };
        let loaded = tokio::task::spawn_blocking(move || job.run()).await.unwrap_or_else(|e| Loaded::Done {
            result: Err(format!("loading the config panicked or was cancelled: {e}")),
            read: None,
            files: None,
        });
        let (result, read, files) = match loaded {
            Loaded::Unchanged => {
                tracing::debug!("config files saved without changes; nothing to reload");
                return Outcome::Unchanged;
            }
            Loaded::Done { result, read, files } => (result, read, files),
        };
        if read.is_some() {
            self.fingerprint = read;
        }
        if let Some(files) = files.filter(|f| *f != self.files) {
            self.files = files;
            if let Some(w) = &mut self.watch {
                w.refresh(&self.files);
            }
        }
        match result {
            Ok(loaded) => {
                let (snapshot, listeners) = *loaded;
                self.publish(snapshot, listeners, &by)
            }
            Err(error) => self.refuse(error, &by),
        }
    }

    fn publish(&mut self, new: Snapshot, listeners: Listeners, by: &str) -> Outcome {
        let old = self.snapshot.borrow().clone();
        for w in new.warnings.iter().filter(|w| !old.warnings.contains(w)) {
            tracing::warn!("{w}");
        }
        let restart = self.listeners.changes(&listeners);
        let changes = describe_changes(&old, &new);
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

    fn refuse(&mut self, error: String, by: &str) -> Outcome {
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

/// One phrase for the reload log line: routes added / removed / changed (which settings),
/// keys rotated (old -> new `kid` / thumbprint), proxy settings changed.
pub fn describe_changes(old: &Snapshot, new: &Snapshot) -> String {
    let find = |s: &Snapshot, name: &str| s.routes.iter().find(|r| r.cfg.name == name).cloned();
    let mut added: Vec<&str> = Vec::new();
    let mut changed = Vec::new();
    let mut rotated = Vec::new();
    for r in &new.routes {
        let Some(before) = find(old, &r.cfg.name) else {
            added.push(&r.cfg.name);
            continue;
        };
        let fields = changed_settings(&before, r);
        if !fields.is_empty() {
            changed.push(format!("{} ({})", r.cfg.name, fields.join(", ")));
        }
        rotated.extend(rotated_keys(&before, r).into_iter().map(|k| format!("{} {k}", r.cfg.name)));
    }
    let removed: Vec<&str> =
        old.routes.iter().filter(|r| find(new, &r.cfg.name).is_none()).map(|r| r.cfg.name.as_str()).collect();
    let (a, b) = (&old.config, &new.config);
    let mut proxy = Vec::new();
    if a.unknown_hosts != b.unknown_hosts {
        proxy.push("unknown_hosts");
    }
    if a.ca_cert != b.ca_cert || a.ca_key != b.ca_key {
        proxy.push("ca_cert/ca_key");
    }
    if a.max_body != b.max_body {
        proxy.push("max_body");
    }
    if a.allow_origins != b.allow_origins {
        proxy.push("allow_origins");
    }
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("routes added [{}]", added.join(", ")));
    }
    if !removed.is_empty() {
        parts.push(format!("routes removed [{}]", removed.join(", ")));
    }
    if !changed.is_empty() {
        parts.push(format!("routes changed [{}]", changed.join("; ")));
    }
    if !rotated.is_empty() {
        parts.push(format!("keys rotated [{}]", rotated.join("; ")));
    }
    if !proxy.is_empty() {
        parts.push(format!("proxy settings changed [{}]", proxy.join(", ")));
    }
    if parts.is_empty() {
        return "no changes to routes, keys or settings".into();
    }
    parts.join("; ")
}

/// Which settings of a route differ. Only names are returned, never values.
fn changed_settings(old: &Route, new: &Route) -> Vec<&'static str> {
    let (a, b) = (&old.cfg, &new.cfg);
    // The secret is reported on its own, as `client.secret`.
    let client_changed = match (&a.client, &b.client) {
        (Some(x), Some(y)) => {
            let mut y = y.clone();
            y.secret = x.secret.clone();
            *x != y
        }
        (x, y) => x != y,
    };
    let fields: [(&'static str, bool); 12] = [
        ("prefix", a.prefix != b.prefix),
        ("hosts", a.hosts != b.hosts),
        ("upstream", a.upstream != b.upstream),
        ("issuer", a.issuer != b.issuer),
        ("trust", a.trust != b.trust),
        ("timeout", a.timeout != b.timeout),
        ("endpoints", a.endpoints != b.endpoints),
        ("client", client_changed),
        ("dpop", a.dpop != b.dpop),
        ("mtls", a.mtls != b.mtls),
        ("headers", a.headers != b.headers),
        ("params", a.params != b.params),
    ];
    let mut out: Vec<&'static str> = fields.iter().filter(|(_, d)| *d).map(|(n, _)| *n).collect();
    if let (Credential::Secret(x), Credential::Secret(y)) = (&old.credential, &new.credential) {
        if x != y {
            out.push("client.secret");
        }
    }
    if out.is_empty() && a != b {
        // A setting added to RouteConfig after this list was written.
        out.push("other settings");
    }
    out
}

/// Keys whose file now holds a different key: `client.key kid A -> B`.
fn rotated_keys(old: &Route, new: &Route) -> Vec<String> {
    let mut out = Vec::new();
    if let (Credential::Key(a), Credential::Key(b)) = (&old.credential, &new.credential) {
        if a.thumbprint() != b.thumbprint() {
            out.push(format!("client.key kid {} -> {}", a.thumbprint(), b.thumbprint()));
        }
    }
    if let (Some(a), Some(b)) = (&old.dpop_key, &new.dpop_key) {
        if a.thumbprint() != b.thumbprint() {
            out.push(format!("dpop.key jkt {} -> {}", a.thumbprint(), b.thumbprint()));
        }
    }
    if let (Some(a), Some(b)) = (&old.cert_thumbprint, &new.cert_thumbprint) {
        if a != b {
            out.push(format!("mtls.cert x5t#S256 {a} -> {b}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn snapshot(dir: &Path, toml: &str) -> Snapshot {
        let path = dir.join("proxy.toml");
        std::fs::write(&path, toml).unwrap();
        crate::app::load(&path, BuildOptions { create_missing: true, ..Default::default() }).unwrap()
    }

    const BASE: &str = r#"
[routes.a]
prefix = "/a"
upstream = "http://127.0.0.1:9"
[routes.a.client]
id = "app"
auth = "private_key_jwt"
key = "a.pem"
create = true
[routes.b]
prefix = "/b"
upstream = "http://127.0.0.1:9"
[routes.b.client]
id = "app"
auth = "client_secret_post"
secret = "one"
"#;

    #[test]
    fn identical_configs_describe_no_changes() {
        let dir = tempfile::tempdir().unwrap();
        let a = snapshot(dir.path(), BASE);
        let b = snapshot(dir.path(), BASE);
        assert_eq!(describe_changes(&a, &b), "no changes to routes, keys or settings");
    }

    #[test]
    fn routes_settings_secrets_and_keys_are_named_without_values() {
        let dir = tempfile::tempdir().unwrap();
        let a = snapshot(dir.path(), BASE);
        std::fs::remove_file(dir.path().join("a.pem")).unwrap();
        let edited = BASE.replace("secret = \"one\"", "secret = \"two\"\n[routes.b.headers]\nset = { x = \"1\" }")
            + "[routes.c]\nprefix = \"/c\"\nupstream = \"http://127.0.0.1:9\"\n";
        let b = snapshot(dir.path(), &edited);
        let line = describe_changes(&a, &b);
        assert!(line.contains("routes added [c]"), "{line}");
        assert!(line.contains("routes changed [b (headers, client.secret)]"), "{line}");
        let (Credential::Key(old), Credential::Key(new)) = (&a.routes[0].credential, &b.routes[0].credential) else {
            panic!("route a signs with a key")
        };
        assert!(line.contains(&format!(
            "keys rotated [a client.key kid {} -> {}]",
            old.thumbprint(),
            new.thumbprint()
        )));
        assert!(!line.contains("one") && !line.contains("two"), "no secret values: {line}");
        let c = snapshot(dir.path(), BASE);
        assert!(describe_changes(&b, &c).contains("routes removed [c]"));
    }

    #[test]
    fn listener_changes_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let a = snapshot(dir.path(), BASE);
        let b = snapshot(dir.path(), &format!("[proxy]\nlisten = \"127.0.0.1:1\"\nforward = \"127.0.0.1:2\"\n{BASE}"));
        let changes = Listeners::read(&a.config).changes(&Listeners::read(&b.config));
        assert_eq!(changes, ["proxy.listen 127.0.0.1:8787 -> 127.0.0.1:1", "proxy.forward (off) -> 127.0.0.1:2"]);
    }

    #[test]
    fn named_files_cover_keys_and_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let s = snapshot(dir.path(), BASE);
        let files = named_files(&s.config);
        assert!(files.contains(&dir.path().join("proxy.toml")));
        assert!(files.contains(&dir.path().join("a.pem")));
        assert!(files.iter().all(|f| f.is_absolute()));
    }

    #[test]
    fn relative_symlink_first_hop_is_relevant() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/proxy.toml"), "").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
            std::os::unix::fs::symlink("..data/proxy.toml", d.join("proxy.toml")).unwrap();
            let (tx, _rx) = std::sync::mpsc::channel();
            let watcher = notify::recommended_watcher(tx).unwrap();
            let mut w = Watch { watcher, dirs: BTreeSet::new(), relevant: HashSet::new() };
            w.refresh(&[d.join("proxy.toml")]);
            assert!(w.relevant.contains(&d.join("..data")));
            let canonical = std::fs::canonicalize(d).unwrap();
            assert!(w.dirs.contains(&canonical.join("..v1")), "{:?}", w.dirs);
        }
    }
}
