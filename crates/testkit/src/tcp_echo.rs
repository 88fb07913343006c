//! A byte-stream backend for TCP-mode tests, on a TCP or Unix socket: every accepted
//! connection is handed to a handler the test writes ([`TcpBackend::start`]), or echoed
//! ([`TcpBackend::echo`]).
//!
//! Invariants: a connection counts in [`TcpBackend::open`] from its accept until its
//! handler ends (its stream is dropped by then, unless the handler moved it elsewhere);
//! a handler's error lands in [`TcpBackend::errors`], never in a panic.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::{JoinHandle, JoinSet};

use crate::addr::{Addr, Bind, Listener, Stream};

/// How often [`TcpBackend::wait_for`] looks again.
const POLL_EVERY: Duration = Duration::from_millis(5);

type BoxFuture = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
type Handler = dyn Fn(Stream) -> BoxFuture + Send + Sync;

#[derive(Default)]
struct Shared {
    accepts: AtomicUsize,
    open: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, what: String) {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }
}

/// Decrements the open count however the handler's task ends (returns, fails, aborted).
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A backend that hands each accepted connection to a handler. Dropping it stops it: its
/// tasks are aborted (open connections close) and a Unix socket's file is removed.
///
/// ```no_run
/// # async fn t() -> anyhow::Result<()> {
/// use tidegate_testkit::{Bind, TcpBackend};
/// use tokio::io::AsyncWriteExt;
/// let echo = TcpBackend::echo(Bind::Tcp4)?;
/// let greeter = TcpBackend::start(Bind::Unix, |mut s| async move {
///     s.write_all(b"hello\n").await?;
///     Ok(())
/// })?;
/// # Ok(()) }
/// ```
pub struct TcpBackend {
    shared: Arc<Shared>,
    addr: Addr,
    task: JoinHandle<()>,
    /// Holds a Unix socket's directory; removed (with the socket file) on drop.
    _dir: Option<tempfile::TempDir>,
}

// === impl TcpBackend ===

impl TcpBackend {
    /// Starts a backend that runs `handler` on every accepted connection. Must be called
    /// inside a tokio runtime.
    pub fn start<F, Fut>(bind: Bind, handler: F) -> anyhow::Result<TcpBackend>
    where
        F: Fn(Stream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let rt = tokio::runtime::Handle::try_current()
            .context("a test backend must be started inside a tokio runtime")?;
        let _guard = rt.enter();
        let (listener, addr, dir) = Listener::bind(bind)?;
        let shared = Arc::new(Shared::default());
        let handler: Arc<Handler> = Arc::new(move |s| Box::pin(handler(s)) as BoxFuture);
        let task = rt.spawn(accept_loop(shared.clone(), listener, handler));
        Ok(TcpBackend {
            shared,
            addr,
            task,
            _dir: dir,
        })
    }

    /// Starts a backend that echoes every byte back, and at end of stream shuts its
    /// write side down and closes. A reset is an error (in [`TcpBackend::errors`]).
    pub fn echo(bind: Bind) -> anyhow::Result<TcpBackend> {
        Self::start(bind, echo)
    }

    /// Where it listens.
    pub fn addr(&self) -> &Addr {
        &self.addr
    }

    /// How many connections it has accepted.
    pub fn accepts(&self) -> usize {
        self.shared.accepts.load(Ordering::SeqCst)
    }

    /// Connections whose handler is still running.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Handler errors (each `{:#}`), and accept errors.
    pub fn errors(&self) -> Vec<String> {
        self.shared
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Polls `what` until it holds, or fails after `within` with what the backend saw.
    pub async fn wait_for(
        &self,
        what: impl Fn(&TcpBackend) -> bool,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        // Bounded by the deadline.
        loop {
            if what(self) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "TCP backend {}: condition not met within {within:?}; accepts={} open={} errors={:?}",
                    self.addr,
                    self.accepts(),
                    self.open(),
                    self.errors()
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for TcpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpBackend")
            .field("addr", &self.addr)
            .field("accepts", &self.accepts())
            .field("open", &self.open())
            .finish()
    }
}

/// Echoes until end of stream, then half-closes and returns (dropping the stream).
pub async fn echo(mut s: Stream) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    // Bounded by the peer's lifetime.
    loop {
        let n = s.read(&mut buf).await.context("echo: read")?;
        if n == 0 {
            s.shutdown().await.context("echo: shutdown")?;
            return Ok(());
        }
        s.write_all(&buf[..n]).await.context("echo: write")?;
    }
}

/// Accepts until aborted; each connection runs in a task of `tasks`, which aborts them
/// all when this future is dropped.
async fn accept_loop(shared: Arc<Shared>, listener: Listener, handler: Arc<Handler>) {
    let mut tasks: JoinSet<()> = JoinSet::new();
    // Bounded by the backend's lifetime: Drop aborts this task.
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    shared.accepts.fetch_add(1, Ordering::SeqCst);
                    shared.open.fetch_add(1, Ordering::SeqCst);
                    let guard = OpenGuard(shared.clone());
                    let fut = handler(stream);
                    tasks.spawn(async move {
                        if let Err(e) = fut.await {
                            guard.0.error(format!("conn from {peer}: {e:#}"));
                        }
                        drop(guard);
                    });
                }
                Err(e) => {
                    shared.error(format!("accept: {e}"));
                    // EMFILE and friends must not spin a core.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(done) = tasks.join_next() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        shared.error(format!("handler panicked: {e}"));
                    }
                }
            }
        }
    }
}
