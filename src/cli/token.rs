//! `tokenrelay token --route NAME [--param k=v]...`: one token request through the same
//! pipeline the proxy runs, in-process, explained. It binds no proxy listener; when the
//! route's upstream is the config's `[demo_as]` and nothing answers there yet, the demo AS
//! is started in-process for the call. The one-shot assertion/mTLS/DPoP check.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::Value;

use crate::proxy::{Entry, Shared};
use crate::snapshot::BuildOptions;

/// Values in the AS's answer that are credentials: shown as `…` unless `--show-token`.
const TOKEN_FIELDS: [&str; 4] = ["access_token", "refresh_token", "id_token", "device_code"];

pub(super) fn run(config: &Path, route: &str, params: &[String], show_token: bool, json: bool) -> anyhow::Result<()> {
    let ok = super::runtime()?.block_on(exchange(config, route, params, show_token, json))?;
    if !ok {
        // The explanation is printed; the exit code says it failed.
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        std::process::exit(1);
    }
    Ok(())
}

async fn exchange(
    config: &Path,
    route_name: &str,
    params: &[String],
    show_token: bool,
    json: bool,
) -> anyhow::Result<bool> {
    let path = config.to_path_buf();
    let snapshot = tokio::task::spawn_blocking(move || {
        let mut snapshot = crate::snapshot::load(&path, BuildOptions { create_missing: true, ..Default::default() })?;
        snapshot.create_files()?;
        anyhow::Ok(snapshot)
    })
    .await??;
    let route = snapshot
        .routes
        .iter()
        .find(|r| r.cfg.name == route_name)
        .cloned()
        .with_context(|| format!("no route named {route_name:?} in {}", config.display()))?;
    let config = snapshot.config.clone();
    let (snapshot_tx, snapshot_rx) = tokio::sync::watch::channel(Arc::new(snapshot));
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    // The demo AS first: discovery against it would otherwise fail (and log so) before it
    // listens.
    let _demo = start_demo_as_if_needed(&config, &route, snapshot_rx.clone(), shutdown).await?;
    snapshot_rx.borrow().start_discovery();
    let shared = Arc::new(Shared::new(snapshot_rx));

    let mut form = form_urlencoded::Serializer::new(String::new());
    if !params.iter().any(|p| p.starts_with("grant_type=")) {
        form.append_pair("grant_type", "client_credentials");
    }
    for p in params {
        let (k, v) = p.split_once('=').with_context(|| format!("--param {p:?}: use name=value"))?;
        form.append_pair(k, v);
    }
    let token_path = token_path(&route).await;
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri(&token_path)
        .header(http::header::HOST, "127.0.0.1")
        .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form.finish())))?;
    let peer = SocketAddr::from(([127, 0, 0, 1], 0));
    let (resp, record) = crate::proxy::handle_recorded(shared, req, peer, Entry::Reverse { https: false }).await;
    let status = resp.status();
    let body = tokio::time::timeout(route.cfg.timeout + Duration::from_secs(1), resp.into_body().collect())
        .await
        .context("the answer did not finish in time")?
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !show_token {
        if let Value::Object(map) = &mut answer {
            for field in TOKEN_FIELDS {
                if let Some(v) = map.get_mut(field) {
                    *v = "…".into();
                }
            }
        }
    }
    drop(snapshot_tx);
    if json {
        let doc = serde_json::json!({ "exchange": record.as_deref(), "answer": answer });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        if let Some(record) = &record {
            print!("{}", crate::explain::render(record));
        }
        if !answer.is_null() {
            println!("answer: {}", serde_json::to_string_pretty(&answer)?);
        }
    }
    Ok(status.is_success())
}

/// Where the app would POST for a token: the token endpoint's path under the prefix (the
/// metadata's when discovery has one, else the first configured endpoint).
async fn token_path(route: &crate::snapshot::Route) -> String {
    let meta = route.metadata().await.ok().flatten();
    let table = route.endpoints(meta.as_ref());
    let app_path = table.token().map_or("/token", |e| e.app_path.as_str());
    format!("{}{app_path}", route.cfg.prefix)
}

/// Starts the config's demo AS in-process when the route points at it and nothing listens
/// there yet (a running `tokenrelay` already serves it).
async fn start_demo_as_if_needed(
    config: &crate::config::Config,
    route: &crate::snapshot::Route,
    snapshot: tokio::sync::watch::Receiver<Arc<crate::snapshot::Snapshot>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(demo) = &config.demo_as else { return Ok(None) };
    let upstream = &route.cfg.upstream;
    let points_at_demo = upstream.port == demo.listen.port()
        && upstream.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip == demo.listen.ip() || ip.is_loopback());
    if !points_at_demo {
        return Ok(None);
    }
    let listener = match tokio::net::TcpListener::bind(demo.listen).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            // Through the log, so that `--log-format json` keeps every line JSON.
            tracing::info!(demo_as = %demo.listen, "{} is in use; using the demo AS already listening there", demo.listen);
            return Ok(None);
        }
        Err(e) => return Err(e).context(format!("cannot start the demo AS on {}", demo.listen)),
    };
    let connections = crate::server::Tracker::with_peers(
        crate::server::connection_limit(config.max_connections),
        crate::peer::Gate::fixed(config.allow_users.clone()),
    );
    let (_, task) = crate::demo_as::spawn(listener, config, snapshot, connections, shutdown)?;
    Ok(Some(task))
}
