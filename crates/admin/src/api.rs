//! The admin API's JSON, field by field. `docs/admin-api.md` documents the same schema
//! and a test keeps the two in step. Durations are seconds as floats (`age_s`), sizes
//! are bytes, times are Unix seconds.

use serde::{Deserialize, Serialize};

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// tidegate's version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_s: f64,
    /// `running` or `draining`.
    pub state: ProcessState,
    /// The config file, or `<quickstart>`.
    pub config: String,
    /// Open client connections, all listeners.
    pub connections: u64,
    /// Every listener.
    pub listeners: Vec<ListenerView>,
    /// Every certificate a TLS listener serves, listener by listener in config order.
    pub certificates: Vec<CertificateView>,
}

/// A certificate in `/v1/status`: one `{ cert, key }` of a TLS listener, as loaded by
/// the config in effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateView {
    /// The listener that serves it.
    pub listener: String,
    /// The `cert` file (resolved path).
    pub cert: String,
    /// The names it serves (subjectAltName DNS names, or its CN).
    pub names: Vec<String>,
    /// Its issuer's distinguished name.
    pub issuer: String,
    /// Its `notAfter`, Unix seconds.
    pub not_after: i64,
    /// Seconds until `not_after` (negative once past).
    pub expires_in_s: i64,
}

/// Process state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Serving.
    Running,
    /// SIGTERM received: not accepting, finishing in-flight exchanges.
    Draining,
}

/// A listener in `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerView {
    /// Config name.
    pub name: String,
    /// `http` or `tcp`.
    pub protocol: String,
    /// Bound addresses (`127.0.0.1:8080`, `unix:/run/x.sock`).
    pub addresses: Vec<String>,
    /// Open client connections.
    pub connections: u64,
    /// The listener's `max_connections`.
    pub max_connections: u64,
}

/// An upstream in `/v1/upstreams`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamView {
    /// Config name.
    pub name: String,
    /// `round_robin` or `least_conn`.
    pub balance: String,
    /// Its servers, in config order (`index` is the position).
    pub servers: Vec<ServerView>,
    /// Panic mode: every `ready` server is down or ejected, so requests go to them
    /// anyway rather than being answered 503.
    pub panic: bool,
    /// Requests (and tunnels) sent in panic mode since start.
    pub panic_requests: u64,
}

/// A server in `/v1/upstreams`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerView {
    /// Position in the upstream's `servers`.
    pub index: usize,
    /// As configured (`127.0.0.1:3000`, `localhost:6080`, `unix:/run/app.sock`).
    pub address: String,
    /// For a host name: the address in use (last that connected); else `null`.
    pub resolved: Option<String>,
    /// Operator-set state.
    pub state: ServerState,
    /// Health from checks.
    pub health: Health,
    /// Health in words (`up`, `down (3 failed checks: …)`, `ejected for 8s (…)`).
    pub health_detail: String,
    /// May it get new requests now (ready, not down, not ejected)?
    pub available: bool,
    /// Exchanges in flight (requests and tunnels).
    pub active: u64,
    /// Idle pooled connections.
    pub idle_pooled: u64,
    /// Requests (and tunnels) sent to it since start.
    pub requests: u64,
    /// Failed exchanges since start (connect failures, 5xx, before-head failures).
    pub failures: u64,
    /// On-demand backend state, `null` when not on demand.
    pub on_demand: Option<OnDemandView>,
}

/// Operator-set server state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// In rotation.
    Ready,
    /// No new requests; in-flight and streaming exchanges finish.
    Drain,
    /// No requests; pooled connections closed.
    Maint,
}

/// Server health from checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Passing checks.
    Up,
    /// Failing checks.
    Down,
    /// No check result yet, or no checks configured.
    Unknown,
}

/// An on-demand backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnDemandView {
    /// `stopped | starting | ready | stopping | failed`.
    pub state: OnDemandState,
    /// The running process, if any.
    pub pid: Option<u32>,
    /// Seconds since the process started, if running.
    pub uptime_s: Option<f64>,
}

/// On-demand backend state (docs/design.md, "Vocabulary of states"): stopped →
/// starting → ready → stopping → stopped, or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDemandState {
    /// Not running; the next request starts it.
    Stopped,
    /// Started, not ready yet; requests wait.
    Starting,
    /// Running and accepting.
    Ready,
    /// Idle, being stopped; a request now waits and restarts it.
    Stopping,
    /// Could not start; requests get 503.
    Failed,
}

/// Body of `POST /v1/upstreams/{name}/servers/{index}/state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetState {
    /// The new state.
    pub state: ServerState,
}

/// A live connection in `/v1/connections`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionView {
    /// Unique while the process runs.
    pub id: u64,
    /// `client` (accepted by a listener) or `upstream` (opened to a server, pooled or
    /// in use).
    pub side: ConnSide,
    /// Listener name (client side), or upstream name (upstream side).
    pub listener: String,
    /// `http1 | h2 | sse | websocket | tcp`.
    pub protocol: ConnProtocol,
    /// The other end: the client (`unix` for a Unix-socket client), or the upstream
    /// server's socket address.
    pub peer: String,
    /// Our end of the socket.
    pub local: String,
    /// `reading | waiting_upstream | streaming | tunnel | idle | closing`.
    pub state: ConnState,
    /// Seconds since accepted.
    pub age_s: f64,
    /// Seconds since the last byte either way.
    pub idle_s: f64,
    /// Bytes read from the client.
    pub bytes_in: u64,
    /// Bytes written to the client.
    pub bytes_out: u64,
    /// Requests served on it (a tunnel counts 1).
    pub requests: u64,
    /// The config generation it runs under (client side; 0 on the upstream side): a
    /// connection kept by a reload moves to the new one at its next request.
    #[serde(default)]
    pub generation: u64,
    /// The upstream side of the current exchange, if any.
    pub upstream: Option<UpstreamSide>,
    /// An HTTP/2 stream: the id of the connection it is on (listed as a connection of
    /// protocol `h2` itself); `None` for a connection. Closing a stream resets it
    /// alone; closing its connection closes every stream on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
}

/// Which side of tidegate a connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnSide {
    /// Accepted from a client.
    Client,
    /// Opened to an upstream server.
    Upstream,
}

/// Connection protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnProtocol {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2: a client connection or one stream on it (with a `parent`), or an
    /// upstream connection of a `protocol = "h2"` upstream.
    H2,
    /// An HTTP/1.1 connection streaming `text/event-stream`.
    Sse,
    /// An upgraded (WebSocket) connection.
    Websocket,
    /// A TCP-mode tunnel.
    Tcp,
}

/// Connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    /// A request head is arriving.
    Reading,
    /// Waiting for the upstream (connect or response head).
    WaitingUpstream,
    /// Streaming a response.
    Streaming,
    /// Bytes both ways (TCP mode, upgraded).
    Tunnel,
    /// Keep-alive, between requests.
    Idle,
    /// Closing.
    Closing,
}

/// The upstream side of a connection's current exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamSide {
    /// Upstream name.
    pub name: String,
    /// Server address as configured.
    pub server: String,
    /// Our address on the upstream socket (`null` for Unix sockets).
    pub local: Option<String>,
    /// The upstream socket's peer address (`null` for Unix sockets).
    pub peer: Option<String>,
}

/// Answer of `DELETE /v1/connections/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closed {
    /// The id of the connection that was closed.
    pub closed: u64,
}

/// An admin client in `/v1/admin-clients`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminClientView {
    /// Unique while the process runs.
    pub id: u64,
    /// Client address (`unix` for a Unix-socket client).
    pub peer: String,
    /// Seconds since connected.
    pub age_s: f64,
    /// Seconds since its last byte.
    pub idle_s: f64,
    /// Requests it made.
    pub requests: u64,
    /// A request has begun arriving and is not whole yet: this client is not evicted
    /// for a newcomer (nor is one whose answer is being computed, an upgrade).
    pub in_request: bool,
}

/// `GET /v1/admin-clients`: who holds the admin slots, and who lost one to a newcomer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminClients {
    /// Every client holding a slot, longest-connected first.
    pub clients: Vec<AdminClientView>,
    /// Clients closed since start to give their slot to a newcomer (every slot was
    /// held; each was the one idle the longest with no request in progress).
    pub evictions: u64,
    /// The newest evictions (at most 16), newest first.
    pub recent_evictions: Vec<AdminEviction>,
}

/// A client closed to give its slot to a newcomer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminEviction {
    /// Its id while it held the slot.
    pub id: u64,
    /// Client address (`unix` for a Unix-socket client).
    pub peer: String,
    /// Seconds it had been connected.
    pub age_s: f64,
    /// Seconds it had been idle.
    pub idle_s: f64,
    /// Requests it had made.
    pub requests: u64,
    /// Seconds since it was evicted.
    pub ago_s: f64,
}

/// `detail` of the `503` a new admin client gets when every slot is held: who holds the
/// slots, and how soon one frees up (docs/design.md, "The admin API cannot be locked out").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminBusy {
    /// Clients holding slots.
    pub clients: u64,
    /// `[admin] max_connections`.
    pub max_connections: u64,
    /// Seconds since the longest-connected client connected.
    pub oldest_age_s: f64,
    /// Seconds since that client's last byte.
    pub oldest_idle_s: f64,
    /// `[admin] idle_timeout` in seconds: a client that sends nothing for this long is
    /// closed, which frees its slot.
    pub idle_timeout_s: f64,
}

/// Body of `POST /v1/reload` (optional: no body is a reload).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadRequest {
    /// Validate and plan only; change nothing (`ctl reload --dry-run`).
    #[serde(default)]
    pub dry_run: bool,
}

/// Answer of `POST /v1/reload`: the plan, applied or (dry run) not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadView {
    /// Whether the new config is now in effect (false for a dry run).
    pub applied: bool,
    /// The config generation it runs (or would run) as: 1 at startup, one more per
    /// reload.
    pub generation: u64,
    /// Every change, with the live connections it concerns.
    pub changes: Vec<ReloadChange>,
    /// One line: what was done.
    pub message: String,
}

/// One change of a reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadChange {
    /// What changes: `listener web`, `upstream app server 10.0.0.1:80`, `[server] workers`.
    pub subject: String,
    /// How: `added`, `removed`, `routes (1 -> 2), idle_timeout 1m -> 5s`.
    pub what: String,
    /// Live connections it concerns.
    pub connections: u64,
    /// What happens to them (or why it waits for an upgrade or restart).
    pub effect: String,
}

/// Answer of `POST /v1/upgrade`: the new process has reported ready and serves every
/// listening socket now; the old one (which answers) drains and exits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeView {
    /// The process that answered, now draining.
    pub old_pid: u32,
    /// The new process, serving.
    pub new_pid: u32,
    /// What happened, in words.
    pub message: String,
}

/// Every error answer: `{"error": "...", "detail": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One line.
    pub error: String,
    /// More, when there is more (the list of config errors, the slot holders, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}
