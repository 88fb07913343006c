//! End-to-end tests of the `tidegate` binary on real sockets, in one test binary (one
//! link instead of one per file). Every test starts its own instance of the built binary
//! (`CARGO_BIN_EXE_tidegate`), so tests share this process but not a proxy.

mod admin;
mod health;
mod keepalive;
mod lifecycle;
mod on_demand;
mod proxy;
mod repo;
mod tcp;
