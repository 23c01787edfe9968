//! The retry budget: retries may not exceed a share of requests, over a sliding window.
//!
//! Every request deposits `ratio` of a token; a retry withdraws one whole token. On top of that,
//! `min_per_second` tokens accrue per second, continuously, starting with one second's worth so
//! that a process that just started can retry its first failures. Deposits and withdrawals
//! older than the window expire. So with a backend failing every request, attempts stay below
//! `requests x (1 + ratio) + min_per_second x (seconds + 1)`: a brown-out is not multiplied
//! into an outage by retries.

use std::time::Duration;

use tokio::time::Instant;

/// The window retries and requests are counted over.
pub const WINDOW: Duration = Duration::from_secs(10);
const SLOTS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    second: u64,
    requests: u64,
    retries: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: f64,
    epoch: Instant,
    slots: [Slot; SLOTS],
}

impl RetryBudget {
    /// An empty budget starting at `now`.
    pub fn new(ratio: f64, min_per_second: u32, now: Instant) -> Self {
        Self {
            ratio,
            min_per_second: f64::from(min_per_second),
            epoch: now,
            slots: [Slot::default(); SLOTS],
        }
    }

    fn slot(&mut self, now: Instant) -> &mut Slot {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let slot = &mut self.slots[(second % SLOTS as u64) as usize];
        if slot.second != second {
            *slot = Slot {
                second,
                ..Slot::default()
            };
        }
        slot
    }

    /// Counts one request.
    pub fn deposit(&mut self, now: Instant) {
        self.slot(now).requests += 1;
    }

    /// Takes one retry token if the budget allows; false means "do not retry".
    pub fn withdraw(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.epoch);
        let second = elapsed.as_secs();
        let live = |s: &Slot| s.second + SLOTS as u64 > second && s.second <= second;
        let (requests, retries) = self
            .slots
            .iter()
            .filter(|s| live(s))
            .fold((0u64, 0u64), |(r, t), s| (r + s.requests, t + s.retries));
        let accrued =
            self.min_per_second * (elapsed + Duration::from_secs(1)).min(WINDOW).as_secs_f64();
        let tokens = self.ratio * requests as f64 + accrued - retries as f64;
        if tokens >= 1.0 {
            self.slot(now).retries += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_ratio_and_min_per_second() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.2, 0, t0);
        for _ in 0..10 {
            b.deposit(t0);
        }
        assert!(b.withdraw(t0));
        assert!(b.withdraw(t0));
        assert!(!b.withdraw(t0), "20% of 10 requests is 2 retries");
    }

    #[test]
    fn min_per_second_starts_with_one_second_and_accrues() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.0, 5, t0);
        let granted = (0..10).filter(|_| b.withdraw(t0)).count();
        assert_eq!(granted, 5, "one second's worth at start");
        let later = t0 + Duration::from_secs(1);
        let granted = (0..10).filter(|_| b.withdraw(later)).count();
        assert_eq!(granted, 5, "five more a second later");
    }

    #[test]
    fn old_requests_and_retries_leave_the_window() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(1.0, 0, t0);
        b.deposit(t0);
        assert!(b.withdraw(t0));
        assert!(!b.withdraw(t0));
        let much_later = t0 + Duration::from_secs(25);
        assert!(!b.withdraw(much_later), "the old deposit expired");
        b.deposit(much_later);
        assert!(b.withdraw(much_later), "the old withdrawal expired too");
    }
}
