//! tidegate's shared networking parts: the sockets every other crate listens and
//! connects on.
//!
//! - [`endpoint`]: a connection is TCP or Unix, and TCP-only socket options exist only on
//!   the TCP type.
//! - [`listen`]: binding and accepting on TCP and Unix addresses, with the rules for Unix
//!   socket files (permissions from the start, stale files, removal on drop).
//! - [`errno`]: OS errors described the way an operator searches for them.
//! - [`fdpass`]: handing open descriptors to another process (`SCM_RIGHTS` over a
//!   socket pair), for the binary upgrade.
//!
//! Both the data plane (`tidegate-proxy`) and the admin API (`tidegate-admin`) build on
//! this crate, so the admin API uses the same sockets without depending on the data
//! plane. Like every library crate here, it never reads the environment, installs signal
//! handlers or exits the process.
// `deny`, not `forbid`: the one exception is taking ownership of the descriptors a
// received message carries, alone in `fdpass::recv_raw`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod endpoint;
pub mod errno;
pub mod fdpass;
pub mod listen;
