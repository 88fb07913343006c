//! The on-demand state machine (`Supervisor::step`) under random event sequences.
//!
//! `step` is pure but for the clock (tokio's, paused here) and the pool it empties, so
//! it is driven directly, with no process: a small model of the world plays the life
//! task (it sends exactly the events the life task sends in each state, as `life`,
//! `wait_ready` and `serve` do), the requests (`ensure_ready`'s first look and its
//! `Demand`), the exchanges (`Usage`), time, and tidegate's stop (`stop_by`). After
//! every action the invariants of the module's documentation are checked against what
//! the model saw happen.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::{Event, Pool};
use super::{OnDemandError, OnDemandState, Shared, State, Step, Supervisor, Usage};
use tidegate_config::UpstreamAddr;

const IDLE_STOP: Duration = Duration::from_millis(300);

/// What happens next in the world.
#[derive(Debug, Clone)]
enum Action {
    /// A request: connects if `ready`, else asks for a start (`Demand`).
    Request,
    /// An exchange begins (`Upstream::pick` acquires a `Usage`).
    Acquire,
    /// The exchange `n % count` ends.
    Release(usize),
    /// The life task takes its next step; `choice` picks among the ones possible now
    /// (spawned or spawn failed; accepting or start failed; crash or idle stop; ...).
    Life(u8),
    /// Time passes.
    Advance(Duration),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => Just(Action::Request),
        1 => Just(Action::Acquire),
        2 => any::<usize>().prop_map(Action::Release),
        8 => any::<u8>().prop_map(Action::Life),
        3 => prop::sample::select(&[10u64, 300, 1_000, 5_000, 40_000][..])
            .prop_map(|ms| Action::Advance(Duration::from_millis(ms))),
    ]
}

/// A process of the model's world.
#[derive(Debug)]
struct Process {
    pid: u32,
    /// Accepted a connection (readiness).
    accepting: bool,
    /// Got SIGTERM (or SIGKILL).
    signalled: bool,
}

/// What the world has seen: the one thing the invariants are checked against.
#[derive(Debug, Default)]
struct World {
    /// Live processes (reaped ones are removed).
    processes: Vec<Process>,
    /// Life tasks running.
    lives: usize,
    next_pid: u32,
    /// `stop_by` was called.
    closing: bool,
}

fn supervisor() -> Arc<Supervisor> {
    let cfg = tidegate_config::OnDemand {
        command: vec!["app".into()],
        env: Vec::new(),
        cwd: ".".into(),
        ready_timeout: Duration::from_secs(1),
        idle_stop: IDLE_STOP,
        stop_timeout: Duration::from_secs(1),
    };
    let addr = UpstreamAddr::Unix("/nonexistent/tidegate-proptest.sock".into());
    Supervisor::new(
        "app",
        &addr,
        &cfg,
        Arc::new(Pool::new(0, Duration::from_secs(1))),
    )
}

/// The transitions of the module's diagram (and the two that stay in a state).
fn allowed(from: OnDemandState, to: OnDemandState) -> bool {
    use OnDemandState::*;
    from == to
        || matches!(
            (from, to),
            (Stopped | Failed, Starting)
                | (Starting, Ready | Failed | Stopping)
                | (Ready, Stopping | Stopped)
                | (Stopping, Starting | Stopped)
        )
}

/// Applies `event` as the life task does (under the lock) and checks what the
/// transition must respect.
fn step(s: &Supervisor, world: &World, event: Event) -> Result<Step, TestCaseError> {
    let mut sh = s.lock();
    let before = sh.state.clone();
    let attempts = sh.attempts;
    let result = s.step(&mut sh, event);
    check_transition(&before, &sh, attempts, world)?;
    Ok(result)
}

fn check_transition(
    before: &State,
    after: &Shared,
    attempts_before: u64,
    world: &World,
) -> Result<(), TestCaseError> {
    let (from, to) = (before.public(), after.state.public());
    prop_assert!(allowed(from, to), "{:?} -> {:?}", before, after.state);
    if to == OnDemandState::Stopping && from != OnDemandState::Stopping {
        prop_assert!(
            after.in_use == 0 || world.closing,
            "stopping with {} exchanges in use, outside shutdown",
            after.in_use
        );
    }
    let entered_start = matches!(after.state, State::Starting { pid: None, .. })
        && !matches!(before, State::Starting { pid: None, .. });
    if entered_start {
        prop_assert!(!world.closing, "a start after tidegate began stopping");
        prop_assert_eq!(
            after.attempts,
            attempts_before + 1,
            "each start is one attempt"
        );
    } else {
        prop_assert_eq!(after.attempts, attempts_before);
    }
    Ok(())
}

/// The state agrees with the world after every action.
fn check_state(s: &Supervisor, world: &World, usages: &[Usage]) -> Result<(), TestCaseError> {
    let sh = s.lock();
    prop_assert!(
        world.processes.len() <= 1,
        "two processes: {:?}",
        world.processes
    );
    prop_assert!(world.lives <= 1, "two life tasks");
    let has_life = matches!(
        sh.state,
        State::Starting { .. } | State::Ready { .. } | State::Stopping { .. }
    );
    prop_assert_eq!(world.lives == 1, has_life, "life task vs {:?}", sh.state);
    let process = world.processes.first();
    prop_assert_eq!(
        sh.state.process().map(|(pid, _)| pid),
        process.map(|p| p.pid),
        "the state's process is the live one"
    );
    if let State::Ready { .. } = sh.state {
        let p = process.expect("checked above");
        prop_assert!(p.accepting && !p.signalled, "ready with {:?}", p);
    }
    prop_assert_eq!(sh.in_use, usages.len());
    Ok(())
}

/// The life task's next step from the current state, as `life` does it; `choice`
/// picks among the steps possible now. Nothing when it waits (for a timer, say).
fn life(s: &Supervisor, world: &mut World, choice: u8) -> Result<(), TestCaseError> {
    if world.lives == 0 {
        return Ok(());
    }
    let (state, in_use, last_used, closing_due) = {
        let sh = s.lock();
        let due = sh.closing.is_some_and(|at| at <= Instant::now());
        (sh.state.clone(), sh.in_use, sh.last_used, due)
    };
    match state {
        State::Starting { pid: None, .. } => {
            if choice % 8 == 0 {
                // `spawn` failed: no process.
                step(
                    s,
                    world,
                    Event::StartFailed {
                        reason: "spawn failed".into(),
                    },
                )?;
                world.lives -= 1;
            } else {
                prop_assert!(
                    world.processes.is_empty(),
                    "spawning beside {:?}",
                    world.processes
                );
                world.next_pid += 1;
                let pid = world.next_pid;
                world.processes.push(Process {
                    pid,
                    accepting: false,
                    signalled: false,
                });
                step(s, world, Event::Spawned { pid })?;
            }
        }
        State::Starting { pid: Some(_), .. } => {
            if closing_due && choice % 2 == 0 {
                // `wait_ready` sees tidegate's stop: SIGTERM, and the exit comes later.
                // (It may also see the process accept or fail first.)
                step(s, world, Event::Shutdown)?;
                world.processes[0].signalled = true;
            } else if choice % 5 == 0 {
                // Exited before accepting, or `ready_timeout` (killed): reaped first.
                world.processes.clear();
                step(
                    s,
                    world,
                    Event::StartFailed {
                        reason: "exited".into(),
                    },
                )?;
                world.lives -= 1;
            } else {
                world.processes[0].accepting = true;
                step(
                    s,
                    world,
                    Event::Accepting {
                        took: Duration::ZERO,
                    },
                )?;
            }
        }
        State::Ready { .. } => {
            let idle_due = in_use == 0 && Instant::now() >= last_used + IDLE_STOP;
            if choice % 5 == 1 {
                // Crashed (`serve` looks at the exit first).
                world.processes.clear();
                step(
                    s,
                    world,
                    Event::Exited {
                        how: "status 1".into(),
                    },
                )?;
                end_or_go_on(s, world);
            } else if closing_due {
                step(s, world, Event::Shutdown)?;
                world.processes[0].signalled = true;
            } else if idle_due && choice % 2 == 0 {
                step(s, world, Event::IdleExpired)?;
                world.processes[0].signalled = true;
            }
        }
        State::Stopping { .. } => {
            prop_assert!(
                world.processes[0].signalled,
                "stopping a process never signalled"
            );
            if choice % 3 == 0 {
                // Still shutting down (within `stop_timeout`).
                return Ok(());
            }
            world.processes.clear();
            step(
                s,
                world,
                Event::Exited {
                    how: "signal 15 (SIGTERM)".into(),
                },
            )?;
            end_or_go_on(s, world);
        }
        State::Stopped | State::Failed { .. } => {
            prop_assert!(false, "a life task in {:?}", state);
        }
    }
    Ok(())
}

/// After an exit, the life task goes on only if a request restarted the backend.
fn end_or_go_on(s: &Supervisor, world: &mut World) {
    if !matches!(s.lock().state, State::Starting { .. }) {
        world.lives -= 1;
    }
}

/// A request, as `ensure_ready` takes its first look: connects when `ready`, else
/// demands a start and checks the answer.
fn request(s: &Supervisor, world: &mut World) -> Result<(), TestCaseError> {
    let (before, retry_at) = {
        let sh = s.lock();
        let retry_at = match &sh.state {
            State::Failed { retry_at, .. } => Some(*retry_at),
            _ => None,
        };
        (sh.state.clone(), retry_at)
    };
    if let State::Ready { .. } = before {
        let p = &world.processes[0];
        // The connection a request makes now goes to this process.
        prop_assert!(p.accepting && !p.signalled, "connecting to {:?}", p);
        return Ok(());
    }
    match step(s, world, Event::Demand)? {
        Step::Launch => {
            prop_assert!(
                matches!(before, State::Stopped | State::Failed { .. }),
                "launched from {:?}",
                before
            );
            prop_assert_eq!(world.lives, 0, "a second life task");
            world.lives += 1;
        }
        Step::Refused(OnDemandError::ShuttingDown) => {
            prop_assert!(world.closing);
            prop_assert!(
                !matches!(before, State::Starting { .. }),
                "a start in progress refused"
            );
        }
        Step::Refused(OnDemandError::BackingOff { retry_in, .. }) => {
            prop_assert!(!world.closing);
            let at = retry_at.expect("backing off outside failed");
            prop_assert!(Instant::now() < at && !retry_in.is_zero());
        }
        Step::Refused(other) => prop_assert!(false, "refused with {:?}", other),
        Step::Done => {
            // The demand is not lost: a start is under way, or is due after the exit.
            let sh = s.lock();
            prop_assert!(
                matches!(
                    sh.state,
                    State::Starting { .. } | State::Stopping { restart: true, .. }
                ),
                "demand dropped in {:?}",
                sh.state
            );
        }
    }
    Ok(())
}

/// Plays `actions`, with tidegate's stop (`Children::stop_by`, due at once) before the
/// one at `stop_at` if any, then brings the backend to rest.
async fn run(actions: Vec<Action>, stop_at: Option<usize>) -> Result<(), TestCaseError> {
    let s = supervisor();
    let mut world = World::default();
    let mut usages: Vec<Usage> = Vec::new();
    for (i, a) in actions.into_iter().enumerate() {
        if stop_at == Some(i) {
            world.closing = true;
            s.stop_by(Instant::now());
        }
        match a {
            Action::Request => request(&s, &mut world)?,
            Action::Acquire => usages.push(s.acquire()),
            Action::Release(n) => {
                if !usages.is_empty() {
                    let i = n % usages.len();
                    drop(usages.swap_remove(i));
                }
            }
            Action::Life(choice) => life(&s, &mut world, choice)?,
            // The runtime's clock is paused: only this moves it.
            Action::Advance(d) => tokio::time::advance(d).await,
        }
        check_state(&s, &world, &usages)?;
    }
    // However it went, the life task can always bring the backend to rest once
    // tidegate stops: no state waits forever on its own.
    world.closing = true;
    s.stop_by(Instant::now());
    usages.clear();
    for choice in 0..16u8 {
        life(&s, &mut world, choice)?;
        check_state(&s, &world, &usages)?;
    }
    let sh = s.lock();
    prop_assert!(
        matches!(sh.state, State::Stopped | State::Failed { .. }),
        "not at rest after tidegate's stop: {:?}",
        sh.state
    );
    prop_assert!(world.processes.is_empty() && world.lives == 0);
    Ok(())
}

proptest! {
    #![proptest_config(crate::proptests::config())]

    /// Random requests, exchanges, life-task steps, time and tidegate's stop: every
    /// transition is one of the diagram's, never two processes nor two life tasks, a
    /// connection only to a process that accepts and got no signal, stopping for
    /// idleness only with no exchange in use, no start once tidegate stops, no demand
    /// dropped, and every sequence ends at rest after tidegate's stop.
    #[test]
    fn the_state_machine_keeps_its_invariants(
        actions in prop::collection::vec(action(), 0..100),
        stop_at in prop::option::of(0usize..100),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime");
        rt.block_on(run(actions, stop_at))?;
    }
}
