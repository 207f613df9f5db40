//! Client assertions made elsewhere (`client.assertion`): a workload identity token read from
//! a file (a Kubernetes projected service-account token, rotated in place) or printed by a
//! command (`gcloud auth print-identity-token`), sent as `client_assertion` with
//! `client_assertion_type = urn:ietf:params:oauth:client-assertion-type:jwt-bearer`
//! (RFC 7523 §2.2).
//!
//! Such an assertion is sent as it is, on every request until it expires: the federated
//! credential an AS registers for it (Entra, Google STS, AWS) accepts it until `exp`. The file
//! is looked at (`stat`) on every use and read again when it changed; the command runs once
//! and its answer is kept until [`REFRESH_BEFORE_EXP`] before its `exp` (or half way to it,
//! for a short-lived one), so it runs once per lifetime, not per request.
//!
//! The token is a [`Secret`]: never logged. A command's stderr is logged at debug; its stdout
//! (the token) never is.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::config::AssertionSource;
use crate::redact::Secret;

/// A command's assertion is fetched again this long before its `exp`.
pub const REFRESH_BEFORE_EXP: u64 = 60;

/// Why no assertion could be had: the source and what went wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("route {route:?}: client.assertion from {source_name}: {reason}")]
pub struct AssertionError {
    pub route: String,
    pub source_name: String,
    pub reason: String,
}

/// A usable assertion and what it says (claims decoded, signature not checked: the AS does).
#[derive(Debug, Clone)]
pub struct Fetched {
    pub jwt: Secret,
    pub claims: Map<String, Value>,
    pub exp: u64,
}

impl Fetched {
    /// `iss`, `sub`, `aud`, `exp` for `check` (`aud` as written: a string or a list).
    pub fn summary(&self) -> Map<String, Value> {
        ["iss", "sub", "aud", "exp"]
            .iter()
            .filter_map(|n| self.claims.get(*n).map(|v| ((*n).to_string(), v.clone())))
            .collect()
    }
}

/// What a cached value was read from: the file's identity and the time to refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stamp {
    File { modified: Option<SystemTime>, len: u64, inode: u64 },
    Until(u64),
}

/// One route's external assertion, with its cache.
#[derive(Debug)]
pub struct ExternalAssertion {
    route: String,
    source: AssertionSource,
    /// The last assertion fetched; a fetch in progress holds the lock, so concurrent requests
    /// wait for one command run instead of starting their own.
    cache: tokio::sync::Mutex<Option<(Stamp, Arc<Fetched>)>>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl ExternalAssertion {
    pub fn new(route: &str, source: AssertionSource) -> ExternalAssertion {
        ExternalAssertion { route: route.to_string(), source, cache: tokio::sync::Mutex::new(None) }
    }

    pub fn source(&self) -> &AssertionSource {
        &self.source
    }

    fn error(&self, reason: impl Into<String>) -> AssertionError {
        AssertionError { route: self.route.clone(), source_name: self.source.to_string(), reason: reason.into() }
    }

    /// The assertion to send now: cached while still current, fetched again otherwise.
    /// Missing, malformed and expired assertions are errors naming the source.
    pub async fn current(&self) -> Result<Arc<Fetched>, AssertionError> {
        let now = unix_now();
        let mut cache = self.cache.lock().await;
        match &self.source {
            AssertionSource::File(path) => {
                let stamp = file_stamp(path).await.map_err(|e| self.error(e))?;
                if let Some((seen, fetched)) = cache.as_ref() {
                    if *seen == stamp {
                        return self.usable(fetched.clone(), now);
                    }
                }
                let text = tokio::fs::read_to_string(path).await.map_err(|e| self.error(io_reason(&e)))?;
                let fetched = Arc::new(self.parse(&text)?);
                *cache = Some((stamp, fetched.clone()));
                self.usable(fetched, now)
            }
            AssertionSource::Command { argv, timeout } => {
                if let Some((Stamp::Until(until), fetched)) = cache.as_ref() {
                    if now < *until {
                        return Ok(fetched.clone());
                    }
                }
                let text = self.run(argv, *timeout).await?;
                let fetched = Arc::new(self.parse(&text)?);
                let fetched = self.usable(fetched, now)?;
                let lifetime = fetched.exp.saturating_sub(now);
                let until = now + lifetime.saturating_sub(REFRESH_BEFORE_EXP).max(lifetime / 2);
                *cache = Some((Stamp::Until(until), fetched.clone()));
                Ok(fetched)
            }
        }
    }

    fn usable(&self, fetched: Arc<Fetched>, now: u64) -> Result<Arc<Fetched>, AssertionError> {
        if fetched.exp <= now {
            return Err(self.error(format!(
                "the assertion expired at {} ({}s ago); its source must provide a fresh one",
                fetched.exp,
                now - fetched.exp
            )));
        }
        Ok(fetched)
    }

    /// A compact JWS whose payload is a JSON object with a numeric `exp`.
    fn parse(&self, text: &str) -> Result<Fetched, AssertionError> {
        let jwt = text.trim();
        if jwt.is_empty() {
            return Err(self.error("empty: no assertion"));
        }
        let parts: Vec<&str> = jwt.split('.').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(self.error(format!(
                "not a signed JWT (a compact JWS has 3 non-empty parts separated by dots; this has {})",
                parts.len()
            )));
        }
        let claims = URL_SAFE_NO_PAD
            .decode(parts[1])
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| match v {
                Value::Object(m) => Some(m),
                _ => None,
            })
            .ok_or_else(|| self.error("not a JWT: its payload is not base64url JSON (RFC 7519 §7.2)"))?;
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| self.error("the JWT has no numeric exp (RFC 7523 §3 requires one)"))?;
        Ok(Fetched { jwt: Secret::new(jwt), claims, exp })
    }

    /// Runs `argv` (no shell) within `timeout`; its stdout, or an error with its exit status.
    async fn run(&self, argv: &[String], timeout: Duration) -> Result<String, AssertionError> {
        let Some((program, args)) = argv.split_first() else {
            return Err(self.error("the command is empty"));
        };
        let child = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| self.error(format!("cannot start {program:?}: {}", io_reason(&e))))?;
        let output = tokio::time::timeout(timeout, child.wait_with_output()).await.map_err(|_| {
            self.error(format!(
                "did not finish within {} (client.assertion.timeout)",
                humantime::format_duration(timeout)
            ))
        })?;
        let output = output.map_err(|e| self.error(format!("cannot read its output: {e}")))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !stderr.trim().is_empty() {
            tracing::debug!(route = %self.route, command = %program, stderr = %stderr.trim(), "client.assertion command stderr");
        }
        if !output.status.success() {
            return Err(self.error(format!("exited with {} (its stderr is logged at debug: -v)", output.status)));
        }
        String::from_utf8(output.stdout).map_err(|_| self.error("its output is not UTF-8"))
    }
}

async fn file_stamp(path: &Path) -> Result<Stamp, String> {
    let meta = tokio::fs::metadata(path).await.map_err(|e| io_reason(&e))?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Stamp::File { modified: meta.modified().ok(), len: meta.len(), inode })
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "not found".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn jwt(claims: Value) -> String {
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", enc(&serde_json::json!({"alg": "ES256"})), enc(&claims))
    }

    #[tokio::test]
    async fn file_is_reread_when_it_changes_and_refused_when_bad() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let a = ExternalAssertion::new("r", AssertionSource::File(path.clone()));
        let err = a.current().await.unwrap_err().to_string();
        assert!(err.contains("client.assertion from file") && err.contains("not found"), "{err}");
        let exp = unix_now() + 600;
        std::fs::write(&path, format!("{}\n", jwt(serde_json::json!({"sub": "one", "exp": exp})))).unwrap();
        assert_eq!(a.current().await.unwrap().claims["sub"], "one");
        let tmp = dir.path().join("token.new");
        std::fs::write(&tmp, jwt(serde_json::json!({"sub": "two", "exp": exp}))).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(a.current().await.unwrap().claims["sub"], "two");
        std::fs::write(&path, jwt(serde_json::json!({"sub": "old", "exp": 1000}))).unwrap();
        assert!(a.current().await.unwrap_err().to_string().contains("expired"));
        std::fs::write(&path, "not-a-jwt").unwrap();
        assert!(a.current().await.unwrap_err().to_string().contains("not a signed JWT"));
    }
}
