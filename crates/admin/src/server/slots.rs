//! Admin client slots and each client's activity: what the cap, the idle timer, the
//! request deadline, `GET /v1/admin-clients` and the "full" answer are computed from.
//!
//! Invariants: a client holds a slot while its [`Slot`] guard lives (the connection
//! task owns it) and has not been evicted, and there are never more than `max` slots
//! held — the check, the eviction and the insert happen under one lock.
//!
//! **Eviction.** When every slot is held, a newcomer takes the slot of the client that
//! has been idle the longest among those with no request in progress (an idle HTTP
//! connection is one a server may close at any time); that client's
//! [`Slot::evicted`] token fires and its task closes it. A client is claimed for
//! eviction with one compare-and-swap on its `request_since`, the same word its first
//! request byte sets, so a client whose request has begun is never taken. Only when
//! every holder has a request in progress is the newcomer refused.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{AdminBusy, AdminClientView, AdminClients, AdminEviction};

/// `request_since` when no request is in progress.
const NONE: u64 = u64::MAX;
/// `request_since` of a client claimed for eviction: no later byte starts a request.
const EVICTED: u64 = u64::MAX - 1;
/// `request_since` while the whole request is in and its answer is being computed (an
/// upgrade waits for a new process): the timers wait, and the client is not evicted.
const ANSWERING: u64 = u64::MAX - 2;
/// Evictions kept for `GET /v1/admin-clients` (the newest).
pub(crate) const RECENT_EVICTIONS: usize = 16;

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
        // Below every sentinel: a real time is never mistaken for one.
        u64::try_from(self.base.elapsed().as_millis())
            .unwrap_or(ANSWERING - 1)
            .min(ANSWERING - 1)
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
        // An evicted client stays evicted (its task is closing it).
        let _ = self
            .request_since
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                (v != EVICTED).then_some(NONE)
            });
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The whole request is in and its answer is being computed: no timer runs until
    /// [`Activity::answered`]. Counts the request like [`Activity::request_read`].
    pub(crate) fn answering(&self) {
        let _ = self
            .request_since
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                (v != EVICTED).then_some(ANSWERING)
            });
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The answer is ready: the idle timer starts over from now.
    pub(crate) fn answered(&self) {
        self.last_read.store(self.now_ms(), Ordering::Relaxed);
        let _ = self.request_since.compare_exchange(
            ANSWERING,
            NONE,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Claims this client for eviction if no request is in progress; after `true`, no
    /// later byte starts one.
    fn claim_for_eviction(&self) -> bool {
        self.request_since
            .compare_exchange(NONE, EVICTED, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Whether a request is in progress (its first byte arrived, not yet all of it).
    /// One being answered is not (though it is not evicted either: its claim fails).
    fn in_request(&self) -> bool {
        !matches!(
            self.request_since.load(Ordering::Relaxed),
            NONE | EVICTED | ANSWERING
        )
    }

    /// When the client's timers expire, and which one expires first.
    pub(crate) fn deadline(&self, timeout: Duration) -> (Instant, Expired) {
        let idle = self.at(self.last_read.load(Ordering::Relaxed)) + timeout;
        match self.request_since.load(Ordering::Relaxed) {
            NONE | EVICTED => (idle, Expired::Idle),
            // Looked at again once the answer is out (it moves `last_read`).
            ANSWERING => (Instant::now() + timeout, Expired::Idle),
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
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    held: BTreeMap<u64, Holder>,
    /// Evictions since start.
    evictions: u64,
    /// The newest [`RECENT_EVICTIONS`] evictions, oldest first.
    recent: VecDeque<Eviction>,
}

#[derive(Debug)]
struct Holder {
    peer: String,
    activity: Arc<Activity>,
    evict: CancellationToken,
}

/// A client whose slot was given to a newcomer.
#[derive(Debug, Clone)]
pub(crate) struct Eviction {
    pub(crate) id: u64,
    pub(crate) peer: String,
    pub(crate) age: Duration,
    pub(crate) idle: Duration,
    pub(crate) requests: u64,
    pub(crate) at: Instant,
}

/// A slot taken by [`Slots::acquire`], and the client evicted to make room, if one was.
#[derive(Debug)]
pub(crate) struct Acquired {
    pub(crate) slot: Slot,
    pub(crate) evicted: Option<Eviction>,
}

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    activity: Arc<Activity>,
    evicted: CancellationToken,
}

// === impl Slots ===

impl Slots {
    pub(crate) fn new(max: usize, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Slots {
            max: max.max(1),
            idle_timeout,
            next_id: AtomicU64::new(1),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is an insert, a remove or a read: a panic cannot leave
        // the state half-changed, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for a client at `peer`: a free one, else the slot of the client
    /// idle the longest with no request in progress (evicting it), else says who holds
    /// them all.
    pub(crate) fn acquire(self: &Arc<Self>, peer: String) -> Result<Acquired, AdminBusy> {
        let mut state = self.lock();
        let evicted = if state.held.len() >= self.max {
            match Self::evict_one(&mut state) {
                Some(e) => Some(e),
                None => return Err(self.busy(&state.held)),
            }
        } else {
            None
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        let evict = CancellationToken::new();
        state.held.insert(
            id,
            Holder {
                peer,
                activity: activity.clone(),
                evict: evict.clone(),
            },
        );
        Ok(Acquired {
            slot: Slot {
                slots: self.clone(),
                id,
                activity,
                evicted: evict,
            },
            evicted,
        })
    }

    /// Evicts the holder idle the longest among those with no request in progress.
    /// Bounded: each candidate is tried once (a failed claim means its request began).
    fn evict_one(state: &mut State) -> Option<Eviction> {
        let now = Instant::now();
        let mut candidates: Vec<(Duration, u64)> = state
            .held
            .iter()
            .filter(|(_, h)| !h.activity.in_request())
            .map(|(id, h)| (h.activity.times(now).1, *id))
            .collect();
        // Most idle first; among equals the longest-connected (smaller id).
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let id = candidates.into_iter().map(|(_, id)| id).find(|id| {
            state
                .held
                .get(id)
                .is_some_and(|h| h.activity.claim_for_eviction())
        })?;
        let holder = state.held.remove(&id)?;
        holder.evict.cancel();
        let (age, idle) = holder.activity.times(now);
        let eviction = Eviction {
            id,
            peer: holder.peer,
            age,
            idle,
            requests: holder.activity.requests.load(Ordering::Relaxed),
            at: now,
        };
        state.evictions += 1;
        if state.recent.len() >= RECENT_EVICTIONS {
            state.recent.pop_front();
        }
        state.recent.push_back(eviction.clone());
        Some(eviction)
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

    /// How long until the first slot frees up by a timer (the earliest idle or request
    /// deadline), at least a second, for `Retry-After`.
    pub(crate) fn retry_after(&self) -> Duration {
        let state = self.lock();
        let now = Instant::now();
        let first = state
            .held
            .values()
            .map(|h| h.activity.deadline(self.idle_timeout).0)
            .min()
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        first.max(Duration::from_secs(1))
    }

    /// Every client holding a slot (longest-connected first), and the evictions.
    pub(crate) fn views(&self) -> AdminClients {
        let now = Instant::now();
        let state = self.lock();
        let clients = state
            .held
            .iter()
            .map(|(id, h)| {
                let (age, idle) = h.activity.times(now);
                AdminClientView {
                    id: *id,
                    peer: h.peer.clone(),
                    age_s: age.as_secs_f64(),
                    idle_s: idle.as_secs_f64(),
                    requests: h.activity.requests.load(Ordering::Relaxed),
                    in_request: h.activity.in_request(),
                }
            })
            .collect();
        let recent_evictions = state
            .recent
            .iter()
            .rev()
            .map(|e| AdminEviction {
                id: e.id,
                peer: e.peer.clone(),
                age_s: e.age.as_secs_f64(),
                idle_s: e.idle.as_secs_f64(),
                requests: e.requests,
                ago_s: now.saturating_duration_since(e.at).as_secs_f64(),
            })
            .collect();
        AdminClients {
            clients,
            evictions: state.evictions,
            recent_evictions,
        }
    }

    /// Slots held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().held.len()
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

    /// Cancelled when a newcomer took this slot: the client is to be closed now.
    pub(crate) fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // An evicted slot was removed already (and its id is never reused).
        self.slots.lock().held.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_cap_holds_and_a_dropped_slot_frees_its_place() {
        let slots = Slots::new(2, Duration::from_secs(10));
        let a = slots.acquire("unix".into()).expect("first").slot;
        tokio::time::advance(Duration::from_secs(3)).await;
        let b = slots.acquire("unix".into()).expect("second").slot;
        // Both have a request in progress: nobody can be evicted.
        a.activity().read();
        b.activity().read();
        let busy = slots.acquire("unix".into()).expect_err("full");
        assert_eq!((busy.clients, busy.max_connections), (2, 2));
        assert_eq!(busy.oldest_age_s, 3.0);
        // Its first request byte just arrived.
        assert_eq!(busy.oldest_idle_s, 0.0);
        assert_eq!(busy.idle_timeout_s, 10.0);
        // The first request deadline: b's, 10 s after its first byte (now).
        assert_eq!(slots.retry_after(), Duration::from_secs(10));
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

    #[tokio::test(start_paused = true)]
    async fn a_client_being_answered_has_no_timer_running_and_is_not_evicted() {
        let slots = Slots::new(1, Duration::from_secs(10));
        let a = slots.acquire("unix".into()).expect("first").slot;
        a.activity().read();
        a.activity().answering();
        // An answer that takes longer than idle_timeout (an upgrade): the deadline
        // keeps moving on while it is computed.
        tokio::time::advance(Duration::from_secs(25)).await;
        let (at, _) = a.activity().deadline(Duration::from_secs(10));
        assert!(at > Instant::now());
        assert!(!a.activity().in_request());
        assert!(
            slots.acquire("unix".into()).is_err(),
            "not evicted while answered"
        );
        // Answered: the idle timer runs from now.
        a.activity().answered();
        let now = Instant::now();
        assert_eq!(
            a.activity().deadline(Duration::from_secs(10)),
            (now + Duration::from_secs(10), Expired::Idle)
        );
        assert_eq!(a.activity().requests.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newcomer_evicts_the_longest_idle_client_without_a_request_in_progress() {
        let slots = Slots::new(3, Duration::from_secs(10));
        let a = slots.acquire("a".into()).expect("a").slot;
        tokio::time::advance(Duration::from_secs(1)).await;
        let b = slots.acquire("b".into()).expect("b").slot;
        tokio::time::advance(Duration::from_secs(1)).await;
        let c = slots.acquire("c".into()).expect("c").slot;
        tokio::time::advance(Duration::from_secs(1)).await;
        // a is idle the longest but has a request in progress; b is next.
        a.activity().read();
        let got = slots.acquire("d".into()).expect("evicts");
        let evicted = got.evicted.expect("an eviction");
        assert_eq!((evicted.id, evicted.peer.as_str()), (b.id(), "b"));
        assert_eq!(evicted.idle, Duration::from_secs(2));
        assert!(b.evicted().is_cancelled() && !a.evicted().is_cancelled());
        assert_eq!(slots.len(), 3, "the cap holds");
        // An evicted client's late bytes start no request, and its drop frees nothing
        // more.
        b.activity().read();
        assert!(!b.activity().in_request());
        drop(b);
        assert_eq!(slots.len(), 3);
        let views = slots.views();
        assert_eq!(views.evictions, 1);
        assert_eq!(views.recent_evictions[0].peer, "b");
        // c, then d (newest), are taken next; a never while its request is in progress.
        c.activity().read();
        got.slot.activity().read();
        slots.acquire("e".into()).expect_err("all in progress");
        drop(c);
        assert_eq!(slots.len(), 2);
    }
}
