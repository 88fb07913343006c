//! The closed sets of choices the config offers (log level and format, where the access
//! log goes, the balancing algorithm, an upstream's protocol).
//!
//! They live apart so that `defaults` (which names the default choice) and `model` (which
//! holds the chosen one, and whose `Default`s read `defaults`) both import this module
//! and `defaults` does not import `model`: imports in this crate point one way. `model`
//! re-exports these types, so `tidegate_config::LogLevel` and
//! `tidegate_config::model::LogLevel` are the public paths.

use std::path::PathBuf;

/// `[server] access_log.to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTo {
    /// No access log (the default).
    Off,
    /// Standard output.
    Stdout,
    /// Appended to this file (created if missing).
    File(PathBuf),
}

impl AccessLogTo {
    /// How the config file writes it (`off`, `stdout`, or the path).
    pub fn describe(&self) -> String {
        match self {
            AccessLogTo::Off => "off".to_owned(),
            AccessLogTo::Stdout => "stdout".to_owned(),
            AccessLogTo::File(p) => p.display().to_string(),
        }
    }
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

impl LogFormat {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each server in turn.
    RoundRobin,
    /// The server with the fewest active requests (ties: round robin).
    LeastConn,
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

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    V1_2,
    /// TLS 1.3.
    V1_3,
}

/// An upstream's `protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (the default).
    Http1,
    /// HTTP/2: with prior knowledge (h2c) over TCP and Unix sockets, negotiated by ALPN
    /// over TLS.
    H2,
}

impl UpstreamProtocol {
    /// `http1` or `h2`, as in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
        }
    }
}
