//! The connection driver: one task per client connection, tidegate's own header and
//! idle timers, parking of idle keep-alive connections, the drain, and the tunnel
//! after a 101 (see the invariants of [`super`]).

use super::client_conn::{ClientConn, ClientIo, Phase, Verdict};
use super::headers;
use super::listener::HttpListener;
use super::rewind::Rewind;
use crate::drain::Shutdown;
use crate::endpoint::{EndWatch, PeerAddr, Stream, Waiting};
use crate::observed::Observed;
use crate::registry::{ConnProtocol, ConnState, NewConn, SockAddr};
use crate::side::Side;
use crate::tls::ClientStream;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// hyper's connection over a client socket.
type HyperConn = http1::Connection<TokioIo<ClientIo>, super::service::ConnService>;

/// Serves one client connection until it ends (see the module's invariants). `local`
/// is our end of the socket. On a TLS listener the handshake runs first, here in the
/// connection's task (`crate::tls`), the connection already in the registry (state
/// `reading`) and closed by the same token as afterwards.
///
/// Not an `async fn`: the connection is set up here, and the future returned keeps
/// only what a parked connection needs (an `async fn` would also keep its arguments).
pub fn serve_connection(
    slot: Arc<ArcSwap<HttpListener>>,
    stream: Stream,
    peer: PeerAddr,
    local: SockAddr,
    shutdown: Shutdown,
) -> impl Future<Output = ()> + Send {
    use futures_util::future::Either;
    let Some(tls) = slot.load().tls.clone() else {
        let driver = Driver::registered(slot, peer, local, shutdown, ConnState::Idle);
        let io = driver.io(ClientStream::Plain(stream), bytes::Bytes::new());
        return Either::Left(driver.run(io));
    };
    let driver = Driver::registered(slot, peer, local, shutdown, ConnState::Reading);
    // Boxed twice: a plain connection's future stays the size of its own (rustls's
    // handshake state is large), and a TLS one gives the handshake's memory back once
    // it is done.
    Either::Right(Box::pin(async move {
        let handshake = Box::pin(tls.accept(stream, peer, &driver.close));
        let Some(stream) = handshake.await else {
            if driver.close.is_cancelled() {
                driver.closed();
            }
            return;
        };
        drop(tls);
        driver.client.conn().set_state(ConnState::Idle);
        let h2 = stream.alpn() == Some(b"h2".as_slice());
        let io = driver.io(stream, bytes::Bytes::new());
        if h2 {
            Box::pin(super::h2::serve(driver.into_h2(), io)).await;
        } else {
            driver.run(io).await;
        }
    }))
}

/// Serves an idle keep-alive connection handed over by the process before a binary
/// upgrade, `read` being what it had read and not served: from here on it is as if it
/// had been accepted here.
pub fn adopt_connection(
    slot: Arc<ArcSwap<HttpListener>>,
    stream: Stream,
    read: bytes::Bytes,
    local: SockAddr,
    shutdown: Shutdown,
) -> impl Future<Output = ()> + Send {
    let peer = stream.peer_addr().unwrap_or(PeerAddr::Unix);
    let driver = Driver::registered(slot, peer, local, shutdown, ConnState::Idle);
    let io = driver.io(ClientStream::Plain(stream), read);
    driver.run(io)
}

/// How a parked connection's wait ended.
enum Parked {
    /// The client sent something: serve it.
    Readable,
    /// Close it (a timer, the drain, the grace's end, an operator).
    Close,
    /// Hand it to the new process (a binary upgrade).
    Export,
}

/// How a turn of serving ended.
enum Served {
    /// The connection is done (closed by hyper, a timer, the drain or an operator).
    Closed,
    /// hyper found the connection idle and handed it back.
    Parked(http1::Parts<TokioIo<ClientIo>, super::service::ConnService>),
    /// A 101 went out: the socket belongs to the tunnel now.
    Upgraded(
        http1::Parts<TokioIo<ClientIo>, super::service::ConnService>,
        Box<super::upgrade::Upgrade>,
    ),
}

/// One client connection: what its turns of parking and serving share.
struct Driver {
    /// The listener's settings for this turn (loaded from `slot` at each turn).
    ctx: Arc<HttpListener>,
    /// The listener's current settings, replaced by a reload: a kept connection's next
    /// request runs under the new config.
    slot: Arc<ArcSwap<HttpListener>>,
    client: Arc<ClientConn>,
    shutdown: Shutdown,
    close: tokio_util::sync::CancellationToken,
    peer: PeerAddr,
}

impl Driver {
    /// A new client connection of the listener in `slot`, entered in its registry in
    /// `state`.
    fn registered(
        slot: Arc<ArcSwap<HttpListener>>,
        peer: PeerAddr,
        local: SockAddr,
        shutdown: Shutdown,
        state: ConnState,
    ) -> Driver {
        // A child of `hard`: one token to select on closes the connection at the end of
        // the grace or when an operator closes it.
        let close = shutdown.hard.child_token();
        let ctx = slot.load_full();
        let client = ClientConn::registered(ctx.registry.register(NewConn {
            side: Side::Client,
            name: ctx.metrics.name.clone(),
            peer: match peer {
                PeerAddr::Tcp(a) => SockAddr::Tcp(a),
                PeerAddr::Unix => SockAddr::Unix(None),
            },
            local,
            protocol: ConnProtocol::Http1,
            state,
            close: close.clone(),
            server: None,
            totals: Some(ctx.metrics.totals.clone()),
            generation: ctx.generation,
        }));
        Driver {
            ctx,
            slot,
            client,
            shutdown,
            close,
            peer,
        }
    }

    /// The stream as the driver serves it, with `read` (bytes read before and not
    /// served) put back in front.
    fn io(&self, stream: ClientStream, read: bytes::Bytes) -> ClientIo {
        let mut io: ClientIo = Rewind::new(Observed::new(stream, self.client.clone()));
        if !read.is_empty() {
            io.put_back(read);
            self.client.head_started();
        }
        io
    }

    /// Parks and serves `io` in turn until the connection ends.
    async fn run(mut self, mut io: ClientIo) {
        // Bounded: every turn either waits for the client (bounded by the timers) or
        // serves at least one readable event.
        let mut fresh = true;
        loop {
            // Parked: nothing of hyper's is held while the client is quiet. Bytes put
            // back (a pipelined request hyper had started to read) are served at once.
            if !io.has_prefix() {
                match self.park(io.inner_mut().inner_mut(), fresh).await {
                    Parked::Readable => {}
                    Parked::Close => return,
                    Parked::Export => match self.hand_over(io) {
                        None => return,
                        // The export ended meanwhile: go on here.
                        Some(back) => {
                            io = back;
                            continue;
                        }
                    },
                }
            }
            // The first bytes of a plain connection: the HTTP/2 preface (h2c with prior
            // knowledge) hands it to the HTTP/2 driver; anything else is HTTP/1.
            if fresh && !io.get_ref().get_ref().is_tls() {
                let until = Instant::now() + self.ctx.header_timeout;
                let sniffed = match super::h2::peek(&io) {
                    Some(s) => s,
                    // Boxed: its state (a timer, a read) is not kept by every parked
                    // connection's task.
                    None => Box::pin(super::h2::sniff(&mut io, until, &self.close)).await,
                };
                match sniffed {
                    super::h2::Sniffed::H2 => {
                        return Box::pin(super::h2::serve(self.into_h2(), io)).await;
                    }
                    super::h2::Sniffed::Http1 => {}
                    super::h2::Sniffed::Closed => {
                        self.closed();
                        return;
                    }
                }
            }
            // A reload since the last turn: this turn's requests use the new routes,
            // upstreams and timeouts. A pointer comparison when nothing changed.
            let current = self.slot.load();
            if !Arc::ptr_eq(&current, &self.ctx) {
                self.ctx = arc_swap::Guard::into_inner(current);
                self.client.conn().set_generation(self.ctx.generation);
            }
            // Built for each turn (a parked connection keeps none of it).
            let service = super::service::ConnService {
                ctx: self.ctx.clone(),
                peer: self.peer,
                client: self.client.clone(),
                forwarded_for: headers::forwarded_for(self.peer.ip()),
            };
            // On TLS it sees records, not requests: a FIN behind a `close_notify` is
            // looked for past the bytes (see `ClientEnd`).
            let end = self.end_watch(io.get_ref().get_ref());
            // Boxed: the task keeps only what a parked connection needs.
            let conn = Box::new(self.ctx.builder.serve_connection(TokioIo::new(io), service));
            let served = self.serve(conn, end, fresh).await;
            fresh = false;
            match served {
                Served::Closed => return,
                Served::Parked(parts) => {
                    io = parts.io.into_inner();
                    if !parts.read_buf.is_empty() {
                        io.put_back(parts.read_buf);
                        self.client.head_started();
                    }
                }
                Served::Upgraded(parts, upgrade) => {
                    let mut io = parts.io.into_inner();
                    io.put_back(parts.read_buf);
                    let registry = self.ctx.registry.clone();
                    // Boxed for the same reason as hyper's connection.
                    let name = self.ctx.name.clone();
                    Box::pin(super::tunnel::tunnel(
                        io,
                        upgrade,
                        self.client,
                        registry,
                        &self.shutdown,
                        &name,
                    ))
                    .await;
                    return;
                }
            }
        }
    }

    /// Waits, holding no buffer, until `stream` is readable (true) or the connection
    /// should close (false): `idle_timeout`, the drain (an idle connection closes at
    /// once; a `fresh` one, that has sent nothing yet, gets [`FIRST_BYTES_AT_DRAIN`]),
    /// the end of the grace or an operator; or, while a binary upgrade hands
    /// connections over, until it can go.
    ///
    /// A TLS connection waits on [`ClientStream::readable`], which first looks at what
    /// rustls has already decrypted; it is never exported (its session state lives in
    /// this process): it stays and ends with the drain.
    async fn park(&self, stream: &mut ClientStream, fresh: bool) -> Parked {
        // Bounded: each turn waits for the client, a timer, the drain, an export or a
        // close.
        loop {
            // Before the drain: a binary upgrade drains this process while its idle
            // connections move to the new one.
            if self.shutdown.export.is_open() && !stream.is_tls() {
                return Parked::Export;
            }
            if self.shutdown.graceful.is_cancelled() {
                if fresh {
                    return match self.first_bytes_at_drain(stream).await {
                        true => Parked::Readable,
                        false => Parked::Close,
                    };
                }
                tracing::debug!(listener = %self.ctx.name, peer = %self.peer, "closing idle client connection: draining");
                return Parked::Close;
            }
            let Some(wake) = self.next_check() else {
                return Parked::Close;
            };
            tokio::select! {
                res = stream.readable() => {
                    // An error is hyper's to find (and report) when it reads.
                    let _ = res;
                    return Parked::Readable;
                }
                _ = self.shutdown.graceful.cancelled() => {}
                _ = self.shutdown.export.token().cancelled(), if !self.shutdown.export.token().is_cancelled() => {}
                _ = self.close.cancelled() => {
                    self.closed();
                    return Parked::Close;
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Sends the parked connection to the new process (a binary upgrade); gives the
    /// socket back when the export has ended meanwhile.
    fn hand_over(&self, io: ClientIo) -> Option<ClientIo> {
        let (read, observed) = io.into_parts();
        let client = match observed.into_inner().into_plain() {
            Ok(plain) => plain,
            // Not parked for an export (see `park`); kept here all the same.
            Err(tls) => {
                let mut io = Rewind::new(Observed::new(tls, self.client.clone()));
                io.put_back(read);
                return Some(io);
            }
        };
        let handoff = crate::handoff::Handoff {
            listener: self.ctx.name.clone(),
            kind: crate::handoff::HandoffKind::Idle {
                client,
                read: read.to_vec(),
            },
        };
        match self.shutdown.export.send(Box::new(handoff)) {
            Ok(()) => {
                tracing::debug!(listener = %self.ctx.name, peer = %self.peer, "idle client connection handed to the new process");
                None
            }
            Err(back) => match back.kind {
                crate::handoff::HandoffKind::Idle { client, .. } => Some(Rewind::new(
                    Observed::new(ClientStream::Plain(client), self.client.clone()),
                )),
                crate::handoff::HandoffKind::Tunnel { .. } => None,
            },
        }
    }

    /// Draining, and this connection has sent nothing yet: it was accepted before the
    /// listener closed (a binary upgrade hands the listener to a new process while this
    /// one drains), so its client is about to send a request it has every right to have
    /// answered. It gets [`FIRST_BYTES_AT_DRAIN`] for its first bytes; then its first
    /// request is served (`Driver::serve` holds hyper's graceful shutdown until hyper
    /// has read it, since hyper closes a connection that has read nothing at once).
    async fn first_bytes_at_drain(&self, stream: &mut ClientStream) -> bool {
        tokio::select! {
            biased;
            res = stream.readable() => {
                // An error is hyper's to find (and report) when it reads.
                let _ = res;
                true
            }
            _ = self.close.cancelled() => {
                self.closed();
                false
            }
            _ = tokio::time::sleep(FIRST_BYTES_AT_DRAIN) => {
                tracing::debug!(listener = %self.ctx.name, peer = %self.peer, "closing new client connection: draining, and it sent nothing");
                false
            }
        }
    }

    /// With `half_close`, a watch on the client's end for this turn of serving (hyper
    /// reads nothing while it serves a request, so it would not see a client leave).
    fn end_watch(&self, stream: &ClientStream) -> ClientEnd {
        if !self.ctx.half_close {
            return ClientEnd::default();
        }
        match stream.raw().end_watch() {
            Ok(watch) => ClientEnd {
                watch: Some(watch),
                paused_at: None,
                tls: stream.is_tls(),
                recheck: None,
            },
            Err(e) => {
                // Without it, a client gone mid-response is found by the next failed
                // write or the connection's timers instead.
                tracing::debug!(listener = %self.ctx.name, peer = %self.peer, error = %crate::errno::describe_io_error(&e), "cannot watch the client's end");
                ClientEnd::default()
            }
        }
    }

    /// Drives hyper's connection until it ends, parks or upgrades, enforcing the
    /// connection's timers, the drain and `close`. `fresh`: the connection's first turn.
    async fn serve(&self, mut conn: Box<HyperConn>, mut end: ClientEnd, fresh: bool) -> Served {
        // hyper's graceful shutdown of a connection that has read nothing yet closes it
        // at once. A connection here was readable, or is new (accepted just before the
        // drain: its client is about to send a request it has every right to have
        // answered), so when the drain comes before hyper has read anything, the
        // shutdown is held until it has (the request is then served, and the connection
        // closes), for at most FIRST_BYTES_AT_DRAIN.
        //
        // When the drain hands idle connections to a new process (a binary upgrade),
        // there is no shutdown at all: the connection is parked as soon as it is idle
        // (after its exchange in flight, if any), and parking hands it over.
        // Bytes, not read attempts: hyper may have tried (and found nothing) already.
        let bytes_at_start = self.client.conn().bytes_in();
        let mut hold: Option<Instant> = None;
        let mut draining = self.shutdown.graceful.is_cancelled();
        let mut park_now = draining && self.shutdown.export.is_open();
        if draining && !park_now {
            hold = Some(Instant::now() + FIRST_BYTES_AT_DRAIN);
        }
        // One park attempt per turn: a failed one has turned keep-alive off.
        let mut may_park = !draining || park_now;
        // When the park timer is set to fire (see `Turn`).
        let mut park_at: Option<Instant> = None;
        loop {
            if let Some(until) = hold {
                if self.client.conn().bytes_in() != bytes_at_start || Instant::now() >= until {
                    hold = None;
                    Pin::new(&mut *conn).graceful_shutdown();
                }
            }
            let Some(wake) = self.next_check() else {
                return Served::Closed;
            };
            let wake = park_at.map_or(wake, |t| wake.min(t));
            let wake = hold.map_or(wake, |t| wake.min(t));
            let turn = Turn {
                conn: &mut conn,
                client: &self.client,
                may_park: &mut may_park,
                park_at: &mut park_at,
                watch_bytes: hold.map(|_| bytes_at_start),
                park_now,
            };
            let step = tokio::select! {
                // First: what the client did must be seen before hyper sends a response
                // head in the same wake-up, or a FIN that came before the head would
                // look like a client gone mid-response.
                biased;
                gone = end.gone(&self.client) => {
                    tracing::debug!(listener = %self.ctx.name, peer = %self.peer, "closing client connection: {gone} mid-response");
                    return Served::Closed;
                }
                step = turn => step,
                _ = self.shutdown.graceful.cancelled(), if !draining => {
                    draining = true;
                    if self.shutdown.export.is_open() {
                        park_now = true;
                        continue;
                    }
                    may_park = false;
                    if fresh && self.client.conn().bytes_in() == 0 {
                        hold = Some(Instant::now() + FIRST_BYTES_AT_DRAIN);
                    } else {
                        Pin::new(&mut *conn).graceful_shutdown();
                    }
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
                    match self.client.take_upgrade() {
                        Some(up) => Served::Upgraded(conn.into_parts(), up),
                        None => Served::Closed,
                    }
                }
                Step::Parked => Served::Parked(conn.into_parts()),
                Step::SetParkTimer | Step::Rearm => continue,
            };
        }
    }

    /// When the connection's timers must be looked at again; `None` (logged) when one has
    /// expired and the connection is to close.
    fn next_check(&self) -> Option<Instant> {
        let phase = match self
            .client
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

    /// The connection turned out to be HTTP/2: what its driver (`super::h2`) takes.
    fn into_h2(self) -> super::h2::H2Conn {
        super::h2::H2Conn {
            local: self.client.conn().local().clone(),
            slot: self.slot,
            client: self.client,
            shutdown: self.shutdown,
            close: self.close,
            peer: self.peer,
        }
    }

    fn closed(&self) {
        if self.shutdown.hard.is_cancelled() {
            tracing::debug!(listener = %self.ctx.name, peer = %self.peer, "closing client connection: shutdown grace ended");
        } else {
            tracing::info!(listener = %self.ctx.name, peer = %self.peer, "closing client connection: closed by the operator");
        }
    }
}

/// Watches the client's end while hyper serves a request without reading (listener
/// `half_close`): a FIN before the response head is a half-close (the client still
/// reads its response; hyper closes after it), a FIN or a reset once the response is
/// under way is a client gone, whose connection (and upstream exchange) is closed at
/// once rather than when a write fails.
///
/// On TLS the socket shows records: a client that closes sends its `close_notify`
/// (bytes) before its FIN, so bytes waiting are not the end of the watch there: the FIN
/// behind them is looked for (`EndWatch::peer_shut_down`) at each wake-up of the
/// connection and every [`TLS_END_RECHECK`], with the same rule: before the response
/// head a half-close, after it a client gone.
#[derive(Default)]
struct ClientEnd {
    /// `None`: off, or the client has half-closed (nothing more to see).
    watch: Option<EndWatch>,
    /// Unread bytes were waiting (a pipelined request) when hyper had attempted this
    /// many reads: nothing to see until hyper reads again.
    paused_at: Option<u32>,
    /// The stream is TLS.
    tls: bool,
    /// TLS, bytes waiting: when to look for a FIN behind them again (allocated the first
    /// time bytes wait).
    recheck: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// How often a TLS connection with bytes waiting (its `close_notify`, say) is checked
/// for a FIN behind them while nothing else wakes it: half of the one-second bound on
/// noticing a client gone (docs/design.md, "Principles" 1).
const TLS_END_RECHECK: Duration = Duration::from_millis(500);

impl ClientEnd {
    /// Resolves when the client has gone away mid-response (what it did, for the log).
    fn gone<'a>(&'a mut self, client: &'a ClientConn) -> impl Future<Output = &'static str> + 'a {
        std::future::poll_fn(move |cx| {
            let Some(watch) = &self.watch else {
                return Poll::Pending;
            };
            // Until the request is read, hyper is reading and sees the end itself. Any
            // change of phase happens while hyper is polled in this task, which polls
            // this again on its next wake-up.
            if !client.request_read() || self.paused_at == Some(client.reads()) {
                return Poll::Pending;
            }
            self.paused_at = None;
            match watch.poll_end(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(Waiting::Bytes)) if self.tls => {
                    match watch.peer_shut_down() {
                        // A close_notify and a FIN before the response: a half-close.
                        Ok(true) if !client.response_under_way() => {
                            self.watch = None;
                            return Poll::Pending;
                        }
                        Ok(true) => return Poll::Ready("client closed its connection"),
                        // Found by the next read or write instead.
                        Ok(false) | Err(_) => {}
                    }
                    // The readiness stays set while bytes wait, so no wake-up comes
                    // for a FIN behind them: the timer brings one.
                    let recheck = self
                        .recheck
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(TLS_END_RECHECK)));
                    if recheck.as_mut().poll(cx).is_ready() {
                        recheck.as_mut().reset(Instant::now() + TLS_END_RECHECK);
                        // Registers the waker for the new deadline.
                        let _ = recheck.as_mut().poll(cx);
                    }
                    Poll::Pending
                }
                Poll::Ready(Ok(Waiting::Bytes)) => {
                    self.paused_at = Some(client.reads());
                    Poll::Pending
                }
                Poll::Ready(Ok(Waiting::End)) if !client.response_under_way() => {
                    // Half-closed after a complete request: answered, and hyper closes
                    // the connection after the response (it reads the FIN then).
                    self.watch = None;
                    Poll::Pending
                }
                Poll::Ready(Ok(Waiting::End)) => Poll::Ready("client closed its connection"),
                Poll::Ready(Err(_)) => Poll::Ready("client reset its connection"),
            }
        })
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
    /// The exchange's idle limit changed: the driver computes its wake-up again.
    Rearm,
}

/// During the drain, how long a connection accepted just before it may take to send its
/// first bytes before it is closed unserved (see `Driver::first_bytes_at_drain`): the
/// bytes of a client that connected follow within a round trip, and the bound keeps a
/// silent pre-connection from holding the drain open.
pub const FIRST_BYTES_AT_DRAIN: Duration = Duration::from_secs(2);

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
    client: &'a ClientConn,
    may_park: &'a mut bool,
    /// The park timer: set (by the driver, on [`Step::SetParkTimer`]) to when the idle
    /// connection is due to park; `None` when it is not set.
    park_at: &'a mut Option<Instant>,
    /// While the drain's shutdown is held for a first read: the client's byte count to
    /// watch (any byte ends the turn, so the driver shuts down gracefully at once).
    watch_bytes: Option<u64>,
    /// Park as soon as the connection is idle, not `PARK_AFTER` later (the drain hands
    /// idle connections over).
    park_now: bool,
}

impl Future for Turn<'_> {
    type Output = Step;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Step> {
        let this = self.get_mut();
        let conn = &mut **this.conn;
        if let Poll::Ready(res) = Pin::new(&mut *conn).poll(cx) {
            return Poll::Ready(Step::Ended(res));
        }
        if this
            .watch_bytes
            .is_some_and(|b| this.client.conn().bytes_in() != b)
        {
            return Poll::Ready(Step::Rearm);
        }
        // The service set the exchange's idle limit during that poll: the driver looks
        // at its timers again.
        if this.client.take_rearm() {
            return Poll::Ready(Step::Rearm);
        }
        if !*this.may_park {
            return Poll::Pending;
        }
        // A connection that went idle is parked only once it has stayed idle for
        // `PARK_AFTER`; until then the park timer wakes the driver. One timer at a time:
        // a client that keeps sending resets nothing per request.
        let after = if this.park_now {
            Duration::ZERO
        } else {
            PARK_AFTER
        };
        let Some(due) = this.client.park_due(after) else {
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
        let reads = this.client.reads();
        Pin::new(&mut *conn).graceful_shutdown();
        match conn.poll_without_shutdown(cx) {
            Poll::Ready(Ok(())) if this.client.reads() == reads => Poll::Ready(Step::Parked),
            Poll::Ready(Ok(())) => Poll::Ready(Step::Ended(Ok(()))),
            Poll::Ready(Err(e)) => Poll::Ready(Step::Ended(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}
