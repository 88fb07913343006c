//! Every default, as a named constant. `docs/config.md` lists the same values; a test
//! keeps the two in step.

use std::time::Duration;

use crate::kinds::{AccessLogTo, Balance, LogFormat, LogLevel};

/// `[server] shutdown_grace`: SIGTERM drains this long, then closes what is left.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// `[server] workers`: 0 = one worker thread per core.
pub const WORKERS: usize = 0;

/// `[admin] max_connections`: admin clients served at once; one more gets a 503 that
/// names who holds the slots (a leaking client must not lock operators out, so the cap
/// is small and every slot is bounded by [`ADMIN_IDLE_TIMEOUT`]; docs/design.md).
pub const ADMIN_MAX_CONNECTIONS: usize = 16;
/// `[admin] idle_timeout`: an admin client that sends no byte for this long is closed,
/// and a request (head and body) must arrive within it.
pub const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// `[admin] listen`: the mode of the admin socket file when `listen` names a Unix socket
/// without `mode=` (and of the default socket): only tidegate's own user may connect.
pub const ADMIN_SOCKET_MODE: u32 = 0o600;

/// Listener `header_timeout`: from a request's first byte to its complete head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP listener `idle_timeout`: keep-alive, no byte since the last response.
pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Listener `max_connections`: accepting pauses at this many open client connections.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Listener `max_header_size`: request line + headers; over it, 431.
pub const MAX_HEADER_SIZE: usize = 64 * 1024;
/// The smallest `max_header_size` accepted: hyper's read buffer cannot be smaller.
pub const MIN_HEADER_SIZE: usize = 8 * 1024;
/// HTTP listener `underscores_in_headers`: request fields whose names hold `_` are
/// dropped (nginx's default: a CGI-style backend folds `X_Forwarded_Host` into the
/// variable of `X-Forwarded-Host`).
pub const UNDERSCORES_IN_HEADERS: bool = false;
/// Listener `tls.min_version`: TLS 1.2 and 1.3 are accepted.
pub const TLS_MIN_VERSION: crate::kinds::TlsVersion = crate::kinds::TlsVersion::V1_2;
/// Listener `tls.handshake_timeout`: a client that has not finished its TLS handshake
/// this long after the accept is closed (it holds a `max_connections` slot meanwhile).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP listener `tls_passthrough.hello_timeout`: a client whose ClientHello has not
/// arrived this long after the accept is closed.
pub const TLS_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// `tcp_keepalive`: idle time before the first probe (TCP sockets only).
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Interval between TCP keepalive probes.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered TCP keepalive probes before the peer is declared dead.
pub const TCP_KEEPALIVE_PROBES: u32 = 6;

/// Route `path` when omitted.
pub const ROUTE_PATH: &str = "/";
/// Route `upgrades` when omitted: the protocols a request may switch to (`websocket`
/// on GET only).
pub const ROUTE_UPGRADES: &[&str] = &["websocket"];
/// Route `forward_normalized` when omitted: the upstream gets the path as the client
/// sent it; routing alone uses the normalized copy.
pub const FORWARD_NORMALIZED: bool = false;
/// Route `require_length`: a request body of unknown length (chunked) is forwarded
/// chunked, whatever the method, rather than refused with 411.
pub const REQUIRE_LENGTH: bool = false;
/// HTTP listener `half_close`: a client that shuts down its sending side after a
/// complete request still gets its response (as HAProxy does).
pub const HALF_CLOSE: bool = true;
/// Listener `tls.alpn` on HTTP listeners: HTTP/2 first, then HTTP/1.1.
pub const HTTP_ALPN: &[&str] = &["h2", "http/1.1"];

/// `h2.max_concurrent_streams`: streams a client may have open at once on one HTTP/2
/// connection (more are refused with `REFUSED_STREAM`).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// `h2.max_streams_total`: streams open at once on all the HTTP/2 connections of a
/// listener together (more are refused with `REFUSED_STREAM`): each may hold an
/// upstream connection and memory (docs/config.md: about `max_send_buffer` + 2 MiB).
pub const H2_MAX_STREAMS_TOTAL: u32 = 1024;
/// `h2.initial_stream_window`: what a client may send on one stream before tidegate
/// has passed it on (HTTP/2 flow control).
pub const H2_INITIAL_STREAM_WINDOW: u32 = 256 * 1024;
/// `h2.initial_connection_window`: the same for all the streams of a connection
/// together: the most request body a connection can have waiting in tidegate.
pub const H2_INITIAL_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// `h2.max_send_buffer`: response bytes buffered per stream toward a slow client.
pub const H2_MAX_SEND_BUFFER: usize = 64 * 1024;
/// `h2.max_pending_accept_reset_streams`: streams a client opened and reset before
/// tidegate got to them; more and the connection is closed with `GOAWAY` (the HTTP/2
/// rapid reset attack, CVE-2023-44487).
pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// `h2.max_local_error_reset_streams`: streams tidegate had to reset because the
/// client broke the protocol on them; more and the connection is closed with `GOAWAY`
/// (the "MadeYouReset" attack, CVE-2025-8671).
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
/// `h2.keepalive_interval`: a PING after this long without a frame from the client
/// while streams are open.
pub const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// `h2.keepalive_timeout`: a PING unanswered this long closes the connection.
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest HTTP/2 flow-control window (RFC 9113 §6.9.1).
pub const H2_MAX_WINDOW: u32 = (1 << 31) - 1;
/// The smallest connection window: RFC 9113 starts every connection at 65,535 bytes,
/// and a window cannot be announced smaller.
pub const H2_MIN_CONNECTION_WINDOW: u32 = 65_535;

/// Upstream `keepalive`: idle pooled connections kept per server.
pub const KEEPALIVE: usize = 32;
/// Upstream `keepalive_timeout`: below common backend keep-alive timeouts (Node's 5 s),
/// so tidegate closes an idle connection before the backend does and never races it.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(4);
/// Upstream `connect_timeout`: for all of a server's addresses together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Happy Eyeballs: start the next address after this long (RFC 8305 §5).
pub const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);
/// Upstream `response_timeout`: until the response head.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// TCP listener `idle_timeout`: no byte either way on a tunnel.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Upstream `retries`: how many other servers a request whose connect failed may move to.
pub const RETRIES: usize = 1;
/// Upstream `protocol`.
pub const UPSTREAM_PROTOCOL: crate::kinds::UpstreamProtocol = crate::kinds::UpstreamProtocol::Http1;
/// Upstream `h2_max_streams_per_connection`: requests in flight at once on one HTTP/2
/// connection before another one is opened (hyper does not expose the server's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`; requests over it wait on the connection).
pub const H2_MAX_STREAMS_PER_CONNECTION: usize = 100;
/// Upstream `h2_max_connections`: HTTP/2 connections open at once to one server;
/// requests past them wait (at most `connect_timeout`), then get a local 503.
pub const H2_MAX_CONNECTIONS: usize = 16;
/// Upstream `sse_heartbeat`: `:\n\n` into a `text/event-stream` silent toward the
/// client this long (below common 30-60 s idle timeouts of intermediaries).
pub const SSE_HEARTBEAT: Duration = Duration::from_secs(15);
/// `[upstreams.NAME.health] interval`: time between active checks of a server.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// `[upstreams.NAME.health] timeout`: one check's deadline (connect + response head).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// `[upstreams.NAME.health] rise`: consecutive passed checks that mark a server up.
pub const HEALTH_RISE: u32 = 2;
/// `[upstreams.NAME.health] fall`: consecutive failed checks that mark a server down.
pub const HEALTH_FALL: u32 = 3;
/// `[upstreams.NAME.passive] max_fails`: consecutive failures the server caused
/// (connect failures, a close or timeout after the whole request was sent) that take
/// it out of rotation for [`PASSIVE_COOLDOWN`]. Above nginx's `1` (which pairs it with
/// a 10 s window): one reset during a backend's restart should not eject it.
pub const PASSIVE_FAILS: u32 = 3;
/// `[upstreams.NAME.passive] cooldown`: how long an ejected server stays out before it
/// is tried again (nginx's `fail_timeout`).
pub const PASSIVE_COOLDOWN: Duration = Duration::from_secs(10);
/// `[upstreams.NAME.passive] statuses`: response statuses that count as failures. None,
/// like nginx without `proxy_next_upstream http_5xx`: an application's 500 is a
/// response, and any client can ask for a URL that answers one.
pub const PASSIVE_STATUSES: &[u16] = &[];

/// `[upstreams.NAME.passive] max_ejected_percent`: at most this share of an upstream's
/// servers (rounded down, at least one) is held out by passive ejection at once (Envoy's
/// `max_ejection_percent`); with half of a pair out, the other half must take the load.
pub const MAX_EJECTED_PERCENT: u8 = 50;

/// `[upstreams.NAME.request_buffering] max_body`: the largest request body collected
/// in memory before the upstream is contacted.
pub const REQUEST_BUFFERING_MAX_BODY: usize = 1024 * 1024;
/// `[upstreams.NAME.request_buffering] total`: memory all bodies being collected for
/// one upstream may hold together.
pub const REQUEST_BUFFERING_TOTAL: usize = 64 * 1024 * 1024;

/// Upstream `idle_timeout`: no byte either way on a live exchange.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// `[upstreams.NAME.on_demand] ready_timeout`: how long a started command has to accept
/// connections on the server address before the start counts as failed.
pub const ON_DEMAND_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// `[upstreams.NAME.on_demand] idle_stop`: an on-demand backend no request or connection
/// has used for this long is stopped.
pub const ON_DEMAND_IDLE_STOP: Duration = Duration::from_secs(300);
/// `[upstreams.NAME.on_demand] stop_timeout`: SIGTERM to the backend's process group,
/// then SIGKILL after this long.
pub const ON_DEMAND_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `[server] log.level` when omitted.
pub const LOG_LEVEL: LogLevel = LogLevel::Info;
/// `[server] log.format` when omitted.
pub const LOG_FORMAT: LogFormat = LogFormat::Text;
/// `[server] access_log.to` when omitted: no access log (a busy proxy's access log is
/// a volume an operator should choose to write).
pub const ACCESS_LOG_TO: AccessLogTo = AccessLogTo::Off;
/// `[server] access_log.format` when omitted.
pub const ACCESS_LOG_FORMAT: LogFormat = LogFormat::Text;
/// Upstream `balance` when omitted.
pub const BALANCE: Balance = Balance::RoundRobin;

/// The longest duration any key accepts. Not a default but a limit: it keeps deadlines
/// far from `Instant` overflow, and no proxy timer needs more.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The longest `tcp_keepalive` accepted: Linux refuses a `TCP_KEEPIDLE` over 32767 s.
pub const MAX_TCP_KEEPALIVE: Duration = Duration::from_secs(32_767);
