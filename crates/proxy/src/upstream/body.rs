//! The body of a request toward an upstream: the client's body, streamed, or nothing
//! (a bodiless request rebuilt for a retry).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Told once when a client's body has been read to its end (the client connection
/// is then at a message boundary again).
pub trait BodyEnd: Send + Sync {
    /// The last frame was read.
    fn body_ended(&self);
}

/// A request body sent upstream.
pub enum RequestBody {
    /// The client's body, forwarded frame by frame as it arrives; `end` is told when
    /// it has all been read.
    Client {
        /// The body.
        body: Incoming,
        /// Told at the end, once.
        end: Option<Arc<dyn BodyEnd>>,
    },
    /// No body.
    Empty,
    /// A body collected in full before the request was sent (`request_buffering`);
    /// `hold` keeps its share of the memory budget until the body is dropped.
    Collected {
        /// The body; `None` once sent.
        data: Option<Bytes>,
        /// Released when the body is dropped.
        hold: Option<Box<dyn Send + Sync>>,
    },
    /// What was collected of a body over the buffering limit, then the rest of it as
    /// it arrives.
    Prefixed {
        /// Sent first; `None` once sent.
        prefix: Option<Bytes>,
        /// The rest (the client's body).
        rest: Box<RequestBody>,
        /// Released when the body is dropped.
        hold: Option<Box<dyn Send + Sync>>,
    },
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestBody::Client { body, .. } => f.debug_tuple("Client").field(body).finish(),
            RequestBody::Empty => f.write_str("Empty"),
            RequestBody::Collected { data, .. } => f
                .debug_struct("Collected")
                .field("len", &data.as_ref().map(Bytes::len))
                .finish(),
            RequestBody::Prefixed { prefix, rest, .. } => f
                .debug_struct("Prefixed")
                .field("prefix", &prefix.as_ref().map(Bytes::len))
                .field("rest", rest)
                .finish(),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Client { body, end } => {
                let res = Pin::new(&mut *body).poll_frame(cx);
                if end.is_some() && (matches!(res, Poll::Ready(None)) || body.is_end_stream()) {
                    if let Some(end) = end.take() {
                        end.body_ended();
                    }
                }
                res
            }
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Collected { data, .. } => Poll::Ready(
                data.take()
                    .filter(|d| !d.is_empty())
                    .map(|d| Ok(Frame::data(d))),
            ),
            RequestBody::Prefixed { prefix, rest, .. } => match prefix.take() {
                Some(p) if !p.is_empty() => Poll::Ready(Some(Ok(Frame::data(p)))),
                _ => Pin::new(&mut **rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client { body, .. } => body.is_end_stream(),
            RequestBody::Empty => true,
            RequestBody::Collected { data, .. } => data.as_ref().is_none_or(Bytes::is_empty),
            RequestBody::Prefixed { prefix, rest, .. } => {
                prefix.as_ref().is_none_or(Bytes::is_empty) && rest.is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client { body, .. } => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Collected { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Prefixed { prefix, rest, .. } => {
                let first = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(first));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(first));
                }
                hint
            }
        }
    }
}
