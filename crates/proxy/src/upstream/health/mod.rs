//! A server's health: active checks (`[upstreams.NAME.health]`) and passive ejection
//! (consecutive failures the server caused take it out for a cool-down).
//!
//! Two verdicts, kept apart because they answer different questions:
//! - **Active** ([`HealthState`]): what the checker saw. `unknown` (the start, and every
//!   server of an upstream without `[health]`) → `up` after `rise` consecutive passes,
//!   → `down` after `fall` consecutive failures; `down` → `up` after `rise` passes.
//!   `unknown` gets traffic: a proxy that refused every request until the first checks
//!   finished would turn its own restart into an outage.
//! - **Passive** (`[upstreams.NAME.passive]`, [`PassiveLimits`]): `max_fails`
//!   (default [`defaults::PASSIVE_FAILS`]; `0` = off) consecutive failures the server
//!   caused ([`Outcome::ConnectFailed`], [`Outcome::ServerError`], or a
//!   [`Outcome::Response`] whose status is listed in `statuses`, none by default) eject
//!   the server for `cooldown` (default [`defaults::PASSIVE_COOLDOWN`]). A cool-down that
//!   ends starts the count over; a success (any other response) clears it. What a client
//!   caused never gets here (`crate::failure::UpstreamFailure::health`).
//!
//! A server is available ([`ServerHealth::is_available`]) unless it is `down` or ejected.
//!
//! Invariants: only the checker task of a server changes its active state; only
//! [`ServerHealth::record`] changes the passive state; both transitions are each one
//! `match` (`Active::next`, `Passive::record`), pure functions of the old state, the
//! result and the time, tested without sockets. Checker tasks never keep the process or
//! an upstream alive: they are plain `tokio::spawn` tasks (not on the drain tracker),
//! hold the upstream weakly between checks, and stop when draining starts.
//!
//! Boundary: a check uses a fresh connection of its own and never the keep-alive pool,
//! so checks neither consume nor keep alive pooled connections.
//!
//! Files: this one holds a server's health state ([`ServerHealth`]: both verdicts under
//! one lock, [`ServerHealth::record`], snapshots); `active.rs` the active-check state
//! machine, `passive.rs` passive ejection, `check.rs` the check protocol (the request a
//! check writes, the status-line parser), and [`checker`] the checker tasks
//! ([`checker::Checks`]), which walk the upstreams' servers. Nothing in this module but
//! `checker` knows an upstream, so `upstream` can hold a [`ServerHealth`] per server
//! without a circle.

mod active;
pub(crate) mod check;
pub mod checker;
mod passive;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tidegate_config::{defaults, Health, UpstreamAddr};
use tokio::time::Instant;

use active::Active;
pub use active::HealthState;
use passive::{plural, Passive};
pub use passive::{Outcome, PassiveLimits, StatusSet};

/// A read-only copy of a server's health, for the admin API and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// The active-check verdict.
    pub state: HealthState,
    /// Whether the server gets new requests now (not `down`, not ejected).
    pub available: bool,
    /// While passively ejected: when the cool-down ends.
    pub ejected_until: Option<Instant>,
    /// Why the last failed check failed (`None` before any failure).
    pub last_check_failure: Option<String>,
    /// Checks that passed since start.
    pub checks_passed: u64,
    /// Checks that failed since start.
    pub checks_failed: u64,
    /// Failed exchanges in a row, as counted by passive ejection.
    pub failed_exchanges: u32,
    /// Times the server was passively ejected since start.
    pub ejections: u64,
}

/// One server's health state: the active verdict, the passive streak and ejection.
#[derive(Debug)]
pub struct ServerHealth {
    /// `[health]` of the upstream; `None` = no active checks.
    active: Option<Health>,
    /// Upstream name and server address, for log lines (empty until
    /// [`ServerHealth::named`]).
    upstream: String,
    server: String,
    /// Set when passive ejection ejects the server, cleared (under the lock) once a look
    /// finds the cool-down over: lets the per-request cap check skip the lock of every
    /// server that has not been ejected.
    maybe_ejected: AtomicBool,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    active: Active,
    passive: Passive,
    limits: PassiveLimits,
    last_check_failure: Option<String>,
    checks_passed: u64,
    checks_failed: u64,
    ejections: u64,
}

// === impl ServerHealth ===

impl ServerHealth {
    /// Health for a server of an upstream with these active-check settings (`None`:
    /// passive ejection only), with the default [`PassiveLimits`].
    pub fn new(active: Option<&Health>) -> Self {
        ServerHealth {
            active: active.cloned(),
            upstream: String::new(),
            server: String::new(),
            maybe_ejected: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                active: Active::Unknown {
                    passes: 0,
                    fails: 0,
                },
                passive: Passive::default(),
                limits: PassiveLimits::default(),
                last_check_failure: None,
                checks_passed: 0,
                checks_failed: 0,
                ejections: 0,
            }),
        }
    }

    /// Names the upstream and server in this health's log lines.
    pub fn named(mut self, upstream: &str, server: &UpstreamAddr) -> Self {
        self.upstream = upstream.to_owned();
        self.server = server.to_string();
        self
    }

    /// The active-check settings (`None`: no active checks).
    pub fn settings(&self) -> Option<&Health> {
        self.active.as_ref()
    }

    /// Changes when passive ejection fires, how long it lasts and which statuses count
    /// (default [`PassiveLimits::default`]; `[upstreams.NAME.passive]`).
    pub fn set_passive_limits(&self, limits: PassiveLimits) {
        self.lock().limits = limits;
    }

    /// May this server get new requests now?
    pub fn is_available(&self) -> bool {
        self.lock().is_available(Instant::now())
    }

    /// The active-check verdict.
    pub fn state(&self) -> HealthState {
        self.lock().active.state()
    }

    /// While passively ejected: when the cool-down ends.
    pub fn ejected_until(&self) -> Option<Instant> {
        let now = Instant::now();
        let inner = self.lock();
        let until = inner.passive.ejected_until(now);
        if until.is_none() {
            // Under the lock: an ejection recorded meanwhile sets it again after this.
            self.maybe_ejected.store(false, Ordering::Relaxed);
        }
        until
    }

    /// Whether the server may be passively ejected now: `false` means it surely is not
    /// (no lock taken); `true` needs [`ServerHealth::ejected_until`] to tell.
    pub fn maybe_ejected(&self) -> bool {
        self.maybe_ejected.load(Ordering::Relaxed)
    }

    /// Everything at once, consistent (one lock).
    pub fn snapshot(&self) -> HealthSnapshot {
        let now = Instant::now();
        let inner = self.lock();
        HealthSnapshot {
            state: inner.active.state(),
            available: inner.is_available(now),
            ejected_until: inner.passive.ejected_until(now),
            last_check_failure: inner.last_check_failure.clone(),
            checks_passed: inner.checks_passed,
            checks_failed: inner.checks_failed,
            failed_exchanges: inner.passive.streak(now),
            ejections: inner.ejections,
        }
    }

    /// The state in one phrase, for 503 bodies and logs: `up`, `unknown`,
    /// `down (3 failed checks: connection refused (ECONNREFUSED))`, `ejected for 8s
    /// (3 consecutive connect failures)`.
    pub fn describe(&self) -> String {
        self.lock().describe(Instant::now())
    }

    /// Records an exchange's outcome (passive health).
    pub fn record(&self, outcome: Outcome) {
        let now = Instant::now();
        let mut inner = self.lock();
        let limits = inner.limits;
        if let Some(reason) = inner.passive.record(outcome, now, limits) {
            inner.ejections += 1;
            self.maybe_ejected.store(true, Ordering::Relaxed);
            drop(inner);
            tracing::warn!(
                upstream = %self.upstream,
                server = %self.server,
                cooldown_ms = limits.cooldown.as_millis() as u64,
                reason = %reason,
                "server ejected: no new requests until the cool-down ends"
            );
        }
    }

    /// Records an active check's result (`Err` carries why it failed) and logs a change
    /// of state. Returns the new state.
    pub fn record_check(&self, result: Result<(), String>) -> HealthState {
        let (rise, fall) = self
            .active
            .as_ref()
            .map_or((defaults::HEALTH_RISE, defaults::HEALTH_FALL), |h| {
                (h.rise, h.fall)
            });
        let mut inner = self.lock();
        let before = inner.active.state();
        match &result {
            Ok(()) => inner.checks_passed += 1,
            Err(reason) => {
                inner.checks_failed += 1;
                inner.last_check_failure = Some(reason.clone());
            }
        }
        let old = std::mem::replace(&mut inner.active, Active::Up { fails: 0 });
        inner.active = old.next(result, rise, fall);
        let after = inner.active.state();
        let changed = (after != before).then(|| inner.active.clone());
        drop(inner);
        match changed {
            None => {}
            Some(Active::Down { fails, reason, .. }) => tracing::warn!(
                upstream = %self.upstream,
                server = %self.server,
                from = %before,
                failed_checks = fails,
                reason = %reason,
                "server is down: no new requests until it passes its checks"
            ),
            // Only `up` is left: nothing returns to `unknown`.
            Some(_) => tracing::info!(
                upstream = %self.upstream,
                server = %self.server,
                from = %before,
                passed_checks = rise,
                "server is {after}"
            ),
        }
        after
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves counters, not broken
        // invariants: keep serving with them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// === impl Inner ===

impl Inner {
    fn is_available(&self, now: Instant) -> bool {
        self.active.state() != HealthState::Down && self.passive.ejected_until(now).is_none()
    }

    fn describe(&self, now: Instant) -> String {
        // Down first: it is the lasting verdict; an ejection ends by itself.
        if let Active::Down {
            fails,
            passes,
            reason,
        } = &self.active
        {
            let checks = plural(*fails, "failed check", "failed checks");
            return match passes {
                0 => format!("down ({checks}: {reason})"),
                p => format!("down ({checks}: {reason}; {p} passed since)"),
            };
        }
        if let Some(e) = &self.passive.ejection {
            if now < e.until {
                return format!("ejected for {} ({})", left(e.until - now), e.reason);
            }
        }
        self.active.state().as_str().to_owned()
    }
}

/// Time left, as an operator reads it: whole seconds rounded up, or ms below 1 s.
fn left(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{}s", d.as_millis().div_ceil(1000))
    } else {
        format!("{}ms", d.as_millis().max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Result<(), String> {
        Err("connection refused (ECONNREFUSED)".to_owned())
    }

    fn health(rise: u32, fall: u32) -> ServerHealth {
        ServerHealth::new(Some(&Health {
            path: Some("/health".into()),
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(100),
            rise,
            fall,
        }))
    }

    #[test]
    fn describe_names_the_failed_checks_and_the_last_reason() {
        let h = health(2, 3);
        assert_eq!(h.describe(), "unknown");
        assert!(h.is_available(), "unknown gets traffic");
        for _ in 0..3 {
            h.record_check(refused());
        }
        assert_eq!(
            h.describe(),
            "down (3 failed checks: connection refused (ECONNREFUSED))"
        );
        assert!(!h.is_available());
        h.record_check(Err("GET /health answered 503".into()));
        assert_eq!(
            h.describe(),
            "down (4 failed checks: GET /health answered 503)"
        );
        h.record_check(Ok(()));
        assert_eq!(
            h.describe(),
            "down (4 failed checks: GET /health answered 503; 1 passed since)"
        );
        h.record_check(Ok(()));
        assert_eq!(h.describe(), "up");
        let snap = h.snapshot();
        assert_eq!(snap.state, HealthState::Up);
        assert_eq!((snap.checks_passed, snap.checks_failed), (2, 4));
        assert_eq!(
            snap.last_check_failure.as_deref(),
            Some("GET /health answered 503")
        );
    }

    const LIMITS: PassiveLimits = PassiveLimits {
        fails: 3,
        cooldown: Duration::from_secs(10),
        statuses: StatusSet::EMPTY,
    };

    fn inner_at(h: &ServerHealth) -> MutexGuard<'_, Inner> {
        h.lock()
    }

    /// Passive transitions at explicit instants: no timers, no sockets.
    fn record_at(h: &ServerHealth, outcome: Outcome, now: Instant) -> Option<String> {
        h.lock().passive.record(outcome, now, LIMITS)
    }

    #[test]
    fn three_connect_failures_eject_for_the_cooldown() {
        let h = ServerHealth::new(None);
        let t0 = Instant::now();
        assert_eq!(record_at(&h, Outcome::ConnectFailed, t0), None);
        assert_eq!(record_at(&h, Outcome::ConnectFailed, t0), None);
        assert!(inner_at(&h).is_available(t0));
        assert_eq!(
            record_at(&h, Outcome::ConnectFailed, t0).as_deref(),
            Some("3 consecutive connect failures")
        );
        let t2 = t0 + Duration::from_secs(2);
        assert!(!inner_at(&h).is_available(t2));
        assert_eq!(
            inner_at(&h).describe(t2),
            "ejected for 8s (3 consecutive connect failures)"
        );
        let t9 = t0 + Duration::from_millis(9_700);
        assert_eq!(
            inner_at(&h).describe(t9),
            "ejected for 300ms (3 consecutive connect failures)"
        );
        let t10 = t0 + Duration::from_secs(10);
        assert!(inner_at(&h).is_available(t10));
        assert_eq!(inner_at(&h).describe(t10), "unknown");
    }

    #[test]
    fn failures_during_the_ejection_neither_extend_nor_count() {
        let h = ServerHealth::new(None);
        let t0 = Instant::now();
        for _ in 0..3 {
            record_at(&h, Outcome::ServerError, t0);
        }
        let t5 = t0 + Duration::from_secs(5);
        assert_eq!(record_at(&h, Outcome::ServerError, t5), None);
        assert_eq!(
            inner_at(&h).passive.ejected_until(t5),
            Some(t0 + Duration::from_secs(10))
        );
        assert_eq!(inner_at(&h).passive.streak(t5), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_lock_free_ejection_hint_follows_the_ejection() {
        let h = ServerHealth::new(None);
        assert!(!h.maybe_ejected(), "a new server is not ejected");
        for _ in 0..3 {
            h.record(Outcome::ConnectFailed);
        }
        assert!(h.maybe_ejected());
        assert!(h.ejected_until().is_some());
        assert!(h.maybe_ejected(), "still ejected: the hint stays");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(h.maybe_ejected(), "only a look clears it");
        assert_eq!(h.ejected_until(), None);
        assert!(!h.maybe_ejected(), "the look found the cool-down over");
    }

    #[test]
    fn a_cooldown_that_ends_starts_the_count_over() {
        let h = ServerHealth::new(None);
        let t0 = Instant::now();
        for _ in 0..3 {
            record_at(&h, Outcome::ConnectFailed, t0);
        }
        let t11 = t0 + Duration::from_secs(11);
        assert_eq!(inner_at(&h).passive.streak(t11), 0, "shown as zero");
        assert_eq!(record_at(&h, Outcome::ConnectFailed, t11), None);
        assert_eq!(record_at(&h, Outcome::ConnectFailed, t11), None);
        assert!(inner_at(&h).is_available(t11));
        assert_eq!(
            record_at(&h, Outcome::ConnectFailed, t11).as_deref(),
            Some("3 consecutive connect failures")
        );
        assert!(!inner_at(&h).is_available(t11));
    }

    #[test]
    fn statuses_count_only_when_listed() {
        let h = ServerHealth::new(None);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(record_at(&h, Outcome::Response(500), t0), None);
        }
        assert_eq!(inner_at(&h).passive.streak(t0), 0, "a 500 is an answer");
        let listed = PassiveLimits {
            statuses: StatusSet::of(&[500, 503]),
            ..LIMITS
        };
        let record = |o| h.lock().passive.record(o, t0, listed);
        assert_eq!(record(Outcome::Response(500)), None);
        assert_eq!(record(Outcome::Response(404)), None, "a success");
        assert_eq!(record(Outcome::Response(503)), None);
        assert_eq!(record(Outcome::Response(500)), None);
        assert_eq!(
            record(Outcome::Response(503)).as_deref(),
            Some("3 consecutive counted response statuses (last 503)")
        );
    }

    #[test]
    fn max_fails_zero_never_ejects() {
        let h = ServerHealth::new(None);
        let off = PassiveLimits { fails: 0, ..LIMITS };
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(
                h.lock().passive.record(Outcome::ConnectFailed, t0, off),
                None
            );
        }
        assert!(inner_at(&h).is_available(t0));
    }

    #[test]
    fn status_sets_hold_400_to_599() {
        let set = StatusSet::of(&[400, 463, 464, 500, 599, 200, 600]);
        for s in [400, 463, 464, 500, 599] {
            assert!(set.contains(s), "{s}");
        }
        for s in [200, 399, 401, 501, 598, 600, 0, u16::MAX] {
            assert!(!set.contains(s), "{s}");
        }
    }

    #[test]
    fn a_success_clears_the_streak() {
        let h = ServerHealth::new(None);
        let t0 = Instant::now();
        record_at(&h, Outcome::ConnectFailed, t0);
        record_at(&h, Outcome::ServerError, t0);
        record_at(&h, Outcome::Success, t0);
        record_at(&h, Outcome::ServerError, t0);
        assert_eq!(record_at(&h, Outcome::ConnectFailed, t0), None);
        assert!(inner_at(&h).is_available(t0));
        assert_eq!(
            record_at(&h, Outcome::ConnectFailed, t0).as_deref(),
            Some("3 consecutive failures: 2 connect failures and 1 server error")
        );
    }

    #[test]
    fn down_is_described_before_an_ejection() {
        let h = health(1, 1);
        h.record_check(refused());
        let t0 = Instant::now();
        for _ in 0..3 {
            record_at(&h, Outcome::ConnectFailed, t0);
        }
        assert_eq!(
            inner_at(&h).describe(t0),
            "down (1 failed check: connection refused (ECONNREFUSED))"
        );
    }

    #[test]
    fn passive_limits_are_settable() {
        let h = ServerHealth::new(None);
        h.set_passive_limits(PassiveLimits {
            fails: 1,
            cooldown: Duration::from_millis(200),
            statuses: StatusSet::default(),
        });
        h.record(Outcome::ServerError);
        assert!(!h.is_available());
        assert!(h.describe().starts_with("ejected for "), "{}", h.describe());
        assert!(h.describe().ends_with("ms (1 consecutive server error)"));
        assert_eq!(h.snapshot().ejections, 1);
    }
}
