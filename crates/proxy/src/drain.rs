//! One drain signal for every connection kind (docs/design.md, "House rules"; hyper-util's
//! graceful helper only knows hyper connections).
//!
//! Invariants: every connection task is spawned on [`Shutdown::tracker`], so the binary
//! can wait for all of them; `graceful` is cancelled first (stop accepting, finish
//! in-flight exchanges, close idle keep-alive connections — or, while a binary upgrade
//! exports connections, hand them over: see [`crate::handoff`]), `hard` later (close
//! everything now). The grace period itself lives in the binary.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    /// A binary upgrade: connections that can move hand themselves over (see
    /// [`crate::handoff`]).
    pub export: crate::handoff::Export,
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

    /// The signals of one listener: cancelled with these, and on their own when a
    /// reload removes the listener ([`Shutdown::retire`]). Same tracker.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            graceful: self.graceful.child_token(),
            hard: self.hard.child_token(),
            tracker: self.tracker.clone(),
            export: self.export.clone(),
        }
    }

    /// Drains what these signals cover (a listener a reload removed) the way the whole
    /// process drains: `graceful` now (idle connections close, exchanges finish), `hard`
    /// after `grace` (whatever is left closes). The tracker stays open: the process
    /// goes on.
    pub fn retire(&self, grace: std::time::Duration) {
        self.graceful.cancel();
        let hard = self.hard.clone();
        // Not on the tracker: a timer must not hold the process open, and the
        // process's own `hard` covers this one at exit.
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => hard.cancel(),
                _ = hard.cancelled() => {}
            }
        });
    }

    /// Closes everything now (implies draining).
    pub fn abort(&self) {
        self.drain();
        self.hard.cancel();
    }
}
