//! What the AS issued and the HAR export, through the real binary against the demo AS over
//! HTTPS (JWT access tokens, RFC 9068, bound by `cnf`): the binding verdict is right for a
//! DPoP-bound token, an mTLS-bound one and an unbound one; `GET /.tokenrelay/exchanges.har`
//! passes the HAR 1.2 schema (har-validator, from npm) and holds no planted secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::{install_once, npm_install, run, tests_dir, ProxyProcess};
use common::proxy::write_key;
use serde_json::Value;
use tokenrelay::jose::Alg;

const PLANTED_SECRET: &str = "planted-secret-8d1e77-do-not-export";
const PLANTED_CODE: &str = "planted-code-5b2c90";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn route(name: &str, auth: &str, extra: &str) -> String {
    format!(
        "[routes.{name}]\nprefix = \"/{name}\"\nupstream = \"https://$AS\"\nissuer = \"https://$AS\"\n\
         trust = [\"certs/demo-as-ca.pem\"]\n[routes.{name}.client]\nid = \"{name}-app\"\nauth = \"{auth}\"\n{extra}"
    )
}

async fn post_form(base: &str, path: &str, body: &str) -> (u16, Value) {
    let resp = common::proxy::client()
        .post(format!("{base}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

async fn newest(base: &str, route: &str) -> Value {
    let list: Value = common::proxy::client()
        .get(format!("{base}/.tokenrelay/exchanges?route={route}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list[0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn binding_verdicts_and_a_valid_har_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, demo) = (free_port(), free_port());
    let (_, dpop_key) = write_key(dir.path(), "dpop.pem", Alg::ES256);
    write_key(dir.path(), "client.pem", Alg::ES256);
    common::pki::self_signed_client("mtls-app").write(dir.path(), "mtls");
    let config = format!("[proxy]\nlisten = \"127.0.0.1:{listen}\"\n[demo_as]\nlisten = \"$AS\"\ntls = true\n")
        + &route("dpop", "private_key_jwt", "key = \"client.pem\"\n[routes.dpop.dpop]\nkey = \"dpop.pem\"\n")
        + &route(
            "mtls",
            "self_signed_tls_client_auth",
            "[routes.mtls.mtls]\ncert = \"mtls-cert.pem\"\nkey = \"mtls-key.pem\"\n",
        )
        + &route("plain", "private_key_jwt", "key = \"client.pem\"\n")
        + &route("secret", "client_secret_post", &format!("secret = \"{PLANTED_SECRET}\"\n"));
    let config = config.replace("$AS", &format!("127.0.0.1:{demo}"));
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    let proxy = ProxyProcess::start(&["run"], &dir.path().join("proxy.toml"), "info");
    let base = proxy.base.clone();

    // DPoP: the token's cnf.jkt is the route's DPoP key.
    let (status, answer) = post_form(&base, "/dpop/token", "grant_type=client_credentials&scope=read").await;
    assert_eq!(status, 200, "{answer}");
    let record = newest(&base, "dpop").await;
    let issued = &record["issued"];
    assert_eq!(issued["access_token"]["header"]["typ"], "at+jwt", "{record}");
    assert_eq!(issued["access_token"]["claims"]["cnf"]["jkt"], dpop_key.thumbprint());
    assert_eq!(issued["binding"]["verdict"], "bound", "{issued}");
    assert_eq!(issued["binding"]["jkt"]["expected"], dpop_key.thumbprint());
    assert_eq!(issued["binding"]["jkt"]["ok"], true);
    assert_eq!(issued["binding"]["token_type"]["got"], "DPoP");
    let token = answer["access_token"].as_str().unwrap();
    let signature = token.rsplit('.').next().unwrap();
    let shown = record.to_string();
    assert!(!shown.contains(token) && !shown.contains(signature), "never the token or its signature");

    // mTLS: cnf.x5t#S256 is the route's certificate.
    let (status, answer) = post_form(&base, "/mtls/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{answer}");
    let record = newest(&base, "mtls").await;
    let binding = &record["issued"]["binding"];
    assert_eq!(binding["verdict"], "bound", "{record}");
    assert_eq!(binding["x5t#S256"]["ok"], true);
    assert_eq!(binding["x5t#S256"]["got"], answer["cnf"]["x5t#S256"]);
    assert_eq!(binding["token_type"]["expected"], "Bearer");

    // Unbound: no DPoP, no certificate.
    let (status, answer) = post_form(&base, "/plain/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200, "{answer}");
    let record = newest(&base, "plain").await;
    assert_eq!(record["issued"]["binding"]["verdict"], "unbound", "{record}");
    assert_eq!(record["issued"]["access_token"]["claims"]["cnf"], Value::Null);

    // Secrets the app or the config carried; and a refused code.
    let (status, _) = post_form(&base, "/secret/token", "grant_type=client_credentials").await;
    assert_eq!(status, 200);
    let (status, _) = post_form(
        &base,
        "/plain/token",
        &format!("grant_type=authorization_code&code={PLANTED_CODE}&redirect_uri=http%3A%2F%2Flocalhost%2Fcb"),
    )
    .await;
    assert_eq!(status, 400);

    let resp = common::proxy::client().get(format!("{base}/.tokenrelay/exchanges.har")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-disposition"].to_str().unwrap().contains(".har"));
    let text = resp.text().await.unwrap();
    for secret in [PLANTED_SECRET, PLANTED_CODE, token, signature] {
        assert!(!text.contains(secret), "the HAR holds {secret}");
    }
    let har: Value = serde_json::from_str(&text).unwrap();
    let entries = har["log"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 5, "one entry per upstream attempt");
    let dpop = entries.iter().find(|e| e["_tokenrelay"]["route"] == "dpop").unwrap();
    assert_eq!(dpop["request"]["method"], "POST");
    assert_eq!(dpop["request"]["url"], format!("https://127.0.0.1:{demo}/token"));
    let header_names: Vec<&str> =
        dpop["request"]["headers"].as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert!(header_names.contains(&"dpop"), "{header_names:?}");
    assert!(dpop["request"]["headers"].as_array().unwrap().iter().all(|h| h["value"] == "…"));
    let params: Vec<(&str, &str)> = dpop["request"]["postData"]["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["value"].as_str().unwrap()))
        .collect();
    assert!(
        params.contains(&("grant_type", "client_credentials")) && params.contains(&("client_assertion", "…")),
        "{params:?}"
    );
    assert_eq!(dpop["response"]["status"], 200);
    assert_eq!(dpop["_tokenrelay"]["proof"]["header"]["typ"], "dpop+jwt");
    assert_eq!(dpop["_tokenrelay"]["assertion"]["claims"]["iss"], "dpop-app");
    let secret = entries.iter().find(|e| e["_tokenrelay"]["route"] == "secret").unwrap();
    let sent: Vec<(&str, &str)> = secret["request"]["postData"]["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["value"].as_str().unwrap()))
        .collect();
    assert!(sent.contains(&("client_secret", "…")), "{sent:?}");

    // The HAR 1.2 schema, as har-validator checks it.
    let checker = tests_dir("har_check");
    let install = checker.clone();
    tokio::task::spawn_blocking(move || {
        install_once(&install, &install.join("node_modules/har-validator/package.json"), || npm_install(&install))
    })
    .await
    .unwrap()
    .unwrap();
    let file = dir.path().join("exchanges.har");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new("node").arg(checker.join("check.js")).arg(&file).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.trim() == "valid",
        "HAR 1.2 schema: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And a document the schema refuses is refused (the check is real).
    std::fs::write(&file, text.replace("\"httpVersion\"", "\"httpVersionX\"")).unwrap();
    assert!(run("node", &[checker.join("check.js").to_str().unwrap(), file.to_str().unwrap()], &checker).is_err());
    proxy.stop();
}
