//! Integration tests of the test kit itself, in one test binary (one link instead of one
//! per file): backends, the raw client, `/proc` observations and the binary's runner.

mod backend;
mod blackhole;
mod procfs;
mod runner;
mod websocket;
