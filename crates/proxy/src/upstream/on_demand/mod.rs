//! On-demand backends (docs/on-demand.md, `[upstreams.NAME.on_demand]`): an upstream server
//! that is a command tidegate runs itself. It is stopped until its first request,
//! started once however many requests arrive together (single flight, as hyper-util's
//! `client/pool/singleton.rs`), and stopped when nothing has used it for `idle_stop`.
//!
//! # The state machine
//!
//! One [`Supervisor`] per on-demand server. Every transition is one arm of
//! `Supervisor::step`, taken under the supervisor's lock and logged:
//!
//! ```text
//!             demand                 accepting                idle_stop / shutdown
//!   stopped ─────────► starting ──────────────► ready ─────────────────────────► stopping
//!     ▲  ▲                │ start failed          │ exited (crash)                 │ exited
//!     │  │                ▼                       │                                │
//!     │  │             failed ◄─┐                 │        demand while stopping:  │
//!     │  │   demand after back-off: starting      │        starting again ◄────────┤
//!     │  └────────────────────────────────────────┘                                │
//!     └────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Invariants:
//! - At most one process per server. A process exists only in `starting` (once
//!   spawned), `ready` and `stopping`; in `stopped` and `failed` it has exited, been
//!   reaped, and its process group has been swept with SIGKILL.
//! - Connections are made only in `ready`: [`Supervisor::ensure_ready`] returns `Ok`
//!   only then, and `ready → stopping` is taken under the same lock, either with no
//!   exchange in use (idle) or at shutdown. So nothing ever connects to a process that
//!   is being stopped (docs/design.md, "Nothing connects to a stopping backend"); a
//!   request that arrives meanwhile waits for the exit, then for a new start.
//! - Every exchange holds a [`Usage`] from `Upstream::pick` until its `ActiveGuard`
//!   drops (the response body's end, a tunnel's end), so `idle_stop` counts from the end
//!   of the last exchange and an exchange in flight is never cut by an idle stop.
//! - One "life" task per process does everything that takes time (spawn, readiness
//!   polls, the idle timer, SIGTERM then SIGKILL, reaping). Waiters only watch the
//!   state: a client that goes away cannot cancel a start others are waiting for.
//! - Once [`Children::stop_by`] was called (tidegate is stopping), nothing starts again.
//!
//! # Processes
//!
//! One life task per process (`life.rs`) does the timing; `process.rs` signals and reaps
//! a process group and logs its output; every child is forked by one long-lived thread
//! (`spawner.rs`, [`start_spawner`]), the crate's one `unsafe` (a `pre_exec` hook). This
//! file holds the state machine: its states, events, `Supervisor::step` and snapshots.

mod life;
mod process;
mod spawner;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tidegate_config::UpstreamAddr;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connect::Resolve;
use super::pool::Pool;
pub use spawner::start_spawner;
use spawner::CommandSpec;

/// After the second failed start in a row, the next start is not tried before this; it
/// doubles with each further failure, up to [`RETRY_BACKOFF_MAX`]. (The first failure
/// has no back-off: the next request tries again at once.)
pub const RETRY_BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest back-off between failed starts.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A waiter's bound beyond `stop_timeout + ready_timeout` (a request that arrives during
/// `stopping` waits for the exit, then the new start).
const WAIT_SLACK: Duration = Duration::from_secs(2);

/// An on-demand backend's state, as the admin API, metrics and logs name it
/// (`stopped | starting | ready | stopping | failed`; docs/design.md, "Vocabulary of states").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnDemandState {
    /// No process; the next request starts one.
    Stopped,
    /// Spawned (or being spawned); waiting for the server address to accept.
    Starting,
    /// Accepting; requests are forwarded.
    Ready,
    /// SIGTERM sent (SIGKILL after `stop_timeout`); requests wait for the exit.
    Stopping,
    /// The last start failed; the next request tries again (after a back-off once it
    /// failed repeatedly).
    Failed,
}

impl OnDemandState {
    /// The name used in logs, the admin API and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            OnDemandState::Stopped => "stopped",
            OnDemandState::Starting => "starting",
            OnDemandState::Ready => "ready",
            OnDemandState::Stopping => "stopping",
            OnDemandState::Failed => "failed",
        }
    }
}

impl fmt::Display for OnDemandState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A read-only copy of an on-demand backend's state, for the admin API
/// (`tidegate_admin::api::OnDemandView`) and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDemandSnapshot {
    /// The state.
    pub state: OnDemandState,
    /// The process (group leader), while there is one.
    pub pid: Option<u32>,
    /// Since the process was spawned, while there is one.
    pub uptime: Option<Duration>,
    /// In `failed`: why the last start failed.
    pub last_failure: Option<String>,
    /// Exchanges using it now.
    pub in_use: usize,
}

/// Why a request cannot be forwarded to an on-demand backend. Answered with 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnDemandError {
    /// The start this request waited for failed.
    #[error("on-demand backend failed to start: {reason}")]
    StartFailed {
        /// Spawn error, exit before accepting, or `ready_timeout`.
        reason: String,
    },
    /// Starts failed repeatedly; the next one is not tried yet.
    #[error("on-demand backend failed to start: {reason}; next attempt in {}", human(*.retry_in))]
    BackingOff {
        /// Why the last start failed.
        reason: String,
        /// When the next request may try again.
        retry_in: Duration,
    },
    /// tidegate is stopping: a stopped backend is not started again.
    #[error("on-demand backend is not started again: tidegate is shutting down")]
    ShuttingDown,
    /// Starts are held (a binary upgrade: the previous tidegate's backend may still run)
    /// and were not released within the bound.
    #[error("on-demand backend not started: the previous tidegate process's backends were still running after {}", human(*.waited))]
    Held {
        /// How long the request waited.
        waited: Duration,
    },
    /// Waited longer than the stop and the start together could take (a bug guard).
    #[error("on-demand backend not ready after waiting {}", human(*.waited))]
    NotReady {
        /// How long the request waited.
        waited: Duration,
    },
}

/// Counts one exchange as using an on-demand backend while alive: the backend is not
/// stopped for idleness while any exists, and `idle_stop` counts from the last drop.
#[derive(Debug)]
pub struct Usage {
    supervisor: Arc<Supervisor>,
}

impl Drop for Usage {
    fn drop(&mut self) {
        let mut s = self.supervisor.lock();
        debug_assert!(s.in_use > 0, "a Usage dropped more often than acquired");
        s.in_use = s.in_use.saturating_sub(1);
        if s.in_use == 0 {
            s.last_used = Instant::now();
            let retiring = s.retiring;
            drop(s);
            if retiring {
                // A reload removed this server: its last exchange is over.
                self.supervisor.stop_by(Instant::now());
            }
            // The life task re-arms the idle timer.
            self.supervisor.wake.notify_one();
        }
    }
}

/// One on-demand server: its state machine and process.
#[derive(Debug)]
pub struct Supervisor {
    upstream: String,
    addr: UpstreamAddr,
    spec: Arc<CommandSpec>,
    ready_timeout: Duration,
    idle_stop: Duration,
    stop_timeout: Duration,
    /// The server's keep-alive pool: emptied when stopping starts, so the process sees
    /// no connection of ours once it gets SIGTERM.
    pool: Arc<Pool>,
    shared: Mutex<Shared>,
    /// Bumped after every change of `shared`; waiters watch it.
    changed: watch::Sender<()>,
    /// Wakes the life task: an exchange ended, or stopping was asked for.
    wake: Notify,
    /// The supervisor of the same address under the previous config (a reload that
    /// changed `[on_demand]`): its process must be gone before this one starts one, so
    /// that two instances never run at once.
    predecessor: Mutex<Option<Arc<Supervisor>>>,
    /// While set and not cancelled, nothing is started ([`Children::hold_starts`]).
    hold: Mutex<Option<CancellationToken>>,
}

#[derive(Debug)]
struct Shared {
    state: State,
    /// Exchanges holding a [`Usage`].
    in_use: usize,
    /// When `in_use` last fell to 0, or the backend became ready.
    last_used: Instant,
    /// Failed starts in a row (for the back-off).
    failures: u32,
    /// Starts so far; a waiter remembers the one it waits for.
    attempts: u64,
    /// Set once tidegate stops: when the process gets SIGTERM. No start after it is set.
    closing: Option<Instant>,
    /// A reload removed this server: stop the backend once its last exchange ends.
    retiring: bool,
}

/// The states, with what each one knows. `since` is when the process was spawned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Stopped,
    Starting {
        attempt: u64,
        pid: Option<u32>,
        since: Instant,
    },
    Ready {
        pid: u32,
        since: Instant,
    },
    Stopping {
        pid: u32,
        since: Instant,
        /// A request arrived meanwhile: start again once it exited.
        restart: bool,
    },
    Failed {
        attempt: u64,
        reason: String,
        retry_at: Instant,
    },
}

/// What happens to a backend.
#[derive(Debug)]
enum Event {
    /// A request needs it ready.
    Demand,
    /// The command was spawned.
    Spawned { pid: u32 },
    /// The server address accepted a connection.
    Accepting { took: Duration },
    /// Spawning failed, the process exited before accepting, or `ready_timeout` passed
    /// (the process is gone by now).
    StartFailed { reason: String },
    /// Nothing used it for `idle_stop`.
    IdleExpired,
    /// tidegate is stopping and this process's SIGTERM time came.
    Shutdown,
    /// The process exited and was reaped.
    Exited { how: String },
}

/// The outcome of a step, for the caller.
#[derive(Debug)]
enum Step {
    /// Transition taken, or nothing to do.
    Done,
    /// `starting` was entered from `stopped` or `failed`: the caller spawns the life task.
    Launch,
    /// A demand that cannot be met now.
    Refused(OnDemandError),
}

// === impl State ===

impl State {
    fn public(&self) -> OnDemandState {
        match self {
            State::Stopped => OnDemandState::Stopped,
            State::Starting { .. } => OnDemandState::Starting,
            State::Ready { .. } => OnDemandState::Ready,
            State::Stopping { .. } => OnDemandState::Stopping,
            State::Failed { .. } => OnDemandState::Failed,
        }
    }

    /// The process and when it was spawned, while there is one.
    fn process(&self) -> Option<(u32, Instant)> {
        match self {
            State::Starting {
                pid: Some(pid),
                since,
                ..
            }
            | State::Ready { pid, since }
            | State::Stopping { pid, since, .. } => Some((*pid, *since)),
            _ => None,
        }
    }
}

// === impl Supervisor ===

impl Supervisor {
    /// The supervisor of `addr`, the one server of on-demand upstream `upstream`. Starts
    /// the spawner thread if it is not running yet (so it exists from `Runtime::bind` on).
    pub fn new(
        upstream: &str,
        addr: &UpstreamAddr,
        cfg: &tidegate_config::OnDemand,
        pool: Arc<Pool>,
    ) -> Arc<Supervisor> {
        if let Err(e) = start_spawner() {
            tracing::error!(upstream, error = %e, "cannot start the thread that starts on-demand backends");
        }
        let (program, args) = match cfg.command.split_first() {
            Some((p, a)) => (p.clone(), a.to_vec()),
            // The validator requires a program; an empty one fails at spawn, with a reason.
            None => (String::new(), Vec::new()),
        };
        Arc::new(Supervisor {
            upstream: upstream.to_owned(),
            addr: addr.clone(),
            spec: Arc::new(CommandSpec {
                program,
                args,
                env: cfg.env.clone(),
                cwd: cfg.cwd.clone(),
            }),
            ready_timeout: cfg.ready_timeout,
            idle_stop: cfg.idle_stop,
            stop_timeout: cfg.stop_timeout,
            pool,
            shared: Mutex::new(Shared {
                state: State::Stopped,
                in_use: 0,
                last_used: Instant::now(),
                failures: 0,
                attempts: 0,
                closing: None,
                retiring: false,
            }),
            changed: watch::Sender::new(()),
            wake: Notify::new(),
            predecessor: Mutex::new(None),
            hold: Mutex::new(None),
        })
    }

    /// `stop_timeout`: SIGTERM to SIGKILL.
    pub fn stop_timeout(&self) -> Duration {
        self.stop_timeout
    }

    /// A copy of the state, for the admin API and metrics.
    pub fn snapshot(&self) -> OnDemandSnapshot {
        let s = self.lock();
        let process = s.state.process();
        OnDemandSnapshot {
            state: s.state.public(),
            pid: process.map(|(pid, _)| pid),
            uptime: process.map(|(_, since)| since.elapsed()),
            last_failure: match &s.state {
                State::Failed { reason, .. } => Some(reason.clone()),
                _ => None,
            },
            in_use: s.in_use,
        }
    }

    /// Counts an exchange as using the backend until the returned guard drops.
    pub fn acquire(self: &Arc<Self>) -> Usage {
        self.lock().in_use += 1;
        Usage {
            supervisor: self.clone(),
        }
    }

    /// Returns once the backend accepts connections: at once when `ready`; else starts
    /// it (one start for every concurrent caller) or waits for the stop in progress and
    /// then a new start. `Err` when the start this call waited for failed, during a
    /// back-off, or when tidegate is stopping. Cancel-safe: the start goes on without
    /// this caller.
    pub async fn ensure_ready(
        self: &Arc<Self>,
        resolver: &Arc<dyn Resolve>,
    ) -> Result<(), OnDemandError> {
        let bound = self.stop_timeout + self.ready_timeout + WAIT_SLACK;
        self.wait_hold(bound).await?;
        let deadline = Instant::now() + bound;
        let mut changed = self.changed.subscribe();
        // The start this caller waits for: a failure of that one (or a later one) is its
        // answer; an older failure is not.
        let mut joined: Option<u64> = None;
        loop {
            {
                let mut s = self.lock();
                match &s.state {
                    State::Ready { .. } => return Ok(()),
                    State::Failed {
                        attempt, reason, ..
                    } if joined.is_some_and(|j| *attempt >= j) => {
                        return Err(OnDemandError::StartFailed {
                            reason: reason.clone(),
                        })
                    }
                    _ => {}
                }
                match self.step(&mut s, Event::Demand) {
                    Step::Refused(e) => return Err(e),
                    Step::Launch => {
                        tokio::spawn(self.clone().life(resolver.clone()));
                    }
                    Step::Done => {}
                }
                if let State::Starting { attempt, .. } = s.state {
                    joined.get_or_insert(attempt);
                }
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in `self`: never closed while we hold `self`.
                Ok(Err(_)) | Err(_) => return Err(OnDemandError::NotReady { waited: bound }),
            }
        }
    }

    /// Waits (at most `bound`) while starts are held.
    async fn wait_hold(&self, bound: Duration) -> Result<(), OnDemandError> {
        let hold = {
            let h = self.hold.lock().unwrap_or_else(|e| e.into_inner());
            h.clone().filter(|t| !t.is_cancelled())
        };
        let Some(hold) = hold else {
            return Ok(());
        };
        tracing::info!(upstream = %self.upstream, server = %self.addr,
            "on-demand backend: waiting for the previous tidegate process's backends to exit before starting it");
        match tokio::time::timeout(bound, hold.cancelled()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(OnDemandError::Held { waited: bound }),
        }
    }

    /// tidegate is stopping: the process gets SIGTERM at `deadline - stop_timeout` (at
    /// once if that has passed) and SIGKILL `stop_timeout` later, so it is gone by
    /// `deadline` when it was far enough ahead. Nothing is started any more. A later
    /// call with an earlier deadline moves the stop up.
    pub fn stop_by(&self, deadline: Instant) {
        let now = Instant::now();
        let term_at = deadline
            .checked_sub(self.stop_timeout)
            .unwrap_or(now)
            .max(now);
        {
            let mut s = self.lock();
            let at = s.closing.map_or(term_at, |c| c.min(term_at));
            s.closing = Some(at);
        }
        self.wake.notify_one();
        self.changed.send_replace(());
    }

    /// A reload removed this server (or changed its `[on_demand]`): the backend is
    /// stopped as soon as no exchange uses it, and by `deadline` at the latest (as
    /// [`Supervisor::stop_by`]); nothing is started any more.
    pub fn retire(&self, deadline: Instant) {
        let idle = {
            let mut s = self.lock();
            s.retiring = true;
            s.in_use == 0
        };
        self.stop_by(if idle { Instant::now() } else { deadline });
    }

    /// This supervisor replaces `old` (same address, new `[on_demand]` settings): its
    /// first start waits until `old`'s process is gone.
    pub fn follow(&self, old: Arc<Supervisor>) {
        *self.predecessor.lock().unwrap_or_else(|e| e.into_inner()) = Some(old);
    }

    /// The address its backend listens on.
    pub fn addr(&self) -> &UpstreamAddr {
        &self.addr
    }

    /// Waits until the process of the supervisor this one replaced is gone.
    pub(super) async fn after_predecessor(&self) {
        let old = self
            .predecessor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(old) = old {
            old.wait_stopped().await;
        }
    }

    /// Returns when no process is left (`stopped` or `failed`).
    pub async fn wait_stopped(&self) {
        let mut changed = self.changed.subscribe();
        loop {
            if matches!(self.lock().state, State::Stopped | State::Failed { .. }) {
                return;
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Every critical section leaves `Shared` consistent; a poisoned lock still is.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn apply(&self, event: Event) -> Step {
        let mut s = self.lock();
        self.step(&mut s, event)
    }

    /// Every transition of the state machine.
    fn step(&self, s: &mut Shared, event: Event) -> Step {
        let now = Instant::now();
        let closing = s.closing.is_some();
        let why = self.describe(&event);
        let (next, step) = match (&s.state, event) {
            // Demand.
            (State::Starting { .. } | State::Ready { .. }, Event::Demand) => return Step::Done,
            (State::Stopping { restart: true, .. }, Event::Demand) if !closing => {
                return Step::Done
            }
            (State::Stopped | State::Failed { .. } | State::Stopping { .. }, Event::Demand)
                if closing =>
            {
                return Step::Refused(OnDemandError::ShuttingDown)
            }
            (
                State::Failed {
                    reason, retry_at, ..
                },
                Event::Demand,
            ) if now < *retry_at => {
                return Step::Refused(OnDemandError::BackingOff {
                    reason: reason.clone(),
                    retry_in: *retry_at - now,
                })
            }
            (State::Stopped | State::Failed { .. }, Event::Demand) => {
                s.attempts += 1;
                let next = State::Starting {
                    attempt: s.attempts,
                    pid: None,
                    since: now,
                };
                (next, Step::Launch)
            }
            (&State::Stopping { pid, since, .. }, Event::Demand) => {
                let next = State::Stopping {
                    pid,
                    since,
                    restart: true,
                };
                (next, Step::Done)
            }
            // Starting.
            (
                &State::Starting {
                    attempt, pid: None, ..
                },
                Event::Spawned { pid },
            ) => {
                let next = State::Starting {
                    attempt,
                    pid: Some(pid),
                    since: now,
                };
                (next, Step::Done)
            }
            (
                &State::Starting {
                    pid: Some(pid),
                    since,
                    ..
                },
                Event::Accepting { .. },
            ) => {
                s.failures = 0;
                s.last_used = now;
                (State::Ready { pid, since }, Step::Done)
            }
            (&State::Starting { attempt, .. }, Event::StartFailed { reason }) => {
                s.failures = s.failures.saturating_add(1);
                let next = State::Failed {
                    attempt,
                    reason,
                    retry_at: now + backoff(s.failures),
                };
                (next, Step::Done)
            }
            // Stopping.
            (&State::Ready { pid, since }, Event::IdleExpired) if s.in_use == 0 => {
                let next = State::Stopping {
                    pid,
                    since,
                    restart: false,
                };
                (next, Step::Done)
            }
            (
                &State::Ready { pid, since }
                | &State::Starting {
                    pid: Some(pid),
                    since,
                    ..
                },
                Event::Shutdown,
            ) => {
                let next = State::Stopping {
                    pid,
                    since,
                    restart: false,
                };
                (next, Step::Done)
            }
            (State::Ready { .. }, Event::Exited { .. }) => (State::Stopped, Step::Done),
            (State::Stopping { restart: true, .. }, Event::Exited { .. }) if !closing => {
                // The same life task starts the new process.
                s.attempts += 1;
                let next = State::Starting {
                    attempt: s.attempts,
                    pid: None,
                    since: now,
                };
                (next, Step::Done)
            }
            (State::Stopping { .. }, Event::Exited { .. }) => (State::Stopped, Step::Done),
            (state, event) => {
                debug_assert!(
                    false,
                    "on-demand: no transition from {state:?} on {event:?}"
                );
                tracing::error!(upstream = %self.upstream, server = %self.addr, state = ?state, event = ?event,
                    "on-demand backend: event ignored in this state (a bug)");
                return Step::Done;
            }
        };
        let stops =
            matches!(next, State::Stopping { .. }) && !matches!(s.state, State::Stopping { .. });
        debug_assert!(
            !stops || s.in_use == 0 || closing,
            "stopping with exchanges in flight, outside shutdown"
        );
        self.log_transition(&s.state, &next, &why, s.in_use);
        if stops {
            // No exchange is in use (or the grace is over): pooled connections are idle.
            self.pool.clear();
        }
        s.state = next;
        self.changed.send_replace(());
        step
    }

    fn describe(&self, event: &Event) -> String {
        match event {
            Event::Demand => "a request needs it".to_owned(),
            Event::Spawned { .. } => "spawned; waiting for it to accept connections".to_owned(),
            Event::Accepting { took } => {
                format!("accepting connections {} after the start", human(*took))
            }
            Event::StartFailed { reason } => reason.clone(),
            Event::IdleExpired => format!("unused for {} (idle_stop)", human(self.idle_stop)),
            Event::Shutdown => "tidegate is stopping".to_owned(),
            Event::Exited { how } => how.clone(),
        }
    }

    fn log_transition(&self, from: &State, to: &State, why: &str, in_use: usize) {
        let pid = to.process().or(from.process()).map(|(pid, _)| pid);
        let to_name = to.public().as_str();
        if from.public() == to.public() {
            // Starting → starting (spawned), stopping → stopping (restart asked).
            tracing::debug!(upstream = %self.upstream, server = %self.addr, state = to_name, pid, why, "on-demand backend");
            return;
        }
        let from_name = from.public().as_str();
        let crashed = matches!((from, to), (State::Ready { .. }, State::Stopped));
        if matches!(to, State::Failed { .. }) || crashed {
            tracing::warn!(upstream = %self.upstream, server = %self.addr, from = from_name, pid, why, "on-demand backend {to_name}");
        } else {
            tracing::info!(upstream = %self.upstream, server = %self.addr, from = from_name, pid, in_use, why, "on-demand backend {to_name}");
        }
    }

    fn closing_due(&self, now: Instant) -> bool {
        self.lock().closing.is_some_and(|at| at <= now)
    }
}

/// Back-off before the next start after `failures` failed ones in a row.
fn backoff(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => {
            let doublings = (n - 2).min(16);
            RETRY_BACKOFF_FIRST
                .saturating_mul(1 << doublings)
                .min(RETRY_BACKOFF_MAX)
        }
    }
}

/// `5s`, `1.5s`, `250ms`.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 && ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else if ms >= 1000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", ms.max(u128::from(!d.is_zero())))
    }
}

// === Children ===

/// Every on-demand backend of a runtime: how the binary stops them when tidegate stops.
/// Clones share one list, which a reload adds the backends of new servers to (those of
/// removed servers stay listed until the process exits, so none is left behind).
#[derive(Debug, Clone, Default)]
pub struct Children {
    supervisors: Arc<std::sync::Mutex<Vec<Arc<Supervisor>>>>,
}

impl Children {
    /// These supervisors (`Children::new` collects those of a runtime's upstreams).
    pub fn of(supervisors: Vec<Arc<Supervisor>>) -> Children {
        Children {
            supervisors: Arc::new(std::sync::Mutex::new(supervisors)),
        }
    }

    /// Adds the supervisors not listed yet (a reload's new servers), and forgets those
    /// of removed servers that nothing else holds and that run no process any more, so
    /// that many reloads do not pile them up.
    pub fn add(&self, more: Vec<Arc<Supervisor>>) {
        let mut list = self.supervisors.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|s| Arc::strong_count(s) > 1 || s.snapshot().pid.is_some());
        for s in more {
            if !list.iter().any(|l| Arc::ptr_eq(l, &s)) {
                list.push(s);
            }
        }
    }

    fn list(&self) -> Vec<Arc<Supervisor>> {
        self.supervisors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// No on-demand server at all.
    pub fn is_empty(&self) -> bool {
        self.list().is_empty()
    }

    /// The longest `stop_timeout` among them (zero when there are none).
    pub fn longest_stop_timeout(&self) -> Duration {
        self.list()
            .iter()
            .map(|s| s.stop_timeout())
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Every running process (group leader).
    pub fn pids(&self) -> Vec<u32> {
        self.list()
            .iter()
            .filter_map(|s| s.snapshot().pid)
            .collect()
    }

    /// Stops every child by `deadline`, all in parallel: each gets SIGTERM at
    /// `deadline - its stop_timeout` (at once if that has passed), SIGKILL
    /// `stop_timeout` later. Nothing starts again. Returns at once; call again with
    /// `Instant::now()` to stop them now (the drain ended, SIGINT).
    pub fn stop_by(&self, deadline: Instant) {
        for s in &self.list() {
            s.stop_by(deadline);
        }
    }

    /// Starts nothing until `release` is cancelled: a new process of a binary upgrade
    /// holds its on-demand backends while the old process's may still run (the same
    /// socket path or port), so two never run at once. A request meanwhile waits (for
    /// at most its usual bound, `stop_timeout + ready_timeout` and a little) before its
    /// start begins. Call before the runtime serves.
    pub fn hold_starts(&self, release: CancellationToken) {
        for s in &self.list() {
            *s.hold.lock().unwrap_or_else(|e| e.into_inner()) = Some(release.clone());
        }
    }

    /// Returns when every child has exited and been reaped.
    pub async fn wait_stopped(&self) {
        let list = self.list();
        futures_util::future::join_all(list.iter().map(|s| s.wait_stopped())).await;
    }

    /// [`Children::stop_by`] then [`Children::wait_stopped`].
    pub async fn stop_children(&self, deadline: Instant) {
        self.stop_by(deadline);
        self.wait_stopped().await;
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn supervisor() -> Arc<Supervisor> {
        let cfg = tidegate_config::OnDemand {
            command: vec!["app".into()],
            env: Vec::new(),
            cwd: ".".into(),
            ready_timeout: Duration::from_secs(1),
            idle_stop: Duration::from_secs(1),
            stop_timeout: Duration::from_secs(1),
        };
        let addr = UpstreamAddr::Unix("/tmp/tidegate-test-app.sock".into());
        Supervisor::new(
            "app",
            &addr,
            &cfg,
            Arc::new(Pool::new(0, Duration::from_secs(1))),
        )
    }

    fn state(s: &Supervisor) -> OnDemandState {
        s.snapshot().state
    }

    /// Demand, spawned as `pid`, accepting: `ready`.
    fn start(s: &Supervisor, pid: u32) {
        let mut sh = s.lock();
        assert!(matches!(s.step(&mut sh, Event::Demand), Step::Launch));
        s.step(&mut sh, Event::Spawned { pid });
        s.step(
            &mut sh,
            Event::Accepting {
                took: Duration::ZERO,
            },
        );
        assert_eq!(sh.state.public(), OnDemandState::Ready);
    }

    #[test]
    fn concurrent_demands_share_one_start() {
        let s = supervisor();
        let mut sh = s.lock();
        assert!(matches!(s.step(&mut sh, Event::Demand), Step::Launch));
        for _ in 0..50 {
            assert!(matches!(s.step(&mut sh, Event::Demand), Step::Done));
        }
        assert_eq!(sh.attempts, 1);
        drop(sh);
        assert_eq!(state(&s), OnDemandState::Starting);
    }

    #[test]
    fn a_demand_during_stopping_starts_it_again_after_the_exit() {
        let s = supervisor();
        start(&s, 42);
        let mut sh = s.lock();
        s.step(&mut sh, Event::IdleExpired);
        assert_eq!(sh.state.public(), OnDemandState::Stopping);
        // Waits: no launch (the life task that stops it starts the next process).
        assert!(matches!(s.step(&mut sh, Event::Demand), Step::Done));
        s.step(
            &mut sh,
            Event::Exited {
                how: "status 0".into(),
            },
        );
        assert!(
            matches!(sh.state, State::Starting { pid: None, .. }),
            "{:?}",
            sh.state
        );
    }

    #[test]
    fn without_demand_a_stopped_process_stays_stopped() {
        let s = supervisor();
        start(&s, 42);
        let mut sh = s.lock();
        s.step(&mut sh, Event::IdleExpired);
        s.step(
            &mut sh,
            Event::Exited {
                how: "status 0".into(),
            },
        );
        assert_eq!(sh.state, State::Stopped);
    }

    #[test]
    fn failed_starts_back_off_after_the_second() {
        let s = supervisor();
        for round in 1..=2 {
            let mut sh = s.lock();
            assert!(
                matches!(s.step(&mut sh, Event::Demand), Step::Launch),
                "round {round}"
            );
            s.step(
                &mut sh,
                Event::StartFailed {
                    reason: "boom".into(),
                },
            );
        }
        let mut sh = s.lock();
        match s.step(&mut sh, Event::Demand) {
            Step::Refused(OnDemandError::BackingOff { reason, retry_in }) => {
                assert_eq!(reason, "boom");
                assert!(retry_in <= RETRY_BACKOFF_FIRST && !retry_in.is_zero());
            }
            other => panic!("{other:?}"),
        }
        drop(sh);
        assert_eq!(s.snapshot().last_failure.as_deref(), Some("boom"));
    }

    #[test]
    fn once_tidegate_stops_nothing_starts() {
        let s = supervisor();
        s.stop_by(Instant::now());
        let mut sh = s.lock();
        assert!(matches!(
            s.step(&mut sh, Event::Demand),
            Step::Refused(OnDemandError::ShuttingDown)
        ));
        assert_eq!(sh.state, State::Stopped);
    }

    #[test]
    fn a_ready_backend_stops_for_tidegate_even_when_in_use() {
        let s = supervisor();
        start(&s, 42);
        let usage = s.acquire();
        s.stop_by(Instant::now());
        let mut sh = s.lock();
        s.step(&mut sh, Event::Shutdown);
        assert_eq!(
            sh.state.public(),
            OnDemandState::Stopping,
            "the grace is over"
        );
        // And is not started again after it exited, though a request waits.
        assert!(matches!(
            s.step(&mut sh, Event::Demand),
            Step::Refused(OnDemandError::ShuttingDown)
        ));
        s.step(
            &mut sh,
            Event::Exited {
                how: "signal 9 (SIGKILL)".into(),
            },
        );
        assert_eq!(sh.state, State::Stopped);
        drop(sh);
        drop(usage);
    }

    #[test]
    fn backoff_starts_after_the_second_failure_and_doubles_to_the_cap() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), RETRY_BACKOFF_FIRST);
        assert_eq!(backoff(3), RETRY_BACKOFF_FIRST * 2);
        assert_eq!(backoff(4), RETRY_BACKOFF_FIRST * 4);
        assert_eq!(backoff(40), RETRY_BACKOFF_MAX);
    }

    #[test]
    fn durations_read_like_the_config() {
        assert_eq!(human(Duration::from_secs(5)), "5s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_micros(10)), "1ms");
    }
}
