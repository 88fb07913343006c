//! The validated, typed configuration the data plane consumes.
//!
//! Everything here has already been checked: names resolve, durations and sizes are
//! parsed, addresses are typed. The data plane never parses a string from the config
//! again.

use std::path::PathBuf;
use std::time::Duration;

use crate::addr::{ListenAddr, UpstreamAddr};

/// A whole, valid configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was loaded from (`None` for the embedded quickstart).
    pub source: Option<PathBuf>,
    /// `[server]`.
    pub server: Server,
    /// `[listeners.NAME]`, in the order of their names (sorted).
    pub listeners: Vec<Listener>,
    /// `[upstreams.NAME]`, in the order of their names (sorted).
    pub upstreams: Vec<Upstream>,
}

impl Config {
    /// The upstream called `name`, if any.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

/// `[server]`: process-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// SIGTERM: drain this long, then close what is left and exit.
    pub shutdown_grace: Duration,
    /// Worker threads; already resolved (`0` in the file = one per core is resolved by
    /// the binary, so this stays `0` here).
    pub workers: usize,
    /// `log = { level, format }`.
    pub log: Log,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    /// One of `error`, `warn`, `info`, `debug`, `trace`.
    pub level: LogLevel,
    /// `text` or `json`.
    pub format: LogFormat,
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default.
    Info,
    /// Per-connection detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The name used in the config file and by `tracing`'s filters.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[listeners.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// The table name.
    pub name: String,
    /// Every address to listen on (at least one).
    pub listen: Vec<ListenAddr>,
    /// `protocol`; only HTTP is built so far (`tcp` is refused as not supported yet).
    pub protocol: Protocol,
    /// From a request's first byte to its complete head.
    pub header_timeout: Duration,
    /// Keep-alive: no byte since the last response.
    pub idle_timeout: Duration,
    /// Accepting pauses at this many open client connections (across all addresses).
    pub max_connections: usize,
    /// Request line + headers, in bytes; over it: 431.
    pub max_header_size: usize,
    /// Idle time before TCP keepalive probes; `None` = `"off"`. TCP sockets only.
    pub tcp_keepalive: Option<Duration>,
    /// Routes, in file order. Matching picks the most specific (see `Route`).
    pub routes: Vec<Route>,
}

/// A listener's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1.
    Http,
}

/// `[[listeners.NAME.routes]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// `host`: `None` matches every host.
    pub host: Option<HostMatch>,
    /// `path` prefix (starts with `/`; default `/`).
    pub path: String,
    /// Where matching requests go.
    pub action: RouteAction,
}

/// How a route matches the request's host (case-insensitive, port ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `ci.example.com`, stored lowercase.
    Exact(String),
    /// `*.example.com`: stored as the lowercase suffix `.example.com`; matches
    /// `a.example.com` and `a.b.example.com`, not `example.com`.
    Suffix(String),
}

/// What a route does with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteAction {
    /// Proxy to the upstream of this name (validated to exist).
    Upstream(String),
    /// Answer with a fixed response.
    Respond {
        /// HTTP status, 100..=999 validated to 200..=599.
        status: u16,
        /// Body, sent as `text/plain; charset=utf-8`.
        body: String,
    },
}

/// `[upstreams.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// The table name.
    pub name: String,
    /// Servers, in file order (at least one).
    pub servers: Vec<UpstreamAddr>,
    /// How a server is picked.
    pub balance: Balance,
    /// Idle pooled connections kept per server (0 = no pooling).
    pub keepalive: usize,
    /// An idle pooled connection is closed after this.
    pub keepalive_timeout: Duration,
    /// For all addresses of a server together.
    pub connect_timeout: Duration,
    /// Until the response head.
    pub response_timeout: Duration,
    /// No byte either way on a live exchange.
    pub idle_timeout: Duration,
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each server in turn.
    RoundRobin,
    /// The server with the fewest active requests (ties: round robin).
    LeastConn,
}

// === impl Server ===

impl Default for Server {
    /// Every `[server]` key at its default (what an absent `[server]` table means).
    fn default() -> Self {
        Server {
            shutdown_grace: crate::defaults::SHUTDOWN_GRACE,
            workers: crate::defaults::WORKERS,
            log: Log::default(),
        }
    }
}

impl Default for Log {
    /// `level = "info"`, `format = "text"`.
    fn default() -> Self {
        Log {
            level: crate::defaults::LOG_LEVEL,
            format: crate::defaults::LOG_FORMAT,
        }
    }
}

// === impl LogFormat, Protocol, Balance ===

impl LogFormat {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl Protocol {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
        }
    }
}

impl Balance {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
        }
    }
}
