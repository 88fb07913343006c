//! Passive ejection: consecutive failed exchanges ([`Outcome`]) take a server out for a
//! cool-down ([`PassiveLimits`]). One `match` (`Passive::record`), a pure function of
//! the old state, the outcome and the time.

use std::time::Duration;

use tidegate_config::defaults;
use tokio::time::Instant;

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

/// When passive ejection takes a server out, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveLimits {
    /// Consecutive failed exchanges that eject the server (at least 1).
    pub fails: u32,
    /// How long an ejected server gets no new requests.
    pub cooldown: Duration,
}

impl Default for PassiveLimits {
    /// [`defaults::PASSIVE_FAILS`] and [`defaults::PASSIVE_COOLDOWN`].
    fn default() -> Self {
        PassiveLimits {
            fails: defaults::PASSIVE_FAILS,
            cooldown: defaults::PASSIVE_COOLDOWN,
        }
    }
}

/// The passive state: the current streak of failed exchanges by kind, and the ejection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Passive {
    connect_failures: u32,
    server_errors: u32,
    pub(super) ejection: Option<Ejection>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ejection {
    pub(super) until: Instant,
    pub(super) reason: String,
}

impl Passive {
    pub(super) fn streak(&self) -> u32 {
        self.connect_failures.saturating_add(self.server_errors)
    }

    pub(super) fn ejected_until(&self, now: Instant) -> Option<Instant> {
        self.ejection
            .as_ref()
            .map(|e| e.until)
            .filter(|until| now < *until)
    }

    /// Every transition of passive ejection. Returns the reason when this outcome
    /// ejects the server.
    pub(super) fn record(
        &mut self,
        outcome: Outcome,
        now: Instant,
        limits: PassiveLimits,
    ) -> Option<String> {
        match outcome {
            Outcome::Success => {
                // An ejection runs its course: this success may be an exchange that
                // began before it.
                self.connect_failures = 0;
                self.server_errors = 0;
                None
            }
            // Exchanges that started before the ejection end during it: they neither
            // extend it nor count toward the next one.
            Outcome::ConnectFailed | Outcome::ServerError if self.ejected_until(now).is_some() => {
                None
            }
            Outcome::ConnectFailed | Outcome::ServerError => {
                if outcome == Outcome::ConnectFailed {
                    self.connect_failures = self.connect_failures.saturating_add(1);
                } else {
                    self.server_errors = self.server_errors.saturating_add(1);
                }
                // After a cool-down the streak is still at the limit: one more failure
                // ejects again at once.
                if self.streak() < limits.fails.max(1) {
                    return None;
                }
                let reason = self.reason();
                self.ejection = Some(Ejection {
                    until: now + limits.cooldown,
                    reason: reason.clone(),
                });
                Some(reason)
            }
        }
    }

    fn reason(&self) -> String {
        match (self.connect_failures, self.server_errors) {
            (c, 0) => plural(
                c,
                "consecutive connect failure",
                "consecutive connect failures",
            ),
            (0, s) => plural(s, "consecutive server error", "consecutive server errors"),
            (c, s) => format!(
                "{} consecutive failures: {} and {}",
                c + s,
                plural(c, "connect failure", "connect failures"),
                plural(s, "server error", "server errors")
            ),
        }
    }
}

/// `1 thing`, `3 things`.
pub(super) fn plural(n: u32, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}
