//! The import rule, read from the source: every `crate::` path in `src/` names the top-level
//! module it reaches, and
//! - the leaves (`util`, `provenance`, `diagnostic`) import only leaves below them;
//! - `engine` imports no kind (`kinds`), no command (`cli`) and no domain module;
//! - domain modules never import the engine's stage contract (`engine::stage`), a kind or a
//!   command;
//! - no import cycle exists between top-level modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LEAVES: [(&str, &[&str]); 3] = [
    ("util", &[]),
    ("provenance", &[]),
    ("diagnostic", &["util"]),
];
const DOMAIN: [&str; 7] = [
    "market", "quality", "sql", "train", "backtest", "paper", "report",
];

/// One reference from a file to a top-level module, with the path as written.
#[derive(Debug)]
struct Import {
    file: PathBuf,
    line: usize,
    path: String,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `src/engine/plan.rs` -> `engine`.
fn owner(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// Every `crate::a::b` path in `line` (a `use crate::{x, y::z}` group gives each member),
/// comments and string contents left out.
fn crate_paths(line: &str) -> Vec<String> {
    let code = match line.find("//") {
        Some(at) => &line[..at],
        None => line,
    };
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '"') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            out.extend(
                group[..end]
                    .split(',')
                    .map(|member| member.trim().to_owned())
                    .filter(|member| !member.is_empty()),
            );
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            out.push(rest[..end].trim_end_matches(':').to_owned());
        }
    }
    out
}

/// Multi-line `use crate::{...}` groups joined onto one line, so each member is seen.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, line) in text.lines().enumerate() {
        if let Some((start, mut joined)) = pending.take() {
            joined.push_str(line.trim());
            if line.contains('}') {
                out.push((start, joined));
            } else {
                pending = Some((start, joined));
            }
            continue;
        }
        if line.contains("crate::{") && !line.contains('}') {
            pending = Some((index + 1, line.to_owned()));
        } else {
            out.push((index + 1, line.to_owned()));
        }
    }
    out
}

fn imports() -> BTreeMap<String, Vec<Import>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut by_module: BTreeMap<String, Vec<Import>> = BTreeMap::new();
    for file in files {
        let Some(module) = owner(&src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let entry = by_module.entry(module.clone()).or_default();
        for (line, code) in logical_lines(&text) {
            for path in crate_paths(&code) {
                let target = path.split("::").next().unwrap_or("");
                if !target.is_empty() && target != module && target != "self" {
                    entry.push(Import {
                        file: file.strip_prefix(src.parent().unwrap()).unwrap().to_owned(),
                        line,
                        path,
                    });
                }
            }
        }
    }
    by_module
}

fn top(import: &Import) -> &str {
    import.path.split("::").next().unwrap_or("")
}

fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Depth-first search from each module; a back edge closes a cycle.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            found.push(cycle);
            return;
        }
        if done.contains(node) {
            return;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, stack, done, found);
        }
        stack.pop();
        done.insert(node.to_owned());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn imports_run_one_way() {
    let imports = imports();
    assert!(imports.contains_key("engine") && imports.contains_key("kinds"));
    let mut problems = Vec::new();
    for (module, list) in &imports {
        for import in list {
            let target = top(import);
            let allowed = if let Some((_, below)) = LEAVES.iter().find(|(name, _)| name == module) {
                below.contains(&target)
            } else if module == "engine" {
                LEAVES.iter().any(|(name, _)| *name == target)
            } else if DOMAIN.contains(&module.as_str()) {
                target != "kinds" && target != "cli" && !import.path.starts_with("engine::stage")
            } else if module == "kinds" {
                target != "cli"
            } else {
                true
            };
            if !allowed {
                problems.push(format!(
                    "{}:{}: `{module}` imports `crate::{}`",
                    import.file.display(),
                    import.line,
                    import.path
                ));
            }
        }
    }
    let graph: BTreeMap<String, BTreeSet<String>> = imports
        .iter()
        .map(|(module, list)| {
            (
                module.clone(),
                list.iter().map(|i| top(i).to_owned()).collect(),
            )
        })
        .collect();
    for cycle in cycles(&graph) {
        problems.push(format!("import cycle: {}", cycle.join(" -> ")));
    }
    assert!(
        problems.is_empty(),
        "the import rule is broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_sees_what_it_must() {
    assert_eq!(
        crate_paths("use crate::{engine::stage::StageKind, util::time}; // crate::cli"),
        ["engine::stage::StageKind", "util::time"]
    );
    assert_eq!(
        crate_paths("let x = crate::kinds::BUILTIN;"),
        ["kinds::BUILTIN"]
    );
    assert!(crate_paths("let s = \"crate::kinds\"; notcrate::x").is_empty());
    let lines = logical_lines("use crate::{\n    a::b,\n    c,\n};\nfn f() {}");
    assert_eq!(crate_paths(&lines[0].1), ["a::b", "c"]);
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["a".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]
    .into();
    assert_eq!(cycles(&graph), [vec!["a", "b", "a"]]);
}
