//! A client connection's phase and activity, shared by the I/O wrapper (which sees
//! bytes), the service (which sees requests and responses) and the connection driver
//! (which enforces `header_timeout`, `idle_timeout` and the exchange's idle timer).
//!
//! tidegate measures these itself: hyper's `header_read_timeout` needs a timer and also
//! fires on idle keep-alive connections, so it can't tell the two phases apart
//! (DESIGN.md §5, timers).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

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

/// Shared phase and activity of one connection. Times are milliseconds since `base`.
#[derive(Debug)]
pub struct Clock {
    base: Instant,
    phase: AtomicU8,
    phase_since: AtomicU64,
    last_io: AtomicU64,
    /// Milliseconds of silence allowed during an exchange; 0 = none set.
    exchange_idle: AtomicU64,
}

/// What the driver should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Check again at this instant.
    WaitUntil(Instant),
    /// A timer expired in this phase.
    Expired(Phase),
}

impl Clock {
    /// A new clock, idle since now.
    pub fn new() -> Arc<Self> {
        Arc::new(Clock {
            base: Instant::now(),
            phase: AtomicU8::new(Phase::Idle as u8),
            phase_since: AtomicU64::new(0),
            last_io: AtomicU64::new(0),
            exchange_idle: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Idle,
            1 => Phase::Head,
            _ => Phase::Busy,
        }
    }

    fn set(&self, phase: Phase) {
        self.phase_since.store(self.now_ms(), Ordering::Relaxed);
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Bytes arrived from the client.
    fn on_read(&self) {
        let now = self.now_ms();
        self.last_io.store(now, Ordering::Relaxed);
        if self.phase.load(Ordering::Relaxed) == Phase::Idle as u8 {
            self.phase_since.store(now, Ordering::Relaxed);
            self.phase.store(Phase::Head as u8, Ordering::Relaxed);
        }
    }

    fn on_write(&self) {
        self.last_io.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A request head is complete and is being served.
    pub fn request_started(&self) {
        self.exchange_idle.store(0, Ordering::Relaxed);
        self.set(Phase::Busy);
    }

    /// The exchange (proxied to an upstream) may be silent at most this long.
    pub fn set_exchange_idle(&self, limit: Duration) {
        self.exchange_idle
            .store(limit.as_millis() as u64, Ordering::Relaxed);
    }

    /// The response has been written (or abandoned).
    pub fn response_finished(&self) {
        self.set(Phase::Idle);
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
                    self.last_io
                        .load(Ordering::Relaxed)
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
        Verdict::WaitUntil(self.base + Duration::from_millis(deadline))
    }
}

/// A stream that reports its reads and writes to a [`Clock`].
#[derive(Debug)]
pub struct Watched<T> {
    inner: T,
    clock: Arc<Clock>,
}

impl<T> Watched<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, clock: Arc<Clock>) -> Self {
        Watched { inner, clock }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.on_read();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.clock.on_write();
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.clock.on_write();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_rechecked_within_header_timeout() {
        let c = Clock::new();
        let Verdict::WaitUntil(t) = c.verdict(IDLE, HEAD) else {
            panic!("fresh connection expired")
        };
        assert!(t <= Instant::now() + HEAD);
        // A head starts 5 s later; at the next check it is held to its own deadline.
        tokio::time::advance(Duration::from_secs(5)).await;
        c.on_read();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(c.verdict(IDLE, HEAD), Verdict::WaitUntil(_)));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(c.verdict(IDLE, HEAD), Verdict::Expired(Phase::Head));
    }

    const IDLE: Duration = Duration::from_secs(60);
    const HEAD: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn idle_connection_expires_after_idle_timeout() {
        let c = Clock::new();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(c.verdict(IDLE, HEAD), Verdict::WaitUntil(_)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(c.verdict(IDLE, HEAD), Verdict::Expired(Phase::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn started_head_expires_after_header_timeout() {
        let c = Clock::new();
        c.on_read();
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(c.verdict(IDLE, HEAD), Verdict::Expired(Phase::Head));
    }

    #[tokio::test(start_paused = true)]
    async fn busy_without_exchange_limit_never_expires_and_idle_restarts_after_response() {
        let c = Clock::new();
        c.on_read();
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
        let c = Clock::new();
        c.request_started();
        c.set_exchange_idle(Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(4)).await;
        c.on_write();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(matches!(c.verdict(IDLE, HEAD), Verdict::WaitUntil(_)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(c.verdict(IDLE, HEAD), Verdict::Expired(Phase::Busy));
    }
}
