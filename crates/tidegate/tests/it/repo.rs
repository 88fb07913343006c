//! The repository stands alone: no file tracked by git outside `docs/` cites the design
//! notes, the style guide or the shared folder that lived next to the repository and
//! are not in a clone. The contracts they held are in `docs/design.md`; a reference to
//! them sends a reader to a file they do not have.
//!
//! The patterns are built from pieces, so this file does not cite them itself and is
//! scanned like every other one.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What must not be cited, each built from two pieces (see the module doc).
fn forbidden() -> [String; 3] {
    [
        ["DESIGN", ".md"].concat(),
        ["STYLE", ".md"].concat(),
        ["..", "/shared"].concat(),
    ]
}

/// The workspace root: this crate sits in `crates/tidegate`.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every path tracked by git, relative to `root`. Fails (never skips) without git or
/// outside a git checkout: the check would otherwise pass without looking.
fn tracked_files(root: &Path) -> Vec<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "this test lists the tracked files with `git ls-files`, and git could not \
                 run ({e}); install git to run it"
            )
        });
    assert!(
        out.status.success(),
        "`git ls-files` in {} failed ({}): {}; this test needs a git checkout",
        root.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out.stdout
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// `path:line: text` of every line of `bytes` that contains one of `patterns`.
fn hits(path: &str, bytes: &[u8], patterns: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let hit = patterns
            .iter()
            .any(|p| line.windows(p.len()).any(|w| w == p.as_bytes()));
        if hit {
            let text = String::from_utf8_lossy(line);
            let text: String = text.trim().chars().take(120).collect();
            found.push(format!("{path}:{}: {text}", n + 1));
        }
    }
    found
}

#[test]
fn no_tracked_file_outside_docs_cites_a_file_outside_the_repository() {
    let root = workspace_root();
    let patterns = forbidden();
    let files = tracked_files(&root);
    assert!(
        files.iter().any(|f| f == "Cargo.toml"),
        "`git ls-files` in {} does not list Cargo.toml: not this workspace's checkout",
        root.display()
    );
    let mut found = Vec::new();
    for file in files.iter().filter(|f| !f.starts_with("docs/")) {
        let path = root.join(file);
        // A tracked file deleted in the work tree, or a symlink, cites nothing itself.
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            _ => continue,
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        found.extend(hits(file, &bytes, &patterns));
    }
    let mut report = String::new();
    for line in &found {
        let _ = writeln!(report, "  {line}");
    }
    assert!(
        found.is_empty(),
        "{} line(s) outside docs/ cite {patterns:?}, files that are not in the \
         repository; cite docs/design.md (or another file in the repository) instead:\n{report}",
        found.len()
    );
}

#[test]
fn the_scan_finds_each_pattern_with_its_line() {
    let patterns = forbidden();
    let text = format!(
        "fine\nsee {}\nalso fine\n{} and {}\n",
        patterns[0], patterns[1], patterns[2]
    );
    assert_eq!(
        hits("x.rs", text.as_bytes(), &patterns),
        [
            format!("x.rs:2: see {}", patterns[0]),
            format!("x.rs:4: {} and {}", patterns[1], patterns[2]),
        ]
    );
    // The file that replaces them is not one of them.
    assert!(hits("x.rs", b"see docs/design.md and docs/style", &patterns).is_empty());
}
