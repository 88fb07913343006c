//! Imports point one way: within every crate of the workspace, no module imports a
//! module that imports it back, directly or through others (ARCHITECTURE.md, "Crates":
//! each crate's layering, from the binary down to the sockets).
//!
//! The check reads each crate's source as text: every `use` tree and every inline
//! `crate::…`, `super::…` and `self::…` path outside comments and outside the
//! `#[cfg(test)] mod tests` block at the end of a file names the module it reaches
//! (the longest prefix that is a module file). A path to one of the file's own
//! ancestors is not an edge: a child module may use what its parent declares, as Rust
//! lays out every folder. The edges left must form no circle (strongly connected
//! component of more than one module).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside its crate: `[]` is the crate root, `["http", "body"]` is
/// `crate::http::body`.
type ModPath = Vec<String>;

/// The workspace root: this crate sits in `crates/tidegate`.
fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file under `src` defines.
fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: ModPath = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a file without comments, without its trailing test module, and with
/// string literals blanked (a URL in a string is not a path).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        break;
                    }
                    prev = c;
                }
                out.push(' ');
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            // A char literal holding a quote would open a string above.
            '\'' if chars.peek() == Some(&'"') => {
                chars.next();
                chars.next();
                out.push_str("' '");
            }
            c => out.push(c),
        }
    }
    out
}

/// The paths of a `use` tree (`a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`).
fn expand_use(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let leaf = tree.split(" as ").next().unwrap_or(tree).trim();
        let path = match (prefix.is_empty(), leaf) {
            (_, "self") => prefix.to_owned(),
            (true, _) => leaf.to_owned(),
            (false, _) => format!("{prefix}::{leaf}"),
        };
        out.push(path);
        return;
    };
    let head = tree[..open].trim().trim_end_matches("::");
    let prefix = match (prefix.is_empty(), head.is_empty()) {
        (true, _) => head.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}::{head}"),
    };
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand_use(&prefix, &inner[start..i], out);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !inner[start..].trim().is_empty() {
        expand_use(&prefix, &inner[start..], out);
    }
}

/// Every module path `code` (of module `here`) names, made absolute; a path that starts
/// with the name of one of `here`'s child `modules` is relative to `here`.
fn paths_in(code: &str, here: &ModPath, modules: &BTreeSet<ModPath>) -> Vec<ModPath> {
    let mut raw = Vec::new();
    let mut rest = code;
    // `use` statements, braces and all.
    while let Some(i) = rest.find("use ") {
        let boundary = i == 0 || !rest[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        let after = &rest[i + 4..];
        match after.find(';') {
            Some(end) if boundary => {
                expand_use("", &after[..end], &mut raw);
                rest = &after[end..];
            }
            _ => rest = after,
        }
    }
    // Inline paths (`crate::a::B::new()`), whether in a `use` or not.
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0
                && (bytes[at - 1].is_ascii_alphanumeric()
                    || bytes[at - 1] == b'_'
                    || bytes[at - 1] == b':')
            {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            raw.push(code[at..end].trim_end_matches(':').to_owned());
        }
    }
    let mut out = Vec::new();
    for path in raw {
        let mut parts = path.split("::").filter(|p| !p.is_empty());
        let mut abs = match parts.next() {
            Some("crate") => Vec::new(),
            Some("self") => here.clone(),
            Some("super") => {
                let mut p = here.clone();
                p.pop();
                p
            }
            Some(first) => {
                let mut child = here.clone();
                child.push(first.to_owned());
                if !modules.contains(&child) {
                    // An external crate or a local name.
                    continue;
                }
                child
            }
            None => continue,
        };
        for part in parts {
            if part == "super" {
                abs.pop();
            } else {
                abs.push(part.to_owned());
            }
        }
        out.push(abs);
    }
    out
}

/// The longest prefix of `path` that is a module of `modules`.
fn resolve(path: &ModPath, modules: &BTreeSet<ModPath>) -> ModPath {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

/// The import edges between the modules of the crate whose sources are `files`
/// (module → text of its file).
fn edges(files: &BTreeMap<ModPath, String>) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let modules: BTreeSet<ModPath> = files.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, text) in files {
        let mut to = BTreeSet::new();
        for path in paths_in(&code_of(text), module, &modules) {
            let target = resolve(&path, &modules);
            // Itself, or an ancestor it is declared in.
            if module.starts_with(&target) {
                continue;
            }
            to.insert(target);
        }
        graph.insert(module.clone(), to);
    }
    graph
}

/// Strongly connected components of more than one module (Tarjan's algorithm).
fn circles(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        found: Vec<Vec<ModPath>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a ModPath) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            let graph = self.graph;
            for w in graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

fn name(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".to_owned()
    } else {
        m.join("::")
    }
}

#[test]
fn no_module_of_any_crate_imports_one_that_imports_it_back() {
    let crates = workspace_root().join("crates");
    let mut report = String::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(&crates).expect("read crates/") {
        let src = entry.expect("crates/ entry").path().join("src");
        if !src.is_dir() {
            continue;
        }
        let mut paths = Vec::new();
        rust_files(&src, &mut paths);
        let files: BTreeMap<ModPath, String> = paths
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p)
                    .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                (module_of(&src, p), text)
            })
            .collect();
        checked += files.len();
        let graph = edges(&files);
        for circle in circles(&graph) {
            let members: Vec<String> = circle.iter().map(name).collect();
            report.push_str(&format!("  {}: {}\n", src.display(), members.join(" <-> ")));
            for m in &circle {
                let back: Vec<String> = graph[m]
                    .iter()
                    .filter(|t| circle.contains(t))
                    .map(name)
                    .collect();
                report.push_str(&format!("      {} imports {}\n", name(m), back.join(", ")));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} source files found under {}",
        crates.display()
    );
    assert!(report.is_empty(), "module import circles:\n{report}");
}

#[test]
fn the_check_sees_a_circle_through_use_trees_and_inline_paths() {
    let files: BTreeMap<ModPath, String> = [
        (vec![], "mod a; mod b; mod c; mod d;".to_owned()),
        (
            vec!["a".into()],
            "use crate::{b::{X, Y as Z}, d};\n// use crate::c;".to_owned(),
        ),
        (
            vec!["b".into()],
            "fn f() { crate::c::g(\"crate::a\") }".to_owned(),
        ),
        (vec!["c".into()], "use super::a::T;".to_owned()),
        (vec!["d".into()], "use crate::d::x; use self::y;".to_owned()),
    ]
    .into_iter()
    .collect();
    let graph = edges(&files);
    assert_eq!(
        graph[&vec!["a".to_owned()]],
        [vec!["b".to_owned()], vec!["d".to_owned()]]
            .into_iter()
            .collect(),
        "a use tree names b and d; a commented-out path names nothing"
    );
    assert_eq!(
        graph[&vec!["b".to_owned()]],
        [vec!["c".to_owned()]].into_iter().collect(),
        "an inline path counts, a path inside a string does not"
    );
    assert!(
        graph[&vec!["d".to_owned()]].is_empty(),
        "a module's own paths are no edge"
    );
    assert_eq!(
        circles(&graph),
        [vec![
            vec!["a".to_owned()],
            vec!["b".to_owned()],
            vec!["c".to_owned()]
        ]]
    );
}

#[test]
fn a_child_may_use_its_parent() {
    let files: BTreeMap<ModPath, String> = [
        (vec![], "pub mod http; use http::Listener;".to_owned()),
        (
            vec!["http".into()],
            "mod body; pub use body::Body; pub struct Listener;".to_owned(),
        ),
        (
            vec!["http".into(), "body".into()],
            "use super::Listener; use crate::http::Listener as L;".to_owned(),
        ),
    ]
    .into_iter()
    .collect();
    let graph = edges(&files);
    assert_eq!(
        graph[&vec!["http".to_owned()]],
        [vec!["http".to_owned(), "body".to_owned()]]
            .into_iter()
            .collect(),
        "a path relative to a child module is an edge to it"
    );
    assert!(circles(&graph).is_empty());
}
