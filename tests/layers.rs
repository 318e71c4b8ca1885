//! The one-way layering rule of `src/lib.rs`: a module imports only from layers with a lower
//! number (or its own). Every `crate::` path in every library file — in a `use`, grouped or
//! not, or inline in code — is checked against its file's layer. Comments are skipped.

#![allow(
    clippy::unwrap_used,
    reason = "a test helper that cannot read the source tree should fail loudly"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layer of a module path inside the crate (`upstream::failure`, `routing`, …). More
/// specific entries come first.
const LAYERS: &[(&str, u8)] = &[
    ("model", 0),
    // The registry's one list of models, a macro at the crate root.
    ("for_each_model", 0),
    ("upstream::failure", 0),
    ("failpoint", 0),
    ("config", 1),
    ("error", 1),
    ("hook", 1),
    ("request", 2),
    ("metrics", 2),
    ("pricing", 3),
    ("catalog", 3),
    ("upstream", 3),
    ("store", 3),
    ("ledger", 3),
    ("keys", 4),
    ("limits", 4),
    ("budget", 4),
    ("routing", 5),
    ("dispatch", 6),
    ("state", 7),
    ("jobs", 7),
    ("replicas", 7),
    ("cluster", 3),
    ("webhooks", 7),
    ("auth", 7),
    ("api", 7),
    ("admin", 7),
    ("mcp", 7),
    ("ui", 7),
    ("drain", 7),
    ("shed", 7),
    ("app", 8),
    ("demo", 8),
    ("serve", 8),
    ("server", 8),
];

fn layer_of(module: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(prefix, _)| module == *prefix || module.starts_with(&format!("{prefix}::")))
        .map(|(_, l)| *l)
}

/// `src/upstream/failure.rs` → `upstream::failure`; `src/routing/mod.rs` → `routing`.
fn module_of(file: &Path, src: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

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

/// The code of a file without comments (line comments, doc comments and block comments).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
        } else if rest.starts_with('"') {
            // Skip string literals, which may hold `//` or `crate::` as text.
            let mut end = 1;
            let bytes = rest.as_bytes();
            while end < bytes.len() && bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            rest = rest.get(end + 1..).unwrap_or("");
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn ident_end(s: &str) -> usize {
    s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

/// Every module path a file names through `crate::`: `crate::a::b::C` gives `a::b::C`;
/// `crate::{a, b::{c, d}}` gives `a`, `b::c`, `b::d`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let preceded_by_ident = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[i + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        expand("", rest, &mut found);
    }
    found
}

/// Reads one path (or brace group) at the start of `s`, prefixed by `prefix`.
fn expand(prefix: &str, s: &str, found: &mut Vec<String>) {
    let s = s.trim_start();
    if let Some(inner) = s.strip_prefix('{') {
        for item in split_group(inner) {
            expand(prefix, item, found);
        }
        return;
    }
    let end = ident_end(s);
    if end == 0 {
        if !prefix.is_empty() {
            found.push(prefix.trim_end_matches("::").to_owned());
        }
        return;
    }
    let path = format!("{prefix}{}", &s[..end]);
    match s[end..].strip_prefix("::") {
        Some(tail) => expand(&format!("{path}::"), tail, found),
        None => found.push(path),
    }
}

/// The comma-separated items of a brace group whose `{` was already read.
fn split_group(s: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&s[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

#[test]
fn no_module_imports_from_a_higher_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = BTreeSet::new();
    let mut checked = 0;
    for file in &files {
        let module = module_of(file, &src);
        // lib.rs and the binary (main.rs, cli.rs) are the top: they may name anything.
        if module == "lib" || module == "main" || module == "cli" {
            continue;
        }
        let Some(own) = layer_of(&module) else {
            violations.insert(format!(
                "{}: module `{module}` has no layer in the table",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for path in crate_paths(&strip_comments(&text)) {
            checked += 1;
            match layer_of(&path) {
                Some(target) if target > own => {
                    violations.insert(format!(
                        "{} (L{own}) imports `crate::{path}` (L{target})",
                        file.strip_prefix(root).unwrap().display()
                    ));
                }
                Some(_) => {}
                None => {
                    violations.insert(format!(
                        "{}: `crate::{path}` has no layer in the table",
                        file.strip_prefix(root).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} paths found: the parser is broken"
    );
    assert!(
        violations.is_empty(),
        "{} layering violations:\n{}",
        violations.len(),
        violations.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_parser_finds_grouped_nested_and_inline_paths() {
    let code = strip_comments(
        "use crate::{a, b::{c, d::E}};\n// crate::commented\nlet x = crate::f::g(1); \"crate::s\"",
    );
    assert_eq!(crate_paths(&code), ["a", "b::c", "b::d::E", "f::g"]);
    assert_eq!(layer_of("upstream::failure::FailureKind"), Some(0));
    assert_eq!(layer_of("upstream::FailureKind"), Some(3));
    assert_eq!(layer_of("modelx"), None);
}
