//! A client connection's phase and activity, shared by the I/O wrapper (which sees
//! bytes), the service (which sees requests and responses) and the connection driver
//! (which enforces `header_timeout`, `idle_timeout` and the exchange's idle timer).
//!
//! tidegate measures these itself: hyper's `header_read_timeout` needs a timer and also
//! fires on idle keep-alive connections, so it can't tell the two phases apart
//! (docs/design.md, "Library facts").
//!
//! The [`ClientConn`] is also the connection's entry in the connection registry: it owns the
//! [`Registration`], keeps its time base and last activity there (one set of atomics,
//! not two), counts bytes and requests on it and keeps its state (`reading`,
//! `waiting_upstream`, `streaming`, `idle`, `tunnel`) in step with the phases.
//!
//! HTTP/2 (`super::h2`): the connection's [`ClientConn`] counts the socket's bytes and
//! nothing else (its reads start no request head: `ClientConn::enter_h2`); each
//! stream has a [`ClientConn`] of its own ([`ClientConn::stream`]), with the phases of
//! its one exchange, whose activity is the stream's body bytes.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::rewind::Rewind;
use crate::observed::Observed;
use crate::registry::{Conn, ConnProtocol, ConnState, Registration};
use crate::side::Side;
use crate::tls::ClientStream;

/// Where a client connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// No request in progress (keep-alive, or just accepted): `idle_timeout` applies.
    Idle = 0,
    /// The first byte of a request arrived, the head is not complete:
    /// `header_timeout` applies.
    Head = 1,
    /// A request is being served: the exchange's idle timer applies, if any.
    Busy = 2,
}

/// Shared phase and activity of one connection. Times are milliseconds since the
/// registry entry's start; the last activity is the entry's.
#[derive(Debug)]
pub struct ClientConn {
    entry: Registration,
    phase: AtomicU8,
    phase_since: AtomicU64,
    /// Milliseconds of silence allowed during an exchange; 0 = none set.
    exchange_idle: AtomicU64,
    /// The exchange's idle limit was set since the driver last looked at the timers
    /// (it set its wake-up before the limit existed).
    rearm: AtomicBool,
    /// Upgraded: the connection is a tunnel now; request phases no longer apply.
    tunnel: AtomicBool,
    /// Bytes may have been written and not flushed since (hyper still holds data).
    unflushed: AtomicBool,
    /// Whether the current exchange leaves the connection reusable: 0, or [`CLOSES`]
    /// and/or [`BODY_OPEN`].
    reuse: AtomicU8,
    /// Reads attempted on the socket (wrapping): a park attempt that read touched a
    /// request body, not an idle connection.
    reads: AtomicU32,
    /// After a 101 from the upstream: its side of the tunnel, for the connection's
    /// driver to join with the client's socket once hyper hands it back.
    upgrade: Mutex<Option<Box<super::upgrade::Upgrade>>>,
    /// An HTTP/2 connection: bytes read are frames of any stream, never a request head.
    multiplexed: AtomicBool,
    /// An HTTP/2 stream: no socket of its own, so its activity and byte counts are its
    /// bodies' bytes, counted as they pass (the request body's on its way upstream, the
    /// response body's toward hyper).
    stream: bool,
}

/// The exchange's request or response ends the connection (`Connection: close`,
/// HTTP/1.0 without keep-alive, an error answer that closes).
const CLOSES: u8 = 1;
/// The request's body has not been read to its end: the socket is inside a message.
const BODY_OPEN: u8 = 2;

/// What the driver should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Check again at this instant.
    WaitUntil(Instant),
    /// A timer expired in this phase.
    Expired(Phase),
}

impl ClientConn {
    /// A new connection state, idle since now, for a connection in no registry.
    pub fn new() -> Arc<Self> {
        Self::registered(Registration::detached(
            Side::Client,
            ConnProtocol::Http1,
            ConnState::Idle,
        ))
    }

    /// A new connection state, idle since now, for the registered connection `entry` (which it
    /// keeps in the registry for as long as it lives).
    pub fn registered(entry: Registration) -> Arc<Self> {
        Self::build(entry, false)
    }

    /// The state of one HTTP/2 stream, `entry` being its registration (see
    /// [`crate::registry::Registry::register_stream`]).
    pub fn stream(entry: Registration) -> Arc<Self> {
        Self::build(entry, true)
    }

    fn build(entry: Registration, stream: bool) -> Arc<Self> {
        Arc::new(ClientConn {
            entry,
            phase: AtomicU8::new(Phase::Idle as u8),
            phase_since: AtomicU64::new(0),
            exchange_idle: AtomicU64::new(0),
            rearm: AtomicBool::new(false),
            tunnel: AtomicBool::new(false),
            unflushed: AtomicBool::new(false),
            reuse: AtomicU8::new(0),
            reads: AtomicU32::new(0),
            upgrade: Mutex::new(None),
            multiplexed: AtomicBool::new(false),
            stream,
        })
    }

    /// The connection turned out to be HTTP/2 (its preface, or ALPN `h2`): from now on
    /// its streams have the request phases; the connection is `idle` with no stream
    /// open (see `super::h2`).
    pub(crate) fn enter_h2(&self) {
        self.multiplexed.store(true, Ordering::Relaxed);
        self.entry.set_protocol(ConnProtocol::H2);
        self.set_at(Phase::Idle, self.now_ms());
    }

    /// `n` bytes of a response body went to hyper: an HTTP/2 stream counts them (an
    /// HTTP/1 connection counts its socket's bytes instead).
    pub(crate) fn body_sent(&self, n: usize) {
        if self.stream {
            self.on_write(n);
        }
    }

    /// The connection's registry entry.
    pub fn conn(&self) -> &Arc<Conn> {
        self.entry.conn()
    }

    fn now_ms(&self) -> u64 {
        self.entry.elapsed_ms()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Idle,
            1 => Phase::Head,
            _ => Phase::Busy,
        }
    }

    /// Milliseconds from the connection's start to `at`.
    fn ms_at(&self, at: Instant) -> u64 {
        u64::try_from(
            at.saturating_duration_since(self.entry.started())
                .as_millis(),
        )
        .unwrap_or(u64::MAX)
    }

    fn set_at(&self, phase: Phase, now_ms: u64) {
        self.phase_since.store(now_ms, Ordering::Relaxed);
        self.phase.store(phase as u8, Ordering::Relaxed);
        self.entry.set_state(match phase {
            Phase::Idle => ConnState::Idle,
            Phase::Head => ConnState::Reading,
            Phase::Busy => ConnState::WaitingUpstream,
        });
    }

    /// `n` bytes arrived from the client.
    fn on_read(&self, n: usize) {
        let now = self.now_ms();
        self.entry.on_read(n, now);
        self.head_started_at(now);
    }

    fn on_write(&self, n: usize) {
        self.entry.on_write(n, self.now_ms());
    }

    /// A request head is complete and is being served.
    pub fn request_started(&self) {
        self.request_started_at(Instant::now());
    }

    /// [`ClientConn::request_started`] with the time already read (one clock read serves
    /// the phase and the exchange's record).
    pub fn request_started_at(&self, now: Instant) {
        self.exchange_idle.store(0, Ordering::Relaxed);
        self.set_at(Phase::Busy, self.ms_at(now));
        self.entry.add_request();
    }

    /// The response head is on its way to the client.
    pub fn response_started(&self) {
        if !self.tunnel.load(Ordering::Relaxed) {
            self.entry.set_state(ConnState::Streaming);
        }
    }

    /// The connection is upgraded (after a 101): a tunnel from now on, bounded by the
    /// exchange's idle timer; the request phases no longer change.
    pub fn enter_tunnel(&self) {
        self.tunnel.store(true, Ordering::Relaxed);
        self.phase_since.store(self.now_ms(), Ordering::Relaxed);
        self.phase.store(Phase::Busy as u8, Ordering::Relaxed);
        self.entry.set_state(ConnState::Tunnel);
        self.entry.set_protocol(ConnProtocol::Websocket);
    }

    /// Keeps the upstream side of an upgrade for the connection's driver.
    pub(crate) fn stash_upgrade(&self, up: super::upgrade::Upgrade) {
        if let Ok(mut slot) = self.upgrade.lock() {
            *slot = Some(Box::new(up));
        }
    }

    /// The upstream side of an upgrade, if the last response was a 101.
    pub(crate) fn take_upgrade(&self) -> Option<Box<super::upgrade::Upgrade>> {
        self.upgrade.lock().ok().and_then(|mut slot| slot.take())
    }

    /// A request head arrived: whether it (`closes`) ends the connection after its
    /// response, and whether it has a body still to read.
    pub fn exchange_begins(&self, closes: bool, body_open: bool) {
        let bits = if closes { CLOSES } else { 0 } | if body_open { BODY_OPEN } else { 0 };
        self.reuse.store(bits, Ordering::Relaxed);
    }

    /// The response ends the connection.
    pub fn response_closes(&self) {
        self.reuse.fetch_or(CLOSES, Ordering::Relaxed);
    }

    /// Whether the connection is idle in hyper's eyes too: no request in progress, the
    /// last exchange kept the connection alive and read its request to the end, the
    /// last response flushed to the socket, not a tunnel. The driver still checks that
    /// hyper finds itself idle (see `serve_connection`).
    pub fn parkable(&self) -> bool {
        self.phase.load(Ordering::Relaxed) == Phase::Idle as u8
            && self.reuse.load(Ordering::Relaxed) == 0
            && !self.unflushed.load(Ordering::Relaxed)
            && !self.tunnel.load(Ordering::Relaxed)
    }

    /// Whether a request is being served whose head and body have both been read (its
    /// response may or may not have started): anything the client sends now is a
    /// pipelined request or its end.
    pub fn request_read(&self) -> bool {
        self.phase.load(Ordering::Relaxed) == Phase::Busy as u8
            && self.reuse.load(Ordering::Relaxed) & BODY_OPEN == 0
            && !self.tunnel.load(Ordering::Relaxed)
    }

    /// Whether the current exchange's response head has gone to hyper.
    pub fn response_under_way(&self) -> bool {
        self.phase.load(Ordering::Relaxed) == Phase::Busy as u8
            && self.entry.state() == ConnState::Streaming
    }

    /// When a [`ClientConn::parkable`] connection will have been idle for `after`; `None`
    /// when it is not parkable.
    pub fn park_due(&self, after: Duration) -> Option<Instant> {
        if !self.parkable() {
            return None;
        }
        let since = self.phase_since.load(Ordering::Relaxed);
        Some(self.entry.started() + Duration::from_millis(since) + after)
    }

    /// Reads attempted so far (wrapping), to compare before and after a park attempt.
    pub fn reads(&self) -> u32 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Bytes of a request head were put back in front of the socket (a pipelined
    /// request hyper had read part of): the head has started, `header_timeout` applies.
    pub fn head_started(&self) {
        self.head_started_at(self.now_ms());
    }

    /// An idle connection (not a tunnel, not HTTP/2) starts a head at `now_ms`.
    fn head_started_at(&self, now_ms: u64) {
        if self.phase.load(Ordering::Relaxed) == Phase::Idle as u8
            && !self.tunnel.load(Ordering::Relaxed)
            && !self.multiplexed.load(Ordering::Relaxed)
        {
            self.set_at(Phase::Head, now_ms);
        }
    }

    /// The exchange (proxied to an upstream) may be silent at most this long.
    pub fn set_exchange_idle(&self, limit: Duration) {
        self.exchange_idle
            .store(limit.as_millis() as u64, Ordering::Relaxed);
        self.rearm.store(true, Ordering::Relaxed);
    }

    /// Whether the exchange's idle limit was set since the last call: the driver's
    /// wake-up, computed before, may be later than the new deadline (a stalled upload
    /// would wait for the listener's timers instead).
    pub fn take_rearm(&self) -> bool {
        self.rearm.swap(false, Ordering::Relaxed)
    }

    /// The response has been written (or abandoned).
    pub fn response_finished(&self) {
        self.response_finished_at(Instant::now());
    }

    /// [`ClientConn::response_finished`] with the time already read.
    pub fn response_finished_at(&self, now: Instant) {
        if self.tunnel.load(Ordering::Relaxed) {
            return;
        }
        self.set_at(Phase::Idle, self.ms_at(now));
        if self.entry.protocol() == ConnProtocol::Sse {
            self.entry.set_protocol(match self.stream {
                true => ConnProtocol::H2,
                false => ConnProtocol::Http1,
            });
        }
        self.entry.unlink();
    }

    /// Decides whether a timer expired, given the listener's `idle` and `header` limits.
    pub fn verdict(&self, idle: Duration, header: Duration) -> Verdict {
        let now = self.now_ms();
        let ms = |d: Duration| d.as_millis() as u64;
        let deadline = match self.phase() {
            Phase::Idle => self.phase_since.load(Ordering::Relaxed) + ms(idle),
            Phase::Head => self.phase_since.load(Ordering::Relaxed) + ms(header),
            Phase::Busy => match self.exchange_idle.load(Ordering::Relaxed) {
                // Nothing to enforce; look again later (a response ending moves the
                // connection to Idle, whose deadline is at least this far away).
                0 => now + ms(idle.min(header)),
                limit => {
                    self.entry
                        .last_io_ms()
                        .max(self.phase_since.load(Ordering::Relaxed))
                        + limit
                }
            },
        };
        if now >= deadline {
            return Verdict::Expired(self.phase());
        }
        // Nothing wakes the driver when a head starts arriving on an idle connection
        // (hyper just returns Pending on a partial head), so an idle connection is
        // looked at again within `header_timeout`: a head that started meanwhile is then
        // held to its own deadline, never to the later idle one.
        let deadline = match self.phase() {
            Phase::Idle => deadline.min(now + ms(header)),
            _ => deadline,
        };
        Verdict::WaitUntil(self.entry.started() + Duration::from_millis(deadline))
    }
}

impl crate::upstream::body::BodyEnd for ClientConn {
    fn body_ended(&self) {
        self.reuse.fetch_and(!BODY_OPEN, Ordering::Relaxed);
    }

    fn body_data(&self, n: usize) {
        // An HTTP/1 connection's socket counts them already.
        if self.stream {
            self.on_read(n);
        }
    }
}

/// A client socket as hyper sees it: counted by its [`ClientConn`], with bytes read ahead
/// put back in front after a park or an upgrade.
pub(crate) type ClientIo = Rewind<Observed<ClientStream, ClientConn>>;

// A client stream reports its reads and writes to its `ClientConn` through
// `Observed<_, ClientConn>`.
impl crate::observed::IoObserver for ClientConn {
    fn read(&self, n: usize) {
        self.on_read(n);
    }
    fn wrote(&self, n: usize) {
        self.on_write(n);
    }
    // Only the connection's own task does I/O, so plain load + store (no locked
    // read-modify-write) is enough for these.
    fn read_attempted(&self) {
        let n = self.reads.load(Ordering::Relaxed);
        self.reads.store(n.wrapping_add(1), Ordering::Relaxed);
    }
    fn write_attempted(&self) {
        self.unflushed.store(true, Ordering::Relaxed);
    }
    fn flushed(&self) {
        self.unflushed.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_rechecked_within_header_timeout() {
        let c = ClientConn::new();
        let Verdict::WaitUntil(t) = c.verdict(IDLE, HEAD) else {
            panic!("fresh connection expired")
        };
        assert!(t <= Instant::now() + HEAD);
        // A head starts 5 s later; at the next check it is held to its own deadline.
        tokio::time::advance(Duration::from_secs(5)).await;
        c.on_read(1);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(c.verdict(IDLE, HEAD), Verdict::WaitUntil(_)));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(c.verdict(IDLE, HEAD), Verdict::Expired(Phase::Head));
    }

    const IDLE: Duration = Duration::from_secs(60);
    const HEAD: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn idle_connection_expires_after_idle_timeout() {
        let c = ClientConn::new();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(c.verdict(IDLE, HEAD), Verdict::WaitUntil(_)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(c.verdict(IDLE, HEAD), Verdict::Expired(Phase::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn started_head_expires_after_header_timeout() {
        let c = ClientConn::new();
        c.on_read(1);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(c.verdict(IDLE, HEAD), Verdict::Expired(Phase::Head));
    }

    #[tokio::test(start_paused = true)]
    async fn busy_without_exchange_limit_never_expires_and_idle_restarts_after_response() {
        let c = ClientConn::new();
        c.on_read(1);
        c.request_started();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(matches!(c.verdict(IDLE, HEAD), Verdict::WaitUntil(_)));
        c.response_finished();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(matches!(c.verdict(IDLE, HEAD), Verdict::WaitUntil(_)));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(c.verdict(IDLE, HEAD), Verdict::Expired(Phase::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn busy_exchange_expires_after_silence_only() {
        let c = ClientConn::new();
        c.request_started();
        c.set_exchange_idle(Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(4)).await;
        c.on_write(1);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(matches!(c.verdict(IDLE, HEAD), Verdict::WaitUntil(_)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(c.verdict(IDLE, HEAD), Verdict::Expired(Phase::Busy));
    }
}
