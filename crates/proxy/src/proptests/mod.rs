//! Property tests of the code that reads input from the network: random inputs checked
//! against a naive reference or an invariant, on stable `cargo test` (`cargo test -p
//! tidegate-proxy proptests`). The same functions that are reachable from outside the
//! crate also have cargo-fuzz targets (`fuzz/README.md`) for longer runs on nightly.
//!
//! The on-demand state machine's properties sit next to it
//! (`upstream/on_demand/proptests.rs`): its types are private to that module.
//!
//! Case counts stay modest so the whole set runs in a few seconds; a failure prints the
//! shrunk input, and `PROPTEST_CASES=100000` runs more cases when hunting.

mod framing;
mod health_status;
mod hello;
mod rewind;
mod route;
mod sse;

use proptest::test_runner::Config;

/// The configuration of every property here: proptest's default of 256 cases (or
/// `PROPTEST_CASES`), and no failure-persistence files written into the source tree (a
/// failure prints its shrunk input; a regression worth keeping becomes a unit test).
pub(crate) fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}
