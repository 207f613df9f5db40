//! Quoting for what tokenrelay prints to be pasted into or evaluated by a shell
//! (`eval "$(tokenrelay ca)"`, `tokenrelay ca --shell fish | source`, the commands `init`,
//! `run` and `check` suggest).
//!
//! Every value printed for a shell goes through the quoting of that shell, comment lines
//! included: a value holding a newline would end a `#` comment and run the next line.
//! [`comment`] therefore writes control characters as `\u{..}` escapes, so a comment is always
//! one line. `tests/hardening2.rs` runs random strings through [`sh`] and [`fish`] under `sh`,
//! `bash` and `fish` and checks that they come back byte for byte and run nothing.

/// Single-quotes `s` for a POSIX shell (sh, bash, zsh, dash, ksh): inside `'...'` nothing is
/// special but `'` itself, written `'\''`. Plain words (letters, digits, `/._-:,=@+`) stay bare.
pub fn sh(s: &str) -> String {
    if is_plain(s) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Single-quotes `s` for fish: inside `'...'` only `\'` and `\\` are escapes (fish-doc
/// "Quotes"), so both are escaped; newlines stay literal.
pub fn fish(s: &str) -> String {
    if is_plain(s) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\\', r"\\").replace('\'', r"\'"))
}

/// A PowerShell expression for `s` on one line (`tokenrelay ca --shell powershell |
/// Invoke-Expression` runs line by line). Single-quoted strings take every character literally
/// except the single quotes, which PowerShell also recognizes as U+2018..U+201B and which are
/// doubled; control characters become `[char]0x..` joined with `+`.
pub fn powershell(s: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut lit = String::new();
    for c in s.chars() {
        if c.is_control() {
            if !lit.is_empty() || parts.is_empty() {
                parts.push(format!("'{lit}'"));
                lit.clear();
            }
            parts.push(format!("[char]0x{:x}", c as u32));
            continue;
        }
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            lit.push(c);
        }
        lit.push(c);
    }
    if !lit.is_empty() || parts.is_empty() {
        parts.push(format!("'{lit}'"));
    }
    match parts.len() {
        1 => parts.remove(0),
        _ => format!("({})", parts.join(" + ")),
    }
}

/// One `# ...` comment line (POSIX shells, fish, PowerShell, dotenv) that stays one line:
/// control characters (a newline would end the comment and run what follows) are written as
/// `\u{..}` escapes.
pub fn comment(text: &str) -> String {
    let mut out = String::from("# ");
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.push('\n');
    out
}

fn is_plain(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-:,=@+".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_per_shell() {
        assert_eq!(sh("/a b/c'd"), r"'/a b/c'\''d'");
        assert_eq!(sh("/plain/path.pem"), "/plain/path.pem");
        assert_eq!(sh(""), "''");
        assert_eq!(fish(r"a\'b"), r"'a\\\'b'");
        assert_eq!(powershell("it's"), "'it''s'");
        assert_eq!(powershell("a\u{2019}b"), "'a\u{2019}\u{2019}b'");
        assert_eq!(powershell("a\nb"), "('a' + [char]0xa + 'b')");
        assert_eq!(powershell("\n"), "('' + [char]0xa)");
        assert_eq!(powershell(""), "''");
        assert_eq!(comment("c\ntouch PWNED\n/ca.pem"), "# c\\u{a}touch PWNED\\u{a}/ca.pem\n");
    }
}
