//! The HTTP/1.1 side of a listener: the connection driver (tidegate's own header and
//! idle timers, drain), routing, and the proxy service.
//!
//! Invariants: a client connection's task ends when hyper's connection ends, a timer
//! expires, the hard shutdown fires or the connection is closed through the registry —
//! nothing else keeps it alive; dropping it closes the socket. A connection is in the
//! registry exactly while its [`Clock`] lives: the task, its service and the response
//! bodies hold it (after an upgrade, the tunnel's task).

pub mod body;
pub mod clock;
pub mod error;
pub mod headers;
mod proxy;
pub mod route;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use hyper_util::rt::TokioIo;
use tidegate_config::RouteAction;

use crate::access_log::AccessLog;
use crate::drain::Shutdown;
use crate::endpoint::{PeerAddr, Stream, TcpOptions};
use crate::metrics::{ListenerMetrics, RouteMetrics};
use crate::registry::{ConnProtocol, ConnSide, ConnState, NewConn, Registry, SockAddr};
use crate::upstream::connect::Resolve;
use crate::upstream::Upstream;
use clock::{Clock, Phase, Verdict, Watched};

/// An HTTP listener at run time: its limits and routes (shared by all its addresses).
pub struct HttpListener {
    /// The config name.
    pub name: String,
    /// From a request's first byte to its complete head.
    pub header_timeout: Duration,
    /// Keep-alive: no byte since the last response.
    pub idle_timeout: Duration,
    /// Request line + headers; over it hyper answers 431.
    pub max_header_size: usize,
    /// Options of accepted TCP sockets.
    pub client_tcp: TcpOptions,
    pub(crate) routes: Vec<(route::Matcher, Target)>,
    pub(crate) resolver: Arc<dyn Resolve>,
    /// Where its connections (and the upstream connections they open) are listed.
    pub(crate) registry: Arc<Registry>,
    /// Its byte totals and requests that reached no upstream.
    pub(crate) metrics: Arc<ListenerMetrics>,
    /// One line per request, when on.
    pub(crate) access_log: AccessLog,
}

impl std::fmt::Debug for HttpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpListener")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Where a route sends requests.
#[derive(Debug)]
pub(crate) enum Target {
    /// Proxied; `metrics` is this listener's for that upstream, resolved once here.
    Upstream {
        upstream: Arc<Upstream>,
        metrics: Arc<RouteMetrics>,
    },
    Respond {
        status: StatusCode,
        body: Bytes,
    },
}

impl HttpListener {
    /// Builds the run-time listener; `upstreams` must hold every upstream its routes
    /// name (the config validator guarantees it; a missing one is skipped with an error
    /// log rather than a panic). Its connections are entered in `registry`.
    pub fn new(
        cfg: &tidegate_config::Listener,
        upstreams: &[Arc<Upstream>],
        resolver: Arc<dyn Resolve>,
        registry: &Arc<Registry>,
    ) -> Self {
        let mut metrics = ListenerMetrics::new(&cfg.name);
        let routes = cfg
            .routes
            .iter()
            .filter_map(|r| {
                let target = match &r.action {
                    RouteAction::Upstream(name) => {
                        let Some(up) = upstreams.iter().find(|u| &u.name == name) else {
                            tracing::error!(listener = %cfg.name, upstream = %name, "route names an unknown upstream; skipped");
                            return None;
                        };
                        Target::Upstream {
                            upstream: up.clone(),
                            metrics: metrics.route(&up.name),
                        }
                    }
                    RouteAction::Respond { status, body } => Target::Respond {
                        status: StatusCode::from_u16(*status).unwrap_or(StatusCode::OK),
                        body: Bytes::from(body.clone()),
                    },
                };
                Some((route::Matcher::new(r.host.clone(), r.path.clone()), target))
            })
            .collect();
        let client_tcp = TcpOptions {
            nodelay: true,
            keepalive: cfg.tcp_keepalive,
        };
        HttpListener {
            name: cfg.name.clone(),
            header_timeout: cfg.header_timeout,
            idle_timeout: cfg.idle_timeout,
            max_header_size: cfg.max_header_size,
            client_tcp,
            routes,
            resolver,
            registry: registry.clone(),
            metrics: Arc::new(metrics),
            access_log: AccessLog::off(),
        }
    }

    /// Its metrics (byte totals, requests by route), for [`crate::metrics::Metrics`].
    pub fn metrics(&self) -> &Arc<ListenerMetrics> {
        &self.metrics
    }
}

/// Serves one client connection until it ends (see the module's invariants). `local`
/// is our end of the socket.
pub async fn serve_connection(
    ctx: Arc<HttpListener>,
    stream: Stream,
    peer: PeerAddr,
    local: SockAddr,
    shutdown: Shutdown,
) {
    // A child of `hard`: one token to select on closes the connection at the end of
    // the grace or when an operator closes it.
    let close = shutdown.hard.child_token();
    let clock = Clock::registered(ctx.registry.register(NewConn {
        side: ConnSide::Client,
        name: ctx.metrics.name.clone(),
        peer: match peer {
            PeerAddr::Tcp(a) => SockAddr::Tcp(a),
            PeerAddr::Unix => SockAddr::Unix(None),
        },
        local,
        protocol: ConnProtocol::Http1,
        state: ConnState::Idle,
        close: close.clone(),
        server: None,
        totals: Some(ctx.metrics.totals.clone()),
    }));
    let io = TokioIo::new(Watched::new(stream, clock.clone()));
    let service = proxy::ConnService {
        ctx: ctx.clone(),
        peer,
        clock: clock.clone(),
        shutdown: shutdown.clone(),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        // A client's FIN ends the connection: a proxy can't tell a half-close from a
        // client that went away, and must not leave CLOSE_WAIT sockets behind.
        .half_close(false)
        .header_read_timeout(None)
        .max_header_size(ctx.max_header_size);
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let wake = match clock.verdict(ctx.idle_timeout, ctx.header_timeout) {
            Verdict::WaitUntil(t) => t,
            Verdict::Expired(phase) => {
                let why = match phase {
                    Phase::Idle => "idle_timeout (keep-alive)",
                    Phase::Head => "header_timeout: request head not complete",
                    Phase::Busy => "idle_timeout of the upstream exchange: no byte either way",
                };
                tracing::debug!(listener = %ctx.name, %peer, "closing client connection: {why}");
                break;
            }
        };
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(listener = %ctx.name, %peer, error = %e, "client connection ended with an error");
                }
                break;
            }
            _ = shutdown.graceful.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = close.cancelled() => {
                if shutdown.hard.is_cancelled() {
                    tracing::debug!(listener = %ctx.name, %peer, "closing client connection: shutdown grace ended");
                } else {
                    tracing::info!(listener = %ctx.name, %peer, "closing client connection: closed by the operator");
                }
                break;
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}
