//! Test backends on real sockets that record what arrives on the wire: a raw HTTP/1.1
//! server driven by [`Reply`] values, and a WebSocket echo server.
//!
//! Invariants: a connection is in [`Backend::connections`] from its accept on, and gets
//! its `closed_at` exactly once, when its task ends; nothing a background task hits is
//! lost — it lands in [`Backend::parse_errors`] or [`Backend::errors`].

mod http;
mod reply;
mod ws;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::task::{JoinHandle, JoinSet};

pub use reply::{Reply, SseThen};

use crate::addr::{Addr, Bind, Listener, Stream};
use crate::wire;

/// How often [`Backend::wait_for`] looks again.
const POLL_EVERY: Duration = Duration::from_millis(5);

/// One request as the backend parsed it off the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target exactly as sent (`/x?y`, or absolute-form).
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Header lines in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The decoded body (de-chunked). Empty while it is being read, and always empty for
    /// [`Reply::slow_read`] (see `body_len`).
    pub body: Vec<u8>,
    /// Decoded body bytes read so far.
    pub body_len: u64,
    /// Whether the body's end arrived (Content-Length reached, or the `0` chunk).
    pub body_complete: bool,
    /// The request line and headers, byte for byte, up to and including the blank line.
    /// Empty for a WebSocket upgrade (the handshake library parses it).
    pub raw_head: Vec<u8>,
    /// Which connection it came on ([`ConnInfo::id`]).
    pub conn_id: u64,
}

// === impl Request ===

impl Request {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::find(&self.headers, name)
    }

    /// Every value of a header, in order, by case-insensitive name.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        wire::find_all(&self.headers, name)
    }

    /// `"GET /x HTTP/1.1"`.
    pub fn request_line(&self) -> String {
        format!("{} {} {}", self.method, self.target, self.version)
    }
}

/// How a backend connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnEnd {
    /// The peer closed it: a read returned end of stream, or a write found the pipe broken.
    ClosedByPeer,
    /// The peer reset it (ECONNRESET).
    ResetByPeer,
    /// The backend closed it: `Connection: close`, a closing reply, a parse error, idle.
    ClosedByBackend,
    /// The backend reset it (a resetting reply).
    ResetByBackend,
    /// Any other failure, described.
    Failed(String),
}

impl ConnEnd {
    /// Whether the peer ended the connection (closed or reset).
    pub fn by_peer(&self) -> bool {
        matches!(self, ConnEnd::ClosedByPeer | ConnEnd::ResetByPeer)
    }
}

/// One accepted connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// 1 for the first accepted connection, then 2, 3, ...
    pub id: u64,
    /// The peer's `ip:port`, or `unix`.
    pub peer: String,
    /// When it was accepted.
    pub opened_at: Instant,
    /// When the backend saw it end (peer close noticed, or its own close).
    pub closed_at: Option<Instant>,
    /// How it ended; `None` while open.
    pub end: Option<ConnEnd>,
}

/// Options for [`Backend::start_with`].
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// Close a keep-alive connection that has been idle (no byte of a next request) this
    /// long, as many application servers do. `None` (the default): never.
    pub close_idle_after: Option<Duration>,
}

impl BackendOptions {
    /// Sets [`BackendOptions::close_idle_after`].
    pub fn close_idle_after(mut self, idle: Duration) -> Self {
        self.close_idle_after = Some(idle);
        self
    }
}

/// Chooses the reply to a request, from its head (method, target, headers); the body has
/// not been read yet when it is called.
pub(crate) type Handler = dyn Fn(&Request) -> Reply + Send + Sync + 'static;

pub(crate) enum Mode {
    Http(Box<Handler>),
    WebSocketEcho,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) conns: Vec<ConnInfo>,
    pub(crate) requests: Vec<Request>,
    pub(crate) parse_errors: Vec<String>,
    pub(crate) errors: Vec<String>,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) mode: Mode,
    pub(crate) opts: BackendOptions,
}

// === impl Shared ===

impl Shared {
    /// The recorded state. A panic while it was held cannot leave it half-written (each
    /// update is one push or assignment), so a poisoned lock is used as is.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn opened(&self, peer: String) -> u64 {
        let mut st = self.state();
        let id = st.conns.len() as u64 + 1;
        st.conns.push(ConnInfo {
            id,
            peer,
            opened_at: Instant::now(),
            closed_at: None,
            end: None,
        });
        id
    }

    fn closed(&self, id: u64, end: ConnEnd) {
        let mut st = self.state();
        if let Some(c) = st.conns.iter_mut().find(|c| c.id == id) {
            if c.closed_at.is_none() {
                c.closed_at = Some(Instant::now());
                c.end = Some(end);
            }
        }
    }

    pub(crate) fn parse_error(&self, id: u64, what: String) {
        self.state().parse_errors.push(format!("conn {id}: {what}"));
    }

    pub(crate) fn error(&self, what: String) {
        self.state().errors.push(what);
    }

    /// Records a new request; returns its index for later updates.
    pub(crate) fn push_request(&self, req: Request) -> usize {
        let mut st = self.state();
        st.requests.push(req);
        st.requests.len() - 1
    }

    pub(crate) fn update_request(&self, idx: usize, f: impl FnOnce(&mut Request)) {
        if let Some(r) = self.state().requests.get_mut(idx) {
            f(r);
        }
    }

    pub(crate) fn request(&self, idx: usize) -> Option<Request> {
        self.state().requests.get(idx).cloned()
    }
}

/// A backend server on a real socket. Dropping it stops it: its tasks are aborted (open
/// connections close) and a Unix socket's file and directory are removed.
///
/// ```no_run
/// # async fn t() -> anyhow::Result<()> {
/// use tidegate_testkit::{Backend, Bind, Reply};
/// let b = Backend::start(Bind::Unix, |req| match req.target.as_str() {
///     "/slow" => Reply::delay(std::time::Duration::from_millis(300), Reply::text(200, "late")),
///     _ => Reply::echo(),
/// })?;
/// let cfg = format!("servers = [\"{}\"]", b.addr().to_config());
/// # Ok(()) }
/// ```
pub struct Backend {
    shared: Arc<Shared>,
    addr: Addr,
    task: JoinHandle<()>,
    /// Holds a Unix socket's directory; removed (with the socket file) on drop.
    _dir: Option<tempfile::TempDir>,
}

// === impl Backend ===

impl Backend {
    /// Starts a raw HTTP/1.1 backend. `handler` picks the [`Reply`] for each request from
    /// its head. Must be called inside a tokio runtime.
    pub fn start(
        bind: Bind,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> anyhow::Result<Backend> {
        Self::start_with(bind, BackendOptions::default(), handler)
    }

    /// [`Backend::start`] with options.
    pub fn start_with(
        bind: Bind,
        opts: BackendOptions,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> anyhow::Result<Backend> {
        Self::spawn(bind, opts, Mode::Http(Box::new(handler)))
    }

    /// Starts a WebSocket server (tokio-tungstenite) that echoes every text and binary
    /// message. The upgrade request is recorded in [`Backend::requests`]; a failed
    /// handshake in [`Backend::parse_errors`].
    pub fn websocket_echo(bind: Bind) -> anyhow::Result<Backend> {
        Self::spawn(bind, BackendOptions::default(), Mode::WebSocketEcho)
    }

    fn spawn(bind: Bind, opts: BackendOptions, mode: Mode) -> anyhow::Result<Backend> {
        let rt = tokio::runtime::Handle::try_current()
            .context("a test backend must be started inside a tokio runtime")?;
        let _guard = rt.enter();
        let (listener, addr, dir) = Listener::bind(bind)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            mode,
            opts,
        });
        let task = rt.spawn(accept_loop(shared.clone(), listener));
        Ok(Backend {
            shared,
            addr,
            task,
            _dir: dir,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> &Addr {
        &self.addr
    }

    /// How many connections it has accepted.
    pub fn accepts(&self) -> usize {
        self.shared.state().conns.len()
    }

    /// Every connection accepted so far, in accept order.
    pub fn connections(&self) -> Vec<ConnInfo> {
        self.shared.state().conns.clone()
    }

    /// One connection by id.
    pub fn connection(&self, id: u64) -> Option<ConnInfo> {
        self.shared
            .state()
            .conns
            .iter()
            .find(|c| c.id == id)
            .cloned()
    }

    /// Connections accepted and not ended yet.
    pub fn open_connections(&self) -> usize {
        let st = self.shared.state();
        st.conns.iter().filter(|c| c.closed_at.is_none()).count()
    }

    /// Connections that have ended (by either side).
    pub fn closed_connections(&self) -> usize {
        let st = self.shared.state();
        st.conns.iter().filter(|c| c.closed_at.is_some()).count()
    }

    /// Every request so far, in arrival order (recorded as soon as its head is parsed).
    pub fn requests(&self) -> Vec<Request> {
        self.shared.state().requests.clone()
    }

    /// The request lines so far, e.g. `"GET /x HTTP/1.1"`.
    pub fn request_lines(&self) -> Vec<String> {
        let st = self.shared.state();
        st.requests.iter().map(Request::request_line).collect()
    }

    /// Bytes that could not be parsed as a request (each answered `400` and closed), and
    /// failed WebSocket handshakes; each starts with `conn N:`.
    pub fn parse_errors(&self) -> Vec<String> {
        self.shared.state().parse_errors.clone()
    }

    /// Failures of the backend itself (accept errors, a panicking handler).
    pub fn errors(&self) -> Vec<String> {
        self.shared.state().errors.clone()
    }

    /// Polls `what` until it holds, or fails after `within` with a summary of what the
    /// backend saw.
    pub async fn wait_for(
        &self,
        what: impl Fn(&Backend) -> bool,
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
                    "backend {}: condition not met within {within:?}; {}",
                    self.addr,
                    self.summary()
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// A one-line account of what the backend saw, for failure messages.
    pub fn summary(&self) -> String {
        let st = self.shared.state();
        let open = st.conns.iter().filter(|c| c.closed_at.is_none()).count();
        let lines: Vec<String> = st.requests.iter().map(Request::request_line).collect();
        format!(
            "accepts={} open={} requests={:?} parse_errors={:?} errors={:?}",
            st.conns.len(),
            open,
            lines,
            st.parse_errors,
            st.errors
        )
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("addr", &self.addr)
            .field("summary", &self.summary())
            .finish()
    }
}

/// Accepts until aborted; each connection runs in a task of `tasks`, which aborts them
/// all when this future is dropped.
async fn accept_loop(shared: Arc<Shared>, listener: Listener) {
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut conn_of_task: HashMap<tokio::task::Id, u64> = HashMap::new();
    // Bounded by the backend's lifetime: Drop aborts this task.
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let id = shared.opened(peer);
                    let sh = shared.clone();
                    let handle = tasks.spawn(async move {
                        let end = serve(&sh, id, stream).await;
                        sh.closed(id, end);
                    });
                    conn_of_task.insert(handle.id(), id);
                }
                Err(e) => {
                    shared.error(format!("accept on {}: {e}", kind_of(&listener)));
                    // EMFILE and friends must not spin a core.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(done) = tasks.join_next_with_id() => {
                let task_id = match &done {
                    Ok((id, ())) => *id,
                    Err(e) => e.id(),
                };
                if let Some(conn) = conn_of_task.remove(&task_id) {
                    if let Err(e) = done {
                        shared.error(format!("conn {conn}: task failed: {e}"));
                        shared.closed(conn, ConnEnd::Failed(format!("task failed: {e}")));
                    }
                }
            }
        }
    }
}

fn kind_of(l: &Listener) -> &'static str {
    match l {
        Listener::Tcp(_) => "tcp",
        Listener::Unix(_) => "unix",
    }
}

async fn serve(shared: &Arc<Shared>, id: u64, stream: Stream) -> ConnEnd {
    match &shared.mode {
        Mode::Http(_) => http::serve(shared, id, stream).await,
        Mode::WebSocketEcho => ws::serve(shared, id, stream).await,
    }
}
