//! The upstream side of an upgraded exchange, between the 101 and the tunnel: the
//! service stashes it in the client connection's state, the connection driver takes it
//! once hyper hands the client's socket back (`tunnel` joins the two). Data only, so
//! the connection state imports no code that serves.

use hyper::upgrade::OnUpgrade;

use crate::upstream::pool::Checkout;

/// The upstream side of an upgraded exchange, kept by the client connection's
/// state (`ClientConn`) until hyper has written the 101 and handed the client's socket back.
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
