//! Integration tests of the config crate, in one test binary (one link instead of one per
//! file): a file becomes the typed model, every error is positioned and explained, the
//! reference (`docs/config.md`) and the examples stay in step with the code.

mod access_log;
mod admin;
mod docs;
mod errors;
mod examples;
mod h2;
mod model;
mod on_demand;
mod paths;
mod robustness;
mod tls;
mod upstream_tls;
