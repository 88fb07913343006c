//! The connection registry: every client connection (HTTP and TCP tunnels) and every
//! upstream connection (pooled or in use) while it lives, with its state, counters and
//! a way to close it now (docs/design.md, "Principles" 1; `GET /v1/connections`).
//!
//! A connection enters through [`Registry::register`], which hands back a
//! [`Registration`]; dropping the registration removes the entry. Whoever owns the
//! connection's sockets owns the registration (the HTTP connection's [`ClientConn`], a
//! tunnel's [`TunnelStats`], an upstream connection's pool task), so an entry lives
//! exactly as long as its connection's task.
//!
//! Hot-path cost: one registration per connection (an allocation and one lock of one
//! shard out of [`SHARDS`]); per read or write, a relaxed store of the last-activity time
//! and a relaxed add to a byte counter on the connection's own entry (the HTTP
//! [`ClientConn`] keeps its timers on the same entry instead of a second set of atomics);
//! per request, a few relaxed stores and one uncontended lock to link the client
//! connection to the upstream connection it uses (no allocation: the link holds the
//! server's [`ServerId`] and the upstream connection's entry, which knows its own
//! addresses). [`Registry::snapshot`] allocates; nothing else does.
//!
//! An HTTP/2 connection has an entry (protocol `h2`), and each of its streams one more,
//! entered with [`Registry::register_stream`]: it names the connection's entry as its
//! parent, closing it resets that stream alone, and it is no connection of its own in
//! the metrics (its bytes are its connection's).
//!
//! The vocabulary (`client | upstream`, `http1 | h2 | sse | websocket | tcp`,
//! `reading | waiting_upstream | streaming | tunnel | idle | closing`) is docs/design.md's;
//! the binary turns [`ConnSnapshot`]s into the admin API's views.
//!
//! [`ClientConn`]: crate::http::client_conn::ClientConn
//! [`TunnelStats`]: crate::tcp::TunnelStats

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::observed::IoObserver;
use crate::side::Side;

/// Shards of the registry's map. Registration and removal lock one shard, picked by
/// id; consecutive ids land on different shards, so connections accepted at once on
/// different workers rarely meet on a lock.
pub const SHARDS: usize = 32;

/// Connection ids, unique in the process (across registries, so across reloads).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What a connection carries now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnProtocol {
    /// HTTP/1.x.
    Http1 = 0,
    /// HTTP/1.1 streaming a `text/event-stream` response now.
    Sse = 1,
    /// Upgraded (WebSocket): bytes both ways.
    Websocket = 2,
    /// A TCP-mode tunnel.
    Tcp = 3,
    /// HTTP/2: a client connection and each of its streams (an entry with a parent),
    /// or an upstream connection of a `protocol = "h2"` upstream.
    H2 = 4,
}

impl ConnProtocol {
    /// Every protocol, in a stable order (for metrics).
    pub const ALL: [ConnProtocol; 5] = [
        ConnProtocol::Http1,
        ConnProtocol::H2,
        ConnProtocol::Sse,
        ConnProtocol::Websocket,
        ConnProtocol::Tcp,
    ];

    /// `http1 | h2 | sse | websocket | tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnProtocol::Http1 => "http1",
            ConnProtocol::H2 => "h2",
            ConnProtocol::Sse => "sse",
            ConnProtocol::Websocket => "websocket",
            ConnProtocol::Tcp => "tcp",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => ConnProtocol::Sse,
            2 => ConnProtocol::Websocket,
            3 => ConnProtocol::Tcp,
            4 => ConnProtocol::H2,
            _ => ConnProtocol::Http1,
        }
    }
}

/// Where a connection is in its life (docs/design.md, "Vocabulary of states").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnState {
    /// A request head is arriving.
    Reading = 0,
    /// Waiting for the upstream: connecting, or the request sent and no response head
    /// yet (an upstream connection: checked out for a request).
    WaitingUpstream = 1,
    /// A response is being sent.
    Streaming = 2,
    /// Bytes both ways (TCP mode, upgraded).
    Tunnel = 3,
    /// Between requests (keep-alive), or idle in the pool.
    Idle = 4,
    /// Being closed.
    Closing = 5,
}

impl ConnState {
    /// Every state, in a stable order (for metrics).
    pub const ALL: [ConnState; 6] = [
        ConnState::Reading,
        ConnState::WaitingUpstream,
        ConnState::Streaming,
        ConnState::Tunnel,
        ConnState::Idle,
        ConnState::Closing,
    ];

    /// `reading | waiting_upstream | streaming | tunnel | idle | closing`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Reading => "reading",
            ConnState::WaitingUpstream => "waiting_upstream",
            ConnState::Streaming => "streaming",
            ConnState::Tunnel => "tunnel",
            ConnState::Idle => "idle",
            ConnState::Closing => "closing",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => ConnState::Reading,
            1 => ConnState::WaitingUpstream,
            2 => ConnState::Streaming,
            3 => ConnState::Tunnel,
            5 => ConnState::Closing,
            _ => ConnState::Idle,
        }
    }
}

/// One end of a registered connection's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SockAddr {
    /// A TCP socket address.
    Tcp(SocketAddr),
    /// A Unix socket: its path as tidegate writes it (`unix:/run/x.sock`) when it has
    /// one; an accepted client's end has none (`unix`).
    Unix(Option<Arc<str>>),
}

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SockAddr::Tcp(a) => write!(f, "{a}"),
            SockAddr::Unix(Some(p)) => f.write_str(p),
            SockAddr::Unix(None) => f.write_str("unix"),
        }
    }
}

impl SockAddr {
    /// The TCP address, if it is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            SockAddr::Tcp(a) => Some(*a),
            SockAddr::Unix(_) => None,
        }
    }
}

/// An upstream server as registry entries and access-log lines name it: made once per
/// server and shared by reference count, so linking a request to it allocates nothing.
/// Names, not the upstream itself: what lists connections needs no way back to the
/// balancer and its pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerId {
    /// The upstream's name.
    pub upstream: Arc<str>,
    /// The server's address as configured.
    pub addr: Arc<str>,
    /// The server's index in its upstream.
    pub index: usize,
}

/// Bytes moved by the connections of one listener that have closed; the live ones are
/// added at scrape time (see `metrics`), so nothing shared is touched per byte.
#[derive(Debug, Default)]
pub struct Totals {
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
}

/// What a new entry is.
#[derive(Debug)]
pub struct NewConn {
    /// Client or upstream.
    pub side: Side,
    /// Listener name (client side) or upstream name (upstream side).
    pub name: Arc<str>,
    /// The other end.
    pub peer: SockAddr,
    /// Our end.
    pub local: SockAddr,
    /// The protocol it starts with.
    pub protocol: ConnProtocol,
    /// The state it starts in.
    pub state: ConnState,
    /// Cancelled to close the connection now; the connection's task selects on it.
    pub close: CancellationToken,
    /// Upstream side: the server (index in its upstream, address as configured).
    pub server: Option<(usize, Arc<str>)>,
    /// Where its bytes are added when it closes (client side: its listener's totals).
    pub totals: Option<Arc<Totals>>,
    /// The config generation it runs under (client side; 0 on the upstream side,
    /// which follows its client).
    pub generation: u64,
}

/// One registered connection. Counters are relaxed atomics written by the connection's
/// own task and read by snapshots.
pub struct Conn {
    id: u64,
    side: Side,
    name: Arc<str>,
    peer: SockAddr,
    local: SockAddr,
    server: Option<(usize, Arc<str>)>,
    started: Instant,
    /// Milliseconds from `started` to the last byte either way.
    last_io: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    requests: AtomicU64,
    state: AtomicU8,
    protocol: AtomicU8,
    close: CancellationToken,
    /// Client side: the upstream of the current exchange.
    link: Mutex<Option<Link>>,
    /// The client end of a tunnel whose bytes this (upstream) end shares, swapped: one
    /// pump moves both, so only one set of counters is kept.
    mirror: Option<Arc<Conn>>,
    totals: Option<Arc<Totals>>,
    generation: AtomicU64,
    /// An HTTP/2 stream: the id of its connection's entry.
    parent: Option<u64>,
}

/// The upstream side of a client connection's current exchange.
#[derive(Debug)]
struct Link {
    server: ServerId,
    /// The upstream connection in use (`None` while connecting).
    conn: Option<Arc<Conn>>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("side", &self.side)
            .field("name", &self.name)
            .field("peer", &self.peer)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

// === impl Conn ===

impl Conn {
    fn new(id: u64, c: NewConn, mirror: Option<Arc<Conn>>, parent: Option<u64>) -> Self {
        Conn {
            id,
            side: c.side,
            name: c.name,
            peer: c.peer,
            local: c.local,
            server: c.server,
            started: Instant::now(),
            last_io: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            state: AtomicU8::new(c.state as u8),
            protocol: AtomicU8::new(c.protocol as u8),
            close: c.close,
            link: Mutex::new(None),
            mirror,
            totals: c.totals,
            generation: AtomicU64::new(c.generation),
            parent,
        }
    }

    /// Unique in the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// An HTTP/2 stream's entry: its connection's id (`None` for a connection).
    pub fn parent(&self) -> Option<u64> {
        self.parent
    }

    /// A kept connection's next request runs under this config generation (a reload).
    pub(crate) fn set_generation(&self, generation: u64) {
        self.generation.store(generation, Ordering::Relaxed);
    }

    /// The config generation it runs under.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Client or upstream.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Listener or upstream name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The other end.
    pub fn peer(&self) -> &SockAddr {
        &self.peer
    }

    /// Our end.
    pub fn local(&self) -> &SockAddr {
        &self.local
    }

    /// Upstream side: the server's index in its upstream.
    pub fn server_index(&self) -> Option<usize> {
        self.server.as_ref().map(|(i, _)| *i)
    }

    /// Upstream side: the server's address as configured.
    pub fn server_addr(&self) -> Option<&str> {
        self.server.as_ref().map(|(_, a)| &**a)
    }

    /// When it was registered.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Milliseconds since it was registered.
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Milliseconds from the start to the last byte either way.
    pub fn last_io_ms(&self) -> u64 {
        match &self.mirror {
            Some(m) => m.last_io_ms(),
            None => self.last_io.load(Ordering::Relaxed),
        }
    }

    /// Records activity at `at_ms` (milliseconds since the start).
    pub(crate) fn touch(&self, at_ms: u64) {
        self.last_io.store(at_ms, Ordering::Relaxed);
    }

    /// `n` bytes read from the peer at `at_ms`.
    pub(crate) fn on_read(&self, n: usize, at_ms: u64) {
        self.last_io.store(at_ms, Ordering::Relaxed);
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `n` bytes written to the peer at `at_ms`.
    pub(crate) fn on_write(&self, n: usize, at_ms: u64) {
        self.last_io.store(at_ms, Ordering::Relaxed);
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `n` bytes written to the peer; the last activity is left as it is.
    pub(crate) fn count_write(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Bytes read from the peer.
    pub fn bytes_in(&self) -> u64 {
        match &self.mirror {
            Some(m) => m.bytes_out(),
            None => self.bytes_in.load(Ordering::Relaxed),
        }
    }

    /// Bytes written to the peer.
    pub fn bytes_out(&self) -> u64 {
        match &self.mirror {
            Some(m) => m.bytes_in(),
            None => self.bytes_out.load(Ordering::Relaxed),
        }
    }

    /// One more request (or tunnel) on this connection.
    pub(crate) fn add_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests served (a tunnel counts 1).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The current state.
    pub fn state(&self) -> ConnState {
        ConnState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Moves to `state`. A connection being closed stays `closing`.
    pub(crate) fn set_state(&self, state: ConnState) {
        if self.state.load(Ordering::Relaxed) != ConnState::Closing as u8 {
            self.state.store(state as u8, Ordering::Relaxed);
        }
    }

    /// The current protocol.
    pub fn protocol(&self) -> ConnProtocol {
        ConnProtocol::from_u8(self.protocol.load(Ordering::Relaxed))
    }

    pub(crate) fn set_protocol(&self, p: ConnProtocol) {
        self.protocol.store(p as u8, Ordering::Relaxed);
    }

    /// Cancelled when the connection must close now (an operator's `close`, or — for
    /// connections whose token is a child of the drain's `hard` — the end of the grace).
    pub fn close_token(&self) -> &CancellationToken {
        &self.close
    }

    /// Asks the connection's task to close it now.
    pub fn close(&self) {
        self.set_state(ConnState::Closing);
        self.close.cancel();
    }

    /// A new entry for the same socket in a new role (an upstream connection that
    /// leaves its pool to become a tunnel's upstream end).
    pub(crate) fn successor(
        &self,
        protocol: ConnProtocol,
        state: ConnState,
        close: CancellationToken,
    ) -> NewConn {
        NewConn {
            side: self.side,
            name: self.name.clone(),
            peer: self.peer.clone(),
            local: self.local.clone(),
            protocol,
            state,
            close,
            server: self.server.clone(),
            totals: None,
            generation: 0,
        }
    }

    /// Client side: the current exchange goes to `server`, over `conn` (`None` while
    /// connecting). No allocation: reference counts only.
    pub(crate) fn link(&self, server: &ServerId, conn: Option<&Arc<Conn>>) {
        *lock(&self.link) = Some(Link {
            server: server.clone(),
            conn: conn.cloned(),
        });
    }

    /// The exchange ended: no upstream side any more.
    pub(crate) fn unlink(&self) {
        let old = lock(&self.link).take();
        // Dropped outside the lock.
        drop(old);
    }

    fn upstream_view(&self) -> Option<UpstreamSnapshot> {
        match self.side {
            Side::Upstream => {
                let (index, server) = self.server.clone()?;
                Some(UpstreamSnapshot {
                    name: self.name.to_string(),
                    server: server.to_string(),
                    index,
                    local: self.local.tcp().map(|a| a.to_string()),
                    peer: self.peer.tcp().map(|a| a.to_string()),
                })
            }
            Side::Client => {
                let link = lock(&self.link);
                let link = link.as_ref()?;
                let (local, peer) = match &link.conn {
                    Some(c) => (
                        c.local.tcp().map(|a| a.to_string()),
                        c.peer.tcp().map(|a| a.to_string()),
                    ),
                    None => (None, None),
                };
                Some(UpstreamSnapshot {
                    name: link.server.upstream.to_string(),
                    server: link.server.addr.to_string(),
                    index: link.server.index,
                    local,
                    peer,
                })
            }
        }
    }

    /// A copy of the entry, for the admin API.
    pub fn snapshot(&self) -> ConnSnapshot {
        let age_ms = self.elapsed_ms();
        ConnSnapshot {
            id: self.id,
            side: self.side,
            listener: self.name.to_string(),
            protocol: self.protocol(),
            peer: self.peer.to_string(),
            local: self.local.to_string(),
            state: self.state(),
            age: Duration::from_millis(age_ms),
            idle: Duration::from_millis(age_ms.saturating_sub(self.last_io_ms())),
            bytes_in: self.bytes_in(),
            bytes_out: self.bytes_out(),
            requests: self.requests(),
            generation: self.generation(),
            upstream: self.upstream_view(),
            parent: self.parent,
        }
    }
}

/// A registered connection at one moment (plain values; the binary turns it into the
/// admin API's `ConnectionView`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSnapshot {
    /// Unique while the process runs.
    pub id: u64,
    /// Client or upstream.
    pub side: Side,
    /// Listener name (client side) or upstream name (upstream side).
    pub listener: String,
    /// `http1 | h2 | sse | websocket | tcp`.
    pub protocol: ConnProtocol,
    /// The other end (`unix` for a Unix-socket client; the server's socket address or
    /// `unix:PATH` for an upstream connection).
    pub peer: String,
    /// Our end (`unix:PATH` for a Unix listener; `unix` for our end of a connection to
    /// a Unix upstream).
    pub local: String,
    /// `reading | waiting_upstream | streaming | tunnel | idle | closing`.
    pub state: ConnState,
    /// Since registered (accepted or connected), at millisecond resolution.
    pub age: Duration,
    /// Since the last byte either way.
    pub idle: Duration,
    /// Bytes read from the peer.
    pub bytes_in: u64,
    /// Bytes written to the peer.
    pub bytes_out: u64,
    /// Requests served (a tunnel counts 1; an upstream connection: requests sent).
    pub requests: u64,
    /// The config generation it runs under: 1 at startup, one more per reload (client
    /// side; 0 on the upstream side).
    pub generation: u64,
    /// Client side: the upstream side of the current exchange, if any. Upstream side:
    /// the connection's own upstream and server.
    pub upstream: Option<UpstreamSnapshot>,
    /// An HTTP/2 stream: the id of the connection it is on.
    pub parent: Option<u64>,
}

/// The upstream end of an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSnapshot {
    /// Upstream name.
    pub name: String,
    /// Server address as configured.
    pub server: String,
    /// Server index in the upstream.
    pub index: usize,
    /// Our address on the upstream socket (`None` for a Unix socket, or while
    /// connecting).
    pub local: Option<String>,
    /// The upstream socket's peer address (`None` for a Unix socket, or while
    /// connecting).
    pub peer: Option<String>,
}

/// Every live connection of one runtime.
pub struct Registry {
    shards: Box<[Mutex<Shard>]>,
}

/// One shard of the registry's map.
type Shard = HashMap<u64, Arc<Conn>, IdHash>;

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("len", &self.len())
            .finish()
    }
}

/// A registered connection; dropping it removes the entry. Derefs to the [`Conn`].
pub struct Registration {
    conn: Arc<Conn>,
    registry: Option<Arc<Registry>>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.conn.fmt(f)
    }
}

// === impl Registry ===

impl Registry {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Registry {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
        })
    }

    fn shard(&self, id: u64) -> MutexGuard<'_, Shard> {
        lock(&self.shards[(id % SHARDS as u64) as usize])
    }

    /// Enters a connection; it stays until the returned registration drops.
    pub fn register(self: &Arc<Self>, new: NewConn) -> Registration {
        self.insert(new, None, None)
    }

    /// Enters a stream of the HTTP/2 connection `parent` (listed under it; closing it
    /// resets the stream alone). Its `totals` should be `None`: its bytes are counted
    /// on the connection's socket.
    pub fn register_stream(self: &Arc<Self>, new: NewConn, parent: &Conn) -> Registration {
        self.insert(new, None, Some(parent.id))
    }

    /// Enters the upstream end of a tunnel whose client end is `client`: one pump moves
    /// both, so its counters are `client`'s, swapped.
    pub fn register_mirror(self: &Arc<Self>, new: NewConn, client: &Arc<Conn>) -> Registration {
        self.insert(new, Some(client.clone()), None)
    }

    fn insert(
        self: &Arc<Self>,
        new: NewConn,
        mirror: Option<Arc<Conn>>,
        parent: Option<u64>,
    ) -> Registration {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(id, new, mirror, parent));
        self.shard(id).insert(id, conn.clone());
        Registration {
            conn,
            registry: Some(self.clone()),
        }
    }

    fn remove(&self, id: u64) {
        let removed = self.shard(id).remove(&id);
        debug_assert!(removed.is_some(), "connection {id} registered once");
        drop(removed);
    }

    /// How many connections are registered.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// True when no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with every registered connection (one shard locked at a time; `f` must
    /// not register or drop registrations).
    pub fn for_each(&self, mut f: impl FnMut(&Conn)) {
        for shard in self.shards.iter() {
            for conn in lock(shard).values() {
                f(conn);
            }
        }
    }

    /// Every registered connection, by id.
    pub fn snapshot(&self) -> Vec<ConnSnapshot> {
        // Entries are copied out shard by shard and snapshotted without a shard lock
        // held (a client's snapshot locks its link, which may name another entry).
        let mut conns: Vec<Arc<Conn>> = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            conns.extend(lock(shard).values().cloned());
        }
        let mut out: Vec<ConnSnapshot> = conns.iter().map(|c| c.snapshot()).collect();
        out.sort_by_key(|c| c.id);
        out
    }

    /// One connection, if registered.
    pub fn get(&self, id: u64) -> Option<ConnSnapshot> {
        let conn = self.shard(id).get(&id).cloned();
        conn.map(|c| c.snapshot())
    }

    /// Closes connection `id` now: its task is told through the entry's token. `false`
    /// when no such connection is registered.
    pub fn close(&self, id: u64) -> bool {
        let conn = self.shard(id).get(&id).cloned();
        match conn {
            Some(c) => {
                tracing::info!(id, side = c.side.as_str(), name = %c.name, peer = %c.peer, "closing connection on request");
                c.close();
                true
            }
            None => false,
        }
    }
}

// === impl Registration ===

impl Registration {
    /// An entry in no registry, for connections nobody lists (tests, a listener's own
    /// checks); it behaves like a registered one otherwise.
    pub fn detached(side: Side, protocol: ConnProtocol, state: ConnState) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let new = NewConn {
            side,
            name: Arc::from(""),
            peer: SockAddr::Unix(None),
            local: SockAddr::Unix(None),
            protocol,
            state,
            close: CancellationToken::new(),
            server: None,
            totals: None,
            generation: 0,
        };
        Registration {
            conn: Arc::new(Conn::new(id, new, None, None)),
            registry: None,
        }
    }

    /// The entry, shared (to link a client connection to this upstream connection).
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl std::ops::Deref for Registration {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(r) = &self.registry {
            r.remove(self.conn.id);
        }
        // After the removal: a scrape in between counts the bytes in neither place,
        // which the metrics' monotonic clamp absorbs; counting them twice would not be.
        if let Some(t) = &self.conn.totals {
            t.bytes_in
                .fetch_add(self.conn.bytes_in(), Ordering::Relaxed);
            t.bytes_out
                .fetch_add(self.conn.bytes_out(), Ordering::Relaxed);
        }
        // An exchange link may hold an upstream connection's entry; let it go now.
        self.conn.unlink();
    }
}

/// An `Observed<T, Conn>` counts its bytes and last activity on a registered connection
/// (upstream connections; client connections count through their `ClientConn`). Only reads
/// update the last activity: on an upstream connection a read (the response) follows
/// every write (the request), and a clock read costs more than the byte count.
impl IoObserver for Conn {
    fn read(&self, n: usize) {
        self.on_read(n, self.elapsed_ms());
    }
    fn wrote(&self, n: usize) {
        self.count_write(n);
    }
}

/// Ids are sequential: a multiplicative hash spreads them over the table's buckets
/// (SipHash would be wasted on them).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdHash = BuildHasherDefault<IdHasher>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can panic while holding a lock in a way that leaves a map
    // inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str) -> NewConn {
        NewConn {
            side: Side::Client,
            name: Arc::from(name),
            peer: SockAddr::Tcp("127.0.0.1:5000".parse().unwrap()),
            local: SockAddr::Tcp("127.0.0.1:8080".parse().unwrap()),
            protocol: ConnProtocol::Http1,
            state: ConnState::Idle,
            close: CancellationToken::new(),
            server: None,
            totals: Some(Arc::new(Totals::default())),
            generation: 0,
        }
    }

    #[tokio::test]
    async fn a_registration_is_listed_until_dropped() {
        let r = Registry::new();
        let a = r.register(client("web"));
        let b = r.register(client("api"));
        assert_eq!(r.len(), 2);
        let ids: Vec<u64> = r.snapshot().iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![a.id(), b.id()]);
        drop(a);
        assert_eq!(r.len(), 1);
        assert_eq!(r.snapshot()[0].listener, "api");
        drop(b);
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn snapshot_shows_counters_state_and_addresses() {
        let r = Registry::new();
        let c = r.register(client("web"));
        c.on_read(100, 0);
        c.on_write(250, 0);
        c.add_request();
        c.set_state(ConnState::Streaming);
        c.set_protocol(ConnProtocol::Sse);
        let s = r.get(c.id()).unwrap();
        assert_eq!(
            (s.bytes_in, s.bytes_out, s.requests),
            (100, 250, 1),
            "{s:?}"
        );
        assert_eq!(s.state, ConnState::Streaming);
        assert_eq!(s.protocol, ConnProtocol::Sse);
        assert_eq!(s.side, Side::Client);
        assert_eq!(s.peer, "127.0.0.1:5000");
        assert_eq!(s.local, "127.0.0.1:8080");
        assert_eq!(s.upstream, None);
    }

    #[tokio::test]
    async fn closed_connections_bytes_go_to_their_totals() {
        let r = Registry::new();
        let new = client("web");
        let totals = new.totals.clone().unwrap();
        let c = r.register(new);
        c.on_read(7, 0);
        c.on_write(9, 0);
        drop(c);
        assert_eq!(totals.bytes_in.load(Ordering::Relaxed), 7);
        assert_eq!(totals.bytes_out.load(Ordering::Relaxed), 9);
    }

    #[tokio::test]
    async fn close_cancels_the_token_and_marks_closing() {
        let r = Registry::new();
        let c = r.register(client("web"));
        let token = c.close_token().clone();
        assert!(!token.is_cancelled());
        assert!(r.close(c.id()));
        assert!(token.is_cancelled());
        assert_eq!(r.get(c.id()).unwrap().state, ConnState::Closing);
        // Closing sticks: the connection's own transitions don't undo it.
        c.set_state(ConnState::Idle);
        assert_eq!(c.state(), ConnState::Closing);
        drop(c);
        assert!(!r.close(12345678), "an unknown id");
    }

    #[tokio::test]
    async fn a_mirror_shows_its_client_counters_swapped() {
        let r = Registry::new();
        let c = r.register(client("tcp"));
        let mut up = client("rabbit");
        up.side = Side::Upstream;
        up.server = Some((0, Arc::from("127.0.0.1:5672")));
        let u = r.register_mirror(up, c.conn());
        c.on_read(3, 0);
        c.on_write(5, 0);
        let s = r.get(u.id()).unwrap();
        assert_eq!((s.bytes_in, s.bytes_out), (5, 3));
        let side = s.upstream.unwrap();
        assert_eq!(
            (side.name.as_str(), side.server.as_str(), side.index),
            ("rabbit", "127.0.0.1:5672", 0)
        );
    }

    #[tokio::test]
    async fn ids_are_unique_across_registries() {
        let (r1, r2) = (Registry::new(), Registry::new());
        let a = r1.register(client("a"));
        let b = r2.register(client("b"));
        assert_ne!(a.id(), b.id());
    }
}
