//! The retry budget: retries may not exceed a share of requests, over a sliding window.
//!
//! Every request deposits `ratio` of a token; a retry withdraws one whole token. On top of that,
//! `min_per_second` tokens accrue per second, continuously, starting with one second's worth so
//! that a process that just started can retry its first failures. Deposits and withdrawals
//! older than the window expire. So with a backend failing every request, attempts stay below
//! `requests x (1 + ratio) + min_per_second x (seconds + 1)`: a brown-out is not multiplied
//! into an outage by retries.
//!
//! No lock anywhere. A deposit is an atomic add to the current second's slot. A withdrawal
//! counts its retry first (an atomic add), then sums the window with that retry included and
//! takes it back if the budget is overdrawn: two retries racing for the last token cannot both
//! keep it, so the bound holds (under contention both may give it up; never both keep it).
//! The first call of a new second resets the slot it reuses: it marks the slot [`ROLLING`] with a
//! compare-and-swap, zeroes it and publishes the new second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The window retries and requests are counted over.
pub const WINDOW: Duration = Duration::from_secs(10);
const SLOTS: usize = 10;
/// The tag of a slot being reset.
const ROLLING: u64 = u64::MAX;

#[derive(Debug, Default)]
struct Slot {
    /// The second (+1; 0 = unused; [`ROLLING`]: being reset) this slot counts.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
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
            slots: Default::default(),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// The slot of `second`, reset first if it still holds an older second. A late call whose
    /// slot already counts a newer second is counted there.
    fn slot(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        let tag = second + 1;
        loop {
            let seen = slot.second.load(Ordering::Acquire);
            if seen == ROLLING {
                // Another call is zeroing two counters.
                std::thread::yield_now();
                continue;
            }
            if seen >= tag {
                return slot;
            }
            if slot
                .second
                .compare_exchange(seen, ROLLING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                slot.requests.store(0, Ordering::Relaxed);
                slot.retries.store(0, Ordering::Relaxed);
                slot.second.store(tag, Ordering::Release);
                return slot;
            }
        }
    }

    /// Counts one request.
    pub fn deposit(&self, now: Instant) {
        self.slot(self.second(now))
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry token if the budget allows; false means "do not retry".
    pub fn withdraw(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.epoch);
        let second = elapsed.as_secs();
        let mine = self.slot(second);
        mine.retries.fetch_add(1, Ordering::AcqRel);
        let (requests, retries) = self
            .slots
            .iter()
            .filter(|s| {
                let counted = s.second.load(Ordering::Acquire);
                counted > 0
                    && counted != ROLLING
                    && counted - 1 <= second
                    && counted - 1 + SLOTS as u64 > second
            })
            .fold((0u64, 0u64), |(r, t), s| {
                (
                    r + s.requests.load(Ordering::Relaxed),
                    t + s.retries.load(Ordering::Acquire),
                )
            });
        let accrued =
            self.min_per_second * (elapsed + Duration::from_secs(1)).min(WINDOW).as_secs_f64();
        // The same test as "a whole token is left before this retry".
        let before = retries.saturating_sub(1);
        if self.ratio * requests as f64 + accrued - before as f64 >= 1.0 {
            return true;
        }
        // Overdrawn: give the token back (never below zero, should the slot have been reset).
        let _ = mine
            .retries
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_ratio_and_min_per_second() {
        let t0 = Instant::now();
        let b = RetryBudget::new(0.2, 0, t0);
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
        let b = RetryBudget::new(0.0, 5, t0);
        let granted = (0..10).filter(|_| b.withdraw(t0)).count();
        assert_eq!(granted, 5, "one second's worth at start");
        let later = t0 + Duration::from_secs(1);
        let granted = (0..10).filter(|_| b.withdraw(later)).count();
        assert_eq!(granted, 5, "five more a second later");
    }

    #[test]
    fn old_requests_and_retries_leave_the_window() {
        let t0 = Instant::now();
        let b = RetryBudget::new(1.0, 0, t0);
        b.deposit(t0);
        assert!(b.withdraw(t0));
        assert!(!b.withdraw(t0));
        let much_later = t0 + Duration::from_secs(25);
        assert!(!b.withdraw(much_later), "the old deposit expired");
        b.deposit(much_later);
        assert!(b.withdraw(much_later), "the old withdrawal expired too");
    }

    /// Many threads withdrawing at once never get more than the budget, and the tokens they
    /// gave back under contention are still there afterwards: the total is exact.
    #[test]
    fn concurrent_withdrawals_never_overdraw() {
        let t0 = Instant::now();
        let b = std::sync::Arc::new(RetryBudget::new(0.5, 0, t0));
        for _ in 0..1000 {
            b.deposit(t0);
        }
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..200).filter(|_| b.withdraw(t0)).count())
            })
            .collect();
        let racing: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(racing <= 500, "{racing} retries granted for 500 tokens");
        let after = (0..1000).filter(|_| b.withdraw(t0)).count();
        assert_eq!(racing + after, 500, "50% of 1000 requests, exactly");
    }
}
