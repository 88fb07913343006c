//! A server's health: active checks (`[upstreams.NAME.health]`) and passive ejection
//! (consecutive connect failures or server errors take a server out for a cool-down).
//!
//! Two verdicts, kept apart because they answer different questions:
//! - **Active** ([`HealthState`]): what the checker saw. `unknown` (the start, and every
//!   server of an upstream without `[health]`) → `up` after `rise` consecutive passes,
//!   → `down` after `fall` consecutive failures; `down` → `up` after `rise` passes.
//!   `unknown` gets traffic: a proxy that refused every request until the first checks
//!   finished would turn its own restart into an outage.
//! - **Passive** (always on): [`defaults::PASSIVE_FAILS`] consecutive failed exchanges
//!   ([`Outcome::ConnectFailed`] or [`Outcome::ServerError`]) eject the server for
//!   [`defaults::PASSIVE_COOLDOWN`]. After the cool-down the streak is kept, so one more
//!   failure ejects it again at once; a [`Outcome::Success`] clears it.
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

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tidegate_config::{defaults, Health, UpstreamAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::connect::Resolve;
use super::{Server, Upstream};
use crate::endpoint::{Stream, TcpOptions};
use crate::errno::describe_io_error;

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

/// The active-check verdict on a server (DESIGN.md §6: server health
/// `up | down | unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthState {
    /// No verdict yet (or no active checks configured). Gets traffic.
    Unknown,
    /// `rise` consecutive checks passed.
    Up,
    /// `fall` consecutive checks failed. Gets no new requests.
    Down,
}

impl HealthState {
    /// The name used in logs, the admin API and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Up => "up",
            HealthState::Down => "down",
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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

/// The active state machine. Counters are consecutive results; `fails` in `Down` is the
/// streak that took (or keeps) it down, shown in [`ServerHealth::describe`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Active {
    Unknown {
        passes: u32,
        fails: u32,
    },
    Up {
        fails: u32,
    },
    Down {
        fails: u32,
        passes: u32,
        reason: String,
    },
}

/// The passive state: the current streak of failed exchanges by kind, and the ejection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Passive {
    connect_failures: u32,
    server_errors: u32,
    ejection: Option<Ejection>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ejection {
    until: Instant,
    reason: String,
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

    /// Changes when passive ejection fires and how long it lasts (default
    /// [`PassiveLimits::default`]); for tests, and for a future config key.
    pub fn set_passive_limits(&self, limits: PassiveLimits) {
        self.lock().limits = PassiveLimits {
            fails: limits.fails.max(1),
            cooldown: limits.cooldown,
        };
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
        self.lock().passive.ejected_until(now)
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
            failed_exchanges: inner.passive.streak(),
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

// === impl Active ===

impl Active {
    fn state(&self) -> HealthState {
        match self {
            Active::Unknown { .. } => HealthState::Unknown,
            Active::Up { .. } => HealthState::Up,
            Active::Down { .. } => HealthState::Down,
        }
    }

    /// Every transition of the active state machine.
    fn next(self, result: Result<(), String>, rise: u32, fall: u32) -> Active {
        // The validator keeps both at 1 or more; a 0 would mean "never", which no
        // setting should mean.
        let (rise, fall) = (rise.max(1), fall.max(1));
        let next = match (self, result) {
            (Active::Unknown { passes, .. }, Ok(())) => {
                let passes = passes.saturating_add(1);
                if passes >= rise {
                    Active::Up { fails: 0 }
                } else {
                    Active::Unknown { passes, fails: 0 }
                }
            }
            (Active::Unknown { fails, .. }, Err(reason)) => {
                let fails = fails.saturating_add(1);
                if fails >= fall {
                    Active::Down {
                        fails,
                        passes: 0,
                        reason,
                    }
                } else {
                    Active::Unknown { passes: 0, fails }
                }
            }
            (Active::Up { .. }, Ok(())) => Active::Up { fails: 0 },
            (Active::Up { fails }, Err(reason)) => {
                let fails = fails.saturating_add(1);
                if fails >= fall {
                    Active::Down {
                        fails,
                        passes: 0,
                        reason,
                    }
                } else {
                    Active::Up { fails }
                }
            }
            (
                Active::Down {
                    fails,
                    passes,
                    reason,
                },
                Ok(()),
            ) => {
                let passes = passes.saturating_add(1);
                if passes >= rise {
                    Active::Up { fails: 0 }
                } else {
                    Active::Down {
                        fails,
                        passes,
                        reason,
                    }
                }
            }
            (Active::Down { fails, passes, .. }, Err(reason)) => Active::Down {
                // A pass in between started a new streak.
                fails: if passes > 0 {
                    1
                } else {
                    fails.saturating_add(1)
                },
                passes: 0,
                reason,
            },
        };
        debug_assert!(match &next {
            Active::Unknown { passes, fails } => *passes < rise && *fails < fall,
            Active::Up { fails } => *fails < fall,
            Active::Down { passes, .. } => *passes < rise,
        });
        next
    }
}

// === impl Passive ===

impl Passive {
    fn streak(&self) -> u32 {
        self.connect_failures.saturating_add(self.server_errors)
    }

    fn ejected_until(&self, now: Instant) -> Option<Instant> {
        self.ejection
            .as_ref()
            .map(|e| e.until)
            .filter(|until| now < *until)
    }

    /// Every transition of passive ejection. Returns the reason when this outcome
    /// ejects the server.
    fn record(&mut self, outcome: Outcome, now: Instant, limits: PassiveLimits) -> Option<String> {
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

fn plural(n: u32, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
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

// === active checks ===

/// Active checks of a set of upstreams, ready to start. Holds what the checker tasks
/// need that the upstreams don't carry (the resolver).
pub struct Checks {
    upstreams: Vec<Weak<Upstream>>,
    resolver: Arc<dyn Resolve>,
}

impl fmt::Debug for Checks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checks")
            .field("upstreams", &self.upstreams.len())
            .finish_non_exhaustive()
    }
}

impl Checks {
    /// Checks for every server of these upstreams that have `[health]`.
    pub fn new(upstreams: &[Arc<Upstream>], resolver: Arc<dyn Resolve>) -> Self {
        Checks {
            upstreams: upstreams.iter().map(Arc::downgrade).collect(),
            resolver,
        }
    }

    /// Starts one task per checked server: the first check at once, then one every
    /// `interval`. The tasks end when `stop` is cancelled (draining starts) or the
    /// upstream is dropped (a reload replaced it).
    pub fn spawn(self, stop: &CancellationToken) {
        for weak in &self.upstreams {
            let Some(up) = weak.upgrade() else { continue };
            for (index, server) in up.servers.iter().enumerate() {
                let Some(cfg) = server.health.settings().cloned() else {
                    continue;
                };
                if server.on_demand().is_some() {
                    // A check would start the backend, or keep it from ever stopping.
                    tracing::info!(upstream = %up.name, server = %server.addr,
                        "no active health checks for an on-demand server");
                    continue;
                }
                tokio::spawn(check_loop(
                    weak.clone(),
                    index,
                    cfg,
                    self.resolver.clone(),
                    stop.clone(),
                ));
            }
        }
    }
}

async fn check_loop(
    upstream: Weak<Upstream>,
    index: usize,
    cfg: Health,
    resolver: Arc<dyn Resolve>,
    stop: CancellationToken,
) {
    // A check slower than `interval` delays the next one instead of bunching them.
    let mut ticks = tokio::time::interval(cfg.interval.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // Held only for the check: between checks a replaced upstream can be freed.
        let Some(up) = upstream.upgrade() else { return };
        let Some(server) = up.servers.get(index) else {
            return;
        };
        let result = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = check(&up.name, server, &cfg, &resolver) => r,
        };
        if let Err(reason) = &result {
            tracing::debug!(upstream = %up.name, server = %server.addr, %reason, "health check failed");
        }
        server.health.record_check(result);
    }
}

/// One check of one server within `cfg.timeout`: an HTTP `GET path` that must answer
/// 2xx or 3xx when `path` is set, else a connect. `Err` says why it failed.
pub async fn check(
    upstream: &str,
    server: &Server,
    cfg: &Health,
    resolver: &Arc<dyn Resolve>,
) -> Result<(), String> {
    let started = Instant::now();
    // A new connection, never from the pool: a check must not take a pooled connection
    // from a request, nor keep one alive. Its socket lives for one exchange, so
    // keepalive probes would never fire.
    let tcp = TcpOptions {
        nodelay: true,
        keepalive: None,
    };
    let connected = server
        .dial(upstream, cfg.timeout, resolver, tcp)
        .await
        .map_err(|e| e.describe(&server.addr.to_string()))?;
    let Some(path) = &cfg.path else {
        return Ok(());
    };
    let host = server.host_header.to_str().unwrap_or("localhost");
    let left = cfg.timeout.saturating_sub(started.elapsed());
    match timeout(left, http_check(connected.stream, path, host)).await {
        Ok(verdict) => verdict,
        Err(_) => Err(format!(
            "GET {path}: no response head within {}ms",
            cfg.timeout.as_millis()
        )),
    }
}

/// The longest response head a check reads: health pages answer small heads.
const MAX_CHECK_HEAD: usize = 16 * 1024;

/// `GET path` with `Connection: close`; the verdict comes from the final response's
/// status (interim 1xx heads are skipped). The body is not read: the connection is
/// dropped after the head.
async fn http_check(mut stream: Stream, path: &str, host: &str) -> Result<(), String> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tidegate-health-check\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    let io_err =
        |what: &str, e: &io::Error| format!("GET {path}: {what}: {}", describe_io_error(e));
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_err("sending the request", &e))?;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        if let Some(end) = find_head_end(&buf) {
            let status = parse_status(&buf[..end])
                .ok_or_else(|| format!("GET {path}: the answer is not an HTTP/1.x response"))?;
            match status {
                // 101 was not asked for: a failure like any other non-2xx/3xx.
                100..=199 if status != 101 => {
                    buf.drain(..end);
                    continue;
                }
                200..=399 => return Ok(()),
                _ => return Err(format!("GET {path} answered {status}")),
            }
        }
        if buf.len() > MAX_CHECK_HEAD {
            return Err(format!(
                "GET {path}: response head over {} KiB",
                MAX_CHECK_HEAD / 1024
            ));
        }
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| io_err("reading the response", &e))?;
        if n == 0 {
            return Err(format!(
                "GET {path}: connection closed before the response head"
            ));
        }
    }
}

/// The length of the first head in `buf`, its blank line included.
pub(crate) fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The status code of `HTTP/1.x NNN ...`.
pub(crate) fn parse_status(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let (&minor, rest) = rest.split_first()?;
    let rest = rest.strip_prefix(b" ")?;
    let code = rest.get(..3)?;
    if !minor.is_ascii_digit() || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Exactly three digits: then the reason phrase's space, or the end of the line.
    if !matches!(rest.get(3), None | Some(b' ' | b'\r' | b'\n')) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Result<(), String> {
        Err("connection refused (ECONNREFUSED)".to_owned())
    }

    fn run(mut s: Active, results: &[Result<(), String>], rise: u32, fall: u32) -> Active {
        for r in results {
            s = s.next(r.clone(), rise, fall);
        }
        s
    }

    const START: Active = Active::Unknown {
        passes: 0,
        fails: 0,
    };

    #[test]
    fn unknown_becomes_up_after_rise_consecutive_passes() {
        let s = run(START, &[Ok(())], 2, 3);
        assert_eq!(s.state(), HealthState::Unknown);
        let s = run(s, &[Ok(())], 2, 3);
        assert_eq!(s.state(), HealthState::Up);
    }

    #[test]
    fn unknown_becomes_down_after_fall_consecutive_failures() {
        let s = run(START, &[refused(), refused()], 2, 3);
        assert_eq!(s.state(), HealthState::Unknown);
        let s = run(s, &[refused()], 2, 3);
        assert_eq!(
            s,
            Active::Down {
                fails: 3,
                passes: 0,
                reason: "connection refused (ECONNREFUSED)".into()
            }
        );
    }

    #[test]
    fn a_pass_resets_the_failure_streak_of_an_up_server() {
        let up = run(START, &[Ok(()), Ok(())], 2, 3);
        let s = run(
            up,
            &[refused(), refused(), Ok(()), refused(), refused()],
            2,
            3,
        );
        assert_eq!(s, Active::Up { fails: 2 });
        let s = run(s, &[refused()], 2, 3);
        assert_eq!(s.state(), HealthState::Down);
    }

    #[test]
    fn down_comes_back_up_after_rise_passes_and_a_failure_restarts_the_count() {
        let down = run(START, &[refused(), refused(), refused()], 2, 3);
        let s = run(down, &[Ok(()), refused(), Ok(())], 2, 3);
        assert_eq!(s.state(), HealthState::Down, "{s:?}");
        let s = run(s, &[Ok(())], 2, 3);
        assert_eq!(s, Active::Up { fails: 0 });
    }

    #[test]
    fn rise_and_fall_of_one_switch_at_each_result() {
        let s = run(START, &[refused()], 1, 1);
        assert_eq!(s.state(), HealthState::Down);
        let s = run(s, &[Ok(())], 1, 1);
        assert_eq!(s.state(), HealthState::Up);
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
        assert_eq!(inner_at(&h).passive.streak(), 3);
    }

    #[test]
    fn after_the_cooldown_one_more_failure_ejects_again() {
        let h = ServerHealth::new(None);
        let t0 = Instant::now();
        for _ in 0..3 {
            record_at(&h, Outcome::ConnectFailed, t0);
        }
        let t11 = t0 + Duration::from_secs(11);
        assert_eq!(
            record_at(&h, Outcome::ConnectFailed, t11).as_deref(),
            Some("4 consecutive connect failures")
        );
        assert!(!inner_at(&h).is_available(t11));
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
        });
        h.record(Outcome::ServerError);
        assert!(!h.is_available());
        assert!(h.describe().starts_with("ejected for "), "{}", h.describe());
        assert!(h.describe().ends_with("ms (1 consecutive server error)"));
        assert_eq!(h.snapshot().ejections, 1);
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/2 200"), None);
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2x0 OK"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r\nbody"), Some(19));
    }
}
