//! Host names and authorities, parsed one way everywhere: `hosts` entries at config load,
//! CONNECT targets, `Host` headers and URI authorities on every request.
//!
//! One spelling per host: lowercase, no trailing dot, IP literals in canonical form, IPv6
//! without brackets. Parsing is strict (RFC 9110 §7.2: `uri-host [":" port]`): `host:443.evil`
//! or `user@host` is not an authority anyone claims or checks against.

use std::net::IpAddr;

/// Splits a `Host` value into host and port, strictly (RFC 9110 §7.2: `uri-host [":" port]`).
/// IPv6 literals must be bracketed; the brackets are removed.
pub fn split_host_port(raw: &str) -> Option<(&str, Option<u16>)> {
    let (host, rest) = match raw.strip_prefix('[') {
        Some(inner) => {
            let end = inner.find(']')?;
            // RFC 3986 §3.2.2: brackets hold an IP literal, nothing else.
            inner[..end].parse::<std::net::Ipv6Addr>().ok()?;
            (&inner[..end], &inner[end + 1..])
        }
        None => match raw.split_once(':') {
            Some((h, _)) => (h, &raw[h.len()..]),
            None => (raw, ""),
        },
    };
    if host.is_empty() || host.contains(['@', '/', '\\']) || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    match rest {
        "" => Some((host, None)),
        _ => {
            let port = rest.strip_prefix(':')?;
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((host, Some(port.parse().ok()?)))
        }
    }
}

/// A host name in its one spelling: lowercase, no trailing dot, canonical IP literal.
fn normalize(host: &str) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    Some(host.parse::<IpAddr>().map(|ip| ip.to_string()).unwrap_or(host))
}

/// `localhost`, `*.localhost` or a loopback IP literal.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.len() >= 10 && host.get(host.len() - 10..).is_some_and(|end| end.eq_ignore_ascii_case(".localhost"))
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A host plain HTTP may go to: a loopback IP literal or `localhost` itself. Unlike
/// [`is_loopback_host`], `*.localhost` names do not count: they may resolve through DNS.
pub fn is_loopback_upstream(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `host:port` as an app named it (a CONNECT target, a `Host` header, a URI authority).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authority {
    pub host: String,
    pub port: u16,
}

impl Authority {
    /// Parses `host[:port]` strictly; `default_port` when none is given.
    pub fn parse(authority: &str, default_port: u16) -> Option<Authority> {
        let (host, port) = split_host_port(authority)?;
        Some(Authority { host: normalize(host)?, port: port.unwrap_or(default_port) })
    }
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One `hosts` entry of a route: a host, and the one port it claims when it names one.
/// Written `as.example.com`, `as.example.com:8443`, `[::1]:9443` or `::1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub host: String,
    pub port: Option<u16>,
}

impl HostEntry {
    /// Parses an entry with the same rules as [`Authority::parse`]; a bare IPv6 literal
    /// (`::1`) is accepted without brackets.
    pub fn parse(entry: &str) -> Option<HostEntry> {
        let entry = entry.trim();
        if entry.matches(':').count() > 1 && !entry.starts_with('[') {
            let ip: IpAddr = entry.parse().ok()?;
            return Some(HostEntry { host: ip.to_string(), port: None });
        }
        let (host, port) = split_host_port(entry)?;
        Some(HostEntry { host: normalize(host)?, port })
    }
}

impl HostEntry {
    /// Whether forward mode may intercept this host with a leaf from the local CA, whose
    /// name constraints (RFC 5280 §4.2.1.10) it becomes: not a wildcard, and not a public
    /// suffix (`com`, `co.uk`, `github.io` per the Public Suffix List), which would let the
    /// CA mint certificates for every site below it. Private single-label names such as
    /// `localhost` or a Compose service `keycloak` are fine.
    pub fn check_claimable(&self) -> Result<(), String> {
        if self.host.contains('*') {
            return Err("wildcards are not supported; list each host".into());
        }
        if self.host.parse::<IpAddr>().is_ok() {
            return Ok(());
        }
        // A leading dot claims every name below (RFC 5280 §4.2.1.10: `.example.com` constrains
        // the CA to the subdomains of example.com): the name without it must not be a public
        // suffix either, or `.com` would let the CA issue for every `.com` site.
        let (name, below) = match self.host.strip_prefix('.') {
            Some(rest) => (rest, true),
            None => (self.host.as_str(), false),
        };
        if name.is_empty() || name.starts_with('.') || name.contains("..") {
            return Err("is not a host name (one leading dot at most, no empty labels)".into());
        }
        if psl::suffix(name.as_bytes()).is_some_and(|s| s.is_known() && s.as_bytes() == name.as_bytes()) {
            let what = match below {
                true => format!("{name:?} is a public suffix: a leading dot claims every name below it"),
                false => format!("{name:?} is a public suffix"),
            };
            return Err(format!(
                "{what}, and a CA constrained to it could issue for every site below it; name the host itself"
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for HostEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.host.contains(':'), self.port) {
            (true, Some(p)) => write!(f, "[{}]:{p}", self.host),
            (false, Some(p)) => write!(f, "{}:{p}", self.host),
            (_, None) => f.write_str(&self.host),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn a(host: &str, port: u16) -> Authority {
        Authority { host: host.into(), port }
    }

    #[test]
    fn authorities_parse_strictly_and_normalize() {
        assert_eq!(Authority::parse("AS.Example.com.:8443", 443), Some(a("as.example.com", 8443)));
        assert_eq!(Authority::parse("as.example.com", 443), Some(a("as.example.com", 443)));
        assert_eq!(Authority::parse("[0:0::1]", 443), Some(a("::1", 443)));
        assert_eq!(Authority::parse("[::1]:9443", 443), Some(a("::1", 9443)));
        assert_eq!(Authority::parse("as.example.com:443.evil", 443), None);
        assert_eq!(Authority::parse("user@as.example.com", 443), None);
        assert_eq!(Authority::parse("as.example.com:99999", 443), None);
        assert_eq!(a("::1", 1).to_string(), "[::1]:1");
    }

    #[test]
    fn host_entries_parse_like_authorities() {
        let e = |h: &str, p: Option<u16>| Some(HostEntry { host: h.into(), port: p });
        assert_eq!(HostEntry::parse("as.example.com"), e("as.example.com", None));
        assert_eq!(HostEntry::parse("As.example.com.:8443"), e("as.example.com", Some(8443)));
        assert_eq!(HostEntry::parse("[::1]:9443"), e("::1", Some(9443)));
        assert_eq!(HostEntry::parse("::1"), e("::1", None));
        assert_eq!(HostEntry::parse("127.000.0.1"), e("127.000.0.1", None), "not an IP literal: a name");
        for bad in ["", ":443", "as.test:99999", "a b", "user@host", "::zz"] {
            assert_eq!(HostEntry::parse(bad), None, "{bad:?}");
        }
        assert_eq!(HostEntry::parse("[::1]:9443").unwrap().to_string(), "[::1]:9443");
        for public in ["com", "co.uk", "github.io", "*.example.com", ".com", ".co.uk", ".github.io", "..x.com"] {
            assert!(HostEntry::parse(public).unwrap().check_claimable().is_err(), "{public}");
        }
        for fine in [
            "localhost",
            "keycloak",
            "as.example.com",
            "127.0.0.1",
            "login.microsoftonline.com",
            ".example.com",
            ".corp",
        ] {
            assert!(HostEntry::parse(fine).unwrap().check_claimable().is_ok(), "{fine}");
        }
    }

    #[test]
    fn loopback_names() {
        assert!(is_loopback_host("localhost") && is_loopback_host("[::1]") && is_loopback_host("127.0.0.2"));
        assert!(!is_loopback_host("localhost.example") && !is_loopback_host("10.0.0.1"));
        assert!(is_loopback_host("app.localhost") && !is_loopback_upstream("app.localhost"));
        assert!(is_loopback_upstream("LOCALHOST") && is_loopback_upstream("[::1]"));
    }
}
