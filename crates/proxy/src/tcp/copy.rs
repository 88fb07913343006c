//! The byte pump of a tunnel: two directions through bounded buffers, polled by one
//! task, with the idle deadline and the hard shutdown beside them.
//!
//! Why not `tokio::io::copy_bidirectional`: it reports the first error of either
//! direction without saying on which socket it happened, so a reset could not be blamed
//! on (and propagated away from) the right side, and it has no idle deadline.
//!
//! Semantics:
//! - End of stream on one side is passed on as a half-close (`shutdown(SHUT_WR)` on the
//!   other socket) once every byte read before it was written; the other direction keeps
//!   flowing. The copy ends when both directions have ended.
//! - An I/O error on either socket (a reset, a broken pipe, a keepalive timeout) ends the
//!   copy at once with [`Ending::Failed`] naming that socket's side; what to do with the
//!   other socket (reset it) is the caller's business.
//! - A byte read or written in either direction re-arms the idle deadline; when it
//!   passes, [`Ending::Idle`]. A half-closed tunnel is still bounded by it.
//! - A direction whose destination does not read (back-pressure) stops reading its
//!   source, so a reset from that source would not be seen until the destination reads
//!   again or the idle timer fires. While a direction is so blocked its source's pending
//!   error (`SO_ERROR`) is checked every [`BLOCKED_ERROR_CHECK`], so such a reset still
//!   ends the tunnel within a second (docs/design.md, "Principles" 1).
//!
//! The tunnel's counters ([`TunnelStats`]) live here, beside the pump that moves them.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep, sleep_until, Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::endpoint::Stream;
pub use crate::handoff::Pending;
use crate::registry::{Conn, ConnProtocol, ConnState, Registration};
use crate::side::Side;

/// Buffer of one direction. 16 KiB is HAProxy's default `tune.bufsize`: big enough that
/// a bulk transfer moves in few system calls, small enough that 10,000 tunnels hold
/// 320 MiB at most, and a slow reader holds back at most this much per direction.
pub const BUF_SIZE: usize = 16 * 1024;

/// How often the source of a blocked direction is checked for a pending error. Half of
/// the one-second bound on noticing that a peer went away (docs/design.md, "Principles" 1).
pub const BLOCKED_ERROR_CHECK: Duration = Duration::from_millis(500);

/// A tunnel's counters: its client connection's registry entry, which the copy loop
/// updates as bytes move. "In" is from the client (toward the upstream), "out" toward
/// the client.
#[derive(Debug)]
pub struct TunnelStats {
    entry: Registration,
}

impl TunnelStats {
    /// Counters of a tunnel starting now, in no registry.
    pub fn new() -> Self {
        Self::registered(Registration::detached(
            Side::Client,
            ConnProtocol::Tcp,
            ConnState::Tunnel,
        ))
    }

    /// Counters kept on the registered client connection `entry`.
    pub fn registered(entry: Registration) -> Self {
        TunnelStats { entry }
    }

    /// The client connection's registry entry.
    pub fn conn(&self) -> &Arc<Conn> {
        self.entry.conn()
    }

    /// When the tunnel started (the client connection was accepted).
    pub fn started(&self) -> Instant {
        self.entry.started()
    }

    /// Bytes read from the client so far.
    pub fn bytes_in(&self) -> u64 {
        self.entry.bytes_in()
    }

    /// Bytes read from the upstream (for the client) so far.
    pub fn bytes_out(&self) -> u64 {
        self.entry.bytes_out()
    }

    pub(crate) fn in_counter(&self) -> &AtomicU64 {
        &self.entry.bytes_in
    }

    pub(crate) fn out_counter(&self) -> &AtomicU64 {
        &self.entry.bytes_out
    }

    /// How long the tunnel has existed.
    pub fn age(&self) -> Duration {
        self.started().elapsed()
    }

    /// How long since a byte last moved either way (or since the start).
    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.entry.last_io_ms());
        self.age().saturating_sub(last)
    }

    /// Records activity `since_start` after the start.
    fn touch(&self, since_start: Duration) {
        let ms = u64::try_from(since_start.as_millis()).unwrap_or(u64::MAX);
        self.entry.touch(ms);
    }
}

impl Default for TunnelStats {
    fn default() -> Self {
        Self::new()
    }
}

/// A socket whose pending error (`SO_ERROR`: a reset that arrived, a keepalive
/// timeout) can be taken without reading the data queued before it.
pub trait PendingError {
    /// Takes the pending error, if any.
    fn take_error(&self) -> io::Result<Option<io::Error>>;
}

impl PendingError for Stream {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
        }
    }
}

impl PendingError for crate::tls::ClientStream {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        crate::tls::ClientStream::take_error(self)
    }
}

/// The operation that failed on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Reading from it.
    Read,
    /// Writing to it.
    Write,
    /// Passing a half-close on to it (`shutdown(SHUT_WR)`).
    Shutdown,
}

impl Op {
    /// `read`, `write` or `shutdown`, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Shutdown => "shutdown",
        }
    }
}

/// How a tunnel's copy ended.
#[derive(Debug)]
pub enum Ending {
    /// Both directions reached end of stream and it was passed on; `first` closed its
    /// sending side first.
    Closed {
        /// Whose end of stream came first.
        first: Side,
    },
    /// An I/O error on `side`'s socket.
    Failed {
        /// The socket the error happened on.
        side: Side,
        /// What was being done with it.
        op: Op,
        /// The error (ECONNRESET, EPIPE, ETIMEDOUT, …).
        error: io::Error,
    },
    /// No byte either way for the idle timeout.
    Idle,
    /// The hard shutdown fired.
    Shutdown,
    /// The tunnel is handed to another process (a binary upgrade): the bytes read from
    /// each side and not yet written to the other go with it. Only a tunnel with both
    /// directions open is handed over.
    Exported(Pending),
}

/// Copies between `client` and `upstream` until both directions end, one fails, no byte
/// moves for `idle`, or `hard` is cancelled. Byte counts go to `stats` as they move.
///
/// The sockets are only borrowed: closing them (cleanly, or with a reset) is up to the
/// caller, who knows from the [`Ending`] which one failed.
pub async fn run<C, U>(
    client: &mut C,
    upstream: &mut U,
    idle: Duration,
    hard: &CancellationToken,
    stats: &TunnelStats,
) -> Ending
where
    C: AsyncRead + AsyncWrite + PendingError + Unpin,
    U: AsyncRead + AsyncWrite + PendingError + Unpin,
{
    run_with(
        client,
        upstream,
        idle,
        hard,
        stats,
        None,
        Pending::default(),
    )
    .await
}

/// [`run`], starting with `pending` bytes to write (a tunnel adopted from the process
/// before an upgrade), and ending with [`Ending::Exported`] when `export` is cancelled
/// while both directions are open (a tunnel handed to the process after an upgrade).
/// A half-closed tunnel is not handed over: it finishes here.
pub async fn run_with<C, U>(
    client: &mut C,
    upstream: &mut U,
    idle: Duration,
    hard: &CancellationToken,
    stats: &TunnelStats,
    export: Option<&CancellationToken>,
    pending: Pending,
) -> Ending
where
    C: AsyncRead + AsyncWrite + PendingError + Unpin,
    U: AsyncRead + AsyncWrite + PendingError + Unpin,
{
    let mut pumps = Pumps::new(stats.started());
    pumps.to_upstream.preload(pending.to_upstream);
    pumps.to_client.preload(pending.to_client);
    let mut exporting = export.is_some();
    let never = CancellationToken::new();
    let export = export.unwrap_or(&never);
    // Bounded: each turn either returns or found the deadline moved (a byte moved since
    // the timer was set), which only happens while the tunnel makes progress; the
    // export branch fires at most once without returning.
    loop {
        let deadline = pumps.last_activity + idle;
        let step = tokio::select! {
            biased;
            _ = hard.cancelled() => return Ending::Shutdown,
            _ = export.cancelled(), if exporting => {
                if let Some(pending) = pumps.export() {
                    return Ending::Exported(pending);
                }
                exporting = false;
                continue;
            }
            ending = poll_fn(|cx| pumps.poll(cx, client, upstream, stats)) => Some(ending),
            _ = sleep_until(deadline) => None,
        };
        match step {
            Some(ending) => return ending,
            // Re-arming the timer on every byte would cost a timer-wheel update per
            // read; instead it is set once per idle period and checked when it fires.
            None if Instant::now() >= pumps.last_activity + idle => return Ending::Idle,
            None => {}
        }
    }
}

/// Both directions and what they share.
struct Pumps {
    to_upstream: Pump,
    to_client: Pump,
    /// Whose end of stream came first (for the log line).
    first_eof: Option<Side>,
    /// When a byte last moved either way.
    last_activity: Instant,
    started: Instant,
    /// The blocked-direction error check (see the module doc); allocated the first
    /// time a direction blocks, and only armed while one is blocked.
    check: Option<Pin<Box<Sleep>>>,
    check_armed: bool,
}

impl Pumps {
    fn new(started: Instant) -> Self {
        Pumps {
            to_upstream: Pump::new(),
            to_client: Pump::new(),
            first_eof: None,
            last_activity: Instant::now(),
            started,
            check: None,
            check_armed: false,
        }
    }

    /// What is read and not yet written each way, when both directions are open (a
    /// half-close in progress cannot be handed over: the other process could not tell
    /// which side it must still shut down).
    fn export(&mut self) -> Option<Pending> {
        let open = |p: &Pump| !p.saw_eof && !p.done;
        if !open(&self.to_upstream) || !open(&self.to_client) {
            return None;
        }
        Some(Pending {
            to_upstream: self.to_upstream.take(),
            to_client: self.to_client.take(),
        })
    }

    fn poll<C, U>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
        upstream: &mut U,
        stats: &TunnelStats,
    ) -> Poll<Ending>
    where
        C: AsyncRead + AsyncWrite + PendingError + Unpin,
        U: AsyncRead + AsyncWrite + PendingError + Unpin,
    {
        let mut moved = false;
        let up = self
            .to_upstream
            .poll(cx, client, upstream, stats.in_counter(), &mut moved);
        let down = self
            .to_client
            .poll(cx, upstream, client, stats.out_counter(), &mut moved);
        if moved {
            self.last_activity = Instant::now();
            stats.touch(self.last_activity.saturating_duration_since(self.started));
        }
        if self.first_eof.is_none() {
            if self.to_upstream.saw_eof {
                self.first_eof = Some(Side::Client);
            } else if self.to_client.saw_eof {
                self.first_eof = Some(Side::Upstream);
            }
        }
        // The direction toward upstream reads the client and writes the upstream; a
        // failed read blames the source, a failed write or shutdown the destination.
        let blame = |e: (Op, io::Error), src: Side| {
            let (op, error) = e;
            let side = if op == Op::Read { src } else { src.other() };
            Ending::Failed { side, op, error }
        };
        match (up, down) {
            (Poll::Ready(Err(e)), _) => Poll::Ready(blame(e, Side::Client)),
            (_, Poll::Ready(Err(e))) => Poll::Ready(blame(e, Side::Upstream)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ending::Closed {
                first: self.first_eof.unwrap_or(Side::Client),
            }),
            _ => self.poll_blocked_check(cx, client, upstream),
        }
    }

    /// `Pending`, unless a blocked direction's source has a pending error: then that
    /// source failed (as if a read had returned the error).
    fn poll_blocked_check<C, U>(
        &mut self,
        cx: &mut Context<'_>,
        client: &C,
        upstream: &U,
    ) -> Poll<Ending>
    where
        C: PendingError,
        U: PendingError,
    {
        let client_blocked = self.to_upstream.blocked();
        let upstream_blocked = self.to_client.blocked();
        if !client_blocked && !upstream_blocked {
            self.check_armed = false;
            return Poll::Pending;
        }
        let timer = self
            .check
            .get_or_insert_with(|| Box::pin(sleep(BLOCKED_ERROR_CHECK)));
        if !self.check_armed {
            timer.as_mut().reset(Instant::now() + BLOCKED_ERROR_CHECK);
            self.check_armed = true;
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // A failed getsockopt tells nothing about the peer: treated as no error.
        let found = if client_blocked {
            client
                .take_error()
                .ok()
                .flatten()
                .map(|e| (Side::Client, e))
        } else {
            None
        };
        let found = match found {
            None if upstream_blocked => upstream
                .take_error()
                .ok()
                .flatten()
                .map(|e| (Side::Upstream, e)),
            found => found,
        };
        if let Some((side, error)) = found {
            return Poll::Ready(Ending::Failed {
                side,
                op: Op::Read,
                error,
            });
        }
        // Nothing yet: look again later (polling the re-armed timer registers the wake).
        timer.as_mut().reset(Instant::now() + BLOCKED_ERROR_CHECK);
        let _ = timer.as_mut().poll(cx);
        Poll::Pending
    }
}

/// One direction: reads `src` into a bounded buffer, writes it all to `dst`, and at end
/// of stream shuts `dst`'s write side down.
struct Pump {
    buf: Box<[u8]>,
    /// `buf[pos..end]` is read and not yet written.
    pos: usize,
    end: usize,
    /// `src` reached end of stream (it may still be passing the rest on).
    saw_eof: bool,
    /// The half-close has been passed on: this direction is finished.
    done: bool,
}

impl Pump {
    fn new() -> Self {
        Pump {
            buf: vec![0; BUF_SIZE].into_boxed_slice(),
            pos: 0,
            end: 0,
            saw_eof: false,
            done: false,
        }
    }

    /// Holds bytes its destination has not taken: it is not reading its source.
    /// Starts with `bytes` to write (a larger buffer if they need it).
    fn preload(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        if bytes.len() > self.buf.len() {
            self.buf = bytes.into_boxed_slice();
            self.pos = 0;
            self.end = self.buf.len();
            return;
        }
        self.buf[..bytes.len()].copy_from_slice(&bytes);
        self.pos = 0;
        self.end = bytes.len();
    }

    /// The bytes read and not yet written, taken out.
    fn take(&mut self) -> Vec<u8> {
        let out = self.buf[self.pos..self.end].to_vec();
        self.pos = 0;
        self.end = 0;
        out
    }

    fn blocked(&self) -> bool {
        self.pos < self.end
    }

    /// Moves bytes until `src` or `dst` would block (`Pending`), the direction is
    /// finished (`Ok`), or a socket fails. Sets `moved` when a byte moved. tokio's
    /// cooperative budget makes a socket return `Pending` after a while, so a busy
    /// direction cannot starve the other or the timers.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
        counter: &AtomicU64,
        moved: &mut bool,
    ) -> Poll<Result<(), (Op, io::Error)>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // Bounded: every turn moves at least one byte, reaches end of stream, or returns.
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.pos < self.end {
                match Pin::new(&mut *dst).poll_write(cx, &self.buf[self.pos..self.end]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err((Op::Write, io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(n)) => {
                        self.pos += n;
                        *moved = true;
                        if self.pos == self.end {
                            self.pos = 0;
                            self.end = 0;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((Op::Write, e))),
                    Poll::Pending => return Poll::Pending,
                }
            } else if self.saw_eof {
                match Pin::new(&mut *dst).poll_shutdown(cx) {
                    Poll::Ready(Ok(())) => self.done = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((Op::Shutdown, e))),
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.saw_eof = true;
                        } else {
                            self.end = n;
                            *moved = true;
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((Op::Read, e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The copy logic against in-memory pipes under paused time (timers), and against
    //! real socket pairs (resets and half-closes as the kernel does them) without timers
    //! that matter.

    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    const LONG: Duration = Duration::from_secs(3600);

    impl PendingError for DuplexStream {
        fn take_error(&self) -> io::Result<Option<io::Error>> {
            Ok(None)
        }
    }

    impl PendingError for tokio::net::TcpStream {
        fn take_error(&self) -> io::Result<Option<io::Error>> {
            tokio::net::TcpStream::take_error(self)
        }
    }

    fn stats() -> TunnelStats {
        TunnelStats::new()
    }

    async fn read_all(s: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        out
    }

    /// (the test's client end, the tunnel's client end, the tunnel's upstream end, the
    /// test's upstream end).
    fn pipes() -> (DuplexStream, DuplexStream, DuplexStream, DuplexStream) {
        let (c, tc) = duplex(64);
        let (tu, u) = duplex(64);
        (c, tc, tu, u)
    }

    #[tokio::test(start_paused = true)]
    async fn client_half_close_reaches_upstream_and_reply_still_flows() {
        let (mut c, mut tc, mut tu, mut u) = pipes();
        let hard = CancellationToken::new();
        let st = stats();
        let tunnel = async { run(&mut tc, &mut tu, LONG, &hard, &st).await };
        let peers = async {
            c.write_all(b"request").await.unwrap();
            c.shutdown().await.unwrap();
            // The upstream sees the whole request, then end of stream...
            assert_eq!(read_all(&mut u).await, b"request");
            // ...and can still answer, after which it closes too.
            u.write_all(b"reply").await.unwrap();
            u.shutdown().await.unwrap();
            assert_eq!(read_all(&mut c).await, b"reply");
        };
        let (ending, ()) = tokio::join!(tunnel, peers);
        assert!(
            matches!(
                ending,
                Ending::Closed {
                    first: Side::Client
                }
            ),
            "{ending:?}"
        );
        assert_eq!(st.bytes_in(), 7);
        assert_eq!(st.bytes_out(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn upstream_half_close_lets_the_client_keep_sending() {
        let (mut c, mut tc, mut tu, mut u) = pipes();
        let hard = CancellationToken::new();
        let st = stats();
        let tunnel = async { run(&mut tc, &mut tu, LONG, &hard, &st).await };
        let peers = async {
            u.write_all(b"greeting").await.unwrap();
            u.shutdown().await.unwrap();
            assert_eq!(read_all(&mut c).await, b"greeting");
            // Far more than one buffer, through 64-byte pipes: flow control both ways.
            let big = vec![7u8; 3 * BUF_SIZE + 5];
            let send = async {
                c.write_all(&big).await.unwrap();
                c.shutdown().await.unwrap();
            };
            let (got, ()) = tokio::join!(read_all(&mut u), send);
            assert_eq!(got, big);
        };
        let (ending, ()) = tokio::join!(tunnel, peers);
        assert!(
            matches!(
                ending,
                Ending::Closed {
                    first: Side::Upstream
                }
            ),
            "{ending:?}"
        );
        assert_eq!(st.bytes_in(), 3 * BUF_SIZE as u64 + 5);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_ends_the_tunnel_after_the_idle_timeout_and_traffic_defers_it() {
        let (mut c, mut tc, mut tu, mut u) = pipes();
        let hard = CancellationToken::new();
        let st = stats();
        let idle = Duration::from_millis(300);
        let start = Instant::now();
        let tunnel = async { run(&mut tc, &mut tu, idle, &hard, &st).await };
        let peers = async {
            // A byte every 200 ms keeps it open past several idle periods.
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                c.write_all(b"x").await.unwrap();
                let mut one = [0u8; 1];
                u.read_exact(&mut one).await.unwrap();
            }
        };
        let (ending, ()) = tokio::join!(tunnel, peers);
        assert!(matches!(ending, Ending::Idle), "{ending:?}");
        // The last byte at ~1000 ms, then 300 ms of silence.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1300) && took < Duration::from_millis(1400),
            "{took:?}"
        );
        assert!(st.idle() <= idle + Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_closed_tunnel_is_still_bounded_by_the_idle_timeout() {
        let (mut c, mut tc, mut tu, _u) = pipes();
        let hard = CancellationToken::new();
        let st = stats();
        c.shutdown().await.unwrap();
        let start = Instant::now();
        let ending = run(&mut tc, &mut tu, Duration::from_millis(300), &hard, &st).await;
        assert!(matches!(ending, Ending::Idle), "{ending:?}");
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    /// One peer of a busy tunnel: writes without pause and reads everything, and says
    /// (on `busy`) once it has received `enough` bytes. Returns how its reading ended
    /// (`Ok(0)` is end of stream), how its writing ended, and when each did.
    async fn busy_peer(
        peer: DuplexStream,
        enough: usize,
        busy: tokio::sync::oneshot::Sender<()>,
    ) -> ((io::Result<usize>, Instant), (io::Error, Instant)) {
        let (mut rx, mut tx) = tokio::io::split(peer);
        let read = async {
            let mut busy = Some(busy);
            let mut got = 0;
            let mut buf = [0u8; 1024];
            // Bounded by the tunnel's end: then a read returns 0 or fails.
            loop {
                match rx.read(&mut buf).await {
                    Ok(0) => return (Ok(0), Instant::now()),
                    Ok(n) => got += n,
                    Err(e) => return (Err(e), Instant::now()),
                }
                if got >= enough {
                    if let Some(busy) = busy.take() {
                        let _ = busy.send(());
                    }
                }
            }
        };
        let write = async {
            let chunk = [7u8; 1024];
            // Bounded by the tunnel's end: then a write fails.
            loop {
                if let Err(e) = tx.write_all(&chunk).await {
                    return (e, Instant::now());
                }
            }
        };
        tokio::join!(read, write)
    }

    #[tokio::test]
    async fn hard_shutdown_ends_a_busy_tunnel() {
        // Bytes flow both ways, without a pause, when the hard shutdown fires: the copy
        // ends with `Shutdown` (not by idling, the idle timeout is an hour), and once
        // the caller drops the tunnel's sockets both peers see the end at once: end of
        // stream on their reads, a broken pipe on their writes.
        let enough = 4 * BUF_SIZE;
        let (c, mut tc, mut tu, u) = pipes();
        let hard = CancellationToken::new();
        let st = stats();
        let (c_busy, c_is_busy) = tokio::sync::oneshot::channel();
        let (u_busy, u_is_busy) = tokio::sync::oneshot::channel();
        let (hard, st) = (&hard, &st);
        let tunnel = async move {
            let ending = run(&mut tc, &mut tu, LONG, hard, st).await;
            // What the caller does once the copy has ended.
            drop((tc, tu));
            ending
        };
        let cancel = async {
            let (c, u) = tokio::join!(c_is_busy, u_is_busy);
            assert!(c.is_ok() && u.is_ok(), "a peer ended before it was busy");
            let fired = Instant::now();
            hard.cancel();
            fired
        };
        let all = async {
            tokio::join!(
                tunnel,
                cancel,
                busy_peer(c, enough, c_busy),
                busy_peer(u, enough, u_busy)
            )
        };
        let (ending, fired, client, upstream) = tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .expect("the tunnel and both peers end");
        assert!(matches!(ending, Ending::Shutdown), "{ending:?}");
        assert!(st.bytes_in() >= enough as u64, "{}", st.bytes_in());
        assert!(st.bytes_out() >= enough as u64, "{}", st.bytes_out());
        for (side, ((read, read_end), (write, write_end))) in
            [("client", client), ("upstream", upstream)]
        {
            assert_eq!(read.as_ref().ok(), Some(&0), "{side}: read ended {read:?}");
            assert_eq!(write.kind(), io::ErrorKind::BrokenPipe, "{side}: {write}");
            for end in [read_end, write_end] {
                let after = end.saturating_duration_since(fired);
                assert!(after < Duration::from_millis(100), "{side}: {after:?}");
            }
        }
    }

    /// A connected TCP pair on loopback: (accepted, connected).
    async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (a, _) = l.accept().await.unwrap();
        (a, c)
    }

    fn reset(s: tokio::net::TcpStream) {
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    }

    #[tokio::test]
    async fn an_upstream_reset_is_blamed_on_the_upstream() {
        let (mut tc, c) = tcp_pair().await;
        let (u, mut tu) = tcp_pair().await;
        let hard = CancellationToken::new();
        let st = stats();
        reset(u);
        let ending = tokio::time::timeout(
            Duration::from_secs(5),
            run(&mut tc, &mut tu, LONG, &hard, &st),
        )
        .await
        .unwrap();
        match ending {
            Ending::Failed {
                side: Side::Upstream,
                op: Op::Read,
                error,
            } => assert_eq!(error.kind(), io::ErrorKind::ConnectionReset),
            other => panic!("{other:?}"),
        }
        drop(c);
    }

    #[tokio::test]
    async fn a_client_reset_is_blamed_on_the_client() {
        let (mut tc, c) = tcp_pair().await;
        let (_u, mut tu) = tcp_pair().await;
        let hard = CancellationToken::new();
        let st = stats();
        reset(c);
        let ending = tokio::time::timeout(
            Duration::from_secs(5),
            run(&mut tc, &mut tu, LONG, &hard, &st),
        )
        .await
        .unwrap();
        assert!(
            matches!(
                ending,
                Ending::Failed {
                    side: Side::Client,
                    ..
                }
            ),
            "{ending:?}"
        );
    }

    #[tokio::test]
    async fn a_reset_from_a_client_whose_upstream_does_not_read_is_noticed_within_a_second() {
        // The direction toward the upstream is blocked (the upstream never reads), so
        // the client's socket is not being read: only the pending-error check sees the
        // reset.
        let (mut tc, mut c) = tcp_pair().await;
        let (_u, mut tu) = tcp_pair().await;
        let hard = CancellationToken::new();
        let st = stats();
        let (reset_at_tx, reset_at_rx) = tokio::sync::oneshot::channel();
        let client = async move {
            // Fill every buffer on the way until the client's writes stall.
            let chunk = vec![0u8; 64 * 1024];
            while tokio::time::timeout(Duration::from_millis(200), c.write_all(&chunk))
                .await
                .is_ok()
            {}
            reset(c);
            let _ = reset_at_tx.send(Instant::now());
            std::future::pending::<()>().await;
        };
        let ending = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::select! {
                e = run(&mut tc, &mut tu, LONG, &hard, &st) => e,
                () = client => unreachable!(),
            }
        })
        .await
        .unwrap();
        let noticed_after = reset_at_rx.await.unwrap().elapsed();
        assert!(
            matches!(
                ending,
                Ending::Failed {
                    side: Side::Client,
                    op: Op::Read,
                    ..
                }
            ),
            "{ending:?}"
        );
        assert!(noticed_after < Duration::from_secs(1), "{noticed_after:?}");
        assert!(st.bytes_in() > 0);
    }

    #[tokio::test]
    async fn a_write_into_a_closed_client_is_blamed_on_the_client() {
        // The client closes completely (not a half-close): its FIN is passed on, the
        // upstream answers anyway, the client's kernel answers that with RST, and a
        // later write fails — on the client's socket.
        let (mut tc, c) = tcp_pair().await;
        let (mut u, mut tu) = tcp_pair().await;
        let hard = CancellationToken::new();
        let st = stats();
        drop(c);
        let tunnel = run(&mut tc, &mut tu, LONG, &hard, &st);
        let upstream = async {
            let mut buf = [0u8; 16];
            assert_eq!(u.read(&mut buf).await.unwrap(), 0);
            // A few writes: the first draws the client kernel's RST, a later one fails.
            for _ in 0..100 {
                u.write_all(&[1u8; 1024]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            std::future::pending::<()>().await;
        };
        let ending = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::select! {
                e = tunnel => e,
                () = upstream => unreachable!(),
            }
        })
        .await
        .unwrap();
        assert!(
            matches!(
                ending,
                Ending::Failed {
                    side: Side::Client,
                    op: Op::Write,
                    ..
                }
            ),
            "{ending:?}"
        );
    }
}
