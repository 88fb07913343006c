//! tidegate's admin API (docs/admin-api.md): HTTP/1.1 with JSON bodies on a local socket.
//!
//! - [`api`]: the wire types, shared by the server and `tidegate ctl`. The one
//!   vocabulary of states lives here (`ready | drain | maint`, `up | down | unknown`, …).
//! - [`Control`]: what the server asks of the running proxy. The binary implements it
//!   over the data plane; this crate never touches the data plane itself.
//! - [`server`]: the HTTP/1.1 server, built so that leaking clients cannot lock
//!   operators out: a connection cap, idle and request deadlines, and a clear `503`
//!   when full (docs/design.md, "The admin API cannot be locked out").
//! - [`client`]: a minimal client for `tidegate ctl` and tests.
//! - [`path`]: the default socket (`$XDG_RUNTIME_DIR/tidegate/admin.sock`, …), shared
//!   by the server and the client sides.
//!
//! Boundary: only this crate speaks the admin wire format. It binds its socket with
//! `tidegate_net::listen` (the same stale-file and permission rules as every
//! listener) and never reads the environment: the binary passes the default socket's
//! inputs in.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod client;
pub mod path;
pub mod server;

pub use api::*;

use std::future::Future;
use std::pin::Pin;

/// An answer [`Control`] computes over time (an upgrade waits for a new process).
pub type Pending<T> = Pin<Box<dyn Future<Output = Result<T, ControlError>> + Send + 'static>>;

/// What the admin server needs from the running proxy. Every method is cheap and never
/// blocks (a snapshot of atomics and short-held locks), except [`Control::upgrade`],
/// whose answer is a future.
pub trait Control: Send + Sync + 'static {
    /// `GET /v1/status`.
    fn status(&self) -> Status;
    /// `GET /v1/upstreams`.
    fn upstreams(&self) -> Vec<UpstreamView>;
    /// `POST /v1/upstreams/{name}/servers/{index}/state`.
    fn set_server_state(
        &self,
        upstream: &str,
        index: usize,
        state: ServerState,
    ) -> Result<ServerView, ControlError>;
    /// `GET /v1/connections`.
    fn connections(&self) -> Vec<ConnectionView>;
    /// `DELETE /v1/connections/{id}`: closes it now.
    fn close_connection(&self, id: u64) -> Result<(), ControlError>;
    /// `POST /v1/reload`: re-read the config file and swap it in, or with `dry_run`
    /// only say what that would change.
    fn reload(&self, dry_run: bool) -> Result<ReloadView, ControlError>;
    /// `GET /metrics`: Prometheus text exposition.
    fn metrics(&self) -> String;
    /// `POST /v1/upgrade`: starts the binary again, hands it every listening socket and
    /// resolves once it reported ready (or failed). The default: not supported.
    fn upgrade(&self) -> Pending<UpgradeView> {
        Box::pin(async {
            Err(ControlError::NotImplemented(
                "binary upgrade is not supported by this server".to_owned(),
            ))
        })
    }
}

/// Why a control action failed; the server maps it to a status and an
/// [`api::ErrorBody`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// 404: no such upstream, server or connection.
    #[error("{0}")]
    NotFound(String),
    /// 400: the request makes no sense.
    #[error("{0}")]
    BadRequest(String),
    /// 422: the new config has errors; nothing changed. One line per error.
    #[error("{message}")]
    Invalid {
        /// Summary.
        message: String,
        /// Every error, `file:line:col: key: message`.
        errors: Vec<String>,
    },
    /// 409: refused because of what is going on (an upgrade in progress).
    #[error("{0}")]
    Conflict(String),
    /// 500: the action was tried and failed (a new process that did not start); nothing
    /// changed. `detail`: more lines (the new process's error, line by line).
    #[error("{message}")]
    Failed {
        /// Summary.
        message: String,
        /// More, line by line.
        detail: Vec<String>,
    },
    /// 501: not built yet.
    #[error("{0}")]
    NotImplemented(String),
}
