//! The connections of one upstream server: the keep-alive pool of HTTP/1.1
//! connections (`hyper::client::conn::http1`), or the shared HTTP/2 connections
//! (`hyper::client::conn::http2`) of a `protocol = "h2"` upstream.
//!
//! Invariants:
//! - Every upstream connection's hyper `Connection` future runs in its own task until
//!   the connection ends; when the upstream closes an idle pooled connection, that
//!   future completes and the task removes the entry at once (no CLOSE_WAIT waits for
//!   the next request to notice).
//! - A connection is in the idle list only while nobody uses it, at most `max_idle` of
//!   them, and for at most `idle_timeout` (the task closes it then).
//! - A connection is in the idle list only when hyper can send a new request on it
//!   ([`SendRequest::is_ready`]): after an early response (a 401 to a POST whose body is
//!   still being sent) it is not, and [`Checkout::release`] waits for it in a task of its
//!   own for at most [`RELEASE_READY_WAIT`], then closes it. So [`Pool::take`] never hands
//!   out a busy connection and a checkout never waits on one.
//! - A [`Checkout`] that is dropped without [`Checkout::release`] closes its connection:
//!   a half-read response, a cancelled request or an upgrade never returns to the pool.
//! - Every connection is in the connection registry while its task runs (the task owns
//!   the [`Registration`]); the entry's close token is the connection's `kill`, so
//!   closing it from the registry closes it like the pool does.
//! - HTTP/2: every open connection is in the shared list, and one [`Checkout`] is one
//!   stream on it. A connection takes a new stream while it has fewer than its limit in
//!   flight: the smaller of `h2_max_streams_per_connection` and what the server
//!   advertised (`SETTINGS_MAX_CONCURRENT_STREAMS`, read live from hyper); when every
//!   connection is at its limit a new one is opened. A connection that received GOAWAY
//!   or died leaves the list (hyper's connection future ends) and takes no new stream;
//!   its streams in flight finish. Dropping a checkout ends only its stream (hyper resets
//!   it when the request or response is dropped unfinished), never the connection. A
//!   connection with no stream for `keepalive_timeout` is closed (at once with
//!   `keepalive = 0`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::body::RequestBody;
use super::tls::UpstreamIo;
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::{http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::observed::Observed;
use crate::registry::{Conn, ConnProtocol, ConnState, Registration};

/// One upstream server's idle connections.
#[derive(Debug)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    idle: Mutex<Vec<Idle>>,
    /// HTTP/2: every open connection (in use or not).
    shared: Mutex<Vec<Shared>>,
    /// HTTP/2: connections being opened now ([`OpenPermit`]s). Changed under the
    /// `shared` lock.
    opening: AtomicUsize,
    /// HTTP/2: requests waiting for a stream (neither on a connection nor opening one).
    /// Changed under the `shared` lock.
    waiting: AtomicUsize,
    /// HTTP/2: told when a waiting request may find a stream or an open slot now (a
    /// stream ended, a connection joined or left the list, an open ended).
    changed: tokio::sync::Notify,
    /// HTTP/2: the stream limit the server advertised last (what a connection being
    /// opened is expected to take, to size the opens to the demand).
    last_limit: AtomicUsize,
    /// `h2_max_streams_per_connection`.
    max_streams: usize,
    /// `h2_max_connections`.
    max_conns: usize,
    max_idle: usize,
    idle_timeout: Duration,
    /// False while the server is in `maint`: a released connection is closed, not
    /// kept.
    keeping: AtomicBool,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<RequestBody>,
    ctl: Arc<ConnCtl>,
}

/// What sending a request on a checkout gives: the response head, or hyper's error
/// (with the request, when it was not sent).
pub type Sent =
    Result<http::Response<hyper::body::Incoming>, TrySendError<http::Request<RequestBody>>>;

/// The hyper connection of an HTTP/2 upstream connection.
type H2Connection = http2::Connection<
    TokioIo<Observed<UpstreamIo, crate::registry::Conn>>,
    RequestBody,
    TokioExecutor,
>;

/// One HTTP/2 connection in the shared list.
#[derive(Debug)]
struct Shared {
    sender: http2::SendRequest<RequestBody>,
    ctl: Arc<ConnCtl>,
    /// Polled by the connection's task; locked here only to read the server's stream
    /// limit.
    conn: Arc<Mutex<Pin<Box<H2Connection>>>>,
}

impl Shared {
    /// Whether it may take new streams at all: open, and not told to stop (GOAWAY).
    fn takes_streams(&self) -> bool {
        !self.sender.is_closed() && self.sender.is_ready()
    }

    /// The server's `SETTINGS_MAX_CONCURRENT_STREAMS` as hyper reports it (before the
    /// server's SETTINGS arrive: the initial value this connection was opened with).
    fn server_limit(&self) -> usize {
        lock(&self.conn).current_max_send_streams()
    }
}

/// What [`Pool::stream_or_open`] gives.
#[derive(Debug)]
pub enum Slot {
    /// A stream on an open connection.
    Stream(Checkout),
    /// Open a new connection; hold the permit until it is in the list (or failed).
    Open(OpenPermit),
}

/// The right to open one HTTP/2 connection to the server; counted in the pool's
/// opens until dropped.
#[derive(Debug)]
pub struct OpenPermit {
    pool: Arc<PoolInner>,
}

impl Drop for OpenPermit {
    fn drop(&mut self) {
        {
            let _shared = lock(&self.pool.shared);
            self.pool.opening.fetch_sub(1, Ordering::Relaxed);
        }
        self.pool.changed.notify_waiters();
    }
}

/// Every HTTP/2 connection tidegate may open to the server is at its stream limit,
/// and none had a stream free within the wait: tidegate's own limit, not the server's
/// failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saturated {
    /// Connections taking requests when the wait ended.
    pub connections: usize,
    /// `h2_max_connections`.
    pub max_connections: usize,
    /// How long the request waited.
    pub waited: Duration,
}

/// One stream of an HTTP/2 connection, held by a checkout.
#[derive(Debug)]
struct Stream2 {
    sender: http2::SendRequest<RequestBody>,
    ctl: Arc<ConnCtl>,
}

/// What a checkout holds.
#[derive(Debug)]
enum Held {
    H1(Idle),
    H2(Stream2),
}

impl Held {
    fn ctl(&self) -> &Arc<ConnCtl> {
        match self {
            Held::H1(c) => &c.ctl,
            Held::H2(c) => &c.ctl,
        }
    }
}

/// Shared between a connection's task and whoever holds it.
#[derive(Debug)]
struct ConnCtl {
    id: u64,
    /// Its registry entry (state, counters, addresses).
    entry: Arc<Conn>,
    /// Cancelled to close the connection now (the registry entry's close token).
    kill: CancellationToken,
    /// When the connection went idle in the pool, in milliseconds since `base` plus one;
    /// [`IN_USE`] while checked out. Written under the pool's lock. Read by the task when
    /// its timer fires: a stamp rather than a channel, so checkout and release wake
    /// nobody (two task wake-ups per request saved on the hot path).
    idle_since: AtomicU64,
    base: Instant,
    /// HTTP/2: streams in flight (checkouts holding it). Changed under the pool's
    /// `shared` lock.
    streams: AtomicUsize,
}

/// How long a released connection that hyper is still busy with (sending the rest of
/// a request body the upstream answered early) may take to become ready before it is
/// closed instead of pooled. A complete exchange is ready within microseconds; an
/// upload the server ignores may never end, and keeping its socket would only keep the
/// client's body flowing to a server that does not read it.
pub const RELEASE_READY_WAIT: Duration = Duration::from_millis(250);

/// HTTP/2: the receive window of one upstream stream: how much of a response tidegate
/// holds for a client that reads slower than the server sends. The connection's window
/// is this times the streams it takes ([`h2_windows`]), so streams whose clients stop
/// reading can never use up the window the connection's other streams need.
pub const H2_STREAM_WINDOW: u32 = 256 * 1024;

/// HTTP/2: the largest frame tidegate accepts from a server (RFC 9113's initial value,
/// which every server supports).
pub const H2_MAX_FRAME_SIZE: u32 = 16 * 1024;

/// HTTP/2: the largest response header list (and trailers) tidegate accepts from a
/// server, as HPACK-decoded bytes (RFC 9113 §6.5.2, names and values plus 32 per
/// field); a bigger one fails the stream (`502`). The listeners' default
/// `max_header_size`.
pub const H2_MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;

/// HTTP/2: a PING after this long without a frame from the server, idle or not.
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(20);

/// HTTP/2: a PING unanswered this long closes the connection (its streams fail).
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The (stream, connection) receive windows of an upstream HTTP/2 connection taking at
/// most `streams` streams: the connection's window is at least the stream window times
/// `streams` (the stream window shrinks when that would pass HTTP/2's largest window).
pub fn h2_windows(streams: usize) -> (u32, u32) {
    let max = tidegate_config::defaults::H2_MAX_WINDOW;
    let streams = u32::try_from(streams.max(1)).unwrap_or(u32::MAX);
    let stream = H2_STREAM_WINDOW.min(max / streams).max(1);
    let conn = stream
        .saturating_mul(streams)
        .clamp(tidegate_config::defaults::H2_MIN_CONNECTION_WINDOW, max);
    (stream, conn)
}

/// hyper's `SETTINGS_MAX_CONCURRENT_STREAMS` before a server's first SETTINGS arrive;
/// tidegate lowers it to what the server advertised last, never raises it.
const H2_INITIAL_MAX_SEND_STREAMS: usize = 100;

/// How often a request waiting for an HTTP/2 stream looks again without being woken.
const H2_RECHECK: Duration = Duration::from_millis(25);

/// `ConnCtl::idle_since` of a connection in use.
const IN_USE: u64 = 0;

impl ConnCtl {
    fn mark_idle(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.idle_since.store(ms + 1, Ordering::Relaxed);
    }

    /// When an idle connection's `keepalive_timeout` ends; `None` while in use.
    fn idle_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        match self.idle_since.load(Ordering::Relaxed) {
            IN_USE => None,
            since => Some(self.base + Duration::from_millis(since - 1) + idle_timeout),
        }
    }
}

/// A connection taken from the pool or freshly opened, in use by one exchange.
#[derive(Debug)]
pub struct Checkout {
    /// `None` once released to the pool.
    conn: Option<Held>,
    pool: Weak<PoolInner>,
    /// True when the connection had served a request before (it may have gone stale).
    pub reused: bool,
    /// Upstream address of the socket (TCP only).
    pub peer: Option<SocketAddr>,
    /// Our address on the socket (TCP only).
    pub local: Option<SocketAddr>,
}

// === impl Pool ===

impl Pool {
    /// A pool keeping at most `max_idle` idle connections for `idle_timeout` each.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Pool::with_streams(max_idle, idle_timeout, 1, 1)
    }

    /// [`Pool::new`], with HTTP/2 connections taking at most `max_streams` streams
    /// each, at most `max_conns` of them open (each at least 1).
    pub fn with_streams(
        max_idle: usize,
        idle_timeout: Duration,
        max_streams: usize,
        max_conns: usize,
    ) -> Self {
        Pool {
            inner: Arc::new(PoolInner {
                idle: Mutex::new(Vec::with_capacity(max_idle.min(64))),
                shared: Mutex::new(Vec::new()),
                opening: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                changed: tokio::sync::Notify::new(),
                last_limit: AtomicUsize::new(max_streams.clamp(1, H2_INITIAL_MAX_SEND_STREAMS)),
                max_streams: max_streams.max(1),
                max_conns: max_conns.max(1),
                max_idle,
                idle_timeout,
                keeping: AtomicBool::new(true),
            }),
        }
    }

    /// How many idle connections the pool holds now (HTTP/2: open connections with no
    /// stream).
    pub fn idle_count(&self) -> usize {
        let shared = lock(&self.inner.shared)
            .iter()
            .filter(|s| s.ctl.streams.load(Ordering::Relaxed) == 0)
            .count();
        lock(&self.inner.idle).len() + shared
    }

    /// HTTP/2: open connections (with streams or not).
    pub fn h2_connections(&self) -> usize {
        lock(&self.inner.shared).len()
    }

    /// HTTP/2: a stream on an open connection below its limit, the one with the most
    /// streams first (so idle connections age out). Never waits.
    pub fn take_stream(&self) -> Option<Checkout> {
        let shared = lock(&self.inner.shared);
        self.pick(&shared)
    }

    /// [`Pool::take_stream`] under the `shared` lock.
    fn pick(&self, shared: &[Shared]) -> Option<Checkout> {
        let pick = shared
            .iter()
            .filter(|s| s.takes_streams())
            .filter(|s| s.ctl.streams.load(Ordering::Relaxed) < self.stream_limit(s))
            .max_by_key(|s| s.ctl.streams.load(Ordering::Relaxed))?;
        Some(self.new_stream(pick.sender.clone(), pick.ctl.clone(), true))
    }

    /// The streams a connection takes: `h2_max_streams_per_connection`, or less when
    /// the server said so. A server that advertised 0 gets none on it.
    fn stream_limit(&self, s: &Shared) -> usize {
        let server = s.server_limit();
        self.inner.last_limit.store(server, Ordering::Relaxed);
        self.inner.max_streams.min(server)
    }

    /// HTTP/2: a stream on a connection below its limit, or the right to open a new
    /// connection ([`Slot::Open`]). Opens are sized to the demand: a request opens one
    /// when the connections being opened will not take every request waiting (at the
    /// server's last advertised limit each), while fewer than `h2_max_connections`
    /// connections that take requests are open or opening. Otherwise it waits for a
    /// stream to end or a connection to join, at most `wait`; then [`Saturated`].
    pub async fn stream_or_open(&self, wait: Duration) -> Result<Slot, Saturated> {
        let deadline = Instant::now() + wait;
        let inner = &self.inner;
        let mut counted = false;
        loop {
            let changed = inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let shared = lock(&inner.shared);
                if let Some(c) = self.pick(&shared) {
                    if counted {
                        inner.waiting.fetch_sub(1, Ordering::Relaxed);
                    }
                    return Ok(Slot::Stream(c));
                }
                if !counted {
                    inner.waiting.fetch_add(1, Ordering::Relaxed);
                    counted = true;
                }
                let open = shared.iter().filter(|s| s.takes_streams()).count();
                let opening = inner.opening.load(Ordering::Relaxed);
                let waiting = inner.waiting.load(Ordering::Relaxed);
                let per = inner
                    .max_streams
                    .min(inner.last_limit.load(Ordering::Relaxed))
                    .max(1);
                if open + opening < inner.max_conns && opening.saturating_mul(per) < waiting {
                    inner.opening.fetch_add(1, Ordering::Relaxed);
                    inner.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Ok(Slot::Open(OpenPermit {
                        pool: self.inner.clone(),
                    }));
                }
            }
            // Woken by a change, and looked again at least this often: a server may
            // raise its limit with a SETTINGS frame, which nothing here is told of.
            let recheck = (Instant::now() + H2_RECHECK).min(deadline);
            let woken = tokio::time::timeout_at(recheck, changed).await.is_ok();
            if !woken && Instant::now() >= deadline {
                let shared = lock(&inner.shared);
                if let Some(c) = self.pick(&shared) {
                    inner.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Ok(Slot::Stream(c));
                }
                inner.waiting.fetch_sub(1, Ordering::Relaxed);
                return Err(Saturated {
                    connections: shared.iter().filter(|s| s.takes_streams()).count(),
                    max_connections: inner.max_conns,
                    waited: wait,
                });
            }
        }
    }

    /// A checkout for one more stream on `ctl`'s connection; called under the
    /// `shared` lock (or before the connection is in the list).
    fn new_stream(
        &self,
        sender: http2::SendRequest<RequestBody>,
        ctl: Arc<ConnCtl>,
        reused: bool,
    ) -> Checkout {
        ctl.streams.fetch_add(1, Ordering::Relaxed);
        ctl.idle_since.store(IN_USE, Ordering::Relaxed);
        ctl.entry.set_state(ConnState::Streaming);
        ctl.entry.add_request();
        Checkout {
            conn: Some(Held::H2(Stream2 { sender, ctl })),
            pool: Arc::downgrade(&self.inner),
            reused,
            peer: None,
            local: None,
        }
    }

    /// Takes the most recently used idle connection that can take a request now (the
    /// warmest; older ones age out). Never waits: one that is closed or not ready is
    /// closed and skipped.
    pub fn take(&self) -> Option<Checkout> {
        let mut idle = lock(&self.inner.idle);
        while let Some(entry) = idle.pop() {
            if entry.sender.is_closed() || !entry.sender.is_ready() {
                entry.ctl.kill.cancel();
                continue;
            }
            entry.ctl.idle_since.store(IN_USE, Ordering::Relaxed);
            entry.ctl.entry.set_state(ConnState::WaitingUpstream);
            entry.ctl.entry.add_request();
            return Some(Checkout {
                conn: Some(Held::H1(entry)),
                pool: Arc::downgrade(&self.inner),
                reused: true,
                peer: None,
                local: None,
            });
        }
        None
    }

    /// Hands a freshly connected stream to hyper and starts the connection's task,
    /// which keeps `entry` (the connection's registration) until the connection ends.
    pub async fn handshake(
        &self,
        stream: UpstreamIo,
        entry: Registration,
    ) -> hyper::Result<Checkout> {
        let peer = entry.peer().tcp();
        let local = entry.local().tcp();
        let io = TokioIo::new(Observed::new(stream, entry.conn().clone()));
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, RequestBody>(io)
            .await?;
        entry.add_request();
        let ctl = Arc::new(ConnCtl {
            id: entry.id(),
            entry: entry.conn().clone(),
            kill: entry.close_token().clone(),
            idle_since: AtomicU64::new(IN_USE),
            base: Instant::now(),
            streams: AtomicUsize::new(0),
        });
        tokio::spawn(drive(
            conn.with_upgrades(),
            ctl.clone(),
            self.inner.idle_timeout,
            Arc::downgrade(&self.inner),
            entry,
        ));
        Ok(Checkout {
            conn: Some(Held::H1(Idle { sender, ctl })),
            pool: Arc::downgrade(&self.inner),
            reused: false,
            peer,
            local,
        })
    }

    /// HTTP/2: hands a freshly connected stream to hyper (prior knowledge, or `h2`
    /// negotiated by ALPN), puts the connection in the shared list and starts its task;
    /// the checkout is its first stream.
    pub async fn handshake_h2(
        &self,
        stream: UpstreamIo,
        entry: Registration,
    ) -> hyper::Result<Checkout> {
        let peer = entry.peer().tcp();
        let local = entry.local().tcp();
        let io = TokioIo::new(Observed::new(stream, entry.conn().clone()));
        let (stream_window, conn_window) = h2_windows(self.inner.max_streams);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Explicit windows, never hyper's defaults (2 MiB a stream, 5 MiB the
            // connection): with those, three responses whose clients stop reading
            // hold the whole connection window and stall every other stream on it.
            .adaptive_window(false)
            .initial_stream_window_size(stream_window)
            .initial_connection_window_size(conn_window)
            .max_frame_size(H2_MAX_FRAME_SIZE)
            .max_header_list_size(H2_MAX_HEADER_LIST_SIZE)
            // A connection that went silent (a dead peer, a dropped NAT entry) fails
            // its PING and leaves the shared list rather than swallowing requests.
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .keep_alive_while_idle(true)
            // Until the server's SETTINGS arrive: what it advertised last (hyper's
            // default is 100, whatever the server said before).
            .initial_max_send_streams(
                self.inner
                    .last_limit
                    .load(Ordering::Relaxed)
                    .clamp(1, H2_INITIAL_MAX_SEND_STREAMS),
            )
            .handshake::<_, RequestBody>(io)
            .await?;
        let ctl = Arc::new(ConnCtl {
            id: entry.id(),
            entry: entry.conn().clone(),
            kill: entry.close_token().clone(),
            idle_since: AtomicU64::new(IN_USE),
            base: Instant::now(),
            streams: AtomicUsize::new(0),
        });
        let conn = Arc::new(Mutex::new(Box::pin(conn)));
        let polled = conn.clone();
        let driven =
            std::future::poll_fn(move |cx| std::future::Future::poll(lock(&polled).as_mut(), cx));
        let mut checkout = {
            let mut shared = lock(&self.inner.shared);
            let c = self.new_stream(sender.clone(), ctl.clone(), false);
            shared.push(Shared {
                sender,
                ctl: ctl.clone(),
                conn,
            });
            c
        };
        self.inner.changed.notify_waiters();
        tokio::spawn(drive(
            driven,
            ctl,
            self.inner.idle_timeout,
            Arc::downgrade(&self.inner),
            entry,
        ));
        checkout.peer = peer;
        checkout.local = local;
        Ok(checkout)
    }

    /// Whether released connections are kept (`false` while the server is in
    /// `maint`: each is closed instead).
    pub fn set_keeping(&self, keep: bool) {
        self.inner.keeping.store(keep, Ordering::Relaxed);
    }

    /// Closes every idle connection (maintenance, shutdown); HTTP/2 connections take
    /// no new stream and close once their streams in flight end.
    pub fn clear(&self) {
        for entry in lock(&self.inner.idle).drain(..) {
            entry.ctl.kill.cancel();
        }
        // HTTP/2: out of the list, but closed only once its last stream ends
        // (`end_stream`): cancelling `kill` now would end only tidegate's task and its
        // registry entry, while hyper's own connection task kept the socket and the
        // streams going, out of sight and past `shutdown_grace`.
        let drained: Vec<Shared> = lock(&self.inner.shared).drain(..).collect();
        for entry in drained {
            if entry.ctl.streams.load(Ordering::Relaxed) == 0 {
                entry.ctl.kill.cancel();
            }
        }
        self.inner.changed.notify_waiters();
    }
}

/// Runs one upstream connection until it ends, is killed, or sits idle in the pool for
/// longer than the pool's `idle_timeout`. `_entry` keeps it in the registry meanwhile.
async fn drive(
    conn: impl std::future::Future<Output = hyper::Result<()>>,
    ctl: Arc<ConnCtl>,
    idle_timeout: Duration,
    pool: Weak<PoolInner>,
    _entry: Registration,
) {
    tokio::pin!(conn);
    // Looked at every `idle_timeout` while in use; while idle, at the exact deadline.
    let mut check_at = Instant::now() + idle_timeout;
    loop {
        tokio::select! {
            res = &mut conn => {
                if let Err(e) = res {
                    tracing::debug!(conn = ctl.id, error = %e, "upstream connection ended with an error");
                }
                break;
            }
            _ = ctl.kill.cancelled() => {
                tracing::debug!(conn = ctl.id, "closing upstream connection (closed by tidegate)");
                break;
            }
            _ = sleep_until(check_at) => {
                let now = Instant::now();
                match ctl.idle_deadline(idle_timeout) {
                    None => check_at = now + idle_timeout,
                    Some(deadline) if deadline > now => check_at = deadline,
                    Some(_) => {
                        // Expired: take it out of the pool under the lock, unless a
                        // checkout just took it (then it is in use again).
                        let expired = |ctl: &ConnCtl| ctl.idle_deadline(idle_timeout).is_some_and(|d| d <= now);
                        let taken = match pool.upgrade() {
                            Some(pool) => {
                                let mut idle = lock(&pool.idle);
                                let mut shared = lock(&pool.shared);
                                if let Some(pos) = idle.iter().position(|e| e.ctl.id == ctl.id) {
                                    if expired(&ctl) {
                                        idle.remove(pos);
                                        false
                                    } else {
                                        true
                                    }
                                } else if let Some(pos) = shared.iter().position(|e| e.ctl.id == ctl.id) {
                                    if expired(&ctl) {
                                        shared.remove(pos);
                                        false
                                    } else {
                                        true
                                    }
                                } else {
                                    true
                                }
                            }
                            None => false,
                        };
                        if taken {
                            check_at = now + idle_timeout;
                            continue;
                        }
                        tracing::debug!(conn = ctl.id, "closing idle pooled upstream connection (keepalive_timeout)");
                        break;
                    }
                }
            }
        }
    }
    ctl.entry.set_state(ConnState::Closing);
    if let Some(pool) = pool.upgrade() {
        lock(&pool.idle).retain(|e| e.ctl.id != ctl.id);
        lock(&pool.shared).retain(|e| e.ctl.id != ctl.id);
        pool.changed.notify_waiters();
    }
}

// === impl Checkout ===

impl Checkout {
    /// Sends one request on the connection (HTTP/1.1) or as a new stream (HTTP/2).
    /// `Err(req)` only after `release`, which consumes the checkout, so callers always
    /// get `Ok`.
    #[allow(
        clippy::result_large_err,
        reason = "the request handed back, as hyper does"
    )]
    pub fn try_send(
        &mut self,
        req: http::Request<RequestBody>,
    ) -> Result<impl std::future::Future<Output = Sent> + Send + 'static, http::Request<RequestBody>>
    {
        match self.conn.as_mut() {
            Some(Held::H1(c)) => Ok(futures_util::future::Either::Left(
                c.sender.try_send_request(req),
            )),
            Some(Held::H2(c)) => Ok(futures_util::future::Either::Right(
                c.sender.try_send_request(req),
            )),
            None => Err(req),
        }
    }

    /// Whether it is a stream of an HTTP/2 connection.
    pub fn is_h2(&self) -> bool {
        matches!(self.conn, Some(Held::H2(_)))
    }

    /// The connection's registry entry (`None` only after `release`).
    pub fn entry(&self) -> Option<&Arc<Conn>> {
        self.conn.as_ref().map(|c| &c.ctl().entry)
    }

    /// Waits until the connection can take a request; an error means it is closed.
    pub async fn ready(&mut self) -> hyper::Result<()> {
        match self.conn.as_mut() {
            Some(Held::H1(c)) => c.sender.ready().await,
            Some(Held::H2(c)) => c.sender.ready().await,
            None => Ok(()),
        }
    }

    /// Marks the connection for closing once its exchange ends: [`Checkout::release`]
    /// closes it instead of pooling it (a response whose framing was in doubt).
    pub fn close_after(&mut self) {
        // HTTP/2 frames each message itself: its connection is not in doubt.
        if self.is_h2() {
            return;
        }
        // A checkout without its pool closes on release, as when the pool is gone.
        self.pool = Weak::new();
    }

    /// Returns the connection to the pool after a complete exchange; closes it instead
    /// when the pool is full, gone, or the connection cannot take another request. One
    /// that hyper is still busy with is pooled once it is ready, if that happens within
    /// [`RELEASE_READY_WAIT`], and closed otherwise.
    pub fn release(mut self) {
        let mut conn = match self.conn.take() {
            Some(Held::H1(c)) => c,
            Some(Held::H2(stream)) => return end_stream(stream, &self.pool),
            None => return,
        };
        if conn.sender.is_closed() {
            conn.ctl.kill.cancel();
            return;
        }
        if conn.sender.is_ready() {
            return put_back(conn, &self.pool);
        }
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let ready = std::future::poll_fn(|cx| conn.sender.poll_ready(cx));
            match tokio::time::timeout(RELEASE_READY_WAIT, ready).await {
                Ok(Ok(())) => put_back(conn, &pool),
                Ok(Err(_)) => conn.ctl.kill.cancel(),
                Err(_) => {
                    tracing::debug!(
                        conn = conn.ctl.id,
                        "upstream connection still busy after the response (request body \
                         not fully sent); closing it rather than pooling it"
                    );
                    conn.ctl.kill.cancel();
                }
            }
        });
    }
}

/// Puts a ready connection in the idle list, or closes it when the pool is full, gone
/// or not keeping.
fn put_back(conn: Idle, pool: &Weak<PoolInner>) {
    let Some(pool) = pool.upgrade() else {
        conn.ctl.kill.cancel();
        return;
    };
    let mut idle = lock(&pool.idle);
    if !conn.sender.is_ready()
        || idle.len() >= pool.max_idle
        || !pool.keeping.load(Ordering::Relaxed)
    {
        drop(idle);
        conn.ctl.kill.cancel();
        return;
    }
    conn.ctl.entry.set_state(ConnState::Idle);
    conn.ctl.entry.set_protocol(ConnProtocol::Http1);
    conn.ctl.mark_idle();
    idle.push(conn);
}

/// An HTTP/2 stream ended (complete or not): the connection takes another one; with
/// no stream left it is idle, and closed at once when the server already has
/// `keepalive` idle connections (or is in `maint`). One whose server advertised a
/// limit of 0 is kept until `keepalive_timeout` all the same: it still counts against
/// `h2_max_connections`, so a server that takes no streams is not sent a new
/// connection per request.
fn end_stream(stream: Stream2, pool: &Weak<PoolInner>) {
    let Some(pool) = pool.upgrade() else {
        stream.ctl.kill.cancel();
        return;
    };
    let mut shared = lock(&pool.shared);
    let left = stream
        .ctl
        .streams
        .fetch_sub(1, Ordering::Relaxed)
        .saturating_sub(1);
    if left == 0 {
        stream.ctl.entry.set_state(ConnState::Idle);
        stream.ctl.mark_idle();
        let listed = shared.iter().find(|e| e.ctl.id == stream.ctl.id);
        let refuses = listed.is_some_and(|e| e.server_limit() == 0);
        // Drained out of the list (`clear`): its last stream ended, so it closes now.
        let drained = listed.is_none();
        let idle = shared
            .iter()
            .filter(|e| e.ctl.streams.load(Ordering::Relaxed) == 0)
            .count();
        let keeping = pool.keeping.load(Ordering::Relaxed);
        if drained || !keeping || (!refuses && idle > pool.max_idle) {
            // Out of the list at once (under the lock), so no request takes a stream
            // on a connection being closed.
            shared.retain(|e| e.ctl.id != stream.ctl.id);
            stream.ctl.kill.cancel();
        }
    }
    drop(shared);
    if pool.waiting.load(Ordering::Relaxed) > 0 {
        pool.changed.notify_waiters();
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        match self.conn.take() {
            Some(Held::H1(conn)) => conn.ctl.kill.cancel(),
            // Only the stream ends: hyper resets it if the exchange was cut short.
            Some(Held::H2(stream)) => end_stream(stream, &self.pool),
            None => {}
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the Vec inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
