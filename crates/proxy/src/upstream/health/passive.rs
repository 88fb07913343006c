//! Passive ejection: consecutive failed exchanges ([`Outcome`]) take a server out for a
//! cool-down ([`PassiveLimits`]). One `match` (`Passive::record`), a pure function of
//! the old state, the outcome and the time.

use std::time::Duration;

use tidegate_config::defaults;
use tokio::time::Instant;

/// What one exchange tells about a server (passive health). Only what the server did:
/// `crate::failure::UpstreamFailure::health` leaves out what a client caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The exchange went through (a TCP tunnel connected).
    Success,
    /// A response head arrived with this status: a failure when
    /// [`PassiveLimits::statuses`] holds it, a success otherwise.
    Response(u16),
    /// Connecting failed or timed out.
    ConnectFailed,
    /// The server closed or reset before the response head after the whole request was
    /// sent, sent no head within `response_timeout`, or sent an invalid one.
    ServerError,
}

impl Outcome {
    /// A failed exchange for the server's counters (`server_failures_total`): a
    /// connect failure, a server error or a `5xx`, whether or not it counts toward
    /// ejection.
    pub fn is_failure(self) -> bool {
        match self {
            Outcome::Success => false,
            Outcome::Response(status) => (500..=599).contains(&status),
            Outcome::ConnectFailed | Outcome::ServerError => true,
        }
    }
}

/// A set of response statuses from 400 to 599 (`[upstreams.NAME.passive] statuses`),
/// one bit each, so that [`PassiveLimits`] stays `Copy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusSet([u64; 4]);

impl StatusSet {
    /// No status counts (the default).
    pub const EMPTY: StatusSet = StatusSet([0; 4]);

    const FIRST: u16 = 400;

    /// The statuses of `list` (any outside 400-599 are left out: config allows none).
    pub fn of(list: &[u16]) -> Self {
        let mut set = StatusSet::default();
        for &status in list {
            if let Some(bit) = Self::bit(status) {
                set.0[bit / 64] |= 1 << (bit % 64);
            }
        }
        set
    }

    /// Whether `status` is in the set.
    pub fn contains(&self, status: u16) -> bool {
        Self::bit(status).is_some_and(|bit| self.0[bit / 64] & (1 << (bit % 64)) != 0)
    }

    fn bit(status: u16) -> Option<usize> {
        (Self::FIRST..=599)
            .contains(&status)
            .then(|| usize::from(status - Self::FIRST))
    }
}

/// When passive ejection takes a server out, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveLimits {
    /// Consecutive failed exchanges that eject the server; `0` = never.
    pub fails: u32,
    /// How long an ejected server gets no new requests.
    pub cooldown: Duration,
    /// Response statuses that count as failures.
    pub statuses: StatusSet,
}

impl Default for PassiveLimits {
    /// [`defaults::PASSIVE_FAILS`], [`defaults::PASSIVE_COOLDOWN`] and
    /// [`defaults::PASSIVE_STATUSES`].
    fn default() -> Self {
        PassiveLimits {
            fails: defaults::PASSIVE_FAILS,
            cooldown: defaults::PASSIVE_COOLDOWN,
            statuses: StatusSet::of(defaults::PASSIVE_STATUSES),
        }
    }
}

impl From<&tidegate_config::Passive> for PassiveLimits {
    fn from(p: &tidegate_config::Passive) -> Self {
        PassiveLimits {
            fails: p.max_fails,
            cooldown: p.cooldown,
            statuses: StatusSet::of(&p.statuses),
        }
    }
}

/// The passive state: the current streak of failed exchanges by kind, and the ejection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Passive {
    connect_failures: u32,
    server_errors: u32,
    /// Responses whose status counts, and the last such status.
    error_responses: u32,
    last_status: u16,
    pub(super) ejection: Option<Ejection>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ejection {
    pub(super) until: Instant,
    pub(super) reason: String,
}

impl Passive {
    /// The streak at `now`: zero once a cool-down has ended.
    pub(super) fn streak(&self, now: Instant) -> u32 {
        if self.ejection.as_ref().is_some_and(|e| now >= e.until) {
            return 0;
        }
        self.connect_failures
            .saturating_add(self.server_errors)
            .saturating_add(self.error_responses)
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
        // A cool-down that ended starts the count over: the server gets `fails`
        // chances again, as a server that was never ejected does.
        if self.ejection.as_ref().is_some_and(|e| now >= e.until) {
            *self = Passive::default();
        }
        let outcome = match outcome {
            Outcome::Response(status) if limits.statuses.contains(status) => {
                Outcome::Response(status)
            }
            Outcome::Response(_) => Outcome::Success,
            other => other,
        };
        match outcome {
            Outcome::Success => {
                // An ejection runs its course: this success may be an exchange that
                // began before it.
                self.connect_failures = 0;
                self.server_errors = 0;
                self.error_responses = 0;
                None
            }
            // Exchanges that started before the ejection end during it: they neither
            // extend it nor count toward the next one.
            _ if self.ejected_until(now).is_some() => None,
            // Off: nothing is counted, nothing ejects.
            _ if limits.fails == 0 => None,
            Outcome::ConnectFailed | Outcome::ServerError | Outcome::Response(_) => {
                match outcome {
                    Outcome::ConnectFailed => {
                        self.connect_failures = self.connect_failures.saturating_add(1);
                    }
                    Outcome::Response(status) => {
                        self.error_responses = self.error_responses.saturating_add(1);
                        self.last_status = status;
                    }
                    _ => self.server_errors = self.server_errors.saturating_add(1),
                }
                if self.streak(now) < limits.fails {
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
        let mut kinds = Vec::with_capacity(3);
        if self.connect_failures > 0 {
            kinds.push(plural(
                self.connect_failures,
                "connect failure",
                "connect failures",
            ));
        }
        if self.server_errors > 0 {
            kinds.push(plural(self.server_errors, "server error", "server errors"));
        }
        if self.error_responses > 0 {
            kinds.push(format!(
                "{} (last {})",
                plural(
                    self.error_responses,
                    "counted response status",
                    "counted response statuses"
                ),
                self.last_status
            ));
        }
        match kinds.as_slice() {
            [one] => format!("{} consecutive {}", one_word(one), rest(one)),
            _ => {
                let total = self
                    .connect_failures
                    .saturating_add(self.server_errors)
                    .saturating_add(self.error_responses);
                let last = kinds.pop().unwrap_or_default();
                format!(
                    "{total} consecutive failures: {} and {last}",
                    kinds.join(", ")
                )
            }
        }
    }
}

/// The number of `3 connect failures`.
fn one_word(s: &str) -> &str {
    s.split_once(' ').map_or(s, |(n, _)| n)
}

/// The words after the number of `3 connect failures`.
fn rest(s: &str) -> &str {
    s.split_once(' ').map_or("", |(_, r)| r)
}

/// `1 thing`, `3 things`.
pub(super) fn plural(n: u32, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}
