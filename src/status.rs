//! Reload state, as `GET /.tokenrelay/status` on the reverse listener shows it: the serving
//! config version, reload counters and times, the last refused reload's error, and the
//! listener changes that wait for a restart; and the recent reload attempts
//! (`GET /.tokenrelay/reloads`, [`ReloadEvent`]), which the inspector shows between the
//! exchanges. Written by [`crate::reload`], read by the
//! status endpoint in [`crate::proxy`] and by [`crate::app::Running`].

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, HeaderValue, Response};

use crate::body::{full, Body};

/// Where the reverse listener answers with [`ReloadStats`] as JSON.
pub const STATUS_PATH: &str = "/.tokenrelay/status";

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

/// How many reload attempts [`ReloadStatus::history`] keeps.
pub const RELOAD_HISTORY: usize = 50;

/// One reload attempt, as `GET /.tokenrelay/reloads` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadEvent {
    /// The config version serving after the attempt (new when accepted, the old one when
    /// refused).
    pub version: u64,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// What started it: `files` (a save), `SIGHUP` or `request`.
    pub trigger: &'static str,
    /// The watched files whose contents changed since the last attempt (as the config
    /// names them, relative to its folder when under it).
    pub files: Vec<String>,
    pub accepted: bool,
    /// What an accepted reload changed (the reload log line's summary).
    pub changes: Option<String>,
    /// Why a refused reload was refused (file, line, column and key where known).
    pub error: Option<String>,
}

impl ReloadEvent {
    /// An attempt that ended now.
    pub fn now(version: u64, trigger: &'static str, files: Vec<String>) -> ReloadEvent {
        ReloadEvent {
            version,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            trigger,
            files,
            accepted: false,
            changes: None,
            error: None,
        }
    }
}

/// Reload state shared by the reloader, the status endpoint and [`crate::app::Running`].
#[derive(Debug)]
pub struct ReloadStatus {
    stats: Mutex<ReloadStats>,
    history: Mutex<VecDeque<ReloadEvent>>,
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
            history: Mutex::new(VecDeque::new()),
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
    pub(crate) fn applied(&self, restart_needed: Vec<String>) -> ReloadStats {
        let mut s = self.lock();
        let before = s.clone();
        s.version += 1;
        s.reloads += 1;
        s.last_good = SystemTime::now();
        s.failing = false;
        s.restart_needed = restart_needed;
        before
    }

    /// Keeps `event` in the history (the last [`RELOAD_HISTORY`]).
    pub(crate) fn attempted(&self, event: ReloadEvent) {
        let mut h = self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while h.len() >= RELOAD_HISTORY {
            h.pop_front();
        }
        h.push_back(event);
    }

    /// The recent reload attempts, newest first.
    pub fn history(&self) -> Vec<ReloadEvent> {
        let h = self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        h.iter().rev().cloned().collect()
    }

    pub(crate) fn failed(&self, error: String) -> ReloadStats {
        let mut s = self.lock();
        s.failures += 1;
        s.last_failed = Some(SystemTime::now());
        s.last_error = Some(error);
        s.failing = true;
        s.clone()
    }
}

/// The status endpoint's answer.
pub fn response(status: &ReloadStatus) -> Response<Body> {
    let body = status.stats().to_json().to_string();
    let mut resp = Response::new(full(Bytes::from(body)));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The reloads endpoint's answer: [`ReloadStatus::history`] as a JSON array.
pub fn reloads_response(status: &ReloadStatus) -> Response<Body> {
    let body = serde_json::to_string(&status.history()).unwrap_or_else(|_| "[]".into());
    let mut resp = Response::new(full(Bytes::from(body)));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
