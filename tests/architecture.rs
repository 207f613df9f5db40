//! The layout the README's architecture section describes, checked: top-level modules use
//! each other without cycles (data flows one way), and the wrapped libraries stay behind
//! their one module each (josekit, the OpenSSL under it, ring's signing and cryptoki's
//! PKCS#11 in `jose`, rcgen in `pki`).
//!
//! It reads `src/` as text: every `crate::name` path in a module's files is an edge from
//! that module to `name`. `cargo test --test architecture -- --nocapture` prints the graph,
//! and `readme_module_graph_is_current` fails when README.md's copy of it is stale, printing
//! a diff and the exact block to paste.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `src/proxy/guard.rs` -> `proxy`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// Source without comments, so doc links and prose do not count as uses.
fn code_only(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn graph() -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, String>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut texts = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        if module == "main" || module == "lib" {
            continue;
        }
        let text = code_only(&std::fs::read_to_string(&file).unwrap());
        let deps = edges.entry(module.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && name != module {
                deps.insert(name);
            }
        }
        texts.entry(module).or_insert_with(String::new).push_str(&text);
    }
    (edges, texts)
}

/// The graph as the README shows it: leaves on one line, then every other module after all
/// the modules it uses (by depth: the longest chain of uses below it, then by name), names
/// padded to one column. Deterministic, so the README block can be compared byte for byte.
/// `None` when the graph has a cycle (`modules_form_a_dag` names it).
fn render(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<String> {
    fn depth(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        memo: &mut BTreeMap<String, usize>,
        seen: &mut BTreeSet<String>,
    ) -> Option<usize> {
        if let Some(&d) = memo.get(n) {
            return Some(d);
        }
        if !seen.insert(n.to_string()) {
            return None;
        }
        let mut d = 0;
        for dep in edges.get(n).into_iter().flatten() {
            d = d.max(depth(dep, edges, memo, seen)? + 1);
        }
        seen.remove(n);
        memo.insert(n.to_string(), d);
        Some(d)
    }
    let mut memo = BTreeMap::new();
    let mut order = Vec::new();
    for n in edges.keys() {
        order.push((depth(n, edges, &mut memo, &mut BTreeSet::new())?, n.as_str()));
    }
    order.sort();
    let leaves: Vec<&str> = order.iter().filter(|(d, _)| *d == 0).map(|(_, n)| *n).collect();
    let width = order.iter().filter(|(d, _)| *d > 0).map(|(_, n)| n.len()).max().unwrap_or(0);
    let mut out = format!("{}    (no crate dependencies)\n", leaves.join(", "));
    for (_, n) in order.iter().filter(|(d, _)| *d > 0) {
        let deps: Vec<&str> = edges[*n].iter().map(String::as_str).collect();
        out.push_str(&format!("{n:<width$} -> {}\n", deps.join(", ")));
    }
    Some(out)
}

/// Marks the README's graph block: the fenced block right after this line.
const README_MARKER: &str = "<!-- module graph: tests/architecture.rs checks the block below -->";

/// The fenced block after [`README_MARKER`] in README.md, without its fences.
fn readme_block(readme: &str) -> Option<String> {
    let after = &readme[readme.find(README_MARKER)? + README_MARKER.len()..];
    let body = &after[after.find("```")? + 3..];
    let body = &body[body.find('\n')? + 1..];
    Some(body[..body.find("```")?].replace("\r\n", "\n"))
}

/// A line diff (longest common subsequence): `-` lines only in `old`, `+` only in `new`.
fn diff(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!("  {}\n", a[i]);
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out += &format!("- {}\n", a[i]);
            i += 1;
        } else {
            out += &format!("+ {}\n", b[j]);
            j += 1;
        }
    }
    out
}

/// The README's "Architecture notes" show this graph; it must be the one `src/` has today.
#[test]
fn readme_module_graph_is_current() {
    let (edges, _) = graph();
    let Some(actual) = render(&edges) else {
        return; // a cycle: modules_form_a_dag fails with the cycle named
    };
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let Some(written) = readme_block(&readme) else {
        panic!(
            "README.md has no module graph block: put this line in \"Architecture notes\", followed by a \
             fenced block with the graph below:\n{README_MARKER}\n```\n{actual}```"
        );
    };
    assert!(
        written == actual,
        "README.md's module graph (the block after {README_MARKER:?}) is stale.\n\
         Diff (- README, + src/):\n{}\n\
         Replace the block's contents with exactly these lines:\n```\n{actual}```",
        diff(&written, &actual)
    );
}

#[test]
fn modules_form_a_dag() {
    let (edges, _) = graph();
    if let Some(text) = render(&edges) {
        print!("{text}");
    }
    for (module, deps) in &edges {
        for d in deps {
            assert!(edges.contains_key(d), "{module} uses crate::{d}, which is not a module");
        }
    }
    // Depth-first search; a grey node reached again closes a cycle.
    fn visit<'a>(
        n: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) {
        match state.get(n) {
            Some(2) => return,
            Some(1) => panic!("import cycle: {} -> {n}", path.join(" -> ")),
            _ => {}
        }
        state.insert(n, 1);
        path.push(n);
        for d in edges.get(n).into_iter().flatten() {
            visit(d, edges, state, path);
        }
        path.pop();
        state.insert(n, 2);
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        visit(n, &edges, &mut state, &mut Vec::new());
    }
}

#[test]
fn wrapped_libraries_stay_behind_one_module() {
    let (_, texts) = graph();
    for (module, text) in &texts {
        if module != "jose" {
            assert!(!text.contains("josekit"), "{module} uses josekit; JOSE goes through crate::jose");
            assert!(!text.contains("openssl::"), "{module} uses OpenSSL; signing goes through crate::jose");
            assert!(!text.contains("ring::signature"), "{module} signs with ring; signing goes through crate::jose");
        }
        if module != "jose" {
            assert!(!text.contains("cryptoki"), "{module} uses cryptoki; PKCS#11 signing goes through crate::jose");
        }
        if module != "pki" {
            assert!(!text.contains("rcgen"), "{module} uses rcgen; certificates go through crate::pki");
        }
    }
}
