//! TCP mode (L4): every connection accepted on a `protocol = "tcp"` listener becomes a
//! tunnel to a server of the listener's upstream — bytes both ways, nothing parsed.
//!
//! A tunnel's life, in order:
//! 1. Connect: the upstream's balancer picks a server; tidegate connects to it (Happy
//!    Eyeballs for a host name, or its Unix socket) within `connect_timeout`. When that
//!    fails it moves to another server, up to the upstream's `retries` — always safe,
//!    since nothing was sent yet. No server reached: the client connection is closed
//!    and the failure logged at warn, naming upstream, address and errno.
//! 2. Copy ([`copy`]): both directions through bounded buffers, half-close aware, under
//!    the listener's `idle_timeout` and the hard shutdown.
//! 3. End: a clean end, the idle timeout and the hard shutdown close both sockets
//!    normally (the client sees end of stream); an I/O error on one socket (a reset)
//!    resets the other at once — a FIN would tell it the stream ended cleanly, which is a
//!    lie (docs/design.md, "Resets are passed on, never hidden"). One log line per tunnel
//!    says how it ended.
//!
//! Invariants: a tunnel's sockets live exactly as long as its task, which runs on the
//! drain tracker; nothing but the copy's end, the idle timer, the hard shutdown or a
//! close through the connection registry ends it — the graceful drain lets it run,
//! since a tunnel has no request boundary at which to stop. The upstream server counts
//! the tunnel as active (`least_conn`) while it lives. Both ends are in the connection
//! registry while the task runs (client: `tcp`, `waiting_upstream` then `tunnel`;
//! upstream: `tcp`, `tunnel`), sharing one close token.

pub mod copy;
pub mod hello;

use std::sync::Arc;
use std::time::Duration;

use crate::drain::Shutdown;
use crate::endpoint::{PeerAddr, Stream, TcpOptions};
use crate::errno::describe_io_error;
use crate::failure::{Retry, UpstreamFailure};
use crate::handoff::{Pending, Tunnel};
use crate::listener_stats::ListenerMetrics;
use crate::registry::{ConnProtocol, ConnState, NewConn, Registry, SockAddr};
use crate::side::Side;
use crate::tls::ClientStream;
use crate::upstream::connect::{Connected, Resolve};
use crate::upstream::health::Outcome;
use crate::upstream::{ActiveGuard, Upstream};
use copy::Ending;
pub use copy::TunnelStats;

/// A TCP-mode listener at run time (shared by all its addresses).
pub struct TunnelListener {
    /// The config name.
    pub name: String,
    /// No byte either way on a tunnel for this long closes it.
    pub idle_timeout: Duration,
    /// Options of accepted TCP sockets.
    pub client_tcp: TcpOptions,
    /// Where every tunnel goes.
    pub upstream: Arc<Upstream>,
    resolver: Arc<dyn Resolve>,
    registry: Arc<Registry>,
    metrics: Arc<ListenerMetrics>,
    /// The config generation it was built from, shown for each connection.
    pub generation: u64,
    /// `tls`: each connection's handshake before the upstream is dialled; the tunnel
    /// then carries the plaintext.
    pub(crate) tls: Option<Arc<crate::tls::Terminator>>,
    /// `tls_passthrough`: the upstream is chosen by the ClientHello's SNI name (see
    /// [`Passthrough`]); `upstream` is the one for names no route has.
    passthrough: Option<Passthrough>,
}

/// A TCP listener's `tls_passthrough` at run time.
#[derive(Debug)]
struct Passthrough {
    routes: Vec<(tidegate_config::HostMatch, Arc<Upstream>)>,
    hello_timeout: Duration,
}

impl Passthrough {
    /// The upstream for SNI name `sni`: the most specific route, or `default`.
    fn pick<'a>(&'a self, sni: Option<&str>, default: &'a Arc<Upstream>) -> &'a Arc<Upstream> {
        sni.and_then(|name| {
            self.routes
                .iter()
                .filter_map(|(m, up)| m.rank(name).map(|r| (r, up)))
                .max_by_key(|(r, _)| *r)
                .map(|(_, up)| up)
        })
        .unwrap_or(default)
    }
}

impl std::fmt::Debug for TunnelListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelListener")
            .field("name", &self.name)
            .field("upstream", &self.upstream.name)
            .finish_non_exhaustive()
    }
}

// === impl TunnelListener ===

impl TunnelListener {
    /// The tunnel side of an HTTP listener, for a WebSocket tunnel handed over by the
    /// process before a binary upgrade: relayed like a TCP-mode tunnel to `upstream`,
    /// under the upstream's `idle_timeout`, counted in the HTTP listener's `metrics`.
    pub fn for_adopted(
        http: &crate::http::HttpListener,
        upstream: Arc<Upstream>,
        resolver: Arc<dyn Resolve>,
    ) -> Self {
        TunnelListener {
            name: http.name.clone(),
            idle_timeout: upstream.timeouts.idle,
            client_tcp: http.client_tcp,
            upstream,
            resolver,
            registry: http.registry.clone(),
            metrics: http.metrics().clone(),
            generation: http.generation,
            // An adopted tunnel was a plain one (a TLS session never moves), and went
            // to `upstream` (a passthrough tunnel is never handed over).
            tls: None,
            passthrough: None,
        }
    }

    /// Builds the run-time listener. `None` (logged at error) when the config names no
    /// upstream or one not in `upstreams` — the config validator refuses both, so this
    /// only guards against a validator bug without a panic.
    pub fn new(
        cfg: &tidegate_config::Listener,
        upstreams: &[Arc<Upstream>],
        resolver: Arc<dyn Resolve>,
        registry: &Arc<Registry>,
        metrics: Arc<ListenerMetrics>,
        generation: u64,
    ) -> Option<Self> {
        let Some(name) = cfg.upstream.as_deref() else {
            tracing::error!(listener = %cfg.name, "TCP listener without an upstream; not listening");
            return None;
        };
        let Some(upstream) = upstreams.iter().find(|u| u.name == name) else {
            tracing::error!(listener = %cfg.name, upstream = %name, "TCP listener names an unknown upstream; not listening");
            return None;
        };
        let tls = cfg
            .tls
            .as_ref()
            .map(|t| Arc::new(crate::tls::Terminator::new(&cfg.name, t, metrics.clone())));
        let passthrough = match &cfg.tls_passthrough {
            None => None,
            Some(p) => {
                let mut routes = Vec::with_capacity(p.routes.len());
                for r in &p.routes {
                    let Some(up) = upstreams.iter().find(|u| u.name == r.upstream) else {
                        tracing::error!(listener = %cfg.name, upstream = %r.upstream, "tls_passthrough route names an unknown upstream; not listening");
                        return None;
                    };
                    routes.push((r.sni.clone(), up.clone()));
                }
                Some(Passthrough {
                    routes,
                    hello_timeout: p.hello_timeout,
                })
            }
        };
        Some(TunnelListener {
            tls,
            passthrough,
            name: cfg.name.clone(),
            idle_timeout: cfg.idle_timeout,
            client_tcp: TcpOptions {
                nodelay: true,
                keepalive: cfg.tcp_keepalive,
            },
            upstream: upstream.clone(),
            resolver,
            registry: registry.clone(),
            metrics,
            generation,
        })
    }

    /// Its counters (byte totals), read by the metrics exposition.
    pub fn metrics(&self) -> &Arc<ListenerMetrics> {
        &self.metrics
    }
}

/// Serves one client connection of a TCP listener until its tunnel ends (see the
/// module's lifecycle). `local` is our end of the client socket. With `tls`, the
/// handshake comes first, before any upstream is dialled.
pub async fn serve_tunnel(
    ctx: Arc<TunnelListener>,
    client: Stream,
    peer: PeerAddr,
    local: SockAddr,
    shutdown: Shutdown,
) {
    // A child of `hard`: the copy selects on one token for the grace's end and for a
    // close through the registry.
    let close = shutdown.hard.child_token();
    let state = if ctx.tls.is_some() || ctx.passthrough.is_some() {
        // The handshake (or the ClientHello) comes first.
        ConnState::Reading
    } else {
        ConnState::WaitingUpstream
    };
    let stats = register(&ctx, peer, local, ConnProtocol::Tcp, state, &close);
    let mut client = match &ctx.tls {
        None => ClientStream::Plain(client),
        // Boxed: a plain tunnel's future does not carry rustls's handshake state, and a
        // TLS one gives it back once done.
        Some(tls) => match Box::pin(tls.accept(client, peer, &close)).await {
            Some(s) => {
                stats.conn().set_state(ConnState::WaitingUpstream);
                s
            }
            None => return,
        },
    };
    // Passthrough: the ClientHello is read (and goes first to the upstream) to pick it.
    let (upstream, pending) = match &ctx.passthrough {
        None => (&ctx.upstream, Pending::default()),
        Some(p) => {
            // Boxed, as the handshake above.
            let read = Box::pin(read_hello(&ctx, p, &mut client, peer, &close));
            let Some((hello, sni)) = read.await else {
                return;
            };
            stats.conn().set_state(ConnState::WaitingUpstream);
            let up = p.pick(sni.as_deref(), &ctx.upstream);
            tracing::debug!(listener = %ctx.name, %peer, sni = sni.as_deref().unwrap_or("-"), upstream = %up.name, "TLS passed through by SNI");
            let pending = Pending {
                to_upstream: hello,
                to_client: Vec::new(),
            };
            (up, pending)
        }
    };
    stats.conn().add_request();
    let connected = tokio::select! {
        c = connect(&ctx, upstream, peer) => c,
        _ = close.cancelled() => {
            tracing::debug!(listener = %ctx.name, %peer, "closing client connection while connecting upstream: {}", closed_why(&shutdown));
            return;
        }
    };
    // Dropping the client closes it: nothing was relayed, there is nothing to reset.
    let Some((active, upstream)) = connected else {
        return;
    };
    relay(
        &ctx, client, peer, stats, close, active, upstream, pending, &shutdown,
    )
    .await;
}

/// Reads the client's ClientHello (`tls_passthrough`) within `hello_timeout`: the bytes
/// read, all of them for the upstream, and the SNI name. `None` (logged at debug,
/// counted as a failed handshake) when it is not TLS, the client closed or went silent,
/// or `close` fired.
async fn read_hello(
    ctx: &TunnelListener,
    p: &Passthrough,
    client: &mut ClientStream,
    peer: PeerAddr,
    close: &tokio_util::sync::CancellationToken,
) -> Option<(Vec<u8>, Option<String>)> {
    use crate::listener_stats::HandshakeFailure;
    use tokio::io::AsyncReadExt as _;
    let read = async {
        let mut buf = Vec::with_capacity(2048);
        // Parsed again only once the record in progress is complete, so a client that
        // trickles its hello costs one parse per record, not one per read.
        let mut need = 0;
        // Bounded: each turn reads at least one byte, up to `MAX_HELLO` and a record.
        loop {
            if buf.len() >= need {
                match hello::parse(&buf) {
                    hello::Hello::Sni(sni) => return Ok((buf, sni)),
                    hello::Hello::NotTls => {
                        return Err((HandshakeFailure::NotTls, "not a TLS ClientHello".to_owned()))
                    }
                    hello::Hello::Incomplete { need: n } => need = n,
                }
            }
            // At most the rest of the record in progress: the buffer never grows past
            // what a ClientHello of `MAX_HELLO` bytes takes.
            let mut chunk = [0u8; 4096];
            let room = need.saturating_sub(buf.len()).clamp(1, chunk.len());
            match client.read(&mut chunk[..room]).await {
                Ok(0) => {
                    return Err((
                        HandshakeFailure::Closed,
                        "the client closed the connection before its ClientHello".to_owned(),
                    ))
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err((HandshakeFailure::Io, describe_io_error(&e))),
            }
        }
    };
    let attempt = crate::tls::Attempt {
        listener: &ctx.name,
        peer,
        what: "TLS passthrough ClientHello",
        limit: ("hello_timeout", p.hello_timeout),
        metrics: &ctx.metrics,
    };
    attempt.run(read, close).await
}

/// Serves a tunnel handed over by the process before a binary upgrade: `client` and
/// `upstream` are its sockets, `pending` the bytes it had read and not yet written,
/// `server` the server's address as configured. The tunnel goes on as if it had been
/// accepted here (and can be handed over again).
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of a tunnel that moved"
)]
pub async fn adopt_tunnel(
    ctx: Arc<TunnelListener>,
    protocol: ConnProtocol,
    client: Stream,
    upstream: Stream,
    pending: Pending,
    server: String,
    local: SockAddr,
    shutdown: Shutdown,
) {
    let server = server.as_str();
    let peer = client.peer_addr().unwrap_or(PeerAddr::Unix);
    let close = shutdown.hard.child_token();
    let Some(active) = ctx.upstream.guard_for(server) else {
        tracing::info!(listener = %ctx.name, %peer, server, "a tunnel handed over names a server this config does not have; closing it");
        return;
    };
    let stats = register(&ctx, peer, local, protocol, ConnState::Tunnel, &close);
    stats.conn().add_request();
    let connected = Connected {
        peer: upstream.peer_addr().ok().and_then(|p| match p {
            PeerAddr::Tcp(a) => Some(a),
            PeerAddr::Unix => None,
        }),
        local: upstream.local_tcp_addr(),
        stream: upstream,
    };
    tracing::debug!(listener = %ctx.name, %peer, server, "tunnel adopted from the previous process");
    let client = ClientStream::Plain(client);
    relay(
        &ctx, client, peer, stats, close, active, connected, pending, &shutdown,
    )
    .await;
}

/// Enters a client connection of `ctx` in the registry, closed through `close`.
fn register(
    ctx: &TunnelListener,
    peer: PeerAddr,
    local: SockAddr,
    protocol: ConnProtocol,
    state: ConnState,
    close: &tokio_util::sync::CancellationToken,
) -> TunnelStats {
    TunnelStats::registered(ctx.registry.register(NewConn {
        side: Side::Client,
        name: ctx.metrics.name.clone(),
        peer: match peer {
            PeerAddr::Tcp(a) => SockAddr::Tcp(a),
            PeerAddr::Unix => SockAddr::Unix(None),
        },
        local,
        protocol,
        state,
        close: close.clone(),
        server: None,
        totals: Some(ctx.metrics.totals.clone()),
        generation: ctx.generation,
    }))
}

/// Relays between `client` and the connected `upstream` until the tunnel ends or is
/// handed to a new process (a binary upgrade), then closes both (resetting the other
/// side of a failure) and logs the end.
#[allow(clippy::too_many_arguments, reason = "one tunnel's parts, moved in")]
async fn relay(
    ctx: &TunnelListener,
    mut client: ClientStream,
    peer: PeerAddr,
    stats: TunnelStats,
    close: tokio_util::sync::CancellationToken,
    active: ActiveGuard,
    upstream: Connected,
    mut pending: Pending,
    shutdown: &Shutdown,
) {
    let upstream_entry = ctx.registry.register_mirror(
        active.server().upstream_conn(
            (upstream.peer, upstream.local),
            ConnProtocol::Tcp,
            ConnState::Tunnel,
            close.clone(),
        ),
        stats.conn(),
    );
    stats
        .conn()
        .link(active.server().id(), Some(upstream_entry.conn()));
    stats.conn().set_state(ConnState::Tunnel);
    let Connected {
        stream: mut upstream_stream,
        peer: upstream_addr,
        local: upstream_local,
    } = upstream;
    let server = active.server();
    let address = upstream_addr.map_or_else(|| server.addr.to_string(), |a| a.to_string());
    // Our side of a Unix-socket connection has no address.
    let local = upstream_local.map_or_else(|| "unix".to_owned(), |a| a.to_string());
    tracing::debug!(
        listener = %ctx.name, %peer, upstream = %active.upstream().name, server = %server.addr,
        %address, %local, "tunnel open"
    );
    // Bounded: a turn ends the tunnel, hands it over (a return), or finds the export
    // closed meanwhile, after which no turn stops for it.
    let ending = loop {
        let export = &shutdown.export;
        // A TLS session cannot move to another process: it ends here. Nor can a
        // passthrough tunnel (its upstream is the SNI's, which the adopting side of a
        // handoff does not look up): it ends here too.
        let watching = !client.is_tls()
            && ctx.passthrough.is_none()
            && (!export.token().is_cancelled() || export.is_open());
        let ending = copy::run_with(
            &mut client,
            &mut upstream_stream,
            ctx.idle_timeout,
            &close,
            &stats,
            watching.then(|| export.token()),
            std::mem::take(&mut pending),
        )
        .await;
        let Ending::Exported(moving) = ending else {
            break ending;
        };
        let plain = match client.into_plain() {
            Ok(plain) => plain,
            // Not watched for an export (above); goes on here all the same.
            Err(tls) => {
                (client, pending) = (tls, moving);
                continue;
            }
        };
        let tunnel = Tunnel {
            protocol: ConnProtocol::Tcp,
            client: plain,
            upstream: upstream_stream,
            pending: moving,
            upstream_name: active.upstream().name.clone(),
            server: server.addr.to_string(),
        };
        let Err(back) = export.send_tunnel(&ctx.name, tunnel) else {
            tracing::debug!(listener = %ctx.name, %peer, "tunnel handed to the new process");
            return;
        };
        // The export ended meanwhile: go on here.
        let back = *back;
        (client, upstream_stream, pending) = (
            ClientStream::Plain(back.client),
            back.upstream,
            back.pending,
        );
    };
    if let Ending::Failed { side, .. } = &ending {
        match side.other() {
            // A TLS client gets a reset too, without a close_notify: the stream did not
            // end cleanly.
            Side::Client => reset(client.into_raw(), &ctx.name, peer),
            Side::Upstream => reset(upstream_stream, &ctx.name, peer),
        }
    } else {
        drop(client);
        drop(upstream_stream);
    }
    log_end(ctx, peer, &active, &address, &ending, &stats, shutdown);
}

/// Why a connection's close token fired: the grace ended, or an operator closed it.
fn closed_why(shutdown: &Shutdown) -> &'static str {
    if shutdown.hard.is_cancelled() {
        "shutdown grace ended"
    } else {
        "closed by the operator"
    }
}

/// Picks a server and connects, moving to another server on failure up to the
/// upstream's `retries`. `None` when no server could be reached (logged at warn).
async fn connect(
    ctx: &TunnelListener,
    up: &Arc<Upstream>,
    peer: PeerAddr,
) -> Option<(ActiveGuard, Connected)> {
    let mut active = match up.pick(&[]) {
        Ok(a) => a,
        Err(unavailable) => {
            tracing::warn!(listener = %ctx.name, %peer, "{unavailable}; closing client connection");
            return None;
        }
    };
    // Servers whose connect failed (allocates only on a failure).
    let mut tried: Vec<usize> = Vec::new();
    // Bounded: every failed turn adds a server to `tried`, at most `retries` of them.
    loop {
        let server = active.server();
        match server
            .connect_stream(&up.name, &up.timeouts, &ctx.resolver, up.tcp)
            .await
        {
            Ok(c) => {
                // For a tunnel, an established connection is all the server can show.
                server.record(Outcome::Success);
                return Some((active, c));
            }
            Err(e) => {
                let failure = UpstreamFailure::Connect(e);
                failure.record_on(server);
                let e = failure.message(&up.name, &server.addr.to_string());
                if failure.retry() == Retry::AnotherServer && tried.len() < up.retries {
                    tried.push(active.index());
                    if let Ok(next) = up.pick(&tried) {
                        tracing::warn!(listener = %ctx.name, %peer, error = %e,
                            next = %next.server().addr, "connect failed; trying another server");
                        active = next;
                        continue;
                    }
                }
                tracing::warn!(listener = %ctx.name, %peer, error = %e,
                    "cannot connect upstream; closing client connection");
                return None;
            }
        }
    }
}

/// Closes `stream` with a reset where the transport has one (TCP: `SO_LINGER` 0, then
/// close); a Unix socket has none and is closed normally. A zero linger never blocks
/// the close (tokio's warning about `SO_LINGER` is about a non-zero one).
fn reset(stream: Stream, listener: &str, peer: PeerAddr) {
    if let Stream::Tcp(s) = &stream {
        if let Err(e) = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO)) {
            // The close still happens, only as a FIN.
            tracing::debug!(listener, %peer, error = %describe_io_error(&e), "cannot set SO_LINGER 0 to reset a tunnel socket");
        }
    }
    drop(stream);
}

/// The one line per tunnel end. An upstream's reset or error is logged at info (it is
/// what an operator chasing a hidden reset looks for); every other end, a client's reset
/// included, is expected and logged at debug (docs/design.md, "House rules").
fn log_end(
    ctx: &TunnelListener,
    peer: PeerAddr,
    active: &ActiveGuard,
    address: &str,
    ending: &Ending,
    stats: &TunnelStats,
    shutdown: &Shutdown,
) {
    let server = &active.server().addr;
    let upstream = &active.upstream().name;
    let bytes_in = stats.bytes_in();
    let bytes_out = stats.bytes_out();
    let duration_ms = u64::try_from(stats.age().as_millis()).unwrap_or(u64::MAX);
    let (what, failed) = match ending {
        Ending::Failed { side, op, error } => (
            format!(
                "tunnel ended: {side} {} failed; {} reset",
                op.as_str(),
                side.other()
            ),
            Some((*side, describe_io_error(error))),
        ),
        Ending::Closed { first } => (
            format!(
                "tunnel closed: {first} closed first, then {}",
                first.other()
            ),
            None,
        ),
        Ending::Idle => (
            format!(
                "tunnel closed: idle_timeout ({}ms) with no byte either way",
                ctx.idle_timeout.as_millis()
            ),
            None,
        ),
        Ending::Shutdown => (format!("tunnel closed: {}", closed_why(shutdown)), None),
        Ending::Exported(_) => ("tunnel handed to the new process".to_owned(), None),
    };
    match failed {
        Some((Side::Upstream, reason)) => {
            tracing::info!(listener = %ctx.name, %peer, %upstream, %server, %address,
                side = %Side::Upstream, %reason, bytes_in, bytes_out, duration_ms, "{what}");
        }
        Some((side, reason)) => {
            tracing::debug!(listener = %ctx.name, %peer, %upstream, %server, %address,
                %side, %reason, bytes_in, bytes_out, duration_ms, "{what}");
        }
        None => {
            tracing::debug!(listener = %ctx.name, %peer, %upstream, %server, %address,
                bytes_in, bytes_out, duration_ms, "{what}");
        }
    }
}
