//! Moving live connections to another process (a binary upgrade), beyond the listening
//! sockets: an idle keep-alive HTTP connection and a tunnel (TCP mode, or HTTP after a
//! 101) can go on in the new process with every byte already read.
//!
//! How: the old process starts an export ([`Export::start`]); each connection task sees
//! the export token at a point where it holds nothing half-done (a parked HTTP
//! connection; a tunnel with both directions open, its unwritten bytes taken out) and
//! sends itself as a [`Handoff`] instead of going on. The binary carries the handoffs
//! to the new process (descriptors by SCM_RIGHTS), which adopts each one with
//! `Serving::adopt`. A connection busy with an exchange is not handed over: it finishes
//! in the old process, which drains it.
//!
//! Boundary: this module holds the types and the channel only; the connection tasks
//! (`http::driver`, `tcp`) decide when they can go, `Serving` adopts.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::endpoint::Stream;
use crate::registry::ConnProtocol;

/// Bytes a tunnel has read and not yet written: what it takes along when it moves to
/// another process, and what an adopted tunnel starts with.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Read from the client, for the upstream.
    pub to_upstream: Vec<u8>,
    /// Read from the upstream, for the client.
    pub to_client: Vec<u8>,
}

/// One connection on its way to another process.
#[derive(Debug)]
pub struct Handoff {
    /// The listener it was accepted by; the new process serves it under its listener
    /// of the same name.
    pub listener: String,
    /// What it is.
    pub kind: HandoffKind,
}

/// What a handed-over connection is.
#[derive(Debug)]
pub enum HandoffKind {
    /// An idle keep-alive HTTP connection, between requests.
    Idle {
        /// The client's socket.
        client: Stream,
        /// Bytes read from it and not yet served (usually none).
        read: Vec<u8>,
    },
    /// A tunnel: TCP mode, or an HTTP connection after its 101.
    Tunnel(Tunnel),
}

/// A tunnel on its way to another process.
#[derive(Debug)]
pub struct Tunnel {
    /// `tcp` or `websocket` (the protocol it shows in the registry).
    pub protocol: ConnProtocol,
    /// The client's socket.
    pub client: Stream,
    /// The upstream server's socket.
    pub upstream: Stream,
    /// Bytes read and not yet written, each way.
    pub pending: Pending,
    /// The upstream's name.
    pub upstream_name: String,
    /// The server's address as configured.
    pub server: String,
}

/// The export signal and channel, shared by every connection of the process (it rides
/// in [`crate::drain::Shutdown`]).
#[derive(Debug, Clone, Default)]
pub struct Export {
    token: CancellationToken,
    tx: Arc<Mutex<Option<mpsc::UnboundedSender<Box<Handoff>>>>>,
}

impl Export {
    /// Cancelled when connections should hand themselves over.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether an export is running (the token fired, and the channel is open at both
    /// ends: a receiver gone, the new process lost, ends it too).
    pub fn is_open(&self) -> bool {
        self.token.is_cancelled() && self.lock().as_ref().is_some_and(|tx| !tx.is_closed())
    }

    /// Hands `h` over; `Err(h)` when no export is running any more (the connection goes
    /// on, or closes, here). Boxed: a handoff is two sockets and their bytes, moved once.
    pub fn send(&self, h: Box<Handoff>) -> Result<(), Box<Handoff>> {
        match self.lock().as_ref() {
            Some(tx) => tx.send(h).map_err(|e| e.0),
            None => Err(h),
        }
    }

    /// Hands tunnel `t` of `listener` over; when no export runs any more, it comes back
    /// to go on where it was.
    pub fn send_tunnel(&self, listener: &str, t: Tunnel) -> Result<(), Box<Tunnel>> {
        let h = Handoff {
            listener: listener.to_owned(),
            kind: HandoffKind::Tunnel(t),
        };
        match self.send(Box::new(h)) {
            Ok(()) => Ok(()),
            Err(back) => match back.kind {
                HandoffKind::Tunnel(t) => Err(Box::new(t)),
                // What comes back is what was sent.
                HandoffKind::Idle { .. } => Ok(()),
            },
        }
    }

    /// Starts the export: from now on, connections that can move send themselves to
    /// the receiver. One export per process: a second call returns `None`.
    pub fn start(&self) -> Option<mpsc::UnboundedReceiver<Box<Handoff>>> {
        if self.token.is_cancelled() {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        *self.lock() = Some(tx);
        self.token.cancel();
        Some(rx)
    }

    /// Ends the export: connections that had not moved yet stay here.
    pub fn finish(&self) {
        self.lock().take();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<mpsc::UnboundedSender<Box<Handoff>>>> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_export_ends_when_its_receiver_is_gone() {
        let export = Export::default();
        assert!(!export.is_open());
        let rx = export.start().expect("first export");
        assert!(export.is_open());
        assert!(export.start().is_none(), "one export per process");
        // The new process is lost: connections stay here instead of trying again.
        drop(rx);
        assert!(!export.is_open());
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let h = Box::new(Handoff {
            listener: "web".into(),
            kind: HandoffKind::Idle {
                client: Stream::Unix(a),
                read: Vec::new(),
            },
        });
        assert!(export.send(h).is_err(), "the connection comes back");
    }
}
