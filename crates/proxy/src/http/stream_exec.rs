//! The executor of a client HTTP/2 connection's stream tasks ([`StreamExec`]): each
//! stream's task held to its own timer ([`StreamTimer`]) and its close, whether or not
//! hyper polls it. `super::h2` makes each stream's [`Supervision`]; `super::listener`
//! builds hyper's HTTP/2 settings with this executor.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::client_conn::{ClientConn, Phase, Verdict};

/// The stream's own timer: the exchange's idle limit, as the HTTP/1 driver holds a
/// connection to it (`ClientConn::verdict`), here for one stream.
pub(super) struct StreamTimer {
    idle: std::time::Duration,
    header: std::time::Duration,
    sleep: Pin<Box<Sleep>>,
}

impl StreamTimer {
    pub(super) fn new(idle: std::time::Duration, header: std::time::Duration) -> Self {
        StreamTimer {
            idle,
            header,
            sleep: Box::pin(tokio::time::sleep(header.min(idle))),
        }
    }

    /// Ready when the stream's exchange has been silent past its limit.
    fn poll_expired(&mut self, cx: &mut Context<'_>, stream: &ClientConn) -> Poll<()> {
        let rearm = stream.take_rearm();
        // Bounded: a deadline set is in the future, so the sleep is pending after a
        // turn or two (a millisecond's rounding).
        for _ in 0..4 {
            if rearm || self.sleep.is_elapsed() {
                match stream.verdict(self.idle, self.header) {
                    Verdict::WaitUntil(t) => self.sleep.as_mut().reset(t),
                    Verdict::Expired(Phase::Busy) => return Poll::Ready(()),
                    // The exchange is over (its body is being dropped): nothing to time.
                    Verdict::Expired(_) => {
                        self.sleep.as_mut().reset(Instant::now() + self.idle);
                    }
                }
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        Poll::Pending
    }
}

std::thread_local! {
    /// The [`Supervision`] of the stream whose service `StreamService::call` (`super::h2`) just
    /// made, for [`StreamExec`] to take: hyper calls the service and hands the stream's
    /// task to its executor at once, on the same thread, with no await between (hyper's
    /// `proto/h2/server.rs`), so no other stream's call comes between the two.
    pub(super) static PENDING: std::cell::RefCell<Option<Supervision>> = const { std::cell::RefCell::new(None) };
}

/// hyper's executor for the tasks of a client HTTP/2 connection: a stream's task runs
/// [`Supervised`], so its timer and its close act even when hyper does not poll its
/// body (a client that gives no flow-control window: hyper waits for capacity holding a
/// chunk, and never asks the body for more). Other tasks (none today) run as they are.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct StreamExec;

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        match PENDING.with(|p| p.borrow_mut().take()) {
            Some(watch) => {
                tokio::spawn(Supervised {
                    inner: Box::pin(fut),
                    watch,
                });
            }
            None => {
                tokio::spawn(fut);
            }
        }
    }
}

/// What holds one stream to its timer and its close.
pub(super) struct Supervision {
    pub(super) stream: Arc<ClientConn>,
    /// The stream's reset: `super::h2`'s service future and body fail once it is cancelled.
    pub(super) reset: CancellationToken,
    pub(super) closed: Pin<Box<WaitForCancellationFutureOwned>>,
    pub(super) timer: StreamTimer,
    /// The stream is being reset.
    pub(super) fired: bool,
}

/// A stream's task (hyper's), watched: once the stream is closed or its exchange's
/// timer expires, the stream's reset is cancelled and the task polled once more, so
/// that a service future or a body hyper polls fails (`RST_STREAM(INTERNAL_ERROR)`);
/// a task still pending then (hyper waits for flow control and polls nothing) is
/// dropped: its response body and the upstream exchange with it (the upstream
/// connection closes), and the h2 crate resets the stream it no longer has a handle
/// of (`RST_STREAM(CANCEL)`), freeing what it buffered for it.
struct Supervised<F> {
    inner: Pin<Box<F>>,
    watch: Supervision,
}

impl<F: Future<Output = ()>> Future for Supervised<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let w = &mut this.watch;
        if !w.fired {
            if w.closed.as_mut().poll(cx).is_ready() {
                tracing::info!(
                    id = w.stream.conn().id(),
                    "resetting HTTP/2 stream: closed by the operator or the shutdown"
                );
                w.fired = true;
            } else if w.timer.poll_expired(cx, &w.stream).is_ready() {
                tracing::debug!(id = w.stream.conn().id(), "resetting HTTP/2 stream: idle_timeout of the upstream exchange: no byte either way");
                w.reset.cancel();
                w.fired = true;
            }
        }
        if this.inner.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if w.fired {
            tracing::debug!(
                id = w.stream.conn().id(),
                "HTTP/2 stream waits for the client's flow control: dropped (RST_STREAM CANCEL)"
            );
            return Poll::Ready(());
        }
        Poll::Pending
    }
}
