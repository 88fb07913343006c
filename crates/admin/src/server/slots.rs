//! Admin client slots and each client's activity: what the cap, the idle timer, the
//! request deadline, `GET /v1/admin-clients` and the "full" answer are computed from.
//!
//! Invariants: a client holds a slot exactly while its [`Slot`] guard lives (the
//! connection task owns it), and there are never more than `max` slots held — the check
//! and the insert happen under one lock.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::api::{AdminBusy, AdminClientView};

/// `request_since` when no request is in progress.
const NONE: u64 = u64::MAX;

/// One client's activity. Times are milliseconds since `base` (atomics: the I/O wrapper
/// updates them on every read, without a lock).
#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    last_read: AtomicU64,
    /// When the current request's first byte arrived; [`NONE`] between requests.
    request_since: AtomicU64,
    requests: AtomicU64,
}

/// Why a client is closed by its timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// No byte from it for `idle_timeout`.
    Idle,
    /// A request (head and body) took longer than `idle_timeout`.
    Request,
}

// === impl Activity ===

impl Activity {
    fn new() -> Self {
        Activity {
            base: Instant::now(),
            last_read: AtomicU64::new(0),
            request_since: AtomicU64::new(NONE),
            requests: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    /// Bytes arrived: the client is alive, and a request may have begun.
    fn read(&self) {
        let now = self.now_ms();
        self.last_read.store(now, Ordering::Relaxed);
        // Only the first byte of a request starts its deadline.
        let _ =
            self.request_since
                .compare_exchange(NONE, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The service has the whole request (head and body): its deadline is met.
    pub(crate) fn request_read(&self) {
        self.request_since.store(NONE, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// When the client's timers expire, and which one expires first.
    pub(crate) fn deadline(&self, timeout: Duration) -> (Instant, Expired) {
        let idle = self.at(self.last_read.load(Ordering::Relaxed)) + timeout;
        match self.request_since.load(Ordering::Relaxed) {
            NONE => (idle, Expired::Idle),
            since => {
                let request = self.at(since) + timeout;
                if request < idle {
                    (request, Expired::Request)
                } else {
                    (idle, Expired::Idle)
                }
            }
        }
    }

    /// (age, idle) at `now`: one instant for both, so idle never exceeds age.
    fn times(&self, now: Instant) -> (Duration, Duration) {
        let last = self.at(self.last_read.load(Ordering::Relaxed));
        (
            now.saturating_duration_since(self.base),
            now.saturating_duration_since(last),
        )
    }
}

/// A stream whose reads are recorded in an [`Activity`].
#[derive(Debug)]
pub(crate) struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
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

/// The slots of one admin listener.
#[derive(Debug)]
pub(crate) struct Slots {
    max: usize,
    idle_timeout: Duration,
    next_id: AtomicU64,
    held: Mutex<BTreeMap<u64, Holder>>,
}

#[derive(Debug)]
struct Holder {
    peer: String,
    activity: Arc<Activity>,
}

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    activity: Arc<Activity>,
}

// === impl Slots ===

impl Slots {
    pub(crate) fn new(max: usize, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Slots {
            max: max.max(1),
            idle_timeout,
            next_id: AtomicU64::new(1),
            held: Mutex::new(BTreeMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Holder>> {
        // Every critical section is an insert, a remove or a read: a panic cannot leave
        // the map half-changed, so a poisoned lock is still consistent.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for a client at `peer`, or says who holds them all.
    pub(crate) fn acquire(self: &Arc<Self>, peer: String) -> Result<Slot, AdminBusy> {
        let mut held = self.lock();
        if held.len() >= self.max {
            return Err(self.busy(&held));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        held.insert(
            id,
            Holder {
                peer,
                activity: activity.clone(),
            },
        );
        Ok(Slot {
            slots: self.clone(),
            id,
            activity,
        })
    }

    fn busy(&self, held: &BTreeMap<u64, Holder>) -> AdminBusy {
        // Ids grow with time: the first entry is the longest-connected client.
        let (age, idle) = held
            .values()
            .next()
            .map(|h| h.activity.times(Instant::now()))
            .unwrap_or_default();
        AdminBusy {
            clients: held.len() as u64,
            max_connections: self.max as u64,
            oldest_age_s: age.as_secs_f64(),
            oldest_idle_s: idle.as_secs_f64(),
            idle_timeout_s: self.idle_timeout.as_secs_f64(),
        }
    }

    /// How long until the most idle client is closed (at least a second, for
    /// `Retry-After`).
    pub(crate) fn retry_after(&self) -> Duration {
        let held = self.lock();
        let now = Instant::now();
        let most_idle = held
            .values()
            .map(|h| h.activity.times(now).1)
            .max()
            .unwrap_or_default();
        self.idle_timeout
            .saturating_sub(most_idle)
            .max(Duration::from_secs(1))
    }

    /// Every client holding a slot, longest-connected first.
    pub(crate) fn views(&self) -> Vec<AdminClientView> {
        let now = Instant::now();
        self.lock()
            .iter()
            .map(|(id, h)| {
                let (age, idle) = h.activity.times(now);
                AdminClientView {
                    id: *id,
                    peer: h.peer.clone(),
                    age_s: age.as_secs_f64(),
                    idle_s: idle.as_secs_f64(),
                    requests: h.activity.requests.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Slots held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

// === impl Slot ===

impl Slot {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_cap_holds_and_a_dropped_slot_frees_its_place() {
        let slots = Slots::new(2, Duration::from_secs(10));
        let a = slots.acquire("unix".into()).expect("first");
        tokio::time::advance(Duration::from_secs(3)).await;
        let _b = slots.acquire("unix".into()).expect("second");
        let busy = slots.acquire("unix".into()).expect_err("full");
        assert_eq!((busy.clients, busy.max_connections), (2, 2));
        assert_eq!(busy.oldest_age_s, 3.0);
        assert_eq!(busy.oldest_idle_s, 3.0);
        assert_eq!(busy.idle_timeout_s, 10.0);
        assert_eq!(slots.retry_after(), Duration::from_secs(7));
        drop(a);
        assert_eq!(slots.len(), 1);
        slots.acquire("unix".into()).expect("freed");
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timer_restarts_on_each_read_and_a_request_has_its_own_deadline() {
        let activity = Activity::new();
        let t = Duration::from_millis(300);
        let start = Instant::now();
        assert_eq!(activity.deadline(t), (start + t, Expired::Idle));
        // A request begins: its deadline runs from its first byte, and later bytes
        // do not extend it.
        tokio::time::advance(Duration::from_millis(100)).await;
        activity.read();
        tokio::time::advance(Duration::from_millis(100)).await;
        activity.read();
        let first_byte = start + Duration::from_millis(100);
        assert_eq!(activity.deadline(t), (first_byte + t, Expired::Request));
        // Read whole: only the idle timer is left, from the last byte.
        activity.request_read();
        let last_byte = start + Duration::from_millis(200);
        assert_eq!(activity.deadline(t), (last_byte + t, Expired::Idle));
        assert_eq!(activity.requests.load(Ordering::Relaxed), 1);
    }
}
