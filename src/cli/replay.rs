//! `tokenrelay replay ID [--config F]`: asks the running proxy (the config's `[proxy] listen`)
//! to send exchange `ID` again through its current config
//! (`POST /.tokenrelay/exchanges/{id}/replay`) and prints the new exchange the way
//! `tokenrelay token` does. Exits 0 when the AS answered 2xx.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub(super) fn run(config: &Path, id: u64, url: Option<&str>, json: bool) -> anyhow::Result<()> {
    let base = match url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let config = crate::config::load(config)?;
            // A wildcard listen address is reached on loopback.
            let mut addr = config.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
    };
    let (status, body) = super::runtime()?.block_on(post(&base, id, json))?;
    super::out(&body);
    if !body.ends_with('\n') {
        super::out("\n");
    }
    if status == 200 {
        let ok = if json {
            serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["status"].as_u64())
                .is_some_and(|s| (200..300).contains(&s))
        } else {
            body.lines().next().is_some_and(|l| l.rsplit(" -> ").next().is_some_and(|s| s.starts_with('2')))
        };
        if ok {
            return Ok(());
        }
        std::process::exit(1);
    }
    anyhow::bail!("the proxy at {base} answered {status} (see above)")
}

async fn post(base: &str, id: u64, json: bool) -> anyhow::Result<(u16, String)> {
    let url = format!("{base}/.tokenrelay/exchanges/{id}/replay");
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = http::Request::post(&url)
        .header(http::header::ACCEPT, if json { "application/json" } else { "text/plain" })
        .body(Empty::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(120), client.request(req))
        .await
        .with_context(|| format!("{url}: no answer within 120 s"))?
        .with_context(|| format!("cannot reach the proxy at {base} (is `tokenrelay run` running with this config?)"))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.context("reading the proxy's answer")?.to_bytes();
    let mut text = String::from_utf8_lossy(&body).into_owned();
    if status != 200 {
        // tokenrelay's own errors are OAuth-style JSON: show the description.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if let Some(d) = v["error_description"].as_str() {
                text = format!("error: {d}");
            }
        }
    }
    Ok((status, text))
}
