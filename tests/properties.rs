//! Property tests (proptest) over the parsers and the one end-to-end guard that matter most
//! for "nothing is ever forwarded unsigned" and "the app's bytes reach the AS untouched".
//!
//! Bounded for `cargo test`: a few hundred cases per property (64 for the HTTP one), the whole
//! file in a few seconds in a debug build. `PROPTEST_CASES=N` sets every property's case count
//! (e.g. `PROPTEST_CASES=20000 cargo test --release --test properties` for a long run).
//! Failures are not persisted to files: a failure prints the minimal input, which belongs in
//! a plain regression test.
//!
//! Only the crate's public API is used; where a property needs a rule the crate keeps private
//! (the spelling guard's `loose_path`), the test carries its own, independent oracle.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{TestCaseError, TestRunner};
use tokenrelay::config::host::{split_host_port, Authority, HostEntry};
use tokenrelay::config::ConfigError;
use tokenrelay::rewrite::dpop::{is_valid_nonce, nonce_header, wants_nonce, NonceCache, NonceHeader};
use tokenrelay::rewrite::form::Form;

use common::proxy::{write_key, TestProxy};
use common::upstream::{Recorder, Reply};

/// `default` cases unless `PROPTEST_CASES` says otherwise; no regression files written.
fn cases(default: u32) -> ProptestConfig {
    // `ProptestConfig::default()` reads the `PROPTEST_*` environment variables.
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default;
    }
    config.failure_persistence = None;
    config.max_shrink_iters = 4096;
    config
}

fn chars(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

fn bytes(range: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), range)
}

// ------------------------------------------------------------------------------------------
// 1. The form splicer
// ------------------------------------------------------------------------------------------

/// Parameters tokenrelay reads or writes (client authentication, a route's params rules).
const OWNED: [&str; 5] = ["client_assertion", "client_assertion_type", "client_id", "client_secret", "scope"];

fn form_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "client_assertion", "client_assertion_type", "client_id", "client_secret", "scope",
            "code", "code_verifier", "redirect_uri", "grant_type", "state",
            // Other spellings of owned names: some decode to one (`%5F`, `%63`), some do not.
            "client%5Fid", "%63lient_id", "scop%65", "client_id+", "CLIENT_ID", "client+id", "scope%00",
            "", "%", "%zz", "%FF", "=",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => bytes(0..8).prop_map(|b| b.into_iter().filter(|&c| c != b'&' && c != b'=').collect()),
    ]
}

fn form_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(
            prop::sample::select(vec![
                "", "%", "%2", "%zz", "%FF", "%fe", "%C3%A9", "%C3", "+", "=", "==", "~", "%26", "%3D",
                "%25", "%2525", "%2B", "a", "Z0", "-._", " ", "\u{e9}", "\u{1F980}", "\t",
            ]),
            0..6,
        )
        .prop_map(|parts| parts.concat().into_bytes()),
        1 => bytes(0..12).prop_map(|b| b.into_iter().filter(|&c| c != b'&').collect()),
    ]
}

fn form_body() -> impl Strategy<Value = Vec<u8>> {
    let segment = prop_oneof![
        6 => (form_name(), prop::option::weighted(0.85, form_value())).prop_map(|(mut name, value)| {
            if let Some(value) = value {
                name.push(b'=');
                name.extend(value);
            }
            name
        }),
        1 => Just(Vec::new()),
        1 => bytes(0..10),
    ];
    prop_oneof![
        4 => prop::collection::vec(segment, 0..8).prop_map(|segs| segs.join(&b'&')),
        1 => bytes(0..64),
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    Set(&'static str, String),
    Remove(&'static str),
    AddIfAbsent(&'static str, String),
}

fn set_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["", "a b", "x&y=z", "%41", "+", "\u{e9}", "read write", "urn:x?y#z"])
            .prop_map(str::to_string),
        chars(12),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    let name = prop::sample::select(OWNED.to_vec());
    prop_oneof![
        (name.clone(), set_value()).prop_map(|(n, v)| Edit::Set(n, v)),
        name.clone().prop_map(Edit::Remove),
        (name, set_value()).prop_map(|(n, v)| Edit::AddIfAbsent(n, v)),
    ]
}

/// The decoded name of one `&`-free segment, by `form_urlencoded` (not by `Form`).
fn name_of(segment: &[u8]) -> String {
    form_urlencoded::parse(segment).next().map(|(k, _)| k.into_owned()).unwrap_or_default()
}

/// The strictly decoded value of one segment: `None` when not UTF-8.
fn strict_value_of(segment: &[u8]) -> Option<String> {
    let raw = segment.iter().position(|&b| b == b'=').map_or(&[][..], |i| &segment[i + 1..]);
    let plus: Vec<u8> = raw.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
    String::from_utf8(percent_encoding::percent_decode(&plus).collect()).ok()
}

/// What the encoded body must be, pair by pair.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// A pair the edits did not own: these exact bytes.
    Original(Vec<u8>),
    /// A pair an edit wrote: any encoding that decodes to this name and value.
    Written(&'static str, String),
}

impl Expect {
    fn name(&self) -> String {
        match self {
            Expect::Original(b) => name_of(b),
            Expect::Written(n, _) => n.to_string(),
        }
    }
}

fn model_set(model: &mut Vec<Expect>, name: &'static str, value: &str) {
    match model.iter().position(|e| e.name() == name) {
        Some(i) => {
            model[i] = Expect::Written(name, value.to_string());
            let mut seen = 0;
            model.retain(|e| {
                if e.name() != name {
                    return true;
                }
                seen += 1;
                seen == 1
            });
        }
        None => model.push(Expect::Written(name, value.to_string())),
    }
}

proptest! {
    #![proptest_config(cases(512))]

    /// Edits of owned parameters leave every other pair byte for byte as sent, in order;
    /// what was set reads back; parsing never panics.
    #[test]
    fn form_edits_keep_every_pair_they_do_not_own(body in form_body(), edits in prop::collection::vec(edit(), 0..6)) {
        let mut form = Form::parse(&body);
        // Untouched, the form encodes to exactly its non-empty segments.
        let segments: Vec<&[u8]> = body.split(|&b| b == b'&').filter(|s| !s.is_empty()).collect();
        prop_assert_eq!(form.encode(), segments.join(&b'&'));

        let mut model: Vec<Expect> = segments.iter().map(|s| Expect::Original(s.to_vec())).collect();
        for edit in &edits {
            match edit {
                Edit::Set(name, value) => {
                    form.set(name, value);
                    model_set(&mut model, name, value);
                }
                Edit::Remove(name) => {
                    let had = model.iter().any(|e| e.name() == *name);
                    prop_assert_eq!(form.remove(name), had);
                    model.retain(|e| e.name() != *name);
                }
                Edit::AddIfAbsent(name, value) => {
                    // Present: a pair with this name whose value is non-empty or not UTF-8.
                    let present = model.iter().filter(|e| e.name() == *name).any(|e| match e {
                        Expect::Original(b) => strict_value_of(b).is_none_or(|v| !v.is_empty()),
                        Expect::Written(_, v) => !v.is_empty(),
                    });
                    prop_assert_eq!(form.add_if_absent(name, value), !present, "add_if_absent({:?})", name);
                    if !present {
                        model_set(&mut model, name, value);
                    }
                }
            }
        }

        let out = form.encode();
        let got: Vec<&[u8]> = if out.is_empty() { Vec::new() } else { out.split(|&b| b == b'&').collect() };
        prop_assert_eq!(got.len(), model.len(), "pairs out: {:?}", String::from_utf8_lossy(&out));
        for (seg, want) in got.iter().zip(&model) {
            match want {
                Expect::Original(bytes) => prop_assert_eq!(*seg, &bytes[..], "an unowned pair changed"),
                Expect::Written(name, value) => {
                    let pairs: Vec<(String, String)> = form_urlencoded::parse(seg).into_owned().collect();
                    prop_assert_eq!(pairs, vec![(name.to_string(), value.clone())]);
                }
            }
        }

        // What the edits wrote reads back, from the form and from its re-parsed encoding.
        let reparsed = Form::parse(&out);
        for want in &model {
            if let Expect::Written(name, value) = want {
                let expected = Some(value.clone()).filter(|v| !v.is_empty());
                prop_assert_eq!(form.get(name), Ok(expected.clone()));
                prop_assert_eq!(reparsed.get(name), Ok(expected));
            }
        }
        for name in OWNED {
            prop_assert_eq!(reparsed.get(name), form.get(name));
        }
    }

    /// Arbitrary bytes, arbitrary names: parse, read and edit never panic.
    #[test]
    fn form_never_panics(body in bytes(0..256), name in chars(8), value in chars(8)) {
        let mut form = Form::parse(&body);
        let _ = form.get(&name);
        let _ = form.contains(&name);
        let _ = form.check_single(OWNED);
        let _ = form.names().count();
        form.set(&name, &value);
        prop_assert_eq!(form.get(&name), Ok(Some(value.clone()).filter(|v| !v.is_empty())));
        let _ = form.add_if_absent(&name, &value);
        form.remove(&name);
        prop_assert!(!form.contains(&name));
        let _ = form.encode();
    }
}

// ------------------------------------------------------------------------------------------
// 2. The spelling guard, end to end
// ------------------------------------------------------------------------------------------

/// The signed endpoint as the upstream sees it.
const SIGNED_PATH: &str = "/oauth2/token";

/// Percent-decodes `bytes` once (`%XX` with two hex digits; anything else kept).
fn percent_decode_once(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// One segment as a lenient server sees it: `;params` cut, surrounding whitespace and
/// control characters (`%20`, `%09`, `%00`) dropped.
fn tidy_segment(seg: &str) -> &str {
    seg.split(';').next().unwrap_or_default().trim_matches(|c: char| c.is_whitespace() || c.is_control())
}

/// The request path as a lenient server may route it. The test's own oracle, written from
/// the README's list of leniencies and applied in any combination: percent-decoded until
/// nothing changes (`%2574`), backslashes as slashes, case folded, `;params`, surrounding
/// whitespace and controls, empty and `.` segments dropped, `..` applied, and on the last
/// segment a suffix pattern `token.*` (Spring MVC's suffix pattern match routes `/token.x.y`
/// to `/token`), the suffix and the trimming repeated until nothing changes.
fn lenient_path(raw: &str) -> String {
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    let mut bytes = path.as_bytes().to_vec();
    loop {
        let next = percent_decode_once(&bytes);
        if next == bytes {
            break;
        }
        bytes = next;
    }
    let text = String::from_utf8_lossy(&bytes).replace('\\', "/").to_lowercase();
    let mut out: Vec<String> = Vec::new();
    for seg in text.split('/') {
        match tidy_segment(seg) {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_string()),
        }
    }
    if let Some(last) = out.last_mut() {
        loop {
            let tidy = tidy_segment(last);
            let cut = match tidy.find('.') {
                Some(i) if i > 0 => &tidy[..i],
                _ => tidy,
            };
            if cut == last.as_str() {
                break;
            }
            *last = cut.to_string();
        }
    }
    format!("/{}", out.join("/"))
}

#[test]
fn the_oracle_knows_the_documented_spellings() {
    for spelling in [
        "/oauth2/token",
        "/oauth2/./token",
        "/oauth2/x/../token",
        "/oauth2//token",
        "/oauth2/%74oken",
        "/oauth2/%2574oken",
        "/oauth2/Token",
        "/oauth2/token/",
        "/oauth2/token;x=1",
        "/oauth2/token%3Bx",
        "/oauth2/token%20",
        "/oauth2/token%09",
        "/oauth2/token%00",
        "/oauth2/token.json",
        "/oauth2\\token",
        "/oauth2%252ftoken",
        "/oauth2/b/%2e%2e/token",
        "/oauth2/token?x=1",
    ] {
        assert_eq!(lenient_path(spelling), SIGNED_PATH, "{spelling}");
    }
    for other in ["/oauth2/tokens", "/oauth2/token/x", "/oauth2/token%3Fx", "/token", "/oauth2/.token", "/oauth2"] {
        assert_ne!(lenient_path(other), SIGNED_PATH, "{other}");
    }
}

/// `c` spelled one of the ways a client may: as is, other case, `%XX`, `%25XX`, `%2525XX`.
fn spell_char(c: char) -> BoxedStrategy<String> {
    let code = c as u32;
    prop_oneof![
        6 => Just(c.to_string()),
        2 => Just(c.to_ascii_uppercase().to_string()),
        1 => Just(format!("%{code:02X}")),
        1 => Just(format!("%{code:02x}")),
        1 => Just(format!("%25{code:02X}")),
        1 => Just(format!("%2525{code:02x}")),
    ]
    .boxed()
}

fn spell_segment(seg: String) -> BoxedStrategy<String> {
    let letters: Vec<BoxedStrategy<String>> = seg.chars().map(spell_char).collect();
    let decorated = (
        prop::sample::select(vec!["", "", "", "", "%20", "%09"]),
        letters,
        prop::sample::select(vec![
            "",
            "",
            "",
            "",
            "",
            "",
            ";x",
            ";jsessionid=1",
            "%3Bx",
            "%3b",
            "%20",
            "%09",
            "%00",
            "%0A",
            ".json",
            ".xml",
            ".",
            "..",
            ".a.b",
            "%2Ejson",
            "%20.json",
            "%00.json",
            ".json%20",
            ";x.json",
            "%09%20",
        ]),
    );
    decorated.prop_map(|(before, letters, after)| format!("{before}{}{after}", letters.concat())).boxed()
}

fn separator() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/",
        "/",
        "/",
        "/",
        "/",
        "//",
        "\\",
        "%2F",
        "%2f",
        "%5C",
        "/./",
        "/%2E/",
        "/x/../",
        "/X/%2E%2E/",
        "%252F",
        "/;p/",
    ])
}

/// The path after `/as`: spellings of the signed endpoint relative to the route's base
/// (`/token`, `/../oauth2/token`, `/x/../token`) and unrelated paths.
fn rest_spelling() -> impl Strategy<Value = String> {
    let target = prop_oneof![
        8 => Just(vec!["token"]),
        2 => Just(vec!["..", "oauth2", "token"]),
        2 => Just(vec!["x", "..", "token"]),
        1 => Just(vec!["token", "..", "token"]),
        1 => Just(vec!["oauth2", "..", "token"]),
    ]
    .prop_map(|segs| segs.into_iter().map(str::to_string).collect::<Vec<_>>());
    let unrelated = prop_oneof![
        prop::sample::select(vec!["tokens", "tok", "token2", "introspect", "oauth2", "", ".token", "to.ken"])
            .prop_map(|s| vec![s.to_string()]),
        prop::collection::vec("[a-z0-9_~.-]{1,8}", 1..4),
        Just(vec!["token".to_string(), "x".to_string()]),
    ];
    let segments = prop_oneof![4 => target, 1 => unrelated];
    segments
        .prop_flat_map(|segs| {
            let n = segs.len();
            (
                prop::sample::select(vec!["/", "/", "/", "//", "/./", "/x/../", "/%2E/"]),
                segs.into_iter().map(spell_segment).collect::<Vec<_>>(),
                prop::collection::vec(separator(), n.saturating_sub(1)),
                prop::sample::select(vec!["", "", "", "", "/", "//", "/.", "%2F", "?q=1", "/?a=b"]),
            )
        })
        .prop_map(|(first, segs, seps, trailing)| {
            let mut rest = String::from(first);
            for (i, seg) in segs.iter().enumerate() {
                if i > 0 {
                    rest.push_str(seps[i - 1]);
                }
                rest.push_str(seg);
            }
            rest.push_str(trailing);
            rest
        })
}

/// POSTs `body` to `target` exactly as written (a URL library would normalize the path).
async fn raw_post(addr: SocketAddr, target: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the proxy answers within 10 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer)
}

/// No spelling of the signed endpoint reaches the upstream unsigned. One proxy, one recording
/// upstream, one raw HTTP/1.1 exchange per case.
#[test]
fn no_spelling_of_the_signed_endpoint_reaches_the_upstream_unsigned() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (up, proxy) = rt.block_on(async {
        let up = Recorder::start(|_, _| Reply::token()).await;
        let config = format!(
            r#"
[routes.as]
prefix = "/as"
upstream = "{}/oauth2"
timeout = "5s"

[routes.as.client]
id = "app-1"
auth = "private_key_jwt"
key = "client.pem"
"#,
            up.url()
        );
        let builder = TestProxy::builder(config).watch(false);
        write_key(builder.dir(), "client.pem", tokenrelay::jose::Alg::ES256);
        (up, builder.start().await)
    });
    let addr = proxy.running.addr;
    let body = b"grant_type=client_credentials&scope=read";

    // The test can tell: the exact spelling is signed, a known other spelling refused.
    let (status, answer) = rt.block_on(raw_post(addr, "/as/token", body));
    assert_eq!(status, 200, "{answer}");
    assert!(up.seen()[0].param("client_assertion").is_some());
    let (status, answer) = rt.block_on(raw_post(addr, "/as/Token", body));
    assert_eq!(status, 400, "{answer}");
    assert_eq!(up.seen().len(), 1);

    let outcomes: RefCell<BTreeMap<String, usize>> = RefCell::default();
    let mut runner = TestRunner::new(ProptestConfig { max_shrink_iters: 256, ..cases(64) });
    let result = runner.run(&rest_spelling(), |rest| {
        let target = format!("/as{rest}");
        let before = up.seen().len();
        let (status, answer) = rt.block_on(raw_post(addr, &target, body));
        let seen = up.seen();
        let kind = match status {
            400 if answer.contains("unusual spelling") => "400 spelling guard".to_string(),
            s => format!("{s}{}", if seen.len() > before { " relayed" } else { "" }),
        };
        *outcomes.borrow_mut().entry(kind).or_default() += 1;
        let unsigned = seen[before..].iter().find(|req| {
            req.method == "POST" && lenient_path(&req.path) == SIGNED_PATH && req.param("client_assertion").is_none()
        });
        match unsigned {
            Some(req) => Err(TestCaseError::fail(format!(
                "the app sent POST {target}; the upstream received POST {} unsigned (proxy answered {status})",
                req.path
            ))),
            None => Ok(()),
        }
    });
    eprintln!("spelling guard outcomes: {:?}", outcomes.borrow());
    rt.block_on(proxy.stop());
    drop(up);
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ------------------------------------------------------------------------------------------
// 3. Config loading
// ------------------------------------------------------------------------------------------

const CONFIG_PATH: &str = "/etc/tokenrelay/proxy.toml";

const VALID_CONFIG: &str = r#"[proxy]
listen = "127.0.0.1:8787"
max_body = 65536
allow_origins = ["http://localhost:3000"]

[routes.as]
prefix = "/as"
upstream = "https://as.example.com:8443/oauth2"
hosts = ["as.example.com", "[::1]:9443"]
timeout = "5s"
endpoints = ["/token", "/par"]

[routes.as.client]
id = "app-1"
auth = "private_key_jwt"
key = "certs/client.pem"
alg = "ES256"
lifetime = "60s"

[routes.as.dpop]
key = "certs/dpop.pem"

[routes.as.headers]
set = { "x-env" = "test" }
remove = ["cookie"]

[routes.as.params]
add = { scope = "read" }
remove = ["foo"]

[routes.api]
prefix = "/api"
upstream = "http://127.0.0.1:9000"

[routes.api.client]
id = "app-2"
auth = "client_secret_post"
secret = "0123456789abcdef0123456789abcdef"
"#;

#[test]
fn the_base_config_is_valid() {
    let config = tokenrelay::config::parse(VALID_CONFIG, Path::new(CONFIG_PATH)).unwrap();
    assert_eq!(config.routes.len(), 2);
}

/// `Ok`, or an error that reads `<path>:<line>:<column>: ...` pointing into `text`.
fn check_config_result(
    text: &str,
    result: Result<tokenrelay::config::Config, ConfigError>,
) -> Result<Option<String>, TestCaseError> {
    let err = match result {
        Ok(_) => return Ok(None),
        Err(e) => e,
    };
    prop_assert!(matches!(err, ConfigError::Invalid { .. }), "{err:?}");
    let msg = err.to_string();
    let rest = msg.strip_prefix(&format!("{CONFIG_PATH}:"));
    prop_assert!(rest.is_some(), "does not start with the path: {msg}");
    let mut parts = rest.unwrap_or_default().splitn(3, ':');
    let line: Option<usize> = parts.next().and_then(|s| s.parse().ok());
    let column: Option<usize> = parts.next().and_then(|s| s.parse().ok());
    prop_assert!(line.is_some() && column.is_some(), "no line:column: {msg}");
    let (line, column) = (line.unwrap_or_default(), column.unwrap_or_default());
    let lines: Vec<&str> = text.split('\n').collect();
    prop_assert!(line >= 1 && line <= lines.len(), "line {line} of {}: {msg}", lines.len());
    let width = lines[line - 1].chars().count();
    prop_assert!(column >= 1 && column <= width + 1, "column {column} of {width}: {msg}");
    prop_assert!(parts.next().is_some_and(|s| s.starts_with(' ')), "{msg}");
    Ok(Some(msg))
}

fn toml_token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "=", "[", "]", "[[", "]]", "\"", "'", "\"\"\"", "'''", "#", "\n", "\r\n", "\r", "{", "}", ",", ".",
            "0", "-1", "0x10", "99999999999999999999", "1e400", "nan", "inf", "true", "1979-05-27T07:32:00Z",
            "\\", "\\u00e9", "\\uD800", "\u{e9}", "\u{1F980}", "\u{0}", "\t", " ", "routes", "proxy", "demo_as",
            "[routes.x]", "[routes.as.client]", "[routes.as.mtls]", "[demo_as]", "prefix = \"/x\"", "prefix = \"x\"",
            "upstream = \"http://[::1]:0\"", "upstream = \"https://u@h\"", "upstream = \"ftp://h\"",
            "issuer = \"https://i.example/\"", "listen = \"0.0.0.0:1\"", "listen = \"[::1]:99999\"",
            "secret = 1", "secret_env = \"X\"", "timeout = \"0s\"", "timeout = \"1 fortnight\"", "max_body = 0",
            "max_connections = 1", "hosts = [\"a@b\", \"\"]", "auth = \"tls_client_auth\"", "alg = \"HS256\"",
            "preset = \"fapi2\"", "preset = \"entra\"", "rewrite_metadata = true", "endpoints = [\"token\"]",
            "set = { \"host\" = \"x\" }", "set = { \"a b\" = \"x\" }", "remove = [\"\\u0000\"]", "audience = \"issuer\"",
        ])
        .prop_map(str::to_string),
        1 => chars(6),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(Index, usize),
    Insert(Index, String),
    Replace(Index, usize, String),
    DuplicateLine(Index),
    DropLine(Index),
    SwapLines(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1..12usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), toml_token()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<Index>(), 1..8usize, toml_token()).prop_map(|(i, n, t)| Mutation::Replace(i, n, t)),
        any::<Index>().prop_map(Mutation::DuplicateLine),
        any::<Index>().prop_map(Mutation::DropLine),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for m in mutations {
        match m {
            Mutation::Delete(at, n) => {
                let at = at.index(chars.len() + 1);
                chars.drain(at..(at + n).min(chars.len()));
            }
            Mutation::Insert(at, token) => {
                let at = at.index(chars.len() + 1);
                chars.splice(at..at, token.chars());
            }
            Mutation::Replace(at, n, token) => {
                let at = at.index(chars.len() + 1);
                chars.splice(at..(at + n).min(chars.len()), token.chars());
            }
            Mutation::DuplicateLine(_) | Mutation::DropLine(_) | Mutation::SwapLines(..) => {
                let text: String = chars.iter().collect();
                let mut lines: Vec<&str> = text.split('\n').collect();
                match m {
                    Mutation::DuplicateLine(i) => {
                        let i = i.index(lines.len());
                        lines.insert(i, lines[i]);
                    }
                    Mutation::DropLine(i) => {
                        lines.remove(i.index(lines.len()));
                    }
                    Mutation::SwapLines(a, b) => {
                        let (a, b) = (a.index(lines.len()), b.index(lines.len()));
                        lines.swap(a, b);
                    }
                    _ => unreachable!(),
                }
                chars = lines.join("\n").chars().collect();
            }
        }
    }
    chars.into_iter().collect()
}

/// Where a value that may be a secret or an API key is written wrongly (a number where a
/// string belongs), in the ways TOML allows: `$V` is the value. Each follows the keys of
/// `[routes.s]`.
const SECRET_PLACES: [&str; 8] = [
    "[routes.s.client]\nid = \"c\"\nauth = \"client_secret_post\"\nsecret = $V\n",
    "[routes.s.client]\nid = \"c\"\nauth = \"client_secret_post\"\nsecret_env = $V\n",
    "[routes.s.client]\nid = \"c\"\nauth = \"client_secret_post\"\n  \"secret\"   =   $V\n",
    "client.id = \"c\"\nclient.auth = \"client_secret_post\"\nclient.secret = $V\n",
    "[routes.s.headers]\nset = { \"x-api-key\" = $V }\n",
    "[routes.s.headers.set]\n\"x-api-key\" = $V\n",
    "client = { id = \"c\", auth = \"client_secret_post\", secret = $V }\n",
    "headers = { set = { \"x-api-key\" = $V } }\n",
];

proptest! {
    #![proptest_config(cases(256))]

    /// Mutations of a valid config: `Ok`, or an error at `<path>:<line>:<column>: `.
    #[test]
    fn config_mutations_load_or_point_at_a_place(mutations in prop::collection::vec(mutation(), 1..5)) {
        let text = mutate(VALID_CONFIG, &mutations);
        let result = tokenrelay::config::parse(&text, Path::new(CONFIG_PATH));
        check_config_result(&text, result)?;
    }

    /// Arbitrary TOML-ish text: never a panic; `Ok` or an error with path and line:column.
    #[test]
    fn config_text_loads_or_points_at_a_place(tokens in prop::collection::vec(toml_token(), 0..24)) {
        let text = tokens.concat();
        let result = tokenrelay::config::parse(&text, Path::new(CONFIG_PATH));
        check_config_result(&text, result)?;
    }

    /// A mistyped secret or header value (the code's own example: `secret = 987654321012`)
    /// never appears in the error, whichever TOML form the table is written in.
    #[test]
    fn a_mistyped_secret_is_not_echoed(
        place in prop::sample::select(SECRET_PLACES.to_vec()),
        secret in "[1-9][0-9]{11,16}",
        fraction in prop::bool::ANY,
    ) {
        let value = if fraction { format!("{secret}.5") } else { secret.clone() };
        let text = format!(
            "[routes.s]\nprefix = \"/s\"\nupstream = \"https://as.example.com\"\n{}",
            place.replace("$V", &value)
        );
        let result = tokenrelay::config::parse(&text, Path::new(CONFIG_PATH));
        prop_assert!(result.is_err(), "{text}");
        let msg = check_config_result(&text, result)?.unwrap_or_default();
        prop_assert!(!msg.contains(&secret), "the value is echoed:\n{text}\n=> {msg}");
    }
}

/// A TOML value: a literal as written, or a table of entries.
#[derive(Debug, Clone)]
enum Toml {
    Lit(&'static str),
    Table(Vec<(&'static str, Toml)>),
}

/// [`VALID_CONFIG`] as a tree, to be written out in any of TOML's spellings.
fn valid_config_tree() -> Vec<(&'static str, Toml)> {
    use Toml::{Lit, Table};
    vec![
        (
            "proxy",
            Table(vec![
                ("listen", Lit("\"127.0.0.1:8787\"")),
                ("max_body", Lit("65536")),
                ("allow_origins", Lit("[\"http://localhost:3000\"]")),
            ]),
        ),
        (
            "routes",
            Table(vec![
                (
                    "as",
                    Table(vec![
                        ("prefix", Lit("\"/as\"")),
                        ("upstream", Lit("\"https://as.example.com:8443/oauth2\"")),
                        ("hosts", Lit("[\"as.example.com\", \"[::1]:9443\"]")),
                        ("timeout", Lit("\"5s\"")),
                        ("endpoints", Lit("[\"/token\", \"/par\"]")),
                        (
                            "client",
                            Table(vec![
                                ("id", Lit("\"app-1\"")),
                                ("auth", Lit("\"private_key_jwt\"")),
                                ("key", Lit("\"certs/client.pem\"")),
                                ("alg", Lit("\"ES256\"")),
                                ("lifetime", Lit("\"60s\"")),
                            ]),
                        ),
                        ("dpop", Table(vec![("key", Lit("\"certs/dpop.pem\""))])),
                        (
                            "headers",
                            Table(vec![
                                ("set", Table(vec![("x-env", Lit("\"test\""))])),
                                ("remove", Lit("[\"cookie\"]")),
                            ]),
                        ),
                        (
                            "params",
                            Table(vec![("add", Table(vec![("scope", Lit("\"read\""))])), ("remove", Lit("[\"foo\"]"))]),
                        ),
                    ]),
                ),
                (
                    "api",
                    Table(vec![
                        ("prefix", Lit("\"/api\"")),
                        ("upstream", Lit("\"http://127.0.0.1:9000\"")),
                        (
                            "client",
                            Table(vec![
                                ("id", Lit("\"app-2\"")),
                                ("auth", Lit("\"client_secret_post\"")),
                                ("secret", Lit("\"0123456789abcdef0123456789abcdef\"")),
                            ]),
                        ),
                    ]),
                ),
            ]),
        ),
    ]
}

/// How one table is written (TOML 1.0 §Table, §Inline Table, §Keys "dotted keys").
#[derive(Debug, Clone, Copy)]
enum TableStyle {
    /// `[a.b]` and its keys below.
    Header,
    /// `b = { ... }`.
    Inline,
    /// `b.key = ...` in the parent's section.
    Dotted,
}

/// Writes tables in the styles given, one style per table in document order.
struct TomlWriter<'a> {
    styles: &'a [TableStyle],
    next: usize,
    out: String,
}

impl TomlWriter<'_> {
    fn style(&mut self) -> TableStyle {
        let style = self.styles[self.next % self.styles.len()];
        self.next += 1;
        style
    }

    fn section(&mut self, path: &[&str], entries: &[(&'static str, Toml)]) {
        let mut headers = Vec::new();
        for (key, value) in entries {
            match value {
                Toml::Lit(lit) => self.out.push_str(&format!("{key} = {lit}\n")),
                Toml::Table(table) => match self.style() {
                    TableStyle::Header => headers.push((*key, table)),
                    TableStyle::Inline => self.out.push_str(&format!("{key} = {}\n", inline(table))),
                    TableStyle::Dotted => self.dotted(key, table),
                },
            }
        }
        for (key, table) in headers {
            let mut path = path.to_vec();
            path.push(key);
            self.out.push_str(&format!("\n[{}]\n", path.join(".")));
            self.section(&path, table);
        }
    }

    /// Below a dotted key a table cannot take a `[header]`: dotted or inline.
    fn dotted(&mut self, prefix: &str, entries: &[(&'static str, Toml)]) {
        for (key, value) in entries {
            match value {
                Toml::Lit(lit) => self.out.push_str(&format!("{prefix}.{key} = {lit}\n")),
                Toml::Table(table) => match self.style() {
                    TableStyle::Inline => self.out.push_str(&format!("{prefix}.{key} = {}\n", inline(table))),
                    _ => self.dotted(&format!("{prefix}.{key}"), table),
                },
            }
        }
    }
}

fn inline(entries: &[(&'static str, Toml)]) -> String {
    let parts: Vec<String> = entries
        .iter()
        .map(|(key, value)| match value {
            Toml::Lit(lit) => format!("{key} = {lit}"),
            Toml::Table(table) => format!("{key} = {}", inline(table)),
        })
        .collect();
    format!("{{ {} }}", parts.join(", "))
}

fn write_toml(styles: &[TableStyle]) -> String {
    let mut writer = TomlWriter { styles, next: 0, out: String::new() };
    writer.section(&[], &valid_config_tree());
    writer.out
}

#[test]
fn the_config_tree_is_the_valid_config() {
    let path = Path::new(CONFIG_PATH);
    let base = format!("{:?}", tokenrelay::config::parse(VALID_CONFIG, path).unwrap());
    let headers = write_toml(&[TableStyle::Header]);
    assert_eq!(format!("{:?}", tokenrelay::config::parse(&headers, path).unwrap()), base, "{headers}");
}

proptest! {
    #![proptest_config(cases(256))]

    /// The same config in any of TOML's spellings (`[table]` headers, inline tables, dotted
    /// keys) loads to the same thing.
    #[test]
    fn every_toml_spelling_of_a_config_loads_the_same(
        styles in prop::collection::vec(
            prop_oneof![Just(TableStyle::Header), Just(TableStyle::Inline), Just(TableStyle::Dotted)],
            11,
        ),
    ) {
        let path = Path::new(CONFIG_PATH);
        let base = format!("{:?}", tokenrelay::config::parse(VALID_CONFIG, path).unwrap());
        let text = write_toml(&styles);
        match tokenrelay::config::parse(&text, path) {
            Ok(config) => prop_assert_eq!(format!("{config:?}"), base, "{}", text),
            Err(e) => prop_assert!(false, "refused:\n{}\n=> {}", text, e),
        }
    }
}

// ------------------------------------------------------------------------------------------
// 4. DPoP-Nonce and WWW-Authenticate
// ------------------------------------------------------------------------------------------

/// RFC 9449 §8.1, written independently: `nonce = 1*NQCHAR`, NQCHAR = %x21 / %x23-5B / %x5D-7E.
fn nqchars(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| matches!(c, '\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e'))
}

fn header_values() -> impl Strategy<Value = Vec<HeaderValue>> {
    prop::collection::vec(prop_oneof![bytes(0..24), "[ -~]{0,24}".prop_map(String::into_bytes)], 0..3)
        .prop_map(|vals| vals.into_iter().filter_map(|v| HeaderValue::from_bytes(&v).ok()).collect())
}

fn headers_with(name: &'static str, values: &[HeaderValue]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for v in values {
        headers.append(name, v.clone());
    }
    headers
}

/// One challenge of a `WWW-Authenticate` value (RFC 9110 §11.6.1) and whether it asks for a
/// DPoP nonce.
fn challenge() -> impl Strategy<Value = (String, bool)> {
    let param = prop::sample::select(vec![
        "realm=\"api\"",
        "algs=\"ES256 PS256\"",
        "error=\"invalid_token\"",
        "error_description=\"expired\"",
        "scope=\"read write\"",
    ]);
    let scheme = prop::sample::select(vec!["DPoP", "dpop", "DPOP", "Bearer", "Basic", "Digest"]);
    (scheme, prop::collection::vec(param, 0..3), prop::bool::ANY, prop::bool::ANY).prop_map(
        |(scheme, mut params, ask, quoted)| {
            let asks = ask && scheme.eq_ignore_ascii_case("dpop");
            if asks {
                params.insert(0, if quoted { "error=\"use_dpop_nonce\"" } else { "error=use_dpop_nonce" });
            }
            let text = if params.is_empty() { scheme.to_string() } else { format!("{scheme} {}", params.join(", ")) };
            (text, asks)
        },
    )
}

proptest! {
    #![proptest_config(cases(512))]

    /// Whatever the header bytes, nothing panics, and a nonce is taken exactly when there is
    /// one header that is `1*NQCHAR`.
    #[test]
    fn nonce_headers_never_panic(
        values in header_values(),
        auth in header_values(),
        status in prop_oneof![Just(400u16), Just(401u16), any::<u16>()],
        body in prop::option::of(prop_oneof![bytes(0..32), "\\{\"error\":\"[a-z_]{0,16}\"\\}".prop_map(String::into_bytes)]),
        text in chars(16),
    ) {
        let headers = headers_with("dpop-nonce", &values);
        let expected = match values.as_slice() {
            [one] => one.to_str().ok().filter(|s| nqchars(s)).map(str::to_string),
            _ => None,
        };
        match nonce_header(&headers) {
            NonceHeader::Valid(n) => prop_assert_eq!(Some(n), expected.clone()),
            NonceHeader::Absent => prop_assert!(values.is_empty()),
            NonceHeader::Ignored(_) => prop_assert!(!values.is_empty() && expected.is_none()),
        }
        let cache = NonceCache::default();
        prop_assert_eq!(cache.observe("https://as.example", &headers), expected.clone());
        prop_assert_eq!(cache.get("https://as.example"), expected);
        prop_assert_eq!(is_valid_nonce(&text), nqchars(&text));
        let mut both = headers_with("www-authenticate", &auth);
        both.extend(headers);
        let _ = wants_nonce(status, &both, body.as_deref());
    }

    /// A valid nonce goes through the header and the cache unchanged; a second header makes
    /// both ignored and leaves the cached one in place.
    #[test]
    fn a_valid_nonce_round_trips(nonce in "[\\x21\\x23-\\x5b\\x5d-\\x7e]{1,64}", other in "[\\x21\\x23-\\x5b\\x5d-\\x7e]{1,8}") {
        prop_assert!(is_valid_nonce(&nonce));
        let headers = headers_with("dpop-nonce", &[HeaderValue::from_str(&nonce).unwrap()]);
        prop_assert_eq!(nonce_header(&headers), NonceHeader::Valid(nonce.clone()));
        let cache = NonceCache::default();
        prop_assert_eq!(cache.observe("https://as.example", &headers), Some(nonce.clone()));
        let two = headers_with("dpop-nonce", &[HeaderValue::from_str(&other).unwrap(), HeaderValue::from_str(&other).unwrap()]);
        prop_assert!(matches!(nonce_header(&two), NonceHeader::Ignored(_)));
        prop_assert_eq!(cache.observe("https://as.example", &two), None);
        prop_assert_eq!(cache.get("https://as.example"), Some(nonce));
    }

    /// A 401 asks for a nonce exactly when one of its challenges is `DPoP` with
    /// `error="use_dpop_nonce"`, whether the challenges come in one field (RFC 9110 §11.6.1:
    /// `WWW-Authenticate = #challenge`; a resource that takes both Bearer and DPoP tokens,
    /// RFC 9449 §7.2, may send `Bearer, DPoP error="use_dpop_nonce"`) or in several.
    #[test]
    fn use_dpop_nonce_challenges_are_recognized(challenges in prop::collection::vec(challenge(), 1..4), one_field in prop::bool::ANY) {
        let asks = challenges.iter().any(|(_, a)| *a);
        let texts: Vec<String> = challenges.into_iter().map(|(t, _)| t).collect();
        let values: Vec<HeaderValue> = if one_field {
            vec![HeaderValue::from_str(&texts.join(", ")).unwrap()]
        } else {
            texts.iter().map(|t| HeaderValue::from_str(t).unwrap()).collect()
        };
        let headers = headers_with("www-authenticate", &values);
        prop_assert_eq!(wants_nonce(401, &headers, None), asks, "WWW-Authenticate: {:?}", values);
        prop_assert!(!wants_nonce(403, &headers, None));
    }

    /// A 400 from an AS asks for a nonce exactly when its JSON `error` is `use_dpop_nonce`.
    #[test]
    fn use_dpop_nonce_errors_are_recognized(error in prop::sample::select(vec!["use_dpop_nonce", "invalid_dpop_proof", "invalid_client", "USE_DPOP_NONCE"]), description in chars(12)) {
        let body = serde_json::json!({ "error": error, "error_description": description }).to_string();
        prop_assert_eq!(wants_nonce(400, &HeaderMap::new(), Some(body.as_bytes())), error == "use_dpop_nonce");
        prop_assert!(!wants_nonce(200, &HeaderMap::new(), Some(body.as_bytes())));
    }
}

// ------------------------------------------------------------------------------------------
// 5. CONNECT targets, Host headers and `hosts` entries
// ------------------------------------------------------------------------------------------

fn host_ish() -> impl Strategy<Value = String> {
    let pieces = prop::collection::vec(
        prop::sample::select(vec![
            "a",
            "B",
            "example",
            "com",
            ".",
            "-",
            "0",
            "1",
            "127",
            "255",
            "256",
            ":",
            "::",
            "[",
            "]",
            "@",
            "/",
            " ",
            "\t",
            "%",
            "ff",
            "FFFF",
            "1.2.3.4",
            "::1",
            "\u{e9}",
            "_",
            "*",
            "443",
            "65535",
            "65536",
            "99999",
            "0000080",
            "+",
            "#",
            "?",
            "localhost",
        ]),
        0..8,
    )
    .prop_map(|parts| parts.concat());
    prop_oneof![
        3 => pieces.clone(),
        // Bracketed: `[inner]`, `[inner]:port`, `[inner]junk`.
        2 => (pieces, prop::sample::select(vec!["", "", ":443", ":", ":0", ":65536", "x", ":1:2"]))
            .prop_map(|(inner, tail)| format!("[{inner}]{tail}")),
        1 => chars(12),
    ]
}

/// A host that parses, in some spelling.
fn good_host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9-]{1,10}(\\.[a-zA-Z0-9-]{1,10}){0,3}\\.?",
        any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
        any::<std::net::Ipv6Addr>().prop_map(|ip| format!("[{ip}]")),
    ]
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

proptest! {
    #![proptest_config(cases(1024))]

    /// Never a panic; whatever parses re-displays and re-parses to the same value; `@`, `/`
    /// and a space are refused.
    #[test]
    fn authorities_round_trip_and_refuse(s in host_ish(), default_port in any::<u16>(), other_port in any::<u16>()) {
        let split = split_host_port(&s);
        let authority = Authority::parse(&s, default_port);
        let entry = HostEntry::parse(&s);
        if let Some((host, port)) = split {
            let again = match port {
                Some(p) => format!("{}:{p}", bracket(host)),
                None => bracket(host),
            };
            prop_assert_eq!(split_host_port(&again), Some((host, port)), "{:?} -> {:?}", s, again);
        }
        if let Some(a) = &authority {
            prop_assert_eq!(Authority::parse(&a.to_string(), other_port), Some(a.clone()), "{:?} -> {}", s, a);
        }
        if let Some(e) = &entry {
            prop_assert_eq!(HostEntry::parse(&e.to_string()), Some(e.clone()), "{:?} -> {:?}", s, e.to_string());
        }
        if s.contains(['@', '/', ' ']) {
            prop_assert_eq!(split, None);
            prop_assert_eq!(authority, None);
            // A config entry is trimmed first: `" as.example.com "` is `as.example.com`.
            if s.trim().contains(['@', '/', ' ']) {
                prop_assert_eq!(entry, None);
            }
        }
    }

    /// A port above 65535, however written, is refused; one in range is kept.
    #[test]
    fn ports_out_of_range_are_refused(host in good_host(), big in 65536u64.., zeros in "0{0,3}", port in any::<u16>()) {
        let bad = format!("{host}:{zeros}{big}");
        prop_assert_eq!(split_host_port(&bad), None);
        prop_assert_eq!(Authority::parse(&bad, 443), None);
        prop_assert_eq!(HostEntry::parse(&bad), None);
        let good = format!("{host}:{zeros}{port}");
        prop_assert_eq!(Authority::parse(&good, 443).map(|a| a.port), Some(port), "{}", good);
        prop_assert_eq!(HostEntry::parse(&good).and_then(|e| e.port), Some(port), "{}", good);
    }
}

// ------------------------------------------------------------------------------------------
// 6. Discovery URLs
// ------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(256))]

    /// RFC 8414 §3.1 inserts the well-known suffix between host and path; OIDC Discovery 1.0
    /// §4 appends it. Never a panic on arbitrary text.
    #[test]
    fn well_known_urls_follow_rfc8414(
        host in "[a-zA-Z][a-zA-Z0-9-]{0,8}(\\.[a-z]{2,5}){0,2}",
        port in prop::option::of(1u16..),
        path in prop::collection::vec("[a-z0-9_-]{1,6}", 0..3),
        slash in prop::bool::ANY,
        junk in chars(24),
    ) {
        let _ = tokenrelay::discovery::well_known_urls(&junk);
        let authority = match port {
            Some(p) if p != 443 => format!("{host}:{p}"),
            _ => host.clone(),
        };
        let path: String = path.iter().map(|s| format!("/{s}")).collect();
        let issuer = format!("https://{authority}{path}{}", if slash { "/" } else { "" });
        let [rfc8414, oidc] = tokenrelay::discovery::well_known_urls(&issuer);
        prop_assert_eq!(
            rfc8414,
            format!("https://{}/.well-known/oauth-authorization-server{path}", authority.to_ascii_lowercase())
        );
        prop_assert_eq!(oidc, format!("https://{authority}{path}/.well-known/openid-configuration"));
    }
}
