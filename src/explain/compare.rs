//! Compare two exchanges (`GET /.tokenrelay/exchanges/{a}/diff/{b}`): what differs in the
//! config version, the app's request (params, header names), what tokenrelay did, the
//! upstream URL, the client assertion and DPoP proof (headers and claims, without the
//! per-signature `jti`, `iat`, `nbf` and `exp`, which always differ) and the AS's answer.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Record, Sent};

/// Claims that differ on every signature (RFC 7519 §4.1.4–4.1.7): never a difference worth
/// showing.
const PER_SIGNATURE: [&str; 4] = ["jti", "iat", "nbf", "exp"];

/// One field that differs; `null` on the side that does not have it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    /// A dotted path: `assertion.claims.aud`, `params.scope`, `upstream`, `answer.error`.
    pub field: String,
    pub a: Value,
    pub b: Value,
}

/// The fields of `a` and `b` that differ, in a stable order (a's fields first).
pub fn compare(a: &Record, b: &Record) -> Vec<Difference> {
    let (fa, fb) = (facts(a), facts(b));
    let mut out = Vec::new();
    for (field, va) in &fa {
        let vb = fb.iter().find(|(f, _)| f == field).map(|(_, v)| v.clone()).unwrap_or(Value::Null);
        if *va != vb {
            out.push(Difference { field: field.clone(), a: va.clone(), b: vb });
        }
    }
    for (field, vb) in &fb {
        if !fa.iter().any(|(f, _)| f == field) && !vb.is_null() {
            out.push(Difference { field: field.clone(), a: Value::Null, b: vb.clone() });
        }
    }
    out
}

/// Everything the comparison looks at, flattened to dotted names.
fn facts(r: &Record) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    let mut put = |name: &str, v: Value| out.push((name.to_string(), v));
    put("config_version", r.config_version.into());
    put("route", r.route.clone().into());
    put("request.method", r.request.method.clone().into());
    put("request.path", r.request.path.clone().into());
    put("request.query", r.request.query_names.clone().into());
    let mut headers = r.request.header_names.clone();
    headers.sort();
    put("request.headers", headers.into());
    for p in &r.request.params {
        put(&format!("params.{}", p.name), p.value.clone().map_or_else(|| "…".into(), Value::from));
    }
    put("actions.auth", r.actions.auth.into());
    put("actions.kid", r.actions.kid.clone().into());
    put("actions.params_changed", r.actions.params_changed.clone().into());
    put("actions.headers_set", r.actions.headers_set.clone().into());
    put("actions.headers_removed", r.actions.headers_removed.clone().into());
    put("actions.credentials_removed", r.actions.credentials_removed.clone().into());
    put("upstream", r.attempts.last().map(|a| a.url.clone()).into());
    put("attempts", r.attempts.len().into());
    for (label, sent) in [("assertion", &r.assertion), ("proof", &r.proof)] {
        let Some(jwt) = sent.as_ref().and_then(Sent::decode) else {
            put(label, Value::Null);
            continue;
        };
        flatten(&format!("{label}.header"), &jwt.header, &mut put);
        let claims: Map<String, Value> =
            jwt.claims.into_iter().filter(|(k, _)| !PER_SIGNATURE.contains(&k.as_str())).collect();
        flatten(&format!("{label}.claims"), &claims, &mut put);
    }
    put("status", r.status.into());
    let answer = r.answer.clone().unwrap_or_default();
    put("answer.error", answer.error.into());
    put("answer.error_description", answer.error_description.into());
    put("answer.token_type", answer.token_type.into());
    put("answer.dpop_nonce", answer.dpop_nonce.into());
    put("refused", r.refused.as_ref().map(|e| e.0.to_string()).into());
    for (label, token) in [("issued.access_token", &r.issued.access_token), ("issued.id_token", &r.issued.id_token)] {
        if let Some(jwt) = token {
            flatten(&format!("{label}.header"), &jwt.header, &mut put);
            let claims: Map<String, Value> = jwt
                .claims
                .iter()
                .filter(|(k, _)| !PER_SIGNATURE.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            flatten(&format!("{label}.claims"), &claims, &mut put);
        }
    }
    if let Some(binding) = &r.issued.binding {
        put("issued.binding", serde_json::to_value(binding).unwrap_or(Value::Null));
    }
    out
}

fn flatten(prefix: &str, map: &Map<String, Value>, put: &mut impl FnMut(&str, Value)) {
    for (k, v) in map {
        put(&format!("{prefix}.{k}"), v.clone());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::{Answer, Attempt};
    use super::*;

    fn jwt(claims: Value) -> Sent {
        use base64::Engine as _;
        let enc = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        Sent::of(&format!("{}.{}.sig", enc(serde_json::json!({"alg": "ES256", "kid": "k"})), enc(claims)))
    }

    #[test]
    fn names_the_changed_claim_and_ignores_per_signature_ones() {
        let a = Record {
            config_version: 1,
            assertion: Some(jwt(serde_json::json!({"aud": "https://as/wrong", "jti": "1", "iat": 1, "exp": 61}))),
            attempts: vec![Attempt { url: "https://as/token".into(), status: Some(401), ..Default::default() }],
            status: 401,
            answer: Some(Answer { error: Some("invalid_client".into()), ..Default::default() }),
            ..Default::default()
        };
        let b = Record {
            config_version: 2,
            assertion: Some(jwt(serde_json::json!({"aud": "https://as", "jti": "2", "iat": 5, "exp": 65}))),
            attempts: vec![Attempt { url: "https://as/token".into(), status: Some(200), ..Default::default() }],
            status: 200,
            answer: Some(Answer::default()),
            ..Default::default()
        };
        let fields: Vec<String> = compare(&a, &b).into_iter().map(|d| d.field).collect();
        assert_eq!(fields, ["config_version", "assertion.claims.aud", "status", "answer.error"]);
        assert!(compare(&a, &a).is_empty());
    }
}
