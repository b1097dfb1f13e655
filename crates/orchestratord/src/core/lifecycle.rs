//! A task's lifecycle as one enum whose variants carry their own timestamps: queued, running,
//! finished. Each moment is a [`Stamp`] (a monotonic instant for durations, wall-clock
//! milliseconds for the task record), so no state can hold a timestamp it has not reached and the
//! two clocks of one moment never disagree about whether it happened.

use std::time::Instant;

use api::task::TaskState;

/// One moment on both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// For durations (TTFT, decode, retention).
    pub at: Instant,
    /// For the task record (Unix milliseconds).
    pub ms: u64,
}

impl Stamp {
    /// `now` on the monotonic clock, paired with the wall clock read now.
    pub fn at(now: Instant) -> Self {
        Self {
            at: now,
            ms: daemon::now_ms(),
        }
    }
}

/// How a finished task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
    Canceled,
}

impl From<Outcome> for TaskState {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Completed => TaskState::Completed,
            Outcome::Failed => TaskState::Failed,
            Outcome::Canceled => TaskState::Canceled,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Waiting in a queue since `since`. `started_at` is kept from a first attempt that failed
    /// before its first token and sent the task back to the head of its queue.
    Queued {
        since: Stamp,
        started_at: Option<Stamp>,
    },
    /// Dispatched; `started_at` is the first attempt's start, kept across retries.
    Running {
        started_at: Stamp,
        first_token_at: Option<Stamp>,
    },
    Finished {
        outcome: Outcome,
        started_at: Option<Stamp>,
        first_token_at: Option<Stamp>,
        at: Stamp,
    },
}

impl Lifecycle {
    pub fn queued(since: Stamp) -> Self {
        Lifecycle::Queued {
            since,
            started_at: None,
        }
    }

    pub fn state(&self) -> TaskState {
        match self {
            Lifecycle::Queued { .. } => TaskState::Queued,
            Lifecycle::Running { .. } => TaskState::Running,
            Lifecycle::Finished { outcome, .. } => (*outcome).into(),
        }
    }

    /// When the task first left its queue for a dispatch attempt.
    pub fn started_at(&self) -> Option<Stamp> {
        match *self {
            Lifecycle::Queued { started_at, .. } | Lifecycle::Finished { started_at, .. } => {
                started_at
            }
            Lifecycle::Running { started_at, .. } => Some(started_at),
        }
    }

    pub fn first_token_at(&self) -> Option<Stamp> {
        match *self {
            Lifecycle::Queued { .. } => None,
            Lifecycle::Running { first_token_at, .. }
            | Lifecycle::Finished { first_token_at, .. } => first_token_at,
        }
    }

    pub fn finished_at(&self) -> Option<Stamp> {
        match *self {
            Lifecycle::Finished { at, .. } => Some(at),
            _ => None,
        }
    }

    /// A dispatch attempt starts (the first one sets `started_at`; a retry keeps it).
    pub fn run(&mut self, now: Stamp) {
        *self = match *self {
            Lifecycle::Queued { started_at, .. } => Lifecycle::Running {
                started_at: started_at.unwrap_or(now),
                first_token_at: None,
            },
            other => other,
        };
    }

    /// The attempt failed before its first token and the task waits again.
    pub fn requeue(&mut self, now: Stamp) {
        if let Lifecycle::Running { started_at, .. } = *self {
            *self = Lifecycle::Queued {
                since: now,
                started_at: Some(started_at),
            };
        }
    }

    /// Records the first token; true when this was it.
    pub fn first_token(&mut self, now: Stamp) -> bool {
        match self {
            Lifecycle::Running { first_token_at, .. } if first_token_at.is_none() => {
                *first_token_at = Some(now);
                true
            }
            _ => false,
        }
    }

    /// The task ends; a finished task stays as it ended.
    pub fn finish(&mut self, outcome: Outcome, now: Stamp) {
        if matches!(self, Lifecycle::Finished { .. }) {
            return;
        }
        *self = Lifecycle::Finished {
            outcome,
            started_at: self.started_at(),
            first_token_at: self.first_token_at(),
            at: now,
        };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn check(steps: &[&str], expected: (TaskState, bool, bool, bool)) {
        let t0 = Instant::now();
        let mut l = Lifecycle::queued(Stamp::at(t0));
        for (i, s) in steps.iter().enumerate() {
            let now = Stamp::at(t0 + Duration::from_millis(i as u64 + 1));
            match *s {
                "run" => l.run(now),
                "requeue" => l.requeue(now),
                "token" => {
                    l.first_token(now);
                }
                "complete" => l.finish(Outcome::Completed, now),
                "fail" => l.finish(Outcome::Failed, now),
                other => panic!("unknown step {other}"),
            }
        }
        let got = (
            l.state(),
            l.started_at().is_some(),
            l.first_token_at().is_some(),
            l.finished_at().is_some(),
        );
        assert_eq!(got, expected, "{steps:?}");
    }

    #[test]
    fn timestamps_follow_the_states() {
        check(&[], (TaskState::Queued, false, false, false));
        check(&["run"], (TaskState::Running, true, false, false));
        check(&["run", "token"], (TaskState::Running, true, true, false));
        check(&["run", "requeue"], (TaskState::Queued, true, false, false));
        check(
            &["run", "token", "complete"],
            (TaskState::Completed, true, true, true),
        );
        check(&["fail"], (TaskState::Failed, false, false, true));
        // A finished task stays as it ended.
        check(&["fail", "run"], (TaskState::Failed, false, false, true));
    }

    #[test]
    fn the_first_start_survives_a_retry() {
        let t0 = Instant::now();
        let mut l = Lifecycle::queued(Stamp::at(t0));
        let first = Stamp::at(t0 + Duration::from_millis(1));
        l.run(first);
        l.requeue(Stamp::at(t0 + Duration::from_millis(2)));
        l.run(Stamp::at(t0 + Duration::from_millis(3)));
        assert_eq!(l.started_at(), Some(first));
        assert!(l.first_token(Stamp::at(t0 + Duration::from_millis(4))));
        assert!(!l.first_token(Stamp::at(t0 + Duration::from_millis(5))));
    }
}
