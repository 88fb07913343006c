//! Integration tests of the data plane, run in-process on real sockets, in one test
//! binary (one link instead of one per file).
//!
//! Everything here shares one process: the log capture installs one global subscriber
//! (once, see `common::Logs`), and a test that looks at process-wide state (sockets in
//! `/proc`, child processes) only looks at what it created itself.

// Helpers shared by the tests set up sockets and backends; a failure there is a
// failed test, and unwrap/expect say so where they happen.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed setup is a failed test"
)]

mod common;
mod handoff;
mod happy_eyeballs;
mod health;
mod listen;
mod liveness;
mod observability;
mod on_demand;
