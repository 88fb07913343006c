//! One drain signal for every connection kind (docs/design.md, "House rules"; hyper-util's
//! graceful helper only knows hyper connections).
//!
//! Invariants: every connection task is spawned on [`Shutdown::tracker`], so the binary
//! can wait for all of them; `graceful` is cancelled first (stop accepting, finish
//! in-flight exchanges, close idle keep-alive connections — or, once
//! [`Shutdown::hand_off_idle`] was called, hand them out as [`Handoff`]s), `hard` later
//! (close everything now). The grace period itself lives in the binary.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::endpoint::Stream;
use crate::registry::SockAddr;

/// An idle client connection handed out instead of closed when the drain starts (a
/// binary upgrade passes it to the new process, which serves it from then on).
#[derive(Debug)]
pub struct Handoff {
    /// The listener that accepted it.
    pub listener: String,
    /// Our end of it, as the connection registry shows it.
    pub local: SockAddr,
    /// The socket; nothing of it has been read that was not answered.
    pub stream: Stream,
    /// Sent (or dropped) once the socket is on its way: the connection's task, which
    /// holds the drain open, ends only then.
    pub done: oneshot::Sender<()>,
}

/// The shutdown signals and the tracker of every connection task.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Cancelled when draining starts: listeners close, idle connections close,
    /// in-flight exchanges run on.
    pub graceful: CancellationToken,
    /// Cancelled when the grace period ends (or at once on SIGINT): every connection
    /// closes now.
    pub hard: CancellationToken,
    /// Every connection task (client connections, tunnels).
    pub tracker: TaskTracker,
    /// Set: idle HTTP client connections go here when the drain starts, instead of
    /// being closed ([`Shutdown::hand_off_idle`]).
    handoff: Arc<OnceLock<mpsc::UnboundedSender<Handoff>>>,
}

impl Shutdown {
    /// A fresh, un-cancelled set of signals.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts draining.
    pub fn drain(&self) {
        self.graceful.cancel();
        self.tracker.close();
    }

    /// From now on the drain hands idle HTTP client connections (parked between
    /// requests, or accepted and not yet sent anything) to `to` instead of closing
    /// them. Set before [`Shutdown::drain`]; a second call is ignored.
    pub fn hand_off_idle(&self, to: mpsc::UnboundedSender<Handoff>) {
        let _ = self.handoff.set(to);
    }

    /// Where idle connections go at the drain, if anywhere.
    pub(crate) fn handoff(&self) -> Option<&mpsc::UnboundedSender<Handoff>> {
        self.handoff.get()
    }

    /// Closes everything now (implies draining).
    pub fn abort(&self) {
        self.drain();
        self.hard.cancel();
    }
}
