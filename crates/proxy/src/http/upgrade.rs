//! Upgraded exchanges: after a 101, the client's socket and the upstream's are joined
//! into a tunnel in the client connection's own task.

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::client_conn::{ClientConn, Phase, Verdict};
use crate::registry::{ConnProtocol, ConnState, Registry};
use crate::upstream::pool::Checkout;

/// The upstream side of an upgraded exchange, kept by the client connection's
/// [`ClientConn`] until hyper has written the 101 and handed the client's socket back.
pub(crate) struct Upgrade {
    pub(crate) upstream: OnUpgrade,
    pub(crate) conn: Checkout,
    // Held for the tunnel's life: `least_conn` counts it, and an on-demand backend is
    // in use (never stopped under an open WebSocket).
    pub(crate) active: crate::upstream::ActiveGuard,
    pub(crate) idle: std::time::Duration,
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade")
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

/// After a 101: bytes both ways between `client` (the client's socket, with whatever
/// it sent after its request put back in front) and the upstream, until either side
/// closes, the exchange's idle timer expires, the drain's grace ends or the connection
/// is closed through the registry. `client` is the client connection's state (the `Observed`
/// inside `client` still counts its bytes); holding it keeps the connection listed.
pub(crate) async fn tunnel(
    mut socket: super::ClientIo,
    upgrade: Box<Upgrade>,
    client: Arc<ClientConn>,
    registry: Arc<Registry>,
) {
    let Upgrade {
        upstream,
        conn,
        active: _active,
        idle,
    } = *upgrade;
    let upstream = match upstream.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let close = client.conn().close_token().clone();
    // The upstream connection now belongs to the tunnel; it never returns to the pool.
    // Its pool task ends with the upgrade, so the tunnel enters it anew, as the
    // upstream end of this tunnel.
    let _upstream_entry = conn.entry().map(|e| {
        registry.register_mirror(
            e.successor(ConnProtocol::Websocket, ConnState::Tunnel, close.clone()),
            client.conn(),
        )
    });
    drop(conn);
    client.set_exchange_idle(idle);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        res = tokio::io::copy_bidirectional(&mut socket, &mut upstream) => match res {
            Ok((up, down)) => tracing::debug!(to_upstream = up, to_client = down, "tunnel closed"),
            Err(e) => tracing::debug!(error = %crate::errno::describe_io_error(&e), "tunnel closed"),
        },
        _ = expired(&client, idle) => tracing::debug!("tunnel closed: idle_timeout"),
        _ = close.cancelled() => tracing::debug!("tunnel closed: shutdown or closed by the operator"),
    }
}

/// Resolves when `client`'s timers say the connection has been quiet too long.
pub(crate) async fn expired(client: &ClientConn, idle: std::time::Duration) -> Phase {
    loop {
        match client.verdict(idle, idle) {
            Verdict::Expired(phase) => return phase,
            Verdict::WaitUntil(t) => tokio::time::sleep_until(t).await,
        }
    }
}
