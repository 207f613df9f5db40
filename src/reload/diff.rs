//! What a reload changed, in words for its one log line (routes added, removed and changed,
//! keys rotated, proxy settings changed; names only, never values), and which listener
//! changes only a restart applies.

use std::net::SocketAddr;
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use crate::config::Config;
use crate::snapshot::{Credential, Route, Snapshot};

/// What the running listeners were started with. Only a restart changes these: the
/// listeners are bound once, and the HTTPS listener, forward mode and the demo AS keep the
/// settings and certificates they started with.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Listeners {
    listen: SocketAddr,
    listen_tls: Option<SocketAddr>,
    forward: Option<SocketAddr>,
    /// `[demo_as]` as a whole (its `Debug` form: the type has no `PartialEq`).
    demo_as: Option<(SocketAddr, String)>,
    /// The local CA's files and a hash of their contents, when a listener serves with it.
    local_ca: Option<(PathBuf, PathBuf, Option<[u8; 32]>)>,
    /// `[proxy] max_connections`: the connection tracker is sized at start.
    max_connections: Option<usize>,
    /// `[proxy] allow_remote`: what the listeners were allowed to bind at start.
    allow_remote: bool,
}

impl Listeners {
    /// Reads `c`'s listener settings (and hashes the local CA's files: blocking I/O).
    pub(super) fn read(c: &Config) -> Listeners {
        let local_ca = (c.listen_tls.is_some() || c.forward.is_some()).then(|| {
            let mut hash = Sha256::new();
            let read = [&c.ca_cert, &c.ca_key]
                .iter()
                .all(|p| crate::config::file::read(p, crate::config::file::SMALL_CAP).map(|b| hash.update(b)).is_ok());
            (c.ca_cert.clone(), c.ca_key.clone(), read.then(|| hash.finalize().into()))
        });
        Listeners {
            listen: c.listen,
            listen_tls: c.listen_tls,
            forward: c.forward,
            demo_as: c.demo_as.as_ref().map(|d| (d.listen, format!("{d:?}"))),
            local_ca,
            max_connections: c.max_connections,
            allow_remote: c.allow_remote,
        }
    }

    /// What `new` asks for that only a restart gives, as `key old -> new`.
    pub(super) fn changes(&self, new: &Listeners) -> Vec<String> {
        fn show<T: std::fmt::Display>(v: Option<T>) -> String {
            v.map_or_else(|| "(off)".to_string(), |v| v.to_string())
        }
        let mut out = Vec::new();
        if self.listen != new.listen {
            out.push(format!("proxy.listen {} -> {}", self.listen, new.listen));
        }
        if self.listen_tls != new.listen_tls {
            out.push(format!("proxy.listen_tls {} -> {}", show(self.listen_tls), show(new.listen_tls)));
        }
        if self.forward != new.forward {
            out.push(format!("proxy.forward {} -> {}", show(self.forward), show(new.forward)));
        }
        let demo_listen = |l: &Listeners| l.demo_as.as_ref().map(|d| d.0);
        if demo_listen(self) != demo_listen(new) {
            out.push(format!("demo_as.listen {} -> {}", show(demo_listen(self)), show(demo_listen(new))));
        } else if self.demo_as != new.demo_as {
            out.push("[demo_as] settings".into());
        }
        if self.max_connections != new.max_connections {
            out.push(format!(
                "proxy.max_connections {} -> {}",
                show(self.max_connections).replace("(off)", "(default)"),
                show(new.max_connections).replace("(off)", "(default)")
            ));
        }
        if self.allow_remote != new.allow_remote {
            out.push(format!("proxy.allow_remote {} -> {}", self.allow_remote, new.allow_remote));
        }
        if let (Some(a), Some(b)) = (&self.local_ca, &new.local_ca) {
            if a != b {
                out.push("proxy.ca_cert/ca_key (the local CA the HTTPS listener and forward mode serve with)".into());
            }
        }
        out
    }
}

/// One phrase for the reload log line: routes added / removed / changed (which settings),
/// keys rotated (old -> new `kid` / thumbprint), proxy settings changed.
pub fn describe_changes(old: &Snapshot, new: &Snapshot) -> String {
    let find = |s: &Snapshot, name: &str| s.routes.iter().find(|r| r.cfg.name == name).cloned();
    let mut added: Vec<&str> = Vec::new();
    let mut changed = Vec::new();
    let mut rotated = Vec::new();
    for r in &new.routes {
        let Some(before) = find(old, &r.cfg.name) else {
            added.push(&r.cfg.name);
            continue;
        };
        let fields = changed_settings(&before, r);
        if !fields.is_empty() {
            changed.push(format!("{} ({})", r.cfg.name, fields.join(", ")));
        }
        rotated.extend(rotated_keys(&before, r).into_iter().map(|k| format!("{} {k}", r.cfg.name)));
    }
    let removed: Vec<&str> =
        old.routes.iter().filter(|r| find(new, &r.cfg.name).is_none()).map(|r| r.cfg.name.as_str()).collect();
    let (a, b) = (&old.config, &new.config);
    let mut proxy = Vec::new();
    if a.unknown_hosts != b.unknown_hosts {
        proxy.push("unknown_hosts");
    }
    if a.ca_cert != b.ca_cert || a.ca_key != b.ca_key {
        proxy.push("ca_cert/ca_key");
    }
    if a.max_body != b.max_body {
        proxy.push("max_body");
    }
    if a.allow_origins != b.allow_origins {
        proxy.push("allow_origins");
    }
    if a.allow_users != b.allow_users {
        proxy.push("allow_users");
    }
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("routes added [{}]", added.join(", ")));
    }
    if !removed.is_empty() {
        parts.push(format!("routes removed [{}]", removed.join(", ")));
    }
    if !changed.is_empty() {
        parts.push(format!("routes changed [{}]", changed.join("; ")));
    }
    if !rotated.is_empty() {
        parts.push(format!("keys rotated [{}]", rotated.join("; ")));
    }
    if !proxy.is_empty() {
        parts.push(format!("proxy settings changed [{}]", proxy.join(", ")));
    }
    if parts.is_empty() {
        return "no changes to routes, keys or settings".into();
    }
    parts.join("; ")
}

/// Which settings of a route differ. Only names are returned, never values.
fn changed_settings(old: &Route, new: &Route) -> Vec<&'static str> {
    let (a, b) = (&old.cfg, &new.cfg);
    // The secret is reported on its own, as `client.secret`.
    let client_changed = match (&a.client, &b.client) {
        (Some(x), Some(y)) => {
            let mut y = y.clone();
            y.secret = x.secret.clone();
            *x != y
        }
        (x, y) => x != y,
    };
    let fields: [(&'static str, bool); 12] = [
        ("prefix", a.prefix != b.prefix),
        ("hosts", a.hosts != b.hosts),
        ("upstream", a.upstream != b.upstream),
        ("issuer", a.issuer != b.issuer),
        ("trust", a.trust != b.trust),
        ("timeout", a.timeout != b.timeout),
        ("endpoints", a.endpoints != b.endpoints),
        ("client", client_changed),
        ("dpop", a.dpop != b.dpop),
        ("mtls", a.mtls != b.mtls),
        ("headers", a.headers != b.headers),
        ("params", a.params != b.params),
    ];
    let mut out: Vec<&'static str> = fields.iter().filter(|(_, d)| *d).map(|(n, _)| *n).collect();
    if let (Credential::Secret(x), Credential::Secret(y)) = (&old.credential, &new.credential) {
        if x != y {
            out.push("client.secret");
        }
    }
    if out.is_empty() && a != b {
        // A setting added to RouteConfig after this list was written.
        out.push("other settings");
    }
    out
}

/// Keys whose file now holds a different key: `client.key kid A -> B`.
fn rotated_keys(old: &Route, new: &Route) -> Vec<String> {
    let mut out = Vec::new();
    if let (Credential::Key(a), Credential::Key(b)) = (&old.credential, &new.credential) {
        if a.thumbprint() != b.thumbprint() {
            out.push(format!("client.key kid {} -> {}", a.thumbprint(), b.thumbprint()));
        }
    }
    if let (Some(a), Some(b)) = (&old.dpop_key, &new.dpop_key) {
        if a.thumbprint() != b.thumbprint() {
            out.push(format!("dpop.key jkt {} -> {}", a.thumbprint(), b.thumbprint()));
        }
    }
    if let (Some(a), Some(b)) = (&old.cert_thumbprint, &new.cert_thumbprint) {
        if a != b {
            out.push(format!("mtls.cert x5t#S256 {a} -> {b}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::path::Path;

    use super::*;
    use crate::snapshot::BuildOptions;

    fn snapshot(dir: &Path, toml: &str) -> Snapshot {
        let path = dir.join("proxy.toml");
        std::fs::write(&path, toml).unwrap();
        let mut s = crate::snapshot::load(&path, BuildOptions { create_missing: true, ..Default::default() }).unwrap();
        s.create_files().unwrap();
        s
    }

    const BASE: &str = r#"
[routes.a]
prefix = "/a"
upstream = "http://127.0.0.1:9"
[routes.a.client]
id = "app"
auth = "private_key_jwt"
key = "a.pem"
create = true
[routes.b]
prefix = "/b"
upstream = "http://127.0.0.1:9"
[routes.b.client]
id = "app"
auth = "client_secret_post"
secret = "one"
"#;

    #[test]
    fn identical_configs_describe_no_changes() {
        let dir = tempfile::tempdir().unwrap();
        let a = snapshot(dir.path(), BASE);
        let b = snapshot(dir.path(), BASE);
        assert_eq!(describe_changes(&a, &b), "no changes to routes, keys or settings");
    }

    #[test]
    fn routes_settings_secrets_and_keys_are_named_without_values() {
        let dir = tempfile::tempdir().unwrap();
        let a = snapshot(dir.path(), BASE);
        std::fs::remove_file(dir.path().join("a.pem")).unwrap();
        let edited = BASE.replace("secret = \"one\"", "secret = \"two\"\n[routes.b.headers]\nset = { x = \"1\" }")
            + "[routes.c]\nprefix = \"/c\"\nupstream = \"http://127.0.0.1:9\"\n";
        let b = snapshot(dir.path(), &edited);
        let line = describe_changes(&a, &b);
        assert!(line.contains("routes added [c]"), "{line}");
        assert!(line.contains("routes changed [b (headers, client.secret)]"), "{line}");
        let (Credential::Key(old), Credential::Key(new)) = (&a.routes[0].credential, &b.routes[0].credential) else {
            panic!("route a signs with a key")
        };
        assert!(line.contains(&format!(
            "keys rotated [a client.key kid {} -> {}]",
            old.thumbprint(),
            new.thumbprint()
        )));
        assert!(!line.contains("one") && !line.contains("two"), "no secret values: {line}");
        let c = snapshot(dir.path(), BASE);
        assert!(describe_changes(&b, &c).contains("routes removed [c]"));
    }

    #[test]
    fn listener_changes_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let a = snapshot(dir.path(), BASE);
        let b = snapshot(dir.path(), &format!("[proxy]\nlisten = \"127.0.0.1:1\"\nforward = \"127.0.0.1:2\"\n{BASE}"));
        let changes = Listeners::read(&a.config).changes(&Listeners::read(&b.config));
        assert_eq!(changes, ["proxy.listen 127.0.0.1:8787 -> 127.0.0.1:1", "proxy.forward (off) -> 127.0.0.1:2"]);
    }
}
