//! Which files a config depends on, what they hold now (content hashes), and the notify
//! watch on their folders (folders, not files: editors save by rename, Kubernetes swaps a
//! `..data` symlink, and a watch on the old inode would go deaf).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use sha2::{Digest as _, Sha256};

use crate::config::Config;

/// The contents of the watched files at one moment: path and SHA-256 (`None`: unreadable).
/// Kept in memory only; key files' hashes never reach a log.
pub(super) type Fingerprint = Vec<(PathBuf, Option<[u8; 32]>)>;

/// SHA-256 of the config file, taken before the first load (see [`super::spawn`]).
pub fn config_hash(path: &std::path::Path) -> Option<Vec<u8>> {
    read(path).map(|b| Sha256::digest(b).to_vec())
}

/// Hashes every file; a FIFO, a device or a file over the cap hashes as unreadable
/// (the load that follows says why), never blocks or fills memory.
pub(super) fn fingerprint(files: &[PathBuf]) -> Fingerprint {
    files.iter().map(|f| (f.clone(), read(f).map(|bytes| Sha256::digest(bytes).into()))).collect()
}

/// A named file's bytes, read as [`crate::config::file::read`] does (trust bundles are the
/// largest files named).
fn read(path: &Path) -> Option<Vec<u8>> {
    crate::config::file::read(path, crate::config::file::BUNDLE_CAP).ok()
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
        files.extend(r.client.as_ref().and_then(|cl| cl.cert.clone()));
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
    // A key on a PKCS#11 token is no file to watch.
    let on_token = |f: &PathBuf| f.to_str().is_some_and(crate::jose::pkcs11::is_uri);
    files.into_iter().filter(|f| !on_token(f)).map(|f| absolute(&f)).filter(|f| seen.insert(f.clone())).collect()
}

/// The notify watcher and what it watches.
pub(super) struct Watch {
    pub(super) watcher: RecommendedWatcher,
    pub(super) dirs: BTreeSet<PathBuf>,
    /// Paths whose events matter: the files, their resolved targets, the first hop of a
    /// relative symlink (`..data` in `proxy.toml -> ..data/proxy.toml`), missing folders.
    pub(super) relevant: HashSet<PathBuf>,
}

impl Watch {
    /// Re-plans the watched folders for `files` and (un)watches the difference. Called
    /// before every reload: a symlink swap moves targets, a new config names new folders.
    pub(super) fn refresh(&mut self, files: &[PathBuf]) {
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

    pub(super) fn is_relevant(&self, event: &Event) -> bool {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn named_files_cover_keys_and_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        let text = "[routes.a]\nprefix = \"/a\"\nupstream = \"http://127.0.0.1:9\"\n[routes.a.client]\nid = \"app\"\n\
                    auth = \"private_key_jwt\"\nkey = \"a.pem\"\n[routes.a.mtls]\ncert = \"c.pem\"\nkey = \"a.pem\"\n";
        std::fs::write(&path, text).unwrap();
        let files = named_files(&crate::config::load(&path).unwrap());
        assert!(files.contains(&path));
        assert!(files.contains(&dir.path().join("a.pem")) && files.contains(&dir.path().join("c.pem")));
        assert_eq!(files.iter().filter(|f| f.ends_with("a.pem")).count(), 1, "no duplicates: {files:?}");
        assert!(files.iter().all(|f| f.is_absolute()));
    }

    /// Kubernetes mounts: `proxy.toml -> ..data/proxy.toml`, `..data -> ..v1`. Swapping
    /// `..data` must be an event we see, in the folder of the resolved target too.
    #[cfg(unix)]
    #[test]
    fn relative_symlink_first_hop_is_relevant() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/proxy.toml"), "").unwrap();
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
