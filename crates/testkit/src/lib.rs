//! Test kit for tidegate: real backends on real sockets, a raw client, `/proc`
//! observations, and a handle on the built binary. Used by the integration tests of the
//! other crates; everything is async on tokio and every failure is an `anyhow` error
//! with context (never a panic in a background task: those are recorded instead).
//!
//! Rules it follows and lets tests follow: real sockets only (`127.0.0.1:0`, `[::1]:0`,
//! Unix sockets in a temporary directory), never a fixed port, never a sleep to wait for
//! readiness (every wait polls with a deadline), every loop bounded.
//!
//! # Addresses — [`addr`]
//! - [`Bind`] `{ Tcp4, Tcp6, Unix }`: where a backend listens (`Bind::ALL` for loops).
//! - [`Addr`] `{ Tcp(SocketAddr), Unix(PathBuf) }`: `to_config()` / `Display` give
//!   tidegate's syntax (`127.0.0.1:41234`, `[::1]:41234`, `unix:/tmp/.../b.sock`);
//!   `Addr::parse(s, base)`; `connect()` gives a [`Stream`] (TCP or Unix, tokio I/O).
//!
//! # HTTP/1.1 backend that records the wire — [`Backend`]
//! `Backend::start(bind, |req: &Request| -> Reply)` parses requests itself (httparse):
//! head, then the body by Content-Length or chunked (decoded), keep-alive per HTTP/1.1
//! (`Connection: close` and HTTP/1.0 honoured). The handler sees the head only: the
//! body is read afterwards, as the reply requires. Unparseable bytes (including both
//! Content-Length and Transfer-Encoding) go to `parse_errors()`, are answered 400, and
//! the connection is closed. [`Reply`] kinds:
//! - `text(status, body)` (+ `.header(k, v)`, `.close()`), `echo()` (JSON of the request);
//! - `delay(d, reply)` (slow upstream; notices the client leaving meanwhile);
//! - `sse(events, SseThen::Hold | SseThen::End)`;
//! - `chunks(vec![(delay, bytes)])`, `chunks_then_close(..)`, `chunks_then_reset(..)`;
//! - `close_before_response()`, `reset_before_response()`;
//! - `slow_read(bytes_per_sec)` (reads the body at that rate, keeps only its length).
//!
//! Observations: `addr()`, `accepts()`, `requests()`, `request_lines()`,
//! `connections()` / `connection(id)` ([`ConnInfo`]: `opened_at`, `closed_at`, [`ConnEnd`]),
//! `open_connections()`, `closed_connections()`, `parse_errors()`, `errors()`,
//! `wait_for(|b| .., within)`. [`BackendOptions::close_idle_after`] closes idle
//! keep-alive connections. `Backend::websocket_echo(bind)` echoes WebSocket messages.
//! Dropping a backend stops it and removes its Unix socket.
//!
//! # Byte-stream backend for TCP mode — [`TcpBackend`]
//! `TcpBackend::echo(bind)` echoes and half-closes at end of stream;
//! `TcpBackend::start(bind, |stream| async { .. })` runs the test's own handler per
//! connection (handler errors land in `errors()`). `accepts()`, `open()` (handlers still
//! running), `wait_for`. [`tcp_echo::echo`] is the echo handler, for reuse.
//!
//! # A connect that hangs — [`blackhole_listener`]
//! A `127.0.0.1` listener that never accepts, with its accept queue full.
//!
//! # Raw client — [`connect`], [`get`]
//! [`RawConn`]: `send`, `read_response` ([`Response`] with `complete` / `reset`),
//! `read_head` then `read_body_some` (decoded) or `read_some` / `read_until` (raw),
//! `read_to_end` (with [`End`]), `shutdown_write`, `reset`.
//!
//! # Process observations — [`procfs`]
//! [`close_wait_sockets`], [`vm_hwm_kib`], [`vm_rss_kib`], [`process_gone`].
//!
//! # On-demand backend — [`lazy_app::LazyApp`]
//! A Python (stdlib) HTTP server on a Unix socket for tidegate to start itself, with an
//! events file (start, listen, accept, SIGTERM, exit) and options to fail, start slowly,
//! exit slowly or ignore SIGTERM. `require_python3()` fails with a message without
//! python3.
//!
//! # The built binary — [`Tidegate`]
//! `Tidegate::start(bin, toml)` runs `bin run --config DIR/tidegate.toml`, captures all
//! log lines, and waits for readiness: one `listening listener=NAME address=ADDR` event
//! per bound address, then a `ready` event, on one stream (text or JSON logs). Then
//! `addr(name)`, `logs()`, `wait_log`, `signal`, `wait_exit`; `Tidegate::check(bin, toml)`
//! runs `bin check`. Dropping it kills and reaps the process. `Tidegate::spawn_with(bin,
//! toml, &Launch { wrapper, env, dir })` starts it behind a wrapper that execs it
//! (`systemd-socket-activate`) with more environment, without waiting; `wait_ready()`
//! then waits.
//!
//! # TLS — [`tls`]
//! [`tls::TestCa`]: a test CA (rcgen) that writes leaf certificates and keys as PEM
//! files (`leaf`, `write_ca`) and opens verified TLS connections (`connect`, rustls).
//!
//! # gRPC — [`grpc_app`]
//! [`grpc_app::GrpcServer`]: a real gRPC server (Python grpcio, raw-bytes methods) on a
//! Unix socket, with an events file (`ready`, `cancelled METHOD`, `deadline METHOD S`);
//! [`grpc_app::run_client`] runs every client scenario (unary with trailers, an error
//! status, a deadline, the three kinds of streaming, a cancellation, an abort
//! mid-stream) and returns what it saw as JSON. `require_grpcio()` fails without grpcio.
//!
//! # A browser — [`browser`]
//! [`browser::BrowserApp`]: a page whose EventSources outnumber HTTP/1.1's 6 connections
//! per host, loaded in headless Chromium through tidegate (`load`); it reports the
//! navigation's protocol and what each stream received. `require_chromium()` fails
//! without Chromium.
//!
//! # Caveats
//! - A Unix socket has no reset: the "reset" replies and [`RawConn::reset`] close it
//!   normally there.
//! - The WebSocket backend closes a request that is not an upgrade without a response
//!   (tungstenite's behaviour) and records it in `parse_errors()`.
//!
//! ```no_run
//! use std::time::Duration;
//! use tidegate_testkit::{get, Backend, Bind, Reply, Tidegate};
//!
//! # async fn t(bin: &std::path::Path) -> anyhow::Result<()> {
//! let app = Backend::start(Bind::Unix, |_| Reply::echo())?;
//! let tg = Tidegate::start(bin, &format!(r#"
//!     [listeners.web]
//!     listen = ["127.0.0.1:0"]
//!     [[listeners.web.routes]]
//!     upstream = "app"
//!     [upstreams.app]
//!     servers = ["{}"]
//! "#, app.addr().to_config())).await?;
//! let resp = get(&tg.addr("web")?, "/x", "example.com").await?;
//! assert_eq!(resp.status, 200);
//! assert_eq!(resp.json()?["target"], "/x");
//! app.wait_for(|b| b.request_lines() == ["GET /x HTTP/1.1"], Duration::from_secs(1)).await?;
//! # Ok(()) }
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
mod backend;
mod blackhole;
pub mod browser;
mod client;
mod curl;
pub mod grpc_app;
pub mod hyper_backend;
pub mod lazy_app;
mod process;
pub mod procfs;
pub mod tcp_echo;
pub mod tls;
mod wire;

pub use addr::{Addr, Bind, Stream};
pub use backend::{Backend, BackendOptions, ConnEnd, ConnInfo, Reply, Request, SseThen};
pub use blackhole::{blackhole_listener, Blackhole};
pub use client::{connect, get, End, RawConn, Response, ResponseHead, DEFAULT_TIMEOUT};
pub use curl::curl_unix;
pub use hyper_backend::{HyperBackend, HyperOptions, SeenRequest};
pub use process::{
    parse_log_line, strip_ansi, Launch, LogEvent, Tidegate, CHECK_TIMEOUT, READY_TIMEOUT,
};
pub use procfs::{close_wait_sockets, process_gone, vm_hwm_kib, vm_rss_kib};
pub use tcp_echo::TcpBackend;
