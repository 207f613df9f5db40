//! Explain and inspect: what one exchange did, kept so the developer can see exactly what
//! was sent and why the AS said no.
//!
//! A [`Record`] holds the app's request (names, and values only for parameters that are never
//! secret), what tokenrelay did to it, every upstream attempt, the client assertion and DPoP
//! proof it signed (decoded: header and claims, no signature; `ath` and `nonce` shown as
//! present, not as values), what the AS answered (`error`, `error_description`, a `DPoP-Nonce`
//! present, its `Date`) and [`hints`]. No secret, token, code, verifier, assertion or proof
//! signature is ever stored. The last `[proxy] exchanges` records (default 200, 0 = off) live
//! in [`Exchanges`], served as JSON at `/.tokenrelay/exchanges` and by the inspector page.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Map, Value};

/// Parameters whose values are never secret, so a record shows them.
pub const NEVER_SECRET: [&str; 12] = [
    "grant_type",
    "scope",
    "resource",
    "audience",
    "client_id",
    "response_type",
    "redirect_uri",
    "token_type_hint",
    "requested_token_type",
    "subject_token_type",
    "actor_token_type",
    "client_assertion_type",
];

/// Clock skew against the AS's `Date` beyond which assertions and proofs may be rejected.
pub const SKEW_WARNING_S: i64 = 30;

/// One exchange, safe to show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    pub id: u64,
    /// RFC 3339, UTC.
    pub time: String,
    /// `reverse`, `reverse-tls` or `forward`.
    pub entry: &'static str,
    pub route: Option<String>,
    pub request: AppRequest,
    pub actions: Actions,
    pub attempts: Vec<Attempt>,
    /// The client assertion as signed (last attempt): JOSE header and claims.
    pub assertion: Option<Jwt>,
    /// The DPoP proof as signed (last attempt).
    pub proof: Option<Jwt>,
    /// The status the app got.
    pub status: u16,
    pub answer: Option<Answer>,
    /// Why tokenrelay answered itself instead of relaying (its own error text).
    pub refused: Option<String>,
    pub hints: Vec<String>,
    pub total_ms: u64,
}

/// The app's request, without secret values.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AppRequest {
    pub method: String,
    pub path: String,
    pub query_names: Vec<String>,
    pub header_names: Vec<String>,
    /// Form parameters in order; `value` only for [`NEVER_SECRET`] names.
    pub params: Vec<Param>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Param {
    pub name: String,
    pub value: Option<String>,
}

/// What tokenrelay did to the request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Actions {
    pub auth: Option<&'static str>,
    pub kid: Option<String>,
    pub assertion_jti: Option<String>,
    pub dpop_jti: Option<String>,
    /// `+name` added, `=name` set, `-name` removed by `[params]` rules.
    pub params_changed: Vec<String>,
    pub headers_set: Vec<String>,
    pub headers_removed: Vec<String>,
    /// Competing credentials the app sent that were removed (RFC 6749 §2.3).
    pub credentials_removed: Vec<&'static str>,
}

/// One upstream attempt.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Attempt {
    /// The URL actually called (the mTLS alias when one is used), without query.
    pub url: String,
    pub status: Option<u16>,
    pub ms: u64,
    /// Why this attempt was followed by another (`use_dpop_nonce`).
    pub retried_because: Option<String>,
    pub error: Option<String>,
}

/// A signed JWT as it was sent, minus the signature.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Jwt {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
}

impl Jwt {
    /// Decodes a compact JWS we signed; `ath` and `nonce` become `"present"`.
    pub fn decode(token: &str) -> Option<Jwt> {
        let mut parts = token.split('.');
        let (header, claims) = (parts.next()?, parts.next()?);
        let mut jwt = Jwt { header: decode_part(header)?, claims: decode_part(claims)? };
        for hidden in ["ath", "nonce"] {
            if jwt.claims.contains_key(hidden) {
                jwt.claims.insert(hidden.into(), "present".into());
            }
        }
        Some(jwt)
    }

    fn claim(&self, name: &str) -> Option<&Value> {
        self.claims.get(name)
    }
}

fn decode_part(part: &str) -> Option<Map<String, Value>> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What the AS answered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Answer {
    pub error: Option<String>,
    pub error_description: Option<String>,
    pub dpop_nonce: bool,
    pub token_type: Option<String>,
    /// The AS's `Date` header.
    pub date: Option<String>,
    /// AS clock minus ours, in seconds, from `Date`.
    pub clock_skew_s: Option<i64>,
}

impl Answer {
    /// Reads the answer's headers and (JSON) body.
    pub fn read(headers: &http::HeaderMap, body: Option<&[u8]>, now: std::time::SystemTime) -> Answer {
        let json = body.and_then(|b| serde_json::from_slice::<Value>(b).ok());
        let text = |name: &str| json.as_ref().and_then(|j| j.get(name)).and_then(Value::as_str).map(str::to_string);
        let date = headers.get(http::header::DATE).and_then(|d| d.to_str().ok()).map(str::to_string);
        let clock_skew_s = date.as_deref().and_then(|d| httpdate_skew(d, now));
        Answer {
            error: text("error"),
            // Descriptions are the AS's own words about the request; they carry no credential.
            error_description: text("error_description"),
            dpop_nonce: headers.contains_key("dpop-nonce"),
            token_type: text("token_type"),
            date,
            clock_skew_s,
        }
    }
}

/// AS clock minus ours, from an HTTP `Date` (RFC 9110 §5.6.7).
fn httpdate_skew(date: &str, now: std::time::SystemTime) -> Option<i64> {
    let theirs = humantime::parse_rfc3339(&httpdate_to_rfc3339(date)?).ok()?;
    let secs = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs() as i64);
    Some(secs(theirs)? - secs(now)?)
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` -> `1994-11-06T08:49:37Z` (IMF-fixdate only).
fn httpdate_to_rfc3339(date: &str) -> Option<String> {
    let mut it = date.split_whitespace();
    let (_, day, month, year, time) = (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let m = MONTHS.iter().position(|x| *x == month)? + 1;
    Some(format!("{year}-{m:02}-{day:0>2}T{time}Z"))
}

/// What the hints need to know about the route beyond the record.
#[derive(Debug, Clone, Default)]
pub struct RouteFacts {
    pub name: String,
    pub client_id: Option<String>,
    pub issuer: Option<String>,
    pub token_endpoint: String,
}

/// The rule table: from the AS's error and what was sent, what to check.
pub fn hints(record: &Record, route: Option<&RouteFacts>) -> Vec<String> {
    let mut out = Vec::new();
    let name = route.map_or("NAME", |r| r.name.as_str());
    let answer = record.answer.as_ref();
    let error = answer.and_then(|a| a.error.as_deref());
    let aud = record.assertion.as_ref().and_then(|a| a.claim("aud")).map(|v| v.to_string());
    match error {
        Some("invalid_client") => {
            if let (Some(kid), Some(_)) = (&record.actions.kid, &record.assertion) {
                out.push(format!(
                    "is kid {kid} registered at the AS for this client? `tokenrelay jwks --route {name}` prints the public key to register"
                ));
            }
            if let Some(aud) = &aud {
                let alternatives = route
                    .map(|r| {
                        let mut alt = Vec::new();
                        if let Some(i) = &r.issuer {
                            alt.push(format!("the issuer {i:?}"));
                        }
                        alt.push(format!("the token endpoint {:?}", r.token_endpoint));
                        alt.join(" or ")
                    })
                    .unwrap_or_default();
                out.push(format!(
                    "does the AS expect another aud? it got {aud}; try routes.{name}.client.audience = \"issuer\", \"token_endpoint\" or \"endpoint\" ({alternatives})"
                ));
            }
            if let Some(id) = route.and_then(|r| r.client_id.as_deref()) {
                out.push(format!("is client_id {id:?} right, and registered for {}?", record.actions.auth.unwrap_or("this auth method")));
            }
        }
        Some("invalid_dpop_proof") => {
            if let Some(proof) = &record.proof {
                if let Some(htu) = proof.claim("htu") {
                    out.push(format!("the proof's htu was {htu}: it must be the URL the AS sees for this endpoint"));
                }
                if let (Some(skew), Some(_)) = (answer.and_then(|a| a.clock_skew_s), proof.claim("iat")) {
                    out.push(format!("iat vs the AS's Date: the clocks differ by {skew} s"));
                }
                let nonce = if proof.claims.contains_key("nonce") { "present" } else { "absent" };
                out.push(format!("the proof's nonce was {nonce}"));
            }
        }
        Some("use_dpop_nonce") => {
            out.push("the AS kept asking for a new DPoP nonce after the retry with the one it sent".into())
        }
        Some("invalid_grant") => out.push(
            "the code or refresh token is expired, already used, issued to another client, or bound to another DPoP key / certificate"
                .into(),
        ),
        Some("unauthorized_client") => {
            let grant = record.request.params.iter().find(|p| p.name == "grant_type").and_then(|p| p.value.clone());
            out.push(format!(
                "the AS does not allow this client the grant_type {}; enable it in the client's registration",
                grant.unwrap_or_else(|| "(none sent)".into())
            ));
        }
        Some("unsupported_grant_type") => {
            out.push("the AS does not support this grant_type at this endpoint (check its grant_types_supported)".into())
        }
        Some("invalid_scope") => out.push("a requested scope is unknown or not allowed for this client".into()),
        _ => {}
    }
    if let Some(refused) = &record.refused {
        if refused.contains("TLS certificate not trusted") {
            out.push(format!("add the AS's CA certificate (PEM) to routes.{name}.trust"));
        } else if refused.contains("refused our client certificate") {
            out.push(format!(
                "the AS wanted a client certificate it accepts: check routes.{name}.mtls and what the AS trusts"
            ));
        }
    }
    if record.attempts.last().and_then(|a| a.status) == Some(404) {
        out.push(format!(
            "the AS has no {}: check the endpoint path (routes.{name}.upstream, endpoints) and the route prefix",
            record.attempts.last().map(|a| a.url.as_str()).unwrap_or("such path")
        ));
    }
    if let Some(skew) = answer.and_then(|a| a.clock_skew_s).filter(|s| s.abs() > SKEW_WARNING_S) {
        out.push(format!(
            "this machine's clock differs from the AS's by {skew} s: assertions and proofs may be rejected as not yet valid or expired"
        ));
    }
    out
}

/// A record as text, for `tokenrelay token` and logs.
pub fn render(record: &Record) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let route = record.route.as_deref().unwrap_or("-");
    let _ = writeln!(
        out,
        "exchange {} via route {route}: {} {} -> {}",
        record.id, record.request.method, record.request.path, record.status
    );
    let sent: Vec<String> = record
        .request
        .params
        .iter()
        .map(|p| match &p.value {
            Some(v) => format!("{}={v}", p.name),
            None => format!("{}=…", p.name),
        })
        .collect();
    if !sent.is_empty() {
        let _ = writeln!(out, "  app sent: {}", sent.join("&"));
    }
    let a = &record.actions;
    if let Some(auth) = a.auth {
        let _ = writeln!(
            out,
            "  client auth: {auth}{}",
            a.kid.as_deref().map(|k| format!(" (kid {k})")).unwrap_or_default()
        );
    }
    if !a.credentials_removed.is_empty() {
        let _ = writeln!(out, "  removed competing credentials: {}", a.credentials_removed.join(", "));
    }
    if !a.params_changed.is_empty() {
        let _ = writeln!(out, "  params: {}", a.params_changed.join(" "));
    }
    for (label, jwt) in [("assertion", &record.assertion), ("dpop proof", &record.proof)] {
        if let Some(jwt) = jwt {
            let _ = writeln!(
                out,
                "  {label}: header {} claims {}",
                Value::Object(jwt.header.clone()),
                Value::Object(jwt.claims.clone())
            );
        }
    }
    for (i, attempt) in record.attempts.iter().enumerate() {
        let status = attempt.status.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
        let _ = write!(out, "  attempt {}: {} -> {status} in {} ms", i + 1, attempt.url, attempt.ms);
        if let Some(why) = &attempt.retried_because {
            let _ = write!(out, " (retried: {why})");
        }
        if let Some(e) = &attempt.error {
            let _ = write!(out, " ({e})");
        }
        out.push('\n');
    }
    if let Some(answer) = &record.answer {
        if let Some(e) = &answer.error {
            let _ = writeln!(
                out,
                "  AS error: {e}{}",
                answer.error_description.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
            );
        }
    }
    if let Some(refused) = &record.refused {
        let _ = writeln!(out, "  tokenrelay: {refused}");
    }
    for hint in &record.hints {
        let _ = writeln!(out, "  hint: {hint}");
    }
    out
}

/// The last exchanges, newest last, at most `cap` (set per push from the live config).
#[derive(Debug, Default)]
pub struct Exchanges {
    records: Mutex<VecDeque<Arc<Record>>>,
    next: AtomicU64,
}

impl Exchanges {
    /// An id for the next record (ids grow from 1).
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn push(&self, record: Arc<Record>, cap: usize) {
        if cap == 0 {
            return;
        }
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        while records.len() >= cap {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// Newest first, filtered by route and by failure (status >= 400).
    pub fn list(&self, route: Option<&str>, failed_only: bool) -> Vec<Arc<Record>> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records
            .iter()
            .rev()
            .filter(|r| route.is_none_or(|name| r.route.as_deref() == Some(name)))
            .filter(|r| !failed_only || r.status >= 400)
            .cloned()
            .collect()
    }

    pub fn get(&self, id: u64) -> Option<Arc<Record>> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.iter().find(|r| r.id == id).cloned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn proofs_are_decoded_without_signature_and_hidden_claims() {
        use base64::Engine as _;
        let enc = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let token = format!(
            "{}.{}.SIGNATURE",
            enc(serde_json::json!({"typ": "dpop+jwt"})),
            enc(serde_json::json!({"htu": "https://as/token", "ath": "abc", "nonce": "n-1"}))
        );
        let jwt = Jwt::decode(&token).unwrap();
        assert_eq!(jwt.claims["ath"], "present");
        assert_eq!(jwt.claims["nonce"], "present");
        assert!(!serde_json::to_string(&jwt).unwrap().contains("SIGNATURE"));
    }

    #[test]
    fn dates_give_the_skew() {
        let now = humantime::parse_rfc3339("1994-11-06T08:49:00Z").unwrap();
        assert_eq!(httpdate_skew("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(37));
        assert_eq!(httpdate_skew("garbage", now), None);
    }

    #[test]
    fn invalid_client_hints_name_the_kid_the_aud_and_the_jwks_command() {
        let mut record = Record::default();
        record.actions.kid = Some("kid-1".into());
        record.actions.auth = Some("private_key_jwt");
        record.assertion = Some(Jwt {
            claims: [("aud".to_string(), "https://as/token".into())].into_iter().collect(),
            ..Default::default()
        });
        record.answer = Some(Answer { error: Some("invalid_client".into()), ..Default::default() });
        let facts = RouteFacts {
            name: "as".into(),
            client_id: Some("app".into()),
            issuer: Some("https://as".into()),
            token_endpoint: "https://as/token".into(),
        };
        let hints = hints(&record, Some(&facts));
        assert!(hints[0].contains("kid-1") && hints[0].contains("tokenrelay jwks --route as"), "{hints:?}");
        assert!(hints[1].contains("https://as/token") && hints[1].contains("audience"), "{hints:?}");
    }

    #[test]
    fn the_ring_keeps_the_newest() {
        let ex = Exchanges::default();
        for _ in 0..5 {
            let id = ex.next_id();
            ex.push(Arc::new(Record { id, status: if id % 2 == 0 { 401 } else { 200 }, ..Default::default() }), 3);
        }
        let ids: Vec<u64> = ex.list(None, false).iter().map(|r| r.id).collect();
        assert_eq!(ids, [5, 4, 3]);
        assert_eq!(ex.list(None, true).iter().map(|r| r.id).collect::<Vec<_>>(), [4]);
        assert!(ex.get(1).is_none() && ex.get(4).is_some());
        ex.push(Arc::new(Record::default()), 0);
        assert_eq!(ex.list(None, false).len(), 3, "0 = off");
    }
}
