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
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestBody::Client { body, .. } => f.debug_tuple("Client").field(body).finish(),
            RequestBody::Empty => f.write_str("Empty"),
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client { body, .. } => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client { body, .. } => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
