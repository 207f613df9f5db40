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

mod compare;
mod har;
pub mod issued;
mod replay;

pub use compare::{compare, Difference};
pub use har::har;
pub use issued::Issued;
pub use replay::ReplayInput;

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
    /// When the exchange ended; shown as RFC 3339, UTC, in milliseconds.
    pub time: Timestamp,
    /// `reverse`, `reverse-tls` or `forward`.
    pub entry: &'static str,
    pub route: Option<String>,
    pub request: AppRequest,
    pub actions: Actions,
    pub attempts: Vec<Attempt>,
    /// The client assertion as signed (last attempt): JOSE header and claims.
    pub assertion: Option<Sent>,
    /// The DPoP proof as signed (last attempt).
    pub proof: Option<Sent>,
    /// The status the app got.
    pub status: u16,
    pub answer: Option<Answer>,
    /// Why tokenrelay answered itself instead of relaying (its own error text).
    pub refused: Option<String>,
    pub hints: Vec<String>,
    pub total_ms: u64,
    /// The config version that served this exchange (`GET /.tokenrelay/reloads`).
    pub config_version: u64,
    /// The exchange this one replayed (`POST /.tokenrelay/exchanges/{id}/replay`).
    pub replay_of: Option<u64>,
    /// Whether it can be replayed: shown as `{"replayable": .., "not_kept": [..]}`.
    pub replay: ReplayInput,
    /// What the AS issued (JWT header and claims) and the binding verdict.
    #[serde(skip_serializing_if = "Issued::is_empty")]
    pub issued: Issued,
}

/// A wall-clock time, formatted (RFC 3339, UTC, milliseconds) only when shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub std::time::SystemTime);

impl Default for Timestamp {
    fn default() -> Self {
        Timestamp(std::time::UNIX_EPOCH)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        humantime::format_rfc3339_millis(self.0).fmt(f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
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
    /// The `token_type` the app got instead of the AS's (`dpop.token_type = "Bearer"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_token_type: Option<&'static str>,
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
    /// The header names sent on this attempt (values are not kept), for the HAR export.
    #[serde(skip)]
    pub sent_headers: Vec<http::HeaderName>,
    /// The form parameter names sent on this attempt, in order, for the HAR export.
    #[serde(skip)]
    pub sent_params: Vec<String>,
}

/// A JWT tokenrelay signed, kept as its signing input (`header.payload`, RFC 7515 §5.1): the
/// signature is cut off when the exchange happens, and the JSON is decoded only when the
/// record is shown (hints, the inspector, `tokenrelay token`), not on every request.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Sent(Box<str>);

/// Shows what serializing shows (decoded, `ath` and `nonce` hidden), never the raw parts.
impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Sent").field(&self.decode()).finish()
    }
}

impl Sent {
    /// The signing input of compact JWS `token` (everything before its last `.`).
    pub fn of(token: &str) -> Sent {
        Sent(token.rsplit_once('.').map_or("", |(input, _)| input).into())
    }

    /// Header and claims, `ath` and `nonce` shown as `"present"`.
    pub fn decode(&self) -> Option<Jwt> {
        Jwt::decode(&self.0)
    }
}

impl Serialize for Sent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.decode().serialize(s)
    }
}

/// A signed JWT as it was sent, minus the signature.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Jwt {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
}

impl Jwt {
    /// Decodes the first two parts of a compact JWS; `ath` and `nonce` become `"present"`.
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
    /// The body is a JSON object with an `access_token` member (of any value).
    #[serde(skip)]
    pub access_token: bool,
}

impl Answer {
    /// Reads the answer's headers and (JSON) body.
    pub fn read(headers: &http::HeaderMap, body: Option<&[u8]>, now: std::time::SystemTime) -> Answer {
        let fields = body.and_then(|b| serde_json::from_slice::<AnswerFields>(b).ok()).unwrap_or_default();
        let date = headers.get(http::header::DATE).and_then(|d| d.to_str().ok()).map(str::to_string);
        let clock_skew_s = date.as_deref().and_then(|d| httpdate_skew(d, now));
        Answer {
            error: fields.error,
            // Descriptions are the AS's own words about the request; they carry no credential.
            error_description: fields.error_description,
            dpop_nonce: headers.contains_key("dpop-nonce"),
            token_type: fields.token_type,
            date,
            clock_skew_s,
            access_token: fields.access_token,
        }
    }
}

/// The members of a token or error answer (RFC 6749 §5.1, §5.2) that [`Answer`] shows, read
/// without building the whole JSON document: a member that is not a string counts as absent,
/// a repeated member's last value wins, anything but a JSON object gives nothing.
#[derive(Default)]
struct AnswerFields {
    error: Option<String>,
    error_description: Option<String>,
    token_type: Option<String>,
    access_token: bool,
}

impl<'de> serde::Deserialize<'de> for AnswerFields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, Visitor};
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = AnswerFields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<AnswerFields, M::Error> {
                let mut out = AnswerFields::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Error => out.error = map.next_value::<StrOnly>()?.0,
                        Key::ErrorDescription => out.error_description = map.next_value::<StrOnly>()?.0,
                        Key::TokenType => out.token_type = map.next_value::<StrOnly>()?.0,
                        Key::AccessToken => {
                            map.next_value::<IgnoredAny>()?;
                            out.access_token = true;
                        }
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Fields)
    }
}

/// A member name of [`AnswerFields`].
enum Key {
    Error,
    ErrorDescription,
    TokenType,
    AccessToken,
    Other,
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Key, E> {
                Ok(match name {
                    "error" => Key::Error,
                    "error_description" => Key::ErrorDescription,
                    "token_type" => Key::TokenType,
                    "access_token" => Key::AccessToken,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(Name)
    }
}

/// A JSON value kept when it is a string (`Value::as_str`), skipped otherwise.
struct StrOnly(Option<String>);

impl<'de> serde::Deserialize<'de> for StrOnly {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct Any;
        impl<'de> Visitor<'de> for Any {
            type Value = StrOnly;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StrOnly, E> {
                Ok(StrOnly(Some(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<StrOnly, E> {
                Ok(StrOnly(Some(v)))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<StrOnly, E> {
                Ok(StrOnly(None))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<StrOnly, E> {
                Ok(StrOnly(None))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<StrOnly, E> {
                Ok(StrOnly(None))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<StrOnly, E> {
                Ok(StrOnly(None))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<StrOnly, E> {
                Ok(StrOnly(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrOnly, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(StrOnly(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrOnly, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(StrOnly(None))
            }
        }
        d.deserialize_any(Any)
    }
}

/// AS clock minus ours, from an HTTP `Date` (RFC 9110 §5.6.7).
fn httpdate_skew(date: &str, now: std::time::SystemTime) -> Option<i64> {
    let ours = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(httpdate_unix(date)? - ours)
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` -> seconds since 1970 (IMF-fixdate only, RFC 9110
/// §5.6.7), read in place: every answer carries a `Date`.
fn httpdate_unix(date: &str) -> Option<i64> {
    let mut it = date.split_ascii_whitespace();
    let (_, day, month, year, time, zone) = (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    if zone != "GMT" || it.next().is_some() {
        return None;
    }
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let number = |s: &str, digits: std::ops::RangeInclusive<usize>| {
        (digits.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<i64>().ok()).flatten()
    };
    let (day, year) = (number(day, 1..=2)?, number(year, 4..=4)?);
    let mut hms = time.split(':');
    let (h, m, sec) = (number(hms.next()?, 2..=2)?, number(hms.next()?, 2..=2)?, number(hms.next()?, 2..=2)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if hms.next().is_some() || !(1..=days_in_month).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from 1970-01-01 to year-month-day (proleptic Gregorian, March-based years).
    let (y, mp) = if month > 2 { (year, month - 3) } else { (year - 1, month + 9) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
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
    match error {
        Some("invalid_client") => {
            let assertion = record.assertion.as_ref().and_then(Sent::decode);
            let aud = assertion.as_ref().and_then(|a| a.claim("aud")).map(|v| v.to_string());
            if let (Some(kid), Some(_)) = (&record.actions.kid, &assertion) {
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
            if let Some(proof) = record.proof.as_ref().and_then(Sent::decode) {
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
        if let Some(jwt) = jwt.as_ref().and_then(Sent::decode) {
            let _ =
                writeln!(out, "  {label}: header {} claims {}", Value::Object(jwt.header), Value::Object(jwt.claims));
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
        let sent = Sent::of(&token);
        let jwt = sent.decode().unwrap();
        assert_eq!(jwt.claims["ath"], "present");
        assert_eq!(jwt.claims["nonce"], "present");
        assert_eq!(jwt.header["typ"], "dpop+jwt");
        let shown = serde_json::to_value(&sent).unwrap();
        assert_eq!(shown["claims"]["htu"], "https://as/token");
        assert!(!shown.to_string().contains("SIGNATURE"));
        let debug = format!("{sent:?}");
        assert!(!debug.contains("SIGNATURE") && !debug.contains("n-1") && !debug.contains("abc"), "{debug}");
        assert!(debug.contains("dpop+jwt") && debug.contains("present"), "{debug}");
        assert_eq!(serde_json::to_value(Sent::of("garbage")).unwrap(), Value::Null);
    }

    #[test]
    fn answers_read_like_json_values() {
        // What `Answer` shows must be what a full JSON parse would show (`Value::as_str` per
        // member, the last of a repeated member, nothing from a non-object).
        let cases: [&[u8]; 11] = [
            br#"{"error":"invalid_client","error_description":"bad \"aud\"","x":[1,{"error":"no"}]}"#,
            br#"{"access_token":"t","token_type":"Bearer","expires_in":60}"#,
            br#"{"access_token":null,"token_type":"DPoP"}"#,
            br#"{"error":1,"token_type":null,"error_description":{"a":"b"}}"#,
            br#"{"error":"first","error":"second"}"#,
            br#"["invalid_client","x"]"#,
            br#""invalid_client""#,
            br#"{"error":"invalid_client"} trailing"#,
            br#"{"error":"\u00e9t\u00e9"}"#,
            b"not json",
            br#"{"token_type":"DPoP","access_token":[1,2,3.5e10,true,false,null]}"#,
        ];
        for body in cases {
            let answer = Answer::read(&http::HeaderMap::new(), Some(body), std::time::SystemTime::now());
            let value = serde_json::from_slice::<Value>(body).ok();
            let text =
                |name: &str| value.as_ref().and_then(|v| v.get(name)).and_then(Value::as_str).map(str::to_string);
            let shown = String::from_utf8_lossy(body);
            assert_eq!(answer.error, text("error"), "{shown}");
            assert_eq!(answer.error_description, text("error_description"), "{shown}");
            assert_eq!(answer.token_type, text("token_type"), "{shown}");
            assert_eq!(answer.access_token, value.as_ref().is_some_and(|v| v.get("access_token").is_some()), "{shown}");
        }
    }

    #[test]
    fn dates_give_the_skew() {
        let now = humantime::parse_rfc3339("1994-11-06T08:49:00Z").unwrap();
        assert_eq!(httpdate_skew("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(37));
        assert_eq!(httpdate_skew("garbage", now), None);
        // Against an independent clock: humantime's RFC 3339 parser.
        for (http, rfc) in [
            ("Thu, 01 Jan 1970 00:00:00 GMT", "1970-01-01T00:00:00Z"),
            ("Tue, 29 Feb 2000 23:59:59 GMT", "2000-02-29T23:59:59Z"),
            ("Sun, 06 Dec 2026 02:30:00 GMT", "2026-12-06T02:30:00Z"),
            ("Fri, 31 Dec 2038 12:00:01 GMT", "2038-12-31T12:00:01Z"),
        ] {
            let t = humantime::parse_rfc3339(rfc).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap();
            assert_eq!(httpdate_unix(http), Some(t.as_secs() as i64), "{http}");
        }
        for bad in [
            "Sun, 29 Feb 2026 00:00:00 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sunday, 06-Nov-94 08:49:37 GMT",
        ] {
            assert_eq!(httpdate_unix(bad), None, "{bad}");
        }
    }

    #[test]
    fn invalid_client_hints_name_the_kid_the_aud_and_the_jwks_command() {
        let mut record = Record::default();
        record.actions.kid = Some("kid-1".into());
        record.actions.auth = Some("private_key_jwt");
        use base64::Engine as _;
        let enc = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let token = format!(
            "{}.{}.sig",
            enc(serde_json::json!({"alg": "ES256"})),
            enc(serde_json::json!({"aud": "https://as/token"}))
        );
        record.assertion = Some(Sent::of(&token));
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
