//! Validating a config writes nothing. Keys marked `create = true` and the demo AS's CA are
//! made only once their config is accepted (at start, at an accepted reload): `check`, a
//! config refused at start and a refused reload leave no file behind. All through the real
//! binary; assertions are on the files in the config's folder and on what the upstream
//! received.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::jwt;
use common::process::{ProxyProcess, BIN};
use common::upstream::{Recorder, Reply};
use serde_json::Value;
use tokenrelay::jose::{Alg, SigningKey};

/// Every file under `dir`, relative to it (folders too, so a created `certs/` shows).
fn files(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.insert(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

fn only_config() -> BTreeSet<String> {
    BTreeSet::from(["proxy.toml".to_string()])
}

/// A route that creates its client and DPoP keys (in `keys/`, a folder that does not exist
/// yet) and signs with them.
fn creating_route(name: &str, upstream: &str) -> String {
    format!(
        "[routes.{name}]\nprefix = \"/{name}\"\nupstream = \"{upstream}\"\n\
         [routes.{name}.client]\nid = \"app\"\nauth = \"private_key_jwt\"\nkey = \"keys/{name}-client.pem\"\ncreate = true\n\
         [routes.{name}.dpop]\nkey = \"keys/{name}-dpop.pem\"\ncreate = true\n"
    )
}

/// A route the build refuses after the ones before it were built (routes are built in name
/// order: `bad` after `as` and `api`): its key file is missing and not marked `create`.
const BAD_ROUTE: &str = "[routes.bad]\nprefix = \"/bad\"\nupstream = \"http://127.0.0.1:9\"\n\
     [routes.bad.client]\nid = \"app\"\nauth = \"private_key_jwt\"\nkey = \"missing.pem\"\n";

/// The demo AS over TLS: its CA is made on the first accepted start.
const DEMO_AS_TLS: &str = "[demo_as]\nlisten = \"127.0.0.1:0\"\ntls = true\n";

/// `tokenrelay check` on a config whose keys and demo AS CA do not exist yet: it says they
/// are not created yet, and creates nothing.
#[test]
fn check_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, format!("{DEMO_AS_TLS}{}", creating_route("as", "http://127.0.0.1:9"))).unwrap();
    let out = Command::new(BIN).arg("--config").arg(&config).args(["check", "--offline"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the keys are missing: {stderr}");
    assert!(stderr.contains("not created yet") && stderr.contains("keys/as-client.pem"), "{stderr}");
    assert_eq!(files(dir.path()), only_config(), "check wrote nothing");
}

/// Runs `tokenrelay run` on `text` in a fresh folder, expecting it to refuse to start: its
/// stderr and the files left in the folder.
fn run_refused(text: &str) -> (String, BTreeSet<String>) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, text).unwrap();
    let mut child = common::process::KillOnDrop(
        Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // It exits at once; the bound is generous for a loaded machine.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "a refused config must not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    (stderr, files(dir.path()))
}

/// `tokenrelay run` with a config whose second route is refused exits with the error and
/// leaves neither the first route's keys nor the demo AS CA behind; so does a start refused
/// because its listen address is taken.
#[test]
fn a_config_refused_at_start_creates_nothing() {
    let route = creating_route("as", "http://127.0.0.1:9");
    let (stderr, left) = run_refused(&format!("[proxy]\nlisten = \"127.0.0.1:0\"\n{DEMO_AS_TLS}{route}{BAD_ROUTE}"));
    assert!(stderr.contains("missing.pem"), "the refusal names the bad route's file: {stderr}");
    assert_eq!(left, only_config(), "a refused config leaves nothing behind: {stderr}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (stderr, left) = run_refused(&format!("[proxy]\nlisten = \"{addr}\"\n{DEMO_AS_TLS}{route}"));
    assert!(stderr.contains(&addr.to_string()), "the refusal names the address: {stderr}");
    assert_eq!(left, only_config(), "a start refused at bind leaves nothing behind: {stderr}");
}

/// A reload whose config is refused (a bad second route) creates none of the new route's
/// keys; once the save is fixed, the accepted reload creates them (0600) and the new route
/// signs with exactly those keys.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_reload_creates_nothing_an_accepted_one_creates_the_keys() {
    let up = Recorder::start(|_, _| Reply::token()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    let base =
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[routes.old]\nprefix = \"/old\"\nupstream = \"http://127.0.0.1:9\"\n";
    std::fs::write(&config, base).unwrap();
    let proxy = ProxyProcess::start(&["run"], &config, "info");
    let http = common::proxy::client();
    let status = || async {
        let url = format!("{}/.tokenrelay/status", proxy.base);
        http.get(url).send().await.unwrap().json::<Value>().await.unwrap()
    };
    let wait_for = |what: &'static str, done: fn(&Value) -> bool| {
        let status = &status;
        let proxy = &proxy;
        async move {
            let started = Instant::now();
            loop {
                let s = status().await;
                if done(&s) {
                    return s;
                }
                assert!(started.elapsed() < Duration::from_secs(10), "no {what}: {s}\n{}", proxy.log());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(status().await["version"], 1);
    let before = files(dir.path());

    // The new route, with a bad route after it: refused (the watcher or SIGHUP, whichever
    // comes first; SIGHUP makes sure a reload happens).
    std::fs::write(&config, format!("{base}{}{BAD_ROUTE}", creating_route("api", &up.url()))).unwrap();
    proxy.signal(libc::SIGHUP);
    let refused = wait_for("refused reload", |s| s["failures"].as_u64() >= Some(1)).await;
    assert!(refused["last_error"].as_str().unwrap().contains("missing.pem"), "{refused}");
    assert_eq!(refused["version"], 1, "{refused}");
    assert_eq!(files(dir.path()), before, "a refused reload leaves nothing behind");

    // Fixed: accepted, and only now are the keys written.
    std::fs::write(&config, format!("{base}{}", creating_route("api", &up.url()))).unwrap();
    proxy.signal(libc::SIGHUP);
    wait_for("accepted reload", |s| s["version"].as_u64() >= Some(2)).await;
    let client_path = dir.path().join("keys/api-client.pem");
    let dpop_path = dir.path().join("keys/api-dpop.pem");
    for path in [&client_path, &dpop_path] {
        assert!(path.exists(), "{} created by the accepted reload\n{}", path.display(), proxy.log());
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600, "{}", path.display());
    }
    let load = |path: &Path| SigningKey::load(&std::fs::read(path).unwrap(), Alg::ES256).unwrap();
    let (client_key, dpop_key) = (load(&client_path), load(&dpop_path));

    let answer = http
        .post(format!("{}/api/token", proxy.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", proxy.log());
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let assertion = seen[0].param("client_assertion").expect("signed with the new client key");
    assert_eq!(jwt::header(&assertion)["kid"], client_key.thumbprint(), "the client key on disk signed");
    let proof = seen[0].header("dpop").expect("a DPoP proof");
    let jwk = jwt::header(&proof)["jwk"].clone();
    assert_eq!(jwk, Value::Object(dpop_key.public_jwk().clone()), "the DPoP key on disk signed the proof");
    let log = proxy.stop();
    assert!(log.contains("created route \"api\" client.key"), "{log}");
}
