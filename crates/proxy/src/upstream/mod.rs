//! Upstreams at run time: each server's address, keep-alive pool and counters; the
//! balancer; opening connections (Unix, IP, host names with Happy Eyeballs; TLS and
//! HTTP/2 when the upstream says so).
//!
//! Boundary: this module knows nothing of client connections or routing; it hands out
//! [`pool::Checkout`]s and errors that name the upstream, the server and the errno.

pub mod body;
pub mod connect;
pub mod health;
pub mod on_demand;
pub mod pool;
pub mod stats;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidegate_config::{Balance, UpstreamAddr, UpstreamProtocol};

use crate::endpoint::TcpOptions;
use crate::registry::{ConnProtocol, ConnState, NewConn, Registry, ServerId, SockAddr};
use crate::side::Side;
use connect::{ConnectError, Resolve};
use pool::{Checkout, Pool};
use stats::ServerStats;
use tls::{Originate, TlsFailure, UpstreamIo};

/// The longest a checkout waits for a pooled connection to be ready before opening a
/// new one instead (the pool holds only ready connections: this bounds a race).
const CHECKOUT_READY_WAIT: Duration = Duration::from_millis(50);

/// One upstream at run time.
#[derive(Debug)]
pub struct Upstream {
    /// The config name.
    pub name: String,
    /// Its servers, in config order.
    pub servers: Vec<Arc<Server>>,
    balance: Balance,
    next: AtomicUsize,
    /// Timers, from the config.
    pub timeouts: Timeouts,
    /// `retries`: how many other servers a request whose connect failed may move to.
    pub retries: usize,
    /// `sse_heartbeat`: `None` = off.
    pub sse_heartbeat: Option<Duration>,
    /// Options of this upstream's TCP sockets (`tcp_keepalive`).
    pub tcp: TcpOptions,
    /// `[request_buffering]`: `None` = request bodies are streamed.
    pub request_buffering: Option<tidegate_config::RequestBuffering>,
    /// Bytes held by request bodies being collected for this upstream now (the
    /// `request_buffering.total` budget).
    pub buffered: Arc<std::sync::atomic::AtomicUsize>,
    /// `[passive] max_ejected_percent` as a count of servers ([`ejection_cap`]).
    max_ejected: usize,
    /// Whether the last pick found every server out (for the log lines at its start
    /// and end; the admin API computes [`Upstream::in_panic`] afresh).
    panic: std::sync::atomic::AtomicBool,
    /// Picks made in panic mode since start.
    // Shared with the same upstream under the previous config (a reload), whose
    // in-flight retries may still count: the counter never goes back.
    panic_picks: Arc<std::sync::atomic::AtomicU64>,
    /// `protocol`: what requests to its servers speak.
    pub protocol: UpstreamProtocol,
    /// `tls`: its connections are TLS (requests to it are `https`).
    pub tls: bool,
}

/// An upstream's timers.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// All of a server's addresses together.
    pub connect: Duration,
    /// Until the response head.
    pub response: Duration,
    /// No byte either way on a live exchange.
    pub idle: Duration,
}

/// One upstream server: its address, pool, and counters.
#[derive(Debug)]
pub struct Server {
    /// As configured.
    pub addr: UpstreamAddr,
    /// Idle keep-alive connections (shared with an on-demand supervisor, which empties
    /// the pool when its process is being stopped).
    pub pool: Arc<Pool>,
    active: AtomicUsize,
    /// For a host name: the address that last connected, tried first next time.
    last_good: Mutex<Option<SocketAddr>>,
    /// Active and passive health.
    pub health: health::ServerHealth,
    /// `Host` for a request that came without one (HTTP/1.0): the server's address, or
    /// `localhost` for a Unix socket (as nginx's `$proxy_host`).
    pub host_header: http::HeaderValue,
    /// `[on_demand]`: the process behind this server, started on demand.
    on_demand: Option<Arc<on_demand::Supervisor>>,
    /// Operator-set admin state (`ServerState as u8`).
    state: AtomicU8,
    /// What a reload compares to decide whether this server stays (keeping its pool,
    /// health state, counters and on-demand backend) or is replaced.
    settings: ServerSettings,
    /// A reload removed it: exchanges still on it finish, but nothing checks it any
    /// more (an old upstream it is part of may live on with a long tunnel).
    retired: std::sync::atomic::AtomicBool,
    /// Counters for the admin API and metrics.
    pub(crate) stats: ServerStats,
    /// For this server's registry entries and access-log lines, made once.
    id: ServerId,
    /// `tls`: the upstream's TLS client side (`Err`: rustls refused the settings, which
    /// every connect then reports).
    tls: Option<Result<Originate, String>>,
    /// `protocol = "h2"`: its connections are shared HTTP/2 connections.
    h2: bool,
}

/// The settings a server is built from besides its address: a reload keeps a server
/// (its pool, health state, counters and on-demand backend) only when they are
/// unchanged, since its pool, checks and supervisor were built from them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServerSettings {
    keepalive: usize,
    keepalive_timeout: Duration,
    health: Option<tidegate_config::Health>,
    on_demand: Option<tidegate_config::OnDemand>,
    tls: Option<tidegate_config::UpstreamTls>,
    protocol: UpstreamProtocol,
    h2_max_streams: usize,
    h2_max_connections: usize,
}

impl ServerSettings {
    /// What `cfg` builds each of its servers from.
    pub(crate) fn of(cfg: &tidegate_config::Upstream) -> ServerSettings {
        ServerSettings {
            keepalive: cfg.keepalive,
            keepalive_timeout: cfg.keepalive_timeout,
            health: cfg.health.clone(),
            on_demand: cfg.on_demand.clone(),
            tls: cfg.tls.clone(),
            protocol: cfg.protocol,
            h2_max_streams: cfg.h2_max_streams,
            h2_max_connections: cfg.h2_max_connections,
        }
    }
}

/// A server's operator-set state (`ready | drain | maint`, docs/design.md), separate
/// from its health: a `ready` server still gets no requests while it is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ServerState {
    /// In rotation.
    Ready = 0,
    /// No new requests; exchanges in flight (streams included) finish on the
    /// connections they hold.
    Drain = 1,
    /// No requests; pooled connections are closed at once and none are kept.
    Maint = 2,
}

impl ServerState {
    /// Every state, in a stable order.
    pub const ALL: [ServerState; 3] = [ServerState::Ready, ServerState::Drain, ServerState::Maint];

    /// `ready`, `drain` or `maint`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Ready => "ready",
            ServerState::Drain => "drain",
            ServerState::Maint => "maint",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => ServerState::Drain,
            2 => ServerState::Maint,
            _ => ServerState::Ready,
        }
    }
}

impl std::fmt::Display for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts an exchange as active on its server while alive (for `least_conn`), and as
/// using an on-demand backend (which is not stopped for idleness meanwhile).
#[derive(Debug)]
pub struct ActiveGuard {
    upstream: Arc<Upstream>,
    index: usize,
    _usage: Option<on_demand::Usage>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.upstream.servers[self.index]
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl ActiveGuard {
    /// The index of the server in its upstream.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The server this exchange uses.
    pub fn server(&self) -> &Server {
        &self.upstream.servers[self.index]
    }

    /// The upstream.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }
}

// === impl Upstream ===

impl Upstream {
    /// Builds the run-time upstream from its config.
    pub fn new(cfg: &tidegate_config::Upstream) -> Self {
        Upstream::rebuild(cfg, None)
    }

    /// Builds the run-time upstream from its config, keeping from `old` (the upstream
    /// of the same name under the previous config, on a reload) every server whose
    /// address and server settings are unchanged: the same [`Server`], with its pooled
    /// connections, health state, counters, admin state and on-demand backend. The
    /// balancer's position and the panic counter carry over too; everything else
    /// (timeouts, retries, balance, passive limits) is the new config's.
    pub fn rebuild(cfg: &tidegate_config::Upstream, old: Option<&Upstream>) -> Self {
        let mut kept: Vec<Option<&Arc<Server>>> = old
            .map(|o| o.servers.iter().map(Some).collect())
            .unwrap_or_default();
        // One TLS client side for every server it creates (the settings are the
        // upstream's); a kept server keeps its own, made from the same settings.
        let originate = cfg.tls.as_ref().map(|t| Originate::new(t, cfg.protocol));
        let servers = cfg
            .servers
            .iter()
            .enumerate()
            .map(|(index, addr)| {
                let settings = ServerSettings::of(cfg);
                // Each old server is kept at most once (an address may be listed twice).
                let reused = kept
                    .iter_mut()
                    .find(|s| s.is_some_and(|s| s.addr == *addr && s.settings == settings))
                    .and_then(Option::take);
                if let Some(server) = reused {
                    if cfg.on_demand.is_none() {
                        server
                            .health
                            .set_passive_limits(health::PassiveLimits::from(&cfg.passive));
                    }
                    return server.clone();
                }
                Arc::new(Server::new(cfg, index, addr, settings, originate.clone()))
            })
            .collect();
        Upstream {
            name: cfg.name.clone(),
            servers,
            balance: cfg.balance,
            next: AtomicUsize::new(old.map_or(0, |o| o.next.load(Ordering::Relaxed))),
            timeouts: Timeouts {
                connect: cfg.connect_timeout,
                response: cfg.response_timeout,
                idle: cfg.idle_timeout,
            },
            retries: cfg.retries,
            sse_heartbeat: cfg.sse_heartbeat,
            tcp: TcpOptions {
                nodelay: true,
                keepalive: cfg.tcp_keepalive,
            },
            request_buffering: cfg.request_buffering,
            // Shared: bodies being collected under the old config still count against
            // the same `total`.
            buffered: old.map_or_else(|| Arc::new(AtomicUsize::new(0)), |o| o.buffered.clone()),
            max_ejected: ejection_cap(cfg.servers.len(), cfg.max_ejected_percent),
            panic: std::sync::atomic::AtomicBool::new(false),
            panic_picks: old.map_or_else(Default::default, |o| o.panic_picks.clone()),
            protocol: cfg.protocol,
            tls: cfg.tls.is_some(),
        }
    }

    /// Whether `server` is one of this upstream's (the very same, kept by a reload).
    pub fn has_server(&self, server: &Arc<Server>) -> bool {
        self.servers.iter().any(|s| Arc::ptr_eq(s, server))
    }

    /// Picks an available server not in `tried` and counts the exchange on it until
    /// the guard drops. When every `ready` server is out (down, or ejected), one of
    /// them is picked anyway (panic mode, as Envoy and nginx do): a server that comes
    /// back is used by the next request rather than after its cool-down. Servers in
    /// `drain` or `maint` are never picked. `Err` when no server may be tried (all of
    /// them in `drain`/`maint`, or already tried).
    pub fn pick(self: &Arc<Self>, tried: &[usize]) -> Result<ActiveGuard, Unavailable> {
        let n = self.servers.len();
        // Rotating start: round robin, and the tie-break for least_conn.
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let order = || {
            (0..n)
                .map(move |i| (start + i) % n)
                .filter(|i| !tried.contains(i))
        };
        let released = self.ejections_over_cap();
        let mut index =
            self.choose(order().filter(|&i| self.servers[i].takes_new() || released.contains(&i)));
        if index.is_none() {
            index = self.choose(order().filter(|&i| self.servers[i].state() == ServerState::Ready));
            if index.is_some() {
                self.panic_picks.fetch_add(1, Ordering::Relaxed);
                if !self.panic.swap(true, Ordering::Relaxed) {
                    tracing::warn!(upstream = %self.name, servers = %self.describe_servers(),
                        "every server is out: trying them anyway (panic mode)");
                }
            }
        } else if tried.is_empty()
            // A load first: the usual pick writes nothing to this shared flag.
            && self.panic.load(Ordering::Relaxed)
            && self.panic.swap(false, Ordering::Relaxed)
        {
            tracing::info!(upstream = %self.name, "a server is available again: panic mode ends");
        }
        let Some(index) = index else {
            return Err(Unavailable {
                upstream: self.name.clone(),
                servers: self
                    .servers
                    .iter()
                    .map(|s| (s.addr.to_string(), s.describe_state()))
                    .collect(),
            });
        };
        let server = &self.servers[index];
        server.active.fetch_add(1, Ordering::Relaxed);
        server.stats.requests.fetch_add(1, Ordering::Relaxed);
        Ok(ActiveGuard {
            upstream: self.clone(),
            index,
            _usage: server.on_demand.as_ref().map(|s| s.acquire()),
        })
    }

    /// The guard of a connection that already goes to the server configured as `addr`
    /// (a tunnel handed over by the process before a binary upgrade): counted as
    /// active there, like a pick, but not as a new request. `None` when this upstream
    /// has no such server.
    pub fn guard_for(self: &Arc<Self>, addr: &str) -> Option<ActiveGuard> {
        let index = self.servers.iter().position(|s| *s.id().addr == *addr)?;
        let server = &self.servers[index];
        server.active.fetch_add(1, Ordering::Relaxed);
        Some(ActiveGuard {
            upstream: self.clone(),
            index,
            _usage: server.on_demand.as_ref().map(|s| s.acquire()),
        })
    }

    /// The balancer's choice among `candidates` (already in rotating order).
    fn choose(&self, mut candidates: impl Iterator<Item = usize>) -> Option<usize> {
        match self.balance {
            Balance::RoundRobin => candidates.next(),
            Balance::LeastConn => {
                candidates.min_by_key(|&i| self.servers[i].active.load(Ordering::Relaxed))
            }
        }
    }

    /// `max_ejected_percent`: passively ejected `ready` servers beyond the cap, which
    /// are used anyway. The ones ejected first stay out (their cool-downs end first);
    /// the later ones, over the cap, take requests as if not ejected. Empty (and no
    /// allocation) while no server is over the cap, the common case.
    fn ejections_over_cap(&self) -> Vec<usize> {
        let mut ejected: Vec<(tokio::time::Instant, usize)> = Vec::new();
        for (i, s) in self.servers.iter().enumerate() {
            // Only a server that would otherwise take requests: one that is down or in
            // drain/maint is out for another reason.
            if s.state() != ServerState::Ready || !s.health.maybe_ejected() {
                continue;
            }
            if let Some(until) = s.health.ejected_until() {
                if s.health.state() != health::HealthState::Down {
                    ejected.push((until, i));
                }
            }
        }
        if ejected.len() <= self.max_ejected {
            return Vec::new();
        }
        ejected.sort();
        ejected
            .into_iter()
            .skip(self.max_ejected)
            .map(|(_, i)| i)
            .collect()
    }

    /// Whether every `ready` server is out now (down or ejected beyond what the cap
    /// holds), so requests go to them anyway: the admin API's and metrics' `panic`.
    pub fn in_panic(&self) -> bool {
        let released = self.ejections_over_cap();
        let mut any_ready = false;
        for (i, s) in self.servers.iter().enumerate() {
            if s.state() != ServerState::Ready {
                continue;
            }
            any_ready = true;
            if s.health.is_available() || released.contains(&i) {
                return false;
            }
        }
        any_ready
    }

    /// Requests (and tunnels) sent to a server in panic mode since start.
    pub fn panic_requests(&self) -> u64 {
        self.panic_picks.load(Ordering::Relaxed)
    }

    /// `max_ejected_percent` as a count of servers, for this upstream.
    pub fn max_ejected(&self) -> usize {
        self.max_ejected
    }

    fn describe_servers(&self) -> String {
        let parts: Vec<String> = self
            .servers
            .iter()
            .map(|s| format!("{} {}", s.addr, s.describe_state()))
            .collect();
        parts.join("; ")
    }
}

/// How many of `n` servers `percent` lets passive ejection hold out: rounded down, but
/// at least one while `percent` is above 0 (so a pair at 50 % can eject one, and a lone
/// server can be ejected, after which panic mode still tries it).
pub fn ejection_cap(n: usize, percent: u8) -> usize {
    match percent {
        0 => 0,
        p => (n * usize::from(p.min(100)) / 100).max(1),
    }
}

/// No server of an upstream can take a request now.
#[derive(Debug, Clone)]
pub struct Unavailable {
    /// Upstream name.
    pub upstream: String,
    /// Each server's address and state.
    pub servers: Vec<(String, String)>,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upstream {}: no server available:", self.upstream)?;
        for (i, (addr, state)) in self.servers.iter().enumerate() {
            let sep = if i == 0 { " " } else { "; " };
            write!(f, "{sep}{addr} {state}")?;
        }
        Ok(())
    }
}

// === Children ===

// Here, not in `on_demand`: the supervisors know nothing of the upstreams that hold them.
impl on_demand::Children {
    /// The on-demand servers of these upstreams.
    pub fn new(upstreams: &[Arc<Upstream>]) -> on_demand::Children {
        on_demand::Children::of(
            upstreams
                .iter()
                .flat_map(|u| u.servers.iter())
                .filter_map(|s| s.on_demand().cloned())
                .collect(),
        )
    }
}

// === impl Server ===

impl Server {
    fn new(
        cfg: &tidegate_config::Upstream,
        index: usize,
        addr: &UpstreamAddr,
        settings: ServerSettings,
        tls: Option<Result<Originate, String>>,
    ) -> Server {
        let pool = Arc::new(Pool::with_streams(
            cfg.keepalive,
            cfg.keepalive_timeout,
            cfg.h2_max_streams,
            cfg.h2_max_connections,
        ));
        let health = health::ServerHealth::new(cfg.health.as_ref()).named(&cfg.name, addr);
        health.set_passive_limits(health::PassiveLimits::from(&cfg.passive));
        let on_demand = cfg.on_demand.as_ref().map(|od| {
            // No passive ejection: with its one server it would only turn a precise
            // failure into "no server available"; failed starts have their own back-off.
            health.set_passive_limits(health::PassiveLimits {
                fails: 0,
                ..health::PassiveLimits::default()
            });
            on_demand::Supervisor::new(&cfg.name, addr, od, pool.clone())
        });
        Server {
            addr: addr.clone(),
            pool,
            active: AtomicUsize::new(0),
            last_good: Mutex::new(None),
            host_header: host_header(
                addr,
                cfg.tls.as_ref().and_then(|t| t.server_name.as_deref()),
            ),
            health,
            on_demand,
            state: AtomicU8::new(ServerState::Ready as u8),
            settings,
            retired: std::sync::atomic::AtomicBool::new(false),
            stats: ServerStats::default(),
            id: ServerId {
                upstream: Arc::from(cfg.name.as_str()),
                addr: Arc::from(addr.to_string()),
                index,
            },
            tls,
            h2: cfg.protocol == UpstreamProtocol::H2,
        }
    }

    /// Active exchanges on this server.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// The operator-set state.
    pub fn state(&self) -> ServerState {
        ServerState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Sets the operator's state and returns the previous one. `drain` and `maint`
    /// take the server out of rotation at once; exchanges in flight keep the
    /// connections they hold. `maint` also closes the idle pooled connections now and
    /// keeps none until the server is `ready` or `drain` again.
    pub fn set_state(&self, state: ServerState) -> ServerState {
        let old = ServerState::from_u8(self.state.swap(state as u8, Ordering::Relaxed));
        self.pool.set_keeping(state != ServerState::Maint);
        if state == ServerState::Maint {
            self.pool.clear();
        }
        if old != state {
            tracing::info!(upstream = %self.id.upstream, server = %self.addr,
                from = old.as_str(), to = state.as_str(), "server state changed");
        }
        old
    }

    /// The operator state, or for a `ready` server its health, in one phrase.
    fn describe_state(&self) -> String {
        match self.state() {
            ServerState::Ready => self.health.describe(),
            other => other.as_str().to_owned(),
        }
    }

    /// May it get a new request now: `ready`, and neither down nor ejected?
    pub fn takes_new(&self) -> bool {
        self.state() == ServerState::Ready && self.health.is_available()
    }

    /// Exchanges (requests and tunnels) sent to it since start.
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }

    /// Failed exchanges since start: connect failures, 5xx, failures before the
    /// response head.
    pub fn failures(&self) -> u64 {
        self.stats.failures.load(Ordering::Relaxed)
    }

    /// Idle pooled connections now.
    pub fn idle_pooled(&self) -> usize {
        self.pool.idle_count()
    }

    /// This server's counters (connect failures by reason, pool reuse).
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Records what an exchange showed: counts a failure and feeds passive health.
    pub fn record(&self, outcome: health::Outcome) {
        if outcome.is_failure() {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.health.record(outcome);
    }

    /// The registry entry of a connection to this server.
    /// `addrs`: the connection's (peer, local) TCP addresses (`None`: a Unix socket).
    pub(crate) fn upstream_conn(
        &self,
        addrs: (Option<SocketAddr>, Option<SocketAddr>),
        protocol: ConnProtocol,
        state: ConnState,
        close: tokio_util::sync::CancellationToken,
    ) -> NewConn {
        NewConn {
            side: Side::Upstream,
            name: self.id.upstream.clone(),
            peer: match addrs.0 {
                Some(a) => SockAddr::Tcp(a),
                None => SockAddr::Unix(Some(self.id.addr.clone())),
            },
            local: match addrs.1 {
                Some(a) => SockAddr::Tcp(a),
                None => SockAddr::Unix(None),
            },
            protocol,
            state,
            close,
            server: Some((self.id.index, self.id.addr.clone())),
            totals: None,
            generation: 0,
        }
    }

    /// How registry entries and access-log lines name this server.
    pub fn id(&self) -> &ServerId {
        &self.id
    }

    /// A reload removed it (see [`Server::is_retired`]).
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Whether a reload removed it: its health checks stop.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// The on-demand supervisor of this server, if it is one.
    pub fn on_demand(&self) -> Option<&Arc<on_demand::Supervisor>> {
        self.on_demand.as_ref()
    }

    /// The on-demand backend's state, pid and uptime (`None`: not on demand).
    pub fn on_demand_snapshot(&self) -> Option<on_demand::OnDemandSnapshot> {
        self.on_demand.as_ref().map(|s| s.snapshot())
    }

    /// For an on-demand server: starts it, or waits for it, until it accepts.
    async fn ensure_ready(
        &self,
        upstream: &str,
        resolver: &Arc<dyn Resolve>,
    ) -> Result<(), UpstreamError> {
        let Some(supervisor) = &self.on_demand else {
            return Ok(());
        };
        supervisor
            .ensure_ready(resolver)
            .await
            .map_err(|error| UpstreamError::OnDemand {
                upstream: upstream.to_owned(),
                server: self.addr.to_string(),
                error,
            })
    }

    /// A pooled connection that is still open, or a new one (entered in `registry`).
    /// An on-demand server is started first (or waited for).
    pub async fn checkout(
        &self,
        upstream: &str,
        timeouts: &Timeouts,
        resolver: &Arc<dyn Resolve>,
        tcp: TcpOptions,
        registry: &Arc<Registry>,
    ) -> Result<Checkout, UpstreamError> {
        // The cold paths (starting an on-demand server, opening a connection) are boxed:
        // inline, their futures would make every request's future as large as theirs,
        // and it is moved (copied) several times per request.
        if self.on_demand.is_some() {
            Box::pin(self.ensure_ready(upstream, resolver)).await?;
        }
        if self.h2 {
            return self
                .checkout_stream(upstream, timeouts, resolver, tcp, registry)
                .await;
        }
        // The pool hands out only connections that were ready when taken, so this wait
        // is for a connection that closed meanwhile; bounded all the same, a checkout
        // never waits on a busy connection.
        while let Some(mut c) = self.pool.take() {
            if let Ok(Ok(())) = tokio::time::timeout(CHECKOUT_READY_WAIT, c.ready()).await {
                self.stats.checkout(true);
                return Ok(c);
            }
        }
        Box::pin(self.connect(upstream, timeouts, resolver, tcp, registry)).await
    }

    /// HTTP/2: a stream on a connection below its limit, or a new connection
    /// ([`Pool::stream_or_open`]: opens sized to the requests waiting, at most
    /// `h2_max_connections`). A request that found no stream within `connect_timeout`
    /// gets [`UpstreamError::Saturated`], tidegate's own limit and not the server's
    /// failure. One that opens a connection gives it the whole `connect_timeout`: the
    /// wait in tidegate's queue never shortens a real connect (which would fail it and
    /// count that against a healthy server).
    async fn checkout_stream(
        &self,
        upstream: &str,
        timeouts: &Timeouts,
        resolver: &Arc<dyn Resolve>,
        tcp: TcpOptions,
        registry: &Arc<Registry>,
    ) -> Result<Checkout, UpstreamError> {
        if let Some(c) = self.pool.take_stream() {
            self.stats.checkout(true);
            return Ok(c);
        }
        let permit = match self.pool.stream_or_open(timeouts.connect).await {
            Ok(pool::Slot::Stream(c)) => {
                self.stats.checkout(true);
                return Ok(c);
            }
            Ok(pool::Slot::Open(permit)) => permit,
            Err(saturated) => {
                return Err(UpstreamError::Saturated {
                    upstream: upstream.to_owned(),
                    server: self.addr.to_string(),
                    saturated,
                })
            }
        };
        let res = Box::pin(self.connect(upstream, timeouts, resolver, tcp, registry)).await;
        drop(permit);
        res
    }

    /// Whether its connections are HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.h2
    }

    /// Whether its connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS handshake on a connected stream (when the upstream has `tls`) within
    /// `limit`: what is left of `connect_timeout`. A plain upstream's stream is
    /// returned as it is.
    pub async fn secure(
        &self,
        stream: crate::endpoint::Stream,
        limit: Duration,
    ) -> Result<UpstreamIo, SecureError> {
        let originate = match &self.tls {
            None => return Ok(UpstreamIo::Plain(stream)),
            Some(Ok(o)) => o,
            Some(Err(e)) => {
                return Err(SecureError::Tls(TlsFailure {
                    name: self.addr.to_string(),
                    reason: format!("TLS settings refused: {e}"),
                }))
            }
        };
        match tokio::time::timeout(limit, originate.handshake(stream, &self.addr)).await {
            Ok(res) => res.map_err(SecureError::Tls),
            Err(_) => Err(SecureError::Timeout(limit)),
        }
    }

    /// Opens a new connection (never from the pool), entered in `registry` as an
    /// upstream connection for as long as it lives.
    pub async fn connect(
        &self,
        upstream: &str,
        timeouts: &Timeouts,
        resolver: &Arc<dyn Resolve>,
        tcp: TcpOptions,
        registry: &Arc<Registry>,
    ) -> Result<Checkout, UpstreamError> {
        let started = tokio::time::Instant::now();
        let connected = self
            .connect_stream(upstream, timeouts, resolver, tcp)
            .await?;
        let left = timeouts.connect.saturating_sub(started.elapsed());
        let peer = connected.peer;
        let local = connected.local;
        let io = match self.secure(connected.stream, left).await {
            Ok(io) => io,
            Err(e) => return Err(e.into_upstream_error(upstream, &self.addr, timeouts.connect)),
        };
        let protocol = if self.h2 {
            ConnProtocol::H2
        } else {
            ConnProtocol::Http1
        };
        let entry = registry.register(self.upstream_conn(
            (peer, local),
            protocol,
            ConnState::WaitingUpstream,
            tokio_util::sync::CancellationToken::new(),
        ));
        let shaken = if self.h2 {
            self.pool.handshake_h2(io, entry).await
        } else {
            self.pool.handshake(io, entry).await
        };
        let checkout = shaken.map_err(|e| UpstreamError::Handshake {
            upstream: upstream.to_owned(),
            server: self.addr.to_string(),
            error: e,
        })?;
        self.stats.checkout(false);
        Ok(checkout)
    }

    /// Opens a new connected stream to this server, for a caller that speaks over it
    /// itself (a TCP-mode tunnel): a Unix socket, an IP, or a host name through all its
    /// addresses (Happy Eyeballs, the last address that worked first). `tcp` applies to
    /// TCP sockets only. An on-demand server is started first (or waited for).
    pub async fn connect_stream(
        &self,
        upstream: &str,
        timeouts: &Timeouts,
        resolver: &Arc<dyn Resolve>,
        tcp: TcpOptions,
    ) -> Result<connect::Connected, UpstreamError> {
        self.ensure_ready(upstream, resolver).await?;
        let fail = |error| UpstreamError::Connect {
            upstream: upstream.to_owned(),
            server: self.addr.to_string(),
            error,
        };
        // A failure is counted by whoever gives up on this server (see
        // `crate::failure::UpstreamFailure::record_on`).
        self.dial(upstream, timeouts.connect, resolver, tcp)
            .await
            .map_err(fail)
    }

    /// Connects to this server's address within `limit`: a Unix socket, an IP, or a
    /// host name through all its addresses (Happy Eyeballs, the last address that
    /// worked first; a change of address is remembered and logged). Shared by requests,
    /// tunnels and health checks, so a check tests what traffic uses.
    pub async fn dial(
        &self,
        upstream: &str,
        limit: Duration,
        resolver: &Arc<dyn Resolve>,
        tcp: TcpOptions,
    ) -> Result<connect::Connected, ConnectError> {
        match &self.addr {
            UpstreamAddr::Unix(path) => connect::connect_unix(path, limit).await,
            UpstreamAddr::Ip(addr) => connect::connect_tcp(&[*addr], limit, tcp).await,
            UpstreamAddr::Host { host, port } => {
                let started = tokio::time::Instant::now();
                let addrs = connect::resolve(resolver, host, *port, limit).await?;
                let last = *lock(&self.last_good);
                let ordered = connect::order_addresses(addrs, last);
                let left = limit.saturating_sub(started.elapsed());
                let res = connect::connect_tcp(&ordered, left, tcp).await;
                if let Ok(c) = &res {
                    if c.peer != last {
                        *lock(&self.last_good) = c.peer;
                        tracing::info!(
                            upstream,
                            server = %self.addr,
                            address = ?c.peer,
                            "host name upstream now connects to this address"
                        );
                    }
                }
                res
            }
        }
    }

    /// For a host name: the address in use (last that connected).
    pub fn resolved(&self) -> Option<SocketAddr> {
        *lock(&self.last_good)
    }
}

/// Getting a connection to an upstream server failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connect failed or timed out.
    #[error("upstream {upstream} ({server}): {}", error.describe(server))]
    Connect {
        /// Upstream name.
        upstream: String,
        /// Server address as configured.
        server: String,
        /// What went wrong.
        error: ConnectError,
    },
    /// The TLS handshake failed: the certificate did not verify, the server refused
    /// it, or (protocol `h2`) the server did not pick `h2` by ALPN. 502.
    #[error("upstream {upstream} ({server}): {error}")]
    Tls {
        /// Upstream name.
        upstream: String,
        /// Server address as configured.
        server: String,
        /// What went wrong.
        error: TlsFailure,
    },
    /// hyper refused the new connection (should not happen on a fresh socket).
    #[error("upstream {upstream} ({server}): {error}")]
    Handshake {
        /// Upstream name.
        upstream: String,
        /// Server address as configured.
        server: String,
        /// hyper's error.
        error: hyper::Error,
    },
    /// HTTP/2: every connection tidegate may open to the server (`h2_max_connections`)
    /// was at its stream limit for all of `connect_timeout`. A local 503, not the
    /// server's failure.
    #[error(
        "upstream {upstream} ({server}): no HTTP/2 stream free within {}ms (connect_timeout): \
         {} connections open, each at its stream limit (h2_max_connections = {})",
        saturated.waited.as_millis(),
        saturated.connections,
        saturated.max_connections
    )]
    Saturated {
        /// Upstream name.
        upstream: String,
        /// Server address as configured.
        server: String,
        /// What the wait found.
        saturated: pool::Saturated,
    },
    /// An on-demand backend could not be started (or tidegate is stopping). 503.
    #[error("upstream {upstream} ({server}): {error}")]
    OnDemand {
        /// Upstream name.
        upstream: String,
        /// Server address as configured.
        server: String,
        /// Why.
        error: on_demand::OnDemandError,
    },
}

/// Why [`Server::secure`] failed.
#[derive(Debug)]
pub enum SecureError {
    /// The handshake failed.
    Tls(TlsFailure),
    /// It was not done within what was left of `connect_timeout`.
    Timeout(Duration),
}

impl SecureError {
    /// As the failure of a connect to `server` (a timeout counts as the connect's:
    /// `limit` is the whole `connect_timeout`).
    fn into_upstream_error(
        self,
        upstream: &str,
        server: &UpstreamAddr,
        limit: Duration,
    ) -> UpstreamError {
        match self {
            SecureError::Tls(error) => UpstreamError::Tls {
                upstream: upstream.to_owned(),
                server: server.to_string(),
                error,
            },
            SecureError::Timeout(_) => UpstreamError::Connect {
                upstream: upstream.to_owned(),
                server: server.to_string(),
                error: ConnectError::Timeout {
                    limit,
                    tried: vec![format!("{server} (TLS handshake)")],
                },
            },
        }
    }
}

impl std::fmt::Display for SecureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecureError::Tls(e) => e.fmt(f),
            SecureError::Timeout(limit) => {
                write!(f, "TLS handshake not done within {}ms", limit.as_millis())
            }
        }
    }
}

/// The `Host` (`:authority`) tidegate itself sends to a server: in health checks, and
/// for a client request that had none. With TLS and a `server_name`, that name: the one
/// the certificate is checked for is the one a virtual-hosted backend answers to (its
/// address would get a 404 or 421 and the server marked down).
fn host_header(addr: &UpstreamAddr, server_name: Option<&str>) -> http::HeaderValue {
    let text = match (server_name, addr) {
        (Some(name), _) => name.to_owned(),
        (None, UpstreamAddr::Unix(_)) => "localhost".to_owned(),
        (None, other) => other.to_string(),
    };
    http::HeaderValue::try_from(text).unwrap_or(http::HeaderValue::from_static("localhost"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::ejection_cap;

    #[test]
    fn the_ejection_cap_rounds_down_but_allows_one() {
        assert_eq!(ejection_cap(1, 50), 1);
        assert_eq!(ejection_cap(2, 50), 1);
        assert_eq!(ejection_cap(3, 50), 1);
        assert_eq!(ejection_cap(4, 50), 2);
        assert_eq!(ejection_cap(10, 10), 1);
        assert_eq!(ejection_cap(5, 100), 5);
        assert_eq!(ejection_cap(5, 0), 0);
        assert_eq!(ejection_cap(5, 250), 5);
    }
}
