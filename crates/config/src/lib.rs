//! tidegate's configuration: a TOML file is read into a spanned document, walked by a
//! validator that collects **every** error (file:line:col, key path, what was expected),
//! and turned into the typed [`Config`] the data plane uses.
//!
//! ```
//! let config = tidegate_config::load_str(
//!     r#"
//!     [listeners.web]
//!     listen = ["127.0.0.1:0"]
//!     [[listeners.web.routes]]
//!     respond = { status = 200, body = "ok" }
//!     "#,
//!     None,
//! )
//! .unwrap();
//! assert_eq!(config.listeners[0].name, "web");
//!
//! let errors = tidegate_config::load_str("[server]\nworkers = \"4x\"\n", None).unwrap_err();
//! assert_eq!(
//!     errors.to_string(),
//!     "<quickstart>:1:1: listeners: missing; a config needs at least one [listeners.NAME] table\n\
//!      <quickstart>:2:11: server.workers: expected a whole number, found \"4x\"",
//! );
//! ```
//!
//! This crate does no I/O beyond reading the file and looking up user and group names.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
pub mod defaults;
mod error;
mod kinds;
pub mod model;
pub mod parse;
pub mod tls;
mod validate;

use std::path::Path;

pub use addr::{ListenAddr, UnixListen, UpstreamAddr};
pub use error::{ConfigError, Errors};
pub use model::*;

/// The embedded quickstart config served by `tidegate run` with no `--config`.
pub const QUICKSTART: &str = include_str!("../../../examples/quickstart.toml");

/// The name used in messages for the embedded quickstart (no file).
pub const QUICKSTART_NAME: &str = "<quickstart>";

/// Reads and validates the config file at `path`.
///
/// An unreadable file is one error naming the path and what the OS said
/// (`tidegate.toml: cannot read: No such file or directory (ENOENT)`).
pub fn load_file(path: &Path) -> Result<Config, Errors> {
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(&text, Some(path)),
        Err(e) => {
            let meaning = os_error_text(&e);
            Err(Errors(vec![ConfigError {
                file: path.display().to_string(),
                line: 0,
                col: 0,
                key: String::new(),
                message: format!("cannot read: {meaning}"),
            }]))
        }
    }
}

/// Validates config text.
///
/// `origin` is the file the text came from: messages name it as given
/// (`tidegate.toml:14:9: …`), [`Config::source`] keeps it, and relative `unix:` paths
/// resolve against its folder. With `None` (the embedded quickstart) messages say
/// `<quickstart>` and relative paths resolve against the current directory.
pub fn load_str(text: &str, origin: Option<&Path>) -> Result<Config, Errors> {
    let file = origin.map_or_else(|| QUICKSTART_NAME.to_owned(), |p| p.display().to_string());
    let mut sink = error::Sink::new(file, text);
    let doc = match toml_edit::Document::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            sink.push(
                e.span(),
                "",
                format!("invalid TOML: {}", e.message().trim_end()),
            );
            return Err(sink.finish());
        }
    };
    let base = origin.and_then(Path::parent).unwrap_or(Path::new(""));
    match validate::config(doc.as_table(), &mut sink, base) {
        Some(config) => Ok(Config {
            source: origin.map(Path::to_path_buf),
            warnings: sink.take_warnings(),
            ..config
        }),
        None => Err(sink.finish()),
    }
}

/// The embedded quickstart ([`QUICKSTART`]), validated.
///
/// # Panics
///
/// Never in a released build: the quickstart is compiled in and a test loads it, so an
/// invalid one is a bug caught before release.
pub fn quickstart() -> Config {
    match load_str(QUICKSTART, None) {
        Ok(config) => config,
        Err(errors) => panic!("the embedded quickstart config is invalid (a bug):\n{errors}"),
    }
}

/// What the OS said, as an operator reads it: `No such file or directory (ENOENT)`.
pub(crate) fn os_error_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let errno = nix::errno::Errno::from_raw(code);
            format!("{} ({errno:?})", errno.desc())
        }
        None => e.to_string(),
    }
}
