//! The circuit breaker: engine failures within a sliding window, tripping at a limit.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Stops restarting an engine after `limit` failures within `window`.
pub(crate) struct Breaker {
    limit: usize,
    window: Duration,
    failures: VecDeque<Instant>,
}

impl Breaker {
    pub(crate) fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit,
            window,
            failures: Default::default(),
        }
    }

    /// Records a failure; returns the reason when the breaker trips.
    pub(crate) fn trip(&mut self, now: Instant, last: &str) -> Option<String> {
        self.failures.push_back(now);
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.failures.pop_front();
        }
        (self.failures.len() >= self.limit).then(|| {
            format!(
                "circuit breaker open: {} engine failures within {} s; last: {last}",
                self.failures.len(),
                self.window.as_secs()
            )
        })
    }

    pub(crate) fn count(&self) -> u32 {
        self.failures.len() as u32
    }
}
