//! tidegate's configuration: a TOML file is read into a spanned document, walked by a
//! validator that collects **every** error (file:line:col, key path, what was expected),
//! and turned into the typed [`Config`] the data plane uses.
//!
//! This crate does no I/O beyond reading the file and looking up user and group names.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
pub mod defaults;
pub mod model;

pub use addr::{ListenAddr, UnixListen, UpstreamAddr};
pub use model::*;

/// The embedded quickstart config served by `tidegate run` with no `--config`.
pub const QUICKSTART: &str = include_str!("../../../examples/quickstart.toml");
