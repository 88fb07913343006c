//! The body of a request toward an upstream: the client's body, streamed, or nothing
//! (a bodiless request rebuilt for a retry); and [`Sending`], which tells the
//! forwarding loop whether the client's body has been sent to its end, or failed on the
//! client's side.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;

/// How far the request body has gone toward the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Part of it is still to come from the client.
    Sending,
    /// Its last frame was handed to the upstream connection: the request is fully
    /// sent; `response_timeout` runs from here.
    Sent,
    /// Reading it from the client failed (the client went away mid-body, or its
    /// chunked framing was malformed): the client's failure, not the server's.
    ClientFailed,
}

/// A request body's [`Progress`], shared between the body (which moves it) and the
/// forwarding loop (which reads it, or waits for the end).
#[derive(Debug)]
pub struct Sending {
    state: AtomicU8,
    changed: Notify,
}

impl Sending {
    /// For a body still to be read (`open`), or one that has nothing to send.
    pub fn new(open: bool) -> Arc<Self> {
        let state = if open {
            Progress::Sending
        } else {
            Progress::Sent
        };
        Arc::new(Sending {
            state: AtomicU8::new(state as u8),
            changed: Notify::new(),
        })
    }

    /// Where the body is now.
    pub fn progress(&self) -> Progress {
        match self.state.load(Ordering::Acquire) {
            0 => Progress::Sending,
            1 => Progress::Sent,
            _ => Progress::ClientFailed,
        }
    }

    /// Waits until the body is no longer [`Progress::Sending`].
    pub async fn settled(&self) -> Progress {
        loop {
            // Registered before the check, so a change in between is not missed.
            let changed = self.changed.notified();
            match self.progress() {
                Progress::Sending => changed.await,
                done => return done,
            }
        }
    }

    pub(crate) fn set(&self, to: Progress) {
        // Only the first end counts: a body that ended does not fail afterwards.
        if self
            .state
            .compare_exchange(
                Progress::Sending as u8,
                to as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.changed.notify_waiters();
        }
    }
}

/// Told once when a client's body has been read to its end (the client connection
/// is then at a message boundary again).
pub trait BodyEnd: Send + Sync {
    /// The last frame was read.
    fn body_ended(&self);

    /// A data frame of `n` bytes was read (an HTTP/2 stream counts its activity so).
    fn body_data(&self, _n: usize) {}
}

/// A request body sent upstream.
pub enum RequestBody {
    /// The client's body, forwarded frame by frame as it arrives; `end` is told when
    /// it has all been read, `sending` when it ends or fails.
    Client {
        /// The body.
        body: Incoming,
        /// Told at the end, once.
        end: Option<Arc<dyn BodyEnd>>,
        /// Its progress, for the forwarding loop.
        sending: Arc<Sending>,
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
        /// The client body's progress: sent once the collected body is handed to hyper
        /// (`response_timeout` starts there).
        sending: Arc<Sending>,
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
            RequestBody::Client { body, end, sending } => {
                let res = Pin::new(&mut *body).poll_frame(cx);
                match &res {
                    Poll::Ready(Some(Err(_))) => sending.set(Progress::ClientFailed),
                    Poll::Ready(None) => sending.set(Progress::Sent),
                    // hyper may not poll again after the frame that ends a body of
                    // known length.
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => sending.set(Progress::Sent),
                    _ => {}
                }
                if let (Some(end), Poll::Ready(Some(Ok(frame)))) = (end.as_ref(), &res) {
                    if let Some(data) = frame.data_ref() {
                        end.body_data(data.len());
                    }
                }
                if end.is_some() && (matches!(res, Poll::Ready(None)) || body.is_end_stream()) {
                    if let Some(end) = end.take() {
                        end.body_ended();
                    }
                }
                res
            }
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Collected { data, sending, .. } => {
                // One frame holds the whole body: once hyper has it, the request is sent.
                sending.set(Progress::Sent);
                Poll::Ready(
                    data.take()
                        .filter(|d| !d.is_empty())
                        .map(|d| Ok(Frame::data(d))),
                )
            }
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
