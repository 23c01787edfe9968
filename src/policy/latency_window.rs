//! A route's recent latency percentiles, for hedging after "p95" rather than a fixed delay.
//!
//! Attempt latencies go into log-spaced buckets (25% apart, 1ms to about 70s), counted over
//! the current and the previous [`PERIOD`], so a percentile follows the partner within 20s and
//! never rests on a single second. No lock: a record is one atomic add (plus, on the first
//! call of a new period, resetting the older generation with a compare-and-swap, as the retry
//! budget does). A percentile sums at most 2 x [`BUCKETS`] counters and answers the bucket's
//! upper bound, so it errs at most 25% long: a hedge sent a little late, never early.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How long one generation counts.
pub const PERIOD: Duration = Duration::from_secs(10);
/// Buckets per generation; the last one holds everything slower.
pub const BUCKETS: usize = 52;
/// Fewer samples than this in the window: no percentile (too little to trust).
pub const MIN_SAMPLES: u64 = 20;
const GROWTH: f64 = 1.25;
const FIRST: Duration = Duration::from_millis(1);
/// The tag of a generation being reset.
const ROLLING: u64 = u64::MAX;

#[derive(Debug)]
struct Generation {
    /// The period (+1; 0 = unused; [`ROLLING`]: being reset) it counts.
    period: AtomicU64,
    counts: [AtomicU64; BUCKETS],
}

impl Default for Generation {
    fn default() -> Self {
        Self {
            period: AtomicU64::new(0),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct LatencyWindow {
    epoch: Instant,
    generations: [Generation; 2],
}

impl LatencyWindow {
    /// An empty window starting at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            epoch: now,
            generations: Default::default(),
        }
    }

    fn period(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs() / PERIOD.as_secs()
    }

    /// Counts one latency.
    pub fn record(&self, latency: Duration, now: Instant) {
        let period = self.period(now);
        let generation = &self.generations[(period % 2) as usize];
        let tag = period + 1;
        let seen = generation.period.load(Ordering::Acquire);
        if seen != tag {
            if seen == ROLLING || seen > tag {
                // Another call is resetting it, or it already counts a later period: drop
                // this one sample rather than wait.
                return;
            }
            if generation
                .period
                .compare_exchange(seen, ROLLING, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                return;
            }
            for count in &generation.counts {
                count.store(0, Ordering::Relaxed);
            }
            generation.period.store(tag, Ordering::Release);
        }
        generation.counts[bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `quantile` (0-1) of the latencies of this period and the one before, as its
    /// bucket's upper bound; `None` with fewer than [`MIN_SAMPLES`].
    pub fn quantile(&self, quantile: f64, now: Instant) -> Option<Duration> {
        let current = self.period(now) + 1;
        let mut totals = [0u64; BUCKETS];
        for generation in &self.generations {
            let tag = generation.period.load(Ordering::Acquire);
            if tag == ROLLING || tag + 1 < current || tag > current {
                continue;
            }
            for (total, count) in totals.iter_mut().zip(&generation.counts) {
                *total += count.load(Ordering::Relaxed);
            }
        }
        let samples: u64 = totals.iter().sum();
        if samples < MIN_SAMPLES {
            return None;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * samples as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, total) in totals.iter().enumerate() {
            seen += total;
            if seen >= rank {
                return Some(upper_bound(i));
            }
        }
        Some(upper_bound(BUCKETS - 1))
    }
}

/// The bucket of `latency`: 0 for up to 1ms, then 25% wider each.
fn bucket(latency: Duration) -> usize {
    let ratio = latency.as_secs_f64() / FIRST.as_secs_f64();
    if ratio <= 1.0 {
        return 0;
    }
    let index = ratio.ln() / GROWTH.ln();
    (index.ceil() as usize).min(BUCKETS - 1)
}

fn upper_bound(bucket: usize) -> Duration {
    FIRST.mul_f64(GROWTH.powi(bucket as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_latencies() {
        for ms in [0u64, 1, 2, 7, 50, 51, 999, 5_000, 60_000] {
            let latency = Duration::from_millis(ms);
            let b = bucket(latency);
            assert!(upper_bound(b) >= latency, "{ms}ms in bucket {b}");
            if b > 0 && b < BUCKETS - 1 {
                assert!(upper_bound(b - 1) < latency, "{ms}ms fits a lower bucket");
            }
        }
        assert_eq!(bucket(Duration::from_secs(3600)), BUCKETS - 1);
    }

    #[test]
    fn the_percentile_follows_the_samples_within_a_bucket() {
        let t0 = Instant::now();
        let w = LatencyWindow::new(t0);
        assert_eq!(w.quantile(0.95, t0), None, "no samples");
        // 94 fast answers, 6 slow ones: p95 is slow, p90 fast.
        for i in 0..100 {
            let ms = if i < 94 { 10 } else { 400 };
            w.record(Duration::from_millis(ms), t0);
        }
        let p95 = w.quantile(0.95, t0).unwrap();
        assert!(p95 >= Duration::from_millis(400) && p95 <= Duration::from_millis(500));
        let p90 = w.quantile(0.90, t0).unwrap();
        assert!(p90 >= Duration::from_millis(10) && p90 <= Duration::from_millis(13));
    }

    #[test]
    fn old_periods_expire_and_too_few_samples_give_none() {
        let t0 = Instant::now();
        let w = LatencyWindow::new(t0);
        for _ in 0..50 {
            w.record(Duration::from_millis(300), t0);
        }
        // Still counted in the next period.
        let next = t0 + PERIOD;
        for _ in 0..50 {
            w.record(Duration::from_millis(5), next);
        }
        assert!(w.quantile(0.99, next).unwrap() >= Duration::from_millis(300));
        // Two periods on, the slow ones are gone.
        let later = t0 + PERIOD * 2;
        for _ in 0..30 {
            w.record(Duration::from_millis(5), later);
        }
        assert!(w.quantile(0.99, later).unwrap() <= Duration::from_millis(7));
        // A quiet window: nothing recent enough to trust.
        assert_eq!(w.quantile(0.5, t0 + PERIOD * 10), None);
        let sparse = LatencyWindow::new(t0);
        for _ in 0..(MIN_SAMPLES - 1) {
            sparse.record(Duration::from_millis(5), t0);
        }
        assert_eq!(sparse.quantile(0.5, t0), None);
    }
}
