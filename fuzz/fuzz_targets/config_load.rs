//! Any bytes given as a config file: the loader returns a Config or errors, never
//! panics, and every error has a position inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(errors) = tidegate_config::load_str(text, Some(std::path::Path::new("/tmp/fuzz.toml"))) {
        let lines = text.lines().count().max(1) + 1;
        for e in errors.iter() {
            assert!(e.line >= 1 && e.line <= lines, "{e}");
        }
    }
});
