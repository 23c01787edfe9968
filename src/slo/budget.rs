//! The live error budget: good and bad events in per-minute buckets, held in memory.
//!
//! A ring of one bucket per minute of the SLO window (28 days is 40 320 buckets of two
//! counters: bounded, about 0.6 MiB). It knows only what this process saw: "since process
//! start, up to the window". The Prometheus rules (`backstop rules`) compute the same numbers
//! across replicas and restarts.
//!
//! The request path takes no lock and scans nothing: an event is one atomic add to the
//! current minute's counters. Once a minute, the first event of the new minute closes the
//! old one into the ring under a short lock, and updates running totals for each tracked span
//! (the burn-rate windows and the SLO window), subtracting the minutes that left each span.
//! Readers (the gauge refresher, the admin API) combine those totals with the open minute,
//! touching only the few minutes that left a span since the last close. An event racing a
//! minute's close may count in the next minute.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    minute: u64,
    good: u64,
    bad: u64,
}

/// Per-minute good/bad counts over one SLO window.
#[derive(Debug)]
pub struct EventRing {
    epoch: Instant,
    /// Minute (+1; 0 before the first event) that `good` and `bad` are counting.
    open: AtomicU64,
    good: AtomicU64,
    bad: AtomicU64,
    closed: Mutex<Closed>,
}

/// The closed minutes and running totals over them.
#[derive(Debug)]
struct Closed {
    buckets: Vec<Bucket>,
    /// The newest closed minute (+1; 0 = none).
    last: u64,
    /// (span in minutes, totals of the closed minutes in (last - span, last]).
    totals: Vec<(u64, Counts)>,
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

    fn add(&mut self, b: &Bucket) {
        self.good += b.good;
        self.bad += b.bad;
    }

    fn sub(&mut self, b: &Bucket) {
        self.good = self.good.saturating_sub(b.good);
        self.bad = self.bad.saturating_sub(b.bad);
    }
}

impl Closed {
    fn bucket(&self, minute: u64) -> Option<&Bucket> {
        let b = &self.buckets[(minute % self.buckets.len() as u64) as usize];
        (b.minute == minute && (b.good > 0 || b.bad > 0)).then_some(b)
    }

    /// Closes `minute` with its counts; minutes between the last close and it had none.
    fn close(&mut self, minute: u64, counts: Bucket) {
        let last = self.last.checked_sub(1);
        for i in 0..self.totals.len() {
            let (span, mut total) = self.totals[i];
            if let Some(last) = last {
                // Minutes in (last - span, minute - span] leave this span.
                let from = (last + 1).saturating_sub(span);
                let to = (minute + 1).saturating_sub(span);
                if to.saturating_sub(from) >= span {
                    total = Counts::default();
                } else {
                    for m in from..to {
                        if let Some(b) = self.bucket(m) {
                            total.sub(b);
                        }
                    }
                }
            }
            total.add(&counts);
            self.totals[i] = (span, total);
        }
        let len = self.buckets.len() as u64;
        self.buckets[(minute % len) as usize] = Bucket { minute, ..counts };
        self.last = minute + 1;
    }

    /// Closed minutes in the `span` minutes ending with `current` (included).
    fn counts(&self, span: u64, current: u64) -> Counts {
        let Some(last) = self.last.checked_sub(1) else {
            return Counts::default();
        };
        let oldest = (current + 1).saturating_sub(span);
        if last < oldest {
            return Counts::default();
        }
        match self.totals.iter().find(|(s, _)| *s == span) {
            Some((_, total)) => {
                // The totals run up to `last`; drop what left the span since.
                let mut total = *total;
                for m in (last + 1).saturating_sub(span)..oldest {
                    if let Some(b) = self.bucket(m) {
                        total.sub(b);
                    }
                }
                total
            }
            None => {
                let mut total = Counts::default();
                for m in oldest..=last.min(current) {
                    if let Some(b) = self.bucket(m) {
                        total.add(b);
                    }
                }
                total
            }
        }
    }
}

impl EventRing {
    /// An empty ring covering `window` (at least one minute), keeping running totals for
    /// `spans` (and the whole window).
    pub fn new(window: Duration, spans: &[Duration], now: Instant) -> Self {
        let minutes = (window.as_secs() / 60).max(1);
        let mut totals: Vec<(u64, Counts)> = spans
            .iter()
            .map(|s| {
                (
                    s.as_secs().div_ceil(60).clamp(1, minutes),
                    Counts::default(),
                )
            })
            .collect();
        totals.push((minutes, Counts::default()));
        totals.dedup_by_key(|(s, _)| *s);
        Self {
            epoch: now,
            open: AtomicU64::new(0),
            good: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            closed: Mutex::new(Closed {
                buckets: vec![Bucket::default(); minutes as usize],
                last: 0,
                totals,
            }),
        }
    }

    fn minute(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs() / 60
    }

    fn lock(&self) -> MutexGuard<'_, Closed> {
        self.closed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one event at `now`: an atomic add, and once a minute a short close.
    pub fn record(&self, good: bool, now: Instant) {
        let minute = self.minute(now) + 1;
        if self.open.load(Ordering::Acquire) != minute {
            self.roll(minute);
        }
        let counter = if good { &self.good } else { &self.bad };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes the open minute and opens `minute` (+1).
    fn roll(&self, minute: u64) {
        let mut closed = self.lock();
        let open = self.open.load(Ordering::Acquire);
        if open >= minute {
            return;
        }
        let counts = Bucket {
            minute: 0,
            good: self.good.swap(0, Ordering::AcqRel),
            bad: self.bad.swap(0, Ordering::AcqRel),
        };
        if open > 0 && (counts.good > 0 || counts.bad > 0) {
            closed.close(open - 1, counts);
        }
        self.open.store(minute, Ordering::Release);
    }

    /// Events in the last `span` (whole minutes, the current one included).
    pub fn counts(&self, span: Duration, now: Instant) -> Counts {
        let current = self.minute(now);
        let closed = self.lock();
        let window = closed.buckets.len() as u64;
        let span = span.as_secs().div_ceil(60).clamp(1, window);
        let mut total = closed.counts(span, current);
        let open = self.open.load(Ordering::Acquire);
        if let Some(open) = open.checked_sub(1) {
            if open <= current && current - open < span {
                total.good += self.good.load(Ordering::Acquire);
                total.bad += self.bad.load(Ordering::Acquire);
            }
        }
        total
    }

    /// Share of the error budget left over the whole window: 1 - error_ratio / (1 - objective).
    /// 1 with no events; negative once the budget is overspent.
    pub fn budget_remaining(&self, objective: f64, now: Instant) -> f64 {
        let window = MINUTE * self.lock().buckets.len() as u32;
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
        let ring = EventRing::new(
            Duration::from_secs(28 * 24 * 3600),
            &[Duration::from_secs(300)],
            t0,
        );
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
        let ring = EventRing::new(Duration::from_secs(3600), &[Duration::from_secs(300)], t0);
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

    #[test]
    fn running_totals_agree_with_counting_every_event() {
        let t0 = Instant::now();
        let spans = [Duration::from_secs(300), Duration::from_secs(1800)];
        let ring = EventRing::new(Duration::from_secs(3 * 3600), &spans, t0);
        let mut events: Vec<(u64, bool)> = Vec::new();
        let mut seed = 7u64;
        let mut second = 0u64;
        for _ in 0..5000 {
            // A deterministic pseudo-random walk: bursts, quiet minutes, and long gaps.
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            second += match seed >> 60 {
                0 => 3600,
                1..=3 => 90,
                _ => seed >> 58 & 7,
            };
            let good = seed >> 40 & 3 != 0;
            ring.record(good, t0 + Duration::from_secs(second));
            events.push((second / 60, good));
            if seed >> 50 & 15 == 0 {
                let now = t0 + Duration::from_secs(second + (seed >> 20 & 255));
                let current = second.max(second + (seed >> 20 & 255)) / 60;
                for span in [5u64, 30, 180, 7] {
                    let expected = events
                        .iter()
                        .filter(|(m, _)| *m <= current && current - m < span)
                        .fold(Counts::default(), |mut c, (_, good)| {
                            if *good {
                                c.good += 1
                            } else {
                                c.bad += 1
                            }
                            c
                        });
                    let got = ring.counts(Duration::from_secs(span * 60), now);
                    assert_eq!(got, expected, "span {span}m at minute {current}");
                }
            }
        }
    }
}
