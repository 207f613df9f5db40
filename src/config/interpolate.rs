//! The environment in `proxy.toml`: `${VAR}` and `${VAR:-default}` in any string value, and
//! `--set key.path=value` overrides from the command line.
//!
//! Both work on the parsed document ([`toml::de::DeTable`], which keeps every value's span),
//! before serde sees it, so every later error still points at the file, line and column the
//! value came from. Only `${` starts a reference; `$${` is a literal `${`; every other `$`
//! stays as written, so values written before interpolation existed keep their meaning.
//!
//! An override's value is appended to the checked text as a line of its own (`[]` then
//! `key = value`), so the checks behind [`super::parse`] can name its key; an error in it is
//! reported as `--set:N:COLUMN`, `N` counting the `--set` options.

use std::borrow::Cow;
use std::sync::OnceLock;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One `--set key.path=value`, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub key: String,
    pub value: String,
}

impl std::str::FromStr for Override {
    type Err = String;

    fn from_str(s: &str) -> Result<Override, String> {
        match s.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok(Override { key: key.trim().to_string(), value: value.to_string() })
            }
            _ => Err(format!("{s:?} is not KEY=VALUE (e.g. --set proxy.listen=127.0.0.1:9000)")),
        }
    }
}

static OVERRIDES: OnceLock<Vec<Override>> = OnceLock::new();

/// Sets the `--set` overrides for the life of the process: every load of the config (start,
/// each reload, `check`, `jwks`, `init`) applies the same ones. Only the first call counts.
pub fn set_overrides(overrides: Vec<Override>) {
    let _ = OVERRIDES.set(overrides);
}

/// The overrides [`set_overrides`] recorded (none in tests and library use).
pub fn overrides() -> &'static [Override] {
    OVERRIDES.get().map(Vec::as_slice).unwrap_or_default()
}

/// What went wrong, with a byte offset in [`OverrideSources::text`] where there is one.
#[derive(Debug)]
pub enum PrepareError {
    /// The document is not TOML.
    Toml(toml::de::Error),
    /// `${VAR}` names an unset variable and gives no default.
    Unset { offset: usize, var: String },
    /// `${` without a closing `}`, or a name that is not a variable name.
    Malformed { offset: usize, message: String },
    /// A `--set` whose key is not a TOML key.
    BadKey { index: usize, message: String },
}

/// Replaces every `${...}` reference in the string values of `table` (parsed from `text`);
/// returns the values taken into secret positions (client secrets, header and parameter
/// values), which are shown as `[redacted]` wherever the config is printed.
pub fn interpolate(
    table: &mut DeTable<'_>,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, PrepareError> {
    let mut secrets = Vec::new();
    interpolate_table(table, text, env, &mut Vec::new(), &mut secrets)?;
    Ok(secrets)
}

/// The `--set` lines, ready to merge: the text spans point into, and one parse source per
/// override (spaces up to where its line sits in [`OverrideSources::text`], then the line), so
/// every span of a merged value points at its `--set` line.
pub struct OverrideSources {
    /// The file's text, then one `[]` + `key = value` line pair per override.
    pub text: String,
    /// Where the file's own text ends in [`OverrideSources::text`].
    pub file_len: usize,
    sources: Vec<String>,
}

/// Decides how each override is read (a TOML value, or else a string; a string too when the
/// file has a string there) against the document `base`.
pub fn override_sources(
    text: &str,
    overrides: &[Override],
    base: &DeTable<'_>,
) -> Result<OverrideSources, PrepareError> {
    let mut combined = text.to_string();
    let file_len = combined.len();
    let mut sources = Vec::new();
    for (index, o) in overrides.iter().enumerate() {
        combined.push_str("\n[]\n");
        let pad = " ".repeat(combined.len());
        let typed = format!("{pad}{} = {}", o.key, o.value);
        let quoted = format!("{pad}{} = {}", o.key, toml::Value::String(o.value.clone()));
        let typed_ok = DeTable::parse(&typed).is_ok_and(|t| !string_replaced_by_other(base, t.get_ref()));
        let source = if typed_ok {
            typed
        } else if let Err(e) = DeTable::parse(&quoted) {
            return Err(PrepareError::BadKey {
                index: index + 1,
                message: format!("{:?} is not a key like proxy.listen: {}", o.key, e.message().trim_end()),
            });
        } else {
            quoted
        };
        combined.push_str(&source[pad.len()..]);
        sources.push(source);
    }
    Ok(OverrideSources { text: combined, file_len, sources })
}

impl OverrideSources {
    /// Merges every override into `table`, in order (a later one wins).
    pub fn apply<'a>(&'a self, table: &mut DeTable<'a>) -> Result<(), PrepareError> {
        for source in &self.sources {
            merge(table, DeTable::parse(source).map_err(PrepareError::Toml)?.into_inner());
        }
        Ok(())
    }
}

/// Would overriding with `update` turn a string the file has into another type? Then the
/// value is meant as a string (`--set routes.demo.client.id=123`).
fn string_replaced_by_other(base: &DeTable<'_>, update: &DeTable<'_>) -> bool {
    update.iter().any(|(k, v)| match (base.get(k.get_ref().as_ref()).map(Spanned::get_ref), v.get_ref()) {
        (Some(DeValue::Table(b)), DeValue::Table(u)) => string_replaced_by_other(b, u),
        (Some(DeValue::String(_)), DeValue::String(_)) => false,
        (Some(DeValue::String(_)), _) => true,
        _ => false,
    })
}

/// Deep merge: tables merge key by key, anything else replaces what was there.
fn merge<'a>(base: &mut DeTable<'a>, update: DeTable<'a>) {
    for (k, v) in update {
        let name = k.get_ref().to_string();
        if let (Some(existing), DeValue::Table(_)) = (base.get_mut(name.as_str()), v.get_ref()) {
            if let DeValue::Table(b) = existing.get_mut() {
                if let DeValue::Table(u) = v.into_inner() {
                    merge(b, u);
                }
                continue;
            }
        }
        base.insert(k, v);
    }
}

/// Is the value at `path` a secret (its interpolated value is redacted)?
fn is_secret_path(path: &[String]) -> bool {
    let last = path.last().map(|s| s.to_ascii_lowercase()).unwrap_or_default();
    let under = |parent: &str| path.iter().any(|p| p == parent);
    ["secret", "password", "token", "pin"].iter().any(|w| last.contains(w)) || under("headers") || under("params")
}

fn interpolate_table(
    table: &mut DeTable<'_>,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    path: &mut Vec<String>,
    secrets: &mut Vec<String>,
) -> Result<(), PrepareError> {
    for (k, v) in table.iter_mut() {
        path.push(k.get_ref().to_string());
        let result = interpolate_value(v, text, env, path, secrets);
        path.pop();
        result?;
    }
    Ok(())
}

fn interpolate_value(
    v: &mut Spanned<DeValue<'_>>,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    path: &mut Vec<String>,
    secrets: &mut Vec<String>,
) -> Result<(), PrepareError> {
    let span = v.span();
    match v.get_mut() {
        DeValue::String(s) if s.contains("${") => {
            let raw = text.get(span.clone()).unwrap_or_default();
            let (out, values) = expand(s, env).map_err(|(nth, e)| {
                let offset = span.start + reference_offsets(raw).get(nth).copied().unwrap_or(0);
                match e {
                    Expand::Unset(var) => PrepareError::Unset { offset, var },
                    Expand::Malformed(message) => PrepareError::Malformed { offset, message },
                }
            })?;
            if is_secret_path(path) {
                secrets.extend(values.into_iter().filter(|v| !v.is_empty()));
            }
            *s = Cow::Owned(out);
        }
        DeValue::Array(a) => {
            for item in a.iter_mut() {
                interpolate_value(item, text, env, path, secrets)?;
            }
        }
        DeValue::Table(t) => interpolate_table(t, text, env, path, secrets)?,
        _ => {}
    }
    Ok(())
}

enum Expand {
    Unset(String),
    Malformed(String),
}

/// `s` with each `${VAR}` / `${VAR:-default}` replaced, and the values substituted. The
/// error carries the index of the reference at fault.
fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<(String, Vec<String>), (usize, Expand)> {
    let mut out = String::with_capacity(s.len());
    let mut values = Vec::new();
    let mut rest = s;
    let mut nth = 0;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(end) = body.find('}') else {
            return Err((nth, Expand::Malformed("`${` without a closing `}` (write `$${` for a literal `${`)".into())));
        };
        let (name, default) = match body[..end].split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (&body[..end], None),
        };
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err((
                nth,
                Expand::Malformed(format!(
                    "`${{{name}}}` is not a variable name (letters, digits, `_`; write `$${{` for a literal `${{`)"
                )),
            ));
        }
        let value = match (env(name), default) {
            (Some(v), _) => v,
            (None, Some(d)) => d.to_string(),
            (None, None) => return Err((nth, Expand::Unset(name.to_string()))),
        };
        out.push_str(&value);
        values.push(value);
        rest = &body[end + 1..];
        nth += 1;
    }
    out.push_str(rest);
    Ok((out, values))
}

/// Byte offsets of each `${` reference (not `$${`) in a value's source text.
fn reference_offsets(raw: &str) -> Vec<usize> {
    let bytes = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b'$' && bytes.get(i + 1) == Some(&b'$') && bytes.get(i + 2) == Some(&b'{') {
            i += 3;
        } else if bytes[i] == b'$' && bytes[i + 1] == b'{' {
            out.push(i);
            i += 2;
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("as.example.com".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn exp(s: &str) -> Result<String, String> {
        expand(s, &env).map(|(s, _)| s).map_err(|(n, e)| match e {
            Expand::Unset(v) => format!("{n}: unset {v}"),
            Expand::Malformed(m) => format!("{n}: {m}"),
        })
    }

    #[test]
    fn references_defaults_and_literals() {
        assert_eq!(exp("https://${HOST}/x").unwrap(), "https://as.example.com/x");
        assert_eq!(exp("${NOPE:-127.0.0.1:9}").unwrap(), "127.0.0.1:9");
        assert_eq!(exp("${EMPTY:-d}").unwrap(), "", "set but empty is set");
        assert_eq!(exp("$${HOST} $HOST a$b $").unwrap(), "${HOST} $HOST a$b $");
        assert_eq!(exp("${HOST}${HOST}").unwrap(), "as.example.comas.example.com");
        assert_eq!(exp("x ${HOST} ${NOPE}").unwrap_err(), "1: unset NOPE");
        assert!(exp("${HOST").unwrap_err().contains("closing"));
        assert!(exp("${1X}").unwrap_err().contains("not a variable name"));
    }

    #[test]
    fn reference_offsets_skip_literals() {
        assert_eq!(reference_offsets("\"$${A} ${B}\""), vec![7]);
    }

    /// Interpolates and overrides `text` the way [`super::super::check::parse`] does; returns
    /// the merged table as a `toml::Value` and the text spans point into.
    fn prepare(
        text: &str,
        overrides: &[Override],
    ) -> Result<(toml::Table, OverrideSources, Vec<String>), PrepareError> {
        let mut t = DeTable::parse(text).map_err(PrepareError::Toml)?.into_inner();
        let secrets = interpolate(&mut t, text, &env)?;
        let src = override_sources(text, overrides, &t)?;
        let mut t2 = t.clone();
        src.apply(&mut t2)?;
        let value: toml::Table =
            serde::Deserialize::deserialize(toml::de::Deserializer::from(Spanned::new(0..0, t2))).unwrap();
        Ok((value, src, secrets))
    }

    #[test]
    fn unset_reference_points_at_it() {
        let text = "[proxy]\nlisten = \"x${NOPE}\"\n";
        match prepare(text, &[]) {
            Err(PrepareError::Unset { offset, var }) => {
                assert_eq!(var, "NOPE");
                assert_eq!(&text[offset..offset + 7], "${NOPE}");
            }
            _ => panic!("expected Unset"),
        }
    }

    #[test]
    fn overrides_merge_typed_and_fall_back_to_strings() {
        let text = "[proxy]\nlisten = \"127.0.0.1:1\"\nmax_body = 10\n[routes.a]\nprefix = \"/a\"\n";
        let o = |s: &str| s.parse::<Override>().unwrap();
        let (t, src, _) =
            prepare(text, &[o("proxy.listen=127.0.0.1:9000"), o("proxy.max_body=20"), o("routes.a.prefix=123")])
                .unwrap();
        assert_eq!(t["proxy"]["listen"].as_str(), Some("127.0.0.1:9000"));
        assert_eq!(t["proxy"]["max_body"].as_integer(), Some(20), "a TOML value keeps its type");
        assert_eq!(t["routes"]["a"]["prefix"].as_str(), Some("123"), "typed like the field: a string");
        assert!(src.text.ends_with("\n[]\nrouteS.a.prefix = \"123\"".replace('S', "s").as_str()), "{}", src.text);
        assert_eq!(src.file_len, text.len());
        assert!("novalue".parse::<Override>().is_err());
    }

    #[test]
    fn secrets_are_recorded_only_for_secret_positions() {
        let text = "[routes.a.client]\nsecret = \"${HOST}\"\nid = \"${HOST}x\"\n";
        let (t, _, secrets) = prepare(text, &[]).unwrap();
        assert_eq!(secrets, vec!["as.example.com".to_string()]);
        assert_eq!(t["routes"]["a"]["client"]["id"].as_str(), Some("as.example.comx"));
    }
}
