//! What a replay (`POST /.tokenrelay/exchanges/{id}/replay`) needs of the app's request:
//! its query and form, kept only when every value in them is one tokenrelay keeps anyway
//! (a name in [`super::NEVER_SECRET`]). A request that carried anything else (a code, a
//! refresh token, a secret, a subject token, a body that is not a form) is not replayable,
//! and the record names what was not kept. The app's header values are never kept, so a
//! replay never re-sends them.

use serde::Serialize;

use super::NEVER_SECRET;

/// The replayable part of the app's request, or why there is none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayInput {
    /// The app's query string, kept when every parameter in it is never secret.
    pub query: Option<String>,
    /// The app's form, re-encoded from the kept values; `None` when the request was not a
    /// form tokenrelay read (then a non-empty body is not kept).
    pub form: Option<String>,
    /// Parameters whose values were not kept.
    pub not_kept: Vec<String>,
    /// The body was a form tokenrelay read (its secret values are in `not_kept`).
    pub is_form: bool,
    /// The length of the app's body, once read (a request refused before its body was read
    /// is not replayable: the body is unknown).
    pub body_len: Option<usize>,
}

impl ReplayInput {
    /// Can the request be sent again as it was?
    pub fn replayable(&self) -> bool {
        self.body_len.is_some() && self.missing().is_empty()
    }

    /// What was not kept: parameter names, and `body` for a body that was not a form.
    pub fn missing(&self) -> Vec<String> {
        let mut out = self.not_kept.clone();
        if !self.is_form && self.body_len.is_some_and(|n| n > 0) {
            out.push("body".into());
        }
        out
    }

    /// Keeps the app's query when every name in it is never secret; else names those that
    /// are not.
    pub fn keep_query(&mut self, query: Option<&str>) {
        let Some(query) = query.filter(|q| !q.is_empty()) else { return };
        let secret: Vec<String> = form_urlencoded::parse(query.as_bytes())
            .map(|(k, _)| k.into_owned())
            .filter(|k| !NEVER_SECRET.contains(&k.as_str()))
            .collect();
        if secret.is_empty() {
            self.query = Some(query.to_string());
        } else {
            self.not_kept.extend(secret);
        }
    }

    /// Keeps the form rebuilt from `params` (name, value kept) when every value was kept;
    /// else names the parameters whose values were not.
    pub fn keep_form(&mut self, params: &[super::Param]) {
        self.is_form = true;
        let mut form = form_urlencoded::Serializer::new(String::new());
        let mut secret = Vec::new();
        for p in params {
            match &p.value {
                Some(v) => {
                    form.append_pair(&p.name, v);
                }
                None => secret.push(p.name.clone()),
            }
        }
        if secret.is_empty() {
            self.form = Some(form.finish());
        } else {
            self.not_kept.extend(secret);
        }
    }

    /// Why the request cannot be replayed, for a 409 and the inspector.
    pub fn why_not(&self) -> String {
        if self.body_len.is_none() {
            return "tokenrelay refused it before reading its body, so the body is unknown".into();
        }
        let names: Vec<String> = self
            .missing()
            .iter()
            .map(|n| if n == "body" { "the request body (not a form)".to_string() } else { format!("{n:?}") })
            .collect();
        format!("it carried values tokenrelay never keeps: {}; send it again from the app", names.join(", "))
    }
}

impl Serialize for ReplayInput {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let replayable = self.replayable();
        let mut map = s.serialize_map(Some(if replayable { 1 } else { 3 }))?;
        map.serialize_entry("replayable", &replayable)?;
        if !replayable {
            map.serialize_entry("not_kept", &self.missing())?;
            map.serialize_entry("why_not", &self.why_not())?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::Param;
    use super::*;

    fn param(name: &str, value: Option<&str>) -> Param {
        Param { name: name.into(), value: value.map(str::to_string) }
    }

    #[test]
    fn only_never_secret_values_make_a_request_replayable() {
        let mut ok = ReplayInput::default();
        ok.keep_query(Some("resource=https%3A%2F%2Fapi"));
        ok.keep_form(&[param("grant_type", Some("client_credentials")), param("scope", Some("a b"))]);
        ok.body_len = Some(40);
        assert!(ok.replayable());
        assert_eq!(ok.form.as_deref(), Some("grant_type=client_credentials&scope=a+b"));
        assert_eq!(ok.query.as_deref(), Some("resource=https%3A%2F%2Fapi"));

        let mut code = ReplayInput::default();
        code.keep_query(Some("state=xyz"));
        code.keep_form(&[param("grant_type", Some("authorization_code")), param("code", None)]);
        code.body_len = Some(40);
        assert!(!code.replayable());
        assert_eq!(code.not_kept, ["state", "code"]);
        let shown = serde_json::to_value(&code).unwrap();
        assert_eq!(shown["replayable"], false);
        assert!(shown["why_not"].as_str().unwrap().contains("\"code\""), "{shown}");

        let body = ReplayInput { body_len: Some(3), ..Default::default() };
        assert_eq!(body.missing(), ["body"]);
        let empty = ReplayInput { body_len: Some(0), ..Default::default() };
        assert!(empty.replayable());
        assert!(!ReplayInput::default().replayable(), "refused before the body was read");
    }
}
