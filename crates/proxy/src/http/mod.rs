//! The HTTP/1.1 side of a listener: the connection driver (tidegate's own header and
//! idle timers, drain), routing, and the proxy service.
//!
//! Invariants: a client connection's task ends when hyper's connection ends, a timer
//! expires, the hard shutdown fires or the connection is closed through the registry —
//! nothing else keeps it alive; dropping it closes the socket. A connection is in the
//! registry exactly while its [`Clock`] lives: the task, its service and the response
//! bodies hold it.
//!
//! An idle keep-alive connection is *parked* once it has been idle for [`PARK_AFTER`]:
//! hyper's connection (with its 8 KiB read and 8 KiB write buffers) is dropped and the
//! task waits for the socket to become readable, then serves it with a new one. Parking happens only when hyper itself
//! finds the connection idle (so never inside a message), and whatever hyper had read
//! ahead is put back in front of the socket ([`rewind::Rewind`]). An upgraded
//! connection's tunnel runs in the same task, on the socket hyper hands back.

pub mod body;
pub mod clock;
pub mod error;
pub mod headers;
pub(crate) mod proxy;
pub mod rewind;
pub mod route;

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tidegate_config::RouteAction;
use tokio::time::Instant;

use crate::access_log::AccessLog;
use crate::drain::Shutdown;
use crate::endpoint::{PeerAddr, Stream, TcpOptions};
use crate::metrics::{ListenerMetrics, RouteMetrics};
use crate::registry::{ConnProtocol, ConnSide, ConnState, NewConn, Registry, SockAddr};
use crate::upstream::connect::Resolve;
use crate::upstream::Upstream;
use clock::{Clock, Phase, Verdict, Watched};
use rewind::Rewind;

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
    /// hyper's settings for each connection (built once).
    builder: http1::Builder,
}

/// A client socket as hyper sees it: counted by its [`Clock`], with bytes read ahead
/// put back in front after a park or an upgrade.
pub(crate) type ClientIo = Rewind<Watched<Stream>>;

/// hyper's connection over a client socket.
type HyperConn = http1::Connection<TokioIo<ClientIo>, proxy::ConnService>;

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
        let mut builder = http1::Builder::new();
        builder
            .keep_alive(true)
            // A client's FIN ends the connection: a proxy can't tell a half-close from a
            // client that went away, and must not leave CLOSE_WAIT sockets behind.
            .half_close(false)
            // tidegate's own clock times heads (see `clock`).
            .header_read_timeout(None)
            .max_header_size(cfg.max_header_size);
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
            builder,
        }
    }

    /// Its metrics (byte totals, requests by route), for [`crate::metrics::Metrics`].
    pub fn metrics(&self) -> &Arc<ListenerMetrics> {
        &self.metrics
    }
}

/// Serves one client connection until it ends (see the module's invariants). `local`
/// is our end of the socket.
///
/// Not an `async fn`: the connection is set up here, and the future returned keeps
/// only what a parked connection needs (an `async fn` would also keep its arguments).
pub fn serve_connection(
    ctx: Arc<HttpListener>,
    stream: Stream,
    peer: PeerAddr,
    local: SockAddr,
    shutdown: Shutdown,
) -> impl Future<Output = ()> + Send {
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
    let io: ClientIo = Rewind::new(Watched::new(stream, clock.clone()));
    let driver = Driver {
        ctx,
        clock,
        shutdown,
        close,
        peer,
    };
    driver.run(io)
}

/// How a turn of serving ended.
enum Served {
    /// The connection is done (closed by hyper, a timer, the drain or an operator).
    Closed,
    /// hyper found the connection idle and handed it back.
    Parked(http1::Parts<TokioIo<ClientIo>, proxy::ConnService>),
    /// A 101 went out: the socket belongs to the tunnel now.
    Upgraded(
        http1::Parts<TokioIo<ClientIo>, proxy::ConnService>,
        Box<proxy::Upgrade>,
    ),
}

/// One client connection: what its turns of parking and serving share.
struct Driver {
    ctx: Arc<HttpListener>,
    clock: Arc<Clock>,
    shutdown: Shutdown,
    close: tokio_util::sync::CancellationToken,
    peer: PeerAddr,
}

impl Driver {
    /// Parks and serves `io` in turn until the connection ends.
    async fn run(self, mut io: ClientIo) {
        // Bounded: every turn either waits for the client (bounded by the timers) or
        // serves at least one readable event.
        loop {
            // Parked: nothing of hyper's is held while the client is quiet. Bytes put
            // back (a pipelined request hyper had started to read) are served at once.
            if !io.has_prefix() && !self.park(io.get_ref().get_ref()).await {
                return;
            }
            // Built for each turn (a parked connection keeps none of it).
            let service = proxy::ConnService {
                ctx: self.ctx.clone(),
                peer: self.peer,
                clock: self.clock.clone(),
                forwarded_for: headers::forwarded_for(self.peer.ip()),
            };
            // Boxed: the task keeps only what a parked connection needs.
            let conn = Box::new(self.ctx.builder.serve_connection(TokioIo::new(io), service));
            match self.serve(conn).await {
                Served::Closed => return,
                Served::Parked(parts) => {
                    io = parts.io.into_inner();
                    if !parts.read_buf.is_empty() {
                        io.put_back(parts.read_buf);
                        self.clock.head_started();
                    }
                }
                Served::Upgraded(parts, upgrade) => {
                    let mut io = parts.io.into_inner();
                    io.put_back(parts.read_buf);
                    let registry = self.ctx.registry.clone();
                    // Boxed for the same reason as hyper's connection.
                    Box::pin(proxy::tunnel(io, upgrade, self.clock, registry)).await;
                    return;
                }
            }
        }
    }

    /// Waits, holding no buffer, until `stream` is readable (true) or the connection
    /// should close (false): `idle_timeout`, the drain (an idle connection closes at
    /// once), the end of the grace or an operator.
    async fn park(&self, stream: &Stream) -> bool {
        loop {
            if self.shutdown.graceful.is_cancelled() {
                tracing::debug!(listener = %self.ctx.name, peer = %self.peer, "closing idle client connection: draining");
                return false;
            }
            let Some(wake) = self.next_check() else {
                return false;
            };
            tokio::select! {
                res = stream.readable() => {
                    // An error is hyper's to find (and report) when it reads.
                    let _ = res;
                    return true;
                }
                _ = self.shutdown.graceful.cancelled() => {}
                _ = self.close.cancelled() => {
                    self.closed();
                    return false;
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Drives hyper's connection until it ends, parks or upgrades, enforcing the
    /// clock's timers, the drain and `close`.
    async fn serve(&self, mut conn: Box<HyperConn>) -> Served {
        let mut draining = self.shutdown.graceful.is_cancelled();
        if draining {
            Pin::new(&mut *conn).graceful_shutdown();
        }
        // One park attempt per turn: a failed one has turned keep-alive off.
        let mut may_park = !draining;
        // When the park timer is set to fire (see `Turn`).
        let mut park_at: Option<Instant> = None;
        loop {
            let Some(wake) = self.next_check() else {
                return Served::Closed;
            };
            let wake = park_at.map_or(wake, |t| wake.min(t));
            let turn = Turn {
                conn: &mut conn,
                clock: &self.clock,
                may_park: &mut may_park,
                park_at: &mut park_at,
            };
            let step = tokio::select! {
                step = turn => step,
                _ = self.shutdown.graceful.cancelled(), if !draining => {
                    draining = true;
                    may_park = false;
                    Pin::new(&mut *conn).graceful_shutdown();
                    continue;
                }
                _ = self.close.cancelled() => {
                    self.closed();
                    return Served::Closed;
                }
                _ = tokio::time::sleep_until(wake) => {
                    // Whichever timer it was, the next turn sets the park timer again
                    // if it is still needed.
                    park_at = None;
                    continue;
                }
            };
            return match step {
                Step::Ended(res) => {
                    if let Err(e) = res {
                        tracing::debug!(listener = %self.ctx.name, peer = %self.peer, error = %e, "client connection ended with an error");
                        return Served::Closed;
                    }
                    match self.clock.take_upgrade() {
                        Some(up) => Served::Upgraded(conn.into_parts(), up),
                        None => Served::Closed,
                    }
                }
                Step::Parked => Served::Parked(conn.into_parts()),
                Step::SetParkTimer => continue,
            };
        }
    }

    /// When the clock's timers must be looked at again; `None` (logged) when one has
    /// expired and the connection is to close.
    fn next_check(&self) -> Option<Instant> {
        let phase = match self
            .clock
            .verdict(self.ctx.idle_timeout, self.ctx.header_timeout)
        {
            Verdict::WaitUntil(t) => return Some(t),
            Verdict::Expired(phase) => phase,
        };
        let why = match phase {
            Phase::Idle => "idle_timeout (keep-alive)",
            Phase::Head => "header_timeout: request head not complete",
            Phase::Busy => "idle_timeout of the upstream exchange: no byte either way",
        };
        tracing::debug!(listener = %self.ctx.name, peer = %self.peer, "closing client connection: {why}");
        None
    }

    fn closed(&self) {
        if self.shutdown.hard.is_cancelled() {
            tracing::debug!(listener = %self.ctx.name, peer = %self.peer, "closing client connection: shutdown grace ended");
        } else {
            tracing::info!(listener = %self.ctx.name, peer = %self.peer, "closing client connection: closed by the operator");
        }
    }
}

/// What a poll of hyper's connection came to.
enum Step {
    /// hyper's connection finished (after an upgrade too: see [`Served::Upgraded`]).
    Ended(hyper::Result<()>),
    /// hyper found itself idle and stopped without shutting the socket down.
    Parked,
    /// The connection went idle: the driver sets the park timer (`park_at`).
    SetParkTimer,
}

/// How long a connection stays idle before it is parked. Parking costs a few thousand
/// instructions (hyper's connection and buffers are dropped and built again), so a
/// client that sends its next request at once keeps its connection as it is; one that
/// goes quiet (a browser between pages, 10,000 idle keep-alive clients) gives its
/// buffers back within this.
const PARK_AFTER: Duration = Duration::from_millis(20);

/// One poll of hyper's connection, parking it when it is idle.
///
/// Parking asks hyper for a graceful shutdown and polls it once without shutting the
/// socket down. hyper finishes at once, touching nothing, only if it was idle; if it
/// still has a message to finish (a request body not read to its end, say), keep-alive
/// is now off and the connection closes after that message, as hyper would close it
/// anyway in the cases where this happens. A park poll that read from the socket
/// finished a request body, not an idle connection: that connection is closed, never
/// served again (the next bytes could be the rest of a body).
struct Turn<'a> {
    conn: &'a mut Box<HyperConn>,
    clock: &'a Clock,
    may_park: &'a mut bool,
    /// The park timer: set (by the driver, on [`Step::SetParkTimer`]) to when the idle
    /// connection is due to park; `None` when it is not set.
    park_at: &'a mut Option<Instant>,
}

impl Future for Turn<'_> {
    type Output = Step;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Step> {
        let this = self.get_mut();
        let conn = &mut **this.conn;
        if let Poll::Ready(res) = Pin::new(&mut *conn).poll(cx) {
            return Poll::Ready(Step::Ended(res));
        }
        if !*this.may_park {
            return Poll::Pending;
        }
        // A connection that went idle is parked only once it has stayed idle for
        // `PARK_AFTER`; until then the park timer wakes the driver. One timer at a time:
        // a client that keeps sending resets nothing per request.
        let Some(due) = this.clock.park_due(PARK_AFTER) else {
            return Poll::Pending;
        };
        if due > Instant::now() {
            if this.park_at.is_none() {
                *this.park_at = Some(due);
                return Poll::Ready(Step::SetParkTimer);
            }
            return Poll::Pending;
        }
        *this.may_park = false;
        let reads = this.clock.reads();
        Pin::new(&mut *conn).graceful_shutdown();
        match conn.poll_without_shutdown(cx) {
            Poll::Ready(Ok(())) if this.clock.reads() == reads => Poll::Ready(Step::Parked),
            Poll::Ready(Ok(())) => Poll::Ready(Step::Ended(Ok(()))),
            Poll::Ready(Err(e)) => Poll::Ready(Step::Ended(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}
