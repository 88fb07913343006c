//! The accept loop, one for every listening socket of every kind (HTTP and TCP mode):
//! `max_connections`, back-off on accept errors, and the drain. What a connection
//! becomes depends on the [`ListenerKind`]; everything around it is the same for all
//! (docs/design.md, "House rules": one accept loop, one drain).
//!
//! Invariants: a connection task holds one permit of its listener's semaphore for its
//! whole life, so at `max_connections` accepting pauses until one ends; the listening
//! socket is dropped (closed, and its Unix socket file removed) as soon as draining
//! starts or a reload removes its address, so new connections are refused at once.
//! A reload never touches a socket whose address stays: its accept loop goes on and
//! only its [`Binding`] changes (a watch channel), so no connection is refused or
//! reset; what an accepted connection runs under is read at accept time.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::FutureExt as _;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::drain::Shutdown;
use crate::endpoint::{PeerAddr, Stream, TcpOptions};
use crate::errno::describe_io_error;
use crate::http::{serve_connection, HttpListener};
use crate::listen::{Listener, LocalAddr};
use crate::registry::SockAddr;
use crate::tcp::{serve_tunnel, TunnelListener};

/// First pause after an accept error; doubles up to [`MAX_ACCEPT_BACKOFF`].
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause after repeated accept errors (EMFILE must not spin a core).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// A listener by its `protocol`: what it does with an accepted connection. Each holds
/// the listener's current settings in a slot a reload stores into, so connections that
/// stay see new routes and timeouts from their next request on.
#[derive(Debug, Clone)]
pub enum ListenerKind {
    /// HTTP/1.1 reverse proxy.
    Http(Arc<ArcSwap<HttpListener>>),
    /// TCP mode: bytes relayed both ways to one upstream.
    Tcp(Arc<ArcSwap<TunnelListener>>),
}

/// What a listening socket hands its connections to: the listener it serves under the
/// current config, with that listener's `max_connections` and drain signals.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The listener.
    pub kind: ListenerKind,
    /// Its `max_connections` (shared by all its sockets).
    pub limit: Arc<Semaphore>,
    /// Its drain signals: the process's, and its own when a reload removes it.
    pub shutdown: Shutdown,
}

// === impl ListenerKind ===

impl ListenerKind {
    /// A new listener's slot.
    pub fn http(l: Arc<HttpListener>) -> Self {
        ListenerKind::Http(Arc::new(ArcSwap::new(l)))
    }

    /// A new TCP-mode listener's slot.
    pub fn tcp(l: Arc<TunnelListener>) -> Self {
        ListenerKind::Tcp(Arc::new(ArcSwap::new(l)))
    }

    /// The listener's name.
    pub fn name(&self) -> String {
        match self {
            ListenerKind::Http(l) => l.load().name.clone(),
            ListenerKind::Tcp(l) => l.load().name.clone(),
        }
    }

    /// Options set on each accepted TCP connection.
    pub fn client_tcp(&self) -> TcpOptions {
        match self {
            ListenerKind::Http(l) => l.load().client_tcp,
            ListenerKind::Tcp(l) => l.load().client_tcp,
        }
    }

    /// Spawns the task that serves one accepted connection until it ends, holding
    /// `permit` meanwhile. `listening` is the listening socket's address (our end of an
    /// accepted Unix connection).
    pub(crate) fn spawn(
        &self,
        stream: Stream,
        peer: PeerAddr,
        listening: &SockAddr,
        shutdown: &Shutdown,
        permit: OwnedSemaphorePermit,
    ) {
        // The accepted socket's own address: on a wildcard listener (0.0.0.0) this
        // is the interface the client reached.
        let local = match &stream {
            Stream::Tcp(s) => s
                .local_addr()
                .map_or_else(|_| listening.clone(), SockAddr::Tcp),
            Stream::Unix(_) => listening.clone(),
        };
        // Each protocol's future is spawned as it is (not inside one future that could
        // be either, which would be as large as both): an idle connection costs little
        // more than its task.
        let sd = shutdown.clone();
        let release = move |()| drop(permit);
        match self {
            ListenerKind::Http(l) => {
                shutdown
                    .tracker
                    .spawn(serve_connection(l.clone(), stream, peer, local, sd).map(release));
            }
            ListenerKind::Tcp(l) => {
                shutdown
                    .tracker
                    .spawn(serve_tunnel(l.load_full(), stream, peer, local, sd).map(release));
            }
        }
    }
}

/// Accepts connections on `listener` until `stop` is cancelled (the drain, or a reload
/// that removed this address), each served under the [`Binding`] current when it was
/// accepted.
///
/// `max_connections`: a permit is taken *before* accepting, so at the limit new
/// connections wait in the kernel's backlog (and the client's connect timeout applies)
/// instead of being accepted and closed. A change of binding (a reload) wakes the wait
/// so the new listener's limit applies.
///
/// Accept errors: logged and retried after a pause that doubles from 5 ms to 1 s and
/// resets on success, so EMFILE (out of descriptors) does not spin a core.
pub async fn accept_loop(
    listener: Arc<Listener>,
    mut binding: watch::Receiver<Binding>,
    stop: CancellationToken,
) {
    let addr = listener.local_addr().to_string();
    let listening = match listener.local_addr() {
        LocalAddr::Tcp(a) => SockAddr::Tcp(*a),
        LocalAddr::Unix(_) => SockAddr::Unix(Some(Arc::from(addr.as_str()))),
    };
    let mut backoff = MIN_ACCEPT_BACKOFF;
    let mut paused = false;
    // False once the sender is gone (the proxy's handle dropped): no reload can come,
    // and the socket goes on under its last binding until `stop`.
    let mut watching = true;
    loop {
        // What the wait for a permit and the accept need; the connection itself gets
        // the binding current once accepted.
        let (limit, tcp) = {
            let b = binding.borrow_and_update();
            (b.limit.clone(), b.kind.client_tcp())
        };
        if limit.available_permits() == 0 && !paused {
            paused = true;
            tracing::warn!(listener = %binding.borrow().kind.name(), address = %addr, "max_connections reached; accepting paused until a connection ends");
        }
        let permit = tokio::select! {
            p = limit.acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            changed = binding.changed(), if watching => {
                watching = changed.is_ok();
                continue;
            }
            _ = stop.cancelled() => break,
        };
        if paused {
            paused = false;
            tracing::info!(listener = %binding.borrow().kind.name(), address = %addr, "accepting again");
        }
        let accepted = tokio::select! {
            r = listener.accept_with(tcp) => r,
            _ = stop.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = MIN_ACCEPT_BACKOFF;
                // The binding now, not the one the permit came from: a reload between
                // the two must not put a new connection on a listener it removed.
                let now = binding.borrow();
                now.kind
                    .spawn(stream, peer, &listening, &now.shutdown, permit);
            }
            Err(e) => {
                tracing::warn!(listener = %binding.borrow().kind.name(), address = %addr, error = %describe_io_error(&e),
                    backoff_ms = backoff.as_millis() as u64, "accept failed; pausing");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
    let name = binding.borrow().kind.name();
    // Closes the socket now (and removes its Unix socket file if still ours): new
    // connections are refused at once rather than queued where nobody accepts.
    drop(listener);
    tracing::info!(listener = %name, address = %addr, "stopped listening");
}
