//! The active-check state machine: what a server's checks saw, as `unknown`, `up` or
//! `down` ([`HealthState`]). One `match` (`Active::next`), a pure function of the old
//! state, the check's result and `rise`/`fall`; the checker tasks feed it through
//! [`ServerHealth::record_check`](super::ServerHealth::record_check).

use std::fmt;

/// The active-check verdict on a server: its health `up | down | unknown` (docs/design.md,
/// "Vocabulary of states").
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

/// The active state machine. Counters are consecutive results; `fails` in `Down` is the
/// streak that took (or keeps) it down, shown in [`ServerHealth::describe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Active {
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

impl Active {
    pub(super) fn state(&self) -> HealthState {
        match self {
            Active::Unknown { .. } => HealthState::Unknown,
            Active::Up { .. } => HealthState::Up,
            Active::Down { .. } => HealthState::Down,
        }
    }

    /// Every transition of the active state machine.
    pub(super) fn next(self, result: Result<(), String>, rise: u32, fall: u32) -> Active {
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
}
