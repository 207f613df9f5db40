//! Test harness around a real authorization server: panva's `oidc-provider`
//! (pinned in `tests/oidc/package.json`), wrapped by `tests/oidc/server.mjs`.
//!
//! ```ignore
//! let op = OidcProvider::start(json!({ "clients": [ { "client_id": "c1", ... } ] })).await;
//! // ... drive the proxy against op.token_endpoint() ...
//! let reqs = op.token_requests().await;   // exactly what the AS received
//! let tok = op.introspect(&access_token).await;
//! ```
//!
//! The config JSON is passed through to `server.mjs`; see the header of that
//! file for its schema. `tls.cert` / `tls.key` / `tls.ca` are file paths:
//! [`write_server_tls`] produces them from a [`TestCa`].

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokenrelay::jose::SigningKey;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use super::pki::TestCa;
use super::process::{install_once, npm_install, tests_dir};

const READY_TIMEOUT: Duration = Duration::from_secs(25);
const STDERR_KEEP: usize = 64 * 1024;

/// A running `oidc-provider` instance on 127.0.0.1. Killed on drop.
pub struct OidcProvider {
    /// Issuer identifier, `http(s)://<issuer_host>:<port>`.
    pub issuer: String,
    pub port: u16,
    /// `http(s)://127.0.0.1:<port>`, used for the control routes.
    control_base: String,
    /// Client for the `/__*` control routes only. In TLS mode it skips
    /// certificate verification; never use it for anything under test.
    control: reqwest::Client,
    stderr_log: Arc<Mutex<String>>,
    child: Child,
    /// Held so the server (started with TOKENRELAY_OIDC_WATCH_STDIN=1) exits
    /// when this process dies without running Drop.
    _stdin: Option<ChildStdin>,
    _dir: tempfile::TempDir,
}

fn oidc_dir() -> PathBuf {
    tests_dir("oidc")
}

/// `Some(reason)` when the AS cannot be run here (no `node` on PATH).
/// Tests must fail with this message, not pass silently.
pub fn skip_reason() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON
        .get_or_init(|| {
            match std::process::Command::new("node")
                .arg("--version")
                .stdin(Stdio::null())
                .output()
            {
                Ok(out) if out.status.success() => None,
                Ok(out) => Some(format!(
                    "`node --version` failed ({}): {}; Node.js is required for the oidc-provider integration tests",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => Some(format!(
                    "`node` not found on PATH ({e}); Node.js (>= 20) and npm are required for the oidc-provider integration tests"
                )),
            }
        })
        .clone()
}

/// Installs `tests/oidc/node_modules` unless it is there.
async fn ensure_npm_deps() {
    let result = tokio::task::spawn_blocking(|| {
        let dir = oidc_dir();
        install_once(&dir, &dir.join("node_modules/oidc-provider/package.json"), || npm_install(&dir))
    })
    .await
    .expect("npm install task panicked");
    if let Err(e) = result {
        panic!("installing oidc-provider failed: {e}");
    }
}

fn append_capped(buf: &Mutex<String>, line: &str) {
    let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
    if b.len() < STDERR_KEEP {
        b.push_str(line);
        b.push('\n');
    }
}

impl OidcProvider {
    /// Starts the AS with `config` (see `tests/oidc/server.mjs`). Panics with
    /// the server's stderr if it does not become ready within 60 s.
    pub async fn start(config: Value) -> OidcProvider {
        if let Some(reason) = skip_reason() {
            panic!("cannot start oidc-provider: {reason}");
        }
        ensure_npm_deps().await;
        // Under heavy parallel load a node process has (rarely) been seen never to print
        // READY. That is the harness failing to start, not the behaviour under test: give it
        // one fresh process before failing the test with the captured output.
        match Self::try_start(&config).await {
            Ok(op) => op,
            Err(first) => {
                eprintln!("[oidc] first start failed, retrying once: {first}");
                Self::try_start(&config).await.unwrap_or_else(|second| panic!("{second}"))
            }
        }
    }

    async fn try_start(config: &Value) -> Result<OidcProvider, String> {
        let tls = config.get("tls").is_some_and(|t| !t.is_null());
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg_path = dir.path().join("config.json");
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&config).expect("serialize config")).expect("write config");

        let mut child = Command::new("node")
            .arg(oidc_dir().join("server.mjs"))
            .arg(&cfg_path)
            .current_dir(oidc_dir())
            .env("TOKENRELAY_OIDC_WATCH_STDIN", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node tests/oidc/server.mjs");

        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("child stdout");
        let stderr = child.stderr.take().expect("child stderr");

        let stderr_log = Arc::new(Mutex::new(String::new()));
        let stderr_task = {
            let log = stderr_log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[oidc] {line}");
                    append_capped(&log, &line);
                }
            })
        };

        let mut stdout_lines = BufReader::new(stdout).lines();
        let started = Instant::now();
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            loop {
                match stdout_lines.next_line().await {
                    Ok(Some(line)) => {
                        if let Some(rest) = line.strip_prefix("READY ") {
                            return serde_json::from_str::<Value>(rest)
                                .map_err(|e| format!("bad READY line {line:?}: {e}"));
                        }
                        eprintln!("[oidc stdout] {line}");
                    }
                    Ok(None) => return Err("server exited before printing READY".to_string()),
                    Err(e) => return Err(format!("reading server stdout: {e}")),
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("no READY line within {READY_TIMEOUT:?}")));

        let ready = match ready {
            Ok(v) => v,
            Err(msg) => {
                let _ = child.start_kill();
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), stderr_task).await;
                let log = stderr_log.lock().unwrap_or_else(|e| e.into_inner()).clone();
                return Err(format!(
                    "oidc-provider failed to start: {msg} (exit: {status:?})\nconfig: {config:#}\nstderr:\n{log}"
                ));
            }
        };

        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout_lines.next_line().await {
                eprintln!("[oidc stdout] {line}");
            }
        });

        let port = ready["port"].as_u64().and_then(|p| u16::try_from(p).ok()).expect("READY line has a port");
        let issuer = ready["issuer"].as_str().expect("READY line has an issuer").to_string();
        eprintln!("[oidc] ready at {issuer} after {:?}", started.elapsed());

        let control_base = format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" });
        let control = reqwest::Client::builder()
            .no_proxy()
            .danger_accept_invalid_certs(tls)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("control client");

        Ok(OidcProvider { issuer, port, control_base, control, stderr_log, child, _stdin: stdin, _dir: dir })
    }

    /// `<issuer>/token`.
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// Everything the server printed to stderr so far (capped at 64 KiB).
    pub fn stderr(&self) -> String {
        self.stderr_log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn control_json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.control_base);
        let mut req = self.control.request(method, &url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("control request {url} failed: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_else(|e| panic!("control response {url}: {e}"));
        let value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("control response {url} is not JSON ({e}): {text}"));
        (status, value)
    }

    /// Every request the AS received (excluding `/__*` control routes), in
    /// arrival order. Each record: `seq`, `method`, `path` (with query),
    /// `headers` (lowercase name -> string, or array when repeated), `body`
    /// (UTF-8), `body_b64` (exact bytes), `tls_client_cert` (PEM or null),
    /// `status`, `response`, `response_headers`, `error`, `error_detail`.
    pub async fn received(&self) -> Vec<Value> {
        let (status, value) = self.control_json(reqwest::Method::GET, "/__received", None).await;
        assert_eq!(status, 200, "/__received: {value}");
        match value {
            Value::Array(records) => records,
            other => panic!("/__received returned a non-array: {other}"),
        }
    }

    /// [`received`](Self::received) filtered to paths starting with `/token`
    /// (includes `/token/introspection` and `/token/revocation`).
    pub async fn token_requests(&self) -> Vec<Value> {
        self.received()
            .await
            .into_iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/token")))
            .collect()
    }

    /// Looks the token up in the AS's store (AccessToken, ClientCredentials or
    /// RefreshToken). Found: the stored payload (`clientId`, `scope`, `jkt`,
    /// `x5t#S256`, `accountId`, `gty`, ...) plus `model`, `active`,
    /// `client_id`, `sub`, `token_type` and `cnf` (`{"jkt"}` or
    /// `{"x5t#S256"}`) when sender-constrained. Not found:
    /// `{"error":"not_found","active":false}`.
    pub async fn introspect(&self, token: &str) -> Value {
        let (status, value) =
            self.control_json(reqwest::Method::POST, "/__introspect", Some(json!({ "token": token }))).await;
        assert!(status == 200 || status == 404, "/__introspect: {status} {value}");
        value
    }

    /// Mints a refresh token for account `test-user` (with a Grant for
    /// `scope`), DPoP-bound to `jkt` when given. The client must allow the
    /// `refresh_token` grant type to redeem it.
    pub async fn mint_refresh_token(&self, client_id: &str, jkt: Option<&str>, scope: &str) -> String {
        let mut req = json!({ "client_id": client_id, "scope": scope });
        if let Some(jkt) = jkt {
            req["jkt"] = json!(jkt);
        }
        self.mint_refresh_token_json(req).await
    }

    /// Like [`mint_refresh_token`](Self::mint_refresh_token) with the raw
    /// request: `client_id`, `scope`, optional `jkt`, optional `x5t#S256`
    /// (certificate-bound refresh token).
    pub async fn mint_refresh_token_json(&self, req: Value) -> String {
        let (status, value) = self.control_json(reqwest::Method::POST, "/__refresh_token", Some(req)).await;
        assert_eq!(status, 200, "/__refresh_token: {value}");
        value["refresh_token"]
            .as_str()
            .unwrap_or_else(|| panic!("/__refresh_token: no refresh_token in {value}"))
            .to_string()
    }

    /// The AS's own discovery document (`<issuer>/.well-known/openid-configuration`), fetched
    /// directly. The GET is recorded like any other request.
    pub async fn metadata(&self) -> Value {
        let (status, value) = self.control_json(reqwest::Method::GET, "/.well-known/openid-configuration", None).await;
        assert_eq!(status, 200, "discovery: {value}");
        value
    }

    /// [`received`](Self::received) filtered to `POST`s (what a client sends to the
    /// client-authenticated endpoints), in arrival order.
    pub async fn posts(&self) -> Vec<Value> {
        self.received().await.into_iter().filter(|r| r["method"] == "POST").collect()
    }

    /// Clears the request record.
    pub async fn reset(&self) {
        let (status, value) = self.control_json(reqwest::Method::POST, "/__reset", None).await;
        assert_eq!(status, 200, "/__reset: {value}");
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Parses an `application/x-www-form-urlencoded` body into (name, value) pairs.
pub fn form_pairs(body: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(body.as_bytes()).into_owned().collect()
}

/// Form parameter `name` of a request record from [`OidcProvider::received`].
pub fn param(record: &Value, name: &str) -> Option<String> {
    form_pairs(record["body"].as_str().unwrap()).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// A `client_credentials` client registration with the members of `extra` added.
pub fn cc_client(id: &str, extra: Value) -> Value {
    let mut client =
        json!({ "client_id": id, "grant_types": ["client_credentials"], "response_types": [], "redirect_uris": [] });
    for (k, v) in extra.as_object().unwrap() {
        client[k] = v.clone();
    }
    client
}

/// The JWKS that registers `key` (with the `kid` tokenrelay signs with: its RFC 7638
/// thumbprint).
pub fn jwks(key: &SigningKey) -> Value {
    let mut jwk = key.public_jwk().clone();
    jwk.insert("kid".into(), key.thumbprint().into());
    jwk.insert("alg".into(), key.alg().as_str().into());
    jwk.insert("use".into(), "sig".into());
    json!({ "keys": [jwk] })
}

/// Issues a server certificate for `127.0.0.1` and `localhost` from
/// `server_ca`, writes it (with its chain), its key and the `client_ca_pems`
/// into `dir`, and returns the `"tls"` config object for [`OidcProvider::start`].
pub fn write_server_tls(dir: &Path, server_ca: &TestCa, client_ca_pems: &[&str]) -> Value {
    let leaf = server_ca.server(&["127.0.0.1", "localhost"]);
    let cert = dir.join("as-chain.pem");
    let key = dir.join("as-key.pem");
    std::fs::write(&cert, &leaf.chain_pem).expect("write server cert");
    std::fs::write(&key, &leaf.key_pem).expect("write server key");
    let mut cas = Vec::new();
    for (i, pem) in client_ca_pems.iter().enumerate() {
        let path = dir.join(format!("client-ca-{i}.pem"));
        std::fs::write(&path, pem).expect("write client CA");
        cas.push(json!(path));
    }
    json!({ "cert": cert, "key": key, "ca": cas })
}
