//! A stream's silence timer: one timer for the stream's whole life, not one armed and dropped per
//! frame. Activity only records the time; when the timer fires before the stream was quiet for
//! the whole period, it moves to the period's true end and keeps waiting.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

pub struct Quiet {
    period: Duration,
    last: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl Quiet {
    /// Silence is counted from now.
    pub fn new(period: Duration) -> Self {
        let last = Instant::now();
        Self {
            period,
            last,
            sleep: Box::pin(tokio::time::sleep_until(last + period)),
        }
    }

    /// The stream was active now.
    pub fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// Resolves once nothing touched the timer for `period`, and counts the next silence from
    /// then. Cancel-safe: dropping it before it resolves loses nothing.
    pub async fn elapsed(&mut self) {
        loop {
            self.sleep.as_mut().await;
            let due = self.last + self.period;
            if Instant::now() >= due {
                self.touch();
                self.sleep.as_mut().reset(self.last + self.period);
                return;
            }
            self.sleep.as_mut().reset(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_only_after_a_whole_quiet_period() {
        let start = Instant::now();
        let mut q = Quiet::new(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(7)).await;
        q.touch();
        q.elapsed().await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(17),
            "7 s, then 10 quiet"
        );
        // The next silence counts from when it fired.
        q.elapsed().await;
        assert_eq!(start.elapsed(), Duration::from_secs(27));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_wait_loses_nothing() {
        let start = Instant::now();
        let mut q = Quiet::new(Duration::from_secs(10));
        let cut = tokio::time::timeout(Duration::from_secs(4), q.elapsed()).await;
        assert!(cut.is_err());
        q.elapsed().await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }
}
