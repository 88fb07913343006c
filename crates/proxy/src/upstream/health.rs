//! A server's health: active checks (`[upstreams.NAME.health]`) and passive ejection
//! (consecutive connect failures or 5xx responses take a server out for a cool-down).
//!
//! STUB: every server is always available; the checker and the passive logic are being
//! built (issue 5). The API below is what the rest of the data plane uses.

use tidegate_config::Health;

/// What one exchange tells about a server (passive health).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head arrived with a status below 500.
    Success,
    /// Connecting failed or timed out.
    ConnectFailed,
    /// The server answered 5xx, or closed/reset before the response head.
    ServerError,
}

/// One server's health state.
#[derive(Debug)]
pub struct ServerHealth {}

impl ServerHealth {
    /// Health for a server of an upstream with these active-check settings.
    pub fn new(_active: Option<&Health>) -> Self {
        ServerHealth {}
    }

    /// May this server get new requests now?
    pub fn is_available(&self) -> bool {
        true
    }

    /// The state in one phrase, for 503 bodies and logs: `up`, `unknown`,
    /// `down (3 failed checks: connection refused (ECONNREFUSED))`, `ejected for 8s
    /// (3 consecutive connect failures)`.
    pub fn describe(&self) -> String {
        "up".to_owned()
    }

    /// Records an exchange's outcome (passive health).
    pub fn record(&self, _outcome: Outcome) {}
}
