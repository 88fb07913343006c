//! The response body tidegate sends to clients: a fixed body, or an upstream's body
//! streamed frame by frame (no buffering: each frame is handed to hyper, which writes
//! and flushes it, so `text/event-stream` works with no setting).
//!
//! The upstream variant owns the pooled connection for as long as the body flows:
//! complete → the connection goes back to the pool; dropped early (the client went
//! away) or failed (the upstream closed or reset mid-body) → the connection is closed
//! and the error is passed on, so hyper aborts the client's response instead of
//! passing it off as complete.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{sleep_until, Instant, Sleep};

use super::client_conn::ClientConn;
use super::listener::HttpListener;
use crate::access_log::Record;
use crate::endpoint::PeerAddr;
use crate::listener_stats::RouteMetrics;
use crate::upstream::pool::Checkout;
use crate::upstream::ActiveGuard;

/// Error type of [`ProxyBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body toward the client.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    /// Marks the exchange finished on the client connection's shared state ([`ClientConn`]) when dropped.
    _exchange: Option<ExchangeDone>,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream(Box<Streaming>),
}

#[derive(Debug)]
struct Streaming {
    body: Incoming,
    conn: Option<Checkout>,
    active: Option<ActiveGuard>,
    heartbeat: Option<Heartbeat>,
}

/// SSE heartbeats: `:\n\n` toward the client when a `text/event-stream` has been
/// silent for `period`, only at an event boundary (never inside an event). Heartbeats
/// are writes toward the client, so they would keep the connection's idle timer happy;
/// the upstream's own silence is therefore bounded here, by `upstream_idle`.
#[derive(Debug)]
pub struct Heartbeat {
    period: Duration,
    upstream_idle: Duration,
    /// Next heartbeat (reset by every frame sent toward the client).
    next: Pin<Box<Sleep>>,
    /// When the upstream has been silent too long.
    idle_deadline: Pin<Box<Sleep>>,
    /// The last bytes sent, to tell whether the stream is at an event boundary.
    tail: Tail,
}

/// The last few bytes of an event stream; enough to see a blank line (`\n\n`, `\r\r`,
/// `\r\n\r\n` and mixes), which ends an event.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tail {
    bytes: [u8; 4],
    len: u8,
}

impl Tail {
    pub(crate) fn push(&mut self, data: &[u8]) {
        for &b in &data[data.len().saturating_sub(4)..] {
            self.bytes.rotate_left(1);
            self.bytes[3] = b;
            self.len = (self.len + 1).min(4);
        }
    }

    /// At the start of the stream, or right after a blank line.
    pub(crate) fn at_boundary(&self) -> bool {
        let tail = &self.bytes[4 - self.len as usize..];
        if tail.is_empty() {
            return true;
        }
        // Drop the last line terminator; what precedes must end a line too.
        let rest = if tail.ends_with(b"\r\n") {
            &tail[..tail.len() - 2]
        } else if tail.ends_with(b"\n") || tail.ends_with(b"\r") {
            &tail[..tail.len() - 1]
        } else {
            return false;
        };
        rest.ends_with(b"\n") || rest.ends_with(b"\r")
    }
}

#[cfg(test)]
mod tests {
    use super::Tail;

    fn boundary(chunks: &[&[u8]]) -> bool {
        let mut t = Tail::default();
        for c in chunks {
            t.push(c);
        }
        t.at_boundary()
    }

    #[test]
    fn event_boundaries() {
        assert!(boundary(&[]));
        assert!(boundary(&[b"data: a\n\n"]));
        assert!(boundary(&[b"data: a\r\n\r\n"]));
        assert!(boundary(&[b"data: a\r\r"]));
        assert!(boundary(&[b"data: a\n", b"\n"]));
        assert!(boundary(&[b"data: a\r\n", b"\r\n"]));
        assert!(!boundary(&[b"data: a\n"]));
        assert!(!boundary(&[b"data: a\r\n"]));
        assert!(!boundary(&[b"data: par"]));
        assert!(!boundary(&[b"data: a\n\n", b"data: b"]));
        assert!(!boundary(&[b"data: a\n\nid: 1\n"]));
    }
}

impl Heartbeat {
    /// Heartbeats every `period` of silence toward the client; the upstream may be
    /// silent at most `upstream_idle`.
    pub fn new(period: Duration, upstream_idle: Duration) -> Self {
        let now = Instant::now();
        Heartbeat {
            period,
            upstream_idle,
            next: Box::pin(sleep_until(now + period)),
            idle_deadline: Box::pin(sleep_until(now + upstream_idle)),
            tail: Tail::default(),
        }
    }
}

/// The comment line that keeps intermediaries' idle timers from cutting a stream.
const HEARTBEAT: &[u8] = b":\n\n";

/// One exchange's record, from its request head to its end. Dropped with the response
/// body (or with the request, if no response was made): it tells the
/// client connection that the exchange ended, counts the request in its route's metrics and sends
/// the access-log line. Small on purpose: it travels inside the request's futures and
/// the response body, which are moved (copied) several times per request; what only the
/// access log needs is boxed, and only when the log is on.
#[derive(Debug)]
pub struct ExchangeDone {
    client: Arc<ClientConn>,
    ctx: Arc<HttpListener>,
    started: Instant,
    /// The route's metrics; `None`: the listener's own (no upstream).
    pub(crate) route: Option<Arc<RouteMetrics>>,
    /// The response head's status once one is on its way; 0 until then.
    pub(crate) status: u16,
    /// Response body bytes handed to hyper.
    body_bytes: u64,
    /// Only when the access log is on: the line's record, filled in as the exchange
    /// goes and sent as it is (one allocation per logged request).
    log: Option<Box<Record>>,
}

impl ExchangeDone {
    /// An exchange whose request head arrived `at` on the connection of `client`.
    pub(crate) fn start(
        client: Arc<ClientConn>,
        ctx: Arc<HttpListener>,
        at: Instant,
        peer: PeerAddr,
        method: &http::Method,
        uri: &http::Uri,
        version: http::Version,
    ) -> Self {
        // The path is copied (and capped), never a view of hyper's read buffer: a
        // queued record must not keep the whole request head alive.
        let log = ctx.access_log.is_on().then(|| {
            Box::new(Record {
                time: SystemTime::now(),
                listener: ctx.metrics.name.clone(),
                client: peer,
                method: method.clone(),
                protocol: version,
                path: crate::access_log::logged_path(uri),
                status: None,
                bytes_out: 0,
                upstream: None,
                upstream_peer: None,
                total: Duration::ZERO,
                connect: None,
                head: None,
            })
        });
        ExchangeDone {
            client,
            ctx,
            started: at,
            route: None,
            status: 0,
            body_bytes: 0,
            log,
        }
    }

    /// The access log's fields, when the log is on (record them only then).
    pub(crate) fn log_mut(&mut self) -> Option<&mut Record> {
        self.log.as_deref_mut()
    }

    /// Time since the request head arrived.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for ExchangeDone {
    fn drop(&mut self) {
        let now = Instant::now();
        let total = now.saturating_duration_since(self.started);
        let status = (self.status != 0).then_some(self.status);
        self.route
            .as_ref()
            .unwrap_or(&self.ctx.metrics.local)
            .record(status, total);
        if let Some(mut log) = self.log.take() {
            log.status = status;
            log.bytes_out = self.body_bytes;
            log.total = total;
            self.ctx.access_log.send(log);
        }
        self.client.response_finished_at(now);
    }
}

// === impl ProxyBody ===

impl ProxyBody {
    /// The exchange this body ends, if any.
    pub(crate) fn exchange_mut(&mut self) -> Option<&mut ExchangeDone> {
        self._exchange.as_mut()
    }

    /// A fixed body.
    pub fn full(data: impl Into<Bytes>, exchange: Option<ExchangeDone>) -> Self {
        let data = data.into();
        ProxyBody {
            kind: Kind::Full((!data.is_empty()).then_some(data)),
            _exchange: exchange,
        }
    }

    /// An upstream's body, streamed; `conn` returns to the pool when it completes.
    pub fn upstream(
        body: Incoming,
        conn: Checkout,
        active: ActiveGuard,
        heartbeat: Option<Heartbeat>,
        exchange: Option<ExchangeDone>,
    ) -> Self {
        ProxyBody {
            kind: Kind::Upstream(Box::new(Streaming {
                body,
                conn: Some(conn),
                active: Some(active),
                heartbeat,
            })),
            _exchange: exchange,
        }
    }
}

impl Streaming {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(None) => {
                self.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if self.body.is_end_stream() {
                    self.finish();
                }
                if let (Some(hb), Some(data)) = (&mut self.heartbeat, frame.data_ref()) {
                    hb.tail.push(data);
                    let now = Instant::now();
                    hb.next.as_mut().reset(now + hb.period);
                    hb.idle_deadline.as_mut().reset(now + hb.upstream_idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.log_failure(&e);
                // Closing the connection: it is in an unknown state.
                self.conn = None;
                self.active = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Pending => {
                let Some(hb) = &mut self.heartbeat else {
                    return Poll::Pending;
                };
                if hb.idle_deadline.as_mut().poll(cx).is_ready() {
                    if let Some(active) = &self.active {
                        tracing::info!(
                            upstream = %active.upstream().name,
                            server = %active.server().addr,
                            idle_ms = hb.upstream_idle.as_millis() as u64,
                            "event stream: upstream silent longer than idle_timeout; closing"
                        );
                    }
                    self.conn = None;
                    self.active = None;
                    return Poll::Ready(Some(Err("upstream idle_timeout".into())));
                }
                if hb.next.as_mut().poll(cx).is_ready() {
                    // Inside an event a heartbeat would corrupt it: wait another period
                    // (the upstream finishing the event also resets the timer).
                    hb.next.as_mut().reset(Instant::now() + hb.period);
                    if hb.tail.at_boundary() {
                        // Registers the timer's waker for the next period.
                        let _ = hb.next.as_mut().poll(cx);
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(HEARTBEAT)))));
                    }
                    let _ = hb.next.as_mut().poll(cx);
                }
                Poll::Pending
            }
        }
    }

    fn log_failure(&self, e: &hyper::Error) {
        if let Some(active) = &self.active {
            tracing::warn!(
                upstream = %active.upstream().name,
                server = %active.server().addr,
                error = %e,
                "upstream failed mid-body; aborting the client's response"
            );
        }
    }

    /// The body is complete: the connection may serve another request.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.release();
        }
        self.active = None;
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        // hyper stops polling a body whose length is known once it is all read, so a
        // drop after the last byte is still a complete exchange.
        if self.body.is_end_stream() {
            self.finish();
        } else if let Some(conn) = self.conn.take() {
            if let Some(active) = &self.active {
                tracing::debug!(
                    upstream = %active.upstream().name,
                    server = %active.server().addr,
                    "client went away mid-response; closing the upstream connection"
                );
            }
            drop(conn);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let res = match &mut this.kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream(s) => s.poll_frame(cx),
        };
        if let (Poll::Ready(Some(Ok(frame))), Some(ex)) = (&res, &mut this._exchange) {
            if let Some(data) = frame.data_ref() {
                ex.body_bytes += data.len() as u64;
                ex.client.body_sent(data.len());
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(d) => d.is_none(),
            Kind::Upstream(s) => s.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Upstream(s) => s.body.size_hint(),
        }
    }
}
