//! When to try a failed delivery again.

use std::time::Duration;

/// A retry schedule: the delay before each attempt after the first, with jitter.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Delay before attempt 2, 3, …; once exhausted the delivery fails permanently.
    pub delays: Vec<Duration>,
    /// Each delay is scaled by a factor in `[1 - jitter, 1 + jitter]`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// Immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h (±20 %): about
    /// three days of retries, the schedule Standard Webhooks senders use.
    fn default() -> Self {
        let s = Duration::from_secs;
        RetryPolicy {
            delays: vec![
                s(5),
                s(5 * 60),
                s(30 * 60),
                s(2 * 3600),
                s(5 * 3600),
                s(10 * 3600),
                s(14 * 3600),
                s(20 * 3600),
                s(24 * 3600),
            ],
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The wait after `attempts_made` failed attempts, or `None` when retries are exhausted.
    /// `unit` is a random number in `[0, 1)` chosen by the caller (keeps this pure).
    pub fn next_delay(&self, attempts_made: u32, unit: f64) -> Option<Duration> {
        let base = self.delays.get(attempts_made.checked_sub(1)? as usize)?;
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Some(base.mul_f64(factor.max(0.0)))
    }

    /// Total attempts including the first.
    pub fn max_attempts(&self) -> u32 {
        self.delays.len() as u32 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_schedule_with_bounded_jitter() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts(), 10);
        assert_eq!(p.next_delay(1, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(p.next_delay(2, 0.5), Some(Duration::from_secs(300)));
        assert_eq!(p.next_delay(9, 0.5), Some(Duration::from_secs(86_400)));
        assert_eq!(p.next_delay(10, 0.5), None, "retries exhausted");
        assert_eq!(p.next_delay(0, 0.5), None);
        assert_eq!(p.next_delay(2, 0.0), Some(Duration::from_secs(240)));
        assert_eq!(p.next_delay(2, 1.0), Some(Duration::from_secs(360)));
    }
}
