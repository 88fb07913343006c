//! The life task of an on-demand backend: everything that takes time (spawn, readiness
//! polls, the idle timer, SIGTERM then SIGKILL, reaping), for one process after another
//! until `stopped` or `failed`. It feeds the state machine ([`Supervisor::step`]) its
//! events and never decides a transition itself.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tidegate_config::UpstreamAddr;
use tokio::sync::oneshot;
use tokio::time::{sleep_until, Instant};

use super::process::{group_has_live_members, pump, Process, Tail};
use super::spawner::{spawner, SpawnRequest};
use super::{human, Event, State, Supervisor};
use crate::endpoint::TcpOptions;
use crate::errno::describe_io_error;
use crate::upstream::connect::{self, Resolve};

/// Readiness polls: the first pause between connect attempts; it doubles up to
/// [`READY_POLL_MAX`].
const READY_POLL_FIRST: Duration = Duration::from_millis(5);
const READY_POLL_MAX: Duration = Duration::from_millis(100);
/// One readiness connect attempt's own limit (a TCP address that drops SYNs).
const READY_ATTEMPT_LIMIT: Duration = Duration::from_secs(1);
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

impl Supervisor {
    /// Runs one process (or several, when a request restarts it during `stopping`) from
    /// `starting` until `stopped` or `failed`.
    pub(super) async fn life(self: Arc<Self>, resolver: Arc<dyn Resolve>) {
        // Never two instances: the backend of the config before a reload goes first
        // (it is stopped once its exchanges end, by `shutdown_grace` at the latest).
        self.after_predecessor().await;
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
        Ok(Process::new(pid, child, pumps, tail))
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
