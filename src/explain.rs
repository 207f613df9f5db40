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

use crate::error::{ProxyError, RefusalKind};
use crate::upstream::{RouteUrls, UpstreamError};

/// Why tokenrelay answered itself: the error as it was raised, kept typed so that hints
/// follow its variant. Shown as `"refused": text, "refused_kind": kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub ProxyError);

impl Refusal {
    pub fn kind(&self) -> RefusalKind {
        self.0.kind()
    }
}

impl Serialize for Refusal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("refused", &self.0.to_string())?;
        map.serialize_entry("refused_kind", &self.kind())?;
        map.end()
    }
}

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
    /// Why tokenrelay answered itself instead of relaying: the typed error, shown as
    /// `refused` (its text) and `refused_kind` (see [`RefusalKind`]).
    #[serde(flatten)]
    pub refused: Option<Refusal>,
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
    /// The AS's `WWW-Authenticate` challenge (RFC 6750 §3, RFC 9449 §7.1), when it sent one;
    /// its `error` and `error_description` fill the two above when the body has none.
    pub www_authenticate: Option<String>,
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
        let www_authenticate =
            headers.get(http::header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let challenge = |name| www_authenticate.as_deref().and_then(|h| auth_param(h, name));
        let error = fields.error.or_else(|| challenge("error"));
        let error_description = match &fields.error_description {
            Some(_) => fields.error_description,
            None => challenge("error_description"),
        };
        Answer {
            error,
            // Descriptions are the AS's own words about the request; they carry no credential.
            error_description,
            www_authenticate,
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

/// `Sun, 06 Nov 1994 08:49:37 GMT` -> seconds since 1970: any of the three HTTP-date
/// formats a recipient must accept (RFC 9110 §5.6.7), by the `httpdate` crate.
fn httpdate_unix(date: &str) -> Option<i64> {
    let t = httpdate::parse_http_date(date).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64)
}

/// One `auth-param` of a `WWW-Authenticate` challenge (RFC 9110 §11.2): `name=token` or
/// `name="quoted string"`, the name compared case-insensitively.
fn auth_param(header: &str, name: &str) -> Option<String> {
    let mut rest = header;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return None;
        }
        let key_end = rest.find(['=', ' ', '\t', ',']).unwrap_or(rest.len());
        let key = &rest[..key_end];
        rest = rest[key_end..].trim_start_matches([' ', '\t']);
        // An auth-scheme or a token68 word has no `=` after it: move on.
        let Some(after) = rest.strip_prefix('=') else { continue };
        let after = after.trim_start_matches([' ', '\t']);
        let (value, tail) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut out = String::new();
                let mut end = None;
                let mut chars = quoted.char_indices();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => out.extend(chars.next().map(|(_, n)| n)),
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => out.push(c),
                    }
                }
                (out, &quoted[end?..])
            }
            None => {
                let end = after.find([',', ' ', '\t']).unwrap_or(after.len());
                (after[..end].to_string(), &after[end..])
            }
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(value);
        }
        rest = tail;
    }
}

/// What the hints need to know about the route beyond the record.
#[derive(Debug, Clone, Default)]
pub struct RouteFacts {
    pub name: String,
    pub client_id: Option<String>,
    pub issuer: Option<String>,
    pub token_endpoint: String,
    /// The fields that spell the AS's URLs (`upstream`, `issuer`, `trust`).
    pub urls: RouteUrls,
}

/// A cause the evidence can name. Declared most specific first: when the AS's words name
/// several, the hints come in this order (an expired *code* is about the code, not the
/// clock; a certificate "used to sign the client assertion" is about the signing key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Topic {
    Origin,
    Pkce,
    RedirectUri,
    DpopHtu,
    DpopHtm,
    DpopAth,
    DpopNonce,
    DpopBinding,
    Replay,
    Audience,
    Alg,
    AuthMethod,
    Secret,
    Key,
    GrantType,
    Grant,
    Clock,
    Certificate,
    Client,
    Scope,
}

/// Words and phrases (whole words, after lower-casing and with URLs and punctuation taken
/// out) that name each [`Topic`].
const WORDS: &[(Topic, &[&str])] = &[
    (Topic::Origin, &["cross origin", "origin"]),
    (Topic::Pkce, &["code_verifier", "code verifier", "code_challenge", "code challenge", "pkce"]),
    (
        Topic::RedirectUri,
        &["redirect_uri", "redirect uri", "redirect uris", "redirection uri", "reply address", "reply url"],
    ),
    (Topic::DpopHtu, &["htu"]),
    (Topic::DpopHtm, &["htm"]),
    (Topic::DpopAth, &["ath"]),
    (Topic::DpopNonce, &["dpop nonce", "nonce"]),
    (Topic::DpopBinding, &["key binding", "jkt", "dpop key"]),
    (Topic::Replay, &["replay", "reuse", "reused", "jti", "only be used once", "already used"]),
    (Topic::Audience, &["aud", "audience"]),
    (Topic::Alg, &["alg", "algorithm", "algorithms"]),
    (
        Topic::AuthMethod,
        &["authentication method", "auth method", "token_endpoint_auth_method", "is public", "public client"],
    ),
    (Topic::Secret, &["client_secret", "client secret", "secret"]),
    (Topic::Key, &["kid", "signature", "key", "keys", "jwks", "jwk", "thumbprint", "sign"]),
    (Topic::GrantType, &["grant type", "grant_type", "grant types", "unsupported grant"]),
    (Topic::Grant, &["authorization code", "refresh token", "refresh_token", "code", "grant", "redeemed"]),
    (
        Topic::Clock,
        &[
            "expired",
            "expire",
            "expires",
            "expiration",
            "expiry",
            "not active",
            "not yet valid",
            "future",
            "past",
            "iat",
            "exp",
            "nbf",
            "clock",
            "time range",
            "recent",
            "skew",
            "too far",
        ],
    ),
    (Topic::Certificate, &["certificate", "mtls", "tls", "x5t", "client certificate"]),
    (
        Topic::Client,
        &[
            "client_id",
            "client id",
            "unknown client",
            "client not found",
            "application with identifier",
            "jwt issuer",
            "iss",
            "sub",
        ],
    ),
    (Topic::Scope, &["scope", "scopes"]),
];

/// Entra's `AADSTS` codes whose cause is known (Microsoft Entra error code reference).
const AADSTS: &[(&str, Topic)] = &[
    ("AADSTS700027", Topic::Key),
    ("AADSTS50012", Topic::Key),
    ("AADSTS7000215", Topic::Secret),
    ("AADSTS7000222", Topic::Secret),
    ("AADSTS70002", Topic::Secret),
    ("AADSTS70011", Topic::Scope),
    ("AADSTS700016", Topic::Client),
    ("AADSTS700011", Topic::Client),
    ("AADSTS90023", Topic::Origin),
    ("AADSTS9002326", Topic::Origin),
    ("AADSTS700024", Topic::Clock),
    ("AADSTS50148", Topic::Pkce),
    ("AADSTS501481", Topic::Pkce),
    ("AADSTS50011", Topic::RedirectUri),
    ("AADSTS700025", Topic::AuthMethod),
    ("AADSTS54005", Topic::Grant),
    ("AADSTS70008", Topic::Grant),
    ("AADSTS700082", Topic::Grant),
    ("AADSTS70003", Topic::GrantType),
    ("AADSTS700030", Topic::Certificate),
];

/// The causes an AS's `error_description` (or challenge) names, most specific first.
pub fn topics_named(text: &str) -> Vec<Topic> {
    let mut out: Vec<Topic> = Vec::new();
    // Entra states its cause as a code; the code wins over the words around it.
    for word in text.split(|c: char| !c.is_ascii_alphanumeric()) {
        if let Some((_, topic)) = AADSTS.iter().find(|(code, _)| *code == word) {
            out.push(*topic);
        }
    }
    let mut words = String::from(" ");
    for part in text.split_whitespace().filter(|w| !w.contains("://")) {
        for word in part.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| !w.is_empty()) {
            words.push_str(&word.to_ascii_lowercase());
            words.push(' ');
        }
    }
    let dpop = words.contains(" dpop ");
    // WORDS is in rank order, so what the words name comes most specific first.
    for (topic, phrases) in WORDS {
        if *topic == Topic::DpopNonce && !dpop {
            continue;
        }
        if phrases.iter().any(|p| words.contains(&format!(" {p} "))) && !out.contains(topic) {
            out.push(*topic);
        }
    }
    out
}

/// Everything a hint may draw on: the record, the route, and what the AS said.
struct Evidence<'a> {
    record: &'a Record,
    route: Option<&'a RouteFacts>,
    name: &'a str,
    error: Option<&'a str>,
    description: &'a str,
    assertion: Option<Jwt>,
    proof: Option<Jwt>,
    skew: Option<i64>,
}

impl Evidence<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.record.request.params.iter().find(|p| p.name == name).and_then(|p| p.value.as_deref())
    }

    /// The URLs the AS's words quote, as written.
    fn urls_named(&self) -> Vec<&str> {
        self.description
            .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '(' | ')' | '[' | ']'))
            .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
            .map(|w| w.trim_end_matches(['.', ';']))
            .collect()
    }

    /// Whether the AS's words are about the DPoP proof rather than the client assertion.
    fn about_proof(&self) -> bool {
        self.description.to_ascii_lowercase().contains("dpop") || self.error == Some("invalid_dpop_proof")
    }
}

/// The hint for `topic`; `named` when the AS's words name it (a hint may then be given
/// without the record's own evidence for it).
fn hint_for(topic: Topic, ev: &Evidence, named: bool) -> Option<String> {
    let name = ev.name;
    let client = ev.route.and_then(|r| r.client_id.as_deref());
    let auth = ev.record.actions.auth.unwrap_or("this auth method");
    let claim = |jwt: &Option<Jwt>, c: &str| jwt.as_ref().and_then(|j| j.claim(c)).map(Value::to_string);
    Some(match topic {
        Topic::Origin => format!(
            "the AS refused the browser's Origin on this token request: a confidential client redeems codes from a server \
             (Entra allows cross-origin redemption for Single-Page Application clients only); let the app's backend call \
             tokenrelay, or use routes.{name}.client.auth = \"none\" for a SPA client"
        ),
        Topic::Pkce => "the code_verifier does not match the code_challenge of the authorization request: the app must send \
                        the verifier it made for this very code (tokenrelay passes code_verifier through unchanged)"
            .into(),
        Topic::RedirectUri => format!(
            "redirect_uri must be exactly the one the app sent to /authorize{}, and registered for the client (scheme, host, \
             port and path all count)",
            ev.param("redirect_uri").map(|r| format!(" (this request sent {r:?})")).unwrap_or_default()
        ),
        Topic::DpopHtu => match claim(&ev.proof, "htu") {
            Some(htu) => format!("the proof's htu was {htu}: it must be the URL the AS sees for this endpoint"),
            None if named => format!(
                "the DPoP proof's htu must be the URL the AS sees for this endpoint: check routes.{name}.upstream"
            ),
            None => return None,
        },
        Topic::DpopHtm => format!(
            "the proof's htm was {}: it must be the method of the request it is sent with",
            claim(&ev.proof, "htm").unwrap_or_else(|| "(none)".into())
        ),
        Topic::DpopAth => "the proof's ath must be the hash of the access token sent with it: the app must send that token \
                           to tokenrelay unchanged, in `Authorization: DPoP` (or Bearer with dpop.upgrade_bearer)"
            .into(),
        Topic::DpopNonce => {
            let proof = ev.proof.as_ref()?;
            let nonce = if proof.claims.contains_key("nonce") { "present" } else { "absent" };
            format!("the proof's nonce was {nonce}: the AS wants the one from its latest DPoP-Nonce header")
        }
        Topic::DpopBinding => format!(
            "the token or the proof is bound to another DPoP key: tokens issued for routes.{name}.dpop.key need proofs \
             from that same key (keep the key file; after changing it, get new tokens)"
        ),
        Topic::Replay => {
            let what = if ev.about_proof() { "DPoP proof" } else { "client assertion" };
            format!(
                "the AS saw this {what}'s jti before: tokenrelay signs a new jti for every attempt, so something else sends \
                 {what}s for this client with the same jti (another tokenrelay, the app itself), or the AS's replay cache \
                 spans clients"
            )
        }
        Topic::Audience => {
            let aud = claim(&ev.assertion, "aud");
            if aud.is_none() && !named {
                return None;
            }
            let alternatives = ev
                .route
                .map(|r| {
                    let mut alt = Vec::new();
                    if let Some(i) = &r.issuer {
                        alt.push(format!("the issuer {i:?}"));
                    }
                    alt.push(format!("the token endpoint {:?}", r.token_endpoint));
                    format!(" ({})", alt.join(" or "))
                })
                .unwrap_or_default();
            let mut hint = format!(
                "does the AS expect another aud? it got {}; try routes.{name}.client.audience = \"issuer\", \
                 \"token_endpoint\" or \"endpoint\"{alternatives}",
                aud.as_deref().unwrap_or("(no assertion)")
            );
            let sent = aud.as_deref().map(|a| a.trim_matches('"')).unwrap_or_default();
            let named_urls: Vec<&str> = ev.urls_named().into_iter().filter(|u| *u != sent).collect();
            if !named_urls.is_empty() {
                hint.push_str(&format!("; the AS names {}", named_urls.join(" and ")));
            }
            // The AS names its issuer on another scheme: every field spelling it changes.
            if let Some(route) = ev.route {
                let changes = route.urls.https_changes(sent);
                let moved = sent
                    .strip_prefix("http://")
                    .is_some_and(|rest| named_urls.iter().any(|u| u.strip_prefix("https://") == Some(rest)));
                if moved && !changes.is_empty() {
                    hint.push_str(&format!(
                        "; it serves https://: change {} together",
                        crate::upstream::https_advice(&route.name, &changes, crate::upstream::trust_value(route.urls.trust))
                    ));
                }
            }
            hint
        }
        Topic::Alg => {
            let (jwt, field) =
                if ev.about_proof() { (&ev.proof, "dpop.alg") } else { (&ev.assertion, "client.alg") };
            let alg = jwt.as_ref().and_then(|j| j.header.get("alg")).map(Value::to_string);
            format!(
                "the AS does not accept the alg {} for this client: set routes.{name}.{field} to one it allows (with a key \
                 of that type, registered at the AS)",
                alg.unwrap_or_else(|| "sent".into())
            )
        }
        Topic::AuthMethod => format!(
            "the client is registered for another authentication method than {auth}: set routes.{name}.client.auth to \
             the registered one (a public client sends neither secret nor assertion: auth = \"none\")"
        ),
        Topic::Secret => format!(
            "the client secret is wrong, expired or another client's: set routes.{name}.client.secret to its current value \
             (Entra: the secret's Value, not its ID)"
        ),
        Topic::Key => match (&ev.record.actions.kid, &ev.assertion) {
            (Some(kid), Some(_)) => format!(
                "is kid {kid} registered at the AS for this client? `tokenrelay jwks --route {name}` prints the public key to register"
            ),
            (None, Some(_)) => format!(
                "the AS could not verify the assertion's signature with the key it has for this client: register the key \
                 of routes.{name}.client.key (`tokenrelay jwks --route {name}` prints it)"
            ),
            _ if named => format!(
                "the AS could not verify the signature with the key registered for this client: `tokenrelay jwks --route {name}` \
                 prints the public key to register"
            ),
            _ => return None,
        },
        Topic::GrantType => {
            let grant = ev.param("grant_type").unwrap_or("(none sent)");
            if ev.error == Some("unsupported_grant_type") {
                format!("the AS does not support the grant_type {grant} at this endpoint (check its grant_types_supported)")
            } else {
                format!(
                    "the AS does not allow this client the grant_type {grant}; enable it in the client's registration"
                )
            }
        }
        Topic::Grant => "the code or refresh token is expired, already used, issued to another client, or bound to another \
                         DPoP key / certificate"
            .into(),
        Topic::Clock => {
            let what = if ev.about_proof() { "DPoP proof's" } else { "client assertion's" };
            let clock = match ev.skew {
                Some(skew) => format!("this machine's clock differs from the AS's by {skew} s (its Date header)"),
                None => "check this machine's clock against the AS's: ASes allow only seconds to minutes of skew".into(),
            };
            format!("the {what} time claims (iat, exp) were refused: {clock}")
        }
        Topic::Certificate => format!(
            "the AS did not accept the client certificate: check routes.{name}.mtls (certificate and key) and what is \
             registered for the client (tls_client_auth_subject_dn, or the certificate's JWK for self_signed_tls_client_auth)"
        ),
        Topic::Client => match client {
            Some(id) => format!("is client_id {id:?} right, and registered at this AS (tenant, realm) for {auth}?"),
            None => format!("is routes.{name}.client.id right, and registered at this AS (tenant, realm)?"),
        },
        Topic::Scope => format!(
            "a requested scope is unknown or not allowed for this client{}",
            ev.param("scope").map(|s| format!(" (the request asked for {s:?})")).unwrap_or_default()
        ),
    })
}

/// What to check when the AS's words name nothing, by its `error` code (RFC 6749 §5.2,
/// RFC 9449 §5, §7.1) and what was sent.
fn defaults(ev: &Evidence) -> Vec<Topic> {
    match ev.error {
        Some("invalid_client") => match ev.record.actions.auth {
            Some("client_secret_basic" | "client_secret_post") => vec![Topic::Secret, Topic::Client],
            Some("tls_client_auth" | "self_signed_tls_client_auth") => vec![Topic::Certificate, Topic::Client],
            _ => vec![Topic::Key, Topic::Audience, Topic::Client],
        },
        Some("invalid_dpop_proof") => vec![Topic::DpopHtu, Topic::DpopNonce],
        Some("invalid_grant") => vec![Topic::Grant],
        Some("unauthorized_client" | "unsupported_grant_type") => vec![Topic::GrantType],
        Some("invalid_scope") => vec![Topic::Scope],
        Some("invalid_token") if ev.proof.is_some() => vec![Topic::DpopBinding],
        _ => Vec::new(),
    }
}

/// What to check when tokenrelay refused itself, by the error's variant.
fn refusal_hint(refusal: &ProxyError) -> Option<String> {
    Some(match refusal {
        ProxyError::Upstream(e) => match e {
            UpstreamError::Untrusted { route, .. } => format!("add the AS's CA certificate (PEM) to routes.{route}.trust"),
            UpstreamError::WrongName { url, route, .. } => format!(
                "the AS's certificate is not for the host of {url}: use the host name it was issued for in \
                 routes.{route}.upstream (and routes.{route}.issuer when it names the same host), or give the AS a \
                 certificate for this name"
            ),
            UpstreamError::ClientCertRefused { route, .. } => format!(
                "the AS wanted a client certificate it accepts: check routes.{route}.mtls and what the AS trusts"
            ),
            UpstreamError::Refused { url, route } => format!(
                "nothing accepts connections for {url}: start the AS, or correct the host and port in routes.{route}.upstream"
            ),
            UpstreamError::NotHttp { route, changes, trust, .. } => {
                let trust = crate::upstream::trust_value(*trust);
                if changes.is_empty() {
                    format!("the AS speaks TLS on this port: use its https:// URL, and routes.{route}.trust for its CA")
                } else {
                    format!(
                        "the AS speaks TLS on this port: change {} together",
                        crate::upstream::https_advice(route, changes, trust)
                    )
                }
            }
            UpstreamError::Unreadable { .. } | UpstreamError::Other { .. } => return None,
        },
        ProxyError::Timeout { route, after, .. } => format!(
            "the AS did not answer within {}: check that it is up and reachable, or raise routes.{route}.timeout",
            humantime::format_duration(*after)
        ),
        ProxyError::Discovery { route, error } => match &**error {
            crate::discovery::DiscoveryError::IssuerMismatch { found, configured, .. } => {
                let mut hint =
                    format!("set routes.{route}.issuer = {found:?}, exactly as the AS publishes it (RFC 8414 §3.3)");
                let origin = |u: &str| url::Url::parse(u).ok().map(|u| u.origin().ascii_serialization());
                if origin(found) != origin(configured) {
                    hint.push_str(&format!(
                        "; its origin differs from the configured one, so routes.{route}.upstream (and routes.{route}.trust \
                         for an https:// AS) change with it"
                    ));
                }
                hint
            }
            _ => return None,
        },
        ProxyError::MetadataUnavailable { route } => format!(
            "the AS's metadata could not be fetched for routes.{route}.issuer: `tokenrelay check` shows why"
        ),
        ProxyError::Unbound { route, .. } => format!(
            "the AS issued a token that is not DPoP-bound: enable DPoP-bound tokens for this client at the AS, or set \
             routes.{route}.dpop.require_bound = false to accept Bearer tokens"
        ),
        _ => return None,
    })
}

/// The hints for one exchange, most likely first: what the AS's words name (its
/// `error_description`, or the `WWW-Authenticate` challenge), then what its `error` code
/// and the request suggest, then tokenrelay's own refusal, an upstream 404 and clock skew.
pub fn hints(record: &Record, route: Option<&RouteFacts>) -> Vec<String> {
    let name = route.map_or("NAME", |r| r.name.as_str());
    let answer = record.answer.as_ref();
    let mut error = answer.and_then(|a| a.error.as_deref());
    // A 401 without an error code, to a request tokenrelay authenticated, is a client refusal.
    if error.is_none() && record.actions.auth.is_some() && record.attempts.last().and_then(|a| a.status) == Some(401) {
        error = Some("invalid_client");
    }
    let ev = Evidence {
        record,
        route,
        name,
        error,
        description: answer.and_then(|a| a.error_description.as_deref()).unwrap_or_default(),
        assertion: record.assertion.as_ref().and_then(Sent::decode),
        proof: record.proof.as_ref().and_then(Sent::decode),
        skew: answer.and_then(|a| a.clock_skew_s),
    };
    let mut out: Vec<String> = Vec::new();
    fn push(hint: Option<String>, out: &mut Vec<String>) {
        if let Some(h) = hint.filter(|h| !out.contains(h)) {
            out.push(h);
        }
    }
    let named = topics_named(ev.description);
    for topic in &named {
        push(hint_for(*topic, &ev, true), &mut out);
    }
    if error == Some("use_dpop_nonce") {
        push(Some("the AS kept asking for a new DPoP nonce after the retry with the one it sent".into()), &mut out);
    }
    for topic in defaults(&ev).into_iter().filter(|t| !named.contains(t)) {
        push(hint_for(topic, &ev, false), &mut out);
    }
    if error == Some("invalid_dpop_proof") {
        if let (Some(skew), Some(_)) = (ev.skew, ev.proof.as_ref().and_then(|p| p.claim("iat"))) {
            push(Some(format!("iat vs the AS's Date: the clocks differ by {skew} s")), &mut out);
        }
    }
    if let Some(refusal) = &record.refused {
        push(refusal_hint(&refusal.0), &mut out);
    }
    if record.attempts.last().and_then(|a| a.status) == Some(404) {
        push(
            Some(format!(
                "the AS has no {}: check the endpoint path (routes.{name}.upstream, endpoints) and the route prefix",
                record.attempts.last().map(|a| a.url.as_str()).unwrap_or("such path")
            )),
            &mut out,
        );
    }
    let clock_named = named.contains(&Topic::Clock);
    if let Some(skew) = ev.skew.filter(|s| s.abs() > SKEW_WARNING_S && !clock_named) {
        push(
            Some(format!(
                "this machine's clock differs from the AS's by {skew} s: assertions and proofs may be rejected as not yet valid or expired"
            )),
            &mut out,
        );
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
        let _ = writeln!(out, "  tokenrelay: {}", refused.0);
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
            "Mon, 06 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(httpdate_unix(bad), None, "{bad}");
        }
        // The obsolete forms a recipient must still accept (RFC 9110 §5.6.7).
        let imf = httpdate_unix("Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(httpdate_unix("Sunday, 06-Nov-94 08:49:37 GMT"), imf);
        assert_eq!(httpdate_unix("Sun Nov  6 08:49:37 1994"), imf);
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
            ..Default::default()
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

    /// A private_key_jwt + DPoP exchange the AS refused with `error` and `description`.
    fn refused_by_as(error: &str, description: &str) -> (Record, RouteFacts) {
        use base64::Engine as _;
        let enc = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let jwt = |h: serde_json::Value, c: serde_json::Value| Sent::of(&format!("{}.{}.sig", enc(h), enc(c)));
        let mut record = Record::default();
        record.actions.kid = Some("kid-1".into());
        record.actions.auth = Some("private_key_jwt");
        record.assertion = Some(jwt(
            serde_json::json!({"alg": "ES256", "kid": "kid-1"}),
            serde_json::json!({"aud": "https://as.example/token", "iss": "app", "sub": "app", "iat": 1, "exp": 61}),
        ));
        record.proof = Some(jwt(
            serde_json::json!({"typ": "dpop+jwt", "alg": "ES256"}),
            serde_json::json!({"htu": "https://as.example/token", "htm": "POST", "iat": 1}),
        ));
        record.request.params = vec![Param { name: "grant_type".into(), value: Some("client_credentials".into()) }];
        record.answer = Some(Answer {
            error: Some(error.into()),
            error_description: Some(description.into()),
            ..Default::default()
        });
        let facts = RouteFacts {
            name: "as".into(),
            client_id: Some("app".into()),
            issuer: Some("https://as.example".into()),
            token_endpoint: "https://as.example/token".into(),
            ..Default::default()
        };
        (record, facts)
    }

    /// Real `error_description` texts from ASes: the first hint is the one the text names.
    /// Sources, per line: oidc-provider `lib/shared/jwt_client_auth.js` and
    /// `lib/helpers/validate_dpop.js`; Keycloak `AbstractBaseJWTValidator.java`,
    /// `JWTClientValidator.java`, `JWTClientAuthenticator.java` (wrapping its messages in
    /// "Client authentication with signed JWT failed: ...") and its code-to-token answer; Entra
    /// texts as its error-code reference (learn.microsoft.com, "reference-error-codes") and
    /// the answers quoted in public issues print them; Okta's support articles; Auth0's
    /// community answers and grant-type docs; RFC 9449 §7.1's example; tokenrelay's demo AS.
    #[test]
    fn the_first_hint_is_the_one_the_as_names() {
        let table: &[(&str, &str, &str, &str)] = &[
            // oidc-provider, lib/shared/jwt_client_auth.js (`InvalidClientAuth`: its answer's description is
            // "client authentication failed"; these are its `error_detail`, what its events and logs show)
            ("invalid_client", "audience (aud) must equal the endpoint url, issuer identifier or token endpoint url", "client.audience", "oidc-provider"),
            ("invalid_client", "client assertion tokens must only be used once", "jti before", "oidc-provider"),
            ("invalid_client", "alg mismatch", "does not accept the alg", "oidc-provider"),
            ("invalid_client", "iss (JWT issuer) must be the client_id", "is client_id", "oidc-provider"),
            // oidc-provider, lib/helpers/validate_dpop.js (`InvalidDpopProof` descriptions) and its
            // token grants (the replay one is an `InvalidGrant` detail)
            ("invalid_dpop_proof", "DPoP proof htu mismatch", "htu was", "oidc-provider"),
            ("invalid_dpop_proof", "DPoP proof iat is not recent enough", "time claims", "oidc-provider"),
            ("invalid_dpop_proof", "invalid DPoP key binding", "bound to another DPoP key", "oidc-provider"),
            ("invalid_grant", "DPoP proof JWT Replay detected", "DPoP proof's jti before", "oidc-provider"),
            // Keycloak
            ("invalid_client", "Client authentication with signed JWT failed: Invalid token audience", "client.audience", "Keycloak AbstractBaseJWTValidator"),
            ("invalid_client", "Client authentication with signed JWT failed: Token reuse detected", "jti before", "Keycloak JWTClientValidator"),
            ("invalid_client", "Client authentication with signed JWT failed: Token is not active", "time claims", "Keycloak JWTClientValidator"),
            ("invalid_client", "Client authentication with signed JWT failed: Token was issued in the future", "time claims", "Keycloak AbstractBaseJWTValidator"),
            ("invalid_client", "Invalid signature algorithm", "does not accept the alg", "Keycloak AbstractBaseJWTValidator"),
            ("invalid_client", "Client authentication with signed JWT failed: Signature on JWT token failed validation", "is kid", "Keycloak JWTClientAuthenticator"),
            ("invalid_grant", "Incorrect redirect_uri", "redirect_uri must be", "Keycloak code-to-token answer, as quoted in public issues"),
            // Entra (AADSTS codes)
            ("invalid_client", "AADSTS700027: The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '8b76b6d9-4732-4558-a4b5-40d5ff2ed6ef'. Review the documentation at https://docs.microsoft.com/en-us/graph/deployments to determine the corresponding service endpoint and https://docs.microsoft.com/en-us/graph/api/application-get?view=graph-rest-1.0&tabs=http to build a query request URL, such as '[https://graph.microsoft.com/beta/applications/8b76b6d9-4732-4558-a4b5-40d5ff2ed6ef']]. Trace ID: 40dccc8c-276d-4927-b6e0-583bf24f9000 Correlation ID: 55f49a48-adab-4470-b42d-f100f63bc15d Timestamp: 2026-06-09 14:01:21Z", "is kid", "Entra AADSTS700027 (Microsoft Q&A)"),
            ("invalid_client", "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '00000000-0000-0000-0000-000000000000'.", "client.secret", "Entra AADSTS7000215"),
            ("invalid_scope", "AADSTS70011: The provided value for the input parameter 'scope' isn't valid. The scope https://example.contoso.com/activity.read isn't valid.\r\nTrace ID: 0000aaaa-11bb-cccc-dd22-eeeeee333333\r\nCorrelation ID: aaaa0000-bb11-2222-33cc-444444dddddd\r\nTimestamp: 2016-01-09 02:02:12Z", "scope is unknown", "Entra error-code reference"),
            ("unauthorized_client", "AADSTS700016: Application with identifier '160c5842-eeba-487b-bb30-be9fae7878d0' was not found in the directory '1cdf1d7c-ca85-45c7-b1a6-0d197aa07dc5'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", "is client_id", "Entra AADSTS700016"),
            ("invalid_request", "AADSTS90023: Cross-origin token redemption is permitted only for the 'Single-Page Application' client-type.\r\nTrace ID: 453b0c3d-1fe6-4b38-ab32-b28f87451a01", "Origin", "Entra AADSTS90023"),
            ("invalid_request", "AADSTS9002326: Cross-origin token redemption is permitted only for the 'Single-Page Application' client-type. Request origin: 'http://localhost:3000'.", "Origin", "Entra AADSTS9002326"),
            ("invalid_client", "AADSTS700024: Client assertion is not within its valid time range.", "time claims", "Entra AADSTS700024"),
            ("invalid_grant", "AADSTS501481: The Code_Verifier doesn't match the code_challenge supplied in the authorization request.", "code_verifier does not match", "Entra error-code reference"),
            ("invalid_request", "AADSTS50011: The redirect URI 'http://localhost:3000/callback' specified in the request does not match the redirect URIs configured for the application 'a1b2'.", "redirect_uri must be", "Entra AADSTS50011"),
            ("invalid_client", "AADSTS700025: Client is public so neither 'client_assertion' nor 'client_secret' should be presented.", "client.auth to", "Entra error-code reference"),
            ("invalid_grant", "AADSTS54005: OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.", "code or refresh token", "Entra error-code reference"),
            ("invalid_grant", "AADSTS70008: The refresh token has expired due to inactivity. The token was issued on 2026-01-01 and was inactive for 90.00:00:00.", "code or refresh token", "Entra error-code reference"),
            // Okta support articles
            ("invalid_client", "The client_assertion JWT kid is invalid.", "is kid", "Okta"),
            ("invalid_client", "The audience claim for client_assertion must be the endpoint invoked for the request.", "client.audience", "Okta"),
            ("invalid_client", "The client_assertion signature is invalid.", "is kid", "Okta"),
            // Auth0
            ("invalid_grant", "Invalid authorization code", "code or refresh token", "Auth0 community"),
            ("unauthorized_client", "Grant type 'client_credentials' not allowed for the client.", "grant_type client_credentials", "Auth0 docs"),
            // tokenrelay's demo AS (src/demo_as/verify.rs)
            ("invalid_client", "assertion aud \"https://wrong.example/token\" is neither the issuer \"http://127.0.0.1:9443\" nor the token endpoint \"http://127.0.0.1:9443/token\"", "client.audience", "demo AS"),
        ];
        assert!(table.len() >= 20);
        for (error, description, expected, source) in table {
            let (record, facts) = refused_by_as(error, description);
            let hints = hints(&record, Some(&facts));
            assert!(
                hints.first().is_some_and(|h| h.contains(expected)),
                "{source}: {description:?} should lead with {expected:?}, got {hints:#?}"
            );
        }
    }

    /// RFC 9449 §7.1's example: a resource server says it in `WWW-Authenticate` only.
    #[test]
    fn a_challenge_is_evidence_too() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static(
                "DPoP realm=\"WallyWorld\", error=\"invalid_token\", error_description=\"Invalid DPoP key binding\", algs=\"ES256\"",
            ),
        );
        let answer = Answer::read(&headers, None, std::time::SystemTime::now());
        assert_eq!(answer.error.as_deref(), Some("invalid_token"));
        assert_eq!(answer.error_description.as_deref(), Some("Invalid DPoP key binding"));
        let (mut record, facts) = refused_by_as("x", "y");
        record.answer = Some(answer);
        let hints = hints(&record, Some(&facts));
        assert!(hints[0].contains("bound to another DPoP key"), "{hints:#?}");
        assert_eq!(auth_param("Basic realm=\"as\", error=invalid_client", "error").as_deref(), Some("invalid_client"));
        assert_eq!(auth_param("Bearer realm=\"x error=no\"", "error"), None);
    }

    /// A refusal keeps its type to the record: `refused` text, `refused_kind`, and the hint
    /// chosen by the variant, naming every field a URL change touches.
    #[test]
    fn refusals_are_typed_in_the_record() {
        let urls = RouteUrls::new("demo", "http://127.0.0.1:9443".into(), Some("http://127.0.0.1:9443".into()), false);
        let error = ProxyError::Upstream(UpstreamError::NotHttp {
            url: "http://127.0.0.1:9443/token".into(),
            route: "demo".into(),
            changes: urls.https_changes("http://127.0.0.1:9443/token"),
            trust: false,
        });
        let record = Record { refused: Some(Refusal(error.clone())), status: 502, ..Default::default() };
        let shown = serde_json::to_value(&record).unwrap();
        assert_eq!(shown["refused"], error.to_string());
        assert_eq!(shown["refused_kind"], "upstream_not_http");
        let hints = hints(&record, None);
        for field in ["routes.demo.upstream", "routes.demo.issuer", "routes.demo.trust"] {
            assert!(hints[0].contains(field), "{field}: {hints:?}");
        }
        // An issuer mismatch on another origin: issuer, upstream and trust change together.
        let mismatch = ProxyError::Discovery {
            route: "demo".into(),
            error: std::sync::Arc::new(crate::discovery::DiscoveryError::IssuerMismatch {
                route: "demo".into(),
                url: "http://127.0.0.1:9443/.well-known/openid-configuration".into(),
                found: "https://127.0.0.1:9443".into(),
                configured: "http://127.0.0.1:9443".into(),
            }),
        };
        let record = Record { refused: Some(Refusal(mismatch)), status: 502, ..Default::default() };
        assert_eq!(serde_json::to_value(&record).unwrap()["refused_kind"], "issuer_mismatch");
        let shown = super::hints(&record, None);
        for field in ["routes.demo.issuer = \"https://127.0.0.1:9443\"", "routes.demo.upstream", "routes.demo.trust"] {
            assert!(shown[0].contains(field), "{field}: {shown:?}");
        }
        let none = serde_json::to_value(Record::default()).unwrap();
        assert!(none.get("refused").is_none() && none.get("refused_kind").is_none(), "{none}");
    }

    proptest::proptest! {
        /// Whatever an AS writes, reading it never panics, and a challenge's own `error`
        /// parameter is found wherever it stands.
        #[test]
        fn any_answer_text_is_read_without_panicking(
            text in "[ -~]{0,120}",
            params in "([a-z_]{1,8}=(\"[ !#-\\[\\]-~]{0,8}\"|[a-z0-9]{1,8}), ){0,3}",
            error in "[a-z_]{1,20}",
        ) {
            let (mut record, facts) = refused_by_as("invalid_client", &text);
            let _ = hints(&record, Some(&facts));
            let _ = topics_named(&text);
            let _ = auth_param(&text, "error");
            let header = format!("DPoP {params}error=\"{error}\", error_description=\"x\"");
            let found = auth_param(&header, "error");
            if !params.contains("error=") {
                proptest::prop_assert_eq!(found, Some(error.clone()));
            }
            record.answer = Some(Answer { error: None, error_description: None, ..Default::default() });
            let _ = hints(&record, None);
        }
    }
}
