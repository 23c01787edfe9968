//! The live error budget: good and bad events in per-minute buckets, held in memory.
//!
//! A ring of one bucket per minute of the SLO window (28 days is 40 320 buckets of two
//! counters: bounded, about 0.3 MiB). Budget and burn rates are computed from it on demand.
//! It knows only what this process saw: "since process start, up to the window". The
//! Prometheus rules (`backstop rules`) compute the same numbers across replicas and restarts.

use std::time::Duration;

use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    minute: u64,
    good: u32,
    bad: u32,
}

/// Per-minute good/bad counts over one SLO window.
#[derive(Debug)]
pub struct EventRing {
    epoch: Instant,
    buckets: Vec<Bucket>,
}

/// Events over some span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Good events.
    pub good: u64,
    /// Bad events.
    pub bad: u64,
}

impl Counts {
    /// bad / all, 0 when empty.
    pub fn error_ratio(&self) -> f64 {
        let all = self.good + self.bad;
        if all == 0 {
            0.0
        } else {
            self.bad as f64 / all as f64
        }
    }
}

impl EventRing {
    /// An empty ring covering `window` (at least one minute).
    pub fn new(window: Duration, now: Instant) -> Self {
        let minutes = (window.as_secs() / 60).max(1) as usize;
        Self {
            epoch: now,
            buckets: vec![Bucket::default(); minutes],
        }
    }

    fn minute(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs() / 60
    }

    /// Counts one event at `now`.
    pub fn record(&mut self, good: bool, now: Instant) {
        let minute = self.minute(now);
        let len = self.buckets.len() as u64;
        let b = &mut self.buckets[(minute % len) as usize];
        if b.minute != minute || (b.good == 0 && b.bad == 0) {
            *b = Bucket {
                minute,
                good: 0,
                bad: 0,
            };
        }
        if good {
            b.good = b.good.saturating_add(1);
        } else {
            b.bad = b.bad.saturating_add(1);
        }
    }

    /// Events in the last `span` (whole minutes, the current one included).
    pub fn counts(&self, span: Duration, now: Instant) -> Counts {
        let current = self.minute(now);
        let minutes = (span.as_secs().div_ceil(60)).clamp(1, self.buckets.len() as u64);
        self.buckets
            .iter()
            .filter(|b| {
                b.minute <= current && current - b.minute < minutes && (b.good > 0 || b.bad > 0)
            })
            .fold(Counts::default(), |c, b| Counts {
                good: c.good + u64::from(b.good),
                bad: c.bad + u64::from(b.bad),
            })
    }

    /// Share of the error budget left over the whole window: 1 - error_ratio / (1 - objective).
    /// 1 with no events; negative once the budget is overspent.
    pub fn budget_remaining(&self, objective: f64, now: Instant) -> f64 {
        let window = MINUTE * self.buckets.len() as u32;
        1.0 - self.counts(window, now).error_ratio() / (1.0 - objective)
    }

    /// How fast the budget burns over `span`: error_ratio / (1 - objective). 1 means exactly
    /// spending the budget over the window.
    pub fn burn_rate(&self, objective: f64, span: Duration, now: Instant) -> f64 {
        self.counts(span, now).error_ratio() / (1.0 - objective)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_and_burn_rate() {
        let t0 = Instant::now();
        let mut ring = EventRing::new(Duration::from_secs(28 * 24 * 3600), t0);
        assert_eq!(ring.budget_remaining(0.999, t0), 1.0);
        for i in 0..1000 {
            ring.record(i % 500 != 0, t0);
        }
        // 2 bad in 1000 = 0.2% against a 0.1% budget: burning twice as fast, budget -100%.
        assert!((ring.burn_rate(0.999, Duration::from_secs(300), t0) - 2.0).abs() < 1e-9);
        assert!((ring.budget_remaining(0.999, t0) + 1.0).abs() < 1e-9);
    }

    #[test]
    fn short_windows_forget_old_minutes_and_the_ring_wraps() {
        let t0 = Instant::now();
        let mut ring = EventRing::new(Duration::from_secs(3600), t0);
        ring.record(false, t0);
        let later = t0 + Duration::from_secs(10 * 60);
        ring.record(true, later);
        assert_eq!(
            ring.counts(Duration::from_secs(300), later),
            Counts { good: 1, bad: 0 }
        );
        assert_eq!(
            ring.counts(Duration::from_secs(3600), later),
            Counts { good: 1, bad: 1 }
        );
        let wrapped = t0 + Duration::from_secs(61 * 60);
        ring.record(true, wrapped);
        assert_eq!(
            ring.counts(Duration::from_secs(3600), wrapped),
            Counts { good: 2, bad: 0 },
            "the first minute left the window"
        );
    }
}
