//! The layout the README's architecture section describes, checked: top-level modules use
//! each other without cycles (data flows one way), and the two wrapped libraries stay behind
//! their one module each (josekit, the OpenSSL under it and cryptoki's PKCS#11 in `jose`,
//! rcgen in `pki`).
//!
//! It reads `src/` as text: every `crate::name` path in a module's files is an edge from
//! that module to `name`. `cargo test --test architecture -- --nocapture` prints the graph.

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

#[test]
fn modules_form_a_dag() {
    let (edges, _) = graph();
    for (module, deps) in &edges {
        println!("{module} -> {}", deps.iter().cloned().collect::<Vec<_>>().join(", "));
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
        }
        if module != "jose" {
            assert!(!text.contains("cryptoki"), "{module} uses cryptoki; PKCS#11 signing goes through crate::jose");
        }
        if module != "pki" {
            assert!(!text.contains("rcgen"), "{module} uses rcgen; certificates go through crate::pki");
        }
    }
}
