//! One upstream server's counters, bumped where the event happens (a pick, a checkout,
//! a failed connect) and read by the admin API and the metrics exposition.

use std::sync::atomic::{AtomicU64, Ordering};

use super::connect::ConnectError;

/// Why a connect failed, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum ConnectFailure {
    /// ECONNREFUSED, or a Unix socket path with nothing at it.
    Refused = 0,
    /// `connect_timeout` passed.
    Timeout = 1,
    /// ENETUNREACH, EHOSTUNREACH.
    Unreachable = 2,
    /// The host name did not resolve.
    Resolve = 3,
    /// Anything else.
    Other = 4,
    /// The TLS handshake failed (the certificate did not verify, the server refused
    /// it, no `h2` by ALPN).
    Tls = 5,
}

impl ConnectFailure {
    /// Every reason, by index.
    pub const ALL: [ConnectFailure; 6] = [
        ConnectFailure::Refused,
        ConnectFailure::Timeout,
        ConnectFailure::Unreachable,
        ConnectFailure::Resolve,
        ConnectFailure::Other,
        ConnectFailure::Tls,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Unreachable => "unreachable",
            ConnectFailure::Resolve => "resolve",
            ConnectFailure::Other => "other",
            ConnectFailure::Tls => "tls",
        }
    }

    /// Classifies a connect error (for several addresses: by the last one tried, the
    /// one whose error the operator sees last).
    pub fn of(error: &ConnectError) -> Self {
        match error {
            ConnectError::Timeout { .. } => ConnectFailure::Timeout,
            ConnectError::Resolve { .. } => ConnectFailure::Resolve,
            ConnectError::Failed(attempts) => match attempts.last() {
                Some((_, io)) => Self::of_io(io),
                None => ConnectFailure::Other,
            },
        }
    }

    fn of_io(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused | K::NotFound => ConnectFailure::Refused,
            K::TimedOut => ConnectFailure::Timeout,
            K::HostUnreachable | K::NetworkUnreachable => ConnectFailure::Unreachable,
            _ => ConnectFailure::Other,
        }
    }
}

/// One server's counters; relaxed atomics bumped where the event happens.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Exchanges (requests and tunnels) sent to it.
    pub(crate) requests: AtomicU64,
    /// Failed exchanges: connect failures, 5xx, failures before the response head.
    pub(crate) failures: AtomicU64,
    connect_failures: [AtomicU64; 6],
    pool_reused: AtomicU64,
    pool_new: AtomicU64,
}

impl ServerStats {
    /// A connect failed.
    pub(crate) fn connect_failed(&self, why: ConnectFailure) {
        self.connect_failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A request got a connection: `reused` from the pool, or new.
    pub(crate) fn checkout(&self, reused: bool) {
        let c = if reused {
            &self.pool_reused
        } else {
            &self.pool_new
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Connect failures for `why`.
    pub fn connect_failures(&self, why: ConnectFailure) -> u64 {
        self.connect_failures[why as usize].load(Ordering::Relaxed)
    }

    /// Requests that got a pooled connection (`true`) or a new one.
    pub fn checkouts(&self, reused: bool) -> u64 {
        if reused {
            self.pool_reused.load(Ordering::Relaxed)
        } else {
            self.pool_new.load(Ordering::Relaxed)
        }
    }
}
