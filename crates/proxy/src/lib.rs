//! tidegate's data plane: listeners on TCP and Unix sockets, the HTTP/1.1 proxy,
//! upstream connection pools, Happy Eyeballs, and the drain that ends it all.
//!
//! This crate never reads the environment, installs signal handlers or exits the
//! process: the binary wires it (STYLE.md).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod endpoint;
pub mod listen;
