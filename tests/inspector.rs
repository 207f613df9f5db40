//! The inspector page (`GET /.tokenrelay/`) in a real browser: headless Chromium renders it
//! against a live proxy holding one good and one failed exchange, and the rendered DOM must
//! list both, explain the failure, leak no secret, and the page must make no request off
//! loopback.
//!
//! Chromium is the Debian package `chromium` (`/usr/bin/chromium`), installed with apt-get on
//! first use when missing, as the npm-based suites install their packages; when it cannot be
//! installed the test fails saying so (it never skips).
//!
//! `TOKENRELAY_SCREENSHOT=1 cargo test --test inspector` also rewrites `docs/inspector.png`,
//! the screenshot the README shows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{install_once, KillOnDrop};
use common::proxy::{write_key, TestProxy};
use common::upstream::{Recorder, Reply};
use tokenrelay::jose::Alg;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const CHROMIUM: &str = "/usr/bin/chromium";
const SECRET: &str = "planted-client-secret-4c1e9a-inspector";
const TOKEN: &str = "issued-access-token-77d0c3-inspector";
const REFRESH: &str = "issued-refresh-token-2b8f61-inspector";
const CODE: &str = "planted-authorization-code-SplxlOBeZQQYbYS6WxSbIA";
const VERIFIER: &str = "planted-pkce-verifier-dBjftJeZ4CVP-mB92K27uhbUJU1p1r";

/// A `client_secret_post` route (`partner`) and a `private_key_jwt` + DPoP route (`app`),
/// both to `upstream`.
fn config(upstream: &str) -> String {
    format!(
        r#"
[routes.partner]
prefix = "/partner"
upstream = "{upstream}"
endpoints = ["/token"]

[routes.partner.client]
id = "reporting-job"
auth = "client_secret_post"
secret = "{SECRET}"

[routes.app]
prefix = "/app"
upstream = "{upstream}"
issuer = "https://login.example.com"
endpoints = ["/token"]

[routes.app.client]
id = "web-app"
auth = "private_key_jwt"
key = "client.pem"
alg = "ES256"

[routes.app.dpop]
key = "dpop.pem"
alg = "ES256"
"#
    )
}

/// `/usr/bin/chromium`, installed with apt-get when absent (once, across concurrent tests).
fn chromium() -> PathBuf {
    let path = PathBuf::from(CHROMIUM);
    let lock_dir = std::env::temp_dir().join("tokenrelay-chromium-install");
    std::fs::create_dir_all(&lock_dir).unwrap();
    install_once(&lock_dir, &path, || {
        apt_get(&["install", "-y", "chromium"]).or_else(|first| {
            apt_get(&["update"])
                .and_then(|()| apt_get(&["install", "-y", "chromium"]))
                .map_err(|e| format!("{first}\n{e}"))
        })
    })
    .unwrap_or_else(|e| {
        panic!(
            "the inspector test needs Chromium at {CHROMIUM} and could not install it \
             (Debian/Ubuntu: `apt-get install chromium`, as root): {e}"
        )
    });
    path
}

fn apt_get(args: &[&str]) -> Result<(), String> {
    let out = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("apt-get {args:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr))),
    }
}

/// A stand-in HTTP proxy on loopback that records the first line of every request it gets
/// (`CONNECT host:443 HTTP/1.1`, `GET http://host/ HTTP/1.1`) and answers 502.
struct OffLoopbackTrap {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl OffLoopbackTrap {
    async fn start() -> OffLoopbackTrap {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let mut head = vec![0u8; 4096];
                    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut head)).await;
                    let n = n.ok().and_then(Result::ok).unwrap_or(0);
                    let text = String::from_utf8_lossy(&head[..n]);
                    let line = text.lines().next().filter(|l| !l.is_empty()).unwrap_or("<connection, no request>");
                    seen.lock().unwrap().push(line.to_string());
                    let _ = stream
                        .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        OffLoopbackTrap { port, seen, task }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for OffLoopbackTrap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs headless Chromium on `url` with `extra` flags (after the fixed ones) and returns its
/// stdout; panics with its stderr on failure or after 90 s.
///
/// How "no request off loopback" is proven: every run goes through `--proxy-server` pointing
/// at an [`OffLoopbackTrap`]. Chromium sends every request through that proxy except those to
/// loopback (its implicit bypass rule for localhost, 127.0.0.0/8 and [::1]; no
/// `--proxy-bypass-list` is given, so nothing else is bypassed): a fetch, image, font,
/// WebSocket, preconnect or navigation to any other host, by name or by IP, arrives at the
/// trap as a request line (`CONNECT host:443`, `GET http://host/...`), and names are not
/// resolved locally either (the proxy would resolve them). The test asserts the trap saw
/// nothing while the page ran and, as a positive control, that the same flags do route a
/// navigation to a non-loopback host into the trap.
///
/// Chromium itself also talks to Google on start, whatever page it shows: its network time
/// query, a preconnect to the default search engine, the sign-in cookie check
/// (`accounts.google.com/ListAccounts`) and the AI-mode eligibility check
/// (`www.google.com/async/folae`). The flags below turn the first two off and point the base
/// URLs of the other two (`--gaia-url`, `--google-base-url`) at 127.0.0.1:9 (a port Chromium
/// refuses to connect to), so that the trap hears only what the page asks for. A page
/// fetching `https://accounts.google.com/...` by itself still reaches the trap: those
/// switches change the URLs Chromium builds for its own services, not the page's.
async fn run_chromium(chromium: &Path, trap_port: u16, url: &str, extra: &[String]) -> String {
    let what = url.to_string();
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--disable-features=NetworkTimeServiceQuerying,PreconnectToSearch",
        "--gaia-url=http://127.0.0.1:9",
        "--google-base-url=http://127.0.0.1:9",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--proxy-server=http://127.0.0.1:{trap_port}"))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = KillOnDrop(cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display())));
    tokio::task::spawn_blocking(move || {
        let mut child = child;
        let (stdout, stderr) = (child.0.stdout.take().unwrap(), child.0.stderr.take().unwrap());
        let read = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
        let deadline = Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "chromium took over 90 s on {what}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let (out, err) = (out.join().unwrap(), err.join().unwrap());
        assert!(status.success(), "chromium failed ({status}):\n{err}");
        drop(profile);
        out
    })
    .await
    .unwrap()
}

/// The part of `dom` between `from` and the next `to` after it.
fn section<'a>(dom: &'a str, from: &str, to: &str) -> &'a str {
    let start = dom.find(from).unwrap_or_else(|| panic!("{from:?} not in the DOM:\n{dom}"));
    let end = start + dom[start..].find(to).unwrap_or_else(|| panic!("{to:?} not after {from:?}:\n{dom}"));
    &dom[start..end]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_inspector_lists_explains_and_leaks_nothing_in_a_real_browser() {
    let started = Instant::now();
    let chromium = tokio::task::spawn_blocking(chromium).await.unwrap();
    let installed = started.elapsed();

    // The AS: the first token request gets tokens, the second is refused.
    let up = Recorder::start(|_, n| match n {
        0 => Reply::json(
            200,
            serde_json::json!({"access_token": TOKEN, "refresh_token": REFRESH, "token_type": "Bearer", "expires_in": 3600}),
        ),
        _ => Reply::json(
            401,
            serde_json::json!({"error": "invalid_client", "error_description": "client assertion signature did not verify with any registered key"}),
        ),
    })
    .await;
    let builder = TestProxy::builder(config(&up.url())).watch(false);
    write_key(builder.dir(), "client.pem", Alg::ES256);
    write_key(builder.dir(), "dpop.pem", Alg::ES256);
    let proxy = builder.start().await;

    let (status, body) = proxy.post_form("/partner/token", "grant_type=client_credentials&scope=reports.read").await;
    assert_eq!(status, 200, "{body}");
    let form = format!(
        "grant_type=authorization_code&code={CODE}&code_verifier={VERIFIER}\
         &redirect_uri=http%3A%2F%2Flocalhost%3A3000%2Fcallback&client_id=web-app"
    );
    let (status, body) = proxy.post_form("/app/token", form).await;
    assert_eq!(status, 401, "{body}");

    // What must never show: the planted secret and the app's code and verifier (sent, as the
    // AS saw), the tokens the AS issued, the signed assertion and proof (whole, and their
    // signatures alone).
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "two token requests reached the AS");
    assert_eq!(seen[0].param("client_secret").as_deref(), Some(SECRET));
    assert_eq!(seen[1].param("code").as_deref(), Some(CODE));
    let assertion = seen[1].param("client_assertion").expect("the app route signs an assertion");
    let proof = seen[1].header("dpop").expect("the app route sends a DPoP proof");
    let signature = |jws: &str| jws.rsplit('.').next().unwrap().to_string();
    let forbidden = [
        SECRET.to_string(),
        CODE.to_string(),
        VERIFIER.to_string(),
        TOKEN.to_string(),
        REFRESH.to_string(),
        signature(&assertion),
        assertion,
        signature(&proof),
        proof,
    ];
    let leaks = |what: &str, text: &str| {
        for value in &forbidden {
            assert!(!text.contains(value.as_str()), "{what} shows {value:?}:\n{text}");
        }
    };

    let json =
        proxy.http.get(format!("{}/.tokenrelay/exchanges", proxy.base)).send().await.unwrap().text().await.unwrap();
    leaks("/.tokenrelay/exchanges", &json);
    let list: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(list.len(), 2, "{json}");
    assert_eq!((list[0]["route"].as_str(), list[0]["status"].as_u64()), (Some("app"), Some(401)), "newest first");
    let failed_id = list[0]["id"].as_u64().unwrap();

    // The page is served under the strict CSP (so everything below ran under it).
    let page = proxy.http.get(format!("{}/.tokenrelay/", proxy.base)).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    for part in ["default-src 'none'", "script-src 'sha256-", "style-src 'sha256-", "connect-src 'self'"] {
        assert!(csp.contains(part), "{part} missing from the CSP: {csp}");
    }

    // The page, selecting the failed exchange (the page also selects it by itself when the
    // URL names none: the newest failed one).
    let trap = OffLoopbackTrap::start().await;
    let url = format!("{}/.tokenrelay/#{failed_id}", proxy.base);
    let t = Instant::now();
    let dom = run_chromium(&chromium, trap.port, &url, &["--dump-dom".to_string()]).await;
    let browser = t.elapsed();
    leaks("the rendered inspector", &dom);

    // The list: both exchanges, newest first, the failed one marked, with its AS error and
    // first hint.
    let rows = section(&dom, "<tbody id=\"rows\">", "</tbody>");
    assert_eq!(rows.matches("<tr").count(), 2, "{rows}");
    let (app, partner) = (rows.find("/app/token").expect(rows), rows.find("/partner/token").expect(rows));
    assert!(app < partner, "newest first:\n{rows}");
    assert_eq!(rows.matches("class=\"fail").count(), 1, "exactly the failed one is marked:\n{rows}");
    let failed_row = &rows[..partner];
    assert!(
        failed_row.contains("fail") && failed_row.contains("401") && failed_row.contains("invalid_client"),
        "{failed_row}"
    );
    assert!(failed_row.contains("tokenrelay jwks --route app"), "the first hint is in the list:\n{failed_row}");
    assert!(rows[partner..].contains("200"), "{rows}");

    // The detail of the failed exchange: decoded assertion and proof, the AS's answer, the
    // hints, the attempt, what tokenrelay did, and the app's request as curl with … for
    // every value the record does not keep.
    let detail = section(&dom, "<section id=\"detail\">", "</section>");
    for expected in [
        "Client assertion",
        "DPoP proof",
        "dpop+jwt",
        "https://login.example.com",
        "client assertion signature did not verify with any registered key",
        "tokenrelay jwks --route app",
        "does the AS expect another aud?",
        &format!("{}/token", up.url()),
        "private_key_jwt",
        "-d grant_type=authorization_code",
        "-d code=…",
        "-d code_verifier=…",
        "-d redirect_uri=http%3A%2F%2Flocalhost%3A3000%2Fcallback",
        &format!("curl -X POST {}/app/token", proxy.base),
    ] {
        assert!(detail.contains(expected), "{expected:?} missing from the detail:\n{detail}");
    }
    let conn = section(&dom, "<span id=\"conn\"", "</span>");
    assert!(conn.contains(">live · "), "the page keeps polling its JSON: {conn}");

    // No request left loopback (see `run_chromium`), and the page asked tokenrelay for
    // nothing but its own endpoints: no favicon or other path that would count as an exchange.
    assert_eq!(trap.seen(), Vec::<String>::new(), "the inspector made requests off loopback");
    let after: Vec<serde_json::Value> =
        proxy.http.get(format!("{}/.tokenrelay/exchanges", proxy.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(after.len(), 2, "the page caused no exchange of its own: {after:?}");
    // The positive control: the same flags do send a navigation off loopback into the trap.
    run_chromium(&chromium, trap.port, "http://inspector-control.example/", &["--dump-dom".to_string()]).await;
    let control = trap.seen();
    assert!(
        control.iter().any(|l| l.contains("inspector-control.example")),
        "the trap must catch off-loopback requests for its silence to mean anything: {control:?}"
    );

    if std::env::var("TOKENRELAY_SCREENSHOT").as_deref() == Ok("1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        let png = docs.join("inspector.png");
        let flags = [format!("--screenshot={}", png.display()), "--window-size=1200,800".to_string()];
        run_chromium(&chromium, trap.port, &url, &flags).await;
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is a PNG", png.display());
        eprintln!("wrote {} ({} bytes)", png.display(), bytes.len());
    }
    // The header shows a refused reload (the last good config keeps serving).
    std::fs::write(proxy.path("proxy.toml"), "[routes.app\n").unwrap();
    proxy.running.reload_now().await;
    let dom = run_chromium(&chromium, trap.port, &url, &["--dump-dom".to_string()]).await;
    let reload = section(&dom, "<span id=\"reload\"", "</span>");
    assert!(!reload.contains("hidden") && reload.contains("reload failing, still serving v1"), "{reload}");
    assert!(section(&dom, "<span id=\"version\"", "</span>").contains("config v1"), "{dom}");

    // An answer tokenrelay gave itself (no route claims the path) is labelled as its own.
    let (status, _) = proxy.post_form("/nowhere/token", "grant_type=client_credentials").await;
    assert_eq!(status, 404);
    let list: Vec<serde_json::Value> =
        proxy.http.get(format!("{}/.tokenrelay/exchanges", proxy.base)).send().await.unwrap().json().await.unwrap();
    let own = list[0]["id"].as_u64().unwrap();
    let dom =
        run_chromium(&chromium, trap.port, &format!("{}/.tokenrelay/#{own}", proxy.base), &["--dump-dom".to_string()])
            .await;
    let detail = section(&dom, "<section id=\"detail\">", "</section>");
    assert!(detail.contains("tokenrelay answered itself (the AS was not asked)"), "{detail}");
    assert!(!detail.contains("The AS answered"), "{detail}");
    assert!(section(&dom, "<tbody id=\"rows\">", "</tbody>").contains("tokenrelay answered itself"), "{dom}");

    eprintln!("chromium ready in {installed:?}; the page rendered in {browser:?}; whole test {:?}", started.elapsed());
    proxy.stop().await;
}

/// Replay and compare by clicking, in Chromium driven by puppeteer-core (tests/inspector_clicks):
/// the AS refuses an assertion whose `aud` is not its issuer; the developer saves the fix,
/// clicks "replay" on the failed exchange (the AS now answers 200 and the page shows the new
/// exchange as a replay), then "compare with previous", which names the changed claim. An
/// exchange that carried a code has its replay button off, saying why.
/// `TOKENRELAY_SCREENSHOT=1` also rewrites `docs/compare.png`, the README's screenshot.
#[tokio::test(flavor = "multi_thread")]
async fn replay_and_compare_by_clicking_in_chromium() {
    let chromium = tokio::task::spawn_blocking(chromium).await.unwrap();
    let clicks = common::process::tests_dir("inspector_clicks");
    let install = clicks.clone();
    tokio::task::spawn_blocking(move || {
        install_once(&install, &install.join("node_modules/puppeteer-core/package.json"), || {
            common::process::npm_install(&install)
        })
    })
    .await
    .unwrap()
    .unwrap();

    const ISSUER: &str = "https://login.example.com";
    // An AS that checks the assertion's aud, as a real one does.
    let up = Recorder::start(|seen, _| {
        let aud = seen.param("client_assertion").map(|a| common::upstream::Seen::jwt_claims(&a)["aud"].clone());
        if aud.as_ref().and_then(|a| a.as_str()) == Some(ISSUER) {
            Reply::json(200, serde_json::json!({"access_token": TOKEN, "token_type": "DPoP", "expires_in": 60}))
        } else {
            Reply::json(
                401,
                serde_json::json!({"error": "invalid_client", "error_description": "aud is not the issuer"}),
            )
        }
    })
    .await;
    let good = config(&up.url());
    let bad = good.replace(
        "alg = \"ES256\"\n\n[routes.app.dpop]",
        "alg = \"ES256\"\naudience = \"https://login.example.com/wrong\"\n\n[routes.app.dpop]",
    );
    assert_ne!(good, bad);
    let builder = TestProxy::builder(bad).watch(false);
    write_key(builder.dir(), "client.pem", Alg::ES256);
    write_key(builder.dir(), "dpop.pem", Alg::ES256);
    let proxy = builder.start().await;
    let (status, _) = proxy
        .post_form(
            "/app/token",
            "grant_type=authorization_code&code=planted-code-9&redirect_uri=http%3A%2F%2Flocalhost%2Fcb",
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = proxy.post_form("/app/token", "grant_type=client_credentials&scope=read").await;
    assert_eq!(status, 401);
    let list: Vec<serde_json::Value> =
        proxy.http.get(format!("{}/.tokenrelay/exchanges", proxy.base)).send().await.unwrap().json().await.unwrap();
    let (failed, with_code) = (list[0]["id"].as_u64().unwrap(), list[1]["id"].as_u64().unwrap());
    std::fs::write(proxy.path("proxy.toml"), &good).unwrap();
    assert!(matches!(proxy.running.reload_now().await, tokenrelay::reload::Outcome::Applied { .. }));

    let trap = OffLoopbackTrap::start().await;
    let shot = if std::env::var("TOKENRELAY_SCREENSHOT").as_deref() == Ok("1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        docs.join("compare.png").display().to_string()
    } else {
        "-".to_string()
    };
    let args = [
        clicks.join("clicks.js").display().to_string(),
        chromium.display().to_string(),
        trap.port.to_string(),
        format!("{}/.tokenrelay/#{failed}", proxy.base),
        format!("{}/.tokenrelay/#{with_code}", proxy.base),
        shot,
    ];
    let out = tokio::task::spawn_blocking(move || Command::new("node").args(&args).output().unwrap()).await.unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "clicks.js failed: {said}{}", String::from_utf8_lossy(&out.stderr));
    let page: serde_json::Value = serde_json::from_str(said.trim()).unwrap();
    let before = page["before"].as_str().unwrap();
    assert!(
        before.starts_with(&format!("#{failed} ")) && before.contains("401") && before.contains("config v1"),
        "{before}"
    );
    let after = page["after"].as_str().unwrap();
    assert!(
        after.contains(&format!("replay of #{failed}")) && after.contains("200") && after.contains("config v2"),
        "{after}"
    );
    let compare = page["compare"].as_str().unwrap();
    for expected in ["assertion.claims.aud", "https://login.example.com/wrong", "config_version", "status"] {
        assert!(compare.contains(expected), "{expected:?} not in the comparison: {compare}");
    }
    assert!(!compare.contains("claims.jti"), "{compare}");
    let rows = page["rows"].as_str().unwrap();
    assert!(rows.contains("saved → config v2"), "the save is in the timeline: {rows}");
    assert_eq!(page["off"]["disabled"], true, "{page}");
    let note = page["off"]["note"].as_str().unwrap();
    assert!(note.contains("replay is off") && note.contains("\"code\""), "{note}");
    // What the AS saw: the two app requests and the replay, whose aud is now the issuer.
    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    let aud = common::upstream::Seen::jwt_claims(&seen[2].param("client_assertion").unwrap())["aud"].clone();
    assert_eq!(aud, ISSUER);
    assert_eq!(seen[2].param("scope").as_deref(), Some("read"));
    assert_eq!(trap.seen(), Vec::<String>::new(), "the inspector made requests off loopback");
    proxy.stop().await;
}

/// The page's source keeps to what its CSP allows and to text-only DOM building: one inline
/// `<script>` and one `<style>` (the CSP hashes the first of each), no event-handler or
/// `style` attributes, no markup built from strings, no code from strings, and nothing
/// loaded from elsewhere (the only URL it writes is the curl line's, for this tokenrelay).
#[test]
fn the_page_source_keeps_to_its_csp() {
    const PAGE: &str = include_str!("../src/inspector.html");
    assert_eq!(PAGE.matches("<script").count(), 1, "exactly one <script>");
    assert_eq!(PAGE.matches("<style").count(), 1, "exactly one <style>");
    let script = section(PAGE, "<script>", "</script>");
    let style = section(PAGE, "<style>", "</style>");
    let markup = PAGE.replace(script, "").replace(style, "");
    for forbidden in
        ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(", "https://"]
    {
        assert!(!script.contains(forbidden), "the inspector's script contains {forbidden:?}");
    }
    for forbidden in ["url(", "@import", "@font-face"] {
        assert!(!style.contains(forbidden), "the inspector's style loads something: {forbidden:?}");
    }
    for forbidden in [" style=", " src=", "http:", "https:"] {
        assert!(!markup.contains(forbidden), "the inspector's markup contains {forbidden:?}");
    }
    let handlers: Vec<&str> = markup
        .split(|c: char| c.is_whitespace() || c == '<')
        .filter(|w| {
            w.starts_with("on") && w.split_once('=').is_some_and(|(n, _)| n.bytes().all(|b| b.is_ascii_lowercase()))
        })
        .collect();
    assert!(handlers.is_empty(), "event-handler attributes in the inspector's markup: {handlers:?}");
    let hrefs: Vec<&str> = markup.match_indices(" href=").map(|(i, _)| &markup[i..i + 15]).collect();
    assert_eq!(hrefs, [" href=\"data:,\">"], "only the empty data: favicon (so no request for /favicon.ico)");
}
