//! Step 2a: the route's `[headers]` rules: `remove`, then `set` (add or replace).

use http::HeaderMap;

use crate::config::HeaderRules;

/// Applies `rules` to `headers`. Removal runs first so `set` can re-add a removed name.
pub fn apply(rules: &HeaderRules, headers: &mut HeaderMap) {
    for name in &rules.remove {
        headers.remove(name);
    }
    for (name, value) in &rules.set {
        headers.insert(name.clone(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn remove_then_set() {
        let rules = HeaderRules {
            set: vec![("x-src".parse().unwrap(), "tokenrelay".parse().unwrap())],
            remove: vec!["cookie".parse().unwrap()],
        };
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=b".parse().unwrap());
        h.insert("x-src", "app".parse().unwrap());
        apply(&rules, &mut h);
        assert!(!h.contains_key("cookie"));
        assert_eq!(h["x-src"], "tokenrelay");
    }
}
