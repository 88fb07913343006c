//! The response body tidegate sends to clients: a fixed body, or an upstream's body
//! streamed frame by frame (no buffering: each frame is handed to hyper, which writes
//! and flushes it, so `text/event-stream` works with no setting).
//!
//! The upstream variant owns the pooled connection for as long as the body flows:
//! complete → the connection goes back to the pool; dropped early (the client went
//! away) or failed (the upstream closed or reset mid-body) → the connection is closed
//! and the error is passed on, so hyper aborts the client's response instead of
//! passing it off as complete.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::clock::Clock;
use crate::upstream::pool::Checkout;
use crate::upstream::ActiveGuard;

/// Error type of [`ProxyBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body toward the client.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    /// Marks the exchange finished on the client connection's clock when dropped.
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
}

/// Tells the connection's clock that the exchange ended, whichever way it ends.
#[derive(Debug)]
pub struct ExchangeDone(pub Arc<Clock>);

impl Drop for ExchangeDone {
    fn drop(&mut self) {
        self.0.response_finished();
    }
}

// === impl ProxyBody ===

impl ProxyBody {
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
        exchange: Option<ExchangeDone>,
    ) -> Self {
        ProxyBody {
            kind: Kind::Upstream(Box::new(Streaming {
                body,
                conn: Some(conn),
                active: Some(active),
            })),
            _exchange: exchange,
        }
    }
}

impl Streaming {
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
        match &mut this.kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream(s) => match Pin::new(&mut s.body).poll_frame(cx) {
                Poll::Ready(None) => {
                    s.finish();
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if s.body.is_end_stream() {
                        s.finish();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(active) = &s.active {
                        tracing::warn!(
                            upstream = %active.upstream().name,
                            server = %active.server().addr,
                            error = %e,
                            "upstream failed mid-body; aborting the client's response"
                        );
                    }
                    // Closing the connection: it is in an unknown state.
                    s.conn = None;
                    s.active = None;
                    Poll::Ready(Some(Err(Box::new(e))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
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
