//! The keep-alive pool of one upstream server, built on `hyper::client::conn::http1`.
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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::body::RequestBody;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::endpoint::Stream;
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
}

/// How long a released connection that hyper is still busy with (sending the rest of
/// a request body the upstream answered early) may take to become ready before it is
/// closed instead of pooled. A complete exchange is ready within microseconds; an
/// upload the server ignores may never end, and keeping its socket would only keep the
/// client's body flowing to a server that does not read it.
pub const RELEASE_READY_WAIT: Duration = Duration::from_millis(250);

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
    conn: Option<Idle>,
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
        Pool {
            inner: Arc::new(PoolInner {
                idle: Mutex::new(Vec::with_capacity(max_idle.min(64))),
                max_idle,
                idle_timeout,
                keeping: AtomicBool::new(true),
            }),
        }
    }

    /// How many idle connections the pool holds now.
    pub fn idle_count(&self) -> usize {
        lock(&self.inner.idle).len()
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
                conn: Some(entry),
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
    pub async fn handshake(&self, stream: Stream, entry: Registration) -> hyper::Result<Checkout> {
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
        });
        tokio::spawn(drive(
            conn.with_upgrades(),
            ctl.clone(),
            self.inner.idle_timeout,
            Arc::downgrade(&self.inner),
            entry,
        ));
        Ok(Checkout {
            conn: Some(Idle { sender, ctl }),
            pool: Arc::downgrade(&self.inner),
            reused: false,
            peer,
            local,
        })
    }

    /// Whether released connections are kept (`false` while the server is in
    /// `maint`: each is closed instead).
    pub fn set_keeping(&self, keep: bool) {
        self.inner.keeping.store(keep, Ordering::Relaxed);
    }

    /// Closes every idle connection (maintenance, shutdown).
    pub fn clear(&self) {
        for entry in lock(&self.inner.idle).drain(..) {
            entry.ctl.kill.cancel();
        }
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
                        let taken = match pool.upgrade() {
                            Some(pool) => {
                                let mut idle = lock(&pool.idle);
                                match idle.iter().position(|e| e.ctl.id == ctl.id) {
                                    Some(pos) if ctl.idle_deadline(idle_timeout).is_some_and(|d| d <= now) => {
                                        idle.remove(pos);
                                        false
                                    }
                                    _ => true,
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
    }
}

// === impl Checkout ===

impl Checkout {
    /// The hyper sender, to send one request. `None` only after `release`, which
    /// consumes the checkout, so callers always get `Some`.
    pub fn sender(&mut self) -> Option<&mut SendRequest<RequestBody>> {
        self.conn.as_mut().map(|c| &mut c.sender)
    }

    /// The connection's registry entry (`None` only after `release`).
    pub fn entry(&self) -> Option<&Arc<Conn>> {
        self.conn.as_ref().map(|c| &c.ctl.entry)
    }

    /// Waits until the connection can take a request; an error means it is closed.
    pub async fn ready(&mut self) -> hyper::Result<()> {
        match self.conn.as_mut() {
            Some(c) => c.sender.ready().await,
            None => Ok(()),
        }
    }

    /// Marks the connection for closing once its exchange ends: [`Checkout::release`]
    /// closes it instead of pooling it (a response whose framing was in doubt).
    pub fn close_after(&mut self) {
        // A checkout without its pool closes on release, as when the pool is gone.
        self.pool = Weak::new();
    }

    /// Returns the connection to the pool after a complete exchange; closes it instead
    /// when the pool is full, gone, or the connection cannot take another request. One
    /// that hyper is still busy with is pooled once it is ready, if that happens within
    /// [`RELEASE_READY_WAIT`], and closed otherwise.
    pub fn release(mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
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

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.ctl.kill.cancel();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the Vec inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
