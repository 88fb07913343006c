//! An HTTP listener at run time: its limits, its routes and where requests go.

use crate::access_log::AccessLog;
use crate::endpoint::TcpOptions;
use crate::listener_stats::{ListenerMetrics, RouteMetrics};
use crate::registry::Registry;
use crate::upstream::connect::Resolve;
use crate::upstream::Upstream;
use bytes::Bytes;
use http::StatusCode;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioTimer;
use std::sync::Arc;
use std::time::Duration;
use tidegate_config::RouteAction;

/// An HTTP listener at run time: its limits and routes (shared by all its addresses).
pub struct HttpListener {
    /// The config name.
    pub name: String,
    /// From a request's first byte to its complete head.
    pub header_timeout: Duration,
    /// Keep-alive: no byte since the last response.
    pub idle_timeout: Duration,
    /// Request line + headers; over it hyper answers 431.
    pub max_header_size: usize,
    /// Options of accepted TCP sockets.
    pub client_tcp: TcpOptions,
    /// Keep request fields whose names hold `_` (`underscores_in_headers`).
    pub underscores_in_headers: bool,
    /// A client's FIN after a complete request is a half-close: its response is still
    /// sent (see `driver`, which still notices a client gone mid-response).
    pub half_close: bool,
    pub(crate) routes: Vec<(super::route::Matcher, Target)>,
    pub(crate) resolver: Arc<dyn Resolve>,
    /// Where its connections (and the upstream connections they open) are listed.
    pub(crate) registry: Arc<Registry>,
    /// Its byte totals and requests that reached no upstream.
    pub(crate) metrics: Arc<ListenerMetrics>,
    /// One line per request, when on.
    pub(crate) access_log: AccessLog,
    /// The config generation it was built from (1 at startup, +1 per reload), shown
    /// for each connection in the registry.
    pub generation: u64,
    /// hyper's settings for each connection (built once).
    pub(super) builder: http1::Builder,
    /// `h2.max_streams_total`: streams open at once on all its HTTP/2 connections.
    pub(super) h2_max_streams_total: usize,
    /// hyper's settings for each HTTP/2 connection (built once, from `h2`).
    pub(super) h2: http2::Builder<super::stream_exec::StreamExec>,
    /// `tls`: each connection's handshake, with the certificates of this config (a
    /// reload builds a new one; a connection keeps the session it made).
    pub(crate) tls: Option<Arc<crate::tls::Terminator>>,
}

impl std::fmt::Debug for HttpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpListener")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Where a route sends requests.
#[derive(Debug)]
pub(crate) enum Target {
    /// Proxied; `metrics` is this listener's for that upstream, resolved once here.
    Upstream {
        upstream: Arc<Upstream>,
        metrics: Arc<RouteMetrics>,
        forwarding: Forwarding,
        /// A request body of unknown length gets 411 instead of being forwarded.
        require_length: bool,
    },
    Respond {
        status: StatusCode,
        body: Bytes,
    },
}

/// What a proxying route changes in the request it forwards.
#[derive(Debug)]
pub(crate) struct Forwarding {
    /// `upgrades`: protocols a request may switch to (lowercase).
    pub(crate) upgrades: Box<[String]>,
    /// `forward_normalized`: the upstream gets the normalized path.
    pub(crate) normalized_path: bool,
}

impl HttpListener {
    /// Builds the run-time listener; `upstreams` must hold every upstream its routes
    /// name (the config validator guarantees it; a missing one is skipped with an error
    /// log rather than a panic). Its connections are entered in `registry`.
    pub fn new(
        cfg: &tidegate_config::Listener,
        upstreams: &[Arc<Upstream>],
        resolver: Arc<dyn Resolve>,
        registry: &Arc<Registry>,
        metrics: Arc<ListenerMetrics>,
        generation: u64,
    ) -> Self {
        let routes = cfg
            .routes
            .iter()
            .filter_map(|r| {
                let target = match &r.action {
                    RouteAction::Upstream(name) => {
                        let Some(up) = upstreams.iter().find(|u| &u.name == name) else {
                            tracing::error!(listener = %cfg.name, upstream = %name, "route names an unknown upstream; skipped");
                            return None;
                        };
                        Target::Upstream {
                            upstream: up.clone(),
                            metrics: metrics.route(&up.name),
                            forwarding: Forwarding {
                                upgrades: r.upgrades.clone().into_boxed_slice(),
                                normalized_path: r.forward_normalized,
                            },
                            require_length: r.require_length,
                        }
                    }
                    RouteAction::Respond { status, body } => Target::Respond {
                        status: StatusCode::from_u16(*status).unwrap_or(StatusCode::OK),
                        body: Bytes::from(body.clone()),
                    },
                };
                Some((super::route::Matcher::new(r.host.clone(), r.path.clone()), target))
            })
            .collect();
        let client_tcp = TcpOptions {
            nodelay: true,
            keepalive: cfg.tcp_keepalive,
        };
        let mut builder = http1::Builder::new();
        builder
            .keep_alive(true)
            // On: a client's FIN while its request is served is a half-close, and the
            // response still goes out (hyper stops reading until the response is done).
            // The driver still notices a client gone once its response has started, and
            // the connection's timers bound a half-closed connection as any other.
            // Off: a FIN ends the connection at once.
            .half_close(cfg.half_close)
            // tidegate's own timers time heads (see `client_conn`).
            .header_read_timeout(None)
            .max_header_size(cfg.max_header_size);
        let h2 = h2_builder(&cfg.h2, cfg.max_header_size);
        let tls = cfg
            .tls
            .as_ref()
            .map(|t| Arc::new(crate::tls::Terminator::new(&cfg.name, t, metrics.clone())));
        HttpListener {
            tls,
            name: cfg.name.clone(),
            header_timeout: cfg.header_timeout,
            idle_timeout: cfg.idle_timeout,
            max_header_size: cfg.max_header_size,
            client_tcp,
            underscores_in_headers: cfg.underscores_in_headers,
            half_close: cfg.half_close,
            routes,
            resolver,
            registry: registry.clone(),
            metrics,
            generation,
            access_log: AccessLog::off(),
            builder,
            h2_max_streams_total: cfg.h2.max_streams_total as usize,
            h2,
        }
    }

    /// The upstreams its routes send requests to.
    pub(crate) fn route_upstreams(&self) -> impl Iterator<Item = &str> + '_ {
        self.routes.iter().filter_map(|(_, t)| match t {
            Target::Upstream { upstream, .. } => Some(upstream.name.as_str()),
            Target::Respond { .. } => None,
        })
    }

    /// Its metrics (byte totals, requests by route), for [`crate::metrics::Metrics`].
    pub fn metrics(&self) -> &Arc<ListenerMetrics> {
        &self.metrics
    }
}

/// hyper's HTTP/2 settings for a listener: every limit set here, none left to hyper's
/// defaults (docs/config.md, "HTTP/2"). Header blocks are held to the listener's
/// `max_header_size`, as HTTP/1 heads are.
fn h2_builder(
    cfg: &tidegate_config::H2,
    max_header_size: usize,
) -> http2::Builder<super::stream_exec::StreamExec> {
    // Each stream's task runs under `StreamExec`, which holds it to its timer and its
    // close even while hyper waits for the client's flow control (`super::stream_exec`).
    let mut b = http2::Builder::new(super::stream_exec::StreamExec);
    b.timer(TokioTimer::new())
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .max_header_list_size(u32::try_from(max_header_size).unwrap_or(u32::MAX))
        .initial_stream_window_size(cfg.initial_stream_window)
        .initial_connection_window_size(cfg.initial_connection_window)
        // Fixed windows: a client gets what the config says, not more as it goes.
        .adaptive_window(false)
        .max_send_buf_size(cfg.max_send_buffer as usize)
        .max_pending_accept_reset_streams(cfg.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(cfg.max_local_error_reset_streams)
        .keep_alive_interval(cfg.keepalive_interval)
        .keep_alive_timeout(cfg.keepalive_timeout);
    b
}
