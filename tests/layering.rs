//! The house's floors, checked on the source itself: no file imports one that imports it back.
//!
//! Every `.rs` file of every crate in the workspace (tests, benches and the test kit aside) is
//! a node; an edge `a → b` is a path in `a` (`use crate::x::y`, `super::z`, an inline
//! `crate::x::f()`) that names an item of the module file `b`. Edges between a module and its
//! own submodules (a parent re-exporting a child, a child using its parent's items) are one
//! unit and do not count. Any strongly connected component of two or more files is an import
//! loop, and the test names the files and the paths that tie them.
//!
//! Crate boundaries are the compiler's business: a crate cannot depend on one that depends on
//! it, and `scripts/check-layering.sh` checks which crates each one pulls in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One crate's source tree.
struct CrateTree {
    /// The crate root file (lib.rs or main.rs), relative to the workspace.
    root: &'static str,
    /// Files under the root's folder that belong to another crate.
    exclude: &'static [&'static str],
}

const CRATES: &[CrateTree] = &[
    CrateTree {
        root: "src/lib.rs",
        exclude: &["src/core", "src/bus", "src/main.rs", "src/serve.rs"],
    },
    CrateTree {
        root: "src/main.rs",
        exclude: &[],
    },
    CrateTree {
        root: "src/core/lib.rs",
        exclude: &[],
    },
    CrateTree {
        root: "src/bus/lib.rs",
        exclude: &[],
    },
    CrateTree {
        root: "worker-reporter/src/lib.rs",
        exclude: &["worker-reporter/src/main.rs"],
    },
];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Module path (segments below the crate root) → file, for one crate.
fn modules(tree: &CrateTree) -> BTreeMap<Vec<String>, PathBuf> {
    let ws = workspace();
    let root = ws.join(tree.root);
    let mut out = BTreeMap::new();
    out.insert(Vec::new(), root.clone());
    if tree.root == "src/main.rs" {
        // The binary's own modules.
        out.insert(vec!["serve".to_owned()], ws.join("src/serve.rs"));
        return out;
    }
    let dir = root.parent().unwrap().to_path_buf();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            let rel = p.strip_prefix(&ws).unwrap().to_string_lossy().into_owned();
            if tree.exclude.iter().any(|e| rel.starts_with(e)) {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|e| e != "rs") || p == root {
                continue;
            }
            let under = p.strip_prefix(&dir).unwrap();
            let mut segs: Vec<String> = under
                .iter()
                .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            if segs.last().is_some_and(|s| s == "mod") {
                segs.pop();
            }
            out.insert(segs, p);
        }
    }
    out
}

/// Source without comments and string literals (so paths in docs and strings do not count).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('x' or '\n'); lifetimes ('a) are left alone.
            let end = b[i + 1..]
                .iter()
                .position(|&c| c == b'\'')
                .map_or(b.len(), |p| i + 2 + p);
            i = end;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap().trim().to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|p| format!("{prefix}{p}"))
        .collect()
}

/// Every module-relative path a file names: `use` trees and inline `crate::`/`super::`/
/// `self::` paths, plus bare `use child::…` of its own submodules.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        rest = &rest[at + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = rest.find(';') else { break };
        let tree: String = rest[..end].split_whitespace().collect::<Vec<_>>().join(" ");
        out.extend(expand(&tree.replace(":: ", "::").replace(" ::", "::")));
        rest = &rest[end..];
    }
    for kw in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(kw) {
            let start = from + i;
            let ok_before = code[..start]
                .chars()
                .last()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'));
            let end = code[start..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| start + e);
            if ok_before {
                out.push(code[start..end].trim_end_matches(':').to_owned());
            }
            from = end.max(start + kw.len());
        }
    }
    out
}

/// The module file a path from module `from` lands in, if any.
fn resolve(
    path: &str,
    from: &[String],
    mods: &BTreeMap<Vec<String>, PathBuf>,
) -> Option<Vec<String>> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let (mut base, rest): (Vec<String>, &[&str]) = match segs.first()? {
        &"crate" => (Vec::new(), &segs[1..]),
        &"self" => (from.to_vec(), &segs[1..]),
        &"super" => {
            let mut b = from.to_vec();
            let mut i = 0;
            while segs.get(i) == Some(&"super") {
                b.pop();
                i += 1;
            }
            (b, &segs[i..])
        }
        // A bare path in `use` is relative to the module when it names a child module.
        first => {
            let mut child = from.to_vec();
            child.push((*first).to_owned());
            if !mods.contains_key(&child) {
                return None;
            }
            (from.to_vec(), &segs[..])
        }
    };
    for s in rest {
        let mut next = base.clone();
        next.push((*s).to_owned());
        if mods.contains_key(&next) {
            base = next;
        } else {
            break;
        }
    }
    mods.contains_key(&base).then_some(base)
}

fn is_prefix(a: &[String], b: &[String]) -> bool {
    a.len() <= b.len() && a == &b[..a.len()]
}

/// Strongly connected components of two or more nodes (Tarjan).
fn loops(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct T<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a Path, usize>,
        low: BTreeMap<&'a Path, usize>,
        stack: Vec<&'a Path>,
        on: BTreeSet<&'a Path>,
        next: usize,
        out: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a Path) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        if let Some(ws) = t.edges.get(v) {
            for w in ws {
                let w: &Path = w;
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let l = t.low[v].min(t.low[w]);
                    t.low.insert(v, l);
                } else if t.on.contains(w) {
                    let l = t.low[v].min(t.index[w]);
                    t.low.insert(v, l);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_path_buf());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_path()) {
            visit(&mut t, v);
        }
    }
    t.out
}

type Why = BTreeMap<(PathBuf, PathBuf), String>;

fn graph() -> (BTreeMap<PathBuf, BTreeSet<PathBuf>>, Why, usize) {
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    let mut why = Why::new();
    let mut files = 0;
    for tree in CRATES {
        let mods = modules(tree);
        for (m, file) in &mods {
            files += 1;
            let code = code_only(&std::fs::read_to_string(file).unwrap());
            edges.entry(file.clone()).or_default();
            for p in paths(&code) {
                let Some(target) = resolve(&p, m, &mods) else {
                    continue;
                };
                if is_prefix(&target, m) || is_prefix(m, &target) {
                    continue;
                }
                let to = mods[&target].clone();
                why.entry((file.clone(), to.clone())).or_insert(p);
                edges.entry(file.clone()).or_default().insert(to);
            }
        }
    }
    (edges, why, files)
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let (edges, why, files) = graph();
    assert!(files > 60, "only {files} files found: the walk is broken");
    let ws = workspace();
    // Known edges, so a parser that sees nothing cannot pass.
    for (from, to) in [
        ("src/http/completions.rs", "src/proxy/mod.rs"),
        ("src/plane/consume.rs", "src/fleet_actor.rs"),
        (
            "src/core/kv_events/decode.rs",
            "src/core/kv_events/value.rs",
        ),
    ] {
        assert!(
            edges[&ws.join(from)].contains(&ws.join(to)),
            "the edge {from} -> {to} was not seen"
        );
    }
    let rel = |p: &Path| p.strip_prefix(&ws).unwrap().display().to_string();
    let found = loops(&edges);
    let report: Vec<String> = found
        .iter()
        .map(|scc| {
            let set: BTreeSet<&PathBuf> = scc.iter().collect();
            let ties: Vec<String> = why
                .iter()
                .filter(|((a, b), _)| set.contains(a) && set.contains(b))
                .map(|((a, b), p)| format!("  {} -> {} ({p})", rel(a), rel(b)))
                .collect();
            format!("loop of {} files:\n{}", scc.len(), ties.join("\n"))
        })
        .collect();
    assert!(report.is_empty(), "import loops:\n{}", report.join("\n"));
}

/// The checker itself finds a loop, resolves `super`, and ignores parent ↔ child edges.
#[test]
fn the_checker_sees_loops_and_resolves_paths() {
    let p = |s: &str| PathBuf::from(s);
    let mut edges = BTreeMap::new();
    edges.insert(p("a"), BTreeSet::from([p("b")]));
    edges.insert(p("b"), BTreeSet::from([p("c")]));
    edges.insert(p("c"), BTreeSet::from([p("a")]));
    edges.insert(p("d"), BTreeSet::from([p("a")]));
    let found = loops(&edges);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].len(), 3);

    let mods: BTreeMap<Vec<String>, PathBuf> = [
        (vec![], p("lib.rs")),
        (vec!["x".to_owned()], p("x/mod.rs")),
        (vec!["x".to_owned(), "y".to_owned()], p("x/y.rs")),
        (vec!["z".to_owned()], p("z.rs")),
    ]
    .into_iter()
    .collect();
    let y = vec!["x".to_owned(), "y".to_owned()];
    assert_eq!(
        resolve("super::super::z::Thing", &y, &mods),
        Some(vec!["z".into()])
    );
    assert_eq!(resolve("crate::x::y::f", &[], &mods), Some(y.clone()));
    assert_eq!(resolve("std::fmt", &y, &mods), None);
    assert_eq!(
        expand("crate::{a::{b, c as d}, e}"),
        ["crate::a::b", "crate::a::c", "crate::e"]
    );
    let code = code_only("// use crate::z;\nlet s = \"crate::z\";\nuse super::{Q, w::R};\n");
    assert_eq!(paths(&code), ["super::Q", "super::w::R", "super"]);
}
