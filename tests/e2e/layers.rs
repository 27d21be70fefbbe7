//! The host's folders import in one direction only. Reads `host/src`, finds
//! every path into the crate (`crate::x`, `super::x` that climbs out of a
//! folder, and `use crate::{x, y}` groups), and fails when a module reaches
//! a layer above its own. Layers from the top: the command line, `deploy`,
//! `doors`, `ops`, `pipeline`, `runtime`, `capabilities`, `resources`;
//! `config` may use `core`, and `core` uses nothing of the host. A folder
//! not in this list fails the test too, so a new one has to take a place.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level modules of `host/src`, highest first. A module may import
/// modules of a strictly lower rank, and itself.
const LAYERS: &[(&str, u32)] = &[
    ("main", 10),
    ("cli", 9),
    ("deploy", 8),
    ("doors", 7),
    ("ops", 6),
    ("pipeline", 5),
    ("runtime", 4),
    ("capabilities", 3),
    ("resources", 2),
    ("config", 1),
    ("core", 0),
];

fn rank(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

fn host_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/src")
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

/// The module path of a file: `doors/unix.rs` is `[doors, unix]`,
/// `doors/mod.rs` is `[doors]`, `main.rs` is `[]`.
fn module_path(file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(host_src()).unwrap();
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "main" {
        parts.push(stem.to_owned());
    }
    parts
}

/// Drops comments and the contents of string literals, so that prose and
/// messages that mention `crate::x` are not taken for imports.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for d in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if d == '\\' {
                        escaped = true;
                    } else if d == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            // A char literal such as '"' would otherwise open a string.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                let mut it = rest.chars();
                match (it.next(), it.next(), it.next()) {
                    (Some('\\'), Some(_), Some('\'')) => {
                        chars.nth(2);
                    }
                    (Some(_), Some('\''), _) => {
                        chars.nth(1);
                    }
                    _ => out.push(c),
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// The top-level modules a file's code reaches, with the line of each.
fn reached(file: &Path) -> Vec<(String, usize)> {
    let depth = module_path(file).len();
    reached_in(&std::fs::read_to_string(file).unwrap(), depth)
}

/// The top-level modules `text` reaches, for a file `depth` modules deep.
fn reached_in(text: &str, depth_of_file: usize) -> Vec<(String, usize)> {
    let code = code_only(text);
    let mut found = Vec::new();
    for (number, line) in code.lines().enumerate() {
        let number = number + 1;
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            rest = &rest[at + "crate::".len()..];
            // `$crate::` is a macro's own crate; `foo_crate::` is not ours.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            for module in heads(rest) {
                found.push((module, number));
            }
        }
        // `super::` out of a top-level folder's `mod.rs` (or a file at the
        // top) reaches a sibling folder.
        let mut rest = line;
        while let Some(at) = rest.find("super::") {
            rest = &rest[at..];
            let mut depth = 0;
            while let Some(after) = rest.strip_prefix("super::") {
                depth += 1;
                rest = after;
            }
            if depth >= depth_of_file {
                for module in heads(rest) {
                    found.push((module, number));
                }
            }
        }
    }
    found
}

/// The first path segment after `crate::`: one name, or every name of a
/// `{a, b::c, d}` group.
fn heads(rest: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = rest.strip_prefix('{') else {
        return vec![ident(rest)];
    };
    let mut names = Vec::new();
    let mut depth = 0;
    let mut start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => start = true,
            c if start && !c.is_whitespace() => {
                names.push(ident(&group[i..]));
                start = false;
            }
            _ => {}
        }
    }
    names
}

#[test]
fn every_module_imports_only_from_layers_below_its_own() {
    let mut files = Vec::new();
    rust_files(&host_src(), &mut files);
    files.sort();
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut violations = Vec::new();
    let mut tops = BTreeSet::new();
    for file in &files {
        let path = module_path(file);
        let own = path.first().map_or("main", String::as_str).to_owned();
        tops.insert(own.clone());
        let Some(own_rank) = rank(&own) else {
            violations.push(format!(
                "{}: top-level module `{own}` has no place in the layers",
                file.display()
            ));
            continue;
        };
        for (module, line) in reached(file) {
            if module == own || module.is_empty() {
                continue;
            }
            let ok = match (own.as_str(), rank(&module)) {
                // `core` is the bottom: it uses nothing of the host.
                ("core", _) => false,
                (_, Some(r)) => r < own_rank,
                (_, None) => false,
            };
            if !ok {
                violations.push(format!(
                    "{}:{line}: `{own}` imports `{module}`, which is not below it",
                    file.strip_prefix(host_src()).unwrap().display()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the layers:\n{}",
        violations.join("\n")
    );
    // The check itself must see the layers it names.
    for layer in [
        "cli",
        "doors",
        "pipeline",
        "runtime",
        "capabilities",
        "config",
        "core",
    ] {
        assert!(tops.contains(layer), "no `{layer}` folder in host/src");
    }
}

#[test]
fn the_check_sees_imports_in_every_form() {
    let sample = "use crate::{config::Config, doors::{a, b}, core};\n\
                  let x = crate::pipeline::Pipeline::new(); // crate::cli in a comment\n\
                  let s = \"crate::deploy in a string\"; let q = '\"';\n\
                  $crate::ignored::x; use super::super::ops::status; use super::sibling;";
    let seen: Vec<String> = reached_in(sample, 2).into_iter().map(|(m, _)| m).collect();
    assert_eq!(seen, ["config", "doors", "core", "pipeline", "ops"]);
    // From a file one level deep, `super::x` is already a top-level module.
    let seen: Vec<String> = reached_in("use super::runtime::Plugin;", 1)
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    assert_eq!(seen, ["runtime"]);
}
