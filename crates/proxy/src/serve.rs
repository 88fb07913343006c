//! The accept loop, one for every listening socket of every kind (HTTP and TCP mode):
//! `max_connections`, back-off on accept errors, and the drain. What a connection
//! becomes depends on the [`ListenerKind`]; everything around it is the same for all
//! (docs/design.md, "House rules": one accept loop, one drain).
//!
//! Invariants: a connection task holds one permit of its listener's semaphore for its
//! whole life, so at `max_connections` accepting pauses until one ends; the listening
//! socket is dropped (closed, and its Unix socket file removed) as soon as draining
//! starts, so new connections are refused at once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// A listener by its `protocol`: what it does with an accepted connection.
#[derive(Debug, Clone)]
pub enum ListenerKind {
    /// `protocol = "http"`: hyper, routes, the HTTP proxy.
    Http(Arc<HttpListener>),
    /// `protocol = "tcp"`: a tunnel to the listener's upstream.
    Tcp(Arc<TunnelListener>),
}

// === impl ListenerKind ===

impl ListenerKind {
    /// The listener's config name.
    pub fn name(&self) -> &str {
        match self {
            ListenerKind::Http(l) => &l.name,
            ListenerKind::Tcp(l) => &l.name,
        }
    }

    /// Options for the listener's accepted TCP sockets.
    pub fn client_tcp(&self) -> TcpOptions {
        match self {
            ListenerKind::Http(l) => l.client_tcp,
            ListenerKind::Tcp(l) => l.client_tcp,
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
        // Our end of a TCP connection, exactly (a wildcard listener accepts on many
        // addresses): one getsockname per connection.
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
                    .spawn(serve_tunnel(l.clone(), stream, peer, local, sd).map(release));
            }
        }
    }
}

/// Accepts connections on `listener` until draining starts; each one is served by
/// `ctx` in its own task on the drain tracker.
pub async fn accept_loop(
    listener: Arc<Listener>,
    ctx: ListenerKind,
    limit: Arc<Semaphore>,
    shutdown: Shutdown,
) {
    let addr = listener.local_addr().to_string();
    let listening = match listener.local_addr() {
        LocalAddr::Tcp(a) => SockAddr::Tcp(*a),
        LocalAddr::Unix(_) => SockAddr::Unix(Some(Arc::from(addr.as_str()))),
    };
    let mut backoff = MIN_ACCEPT_BACKOFF;
    let mut paused = false;
    loop {
        if limit.available_permits() == 0 && !paused {
            paused = true;
            tracing::warn!(listener = %ctx.name(), address = %addr, "max_connections reached; accepting paused until a connection ends");
        }
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.graceful.cancelled() => break,
        };
        if paused {
            paused = false;
            tracing::info!(listener = %ctx.name(), address = %addr, "accepting again");
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.graceful.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = MIN_ACCEPT_BACKOFF;
                ctx.spawn(stream, peer, &listening, &shutdown, permit);
            }
            Err(e) => {
                tracing::warn!(listener = %ctx.name(), address = %addr, error = %describe_io_error(&e),
                    backoff_ms = backoff.as_millis() as u64, "accept failed; pausing");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.graceful.cancelled() => break,
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
    drop(listener);
    tracing::info!(listener = %ctx.name(), address = %addr, "stopped listening");
}
