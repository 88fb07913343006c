//! The validated, typed configuration the data plane consumes.
//!
//! Everything here has already been checked: names resolve, durations and sizes are
//! parsed, addresses are typed. The data plane never parses a string from the config
//! again.

use std::path::PathBuf;
use std::time::Duration;

use crate::addr::{ListenAddr, UpstreamAddr};
pub use crate::kinds::{AccessLogTo, Balance, LogFormat, LogLevel, TlsVersion, UpstreamProtocol};
pub use crate::tls::Certificate;

/// A whole, valid configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was loaded from (`None` for the embedded quickstart).
    pub source: Option<PathBuf>,
    /// `[server]`.
    pub server: Server,
    /// `[admin]`.
    pub admin: Admin,
    /// `[listeners.NAME]`, in the order of their names (sorted).
    pub listeners: Vec<Listener>,
    /// `[upstreams.NAME]`, in the order of their names (sorted).
    pub upstreams: Vec<Upstream>,
    /// What is valid but deserves a look (a certificate close to its expiry), in file
    /// order; `check` prints them and exits 0, `run` and a reload log them at warn.
    pub warnings: Vec<crate::ConfigError>,
}

impl Config {
    /// The upstream called `name`, if any.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

/// `[server]`: process-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// SIGTERM: drain this long, then close what is left and exit.
    pub shutdown_grace: Duration,
    /// Worker threads; already resolved (`0` in the file = one per core is resolved by
    /// the binary, so this stays `0` here).
    pub workers: usize,
    /// `log = { level, format }`.
    pub log: Log,
    /// `access_log = { to, format }`: one line per request; off by default.
    pub access_log: AccessLog,
}

/// `[server] access_log`: where the one line per HTTP request goes.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    /// `to`: `"off"`, `"stdout"` or a file (relative paths already resolved against
    /// the config file's folder).
    pub to: AccessLogTo,
    /// `format`: `text` (`key=value` pairs) or `json` (one object per line).
    pub format: LogFormat,
}

/// `[admin]`: the admin API's listener (docs/design.md, "Admin API contract").
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// `listen`; `None` = the default socket, which depends on the environment
    /// (`$XDG_RUNTIME_DIR`, the user) and is therefore chosen by the binary. A Unix
    /// address without `mode=` gets [`crate::defaults::ADMIN_SOCKET_MODE`].
    pub listen: Option<ListenAddr>,
    /// Admin clients served at once; one more gets a 503.
    pub max_connections: usize,
    /// No byte from a client for this long closes it; a request (head and body) must
    /// arrive within it.
    pub idle_timeout: Duration,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    /// One of `error`, `warn`, `info`, `debug`, `trace`.
    pub level: LogLevel,
    /// `text` or `json`.
    pub format: LogFormat,
}

/// `[listeners.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// The table name.
    pub name: String,
    /// Every address to listen on (at least one).
    pub listen: Vec<ListenAddr>,
    /// `protocol`: HTTP (routes) or TCP (bytes both ways to `upstream`).
    pub protocol: Protocol,
    /// TCP listeners: the upstream every connection goes to (validated to exist).
    /// `None` for HTTP listeners, which route instead.
    pub upstream: Option<String>,
    /// From a request's first byte to its complete head.
    pub header_timeout: Duration,
    /// HTTP: keep-alive, no byte since the last response. TCP: no byte either way on
    /// the tunnel (default [`crate::defaults::TCP_IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
    /// Accepting pauses at this many open client connections (across all addresses).
    pub max_connections: usize,
    /// Request line + headers, in bytes; over it: 431.
    pub max_header_size: usize,
    /// Idle time before TCP keepalive probes; `None` = `"off"`. TCP sockets only.
    pub tcp_keepalive: Option<Duration>,
    /// HTTP: keep request fields whose names hold `_` (else dropped, logged at debug).
    pub underscores_in_headers: bool,
    /// Routes, in file order (HTTP only; empty for TCP). Matching picks the most
    /// specific (see `Route`).
    pub routes: Vec<Route>,
    /// HTTP: a client's FIN after a complete request is a half-close, answered; off, it
    /// ends the connection at once (default [`crate::defaults::HALF_CLOSE`]).
    pub half_close: bool,
    /// `tls = { … }`: the listener terminates TLS; `None` = plain.
    pub tls: Option<Tls>,
    /// HTTP: `h2 = { … }`, the limits of its HTTP/2 connections (h2c with prior
    /// knowledge on a plain listener, ALPN `h2` on a TLS one). Defaults on TCP
    /// listeners, where nothing uses it.
    pub h2: H2,
    /// TCP listeners: `tls_passthrough = { … }`: TLS is relayed untouched, each
    /// connection to the upstream its ClientHello's SNI name routes to (`upstream` for
    /// a name no route has, or none).
    pub tls_passthrough: Option<TlsPassthrough>,
}

/// A TCP listener's `tls_passthrough = { routes = [ { sni, upstream }, ... ], hello_timeout }`.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsPassthrough {
    /// `routes`, in file order; the most specific match wins (an exact name over a
    /// wildcard, a longer wildcard over a shorter one).
    pub routes: Vec<SniRoute>,
    /// `hello_timeout`: from accept to a complete ClientHello (default
    /// [`crate::defaults::TLS_HELLO_TIMEOUT`]).
    pub hello_timeout: Duration,
}

/// One `{ sni = "NAME", upstream = "NAME" }` of `tls_passthrough.routes`.
#[derive(Debug, Clone, PartialEq)]
pub struct SniRoute {
    /// `sni`: `a.example.com` or `*.example.com` (any subdomain), as route hosts.
    pub sni: HostMatch,
    /// The upstream (validated to exist).
    pub upstream: String,
}

/// A listener's `tls = { certificates = [...], min_version, handshake_timeout, alpn }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// `certificates`, loaded, in file order (at least one); the first is the default
    /// for a client without SNI or with a name none of them serves.
    pub certificates: Vec<Certificate>,
    /// `min_version`: the oldest TLS version accepted (default
    /// [`crate::defaults::TLS_MIN_VERSION`]).
    pub min_version: TlsVersion,
    /// `handshake_timeout`: from accept to a complete handshake (default
    /// [`crate::defaults::TLS_HANDSHAKE_TIMEOUT`]).
    pub handshake_timeout: Duration,
    /// `alpn`: the protocols offered, in order of preference (HTTP listeners: `h2`
    /// and/or `http/1.1`, default [`crate::defaults::HTTP_ALPN`]). Empty for TCP
    /// listeners, which offer none.
    pub alpn: Vec<String>,
}

/// A listener's `h2 = { … }` table: the limits set on each HTTP/2 connection
/// (docs/config.md, "HTTP/2").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2 {
    /// `max_concurrent_streams` (default [`crate::defaults::H2_MAX_CONCURRENT_STREAMS`]).
    pub max_concurrent_streams: u32,
    /// `max_streams_total`: streams open at once on all the listener's connections
    /// (default [`crate::defaults::H2_MAX_STREAMS_TOTAL`]).
    pub max_streams_total: u32,
    /// `initial_stream_window`, bytes (default [`crate::defaults::H2_INITIAL_STREAM_WINDOW`]).
    pub initial_stream_window: u32,
    /// `initial_connection_window`, bytes (default
    /// [`crate::defaults::H2_INITIAL_CONNECTION_WINDOW`]).
    pub initial_connection_window: u32,
    /// `max_send_buffer`, bytes per stream (default [`crate::defaults::H2_MAX_SEND_BUFFER`]).
    pub max_send_buffer: u32,
    /// `max_pending_accept_reset_streams` (default
    /// [`crate::defaults::H2_MAX_PENDING_ACCEPT_RESET_STREAMS`]).
    pub max_pending_accept_reset_streams: usize,
    /// `max_local_error_reset_streams` (default
    /// [`crate::defaults::H2_MAX_LOCAL_ERROR_RESET_STREAMS`]).
    pub max_local_error_reset_streams: usize,
    /// `keepalive_interval`; `None` = `"off"` (default
    /// [`crate::defaults::H2_KEEPALIVE_INTERVAL`]).
    pub keepalive_interval: Option<Duration>,
    /// `keepalive_timeout` (default [`crate::defaults::H2_KEEPALIVE_TIMEOUT`]).
    pub keepalive_timeout: Duration,
}

impl Default for H2 {
    fn default() -> Self {
        use crate::defaults as d;
        H2 {
            max_concurrent_streams: d::H2_MAX_CONCURRENT_STREAMS,
            max_streams_total: d::H2_MAX_STREAMS_TOTAL,
            initial_stream_window: d::H2_INITIAL_STREAM_WINDOW,
            initial_connection_window: d::H2_INITIAL_CONNECTION_WINDOW,
            max_send_buffer: d::H2_MAX_SEND_BUFFER as u32,
            max_pending_accept_reset_streams: d::H2_MAX_PENDING_ACCEPT_RESET_STREAMS,
            max_local_error_reset_streams: d::H2_MAX_LOCAL_ERROR_RESET_STREAMS,
            keepalive_interval: Some(d::H2_KEEPALIVE_INTERVAL),
            keepalive_timeout: d::H2_KEEPALIVE_TIMEOUT,
        }
    }
}

/// A listener's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2.
    Http,
    /// L4: bytes both ways, nothing parsed.
    Tcp,
}

/// `[[listeners.NAME.routes]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// `host`: `None` matches every host.
    pub host: Option<HostMatch>,
    /// `path` prefix (starts with `/`; default `/`), in normalized form (it is matched
    /// against the request's normalized path).
    pub path: String,
    /// Where matching requests go.
    pub action: RouteAction,
    /// `upgrades`: the `Upgrade` protocols a request may switch to, lowercase
    /// (`websocket` on GET only; never `h2c`). Default [`crate::defaults::ROUTE_UPGRADES`].
    pub upgrades: Vec<String>,
    /// `forward_normalized`: the upstream gets the normalized path instead of the
    /// client's.
    pub forward_normalized: bool,
    /// A request body of unknown length (chunked) is refused with 411 rather than
    /// forwarded chunked (default [`crate::defaults::REQUIRE_LENGTH`]).
    pub require_length: bool,
}

/// How a route matches the request's host (case-insensitive, port ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `ci.example.com`, stored lowercase.
    Exact(String),
    /// `*.example.com`: stored as the lowercase suffix `.example.com`; matches
    /// `a.example.com` and `a.b.example.com`, not `example.com`.
    Suffix(String),
}

impl HostMatch {
    /// How specifically this matches `host` (compared without case; higher is more
    /// specific: an exact name over any wildcard, then the longer), or `None`.
    pub fn rank(&self, host: &str) -> Option<(u8, usize)> {
        match self {
            HostMatch::Exact(h) => h.eq_ignore_ascii_case(host).then_some((2, h.len())),
            HostMatch::Suffix(s) => {
                // `s` is ".example.com"; the host must have at least one more label.
                let cut = host.len().checked_sub(s.len()).filter(|c| *c > 0)?;
                let tail = host.get(cut..)?;
                tail.eq_ignore_ascii_case(s).then_some((1, s.len()))
            }
        }
    }
}

/// What a route does with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteAction {
    /// Proxy to the upstream of this name (validated to exist).
    Upstream(String),
    /// Answer with a fixed response.
    Respond {
        /// HTTP status, 100..=999 validated to 200..=599.
        status: u16,
        /// Body, sent as `text/plain; charset=utf-8`.
        body: String,
    },
}

/// `[upstreams.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// The table name.
    pub name: String,
    /// Servers, in file order (at least one).
    pub servers: Vec<UpstreamAddr>,
    /// How a server is picked.
    pub balance: Balance,
    /// Idle pooled connections kept per server (0 = no pooling).
    pub keepalive: usize,
    /// An idle pooled connection is closed after this.
    pub keepalive_timeout: Duration,
    /// For all addresses of a server together.
    pub connect_timeout: Duration,
    /// Until the response head.
    pub response_timeout: Duration,
    /// No byte either way on a live exchange.
    pub idle_timeout: Duration,
    /// How many other servers a request may move to when its connect failed.
    pub retries: usize,
    /// `:\n\n` toward a client of a silent `text/event-stream` after this long; `None`
    /// = `"off"`.
    pub sse_heartbeat: Option<Duration>,
    /// Idle time before TCP keepalive probes on upstream TCP sockets; `None` = `"off"`.
    pub tcp_keepalive: Option<Duration>,
    /// `[upstreams.NAME.health]`: active checks; `None` = no active checks (passive
    /// ejection still applies).
    pub health: Option<Health>,
    /// `[upstreams.NAME.passive]`: when passive ejection takes a server out.
    pub passive: Passive,
    /// `[upstreams.NAME.on_demand]`: the backend is a command tidegate starts on the
    /// first request and stops when idle; `None` = always running, not tidegate's
    /// business. An on-demand upstream has exactly one server: the address the command
    /// listens on.
    pub on_demand: Option<OnDemand>,
    /// `[upstreams.NAME.passive] max_ejected_percent`: the share of servers passive
    /// ejection may hold out at once (0-100).
    pub max_ejected_percent: u8,
    /// `[upstreams.NAME.request_buffering]`: collect request bodies before contacting
    /// the upstream; `None` = off (bodies are streamed as they arrive).
    pub request_buffering: Option<RequestBuffering>,
    /// `tls = true | { ca, server_name, insecure_skip_verify }`: connections to the
    /// servers use TLS; `None` = plain.
    pub tls: Option<UpstreamTls>,
    /// `protocol = "http1" | "h2"`: what requests to the servers speak.
    pub protocol: UpstreamProtocol,
    /// `h2_max_streams_per_connection`: requests in flight on one HTTP/2 connection
    /// before another is opened (protocol `h2` only; at least 1).
    pub h2_max_streams: usize,
    /// `h2_max_connections`: HTTP/2 connections open at once to one server (protocol
    /// `h2` only; at least 1).
    pub h2_max_connections: usize,
}

/// An upstream's `tls`: how its servers' certificates are verified.
#[derive(Clone, PartialEq)]
pub struct UpstreamTls {
    /// `ca`: the CA file (resolved against the config file's folder); `None` = the
    /// system's CA certificates.
    pub ca: Option<std::path::PathBuf>,
    /// The trusted CA certificates: the `ca` file's, or the system's (read while the
    /// config is validated, so `check` tells when there are none). Empty with
    /// `insecure_skip_verify` and no `ca`.
    pub roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// `server_name`: the name the certificate must be valid for (and the SNI sent);
    /// `None` = each server's host (an IP address is matched against IP SANs;
    /// `localhost` for a Unix socket).
    pub server_name: Option<String>,
    /// `insecure_skip_verify = true`: any certificate is accepted (never verified).
    pub insecure_skip_verify: bool,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ca", &self.ca)
            .field("roots", &self.roots.len())
            .field("server_name", &self.server_name)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}

/// `[upstreams.NAME.request_buffering]` (nginx's `proxy_request_buffering on`, in
/// memory only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBuffering {
    /// The largest body collected, in bytes.
    pub max_body: usize,
    /// All bodies being collected for this upstream together, in bytes.
    pub total: usize,
    /// What happens to a body over either limit.
    pub over: OverLimit,
}

/// `request_buffering.over`: a body that does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    /// Streamed to the upstream as it arrives, as without buffering.
    Stream,
    /// Answered `413 Content Too Large`.
    Refuse,
}

/// `[upstreams.NAME.on_demand]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OnDemand {
    /// `command`: the program and its arguments (at least the program), run without a
    /// shell.
    pub command: Vec<String>,
    /// `env`: added to (or replacing in) tidegate's own environment, in file order.
    pub env: Vec<(String, String)>,
    /// `cwd`: the working directory, resolved against the config file's folder
    /// (default: that folder).
    pub cwd: PathBuf,
    /// The started command must accept connections on the server address within this.
    pub ready_timeout: Duration,
    /// Stopped after this long with no request or connection using it.
    pub idle_stop: Duration,
    /// SIGTERM to its process group, then SIGKILL after this.
    pub stop_timeout: Duration,
}

/// `[upstreams.NAME.health]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// `path` given: an HTTP `GET path` that must answer 2xx or 3xx; else a TCP (or
    /// Unix) connect.
    pub path: Option<String>,
    /// Time between checks of one server.
    pub interval: Duration,
    /// One check's deadline.
    pub timeout: Duration,
    /// Consecutive passes that mark a server up.
    pub rise: u32,
    /// Consecutive failures that mark a server down.
    pub fall: u32,
}

/// `[upstreams.NAME.passive]`: passive ejection (every key defaulted when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passive {
    /// Consecutive failures the server caused that eject it; `0` = never ejected.
    pub max_fails: u32,
    /// How long an ejected server gets no new requests.
    pub cooldown: Duration,
    /// Response statuses that count as failures (none by default), sorted, no repeats.
    pub statuses: Vec<u16>,
}

impl Default for Passive {
    /// [`crate::defaults::PASSIVE_FAILS`], [`crate::defaults::PASSIVE_COOLDOWN`],
    /// [`crate::defaults::PASSIVE_STATUSES`].
    fn default() -> Self {
        Passive {
            max_fails: crate::defaults::PASSIVE_FAILS,
            cooldown: crate::defaults::PASSIVE_COOLDOWN,
            statuses: crate::defaults::PASSIVE_STATUSES.to_vec(),
        }
    }
}

// === impl Server ===

impl Default for Server {
    /// Every `[server]` key at its default (what an absent `[server]` table means).
    fn default() -> Self {
        Server {
            shutdown_grace: crate::defaults::SHUTDOWN_GRACE,
            workers: crate::defaults::WORKERS,
            log: Log::default(),
            access_log: AccessLog::default(),
        }
    }
}

impl Default for AccessLog {
    /// Off; `format = "text"` once `to` is set.
    fn default() -> Self {
        AccessLog {
            to: crate::defaults::ACCESS_LOG_TO,
            format: crate::defaults::ACCESS_LOG_FORMAT,
        }
    }
}

impl Default for Admin {
    /// The default socket, [`crate::defaults::ADMIN_MAX_CONNECTIONS`] clients,
    /// [`crate::defaults::ADMIN_IDLE_TIMEOUT`] (what an absent `[admin]` table means).
    fn default() -> Self {
        Admin {
            listen: None,
            max_connections: crate::defaults::ADMIN_MAX_CONNECTIONS,
            idle_timeout: crate::defaults::ADMIN_IDLE_TIMEOUT,
        }
    }
}

impl Default for Log {
    /// `level = "info"`, `format = "text"`.
    fn default() -> Self {
        Log {
            level: crate::defaults::LOG_LEVEL,
            format: crate::defaults::LOG_FORMAT,
        }
    }
}

// === impl Protocol ===

impl Protocol {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}
