//! The retry budget: retries may not exceed a share of requests, over a sliding window.
//!
//! Every request deposits `ratio` of a token; a retry withdraws one whole token. On top of that,
//! `min_per_second` tokens accrue per second, continuously, starting with one second's worth so
//! that a process that just started can retry its first failures. Deposits and withdrawals
//! older than the window expire. So with a backend failing every request, attempts stay below
//! `requests x (1 + ratio) + min_per_second x (seconds + 1)`: a brown-out is not multiplied
//! into an outage by retries.
//!
//! Every request deposits, so deposits are lock-free: an atomic add to the current second's
//! slot (a slot is reset under the lock once a second). Withdrawals, one per retry, take the
//! lock, so that two retries racing for the last token cannot both get it and the bound holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// The window retries and requests are counted over.
pub const WINDOW: Duration = Duration::from_secs(10);
const SLOTS: usize = 10;

#[derive(Debug, Default)]
struct Slot {
    /// The second (+1; 0 = unused) this slot counts.
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
    turn: Mutex<()>,
}

impl RetryBudget {
    /// An empty budget starting at `now`.
    pub fn new(ratio: f64, min_per_second: u32, now: Instant) -> Self {
        Self {
            ratio,
            min_per_second: f64::from(min_per_second),
            epoch: now,
            slots: Default::default(),
            turn: Mutex::new(()),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.turn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot of `second`, reset first if it still holds an older second. The caller holds
    /// the lock when `locked`.
    fn slot(&self, second: u64, locked: bool) -> &Slot {
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        if slot.second.load(Ordering::Acquire) != second + 1 {
            let _turn = (!locked).then(|| self.lock());
            if slot.second.load(Ordering::Acquire) != second + 1 {
                slot.requests.store(0, Ordering::Relaxed);
                slot.retries.store(0, Ordering::Relaxed);
                slot.second.store(second + 1, Ordering::Release);
            }
        }
        slot
    }

    /// Counts one request.
    pub fn deposit(&self, now: Instant) {
        self.slot(self.second(now), false)
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry token if the budget allows; false means "do not retry".
    pub fn withdraw(&self, now: Instant) -> bool {
        let _turn = self.lock();
        let elapsed = now.saturating_duration_since(self.epoch);
        let second = elapsed.as_secs();
        let (requests, retries) = self
            .slots
            .iter()
            .filter(|s| {
                let counted = s.second.load(Ordering::Acquire);
                counted > 0 && counted - 1 <= second && counted - 1 + SLOTS as u64 > second
            })
            .fold((0u64, 0u64), |(r, t), s| {
                (
                    r + s.requests.load(Ordering::Relaxed),
                    t + s.retries.load(Ordering::Relaxed),
                )
            });
        let accrued =
            self.min_per_second * (elapsed + Duration::from_secs(1)).min(WINDOW).as_secs_f64();
        let tokens = self.ratio * requests as f64 + accrued - retries as f64;
        if tokens >= 1.0 {
            self.slot(second, true)
                .retries
                .fetch_add(1, Ordering::Relaxed);
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
}
