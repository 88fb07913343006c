//! Counters of the listeners, bumped while serving: each HTTP route's requests by status
//! class and its duration histogram ([`RouteMetrics`], resolved when the listener is
//! built, so nothing is looked up by label per request), and each listener's byte totals
//! ([`ListenerMetrics`]). The Prometheus exposition (the `metrics` module) reads
//! them at scrape time; nothing here knows it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

use crate::registry::Totals;

/// Status classes of `tidegate_requests_total`, by index (see [`RouteMetrics::record`]).
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// Buckets of `tidegate_request_duration_seconds`: 1 ms to a minute (a proxied
/// request spans both; SSE streams and long polls fall in `+Inf`).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

// === RouteMetrics ===

/// Request counters and the duration histogram of one (listener, upstream) pair,
/// shared by every route of the listener to that upstream.
pub struct RouteMetrics {
    /// The upstream's name (`""`: requests that reached none).
    pub(crate) upstream: Arc<str>,
    requests: [AtomicU64; 6],
    /// From the request head to the response's end.
    pub(crate) duration: Histogram,
}

impl fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl RouteMetrics {
    /// Metrics of requests sent to `upstream` (`""`: to no upstream).
    pub fn new(upstream: &str) -> Arc<Self> {
        Arc::new(RouteMetrics {
            upstream: Arc::from(upstream),
            requests: Default::default(),
            duration: Histogram::new(DURATION_BUCKETS),
        })
    }

    /// One request ended: `status` of the response head sent (`None`: none was sent),
    /// `took` from its head to its end.
    pub fn record(&self, status: Option<u16>, took: Duration) {
        let class = match status {
            Some(s @ 100..=599) => usize::from(s / 100 - 1),
            _ => 5,
        };
        self.requests[class].fetch_add(1, Ordering::Relaxed);
        self.duration.observe(took.as_secs_f64());
    }

    /// Requests counted in `class` (an index into [`STATUS_CLASSES`]).
    pub fn requests(&self, class: usize) -> u64 {
        self.requests
            .get(class)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

// === ListenerMetrics ===

/// What a listener contributes: its byte totals and (HTTP) its routes' metrics.
#[derive(Debug)]
pub struct ListenerMetrics {
    pub(crate) name: Arc<str>,
    /// HTTP/2 streams open now on all its connections (kept across a reload, as the
    /// limit `h2.max_streams_total` is the listener's).
    pub(crate) h2_streams: std::sync::atomic::AtomicUsize,
    /// Bytes of its closed connections (live ones are added at scrape time).
    pub(crate) totals: Arc<Totals>,
    /// Requests that reached no upstream (fixed responses, 404s, refused requests).
    pub(crate) local: Arc<RouteMetrics>,
    /// One per upstream its routes name.
    // Behind a lock for a reload, which adds the routes of upstreams newly routed to
    // while keeping every counter (a counter that goes back to zero looks like a
    // restart to Prometheus); read at scrape time only, never per request.
    pub(crate) routes: std::sync::Mutex<Vec<Arc<RouteMetrics>>>,
    /// The highest byte counts reported, so the counters never go back (see
    /// `Registration`'s drop: a closing connection's bytes may be in neither the live
    /// sum nor the totals for an instant).
    pub(crate) reported: [AtomicU64; 2],
    /// TLS handshakes that failed, by [`HandshakeFailure`] (index = its value).
    tls_failures: [AtomicU64; HandshakeFailure::ALL.len()],
    /// The certificates the listener serves under the config in effect: (the
    /// certificate file, names joined with `,`, `notAfter` in Unix seconds), set when a
    /// config is put in effect. The file tells apart two certificates for the same
    /// names (an old and a new one during a rotation, RSA and ECDSA).
    certificates: std::sync::Mutex<Vec<(String, String, i64)>>,
}

/// Why a TLS handshake failed: the `reason` label of
/// `tidegate_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// No complete handshake within `handshake_timeout`.
    Timeout = 0,
    /// No TLS version both sides accept (`min_version`).
    ProtocolVersion = 1,
    /// Nothing else in common (cipher suites, groups, signature schemes).
    Incompatible = 2,
    /// No ALPN protocol in common.
    NoApplicationProtocol = 3,
    /// The client sent an alert (it does not trust the certificate, say).
    AlertReceived = 4,
    /// Not a TLS client hello (plain HTTP on a TLS port, say).
    NotTls = 5,
    /// The client closed the connection before the handshake's end.
    Closed = 6,
    /// A socket error (a reset).
    Io = 7,
    /// Anything else.
    Other = 8,
}

impl HandshakeFailure {
    /// Every reason, in label order.
    pub const ALL: [HandshakeFailure; 9] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::ProtocolVersion,
        HandshakeFailure::Incompatible,
        HandshakeFailure::NoApplicationProtocol,
        HandshakeFailure::AlertReceived,
        HandshakeFailure::NotTls,
        HandshakeFailure::Closed,
        HandshakeFailure::Io,
        HandshakeFailure::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::ProtocolVersion => "protocol_version",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::NoApplicationProtocol => "no_application_protocol",
            HandshakeFailure::AlertReceived => "alert_received",
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Io => "io",
            HandshakeFailure::Other => "other",
        }
    }
}

impl ListenerMetrics {
    /// A listener called `name` with no routes yet.
    pub fn new(name: &str) -> Self {
        ListenerMetrics {
            name: Arc::from(name),
            h2_streams: Default::default(),
            totals: Arc::new(Totals::default()),
            local: RouteMetrics::new(""),
            routes: std::sync::Mutex::new(Vec::new()),
            reported: Default::default(),
            tls_failures: Default::default(),
            certificates: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// One TLS handshake failed for `reason`.
    pub(crate) fn count_handshake_failure(&self, reason: HandshakeFailure) {
        self.tls_failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Failed TLS handshakes for `reason` so far.
    pub fn handshake_failures(&self, reason: HandshakeFailure) -> u64 {
        self.tls_failures[reason as usize].load(Ordering::Relaxed)
    }

    /// From now on, the listener serves these certificates (a config put in effect).
    pub(crate) fn set_certificates(&self, tls: Option<&tidegate_config::Tls>) {
        let list = tls
            .map(|t| {
                t.certificates
                    .iter()
                    .map(|c| {
                        (
                            c.cert_path.display().to_string(),
                            c.names.join(","),
                            c.not_after,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        *self.certificates.lock().unwrap_or_else(|e| e.into_inner()) = list;
    }

    /// (file, names, `notAfter`) of each certificate served, for the scrape.
    pub(crate) fn certificates(&self) -> Vec<(String, String, i64)> {
        self.certificates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The metrics of requests to `upstream`, shared by all routes that name it.
    pub(crate) fn route(&self, upstream: &str) -> Arc<RouteMetrics> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = routes.iter().find(|r| &*r.upstream == upstream) {
            return r.clone();
        }
        let r = RouteMetrics::new(upstream);
        routes.push(r.clone());
        r
    }

    /// Keeps the counters of the routes to these upstreams only (the config put in
    /// effect by a reload): a route that stays keeps its counts, one to an upstream no
    /// route names any more stops being exported, so reloads do not pile series up.
    pub(crate) fn keep_routes<'a>(&self, upstreams: impl IntoIterator<Item = &'a str>) {
        let keep: Vec<&str> = upstreams.into_iter().collect();
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.retain(|r| keep.contains(&&*r.upstream));
    }

    /// Every route's counters, the listener's own answers first (for the scrape).
    pub(crate) fn all_routes(&self) -> Vec<Arc<RouteMetrics>> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        std::iter::once(self.local.clone())
            .chain(routes.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_by_hundreds_and_error_without_a_status() {
        let r = RouteMetrics::new("app");
        for s in [
            Some(101),
            Some(200),
            Some(204),
            Some(404),
            Some(503),
            None,
            Some(999),
        ] {
            r.record(s, Duration::from_millis(1));
        }
        let counts: Vec<u64> = (0..6).map(|i| r.requests(i)).collect();
        assert_eq!(counts, [1, 2, 0, 1, 1, 2]);
    }
}
