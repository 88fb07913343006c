//! The HTTP side of a listener, HTTP/1.1 and HTTP/2 toward clients: the connection
//! drivers (tidegate's own header and idle timers, drain), routing, and the proxy
//! service.
//!
//! Invariants: a client connection's task ends when hyper's connection ends, a timer
//! expires, the hard shutdown fires or the connection is closed through the registry —
//! nothing else keeps it alive; dropping it closes the socket. A connection is in the
//! registry exactly while its [`client_conn::ClientConn`] lives: the task, its service
//! and the response bodies hold it.
//!
//! An idle keep-alive connection is *parked* once it has been idle for `PARK_AFTER`
//! (in the driver): hyper's connection (with its read and write buffers) is dropped
//! and the task waits for the socket to become readable, then serves it with a new
//! one. Parking happens only when hyper itself finds the connection idle (so never
//! inside a message), and whatever hyper had read ahead is put back in front of the
//! socket ([`rewind::Rewind`]). An upgraded connection's tunnel runs in the same task,
//! on the socket hyper hands back.
//!
//! An HTTP/2 connection (the preface on a plain listener, ALPN `h2` on a TLS one) leaves
//! the HTTP/1 driver for `h2`'s, which never parks: hyper's HTTP/2 connection lives as
//! long as the connection, and each stream is served by the same `service` as an
//! HTTP/1.1 request, with a [`client_conn::ClientConn`] of its own.
//!
//! Modules, from the top down: `driver` (the task; `h2` for HTTP/2) → `service` (checks and routing) →
//! `forward` (to the upstream; `buffer` collects a request body first when the
//! upstream has `request_buffering`) → `body` (the response toward the client), `tunnel`
//! (after a 101) → `client_conn` (the connection's shared state) → `upgrade`,
//! `failure`, `headers`, `route`, `rewind`, `listener`.

pub mod body;
mod buffer;
pub mod client_conn;
mod driver;
pub mod failure;
pub(crate) mod forward;
mod h2;
pub mod headers;
mod listener;
pub mod rewind;
pub mod route;
mod service;
mod stream_exec;
mod tunnel;
mod upgrade;

pub use driver::{adopt_connection, serve_connection};
pub use listener::HttpListener;
