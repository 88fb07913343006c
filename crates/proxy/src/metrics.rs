//! Prometheus metrics (`GET /metrics`, docs/admin-api.md), encoded with `prometheus-client`
//! and served in the Prometheus text format 0.0.4 ([`Metrics::encode`]).
//!
//! Hot path: nothing is looked up by label while serving. Every counter lives in the
//! struct that owns it — a route's request counters and duration histogram in the
//! route's [`RouteMetrics`] (resolved when the runtime is built), a server's counters in
//! its [`ServerStats`] — and one [`Collector`] walks those structs at scrape time.
//! Values that are a picture of the present (connections by state, health, admin state,
//! pooled connections) are computed at scrape time from the registry and the servers.
//!
//! Families (all prefixed `tidegate_`; labels use docs/design.md's "Vocabulary of states"):
//! - `requests_total{listener, upstream, class}`: HTTP requests by status class
//!   `1xx`…`5xx`, or `error` when no response head was sent (the client left first).
//!   `upstream` is `""` for requests that reached no upstream (fixed responses, 404s).
//! - `request_duration_seconds{listener, upstream}`: histogram, request head to the
//!   response's end.
//! - `connections{listener, state}`: open client connections.
//! - `upstream_connections{upstream, server, state}`: open upstream connections
//!   (`idle` = pooled).
//! - `bytes_total{listener, direction}`: client bytes, `in` (from clients) and `out`.
//! - `upstream_connect_failures_total{upstream, server, reason}`: `refused`, `timeout`,
//!   `unreachable`, `resolve`, `other`.
//! - `upstream_checkouts_total{upstream, server, connection}`: connections used for a
//!   request, `reused` from the pool or `new`.
//! - `server_requests_total`, `server_failures_total`, `server_active`,
//!   `server_idle_pooled`, `server_health{health}`, `server_ejected`,
//!   `server_state{state}`, each `{upstream, server}`.
//! - `access_log_dropped_total`: access-log lines dropped because the writer was behind.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;

use crate::access_log::AccessLog;
use crate::registry::{ConnSide, ConnState, Registry, Totals};
use crate::upstream::connect::ConnectError;
use crate::upstream::health::HealthState;
use crate::upstream::{ServerState, Upstream, UpstreamError};

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
    upstream: Arc<str>,
    requests: [AtomicU64; 6],
    duration: Histogram,
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
    /// Bytes of its closed connections (live ones are added at scrape time).
    pub(crate) totals: Arc<Totals>,
    /// Requests that reached no upstream (fixed responses, 404s, refused requests).
    pub(crate) local: Arc<RouteMetrics>,
    /// One per upstream its routes name.
    routes: Vec<Arc<RouteMetrics>>,
    /// The highest byte counts reported, so the counters never go back (see
    /// `Registration`'s drop: a closing connection's bytes may be in neither the live
    /// sum nor the totals for an instant).
    reported: [AtomicU64; 2],
}

impl ListenerMetrics {
    /// A listener called `name` with no routes yet.
    pub fn new(name: &str) -> Self {
        ListenerMetrics {
            name: Arc::from(name),
            totals: Arc::new(Totals::default()),
            local: RouteMetrics::new(""),
            routes: Vec::new(),
            reported: Default::default(),
        }
    }

    /// The metrics of requests to `upstream`, shared by all routes that name it.
    pub(crate) fn route(&mut self, upstream: &str) -> Arc<RouteMetrics> {
        if let Some(r) = self.routes.iter().find(|r| &*r.upstream == upstream) {
            return r.clone();
        }
        let r = RouteMetrics::new(upstream);
        self.routes.push(r.clone());
        r
    }
}

// === ServerStats ===

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
}

impl ConnectFailure {
    /// Every reason, by index.
    pub const ALL: [ConnectFailure; 5] = [
        ConnectFailure::Refused,
        ConnectFailure::Timeout,
        ConnectFailure::Unreachable,
        ConnectFailure::Resolve,
        ConnectFailure::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Unreachable => "unreachable",
            ConnectFailure::Resolve => "resolve",
            ConnectFailure::Other => "other",
        }
    }

    /// Classifies a connect error (for several addresses: by the last one tried, the
    /// one whose error the operator sees last).
    pub fn of(e: &UpstreamError) -> Self {
        let UpstreamError::Connect { error, .. } = e else {
            return ConnectFailure::Other;
        };
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
    connect_failures: [AtomicU64; 5],
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

// === Metrics ===

/// The metrics of one runtime; [`Metrics::encode`] renders them.
pub struct Metrics {
    registry: prometheus_client::registry::Registry,
    sources: Arc<Sources>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// What the collector reads at scrape time.
struct Sources {
    conns: Arc<Registry>,
    listeners: Vec<Arc<ListenerMetrics>>,
    upstreams: Vec<Arc<Upstream>>,
    access_log: Mutex<AccessLog>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics over `conns`, these listeners and upstreams.
    pub fn new(
        conns: Arc<Registry>,
        listeners: Vec<Arc<ListenerMetrics>>,
        upstreams: Vec<Arc<Upstream>>,
    ) -> Self {
        let sources = Arc::new(Sources {
            conns,
            listeners,
            upstreams,
            access_log: Mutex::new(AccessLog::off()),
        });
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(sources.clone()));
        Metrics { registry, sources }
    }

    /// Reports this access log's dropped lines.
    pub fn set_access_log(&self, log: AccessLog) {
        *self
            .sources
            .access_log
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = log;
    }

    /// The Prometheus text exposition, format 0.0.4 (serve it as `text/plain;
    /// version=0.0.4; charset=utf-8`).
    pub fn encode(&self) -> String {
        to_prometheus_text(&self.encode_openmetrics())
    }

    /// The OpenMetrics 1.0 text exposition, as `prometheus-client` writes it (counter
    /// families named without `_total`, ending in `# EOF`; serve it as
    /// `application/openmetrics-text; version=1.0.0; charset=utf-8`).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing to a String cannot fail; a broken collector can.
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// OpenMetrics text to Prometheus 0.0.4 text: a counter family's `# HELP` and `# TYPE`
/// name its samples' name (`x_total`), and there is no `# EOF`.
fn to_prometheus_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 64 * counters.len());
    for line in om.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

type Labels<'a, const N: usize> = [(&'static str, &'a str); N];

/// Starts a family; the closure encodes its samples.
fn family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl FnOnce(&mut prometheus_client::encoding::MetricEncoder<'_>) -> fmt::Result,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    samples(&mut m)
}

fn counter(
    m: &mut prometheus_client::encoding::MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    v: u64,
) -> fmt::Result {
    ConstCounter::new(v).encode(m.encode_family(labels)?)
}

fn gauge(
    m: &mut prometheus_client::encoding::MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    v: i64,
) -> fmt::Result {
    ConstGauge::new(v).encode(m.encode_family(labels)?)
}

impl Collector for Sources {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter as C, Gauge as G};

        family(
            &mut enc,
            "tidegate_requests",
            "HTTP requests by status class of the response head sent (error: none was sent)",
            C,
            |m| {
                for l in &self.listeners {
                    for r in std::iter::once(&l.local).chain(&l.routes) {
                        for (i, class) in STATUS_CLASSES.iter().enumerate() {
                            let labels: Labels<3> = [
                                ("listener", &l.name),
                                ("upstream", &r.upstream),
                                ("class", class),
                            ];
                            counter(m, &labels, r.requests(i))?;
                        }
                    }
                }
                Ok(())
            },
        )?;
        family(
            &mut enc,
            "tidegate_request_duration_seconds",
            "HTTP requests, from the request head to the end of the response",
            MetricType::Histogram,
            |m| {
                for l in &self.listeners {
                    for r in std::iter::once(&l.local).chain(&l.routes) {
                        let labels: Labels<2> = [("listener", &l.name), ("upstream", &r.upstream)];
                        r.duration.encode(m.encode_family(&labels)?)?;
                    }
                }
                Ok(())
            },
        )?;

        // One pass over the registry for connection counts and live bytes.
        let listener_index: HashMap<&str, usize> = self
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (&*l.name, i))
            .collect();
        let upstream_index: HashMap<&str, usize> = self
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.as_str(), i))
            .collect();
        let mut client_states = vec![[0u64; 6]; self.listeners.len()];
        let mut live_bytes = vec![[0u64; 2]; self.listeners.len()];
        let mut upstream_states: Vec<Vec<[u64; 6]>> = self
            .upstreams
            .iter()
            .map(|u| vec![[0u64; 6]; u.servers.len()])
            .collect();
        self.conns.for_each(|c| {
            let state = c.state() as usize;
            match c.side() {
                ConnSide::Client => {
                    if let Some(&i) = listener_index.get(c.name()) {
                        client_states[i][state] += 1;
                        live_bytes[i][0] += c.bytes_in();
                        live_bytes[i][1] += c.bytes_out();
                    }
                }
                ConnSide::Upstream => {
                    let Some(&u) = upstream_index.get(c.name()) else {
                        return;
                    };
                    if let Some(s) = c.server_index().and_then(|s| upstream_states[u].get_mut(s)) {
                        s[state] += 1;
                    }
                }
            }
        });
        family(
            &mut enc,
            "tidegate_connections",
            "Open client connections by state",
            G,
            |m| {
                for (l, states) in self.listeners.iter().zip(&client_states) {
                    for (s, n) in ConnState::ALL.iter().zip(states) {
                        let labels: Labels<2> = [("listener", &l.name), ("state", s.as_str())];
                        gauge(m, &labels, *n as i64)?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            &mut enc,
            "tidegate_bytes",
            "Bytes from clients (in) and to clients (out)",
            C,
            |m| {
                for (l, live) in self.listeners.iter().zip(&live_bytes) {
                    let totals = [
                        l.totals.bytes_in.load(Ordering::Relaxed) + live[0],
                        l.totals.bytes_out.load(Ordering::Relaxed) + live[1],
                    ];
                    for (i, dir) in ["in", "out"].iter().enumerate() {
                        let prev = l.reported[i].fetch_max(totals[i], Ordering::Relaxed);
                        let labels: Labels<2> = [("listener", &l.name), ("direction", dir)];
                        counter(m, &labels, prev.max(totals[i]))?;
                    }
                }
                Ok(())
            },
        )?;

        // Per server: label values computed once per scrape.
        struct Row<'a> {
            upstream: &'a str,
            addr: String,
            server: &'a crate::upstream::Server,
            u: usize,
            i: usize,
        }
        let rows: Vec<Row<'_>> = self
            .upstreams
            .iter()
            .enumerate()
            .flat_map(|(u, up)| {
                up.servers.iter().enumerate().map(move |(i, server)| Row {
                    upstream: &up.name,
                    addr: server.addr.to_string(),
                    server,
                    u,
                    i,
                })
            })
            .collect();
        family(
            &mut enc,
            "tidegate_upstream_connections",
            "Open upstream connections by state (idle: in the pool)",
            G,
            |m| {
                for r in &rows {
                    for (s, n) in ConnState::ALL.iter().zip(&upstream_states[r.u][r.i]) {
                        if matches!(s, ConnState::Reading) {
                            continue;
                        }
                        let labels: Labels<3> = [
                            ("upstream", r.upstream),
                            ("server", &r.addr),
                            ("state", s.as_str()),
                        ];
                        gauge(m, &labels, *n as i64)?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            &mut enc,
            "tidegate_upstream_connect_failures",
            "Failed connects to an upstream server, by reason",
            C,
            |m| {
                for r in &rows {
                    for why in ConnectFailure::ALL {
                        let labels: Labels<3> = [
                            ("upstream", r.upstream),
                            ("server", &r.addr),
                            ("reason", why.as_str()),
                        ];
                        counter(m, &labels, r.server.stats.connect_failures(why))?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            &mut enc,
            "tidegate_upstream_checkouts",
            "Connections used for requests: reused from the pool, or new",
            C,
            |m| {
                for r in &rows {
                    for (kind, reused) in [("reused", true), ("new", false)] {
                        let labels: Labels<3> = [
                            ("upstream", r.upstream),
                            ("server", &r.addr),
                            ("connection", kind),
                        ];
                        counter(m, &labels, r.server.stats.checkouts(reused))?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            &mut enc,
            "tidegate_server_requests",
            "Exchanges (requests and tunnels) sent to a server",
            C,
            |m| {
                for r in &rows {
                    counter(
                        m,
                        &[("upstream", r.upstream), ("server", &r.addr)],
                        r.server.requests(),
                    )?;
                }
                Ok(())
            },
        )?;
        family(&mut enc, "tidegate_server_failures", "Failed exchanges of a server: connect failures, 5xx, failures before the response head", C, |m| {
            for r in &rows {
                counter(m, &[("upstream", r.upstream), ("server", &r.addr)], r.server.failures())?;
            }
            Ok(())
        })?;
        family(
            &mut enc,
            "tidegate_server_active",
            "Exchanges in flight on a server",
            G,
            |m| {
                for r in &rows {
                    gauge(
                        m,
                        &[("upstream", r.upstream), ("server", &r.addr)],
                        r.server.active() as i64,
                    )?;
                }
                Ok(())
            },
        )?;
        family(
            &mut enc,
            "tidegate_server_idle_pooled",
            "Idle keep-alive connections pooled for a server",
            G,
            |m| {
                for r in &rows {
                    gauge(
                        m,
                        &[("upstream", r.upstream), ("server", &r.addr)],
                        r.server.idle_pooled() as i64,
                    )?;
                }
                Ok(())
            },
        )?;
        // One health snapshot per server, for the two health families.
        let health: Vec<(HealthState, bool)> = rows
            .iter()
            .map(|r| {
                let h = r.server.health.snapshot();
                (h.state, h.ejected_until.is_some())
            })
            .collect();
        family(
            &mut enc,
            "tidegate_server_health",
            "Active health of a server: 1 for its state (up, down, unknown)",
            G,
            |m| {
                for (r, (now, _)) in rows.iter().zip(&health) {
                    for h in [HealthState::Up, HealthState::Down, HealthState::Unknown] {
                        let labels: Labels<3> = [
                            ("upstream", r.upstream),
                            ("server", &r.addr),
                            ("health", h.as_str()),
                        ];
                        gauge(m, &labels, i64::from(h == *now))?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            &mut enc,
            "tidegate_server_ejected",
            "1 while passive ejection keeps a server out of rotation",
            G,
            |m| {
                for (r, (_, ejected)) in rows.iter().zip(&health) {
                    gauge(
                        m,
                        &[("upstream", r.upstream), ("server", &r.addr)],
                        i64::from(*ejected),
                    )?;
                }
                Ok(())
            },
        )?;
        family(
            &mut enc,
            "tidegate_server_state",
            "Operator-set state of a server: 1 for its state (ready, drain, maint)",
            G,
            |m| {
                for r in &rows {
                    let now = r.server.state();
                    for st in ServerState::ALL {
                        let labels: Labels<3> = [
                            ("upstream", r.upstream),
                            ("server", &r.addr),
                            ("state", st.as_str()),
                        ];
                        gauge(m, &labels, i64::from(st == now))?;
                    }
                }
                Ok(())
            },
        )?;
        let dropped = self
            .access_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dropped();
        let m = enc.encode_descriptor(
            "tidegate_access_log_dropped",
            "Access-log lines dropped because the writer could not keep up",
            None,
            C,
        )?;
        ConstCounter::new(dropped).encode(m)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_counters_become_prometheus_0_0_4_counters() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{x=\"1\"} 2\n\
                  # HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 2\n\
             # HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }

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
