//! Which route claims a CONNECT target or absolute-form URL, and whether an inner request
//! names the host it was tunnelled to.
//!
//! A `hosts` entry is `name` or `name:port`. An entry with a port claims that port only; a
//! bare entry that is the upstream's own host claims the upstream's port only (so other
//! services on `127.0.0.1` are not caught by a route to a local AS); any other bare entry
//! claims every port. The most specific claim wins. A route with an `issuer` also claims the
//! host and port of each metadata endpoint it signs on another origin.

use std::sync::Arc;

use http::Uri;

use crate::config::host::Authority as Target;
use crate::snapshot::{Route, Snapshot};

/// How specifically `route`'s `hosts` claim `target` (3: with its port; 2: the upstream's own
/// host on the upstream's port; 1: a bare name on any port), or `None`.
fn hosts_score(route: &Route, target: &Target) -> Option<u8> {
    route
        .cfg
        .hosts
        .iter()
        .filter(|entry| entry.host == target.host)
        .filter_map(|entry| match entry.port {
            Some(p) if p == target.port => Some(3),
            Some(_) => None,
            None if entry.host == route.cfg.upstream.host => (route.cfg.upstream.port == target.port).then_some(2),
            None => Some(1),
        })
        .max()
}

/// The origin of a metadata endpoint on another origin than `route`'s upstream that `target`
/// names, when `route`'s `hosts` do not claim it themselves: requests there go to that
/// origin, not to the upstream.
pub fn metadata_origin(route: &Route, target: &Target) -> Option<String> {
    if hosts_score(route, target).is_some() {
        return None;
    }
    let crate::discovery::State::Found(meta) = route.discovery.as_ref()?.state() else { return None };
    let table = route.endpoints(Some(&meta));
    let found = table
        .list
        .iter()
        .flat_map(|e| [&e.url, &e.send])
        .find(|u| u.origin() != route.cfg.upstream.origin() && u.host() == target.host && u.port() == target.port);
    found.map(|u| u.origin().to_string())
}

/// The route that claims `target`, most specific claim first (see the module docs).
pub fn claim<'a>(snapshot: &'a Snapshot, target: &Target) -> Option<&'a Arc<Route>> {
    let mut best: Option<(u8, &Arc<Route>)> = None;
    for route in &snapshot.routes {
        if let Some(score) = hosts_score(route, target) {
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, route));
            }
        }
        // A route with an `issuer` also claims the hosts of its metadata's client-authenticated
        // endpoints on other origins (Google: `oauth2.googleapis.com` for issuer
        // `accounts.google.com`), so they are signed, never tunnelled.
        if metadata_origin(route, target).is_some() && best.is_none_or(|(s, _)| s < 2) {
            best = Some((2, route));
        }
    }
    best.map(|(_, r)| r)
}

/// The path relative to the upstream's base path, or `None` when it lies outside it.
pub fn rest_of(path: &str, base: &str) -> Option<String> {
    let path = if path.is_empty() { "/" } else { path };
    let rest = path.strip_prefix(base)?;
    if rest.is_empty() {
        Some("/".into())
    } else if rest.starts_with('/') {
        Some(rest.into())
    } else {
        None
    }
}

/// Checks that the URI authority and `Host` of a request name `target` (RFC 9110 §7.4: a
/// request for another origin on this connection is misdirected). At least one must be present.
pub fn check_authority(uri: &Uri, headers: &http::HeaderMap, target: &Target, default_port: u16) -> Result<(), String> {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let host = hosts.next();
    let mut named = false;
    if let Some(a) = uri.authority() {
        named = true;
        if Target::parse(a.as_str(), default_port).as_ref() != Some(target) {
            return Err(format!("request authority {:?} does not match the proxied host {target}", a.as_str()));
        }
    }
    if hosts.next().is_some() {
        return Err("two Host headers (RFC 9112 §3.2); refused".into());
    }
    if let Some(h) = host {
        named = true;
        let text = h.to_str().unwrap_or("");
        if Target::parse(text, default_port).as_ref() != Some(target) {
            return Err(format!("Host {text:?} does not match the proxied host {target}"));
        }
    }
    if !named {
        return Err(format!("request names no host (no Host header); expected {target}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::header::HeaderValue;

    use crate::snapshot::BuildOptions;

    fn t(host: &str, port: u16) -> Target {
        Target { host: host.into(), port }
    }

    #[test]
    fn claims_prefer_the_most_specific_entry() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"
[routes.local]
prefix = "/local"
upstream = "http://127.0.0.1:9000"

[routes.named]
prefix = "/named"
upstream = "http://127.0.0.1:9001/oauth2"
hosts = ["as.example.com", "api.example.com:8443"]

[routes.pinned]
prefix = "/pinned"
upstream = "http://127.0.0.1:9002"
hosts = ["as.example.com:443"]
"#;
        let config = crate::config::parse(text, &dir.path().join("proxy.toml")).unwrap();
        let snap = Snapshot::build(config, BuildOptions::default()).unwrap();
        let name = |target: Target| claim(&snap, &target).map(|r| r.cfg.name.clone());
        assert_eq!(name(t("127.0.0.1", 9000)).as_deref(), Some("local"));
        assert_eq!(name(t("127.0.0.1", 9001)), None, "the upstream host is claimed at its own port only");
        assert_eq!(name(t("as.example.com", 443)).as_deref(), Some("pinned"));
        assert_eq!(name(t("as.example.com", 8443)).as_deref(), Some("named"));
        assert_eq!(name(t("api.example.com", 8443)).as_deref(), Some("named"));
        assert_eq!(name(t("api.example.com", 443)), None);
        assert_eq!(name(t("other.example", 443)), None);
    }

    #[test]
    fn rest_is_relative_to_the_base_path() {
        assert_eq!(rest_of("/token", "").as_deref(), Some("/token"));
        assert_eq!(rest_of("/oauth2/token", "/oauth2").as_deref(), Some("/token"));
        assert_eq!(rest_of("/oauth2", "/oauth2").as_deref(), Some("/"));
        assert_eq!(rest_of("/oauth2x/token", "/oauth2"), None);
        assert_eq!(rest_of("/.well-known/openid-configuration", "/oauth2"), None);
    }

    #[test]
    fn connect_target_and_host_must_agree() {
        let target = t("as.example.com", 443);
        let origin: Uri = "/token".parse().unwrap();
        let ok = |h: &str| check_authority(&origin, &host_map(&[h]), &target, 443);
        assert!(ok("as.example.com").is_ok());
        assert!(ok("AS.example.com:443").is_ok());
        assert!(ok("as.example.com:8443").is_err());
        assert!(ok("evil.example").is_err());
        assert!(check_authority(&origin, &host_map(&[]), &target, 443).is_err(), "no Host at all");
        let h2: Uri = "https://as.example.com/token".parse().unwrap();
        assert!(check_authority(&h2, &host_map(&[]), &target, 443).is_ok());
        let h2_other: Uri = "https://evil.example/token".parse().unwrap();
        assert!(check_authority(&h2_other, &host_map(&[]), &target, 443).is_err());
        let both = host_map(&["evil.example"]);
        assert!(check_authority(&h2, &both, &target, 443).is_err(), ":authority and Host disagree");
        let twice = host_map(&["as.example.com", "as.example.com"]);
        assert!(check_authority(&origin, &twice, &target, 443).is_err(), "a second Host");
    }

    fn host_map(hosts: &[&str]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for h in hosts {
            map.append(http::header::HOST, HeaderValue::from_str(h).unwrap());
        }
        map
    }
}
