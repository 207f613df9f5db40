//! One reload's file work, run on a blocking thread: hash the files, load and validate the
//! config, hash again, and read again when a write raced the load.

use std::path::PathBuf;
use std::time::Duration;

use super::diff::Listeners;
use super::files::{fingerprint, named_files, Fingerprint};
use crate::snapshot::{BuildOptions, Snapshot};

/// How often a load is retried when the files change while it reads them.
const SETTLE_ATTEMPTS: usize = 5;

/// The signing key files a config names (client and DPoP keys).
pub(super) fn loaded_key_files(config: &crate::config::Config) -> Vec<PathBuf> {
    config
        .routes
        .iter()
        .flat_map(|r| {
            r.client.as_ref().and_then(|c| c.key.clone()).into_iter().chain(r.dpop.as_ref().map(|d| d.key.clone()))
        })
        .collect()
}

/// One reload's file work, run on a blocking thread: hash, load, hash again.
pub(super) struct LoadJob {
    pub(super) path: PathBuf,
    pub(super) files: Vec<PathBuf>,
    /// Hashes at the last reload; `None` forces a load.
    pub(super) last: Option<Fingerprint>,
    pub(super) settle: Duration,
    /// Key files the serving snapshot loaded (see `BuildOptions::never_create`).
    pub(super) loaded_keys: Vec<PathBuf>,
}

/// Why a reload was refused (the last good config keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] crate::snapshot::LoadError),
    /// An editor saving in place truncates first; an empty config would be valid (no routes)
    /// and would turn every request into a 404, so it is never applied.
    #[error("{}: the file is empty (a save in progress?); to really run without routes, leave a comment in it", path.display())]
    Empty { path: PathBuf },
    #[error("{}: the config files kept changing while being read", path.display())]
    Unsettled { path: PathBuf },
    #[error("{}: loading the config files took over {after:?} and was abandoned (a file on a hung mount?); the next save loads them again", path.display())]
    TimedOut { path: PathBuf, after: Duration },
    #[error("loading the config panicked or was cancelled: {0}")]
    Internal(String),
}

pub(super) enum Loaded {
    Unchanged,
    Done {
        /// The new snapshot and the listener settings it asks for.
        result: Result<Box<(Snapshot, Listeners)>, ReloadError>,
        /// The hashes the load saw (`None` when it never got a stable read).
        read: Option<Fingerprint>,
        /// The files the new config names, when it parsed.
        files: Option<Vec<PathBuf>>,
    },
}

impl LoadJob {
    pub(super) fn run(self) -> Loaded {
        let mut files = None;
        for _ in 0..SETTLE_ATTEMPTS {
            let before = fingerprint(&self.files);
            if self.last.as_ref() == Some(&before) {
                return Loaded::Unchanged;
            }
            if std::fs::metadata(&self.path).is_ok_and(|m| m.len() == 0) {
                let error = ReloadError::Empty { path: self.path.clone() };
                return Loaded::Done { result: Err(error), read: Some(before), files: None };
            }
            // THE validation `run` and `check` use.
            let opts = BuildOptions { create_missing: true, never_create: self.loaded_keys.clone() };
            let loaded = crate::snapshot::load(&self.path, opts);
            // When only a key file is bad, still learn which files the new config names, so
            // that fixing it is noticed.
            files = match &loaded {
                Ok(snapshot) => Some(named_files(&snapshot.config)),
                Err(_) => crate::config::load(&self.path).ok().map(|c| named_files(&c)),
            };
            // A write that raced the load (a half-written file) shows up as changed hashes:
            // read again once it settles rather than publish what was half there.
            if fingerprint(&self.files) == before {
                // Accepted: only now are the files it creates written (a refused config leaves
                // none behind).
                let result = loaded.and_then(|mut s| {
                    s.create_files().map_err(crate::snapshot::LoadError::from)?;
                    let listeners = Listeners::read(&s.config);
                    Ok(Box::new((s, listeners)))
                });
                return Loaded::Done { result: result.map_err(ReloadError::from), read: Some(before), files };
            }
            std::thread::sleep(self.settle);
        }
        // Still changing: refuse; the writes' own events bring another reload.
        Loaded::Done { result: Err(ReloadError::Unsettled { path: self.path.clone() }), read: None, files }
    }
}
