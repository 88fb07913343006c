//! Prometheus metrics (`GET /metrics`, docs/admin-api.md), encoded with `prometheus-client`
//! and served in the Prometheus text format 0.0.4 ([`Metrics::encode`]).
//!
//! Hot path: nothing is looked up by label while serving. Every counter lives in the
//! struct that owns it — a route's request counters and duration histogram in the
//! route's [`RouteMetrics`] (resolved when the runtime is built), a server's counters in
//! its [`ServerStats`] — and one [`Collector`] walks those structs at scrape time.
//! Nothing else in the crate imports this module: the counters live next to what they
//! count, and this is the one reader that turns them into the exposition.
//!
//! [`RouteMetrics`]: crate::listener_stats::RouteMetrics
//! [`ServerStats`]: crate::upstream::stats::ServerStats
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
//! - `tls_handshake_failures_total{listener, reason}`: failed TLS handshakes (reasons:
//!   `listener_stats::HandshakeFailure`); `tls_certificate_expiry_seconds{listener,
//!   names}`: seconds until each served certificate's `notAfter`.
//! - `upstream_connect_failures_total{upstream, server, reason}`: `refused`, `timeout`,
//!   `unreachable`, `resolve`, `tls`, `other`.
//! - `upstream_checkouts_total{upstream, server, connection}`: connections used for a
//!   request, `reused` from the pool or `new`.
//! - `server_requests_total`, `server_failures_total`, `server_active`,
//!   `server_idle_pooled`, `server_health{health}`, `server_ejected`,
//!   `server_state{state}`, each `{upstream, server}`.
//! - `upstream_panic{upstream}`: 1 while every `ready` server of the upstream is out, so
//!   requests go to them anyway (panic mode); `upstream_panic_requests_total{upstream}`:
//!   requests sent in panic mode.
//! - `access_log_dropped_total`: access-log lines dropped because the writer was behind.

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::access_log::AccessLog;
use crate::listener_stats::{HandshakeFailure, ListenerMetrics, STATUS_CLASSES};
use crate::registry::{ConnState, Registry};
use crate::side::Side;
use crate::upstream::health::HealthState;
use crate::upstream::stats::ConnectFailure;
use crate::upstream::{Server, ServerState, Upstream};

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
    /// The current config's listeners and upstreams, replaced by a reload (objects
    /// that stay are the same, with their counters).
    view: ArcSwap<View>,
    access_log: Mutex<AccessLog>,
}

/// What a scrape lists besides the connections.
#[derive(Debug)]
struct View {
    listeners: Vec<Arc<ListenerMetrics>>,
    upstreams: Vec<Arc<Upstream>>,
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
            view: ArcSwap::from_pointee(View {
                listeners,
                upstreams,
            }),
            access_log: Mutex::new(AccessLog::off()),
        });
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(sources.clone()));
        Metrics { registry, sources }
    }

    /// From now on, lists these listeners and upstreams (a reload).
    pub fn set_view(&self, listeners: Vec<Arc<ListenerMetrics>>, upstreams: Vec<Arc<Upstream>>) {
        self.sources.view.store(Arc::new(View {
            listeners,
            upstreams,
        }));
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
        // One view for the whole scrape: a reload meanwhile shows in the next one.
        let view = self.view.load_full();

        family(
            &mut enc,
            "tidegate_requests",
            "HTTP requests by status class of the response head sent (error: none was sent)",
            C,
            |m| {
                for l in &view.listeners {
                    for r in l.all_routes() {
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
                for l in &view.listeners {
                    for r in l.all_routes() {
                        let labels: Labels<2> = [("listener", &l.name), ("upstream", &r.upstream)];
                        r.duration.encode(m.encode_family(&labels)?)?;
                    }
                }
                Ok(())
            },
        )?;

        // One pass over the registry for connection counts and live bytes.
        let listener_index: HashMap<&str, usize> = view
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (&*l.name, i))
            .collect();
        let upstream_index: HashMap<&str, usize> = view
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.as_str(), i))
            .collect();
        let mut client_states = vec![[0u64; 6]; view.listeners.len()];
        let mut live_bytes = vec![[0u64; 2]; view.listeners.len()];
        // Each upstream's servers by address (a reload may keep a server, and its
        // connections, at another position): one lookup per upstream connection.
        let server_index: Vec<HashMap<&str, usize>> = view
            .upstreams
            .iter()
            .map(|u| {
                u.servers
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (&*s.id().addr, i))
                    .collect()
            })
            .collect();
        let mut upstream_states: Vec<Vec<[u64; 6]>> = view
            .upstreams
            .iter()
            .map(|u| vec![[0u64; 6]; u.servers.len()])
            .collect();
        self.conns.for_each(|c| {
            let state = c.state() as usize;
            match c.side() {
                // An HTTP/2 stream is no connection; its bytes are its connection's.
                Side::Client if c.parent().is_some() => {}
                Side::Client => {
                    if let Some(&i) = listener_index.get(c.name()) {
                        client_states[i][state] += 1;
                        live_bytes[i][0] += c.bytes_in();
                        live_bytes[i][1] += c.bytes_out();
                    }
                }
                Side::Upstream => {
                    let Some(&u) = upstream_index.get(c.name()) else {
                        return;
                    };
                    // By address, not index: a reload may keep a server (and its
                    // connections) at another position.
                    let at = c
                        .server_addr()
                        .and_then(|a| server_index[u].get(a).copied());
                    if let Some(s) = at.and_then(|s| upstream_states[u].get_mut(s)) {
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
                for (l, states) in view.listeners.iter().zip(&client_states) {
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
                for (l, live) in view.listeners.iter().zip(&live_bytes) {
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

        family(
            &mut enc,
            "tidegate_tls_handshake_failures",
            "TLS handshakes that failed, by reason",
            C,
            |m| {
                for l in &view.listeners {
                    // Listeners without TLS, with nothing to say: no series.
                    let any = HandshakeFailure::ALL
                        .iter()
                        .any(|r| l.handshake_failures(*r) > 0);
                    if l.certificates().is_empty() && !any {
                        continue;
                    }
                    for r in HandshakeFailure::ALL {
                        let labels: Labels<2> = [("listener", &l.name), ("reason", r.as_str())];
                        counter(m, &labels, l.handshake_failures(r))?;
                    }
                }
                Ok(())
            },
        )?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        family(
            &mut enc,
            "tidegate_tls_certificate_expiry_seconds",
            "Seconds until each served certificate's notAfter (negative once expired)",
            G,
            |m| {
                for l in &view.listeners {
                    for (cert, names, not_after) in l.certificates() {
                        let labels: Labels<3> =
                            [("listener", &l.name), ("cert", &cert), ("names", &names)];
                        gauge(m, &labels, not_after - now)?;
                    }
                }
                Ok(())
            },
        )?;

        // Per server: label values computed once per scrape.
        struct Row<'a> {
            upstream: &'a str,
            addr: String,
            server: &'a Server,
            u: usize,
            i: usize,
        }
        let rows: Vec<Row<'_>> = view
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
        family(
            &mut enc,
            "tidegate_upstream_panic",
            "1 while every ready server of an upstream is down or ejected and requests go to them anyway (panic mode)",
            G,
            |m| {
                for up in &view.upstreams {
                    gauge(m, &[("upstream", &up.name)], i64::from(up.in_panic()))?;
                }
                Ok(())
            },
        )?;
        family(
            &mut enc,
            "tidegate_upstream_panic_requests",
            "Requests and tunnels sent to an upstream in panic mode",
            C,
            |m| {
                for up in &view.upstreams {
                    counter(m, &[("upstream", &up.name)], up.panic_requests())?;
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
}
