//! End-to-end tests of the `tidegate` binary on real sockets, in one test binary (one
//! link instead of one per file). Every test starts its own instance of the built binary
//! (`CARGO_BIN_EXE_tidegate`), so tests share this process but not a proxy.

// Helpers shared by the tests set up sockets, backends and files; a failure there is
// a failed test, and unwrap/expect say so where they happen.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed setup is a failed test"
)]

mod access_log;
mod admin;
mod bodies;
mod browser;
mod buffering;
mod grpc;
mod h2;
mod h2_cookie;
mod health;
mod hygiene;
mod keepalive;
mod layers;
mod lifecycle;
mod on_demand;
mod panic;
mod passive;
mod pool;
mod proxy;
mod reload;
mod repo;
mod slow_clients;
mod systemd;
mod tcp;
mod tls;
mod tls_h2;
mod upgrade;
mod upstream_tls;
