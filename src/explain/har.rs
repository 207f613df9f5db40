//! HAR 1.2 export (`GET /.tokenrelay/exchanges.har`): one entry per upstream attempt, the
//! request as tokenrelay sent it and the AS's answer as kept, for Chrome's and Firefox's
//! devtools, Insomnia, or a vendor support ticket. Values tokenrelay does not keep (header
//! values, secret-bearing parameters, tokens) are shown as `…`; the decoded client assertion
//! and DPoP proof (header and claims, no signature) are under the entry's `_tokenrelay`
//! (HAR 1.2 allows custom fields that start with `_`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{Record, NEVER_SECRET};

/// What a HAR shows for a value that is not kept.
const NOT_KEPT: &str = "…";

/// The HAR document for `records` (any order; entries come out oldest first).
pub fn har(records: &[Arc<Record>]) -> Value {
    let mut records: Vec<&Record> = records.iter().map(|r| &**r).collect();
    records.sort_by_key(|r| r.id);
    let entries: Vec<Value> = records.iter().flat_map(|r| entries(r)).collect();
    json!({
        "log": {
            "version": "1.2",
            "creator": { "name": "tokenrelay", "version": env!("CARGO_PKG_VERSION") },
            "pages": [],
            "entries": entries,
            "comment": "Exported by tokenrelay: values it does not keep (header values, secret-bearing parameters, tokens) are shown as \u{2026}",
        }
    })
}

fn pair(name: &str, value: &str) -> Value {
    json!({ "name": name, "value": value })
}

fn entries(r: &Record) -> Vec<Value> {
    let start = r.time.0.checked_sub(Duration::from_millis(r.total_ms)).unwrap_or(r.time.0);
    let mut offset = 0u64;
    let n = r.attempts.len();
    let mut out = Vec::with_capacity(n);
    for (i, attempt) in r.attempts.iter().enumerate() {
        let started = start + Duration::from_millis(offset);
        offset += attempt.ms;
        let last = i + 1 == n;
        let query: Vec<Value> = match &r.replay.query {
            Some(q) => form_urlencoded::parse(q.as_bytes()).map(|(k, v)| pair(&k, &v)).collect(),
            None => r.request.query_names.iter().map(|k| pair(k, NOT_KEPT)).collect(),
        };
        let url = match &r.replay.query {
            Some(q) => format!("{}?{q}", attempt.url),
            None if !query.is_empty() => format!(
                "{}?{}",
                attempt.url,
                r.request.query_names.iter().map(|k| format!("{k}={NOT_KEPT}")).collect::<Vec<_>>().join("&")
            ),
            None => attempt.url.clone(),
        };
        let headers: Vec<Value> = attempt.sent_headers.iter().map(|h| pair(h.as_str(), NOT_KEPT)).collect();
        let mut request = json!({
            "method": r.request.method,
            "url": url,
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": headers,
            "queryString": query,
            "headersSize": -1,
            "bodySize": -1,
        });
        if !attempt.sent_params.is_empty() {
            let params: Vec<Value> = attempt.sent_params.iter().map(|name| pair(name, &param_value(r, name))).collect();
            let text = attempt
                .sent_params
                .iter()
                .map(|name| {
                    let value = param_value(r, name);
                    let mut s = form_urlencoded::Serializer::new(String::new());
                    s.append_pair(name, &value);
                    s.finish()
                })
                .collect::<Vec<_>>()
                .join("&");
            request["postData"] =
                json!({ "mimeType": "application/x-www-form-urlencoded", "params": params, "text": text });
        }
        let response = response(r, attempt, last);
        let mut extra = Map::new();
        extra.insert("exchange".into(), r.id.into());
        extra.insert("attempt".into(), (i + 1).into());
        extra.insert("attempts".into(), n.into());
        extra.insert("route".into(), r.route.clone().into());
        extra.insert("config_version".into(), r.config_version.into());
        extra.insert("replay_of".into(), r.replay_of.into());
        extra.insert("app_status".into(), r.status.into());
        if let Some(why) = &attempt.retried_because {
            extra.insert("retried_because".into(), why.clone().into());
        }
        // The record keeps the assertion and proof of the last attempt.
        if last {
            extra.insert("assertion".into(), serde_json::to_value(&r.assertion).unwrap_or(Value::Null));
            extra.insert("proof".into(), serde_json::to_value(&r.proof).unwrap_or(Value::Null));
            if !r.issued.is_empty() {
                extra.insert("issued".into(), serde_json::to_value(&r.issued).unwrap_or(Value::Null));
            }
            extra.insert("hints".into(), r.hints.clone().into());
        }
        extra.insert("actions".into(), serde_json::to_value(&r.actions).unwrap_or(Value::Null));
        out.push(json!({
            "startedDateTime": humantime::format_rfc3339_millis(started).to_string(),
            "time": attempt.ms,
            "request": request,
            "response": response,
            "cache": {},
            "timings": { "send": 0, "wait": attempt.ms, "receive": 0 },
            "_tokenrelay": extra,
        }));
    }
    out
}

/// The value shown for form parameter `name` as sent: the app's value when it is kept and
/// no `[params]` rule replaced it, the constant assertion type, otherwise `…`.
fn param_value(r: &Record, name: &str) -> String {
    if name == "client_assertion_type" {
        return "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into();
    }
    let changed = r.actions.params_changed.iter().any(|c| c.get(1..) == Some(name));
    if !changed && NEVER_SECRET.contains(&name) {
        if let Some(v) = r.request.params.iter().find(|p| p.name == name).and_then(|p| p.value.clone()) {
            return v;
        }
    }
    NOT_KEPT.into()
}

fn response(r: &Record, attempt: &super::Attempt, last: bool) -> Value {
    let mut headers = Vec::new();
    let mut content = Map::new();
    if last {
        if let Some(answer) = &r.answer {
            if let Some(date) = &answer.date {
                headers.push(pair("date", date));
            }
            if answer.dpop_nonce {
                headers.push(pair("dpop-nonce", NOT_KEPT));
            }
            for (k, v) in [
                ("error", &answer.error),
                ("error_description", &answer.error_description),
                ("token_type", &answer.token_type),
            ] {
                if let Some(v) = v {
                    content.insert(k.into(), v.clone().into());
                }
            }
            if answer.access_token {
                content.insert("access_token".into(), NOT_KEPT.into());
            }
        }
    } else if let Some(why) = &attempt.retried_because {
        content.insert("error".into(), why.clone().into());
        headers.push(pair("dpop-nonce", NOT_KEPT));
    }
    let text = Value::Object(content).to_string();
    let status = attempt.status.unwrap_or(0);
    let status_text = match (&attempt.error, attempt.status) {
        (Some(e), _) => e.clone(),
        (None, Some(s)) => {
            http::StatusCode::from_u16(s).ok().and_then(|s| s.canonical_reason()).unwrap_or("").to_string()
        }
        (None, None) => String::new(),
    };
    json!({
        "status": status,
        "statusText": status_text,
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": headers,
        "content": { "size": text.len(), "mimeType": "application/json", "text": text,
                     "comment": "the members tokenrelay keeps of the AS's answer; the rest is not kept" },
        "redirectURL": "",
        "headersSize": -1,
        "bodySize": -1,
    })
}
