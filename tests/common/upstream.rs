//! A recording upstream for tests: answers on 127.0.0.1:0 and keeps every request exactly
//! as it arrived (method, path+query, headers, raw body bytes), so tests assert on what the
//! "AS" actually received. Behaviour per request comes from a closure.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: http::Version,
    pub method: String,
    /// The request target's authority: HTTP/2's `:authority` (RFC 9113 §8.3.1), or the
    /// absolute-form target's; `None` for an HTTP/1 origin-form request (see `Host`).
    pub authority: Option<String>,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    pub fn param(&self, name: &str) -> Option<String> {
        self.form().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    /// Claims of a compact JWT: [`super::jwt::claims`], for callers not moved to it yet.
    pub fn jwt_claims(token: &str) -> serde_json::Value {
        super::jwt::claims(token)
    }
}

/// What the upstream answers.
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: std::time::Duration,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("cache-control".into(), "no-store".into()),
            ],
            body: body.to_string(),
            delay: std::time::Duration::ZERO,
        }
    }

    pub fn token() -> Reply {
        Reply::json(
            200,
            serde_json::json!({"access_token": "upstream-issued-token-VALUE", "token_type": "Bearer", "expires_in": 60}),
        )
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delayed(mut self, d: std::time::Duration) -> Reply {
        self.delay = d;
        self
    }
}

pub type Behaviour = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

/// Records `req` exactly as it arrived and answers with `behaviour(req, n)`.
pub async fn record_and_reply(
    seen: Arc<Mutex<Vec<Seen>>>,
    behaviour: Arc<Behaviour>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let record = Seen {
        version: parts.version,
        method: parts.method.to_string(),
        authority: parts.uri.authority().map(|a| a.to_string()),
        path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: parts.headers,
        body: body.to_vec(),
    };
    let n = {
        let mut s = seen.lock().unwrap();
        s.push(record.clone());
        s.len() - 1
    };
    let reply = behaviour(&record, n);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = reply.status;
    for (k, v) in reply.headers {
        resp.headers_mut()
            .append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), http::HeaderValue::from_str(&v).unwrap());
    }
    Ok(resp)
}

/// A running recording upstream.
pub struct Recorder {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Starts an upstream whose answer to the n-th request (0-based) is `behaviour(req, n)`.
    pub async fn start(behaviour: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let behaviour: Arc<Behaviour> = Arc::new(behaviour);
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let seen = seen2.clone();
                let behaviour = behaviour.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        record_and_reply(seen.clone(), behaviour.clone(), req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Recorder { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
