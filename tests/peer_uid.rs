//! Only you: a loopback connection from another local user is refused on every listener
//! (`src/peer/`), judged at the upstream (nothing reaches it) and at the client (403 naming
//! the uid, the user and the setting that would allow it).
//!
//! The other user is uid 65534 (`nobody`): the test, running as root, starts curl through
//! `setpriv --reuid=65534 --regid=65534 --clear-groups` (util-linux); one test runs the
//! tokenrelay binary itself as 65534, so "the running user" and root are two users. Without root or setpriv
//! the tests say so loudly and pass without checking; CI runs them as root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::process::ProxyProcess;
use common::proxy::{edit, write_key, TestProxy};
use common::upstream::{Recorder, Reply};
use tokenrelay::jose::Alg;
use tokenrelay::peer;

const OTHER: u32 = 65534;

/// Why these tests cannot run here, printed loudly; `None` when they can.
fn skip() -> Option<String> {
    let why = if peer::running_uid() != 0 {
        "not running as root: cannot start a client as another uid".to_string()
    } else if !Path::new("/usr/bin/setpriv").exists() && !Path::new("/bin/setpriv").exists() {
        "setpriv (util-linux) is missing".to_string()
    } else if !Path::new("/usr/bin/curl").exists() {
        "/usr/bin/curl is missing".to_string()
    } else {
        return None;
    };
    eprintln!("\n*** tests/peer_uid.rs SKIPPED: {why}; these tests need root (CI runs them as root) ***\n");
    Some(why)
}

/// What curl saw.
#[derive(Debug)]
struct Seen {
    /// The final response's status (0: none).
    status: u16,
    /// The `CONNECT` response's status, with a proxy (0: none).
    connect: u16,
    body: String,
}

impl Seen {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {self:?}"))
    }
}

/// Runs `/usr/bin/curl args` as `uid` (`None`: as this process, root).
async fn curl(uid: Option<u32>, args: &[&str]) -> Seen {
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = tokio::process::Command::new("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
                "/usr/bin/curl".into(),
            ]);
            c
        }
        None => tokio::process::Command::new("/usr/bin/curl"),
    };
    // -q: no ~/.curlrc; a clean environment: no proxy variables.
    cmd.args(["-q", "-s", "-S", "--max-time", "20", "-o", "-", "-w", "\n%{http_code} %{http_connect}"])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir("/");
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, codes) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut codes = codes.split_whitespace().map(|c| c.parse::<u16>().unwrap_or(0));
    let seen = Seen { status: codes.next().unwrap_or(0), connect: codes.next().unwrap_or(0), body: body.to_string() };
    eprintln!("curl as {uid:?} {args:?}: {seen:?} stderr {}", String::from_utf8_lossy(&out.stderr));
    seen
}

/// A token request to `base` as `uid`.
async fn token(uid: Option<u32>, base: &str) -> Seen {
    curl(uid, &["--noproxy", "*", "-d", "grant_type=client_credentials", &format!("{base}/as/token")]).await
}

/// One private_key_jwt route to `upstream`; `proxy` goes into `[proxy]`.
fn config(upstream: &str, proxy: &str) -> String {
    format!(
        r#"
[proxy]
{proxy}

[routes.as]
prefix = "/as"
upstream = "{upstream}"
timeout = "5s"
endpoints = ["/token"]

[routes.as.client]
id = "app-1"
auth = "private_key_jwt"
key = "client.pem"
alg = "ES256"
"#
    )
}

/// The refusal a client sees: 403, the JSON error naming the uid, its user and the setting.
fn assert_refused(seen: &Seen, what: &str) {
    assert_eq!(seen.status, 403, "{what}: {seen:?}");
    let json = seen.json();
    assert_eq!(json["error"], "tokenrelay_error", "{what}");
    assert_eq!(json["peer_uid"], OTHER, "{what}");
    let text = json["error_description"].as_str().unwrap();
    assert!(text.contains(&format!("uid {OTHER}")) && text.contains("allow_users = ["), "{what}: {text}");
    if let Some(name) = peer::name_of(OTHER) {
        assert_eq!(json["peer_user"], name.as_str(), "{what}");
        assert!(text.contains(&format!("[\"{name}\"]")), "{what}: the setting that would allow it: {text}");
    }
}

#[tokio::test]
async fn another_user_gets_403_on_every_listener_and_nothing_reaches_the_upstream() {
    if skip().is_some() {
        return;
    }
    let up = Recorder::start(|_, _| Reply::token()).await;
    // A host no route claims: forward mode tunnels CONNECTs to it byte for byte.
    let tunnelled = Recorder::start(|_, _| Reply::json(200, serde_json::json!({"tunnelled": true}))).await;
    let proxy_table =
        "forward = \"$FORWARD\"\nca_cert = \"ca.pem\"\nca_key = \"ca-key.pem\"\n\n[demo_as]\nlisten = \"$DEMO_AS\"";
    let builder = TestProxy::builder(config(&up.url(), proxy_table)).forward().demo_as();
    write_key(builder.dir(), "client.pem", Alg::ES256);
    let proxy = builder.start().await;
    let base = proxy.base.clone();
    let forward = proxy.forward_url();
    let demo = format!("http://{}/.well-known/openid-configuration", proxy.demo_as_addr());
    let tunnel_url = format!("{}/through-the-tunnel", tunnelled.url());
    let api = ["--noproxy", "*", "-H", "authorization: Bearer abc", "-d", "x=1"];
    let api_url = format!("{base}/as/resource");
    let exchanges = format!("{base}/.tokenrelay/exchanges");

    // Another local user: refused everywhere.
    assert_refused(&token(Some(OTHER), &base).await, "token route");
    assert_refused(&curl(Some(OTHER), &[&api[..], &[api_url.as_str()]].concat()).await, "API route");
    assert_refused(&curl(Some(OTHER), &["--noproxy", "*", &exchanges]).await, "/.tokenrelay/exchanges");
    assert_refused(&curl(Some(OTHER), &["--noproxy", "*", &demo]).await, "demo AS");
    let connect = curl(Some(OTHER), &["-p", "-x", &forward, &tunnel_url]).await;
    assert_eq!(connect.connect, 403, "CONNECT refused before any tunnel: {connect:?}");
    assert!(up.seen().is_empty(), "nothing signed or relayed: {:?}", up.seen());
    assert!(tunnelled.seen().is_empty(), "no tunnel: {:?}", tunnelled.seen());

    // The running user (root): served.
    let t = token(None, &base).await;
    assert_eq!((t.status, t.json()["access_token"].as_str()), (200, Some("upstream-issued-token-VALUE")), "{t:?}");
    assert_eq!(curl(None, &[&api[..], &[api_url.as_str()]].concat()).await.status, 200);
    assert_eq!(curl(None, &["--noproxy", "*", &exchanges]).await.status, 200);
    assert_eq!(curl(None, &["--noproxy", "*", &demo]).await.status, 200);
    let connect = curl(None, &["-p", "-x", &forward, &tunnel_url]).await;
    assert_eq!((connect.connect, connect.status), (200, 200), "{connect:?}");
    let seen = up.seen();
    assert_eq!(seen.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(), ["/token", "/resource"]);
    assert!(seen[0].param("client_assertion").is_some(), "the running user's token request is signed");
    assert_eq!(tunnelled.seen().len(), 1, "the running user's CONNECT tunnelled");
    proxy.stop().await;
}

#[tokio::test]
async fn allow_users_lets_another_user_in_by_star_uid_or_name() {
    if skip().is_some() {
        return;
    }
    let mut settings = vec!["allow_users = [\"*\"]".to_string(), format!("allow_users = [{OTHER}]")];
    if let Some(name) = peer::name_of(OTHER) {
        settings.push(format!("allow_users = [\"{name}\"]"));
    }
    for setting in settings {
        let up = Recorder::start(|_, _| Reply::token()).await;
        let builder = TestProxy::builder(config(&up.url(), &setting));
        write_key(builder.dir(), "client.pem", Alg::ES256);
        let proxy = builder.start().await;
        let seen = token(Some(OTHER), &proxy.base).await;
        assert_eq!(seen.status, 200, "{setting}: {seen:?}");
        assert_eq!(up.seen().len(), 1, "{setting}");
        assert!(up.seen()[0].param("client_assertion").is_some(), "{setting}: signed");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn ipv6_loopback_peers_are_checked_too() {
    if skip().is_some() {
        return;
    }
    let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
        eprintln!("\n*** ipv6_loopback_peers_are_checked_too SKIPPED: no IPv6 loopback here ***\n");
        return;
    };
    let addr: SocketAddr = listener.local_addr().unwrap();
    let up = Recorder::start(|_, _| Reply::token()).await;
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path(), "client.pem", Alg::ES256);
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config(&up.url(), &format!("listen = \"{addr}\""))).unwrap();
    let mut opts = tokenrelay::app::Options::new(&path);
    opts.listener = Some(listener);
    opts.reload.watch = false;
    let running = tokenrelay::app::start(opts).await.unwrap();
    let base = format!("http://{addr}");
    assert_refused(&token(Some(OTHER), &base).await, "token route over [::1]");
    assert!(up.seen().is_empty(), "nothing relayed: {:?}", up.seen());
    assert_eq!(token(None, &base).await.status, 200);
    assert_eq!(up.seen().len(), 1);
    running.stop().await;
}

#[tokio::test]
async fn a_reload_that_adds_or_removes_a_user_applies_to_new_connections() {
    if skip().is_some() {
        return;
    }
    let up = Recorder::start(|_, _| Reply::token()).await;
    let without = config(&up.url(), "");
    let builder = TestProxy::builder(without.clone()).watch(false);
    write_key(builder.dir(), "client.pem", Alg::ES256);
    let proxy = builder.start().await;
    let path = proxy.path("proxy.toml");
    assert_refused(&token(Some(OTHER), &proxy.base).await, "before the reload");

    std::fs::write(&path, edit(&without, "[proxy]\n", &format!("[proxy]\nallow_users = [{OTHER}]\n"))).unwrap();
    match proxy.running.reload_now().await {
        tokenrelay::reload::Outcome::Applied { changes, .. } => assert!(changes.contains("allow_users"), "{changes}"),
        other => panic!("reload not applied: {other:?}"),
    }
    assert_eq!(token(Some(OTHER), &proxy.base).await.status, 200, "added: served");

    std::fs::write(&path, &without).unwrap();
    assert!(matches!(proxy.running.reload_now().await, tokenrelay::reload::Outcome::Applied { .. }));
    assert_refused(&token(Some(OTHER), &proxy.base).await, "removed again");
    assert_eq!(up.seen().len(), 1, "only the request made while allowed reached the upstream");
    proxy.stop().await;
}

#[tokio::test]
async fn a_proxy_run_by_another_user_serves_that_user_and_root_only() {
    if skip().is_some() {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    const RUNNER: u32 = OTHER;
    const THIRD: u32 = OTHER - 1;
    let up = Recorder::start(|_, _| Reply::token()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config(&up.url(), "listen = \"127.0.0.1:0\"")).unwrap();
    write_key(dir.path(), "client.pem", Alg::ES256);
    for file in [dir.path().to_path_buf(), path.clone(), dir.path().join("client.pem")] {
        std::os::unix::fs::chown(&file, Some(RUNNER), Some(RUNNER)).unwrap();
    }
    let proxy = ProxyProcess::start_as(RUNNER, &[], &path, "info");
    let base = proxy.base.clone();
    assert_eq!(token(Some(RUNNER), &base).await.status, 200, "the user running tokenrelay");
    assert_eq!(token(None, &base).await.status, 200, "root");
    let third = token(Some(THIRD), &base).await;
    assert_eq!(third.status, 403, "{third:?}");
    assert_eq!(third.json()["peer_uid"], THIRD);
    assert_eq!(up.seen().len(), 2, "only the running user's and root's requests reached the upstream");
    let log = proxy.stop();
    assert!(log.contains(&format!("uid {RUNNER}")) && log.contains("running tokenrelay"), "who may connect: {log}");
    assert!(log.contains("refused 1 connection(s)"), "one log line for the refused connection: {log}");
}
