//! tidegate's data plane: listeners on TCP and Unix sockets, the HTTP/1.1 proxy,
//! TCP-mode tunnels, upstream connection pools, Happy Eyeballs, and the drain that ends
//! it all.
//!
//! This crate never reads the environment, installs signal handlers or exits the
//! process: the binary wires it (docs/design.md). [`Runtime`] is the one entry point: built
//! from a validated config, it binds every address (or reports every failure), then
//! [`Runtime::start`] runs the accept loops under a [`drain::Shutdown`] and returns the
//! [`Serving`] proxy, which [`Serving::reload`] swaps a new config into without
//! closing a socket or a connection that stays (see `reload` for what stays).
// `deny`, not `forbid`: the one exception is the `pre_exec` hook that sets
// PR_SET_PDEATHSIG in an on-demand backend's child, alone in
// `upstream::on_demand::spawner`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

// The shared networking parts live in `tidegate-net` (so the admin API can use them
// without the data plane); re-exported so `crate::endpoint::…` paths stay as they were.
pub use tidegate_net::{endpoint, errno, listen};

pub mod access_log;
pub mod drain;
pub mod failure;
pub mod handoff;
pub mod http;
pub mod listener_stats;
pub mod metrics;
pub mod observed;
pub mod registry;
pub mod reload;
pub mod serve;
pub mod side;
pub mod tcp;
pub mod tls;
pub mod upstream;

#[cfg(test)]
mod proptests;

use std::sync::{Arc, Mutex, Weak};

use tidegate_config::{Config, Protocol};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use access_log::AccessLog;
use drain::Shutdown;
use http::HttpListener;
use listen::{Inherited, ListenError, ListenKey, Listener, LocalAddr};
use listener_stats::ListenerMetrics;
use metrics::Metrics;
use registry::Registry;
use reload::Plan;
use serve::{Binding, ListenerKind};
use tcp::TunnelListener;
use upstream::connect::Resolve;
use upstream::health::checker::Checks;
use upstream::on_demand::Children;
use upstream::Upstream;

/// Everything built from one config, with its sockets bound but not yet accepting.
pub struct Runtime {
    config: Arc<Config>,
    built: Built,
    /// Every live connection (client and upstream side).
    registry: Arc<Registry>,
    /// The Prometheus metrics over all of it.
    metrics: Arc<Metrics>,
    resolver: Arc<dyn Resolve>,
    access_log: AccessLog,
    children: Children,
}

/// One config, built: what [`Runtime::bind`] and [`Serving::reload`] make before
/// anything changes, so that a failure (a bind) leaves everything as it was.
#[derive(Debug)]
struct Built {
    generation: u64,
    upstreams: Vec<Arc<Upstream>>,
    listeners: Vec<BuiltListener>,
    /// Every address of the config in order: its key, its listener (an index into
    /// `listeners`) and its socket.
    sockets: Vec<(ListenKey, usize, Socket)>,
}

#[derive(Debug)]
struct BuiltListener {
    name: String,
    protocol: Protocol,
    ctx: Ctx,
    max_connections: usize,
    metrics: Arc<ListenerMetrics>,
}

/// Where a built address's socket comes from.
#[derive(Debug)]
enum Socket {
    /// Newly bound (or passed in).
    New(Listener),
    /// The socket that already serves it: this index into [`Live::sockets`].
    Kept(usize),
}

/// A built listener before it goes into its slot.
#[derive(Debug)]
enum Ctx {
    Http(Arc<HttpListener>),
    Tcp(Arc<TunnelListener>),
}

/// What lives across reloads: the current config's objects, each listener's slot and
/// drain signals, and each socket's accept loop.
#[derive(Debug)]
struct Live {
    config: Arc<Config>,
    generation: u64,
    upstreams: Vec<Arc<Upstream>>,
    listeners: Vec<LiveListener>,
    sockets: Vec<LiveSocket>,
}

#[derive(Debug)]
struct LiveListener {
    name: String,
    protocol: Protocol,
    kind: ListenerKind,
    limit: Limit,
    max_connections: usize,
    /// Its own drain signals (children of the process's), cancelled when a reload
    /// removes it.
    shutdown: Shutdown,
    metrics: Arc<ListenerMetrics>,
}

#[derive(Debug)]
struct LiveSocket {
    key: ListenKey,
    listener: String,
    local: LocalAddr,
    // Weak: the accept loop owns its socket and closes it the moment it stops, so a
    // drain refuses new connections at once instead of leaving them in a backlog
    // nobody accepts from.
    socket: Weak<Listener>,
    binding: watch::Sender<Binding>,
    stop: CancellationToken,
}

/// The running proxy, as [`Runtime::start`] leaves it: reloadable
/// ([`Serving::reload`]), and able to hand its listening sockets to a new process (a
/// binary upgrade).
pub struct Serving {
    live: Mutex<Live>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    resolver: Arc<dyn Resolve>,
    access_log: AccessLog,
    children: Children,
    shutdown: Shutdown,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("built", &self.built)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds upstreams and listeners and binds every listen address. Any bind failure
    /// fails the whole build (sockets already bound are closed) and every failure is
    /// returned, not only the first.
    pub fn bind(config: &Config, resolver: Arc<dyn Resolve>) -> Result<Runtime, Vec<ListenError>> {
        Runtime::bind_with(config, resolver, &mut Inherited::new())
    }

    /// [`Runtime::bind`], taking each address's sockets from `inherited` when they were
    /// passed in (socket activation, a binary upgrade: every socket of a `systemd:NAME`)
    /// and binding the rest. A `systemd:NAME` or `fd:N` address with no socket passed is
    /// an error ([`Inherited::missing`]). Sockets not taken stay in `inherited` for the
    /// caller to report.
    pub fn bind_with(
        config: &Config,
        resolver: Arc<dyn Resolve>,
        inherited: &mut Inherited,
    ) -> Result<Runtime, Vec<ListenError>> {
        let registry = Registry::new();
        let access_log = AccessLog::off();
        let built = build(config, &resolver, &registry, &access_log, None, inherited)?;
        let metrics = Arc::new(Metrics::new(
            registry.clone(),
            built.listeners.iter().map(|l| l.metrics.clone()).collect(),
            built.upstreams.clone(),
        ));
        let children = Children::new(&built.upstreams);
        Ok(Runtime {
            config: Arc::new(config.clone()),
            built,
            registry,
            metrics,
            resolver,
            access_log,
            children,
        })
    }

    /// The on-demand backends, for the binary to stop when tidegate stops
    /// ([`Children::stop_by`]). Clones share one list: a reload adds to it.
    pub fn children(&self) -> Children {
        self.children.clone()
    }

    /// The connection registry: [`Registry::snapshot`] lists every live connection,
    /// [`Registry::close`] closes one. It stays valid while connections live.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The metrics: [`Metrics::encode`] renders the Prometheus text exposition.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The Prometheus text exposition now (same as `self.metrics().encode()`).
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// Upstreams by config order.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.built.upstreams
    }

    /// Sends every HTTP listener's requests to `log` (see
    /// [`AccessLog::start`]), now and after every reload; call before
    /// [`Runtime::start`]. The log's dropped lines are reported in the metrics.
    pub fn set_access_log(&mut self, log: AccessLog) {
        for l in &mut self.built.listeners {
            if let Ctx::Http(h) = &mut l.ctx {
                match Arc::get_mut(h) {
                    Some(h) => h.access_log = log.clone(),
                    // Only `bind` has handed the listener out so far.
                    None => {
                        tracing::error!(listener = %h.name, "access log set after start; ignored")
                    }
                }
            }
        }
        self.metrics.set_access_log(log.clone());
        self.access_log = log;
    }

    /// Every bound address, as `(listener name, address)`, in config order.
    pub fn addresses(&self) -> Vec<(String, LocalAddr)> {
        self.built
            .sockets
            .iter()
            .filter_map(|(_, l, s)| match s {
                Socket::New(s) => Some((
                    self.built.listeners[*l].name.clone(),
                    s.local_addr().clone(),
                )),
                Socket::Kept(_) => None,
            })
            .collect()
    }

    /// Starts accepting on every socket. Accept loops stop when `shutdown` starts
    /// draining; connection tasks are tracked by `shutdown.tracker`.
    pub fn start(self, shutdown: &Shutdown) -> Serving {
        // Not on the tracker: checks must never hold the process open; none while draining.
        Checks::new(&self.built.upstreams, self.resolver.clone()).spawn(&shutdown.graceful);
        let mut live = Live {
            config: self.config.clone(),
            generation: 0,
            upstreams: Vec::new(),
            listeners: Vec::new(),
            sockets: Vec::new(),
        };
        commit(&mut live, self.config, self.built, shutdown);
        Serving {
            live: Mutex::new(live),
            registry: self.registry,
            metrics: self.metrics,
            resolver: self.resolver,
            access_log: self.access_log,
            children: self.children,
            shutdown: shutdown.clone(),
        }
    }
}

impl Serving {
    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current config's upstreams, by config order.
    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.live().upstreams.clone()
    }

    /// The config now in effect.
    pub fn config(&self) -> Arc<Config> {
        self.live().config.clone()
    }

    /// The config generation now in effect: 1 at startup, one more per reload.
    pub fn generation(&self) -> u64 {
        self.live().generation
    }

    /// Every socket still accepting, as `(listener name, address)`, in config order.
    pub fn addresses(&self) -> Vec<(String, LocalAddr)> {
        self.live()
            .sockets
            .iter()
            .map(|s| (s.listener.clone(), s.local.clone()))
            .collect()
    }

    /// Every socket still accepting, with its listener's name and the configured
    /// address it serves (what a new process needs to take it over: see
    /// [`Inherited::push_for`]).
    pub fn listening(&self) -> Vec<(String, ListenKey, Arc<Listener>)> {
        self.live()
            .sockets
            .iter()
            .filter_map(|s| {
                s.socket
                    .upgrade()
                    .map(|l| (s.listener.clone(), s.key.clone(), l))
            })
            .collect()
    }

    /// Leaves every Unix socket file in place when its listener closes: the sockets
    /// have been handed to a new process, which owns the files from now on.
    pub fn disown_all(&self) {
        for (_, _, l) in self.listening() {
            l.disown();
        }
    }

    /// What a reload to `config` would change, and how many live connections each
    /// change affects; nothing is applied (`ctl reload --dry-run`). New addresses are
    /// not bound, so a bind failure shows only in a real reload.
    pub fn plan(&self, config: &Config) -> Plan {
        let live = self.live();
        reload::plan(&live.config, config, live.generation + 1, &self.registry)
    }

    /// Swaps `config` in: upstreams, listeners and routes are rebuilt, keeping every
    /// socket, server (its pool, health and on-demand backend), counter and connection
    /// that stays. New addresses are bound first: any bind failure changes nothing and
    /// every failure is returned. On success, the plan that was applied.
    pub fn reload(&self, config: &Config) -> Result<Plan, Vec<ListenError>> {
        let mut live = self.live();
        let plan = reload::plan(&live.config, config, live.generation + 1, &self.registry);
        // Sockets systemd (or a supervisor) passes are taken at start: a reload keeps
        // those already served and can take no new one.
        let mut none_passed = Inherited::new();
        none_passed.set_systemd_passed(
            "a reload keeps only the sockets already served; restart the service to take a new one"
                .into(),
        );
        let built = build(
            config,
            &self.resolver,
            &self.registry,
            &self.access_log,
            Some(&live),
            &mut none_passed,
        )?;
        let old: Vec<Arc<Upstream>> = live.upstreams.clone();
        let new_servers: Vec<(&str, &Arc<upstream::Server>)> = built
            .upstreams
            .iter()
            .flat_map(|u| u.servers.iter().map(move |s| (u.name.as_str(), s)))
            .filter(|(_, s)| !old.iter().any(|o| o.has_server(s)))
            .collect();
        Checks::of(new_servers.iter().copied(), self.resolver.clone())
            .spawn(&self.shutdown.graceful);
        self.children.add(
            new_servers
                .iter()
                .filter_map(|(_, s)| s.on_demand().cloned())
                .collect(),
        );
        // On-demand backends of removed servers: stopped once their exchanges end, by
        // the end of the grace at the latest; a new server on the same address starts
        // its backend only after that one is gone (never two instances).
        let grace = config.server.shutdown_grace;
        let removed: Vec<&Arc<upstream::Server>> = old
            .iter()
            .flat_map(|o| o.servers.iter())
            .filter(|s| !built.upstreams.iter().any(|u| u.has_server(s)))
            .collect();
        self.retire_servers(&removed, grace);
        for s in removed {
            let Some(od) = s.on_demand() else { continue };
            od.retire(tokio::time::Instant::now() + grace);
            for (_, n) in &new_servers {
                if let Some(next) = n.on_demand().filter(|n| n.addr() == od.addr()) {
                    next.follow(od.clone());
                }
            }
        }
        self.metrics.set_view(
            built.listeners.iter().map(|l| l.metrics.clone()).collect(),
            built.upstreams.clone(),
        );
        commit(&mut live, Arc::new(config.clone()), built, &self.shutdown);
        Ok(plan)
    }
}

impl Serving {
    /// Stops accepting on every socket now (a binary upgrade: the new process accepts
    /// on the same sockets, which stay open there). Connections go on.
    pub fn stop_accepting(&self) {
        for s in &self.live().sockets {
            s.stop.cancel();
        }
    }

    /// Starts handing connections to a new process (see [`handoff`]): idle keep-alive
    /// connections and tunnels send themselves to the receiver as soon as they can
    /// (in-flight exchanges finish here). `None` if an export already ran.
    pub fn start_export(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<Box<handoff::Handoff>>> {
        self.shutdown.export.start()
    }

    /// Ends the export: connections that had not moved stay, and drain, here.
    pub fn finish_export(&self) {
        self.shutdown.export.finish();
    }

    /// Serves a connection handed over by the process before a binary upgrade, under
    /// its listener of the same name (and protocol) in this config. A connection whose
    /// listener, upstream or server this config does not have is closed (logged).
    pub fn adopt(&self, h: Box<handoff::Handoff>) {
        use handoff::HandoffKind;
        let h = *h;
        let live = self.live();
        let Some(l) = live.listeners.iter().find(|l| l.name == h.listener) else {
            tracing::info!(listener = %h.listener, "a connection handed over names a listener this config does not have; closing it");
            return;
        };
        // Counted against max_connections when a permit is free; one that is not is
        // still taken (it was open before the upgrade), outside the count.
        let permit = l
            .limit
            .permits
            .clone()
            .try_acquire_owned()
            .or_else(|_| Arc::new(Semaphore::new(1)).try_acquire_owned());
        let Ok(permit) = permit else { return };
        let shutdown = l.shutdown.clone();
        let local = |s: &endpoint::Stream| match s.local_tcp_addr() {
            Some(a) => registry::SockAddr::Tcp(a),
            None => registry::SockAddr::Unix(
                live.sockets
                    .iter()
                    .find(|s| s.listener == h.listener && matches!(s.local, LocalAddr::Unix(_)))
                    .map(|s| Arc::from(s.local.to_string().as_str())),
            ),
        };
        match (h.kind, &l.kind) {
            (HandoffKind::Idle { client, read }, ListenerKind::Http(slot)) => {
                let local = local(&client);
                let task = http::adopt_connection(
                    slot.clone(),
                    client,
                    bytes::Bytes::from(read),
                    local,
                    shutdown.clone(),
                );
                shutdown.tracker.spawn(async move {
                    task.await;
                    drop(permit);
                });
            }
            (
                HandoffKind::Tunnel(handoff::Tunnel {
                    protocol,
                    client,
                    upstream,
                    pending,
                    upstream_name,
                    server,
                }),
                kind,
            ) => {
                let ctx = match kind {
                    ListenerKind::Tcp(slot) => slot.load_full(),
                    ListenerKind::Http(slot) => {
                        let Some(up) = live.upstreams.iter().find(|u| u.name == upstream_name)
                        else {
                            tracing::info!(listener = %h.listener, upstream = %upstream_name,
                                "a tunnel handed over names an upstream this config does not have; closing it");
                            return;
                        };
                        Arc::new(TunnelListener::for_adopted(
                            &slot.load(),
                            up.clone(),
                            self.resolver.clone(),
                        ))
                    }
                };
                let local = local(&client);
                let task = tcp::adopt_tunnel(
                    ctx,
                    protocol,
                    client,
                    upstream,
                    pending,
                    server,
                    local,
                    shutdown.clone(),
                );
                shutdown.tracker.spawn(async move {
                    task.await;
                    drop(permit);
                });
            }
            (HandoffKind::Idle { .. }, ListenerKind::Tcp(_)) => {
                tracing::info!(listener = %h.listener, "an idle HTTP connection handed over names a TCP-mode listener in this config; closing it");
            }
        }
    }

    /// Servers a reload removed: their idle pooled connections close now and none is
    /// pooled again; what still runs on them (exchanges, streams, tunnels) is closed
    /// at `grace` unless it ended by then.
    fn retire_servers(&self, removed: &[&Arc<upstream::Server>], grace: std::time::Duration) {
        if removed.is_empty() {
            return;
        }
        let at = tokio::time::Instant::now();
        let mut ids: Vec<(Arc<str>, Arc<str>)> = Vec::new();
        for s in removed {
            s.retire();
            s.pool.set_keeping(false);
            s.pool.clear();
            let id = s.id();
            ids.push((id.upstream.clone(), id.addr.clone()));
        }
        let registry = self.registry.clone();
        let hard = self.shutdown.hard.clone();
        // Not on the tracker: a timer must not hold the process open.
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = hard.cancelled() => return,
            }
            let mut closed = 0usize;
            registry.for_each(|c| {
                let theirs = c.side() == side::Side::Upstream
                    && c.started() < at
                    && ids
                        .iter()
                        .any(|(u, a)| **u == *c.name() && c.server_addr() == Some(&**a));
                if theirs {
                    c.close();
                    closed += 1;
                }
            });
            if closed > 0 {
                tracing::info!(closed, "shutdown_grace after the reload ended: closed what was left on removed servers");
            }
        });
    }
}

/// Builds `config`'s upstreams and listeners and binds its new addresses; with `old`
/// (a reload), servers, listener counters and sockets that stay are taken from it.
fn build(
    config: &Config,
    resolver: &Arc<dyn Resolve>,
    registry: &Arc<Registry>,
    access_log: &AccessLog,
    old: Option<&Live>,
    inherited: &mut Inherited,
) -> Result<Built, Vec<ListenError>> {
    let generation = old.map_or(1, |o| o.generation + 1);
    let upstreams: Vec<Arc<Upstream>> = config
        .upstreams
        .iter()
        .map(|u| {
            let before = old.and_then(|o| o.upstreams.iter().find(|x| x.name == u.name));
            Arc::new(Upstream::rebuild(u, before.map(|b| &**b)))
        })
        .collect();
    let mut errors = Vec::new();
    let mut listeners = Vec::new();
    let mut sockets = Vec::new();
    // Old sockets already given to an address of the new config: each serves one.
    let mut taken = vec![false; old.map_or(0, |o| o.sockets.len())];
    for l in &config.listeners {
        let metrics = old
            .and_then(|o| o.listeners.iter().find(|x| x.name == l.name))
            .map_or_else(
                || Arc::new(ListenerMetrics::new(&l.name)),
                |x| x.metrics.clone(),
            );
        let ctx = match l.protocol {
            Protocol::Http => {
                let mut h = HttpListener::new(
                    l,
                    &upstreams,
                    resolver.clone(),
                    registry,
                    metrics.clone(),
                    generation,
                );
                h.access_log = access_log.clone();
                Ctx::Http(Arc::new(h))
            }
            // `None` only on a validator bug; logged, and the listener is left out.
            Protocol::Tcp => match TunnelListener::new(
                l,
                &upstreams,
                resolver.clone(),
                registry,
                metrics.clone(),
                generation,
            ) {
                Some(t) => Ctx::Tcp(Arc::new(t)),
                None => continue,
            },
        };
        let (client_tcp, tls) = match &ctx {
            Ctx::Http(h) => (h.client_tcp, h.tls.as_ref()),
            Ctx::Tcp(t) => (t.client_tcp, t.tls.as_ref()),
        };
        // A TLS setup rustls refused would fail every handshake: refuse the listener
        // here, once, naming it, rather than per connection.
        if let (Some(why), Some(addr)) = (tls.and_then(|t| t.setup_error()), l.listen.first()) {
            errors.push(ListenError::Os {
                addr: addr.clone(),
                doing: Some(format!("setting up TLS for listener {}", l.name)),
                error: std::io::Error::other(why.to_owned()),
                hint: None,
            });
        }
        let index = listeners.len();
        for addr in &l.listen {
            let key = ListenKey::of(addr);
            // The socket that serves this address now. Port 0 ("any free port") is the
            // same address only within the same listener: two listeners on
            // `127.0.0.1:0` have two sockets, each kept by its own listener.
            let any_port = matches!(&key, ListenKey::Tcp(a) if a.port() == 0);
            let kept = old.and_then(|o| {
                let fits = |i: usize, s: &LiveSocket| {
                    !taken[i]
                        && s.key == key
                        && s.socket.strong_count() > 0
                        && (!any_port || s.listener == l.name)
                };
                // Same listener first, so that a kept listener keeps its own sockets.
                o.sockets
                    .iter()
                    .enumerate()
                    .find(|(i, s)| fits(*i, s) && s.listener == l.name)
                    .or_else(|| o.sockets.iter().enumerate().find(|(i, s)| fits(*i, s)))
                    .map(|(i, _)| i)
            });
            if let Some(i) = kept {
                taken[i] = true;
                // A passed-in address (`systemd:NAME`) may have several sockets: every
                // one of them stays with it.
                if addr.is_passed_in() {
                    for (j, s) in old.iter().flat_map(|o| o.sockets.iter()).enumerate() {
                        if !taken[j] && s.key == key && s.socket.strong_count() > 0 {
                            taken[j] = true;
                            sockets.push((key.clone(), index, Socket::Kept(j)));
                        }
                    }
                }
                sockets.push((key, index, Socket::Kept(i)));
                continue;
            }
            // Every socket passed for the address: `systemd:NAME` may have several.
            let passed = inherited.take_for(&l.name, addr);
            if !passed.is_empty() {
                // The listener's TCP options apply at each accept (`accept_with`).
                for s in passed {
                    sockets.push((key.clone(), index, Socket::New(s)));
                }
                continue;
            }
            if addr.is_passed_in() {
                // A reload cannot get a socket systemd did not pass at startup.
                errors.push(inherited.missing(addr));
                continue;
            }
            match Listener::bind(addr, client_tcp) {
                Ok(s) => sockets.push((key, index, Socket::New(s))),
                Err(e) => errors.push(e),
            }
        }
        listeners.push(BuiltListener {
            name: l.name.clone(),
            protocol: l.protocol,
            ctx,
            max_connections: l.max_connections.min(Semaphore::MAX_PERMITS),
            metrics,
        });
    }
    if errors.is_empty() {
        Ok(Built {
            generation,
            upstreams,
            listeners,
            sockets,
        })
    } else {
        Err(errors)
    }
}

/// Puts `built` in effect: listeners that stay (same name and protocol) get the new
/// settings in their slot and keep their drain signals and connections; new ones get
/// a slot; removed ones are retired (see [`Shutdown::retire`]). Sockets that stay get
/// the new binding; new ones get an accept loop; removed ones stop accepting now.
fn commit(live: &mut Live, config: Arc<Config>, built: Built, shutdown: &Shutdown) {
    let grace = config.server.shutdown_grace;
    let mut before = std::mem::take(&mut live.listeners);
    let mut listeners = Vec::with_capacity(built.listeners.len());
    for b in built.listeners {
        // Only now, with the config in effect: a refused reload must leave every series.
        if let Ctx::Http(h) = &b.ctx {
            b.metrics.keep_routes(h.route_upstreams());
        }
        let tls = config.listeners.iter().find(|l| l.name == b.name);
        b.metrics.set_certificates(tls.and_then(|l| l.tls.as_ref()));
        let same = before
            .iter()
            .position(|o| o.name == b.name && o.protocol == b.protocol);
        let l = match same {
            Some(i) => {
                let o = before.swap_remove(i);
                match (&o.kind, b.ctx) {
                    (ListenerKind::Http(slot), Ctx::Http(h)) => slot.store(h),
                    (ListenerKind::Tcp(slot), Ctx::Tcp(t)) => slot.store(t),
                    // Same protocol, so the same kind.
                    _ => {
                        tracing::error!(listener = %b.name, "listener kind changed under the same protocol")
                    }
                }
                o.limit.resize(o.max_connections, b.max_connections);
                LiveListener {
                    max_connections: b.max_connections,
                    metrics: b.metrics,
                    ..o
                }
            }
            None => LiveListener {
                kind: match b.ctx {
                    Ctx::Http(h) => ListenerKind::http(h),
                    Ctx::Tcp(t) => ListenerKind::tcp(t),
                },
                name: b.name,
                protocol: b.protocol,
                limit: Limit::new(b.max_connections),
                max_connections: b.max_connections,
                shutdown: shutdown.child(),
                metrics: b.metrics,
            },
        };
        listeners.push(l);
    }
    let mut old_sockets: Vec<Option<LiveSocket>> = std::mem::take(&mut live.sockets)
        .into_iter()
        .map(Some)
        .collect();
    for (key, index, socket) in built.sockets {
        let l = &listeners[index];
        let binding = Binding {
            kind: l.kind.clone(),
            limit: l.limit.permits.clone(),
            shutdown: l.shutdown.clone(),
        };
        match socket {
            Socket::Kept(i) => {
                let Some(mut s) = old_sockets.get_mut(i).and_then(Option::take) else {
                    tracing::error!(%key, "a kept socket is missing; not listening on it");
                    continue;
                };
                s.binding.send_replace(binding);
                s.listener = l.name.clone();
                live.sockets.push(s);
            }
            Socket::New(socket) => {
                let socket = Arc::new(socket);
                let (tx, rx) = watch::channel(binding);
                let stop = shutdown.graceful.child_token();
                live.sockets.push(LiveSocket {
                    key,
                    listener: l.name.clone(),
                    local: socket.local_addr().clone(),
                    socket: Arc::downgrade(&socket),
                    binding: tx,
                    stop: stop.clone(),
                });
                shutdown.tracker.spawn(serve::accept_loop(socket, rx, stop));
            }
        }
    }
    // Addresses no listener has any more: refused from this moment (the accept loop
    // then ends and closes the socket).
    for s in old_sockets.into_iter().flatten() {
        // Not a socket systemd (or a supervisor) passed: it keeps its own copy, which
        // must still listen when it next starts us. Ours only closes with its loop.
        let shared = matches!(s.key, ListenKey::Systemd(_) | ListenKey::Fd(_));
        if let Some(l) = s.socket.upgrade().filter(|_| !shared) {
            l.stop_listening();
        }
        s.stop.cancel();
    }
    for o in before {
        tracing::info!(listener = %o.name, grace_ms = grace.as_millis() as u64,
            "listener removed: idle connections close now, the rest within shutdown_grace");
        o.shutdown.retire(grace);
    }
    live.listeners = listeners;
    live.upstreams = built.upstreams;
    live.generation = built.generation;
    live.config = config;
}

/// A listener's `max_connections` semaphore, resizable while its connections hold
/// permits.
#[derive(Debug, Clone)]
struct Limit {
    permits: Arc<Semaphore>,
    /// Permits a shrink is still owed: taken (and forgotten) as connections end.
    owed: Arc<std::sync::atomic::AtomicUsize>,
}

impl Limit {
    fn new(max: usize) -> Limit {
        Limit {
            permits: Arc::new(Semaphore::new(max)),
            owed: Arc::default(),
        }
    }

    /// From `from` to `to` permits: more at once (paying off what a shrink still owes
    /// first), or fewer as soon as enough are free (the connections over the new limit
    /// are not closed; accepting waits until they end).
    fn resize(&self, from: usize, to: usize) {
        use std::sync::atomic::Ordering;
        if to > from {
            let mut more = to - from;
            // Bounded: each turn pays off part of the debt or stops.
            loop {
                let owed = self.owed.load(Ordering::Acquire);
                let pay = owed.min(more);
                if pay == 0 {
                    break;
                }
                if self
                    .owed
                    .compare_exchange(owed, owed - pay, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    more -= pay;
                    break;
                }
            }
            self.permits.add_permits(more);
        } else if from > to {
            let want = from - to;
            let got = self.permits.forget_permits(want);
            if got < want && self.owed.fetch_add(want - got, Ordering::AcqRel) == 0 {
                // One collector for the whole debt: a permit that frees up is forgotten
                // while anything is owed, and given back once nothing is.
                let (permits, owed) = (self.permits.clone(), self.owed.clone());
                tokio::spawn(async move {
                    // Bounded: each turn takes one permit, and the debt only shrinks
                    // (a later shrink while this runs adds to it and is paid here too).
                    while owed.load(Ordering::Acquire) > 0 {
                        let Ok(p) = permits.clone().acquire_owned().await else {
                            return;
                        };
                        let paid = owed
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| o.checked_sub(1))
                            .is_ok();
                        if paid {
                            p.forget();
                        }
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    /// Waits (bounded) until `limit` has `n` permits free.
    async fn free(limit: &Limit, n: usize) {
        for _ in 0..1000 {
            if limit.permits.available_permits() == n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!(
            "{} permits free, expected {n}",
            limit.permits.available_permits()
        );
    }

    #[tokio::test]
    async fn a_shrink_waits_for_connections_to_end_and_a_growth_pays_its_debt_first() {
        let limit = Limit::new(4);
        let held: Vec<_> = (0..3)
            .map(|_| limit.permits.clone().try_acquire_owned().unwrap())
            .collect();
        // 4 -> 1 with 3 in use: the free one goes now, 2 more as connections end.
        limit.resize(4, 1);
        free(&limit, 0).await;
        let mut held = held.into_iter();
        drop(held.next());
        free(&limit, 0).await; // taken for the debt
                               // 1 -> 3: one permit still owed is forgiven, one is added: 2 in use, 1 free.
        limit.resize(1, 3);
        free(&limit, 1).await;
        // The two still held come back as permits (nothing is owed any more).
        drop(held);
        free(&limit, 3).await;
        assert_eq!(limit.owed.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
}
