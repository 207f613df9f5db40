//! Step 2b: the route's `[params]` rules on client-authenticated requests:
//! `remove`, then `add` (only when the app sent none), then `set` (always wins).

use super::form::Form;
use crate::config::ParamRules;

/// Applies `rules` to `form`, returning the names changed (for the log line).
pub fn apply(rules: &ParamRules, form: &mut Form) -> Vec<String> {
    let mut changed = Vec::new();
    for name in &rules.remove {
        if form.remove(name) {
            changed.push(format!("-{name}"));
        }
    }
    for (name, value) in &rules.add {
        if form.add_if_absent(name, value) {
            changed.push(format!("+{name}"));
        }
    }
    for (name, value) in &rules.set {
        form.set(name, value);
        changed.push(format!("={name}"));
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_never_overrides_set_always_wins_remove_removes() {
        let rules = ParamRules {
            add: [("scope".to_string(), "read".to_string()), ("audience".to_string(), "api".to_string())].into(),
            set: [("resource".to_string(), "https://api.example.com".to_string())].into(),
            remove: vec!["foo".to_string()],
        };
        let mut form = Form::parse(b"grant_type=client_credentials&scope=mine&resource=app&foo=1");
        apply(&rules, &mut form);
        assert_eq!(
            String::from_utf8(form.encode()).unwrap_or_default(),
            "grant_type=client_credentials&scope=mine&resource=https%3A%2F%2Fapi.example.com&audience=api"
        );
    }
}
