//! The characters config values may hold where they end up in what tokenrelay prints for a
//! shell or a log: route names, prefixes and endpoint paths, file paths, upstream URLs.
//!
//! Route names and paths (prefixes, endpoints) take a small safe set that no shell treats
//! specially, so the commands `init`, `run`, `check` and `token` suggest can be pasted as
//! printed. File paths and URLs may hold any character but a control character: a newline in
//! a path would end the comment line it is printed in and start a command of its own.

/// Route names: ASCII letters, digits, `-`, `_`, `.`, starting with a letter or digit, at most
/// 64 characters. The name is printed bare in `tokenrelay jwks --route NAME` and `[routes.NAME]`.
pub fn route_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "route name {name:?} is not allowed: use 1 to 64 ASCII letters, digits, '-', '_' or '.', \
             starting with a letter or digit (names are printed into commands to paste)"
        )),
    }
}

/// Request paths (`prefix`, `endpoints`): `/` followed by RFC 3986 §2.3 unreserved characters
/// (ASCII letters, digits, `-`, `.`, `_`, `~`) and `/`.
pub fn path(value: &str) -> Result<(), String> {
    let ok = value.starts_with('/') && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "{value:?} is not allowed: a path starts with '/' and holds only ASCII letters, digits, \
             '-', '.', '_', '~' and '/' (RFC 3986 §2.3 unreserved; printed into commands to paste)"
        )),
    }
}

/// File paths, URLs and anything else printed to a terminal or a shell: no control characters
/// (newline, carriage return, escape, DEL, C1 controls).
pub fn no_control(value: &str) -> Result<(), String> {
    match value.chars().find(|c| c.is_control()) {
        None => Ok(()),
        Some(c) => Err(format!(
            "{value:?} holds the control character {:?}, which is refused in paths, names and URLs \
             (printed for a shell, it could end a line and start a command): remove it",
            c
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn safe_sets() {
        for ok in ["demo", "a", "okta-prod", "v1.2_x", "9"] {
            assert!(route_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", ".x", "r$(touch X)", "a b", "a\nb", "é", &"a".repeat(65)] {
            assert!(route_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["/", "/demo", "/a/b-c.d_e~f", "/token"] {
            assert!(path(ok).is_ok(), "{ok}");
        }
        for bad in ["demo", "/p$(touch${IFS}Y)", "/a b", "/a\n", "/a?b", "/a%2f", "/'"] {
            assert!(path(bad).is_err(), "{bad:?}");
        }
        assert!(no_control("/srv/a b/ca.pem").is_ok());
        assert!(no_control("c\ntouch PWNED\n/ca.pem").unwrap_err().contains("'\\n'"));
        assert!(no_control("x\u{1b}[2J").is_err() && no_control("\u{85}").is_err());
    }
}
