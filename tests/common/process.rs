//! Child processes: the tokenrelay binary run as a proxy, and one-time installs of what the
//! Node.js and Python test apps need.

use std::fs::OpenOptions;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tokenrelay");

/// `tests/<name>` in this repository.
pub fn tests_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(name)
}

/// A child process that is killed and reaped when dropped, however the test ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tokenrelay <args>` running as a proxy. Its log (stderr) goes to a file, so a chatty log
/// never fills a pipe and blocks the proxy; stdout is read until the "listening" line.
pub struct ProxyProcess {
    pub child: KillOnDrop,
    /// `http://<addr>` from the "tokenrelay is listening on" line.
    pub base: String,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts `tokenrelay <args> --config <config>` with `RUST_LOG=<rust_log>` and waits for
    /// its address.
    pub fn start(args: &[&str], config: &Path, rust_log: &str) -> ProxyProcess {
        Self::spawn(Command::new(BIN), args, config, rust_log)
    }

    /// Like [`ProxyProcess::start`], with `env` added to tokenrelay's environment.
    pub fn start_with_env(args: &[&str], config: &Path, rust_log: &str, env: &[(&str, &str)]) -> ProxyProcess {
        let mut command = Command::new(BIN);
        command.envs(env.iter().copied());
        Self::spawn(command, args, config, rust_log)
    }

    /// Like [`ProxyProcess::start`], with the open-file limit (soft and hard) set to `nofile`
    /// for tokenrelay alone: it runs as `sh -c 'ulimit -n N && exec "$0" "$@"' tokenrelay ...`,
    /// so the limit applies to the same process (same pid) and not to the test.
    pub fn start_with_nofile(args: &[&str], config: &Path, rust_log: &str, nofile: u32) -> ProxyProcess {
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\"")).arg(BIN);
        Self::spawn(sh, args, config, rust_log)
    }

    /// Like [`ProxyProcess::start`], run as `uid` (its gid the same number, no supplementary
    /// groups) through `setpriv` (util-linux); the test must be root.
    pub fn start_as(uid: u32, args: &[&str], config: &Path, rust_log: &str) -> ProxyProcess {
        let mut setpriv = Command::new("setpriv");
        setpriv.args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into(), BIN.into()]);
        Self::spawn(setpriv, args, config, rust_log)
    }

    fn spawn(mut command: Command, args: &[&str], config: &Path, rust_log: &str) -> ProxyProcess {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("tokenrelay.log");
        let mut child = KillOnDrop(
            command
                .args(args)
                .arg("--config")
                .arg(config)
                .env("RUST_LOG", rust_log)
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("tokenrelay exited before printing its address; its log:\n{log}");
            }
            if let Some(rest) = line.strip_prefix("tokenrelay is listening on http://") {
                break rest.split(';').next().unwrap_or_default().trim().to_string();
            }
        };
        // Whatever it prints later is read and dropped, so stdout never fills up either.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        ProxyProcess { child, base: format!("http://{addr}"), log, _log_dir: log_dir }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id (tokenrelay's own, also with [`ProxyProcess::start_with_nofile`]).
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Sends `signal` (`libc::SIGTERM`, ...) to the process.
    #[cfg(unix)]
    pub fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.pid()).unwrap();
        // SAFETY: kill(2) with the pid of our own child, not yet reaped (so not reused).
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
    }

    /// Waits at most `within` for the process to exit by itself (after a signal, say): its
    /// exit status (`None`: still running, then killed) and its whole log.
    #[cfg(unix)]
    pub fn wait_exit(self, within: Duration) -> (Option<std::process::ExitStatus>, String) {
        let ProxyProcess { child, log, _log_dir, .. } = self;
        let pid = libc::pid_t::try_from(child.0.id()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let mut child = child;
            let _ = tx.send(child.0.wait());
        });
        let status = match rx.recv_timeout(within) {
            Ok(status) => Some(status.unwrap()),
            Err(_) => {
                // SAFETY: as in `signal`; the waiter thread has not reaped it yet.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                None
            }
        };
        let _ = waiter.join();
        (status, std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// Kills the process and returns its whole log.
    pub fn stop(mut self) -> String {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        self.log()
    }
}

/// Runs `program args` in `dir`; on failure, says why with its output.
pub fn run(program: &str, args: &[&str], dir: &Path) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program} (is it installed and on PATH?): {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{program} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// `npm ci` from the lock file in `dir`, falling back to `npm install`.
pub fn npm_install(dir: &Path) -> Result<(), String> {
    run("npm", &["ci", "--no-audit", "--no-fund"], dir).or_else(|ci| {
        eprintln!("npm ci in {} failed, falling back to npm install:\n{ci}", dir.display());
        run("npm", &["install", "--no-audit", "--no-fund"], dir)
    })
}

/// How long an install may take, and how old a lock file must be to count as abandoned.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Removes the install lock when dropped (also on panic).
struct LockGuard(PathBuf);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `install` unless `marker` exists, once across every test thread and test process
/// running at the same time (they share the lock file `dir/.install.lock`; the others wait).
/// Blocking: call it from `spawn_blocking` in async tests.
pub fn install_once(dir: &Path, marker: &Path, install: impl Fn() -> Result<(), String>) -> Result<(), String> {
    let lock = dir.join(".install.lock");
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    loop {
        if marker.exists() && !lock.exists() {
            return Ok(());
        }
        match OpenOptions::new().write(true).create_new(true).open(&lock) {
            Ok(mut f) => {
                let _guard = LockGuard(lock.clone());
                let _ = writeln!(f, "{}", std::process::id());
                if !marker.exists() {
                    install()?;
                }
                return match marker.exists() {
                    true => Ok(()),
                    false => Err(format!("install finished but {} is missing", marker.display())),
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let abandoned = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > INSTALL_TIMEOUT);
                if abandoned {
                    eprintln!("removing abandoned install lock {}", lock.display());
                    let _ = std::fs::remove_file(&lock);
                    continue;
                }
                if Instant::now() > deadline {
                    return Err(format!("timed out after {INSTALL_TIMEOUT:?} waiting for {}", lock.display()));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(format!("cannot create {}: {e}", lock.display())),
        }
    }
}
