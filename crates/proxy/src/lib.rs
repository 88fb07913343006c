//! tidegate's data plane: listeners on TCP and Unix sockets, the HTTP/1.1 proxy,
//! TCP-mode tunnels, upstream connection pools, Happy Eyeballs, and the drain that ends
//! it all.
//!
//! This crate never reads the environment, installs signal handlers or exits the
//! process: the binary wires it (docs/design.md). [`Runtime`] is the one entry point: built
//! from a validated config, it binds every address (or reports every failure), then
//! [`Runtime::start`] runs the accept loops under a [`drain::Shutdown`].
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
pub mod http;
pub mod listener_stats;
pub mod metrics;
pub mod observed;
pub mod registry;
pub mod serve;
pub mod side;
pub mod tcp;
pub mod upstream;

#[cfg(test)]
mod proptests;

use std::sync::{Arc, Weak};

use tidegate_config::{Config, Protocol};
use tokio::sync::Semaphore;

use access_log::AccessLog;
use drain::Shutdown;
use http::HttpListener;
use listen::{Inherited, ListenError, ListenKey, Listener, LocalAddr};
use metrics::Metrics;
use registry::Registry;
use serve::ListenerKind;
use tcp::TunnelListener;
use upstream::connect::Resolve;
use upstream::on_demand::Children;
use upstream::Upstream;

/// Everything built from one config, with its sockets bound but not yet accepting.
#[derive(Debug)]
pub struct Runtime {
    /// Upstreams by config order.
    pub upstreams: Vec<Arc<Upstream>>,
    listeners: Vec<BoundListener>,
    /// Every live connection (client and upstream side).
    registry: Arc<Registry>,
    /// The Prometheus metrics over all of it.
    metrics: Arc<Metrics>,
    /// Active health checks, started with the listeners.
    checks: upstream::health::checker::Checks,
}

#[derive(Debug)]
struct BoundListener {
    ctx: ListenerKind,
    sockets: Vec<(ListenKey, Listener)>,
    limit: Arc<Semaphore>,
}

/// The running proxy, as [`Runtime::start`] leaves it: what the binary needs to hand
/// its listening sockets to a new process (a binary upgrade).
#[derive(Debug)]
pub struct Serving {
    /// Upstreams by config order.
    pub upstreams: Vec<Arc<Upstream>>,
    // Weak: the accept loop owns its socket and closes it the moment it stops, so a
    // drain refuses new connections at once instead of leaving them in a backlog
    // nobody accepts from.
    sockets: Vec<(ListenKey, Weak<Listener>)>,
    /// Each listener by name, with its `max_connections`: where [`Serving::adopt`]
    /// puts a connection handed over.
    kinds: Vec<(ListenerKind, Arc<Semaphore>)>,
    shutdown: Shutdown,
}

impl Serving {
    /// Every socket still accepting, with the configured address it serves.
    pub fn listening(&self) -> Vec<(ListenKey, Arc<Listener>)> {
        self.sockets
            .iter()
            .filter_map(|(k, w)| w.upgrade().map(|l| (k.clone(), l)))
            .collect()
    }

    /// Leaves every Unix socket file in place when its listener closes: the sockets
    /// have been handed to a new process, which owns the files from now on.
    pub fn disown_all(&self) {
        for (_, l) in self.listening() {
            l.disown();
        }
    }

    /// At the drain, idle HTTP client connections go to `to` instead of being closed
    /// (see [`drain::Shutdown::hand_off_idle`]). Call before the drain starts.
    pub fn hand_off_idle(&self, to: tokio::sync::mpsc::UnboundedSender<drain::Handoff>) {
        self.shutdown.hand_off_idle(to);
    }

    /// Serves `stream`, a client connection another process accepted on HTTP listener
    /// `listener` and handed over idle (a binary upgrade), as if it had just been
    /// accepted here: it takes one of the listener's `max_connections`. `local` is our
    /// end, as the connection registry shows it. Refused (the connection is closed)
    /// when there is no such HTTP listener, it is at `max_connections`, or this process
    /// drains.
    pub fn adopt(
        &self,
        listener: &str,
        local: registry::SockAddr,
        stream: endpoint::Stream,
    ) -> Result<(), String> {
        if self.shutdown.graceful.is_cancelled() {
            return Err("this process is draining".into());
        }
        let Some((kind, limit)) = self
            .kinds
            .iter()
            .find(|(k, _)| k.name() == listener && matches!(k, ListenerKind::Http(_)))
        else {
            return Err(format!("no HTTP listener named {listener:?}"));
        };
        let permit = limit
            .clone()
            .try_acquire_owned()
            .map_err(|_| format!("listener {listener} is at max_connections"))?;
        let peer = match &stream {
            endpoint::Stream::Tcp(s) => {
                endpoint::PeerAddr::Tcp(s.peer_addr().map_err(|e| errno::describe_io_error(&e))?)
            }
            endpoint::Stream::Unix(_) => endpoint::PeerAddr::Unix,
        };
        kind.spawn(stream, peer, &local, &self.shutdown, permit);
        Ok(())
    }
}

impl Runtime {
    /// Builds upstreams and listeners and binds every listen address. Any bind failure
    /// fails the whole build (sockets already bound are closed) and every failure is
    /// returned, not only the first.
    pub fn bind(config: &Config, resolver: Arc<dyn Resolve>) -> Result<Runtime, Vec<ListenError>> {
        Runtime::bind_with(config, resolver, &mut Inherited::new())
    }

    /// [`Runtime::bind`], taking each address's socket from `inherited` when one was
    /// passed in (socket activation, a binary upgrade) and binding the rest. Sockets
    /// not taken stay in `inherited` for the caller to report.
    pub fn bind_with(
        config: &Config,
        resolver: Arc<dyn Resolve>,
        inherited: &mut Inherited,
    ) -> Result<Runtime, Vec<ListenError>> {
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| Arc::new(Upstream::new(u)))
            .collect();
        let registry = Registry::new();
        let mut errors = Vec::new();
        let mut listeners = Vec::new();
        let mut listener_metrics = Vec::new();
        for l in &config.listeners {
            let ctx = match l.protocol {
                Protocol::Http => ListenerKind::Http(Arc::new(HttpListener::new(
                    l,
                    &upstreams,
                    resolver.clone(),
                    &registry,
                ))),
                // `None` only on a validator bug; logged, and the listener is left out.
                Protocol::Tcp => {
                    match TunnelListener::new(l, &upstreams, resolver.clone(), &registry) {
                        Some(t) => ListenerKind::Tcp(Arc::new(t)),
                        None => continue,
                    }
                }
            };
            listener_metrics.push(match &ctx {
                ListenerKind::Http(h) => h.metrics().clone(),
                ListenerKind::Tcp(t) => t.metrics().clone(),
            });
            let mut sockets = Vec::new();
            for addr in &l.listen {
                if let Some(mut s) = inherited.take(addr) {
                    s.set_tcp_options(ctx.client_tcp());
                    sockets.push((ListenKey::of(addr), s));
                    continue;
                }
                match Listener::bind(addr, ctx.client_tcp()) {
                    Ok(s) => sockets.push((ListenKey::of(addr), s)),
                    Err(e) => errors.push(e),
                }
            }
            listeners.push(BoundListener {
                ctx,
                sockets,
                limit: Arc::new(Semaphore::new(
                    l.max_connections.min(Semaphore::MAX_PERMITS),
                )),
            });
        }
        if errors.is_empty() {
            let metrics = Arc::new(Metrics::new(
                registry.clone(),
                listener_metrics,
                upstreams.clone(),
            ));
            Ok(Runtime {
                registry,
                metrics,
                checks: upstream::health::checker::Checks::new(&upstreams, resolver),
                upstreams,
                listeners,
            })
        } else {
            Err(errors)
        }
    }

    /// The on-demand backends, for the binary to stop when tidegate stops
    /// ([`Children::stop_by`]). Take it before [`Runtime::start`].
    pub fn children(&self) -> Children {
        Children::new(&self.upstreams)
    }

    /// The connection registry: [`Registry::snapshot`] lists every live connection,
    /// [`Registry::close`] closes one. Take it before [`Runtime::start`]; it stays valid
    /// while connections live.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The metrics: [`Metrics::encode`] renders the Prometheus text exposition. Take it
    /// before [`Runtime::start`].
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The Prometheus text exposition now (same as `self.metrics().encode()`).
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// Sends every HTTP listener's requests to `log` (see
    /// [`AccessLog::start`]); call before [`Runtime::start`]. The log's dropped lines
    /// are reported in the metrics.
    pub fn set_access_log(&mut self, log: AccessLog) {
        for l in &mut self.listeners {
            if let ListenerKind::Http(h) = &mut l.ctx {
                match Arc::get_mut(h) {
                    Some(h) => h.access_log = log.clone(),
                    // Only `bind` has handed the listener out so far.
                    None => {
                        tracing::error!(listener = %h.name, "access log set after start; ignored")
                    }
                }
            }
        }
        self.metrics.set_access_log(log);
    }

    /// Every bound address, as `(listener name, address)`, in config order.
    pub fn addresses(&self) -> Vec<(String, LocalAddr)> {
        self.listeners
            .iter()
            .flat_map(|l| {
                l.sockets
                    .iter()
                    .map(|(_, s)| (l.ctx.name().to_owned(), s.local_addr().clone()))
            })
            .collect()
    }

    /// Starts accepting on every socket. Accept loops stop when `shutdown` starts
    /// draining; connection tasks are tracked by `shutdown.tracker`.
    pub fn start(self, shutdown: &Shutdown) -> Serving {
        // Not on the tracker: checks must never hold the process open; none while draining.
        self.checks.spawn(&shutdown.graceful);
        let mut sockets = Vec::new();
        let mut kinds = Vec::new();
        for l in self.listeners {
            kinds.push((l.ctx.clone(), l.limit.clone()));
            for (key, socket) in l.sockets {
                let socket = Arc::new(socket);
                sockets.push((key, Arc::downgrade(&socket)));
                shutdown.tracker.spawn(serve::accept_loop(
                    socket,
                    l.ctx.clone(),
                    l.limit.clone(),
                    shutdown.clone(),
                ));
            }
        }
        Serving {
            upstreams: self.upstreams,
            sockets,
            kinds,
            shutdown: shutdown.clone(),
        }
    }
}
