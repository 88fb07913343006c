//! Forwarding one routed request to its upstream: the request rewritten for the
//! upstream, attempts on servers and connections as [`UpstreamFailure::retry`] allows,
//! then the response streamed back (or an upgrade handed to the connection's tunnel).

use std::sync::Arc;

use http::header::{self, HeaderMap};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use super::body::{ExchangeDone, Heartbeat, ProxyBody};
use super::failure::Failure;
use super::headers;
use super::service::ConnService;
use super::upgrade::Upgrade;
use crate::failure::{Retry, UpstreamFailure};
use crate::registry::{ConnProtocol, ConnState};
use crate::upstream::body::{BodyEnd, Progress, RequestBody, Sending};
use crate::upstream::health::Outcome;
use crate::upstream::pool::Checkout;
use crate::upstream::{ActiveGuard, Upstream};

/// A request as the upstream gets it, and what decides how it may be retried.
struct Outgoing {
    req: Request<RequestBody>,
    /// HTTP/1.0 without Host: the upstream speaks HTTP/1.1, which requires one; it is
    /// the server's address, so it changes if the request moves to another server.
    host_from_server: bool,
    /// A bodiless idempotent request, which may be sent again once when a reused
    /// connection closes before any response byte (docs/design.md, "Failures and status
    /// codes", what may be sent twice).
    replayable: bool,
    /// How far the client's body has gone: `response_timeout` starts when it is all
    /// sent, and a failure is classified by it.
    sending: Arc<Sending>,
}

/// Where the next attempt goes.
struct Attempt {
    /// On a new connection, never a pooled one.
    fresh: bool,
    /// Servers given up on, for `retries` (allocates only on a retry).
    tried: Vec<usize>,
}

impl ConnService {
    /// Forwards `req` to `up` and answers with the upstream's response, or with the
    /// failure that ended the exchange.
    pub(super) async fn forward(
        &self,
        up: Arc<Upstream>,
        req: Request<Incoming>,
        mut done: Option<ExchangeDone>,
    ) -> Response<ProxyBody> {
        // HTTP/2 toward the upstream has no 101: an upgrade request is sent as a plain one.
        let upgrade = req.version() == Version::HTTP_11
            && headers::is_upgrade(req.headers())
            && up.protocol == tidegate_config::UpstreamProtocol::Http1;
        // What the upstream may switch to (`handle` kept only what the route allows).
        let offered = upgrade.then(|| req.headers().get(header::UPGRADE).cloned());
        let out = self.outgoing(req, upgrade);
        let out = match self.buffered(&up, out).await {
            Ok(out) => out,
            Err(failure) => return failure.into_response(done),
        };
        let active = match up.pick(&[]) {
            Ok(a) => a,
            Err(unavailable) => {
                let failure = UpstreamFailure::NoServer(unavailable);
                return Failure::upstream(&failure, &up.name, "").into_response(done);
            }
        };
        self.client.set_exchange_idle(up.timeouts.idle);
        let (resp, conn, active) = match self.exchange(&up, active, out, &mut done).await {
            Ok(got) => got,
            Err(failure) => return failure.into_response(done),
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return self.switch(&up, resp, conn, active, offered.flatten(), done);
        }
        self.stream(&up, resp, conn, active, done)
    }

    /// The request rewritten for the upstream: hop-by-hop fields removed,
    /// `X-Forwarded-*` set, origin-form, HTTP/1.1 (an HTTP/2 request's split `Cookie`
    /// fields joined into one).
    fn outgoing(&self, req: Request<Incoming>, upgrade: bool) -> Outgoing {
        let (mut parts, body) = req.into_parts();
        let te_trailers = headers::asks_trailers(&parts.headers);
        headers::remove_hop_by_hop(&mut parts.headers, upgrade);
        if te_trailers && !upgrade {
            headers::ask_trailers(&mut parts.headers);
        }
        if !body.is_end_stream() && body.size_hint().exact().is_none() {
            headers::frame_unknown_length_body(&mut parts.headers);
        }
        let host = parts.headers.get(header::HOST).cloned();
        headers::set_forwarded(
            &mut parts.headers,
            self.forwarded_for.as_ref(),
            host.as_ref(),
        );
        if self.ctx.tls.is_some() {
            // The client reached us over TLS (set_forwarded wrote "http").
            parts.headers.insert(
                headers::X_FORWARDED_PROTO,
                http::HeaderValue::from_static("https"),
            );
        }
        to_origin_form(&mut parts.uri);
        if parts.version == Version::HTTP_2 {
            headers::join_cookies(&mut parts.headers);
        }
        parts.version = Version::HTTP_11;
        let host_from_server = !parts.headers.contains_key(header::HOST);
        // Told when the body has been read to its end: only then may the connection be
        // parked after the response.
        let end = (!body.is_end_stream()).then(|| self.client.clone() as Arc<dyn BodyEnd>);
        let sending = Sending::new(!body.is_end_stream());
        let req = Request::from_parts(
            parts,
            RequestBody::Client {
                body,
                end,
                sending: sending.clone(),
            },
        );
        let replayable = is_idempotent(req.method()) && req.body().is_end_stream();
        Outgoing {
            req,
            host_from_server,
            replayable,
            sending,
        }
    }

    /// `request_buffering`: the body collected before any server is picked
    /// ([`super::buffer`]); unchanged when the upstream streams bodies.
    async fn buffered(&self, up: &Upstream, mut out: Outgoing) -> Result<Outgoing, Failure> {
        if up.request_buffering.is_none() {
            return Ok(out);
        }
        // A client that stops sending is bounded like during the exchange.
        self.client.set_exchange_idle(up.timeouts.idle);
        let req = std::mem::replace(&mut out.req, Request::new(RequestBody::Empty));
        out.req = Box::pin(super::buffer::collect(up, req)).await?;
        Ok(out)
    }

    /// Attempts until a response head arrives or a failure may not be retried.
    async fn exchange(
        &self,
        up: &Arc<Upstream>,
        mut active: ActiveGuard,
        mut out: Outgoing,
        done: &mut Option<ExchangeDone>,
    ) -> Result<(Response<Incoming>, Checkout, ActiveGuard), Failure> {
        let mut at = Attempt {
            fresh: false,
            tried: Vec::new(),
        };
        loop {
            let server = active.server();
            if out.host_from_server {
                out.req
                    .headers_mut()
                    .insert(header::HOST, server.host_header.clone());
            }
            let (failure, unsent, copy) = match self.attempt(up, &active, &mut out, &at, done).await
            {
                Ok((resp, conn)) => return Ok((resp, conn, active)),
                Err(failed) => failed,
            };
            match failure.retry() {
                Retry::IfUnsent if !at.fresh => {
                    if let Some(req) = unsent {
                        // hyper never wrote it: safe on a new connection, whatever the
                        // method.
                        tracing::debug!(upstream = %up.name, server = %server.addr,
                            "request not sent on a pooled connection; using a new one");
                        out.req = req;
                        at.fresh = true;
                        continue;
                    }
                }
                Retry::OnReusedConnection => {
                    if let Some(copy) = copy {
                        tracing::debug!(upstream = %up.name, server = %server.addr, error = %failure.message(&up.name, &server.addr.to_string()),
                            "reused connection closed before the response; sending the request again on a new one");
                        out.req = copy;
                        at.fresh = true;
                        continue;
                    }
                }
                _ => {}
            }
            // The request leaves this server: the failure counts against it.
            failure.record_on(server);
            if failure.retry() == Retry::AnotherServer && at.tried.len() < up.retries {
                at.tried.push(active.index());
                if let Ok(next) = up.pick(&at.tried) {
                    tracing::warn!(upstream = %up.name, error = %failure.message(&up.name, &server.addr.to_string()),
                        next = %next.server().addr, "connect failed; trying another server");
                    active = next;
                    at.fresh = false;
                    continue;
                }
            }
            let addr = server.addr.to_string();
            return Err(Failure::upstream(&failure, &up.name, &addr));
        }
    }

    /// One attempt on `active`'s server: a connection (pooled unless `at.fresh`), the
    /// request sent, its response head within `response_timeout` of the request's end
    /// (an upload takes as long as it takes; a stalled one is the exchange idle timer's,
    /// which closes the client connection). On failure, the request if hyper handed it
    /// back, and a copy of it if it may be replayed.
    async fn attempt(
        &self,
        up: &Arc<Upstream>,
        active: &ActiveGuard,
        out: &mut Outgoing,
        at: &Attempt,
        done: &mut Option<ExchangeDone>,
    ) -> Result<(Response<Incoming>, Checkout), Failed> {
        let server = active.server();
        let registry = &self.ctx.registry;
        // Timings for the access log only: no clock read otherwise.
        let connect_started = done
            .as_mut()
            .and_then(|d| d.log_mut().is_some().then(|| d.elapsed()));
        // HTTP/2: a retry takes a stream like any request (the connection that refused
        // or handed back the request takes no new one), so it stays within
        // `h2_max_connections`.
        let got = if at.fresh && !server.is_h2() {
            // Boxed: a retry's path, kept out of every request's future (see
            // `Server::checkout`).
            Box::pin(server.connect(&up.name, &up.timeouts, &self.ctx.resolver, up.tcp, registry))
                .await
        } else {
            server
                .checkout(&up.name, &up.timeouts, &self.ctx.resolver, up.tcp, registry)
                .await
        };
        let mut conn = got.map_err(|e| (UpstreamFailure::Connect(e), None, None))?;
        // The client connection shows where its exchange went; the record keeps it for
        // the access log.
        self.client.conn().link(active.server().id(), conn.entry());
        if let (Some(d), Some(started)) = (done.as_mut(), connect_started) {
            let now = d.elapsed();
            if let Some(log) = d.log_mut() {
                log.connect = Some(now.saturating_sub(started));
                log.upstream = Some(active.server().id().clone());
                log.upstream_peer = conn.entry().and_then(|e| e.peer().tcp());
            }
        }
        let copy = (out.replayable && conn.reused && !at.fresh).then(|| replay(&out.req));
        let mut req = std::mem::replace(&mut out.req, Request::new(RequestBody::Empty));
        if conn.is_h2() {
            headers::to_h2_request(&mut req, up.tls, &server.host_header);
        }
        let send = match conn.try_send(req) {
            Ok(send) => send,
            // A checkout always holds its connection until released; should it not,
            // the request was not sent.
            Err(unsent) => return Err((UpstreamFailure::NoConnection, Some(unsent), None)),
        };
        let limit = up.timeouts.response;
        let sending = &out.sending;
        // nginx's proxy_read_timeout after proxy_send: the head is awaited from the
        // request's end. A body the client fails ends the send with an error instead.
        let response_due = async {
            match sending.settled().await {
                Progress::Sent => tokio::time::sleep(limit).await,
                Progress::Sending | Progress::ClientFailed => std::future::pending().await,
            }
        };
        let sent = tokio::select! {
            biased;
            sent = send => Some(sent),
            () = response_due => None,
        };
        match sent {
            None => Err((UpstreamFailure::ResponseTimeout(limit), None, None)),
            Some(Ok(resp)) => {
                // Whether its status counts is the server's passive policy.
                server.record(Outcome::Response(resp.status().as_u16()));
                if let Some(d) = done.as_mut() {
                    let head_at = d.log_mut().is_some().then(|| d.elapsed());
                    if let (Some(log), Some(head_at)) = (d.log_mut(), head_at) {
                        log.head = Some(head_at);
                    }
                }
                if let Some(e) = conn.entry() {
                    e.set_state(ConnState::Streaming);
                }
                Ok((resp, conn))
            }
            Some(Err(mut e)) => {
                let unsent = e.take_message();
                let failure =
                    UpstreamFailure::of_send(e.into_error(), unsent.is_some(), sending.progress());
                Err((failure, unsent, copy))
            }
        }
    }

    /// A 101: the upstream's side is stashed for the connection's tunnel, which the
    /// driver starts once hyper has written the 101 and handed the client's socket back.
    /// `offered` is the `Upgrade` the upstream got (`None`: no upgrade was asked); a
    /// 101 to anything else is a 502, and dropping `conn` closes that connection.
    fn switch(
        &self,
        up: &Upstream,
        mut resp: Response<Incoming>,
        conn: Checkout,
        active: ActiveGuard,
        offered: Option<header::HeaderValue>,
        done: Option<ExchangeDone>,
    ) -> Response<ProxyBody> {
        let answered = resp.headers().get(header::UPGRADE);
        let failure = match &offered {
            None => Some(UpstreamFailure::UnaskedUpgrade),
            Some(o) if !headers::upgrade_offered(o, answered) => {
                let shown = |v: Option<&header::HeaderValue>| {
                    v.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .unwrap_or_default()
                };
                Some(UpstreamFailure::UnofferedUpgrade {
                    offered: shown(Some(o)),
                    answered: shown(answered),
                })
            }
            Some(_) => None,
        };
        if let Some(failure) = failure {
            let addr = active.server().addr.to_string();
            return Failure::upstream(&failure, &up.name, &addr).into_response(done);
        }
        // From here the request phases no longer apply: the 101's end must not make the
        // connection look idle.
        self.client.enter_tunnel();
        self.client.stash_upgrade(Upgrade {
            upstream: hyper::upgrade::on(&mut resp),
            conn,
            active,
            idle: up.timeouts.idle,
        });
        let (mut parts, _) = resp.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers, true);
        Response::from_parts(parts, ProxyBody::full(bytes::Bytes::new(), done))
    }

    /// The upstream's response, streamed to the client as it arrives (with heartbeats
    /// for a quiet event stream).
    fn stream(
        &self,
        up: &Upstream,
        resp: Response<Incoming>,
        conn: Checkout,
        active: ActiveGuard,
        done: Option<ExchangeDone>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        let mut conn = conn;
        match headers::check_response_framing(&mut parts.headers) {
            Ok(headers::ResponseFraming::Plain) => {}
            Ok(headers::ResponseFraming::ChunkedOverLength) => {
                tracing::debug!(upstream = %up.name, server = %active.server().addr,
                    "response has both Content-Length and Transfer-Encoding: chunked; \
                     forwarding it chunked without Content-Length, then closing the connection");
                conn.close_after();
            }
            Err(bad) => return untrusted_framing(up, &active, &bad, conn, done),
        }
        headers::remove_hop_by_hop(&mut parts.headers, false);
        let event_stream = is_event_stream(&parts.headers);
        if event_stream {
            self.client.conn().set_protocol(ConnProtocol::Sse);
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

/// A response whose framing cannot be trusted: 502, and its connection is closed
/// (dropped, not released: what follows on it could be anything).
fn untrusted_framing(
    up: &Upstream,
    active: &ActiveGuard,
    bad: &headers::UntrustedFraming,
    conn: Checkout,
    done: Option<ExchangeDone>,
) -> Response<ProxyBody> {
    drop(conn);
    let server = active.server();
    // Not counted against the server's health: its response head already was.
    let failure = UpstreamFailure::UntrustedFraming(bad.to_string());
    Failure::upstream(&failure, &up.name, &server.addr.to_string()).into_response(done)
}

/// A failed attempt: its classification, the request if hyper handed it back, and a
/// copy of it if it may be replayed.
type Failed = (
    UpstreamFailure,
    Option<Request<RequestBody>>,
    Option<Request<RequestBody>>,
);

/// A bodiless copy of `req` to send again (its method, target and fields).
fn replay(req: &Request<RequestBody>) -> Request<RequestBody> {
    let mut again = Request::new(RequestBody::Empty);
    *again.version_mut() = req.version();
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.headers_mut() = req.headers().clone();
    again
}

/// A `text/event-stream` response (the connection shows protocol `sse` meanwhile).
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// A body (of a `text/event-stream`) whose bytes tidegate can see as they are, with
/// room for heartbeats: no Content-Length (a fixed-length body can't take extra bytes)
/// and no Content-Encoding (a heartbeat inside a compressed stream would corrupt it).
fn is_open_length(headers: &HeaderMap) -> bool {
    !headers.contains_key(header::CONTENT_LENGTH) && !headers.contains_key(header::CONTENT_ENCODING)
}

/// RFC 9110 §9.2.2.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
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
