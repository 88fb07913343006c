//! On-demand backends (DESIGN.md F2, `[upstreams.NAME.on_demand]`): an upstream server
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
//!   is being stopped (the F2 failure); a request that arrives meanwhile waits for the
//!   exit, then for a new start.
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
//! Every child is forked by one long-lived thread ([`start_spawner`]), in its own process
//! group, with `PR_SET_PDEATHSIG = SIGKILL`: the kernel sends that signal when the
//! *thread* that forked the child exits, so forking from a tokio worker or blocking-pool
//! thread would kill children whenever tokio retires that thread. The spawner thread
//! lives as long as the process, so the signal fires exactly when tidegate dies — by
//! SIGKILL included. After setting it, the child checks that its parent is still
//! tidegate (it may have died between the fork and the `prctl`). Signals go to the whole
//! group (`killpg`); after the leader exits, the group is swept with SIGKILL. Each line a
//! child writes to stdout or stderr is logged with the upstream's name; the last lines
//! of stderr are repeated in the log when a start fails or the process dies.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tidegate_config::UpstreamAddr;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Child;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use super::connect::{self, Resolve};
use super::pool::Pool;
use super::Upstream;
use crate::endpoint::TcpOptions;
use crate::errno::{describe_errno, describe_io_error};

/// After the second failed start in a row, the next start is not tried before this; it
/// doubles with each further failure, up to [`RETRY_BACKOFF_MAX`]. (The first failure
/// has no back-off: the next request tries again at once.)
pub const RETRY_BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest back-off between failed starts.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Readiness polls: the first pause between connect attempts; it doubles up to
/// [`READY_POLL_MAX`].
const READY_POLL_FIRST: Duration = Duration::from_millis(5);
const READY_POLL_MAX: Duration = Duration::from_millis(100);
/// One readiness connect attempt's own limit (a TCP address that drops SYNs).
const READY_ATTEMPT_LIMIT: Duration = Duration::from_secs(1);
/// Lines of stderr kept for the log line of a failed start or a crash.
const STDERR_TAIL_LINES: usize = 10;
/// A longer output line is cut here (a child printing without newlines must not grow
/// tidegate's memory).
const MAX_LINE: usize = 4096;
/// After the process exited, how long its output pumps get to log the last lines (a
/// grandchild may hold the pipes open).
const OUTPUT_DRAIN: Duration = Duration::from_millis(200);
/// A waiter's bound beyond `stop_timeout + ready_timeout` (a request that arrives during
/// `stopping` waits for the exit, then the new start).
const WAIT_SLACK: Duration = Duration::from_secs(2);

/// An on-demand backend's state, as the admin API, metrics and logs name it
/// (DESIGN.md §6: `stopped | starting | ready | stopping | failed`).
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
            drop(s);
            // The life task re-arms the idle timer.
            self.supervisor.wake.notify_one();
        }
    }
}

/// The program to run and how.
#[derive(Debug)]
struct CommandSpec {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
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

/// How a readiness wait ended.
enum Readiness {
    Accepting(Duration),
    Exited(String),
    Failed(String),
    Closing,
}

/// How the `ready` phase ended.
enum Served {
    Exited(String),
    Stop,
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
            }),
            changed: watch::Sender::new(()),
            wake: Notify::new(),
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

    // === the life task ===

    /// Runs one process (or several, when a request restarts it during `stopping`) from
    /// `starting` until `stopped` or `failed`.
    async fn life(self: Arc<Self>, resolver: Arc<dyn Resolve>) {
        // Bounded: each turn is one process; a turn starts only on a demand during
        // `stopping`, and none after tidegate began stopping.
        loop {
            let mut proc = match self.spawn(&resolver).await {
                Ok(p) => p,
                Err(reason) => {
                    self.apply(Event::StartFailed { reason });
                    return;
                }
            };
            self.apply(Event::Spawned { pid: proc.pid });
            match self.wait_ready(&mut proc, &resolver).await {
                Readiness::Accepting(took) => {
                    self.apply(Event::Accepting { took });
                }
                Readiness::Failed(reason) => {
                    proc.signal_group(Signal::SIGKILL);
                    proc.wait().await;
                    proc.sweep();
                    self.start_failed(&mut proc, reason).await;
                    return;
                }
                Readiness::Exited(how) => {
                    proc.sweep();
                    let reason = format!("exited with {how} before accepting connections");
                    self.start_failed(&mut proc, reason).await;
                    return;
                }
                Readiness::Closing => {
                    self.apply(Event::Shutdown);
                    let how = self.stop(&mut proc).await;
                    proc.drain_output().await;
                    self.apply(Event::Exited { how });
                    return;
                }
            }
            let how = match self.serve(&mut proc).await {
                Served::Exited(how) => {
                    proc.sweep();
                    proc.drain_output().await;
                    let stderr = proc.stderr_tail();
                    if !stderr.is_empty() {
                        tracing::warn!(upstream = %self.upstream, server = %self.addr, pid = proc.pid,
                            stderr = ?stderr, "on-demand backend exited on its own; its last lines of stderr");
                    }
                    format!("exited on its own with {how}")
                }
                Served::Stop => {
                    let how = self.stop(&mut proc).await;
                    proc.drain_output().await;
                    how
                }
            };
            self.apply(Event::Exited { how });
            if !matches!(self.lock().state, State::Starting { .. }) {
                return;
            }
        }
    }

    /// Spawns the command on the spawner thread and starts its output pumps. Refuses
    /// when something already accepts on the server address: requests would reach that
    /// process, not ours.
    async fn spawn(&self, resolver: &Arc<dyn Resolve>) -> Result<Process, String> {
        let limit = self.ready_timeout.min(READY_ATTEMPT_LIMIT);
        if accepts(&self.addr, resolver, limit).await.is_ok() {
            return Err(format!(
                "{} already accepts connections before the command was started: another \
                 process serves this address",
                self.addr
            ));
        }
        let spawner = spawner().map_err(|e| {
            format!(
                "cannot start {:?}: no spawner thread: {e}",
                self.spec.program
            )
        })?;
        let (reply, answer) = oneshot::channel();
        let request = SpawnRequest {
            spec: self.spec.clone(),
            runtime: tokio::runtime::Handle::current(),
            reply,
        };
        spawner
            .send(request)
            .map_err(|_| "the spawner thread is gone".to_owned())?;
        let mut child = match answer.await {
            Ok(Ok(child)) => child,
            Ok(Err(e)) => {
                return Err(format!(
                    "cannot start {:?} (in {}): {}",
                    self.spec.program,
                    self.spec.cwd.display(),
                    describe_io_error(&e)
                ))
            }
            Err(_) => return Err("the spawner thread dropped the request".to_owned()),
        };
        let Some(pid) = child.id() else {
            return Err("the spawned process has no pid".to_owned());
        };
        let tail: Tail = Arc::default();
        let mut pumps = Vec::new();
        let name: Arc<str> = Arc::from(self.upstream.as_str());
        if let Some(out) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(out, name.clone(), pid, "stdout", None)));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(
                err,
                name,
                pid,
                "stderr",
                Some(tail.clone()),
            )));
        }
        Ok(Process {
            pid,
            child,
            exited: None,
            pumps,
            tail,
        })
    }

    /// Connects to the server address until it accepts, the process exits,
    /// `ready_timeout` passes, or tidegate's stop comes.
    async fn wait_ready(&self, proc: &mut Process, resolver: &Arc<dyn Resolve>) -> Readiness {
        let started = Instant::now();
        let deadline = started + self.ready_timeout;
        let mut pause = READY_POLL_FIRST;
        let mut last_error = String::new();
        // Bounded by `deadline`.
        loop {
            let now = Instant::now();
            if self.closing_due(now) {
                return Readiness::Closing;
            }
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return Readiness::Failed(format!(
                    "not accepting connections on {} within {} (ready_timeout){}",
                    self.addr,
                    human(self.ready_timeout),
                    match last_error.as_str() {
                        "" => String::new(),
                        e => format!("; last attempt: {e}"),
                    }
                ));
            }
            tokio::select! {
                biased;
                how = proc.wait() => return Readiness::Exited(how),
                r = accepts(&self.addr, resolver, left.min(READY_ATTEMPT_LIMIT)) => match r {
                    Ok(()) => return Readiness::Accepting(started.elapsed()),
                    Err(e) => last_error = e,
                },
            }
            tokio::select! {
                biased;
                how = proc.wait() => return Readiness::Exited(how),
                // tidegate's stop may have come.
                _ = self.wake.notified() => {}
                _ = sleep_until((Instant::now() + pause).min(deadline)) => {}
            }
            pause = (pause * 2).min(READY_POLL_MAX);
        }
    }

    /// `ready` until the process exits, nothing used it for `idle_stop`, or tidegate's
    /// stop comes. `Served::Stop` means the state is `stopping` now.
    async fn serve(&self, proc: &mut Process) -> Served {
        // Bounded: each turn ends with a wake-up, a timer or the exit.
        loop {
            let (idle_at, term_at) = {
                let s = self.lock();
                let idle_at = (s.in_use == 0).then(|| s.last_used + self.idle_stop);
                (idle_at, s.closing)
            };
            let now = Instant::now();
            tokio::select! {
                biased;
                how = proc.wait() => return Served::Exited(how),
                _ = sleep_until(term_at.unwrap_or(now)), if term_at.is_some() => {
                    self.apply(Event::Shutdown);
                    return Served::Stop;
                }
                _ = sleep_until(idle_at.unwrap_or(now)), if idle_at.is_some() => {
                    let mut s = self.lock();
                    // An exchange may have begun (and ended) since the timer was set.
                    if s.in_use == 0 && Instant::now() >= s.last_used + self.idle_stop {
                        self.step(&mut s, Event::IdleExpired);
                        return Served::Stop;
                    }
                }
                _ = self.wake.notified() => {}
            }
        }
    }

    /// SIGTERM to the group, SIGKILL after `stop_timeout`, reap, sweep the group.
    async fn stop(&self, proc: &mut Process) -> String {
        let started = Instant::now();
        proc.signal_group(Signal::SIGTERM);
        let how = tokio::select! {
            how = proc.wait() => format!(
                "exited with {how} {} after SIGTERM",
                human(started.elapsed())
            ),
            _ = sleep_until(started + self.stop_timeout) => {
                proc.signal_group(Signal::SIGKILL);
                let how = proc.wait().await;
                format!(
                    "still running {} after SIGTERM (stop_timeout): SIGKILL; {how}",
                    human(self.stop_timeout)
                )
            }
        };
        // The leader may exit before the rest of its group (a shell running the app as
        // its child): they got the same SIGTERM and get the rest of `stop_timeout` to
        // finish, as the leader did. Only then is what is left swept with SIGKILL.
        let deadline = started + self.stop_timeout;
        while Instant::now() < deadline && group_has_live_members(proc.pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proc.sweep();
        how
    }

    async fn start_failed(&self, proc: &mut Process, reason: String) {
        proc.drain_output().await;
        tracing::warn!(upstream = %self.upstream, server = %self.addr, pid = proc.pid, %reason,
            stderr = ?proc.stderr_tail(), "on-demand backend failed to start; its last lines of stderr");
        self.apply(Event::StartFailed { reason });
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

/// Whether `addr` accepts a connection now (closed at once). `Err` says why not.
async fn accepts(
    addr: &UpstreamAddr,
    resolver: &Arc<dyn Resolve>,
    limit: Duration,
) -> Result<(), String> {
    // A probe's socket lives for an instant: no keepalive probes.
    let tcp = TcpOptions {
        nodelay: true,
        keepalive: None,
    };
    let res = match addr {
        UpstreamAddr::Unix(path) => connect::connect_unix(path, limit).await,
        UpstreamAddr::Ip(a) => connect::connect_tcp(&[*a], limit, tcp).await,
        UpstreamAddr::Host { host, port } => {
            let started = Instant::now();
            match connect::resolve(resolver, host, *port, limit).await {
                Ok(addrs) => {
                    let left = limit.saturating_sub(started.elapsed());
                    connect::connect_tcp(&addrs, left, tcp).await
                }
                Err(e) => Err(e),
            }
        }
    };
    res.map(drop).map_err(|e| e.to_string())
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

/// Whether any process of the group `pgid` is still running (a zombie counts as gone:
/// orphans are not always reaped, PID 1 here does not). Reads `/proc`; if it can't, asks
/// the kernel whether the group exists at all.
fn group_has_live_members(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return killpg(self::pgid(pgid), None).is_ok();
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .any(|stat| {
            // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1);
            state.is_some_and(|s| s != "Z" && s != "X")
                && pgrp.and_then(|p| p.parse::<u32>().ok()) == Some(pgid)
        })
}

/// `status 3`, or `signal 9 (SIGKILL)`.
fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("status {code}");
    }
    match status.signal() {
        Some(sig) => match Signal::try_from(sig) {
            Ok(name) => format!("signal {sig} ({name})"),
            Err(_) => format!("signal {sig}"),
        },
        None => status.to_string(),
    }
}

fn pgid(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

// === Process ===

type Tail = Arc<Mutex<VecDeque<String>>>;

/// A spawned process group, owned by its life task. Dropped without having been reaped
/// (the runtime shut down under the task), it kills its group: no orphan either way.
struct Process {
    pid: u32,
    child: Child,
    /// How it ended, once reaped.
    exited: Option<String>,
    pumps: Vec<JoinHandle<()>>,
    tail: Tail,
}

impl Process {
    /// Waits for the exit and reaps it; cancel-safe. Returns how it ended.
    async fn wait(&mut self) -> String {
        if let Some(how) = &self.exited {
            return how.clone();
        }
        let how = match self.child.wait().await {
            Ok(status) => describe_exit(status),
            Err(e) => format!("an unknown status ({})", describe_io_error(&e)),
        };
        self.exited = Some(how.clone());
        how
    }

    /// Signals the whole group, while the leader has not been reaped (until then its
    /// pid cannot name another group).
    fn signal_group(&self, signal: Signal) {
        if self.exited.is_some() {
            return;
        }
        if let Err(errno) = killpg(pgid(self.pid), signal) {
            tracing::debug!(pid = self.pid, %signal, error = %describe_errno(errno), "cannot signal an on-demand backend's process group");
        }
    }

    /// After the leader exited: SIGKILL whatever is left of its group. The group's id
    /// stays taken while any member lives, so this reaches only those members.
    fn sweep(&self) {
        if killpg(pgid(self.pid), Signal::SIGKILL).is_ok() {
            tracing::debug!(
                pid = self.pid,
                "SIGKILL to what was left of an on-demand backend's process group"
            );
        }
    }

    /// Lets the output pumps log the last lines (bounded: a grandchild may hold the
    /// pipes open).
    async fn drain_output(&mut self) {
        let pumps = std::mem::take(&mut self.pumps);
        let all = futures_util::future::join_all(pumps);
        let _ = tokio::time::timeout(OUTPUT_DRAIN, all).await;
    }

    fn stderr_tail(&self) -> Vec<String> {
        lock_tail(&self.tail).iter().cloned().collect()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = killpg(pgid(self.pid), Signal::SIGKILL);
        }
    }
}

fn lock_tail(t: &Tail) -> MutexGuard<'_, VecDeque<String>> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// Logs each line of a child's stdout or stderr with the upstream's name; keeps the
/// last lines of stderr in `tail`. Ends at end of file.
async fn pump(
    pipe: impl AsyncRead + Unpin,
    upstream: Arc<str>,
    pid: u32,
    stream: &'static str,
    tail: Option<Tail>,
) {
    let mut reader = BufReader::new(pipe);
    let mut line: Vec<u8> = Vec::new();
    let emit = |line: &mut Vec<u8>| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        tracing::info!(upstream = %upstream, pid, stream, "{text}");
        if let Some(tail) = &tail {
            let mut t = lock_tail(tail);
            if t.len() == STDERR_TAIL_LINES {
                t.pop_front();
            }
            t.push_back(text.to_owned());
        }
        line.clear();
    };
    // Bounded by the pipe: it ends when every writer has closed it.
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let (take, newline) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..take.min(room)]);
        reader.consume(take);
        if newline {
            emit(&mut line);
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
}

// === the spawner thread ===

struct SpawnRequest {
    spec: Arc<CommandSpec>,
    /// The runtime the child is reaped on (tokio registers the child with it).
    runtime: tokio::runtime::Handle,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// Starts the thread that forks every on-demand backend, once per process; later calls
/// return the same. It never exits: its channel's sender lives in a static, so its
/// children's `PR_SET_PDEATHSIG` fires only when tidegate itself dies.
pub fn start_spawner() -> io::Result<()> {
    spawner().map(drop)
}

fn spawner() -> io::Result<&'static mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<SpawnRequest>, String>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("tidegate-spawner".to_owned())
                .spawn(move || serve_spawns(rx))
                .map(|_| tx)
                .map_err(|e| describe_io_error(&e))
        })
        .as_ref()
        .map_err(|e| io::Error::other(e.clone()))
}

fn serve_spawns(requests: mpsc::Receiver<SpawnRequest>) {
    let parent = Pid::this();
    // Ends only if every sender is gone, which the static prevents.
    while let Ok(req) = requests.recv() {
        let result = {
            let _runtime = req.runtime.enter();
            spawn_child(&req.spec, parent)
        };
        if let Err(Ok(child)) = req.reply.send(result) {
            // Nobody waits for it any more (the runtime is shutting down): don't leave it.
            if let Some(pid) = child.id() {
                let _ = killpg(pgid(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Forks and execs one backend (on the spawner thread).
fn spawn_child(spec: &CommandSpec, parent: Pid) -> io::Result<Child> {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // setpgid(0, 0) in the child: its own process group, so `killpg` reaches
        // everything it starts, and a Ctrl-C at tidegate's terminal does not reach it
        // (tidegate decides when its children stop).
        .process_group(0)
        .kill_on_drop(false);
    // `unsafe_code` is denied crate-wide; this is the one exception: `pre_exec` is the
    // only way to run `prctl` in the child between fork and exec.
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it calls prctl(2) and getppid(2) only,
    // allocates nothing (errors are raw OS errors), and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // tidegate may have died between the fork and the prctl: then the signal
            // will never come, so don't exec.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

// === Children ===

/// Every on-demand backend of a runtime: how the binary stops them when tidegate stops.
#[derive(Debug, Clone, Default)]
pub struct Children {
    supervisors: Vec<Arc<Supervisor>>,
}

impl Children {
    /// The on-demand servers of these upstreams.
    pub fn new(upstreams: &[Arc<Upstream>]) -> Children {
        Children {
            supervisors: upstreams
                .iter()
                .flat_map(|u| u.servers.iter())
                .filter_map(|s| s.on_demand().cloned())
                .collect(),
        }
    }

    /// No on-demand server at all.
    pub fn is_empty(&self) -> bool {
        self.supervisors.is_empty()
    }

    /// The longest `stop_timeout` among them (zero when there are none).
    pub fn longest_stop_timeout(&self) -> Duration {
        self.supervisors
            .iter()
            .map(|s| s.stop_timeout())
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Every running process (group leader).
    pub fn pids(&self) -> Vec<u32> {
        self.supervisors
            .iter()
            .filter_map(|s| s.snapshot().pid)
            .collect()
    }

    /// Stops every child by `deadline`, all in parallel: each gets SIGTERM at
    /// `deadline - its stop_timeout` (at once if that has passed), SIGKILL
    /// `stop_timeout` later. Nothing starts again. Returns at once; call again with
    /// `Instant::now()` to stop them now (the drain ended, SIGINT).
    pub fn stop_by(&self, deadline: Instant) {
        for s in &self.supervisors {
            s.stop_by(deadline);
        }
    }

    /// Returns when every child has exited and been reaped.
    pub async fn wait_stopped(&self) {
        futures_util::future::join_all(self.supervisors.iter().map(|s| s.wait_stopped())).await;
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

    #[test]
    fn exit_statuses_name_the_signal() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "status 3");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "signal 9 (SIGKILL)");
    }
}
