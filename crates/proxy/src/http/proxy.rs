//! One request through the proxy: checks, routing, forwarding, streaming the response,
//! upgrades.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::timeout;

use super::body::{ExchangeDone, Heartbeat, ProxyBody};
use super::clock::{Clock, Phase, Verdict};
use super::error::{text_response, Failure, Side};
use super::headers::{self, FramingError};
use super::{HttpListener, Target};
use crate::endpoint::PeerAddr;
use crate::registry::{ConnProtocol, ConnState, Registry};
use crate::upstream::body::RequestBody;
use crate::upstream::health::Outcome;
use crate::upstream::pool::Checkout;
use crate::upstream::Upstream;

/// The hyper service of one client connection.
#[derive(Debug, Clone)]
pub struct ConnService {
    pub(crate) ctx: Arc<HttpListener>,
    pub(crate) peer: PeerAddr,
    pub(crate) clock: Arc<Clock>,
    /// The peer's address as an `X-Forwarded-For` element, formatted once.
    pub(crate) forwarded_for: Option<HeaderValue>,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let now = tokio::time::Instant::now();
        self.clock.request_started_at(now);
        let version = req.version();
        self.clock.exchange_begins(
            headers::request_closes(req.headers(), version),
            !req.body().is_end_stream(),
        );
        let done = ExchangeDone::start(
            self.clock.clone(),
            self.ctx.clone(),
            now,
            self.peer,
            req.method(),
            req.uri(),
        );
        let this = self.clone();
        Box::pin(async move {
            let mut resp = this.handle(req, Some(done)).await;
            // tidegate's own answers carry `Connection` only to close; hyper closes
            // an HTTP/1.0 keep-alive connection after a body of unknown length.
            if resp.headers().contains_key(header::CONNECTION)
                || (version != Version::HTTP_11
                    && !resp.headers().contains_key(header::CONTENT_LENGTH))
            {
                this.clock.response_closes();
            }
            let status = resp.status().as_u16();
            if let Some(done) = resp.body_mut().exchange_mut() {
                done.status = status;
            }
            this.clock.response_started();
            Ok(resp)
        })
    }
}

impl ConnService {
    async fn handle(
        &self,
        mut req: Request<Incoming>,
        done: Option<ExchangeDone>,
    ) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            return Failure::client(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not supported: tidegate is a reverse proxy",
            )
            .into_response(done);
        }
        // Absolute-form target: the authority is the Host (RFC 9112 §3.2.2), and the
        // upstream gets origin-form.
        if let Some(auth) = req.uri().authority() {
            let host = auth.as_str().rsplit('@').next().unwrap_or(auth.as_str());
            match HeaderValue::from_str(host) {
                Ok(v) => {
                    req.headers_mut().insert(header::HOST, v);
                }
                Err(_) => {
                    return Failure::client(
                        StatusCode::BAD_REQUEST,
                        "invalid authority in request target",
                    )
                    .into_response(done)
                }
            }
        }
        let http11 = req.version() == Version::HTTP_11;
        match headers::check_framing(req.headers(), http11) {
            Ok(()) => {}
            Err(FramingError::Host(what)) => {
                return Failure::client(StatusCode::BAD_REQUEST, what).into_response(done)
            }
            Err(FramingError::TransferEncoding(te)) => {
                return Failure::client(
                    StatusCode::NOT_IMPLEMENTED,
                    format!("Transfer-Encoding \"{te}\" is not supported; only \"chunked\" is"),
                )
                .into_response(done)
            }
        }
        let host = match req.headers().get(header::HOST).map(|h| h.to_str()) {
            None => "",
            Some(Ok(h)) => h,
            Some(Err(_)) => {
                return Failure::client(StatusCode::BAD_REQUEST, "Host header is not ASCII")
                    .into_response(done)
            }
        };
        let path = req.uri().path();
        let target = super::route::select(
            self.ctx.routes.iter().map(|(m, t)| (m, t)),
            super::route::routing_host(host),
            path,
        );
        match target {
            None => {
                let msg = format!("no route for {host}{path}");
                Failure::client(StatusCode::NOT_FOUND, msg).into_response(done)
            }
            Some(Target::Respond { status, body }) => text_response(*status, body.clone(), done),
            Some(Target::Upstream { upstream, metrics }) => {
                let up = upstream.clone();
                let mut done = done;
                if let Some(d) = done.as_mut() {
                    d.route = Some(metrics.clone());
                }
                self.forward(up, req, done).await
            }
        }
    }

    async fn forward(
        &self,
        up: Arc<Upstream>,
        req: Request<Incoming>,
        mut done: Option<ExchangeDone>,
    ) -> Response<ProxyBody> {
        let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
        let (mut parts, body) = req.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers, upgrade);
        let host = parts.headers.get(header::HOST).cloned();
        headers::set_forwarded(
            &mut parts.headers,
            self.forwarded_for.as_ref(),
            host.as_ref(),
        );
        to_origin_form(&mut parts.uri);
        parts.version = Version::HTTP_11;
        let mut active = match up.pick(&[]) {
            Ok(a) => a,
            Err(unavailable) => {
                return Failure {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: unavailable.to_string(),
                    side: Side::Upstream,
                }
                .into_response(done)
            }
        };
        // HTTP/1.0 without Host: the upstream speaks HTTP/1.1, which requires one; it is
        // the server's address, so it changes if the request moves to another server.
        let host_from_server = !parts.headers.contains_key(header::HOST);
        // Told when the body has been read to its end: only then may the connection be
        // parked after the response.
        let end = (!body.is_end_stream())
            .then(|| self.clock.clone() as Arc<dyn crate::upstream::body::BodyEnd>);
        let mut req = Request::from_parts(parts, RequestBody::Client { body, end });
        // DESIGN.md §5, retries: a bodiless idempotent request may be sent again once
        // when a reused connection closes before any response byte (the upstream's idle
        // close raced our request).
        let replayable = is_idempotent(req.method()) && req.body().is_end_stream();
        self.clock.set_exchange_idle(up.timeouts.idle);
        // Servers whose connect failed, for `retries` (allocates only on a retry).
        let mut tried: Vec<usize> = Vec::new();
        let mut fresh = false;
        let (mut resp, conn) = loop {
            let server = active.server();
            if host_from_server {
                req.headers_mut()
                    .insert(header::HOST, server.host_header.clone());
            }
            let registry = &self.ctx.registry;
            // Timings for the access log only: no clock read otherwise.
            let connect_started = done
                .as_mut()
                .and_then(|d| d.log_mut().is_some().then(|| d.elapsed()));
            let got = if fresh {
                // Boxed: a retry's path, kept out of every request's future (see
                // `Server::checkout`).
                Box::pin(server.connect(
                    &up.name,
                    &up.timeouts,
                    &self.ctx.resolver,
                    up.tcp,
                    registry,
                ))
                .await
            } else {
                server
                    .checkout(&up.name, &up.timeouts, &self.ctx.resolver, up.tcp, registry)
                    .await
            };
            let mut conn = match got {
                Ok(c) => c,
                Err(e) => {
                    server.record(Outcome::ConnectFailed);
                    // Nothing was sent: the request may go to another server.
                    if tried.len() < up.retries {
                        tried.push(active.index());
                        if let Ok(next) = up.pick(&tried) {
                            tracing::warn!(upstream = %up.name, error = %e,
                                next = %next.server().addr, "connect failed; trying another server");
                            active = next;
                            fresh = false;
                            continue;
                        }
                    }
                    return Failure::connect(&e).into_response(done);
                }
            };
            // The client connection shows where its exchange went; the record keeps it
            // for the access log.
            self.clock.conn().link(&up, active.index(), conn.entry());
            if let (Some(d), Some(at)) = (done.as_mut(), connect_started) {
                let now = d.elapsed();
                if let Some(log) = d.log_mut() {
                    log.connect = Some(now.saturating_sub(at));
                    log.upstream = Some((up.clone(), active.index()));
                    log.upstream_peer = conn.entry().and_then(|e| e.peer().tcp());
                }
            }
            let copy = (replayable && conn.reused && !fresh).then(|| {
                (
                    req.method().clone(),
                    req.uri().clone(),
                    req.headers().clone(),
                )
            });
            let Some(sender) = conn.sender() else {
                // A checkout always holds its connection until released.
                fresh = true;
                continue;
            };
            match timeout(up.timeouts.response, sender.try_send_request(req)).await {
                Err(_) => {
                    server.record(Outcome::ServerError);
                    let addr = server.addr.to_string();
                    return Failure::response_timeout(&up.name, &addr, up.timeouts.response)
                        .into_response(done);
                }
                Ok(Ok(resp)) => {
                    server.record(if resp.status().is_server_error() {
                        Outcome::ServerError
                    } else {
                        Outcome::Success
                    });
                    if let Some(d) = done.as_mut() {
                        let at = d.log_mut().is_some().then(|| d.elapsed());
                        if let (Some(log), Some(at)) = (d.log_mut(), at) {
                            log.head = Some(at);
                        }
                    }
                    if let Some(e) = conn.entry() {
                        e.set_state(ConnState::Streaming);
                    }
                    break (resp, conn);
                }
                Ok(Err(mut e)) => {
                    if let Some(unsent) = e.take_message() {
                        if !fresh {
                            // hyper never wrote it: safe to send on a new connection,
                            // whatever the method.
                            tracing::debug!(upstream = %up.name, server = %server.addr,
                                "request not sent on a pooled connection; using a new one");
                            req = unsent;
                            fresh = true;
                            continue;
                        }
                    } else if let Some((method, uri, headers)) = copy {
                        if closed_before_response(e.error()) {
                            tracing::debug!(upstream = %up.name, server = %server.addr, error = %e.error(),
                                "reused connection closed before the response; sending the request again on a new one");
                            let mut again = Request::new(RequestBody::Empty);
                            *again.method_mut() = method;
                            *again.uri_mut() = uri;
                            *again.headers_mut() = headers;
                            req = again;
                            fresh = true;
                            continue;
                        }
                    }
                    server.record(Outcome::ServerError);
                    let addr = server.addr.to_string();
                    return Failure::before_head(&up.name, &addr, e.error()).into_response(done);
                }
            }
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if !upgrade {
                let addr = active.server().addr.to_string();
                return Failure {
                    status: StatusCode::BAD_GATEWAY,
                    message: format!(
                        "upstream {} ({addr}): switched protocols without being asked",
                        up.name
                    ),
                    side: Side::Upstream,
                }
                .into_response(done);
            }
            // From here the request phases no longer apply: the 101's end must not
            // make the connection look idle. The driver joins the two sides once hyper
            // has written the 101 and handed the client's socket back.
            self.clock.enter_tunnel();
            self.clock.stash_upgrade(Upgrade {
                upstream: hyper::upgrade::on(&mut resp),
                conn,
                active,
                idle: up.timeouts.idle,
            });
            let (mut parts, _) = resp.into_parts();
            headers::remove_hop_by_hop(&mut parts.headers, true);
            return Response::from_parts(parts, ProxyBody::full(bytes::Bytes::new(), done));
        }

        let (mut parts, body) = resp.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers, false);
        let event_stream = is_event_stream(&parts.headers);
        if event_stream {
            self.clock.conn().set_protocol(ConnProtocol::Sse);
            if let Some(e) = conn.entry() {
                e.set_protocol(ConnProtocol::Sse);
            }
        }
        let heartbeat = up
            .sse_heartbeat
            .filter(|_| event_stream && is_open_length(&parts.headers))
            .map(|period| Heartbeat::new(period, up.timeouts.idle));
        Response::from_parts(
            parts,
            ProxyBody::upstream(body, conn, active, heartbeat, done),
        )
    }
}

/// A `text/event-stream` response (the connection shows protocol `sse` meanwhile).
fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// A body (of a `text/event-stream`) whose bytes tidegate can see as they are, with
/// room for heartbeats: no Content-Length (a fixed-length body can't take extra bytes)
/// and no Content-Encoding (a heartbeat inside a compressed stream would corrupt it).
fn is_open_length(headers: &http::HeaderMap) -> bool {
    !headers.contains_key(header::CONTENT_LENGTH) && !headers.contains_key(header::CONTENT_ENCODING)
}

/// RFC 9110 §9.2.2.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The upstream closed or reset the connection before any response byte.
fn closed_before_response(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() {
        return true;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        cur = err.source();
    }
    false
}

/// Absolute-form → origin-form, in place; an origin-form target (nearly every request)
/// is left untouched.
pub(crate) fn to_origin_form(uri: &mut Uri) {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return;
    }
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *uri = Uri::from(pq);
}

/// The upstream side of an upgraded exchange, kept by the client connection's
/// [`Clock`] until hyper has written the 101 and handed the client's socket back.
pub(crate) struct Upgrade {
    upstream: OnUpgrade,
    conn: Checkout,
    // Held for the tunnel's life: `least_conn` counts it, and an on-demand backend is
    // in use (never stopped under an open WebSocket).
    active: crate::upstream::ActiveGuard,
    idle: std::time::Duration,
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade")
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

/// After a 101: bytes both ways between `client` (the client's socket, with whatever
/// it sent after its request put back in front) and the upstream, until either side
/// closes, the exchange's idle timer expires, the drain's grace ends or the connection
/// is closed through the registry. `clock` is the client connection's (the `Watched`
/// inside `client` still counts its bytes); holding it keeps the connection listed.
pub(crate) async fn tunnel(
    mut client: super::ClientIo,
    upgrade: Box<Upgrade>,
    clock: Arc<Clock>,
    registry: Arc<Registry>,
) {
    let Upgrade {
        upstream,
        conn,
        active: _active,
        idle,
    } = *upgrade;
    let upstream = match upstream.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let close = clock.conn().close_token().clone();
    // The upstream connection now belongs to the tunnel; it never returns to the pool.
    // Its pool task ends with the upgrade, so the tunnel enters it anew, as the
    // upstream end of this tunnel.
    let _upstream_entry = conn.entry().map(|e| {
        registry.register_mirror(
            e.successor(ConnProtocol::Websocket, ConnState::Tunnel, close.clone()),
            clock.conn(),
        )
    });
    drop(conn);
    clock.set_exchange_idle(idle);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        res = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match res {
            Ok((up, down)) => tracing::debug!(to_upstream = up, to_client = down, "tunnel closed"),
            Err(e) => tracing::debug!(error = %crate::errno::describe_io_error(&e), "tunnel closed"),
        },
        _ = expired(&clock, idle) => tracing::debug!("tunnel closed: idle_timeout"),
        _ = close.cancelled() => tracing::debug!("tunnel closed: shutdown or closed by the operator"),
    }
}

/// Resolves when `clock`'s timers say the connection has been quiet too long.
pub(crate) async fn expired(clock: &Clock, idle: std::time::Duration) -> Phase {
    loop {
        match clock.verdict(idle, idle) {
            Verdict::Expired(phase) => return phase,
            Verdict::WaitUntil(t) => tokio::time::sleep_until(t).await,
        }
    }
}
