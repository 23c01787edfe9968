//! A time-based sliding window of call counts, kept in buckets of atomics.
//!
//! The window is cut into [`BUCKETS`] buckets; a bucket older than the window is reset when the
//! clock reaches its slot again. So "the failure rate over 30s" always means the last 30s (to
//! within one bucket, 3s here), not a counter that resets every 30s and forgets a storm that
//! straddles the reset.
//!
//! Recording takes no lock: a call is three relaxed atomic adds into the bucket of its slot. The
//! first call of a new slot resets the bucket it reuses: it marks the bucket [`ROLLING`] with a
//! compare-and-swap, zeroes the counts and publishes the new slot; a call that meets a bucket
//! being rolled waits for those three stores (no lock is held across anything else).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Buckets per window.
pub const BUCKETS: u64 = 10;

/// The slot tag of a bucket being reset by the first call of its new slot.
const ROLLING: u64 = u64::MAX;

#[derive(Debug, Default)]
struct Bucket {
    /// The slot counted, plus one (0: unused; [`ROLLING`]: being reset).
    slot: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

/// Totals over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Calls recorded.
    pub calls: u32,
    /// Of which failed.
    pub failures: u32,
    /// Of which were slow.
    pub slow: u32,
}

impl Totals {
    /// failures / calls, 0 when empty.
    pub fn failure_rate(&self) -> f64 {
        ratio(self.failures, self.calls)
    }

    /// slow / calls, 0 when empty.
    pub fn slow_rate(&self) -> f64 {
        ratio(self.slow, self.calls)
    }
}

fn ratio(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) / f64::from(whole)
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Window {
    epoch: Instant,
    bucket: Duration,
    buckets: [Bucket; BUCKETS as usize],
}

impl Window {
    /// An empty window of `length`, starting at `now`.
    pub fn new(length: Duration, now: Instant) -> Self {
        Self {
            epoch: now,
            bucket: (length / BUCKETS as u32).max(Duration::from_millis(1)),
            buckets: Default::default(),
        }
    }

    /// The window's length.
    pub fn length(&self) -> Duration {
        self.bucket * BUCKETS as u32
    }

    fn slot(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_nanos() / self.bucket.as_nanos()) as u64
    }

    /// The bucket of `slot`, reset first if it still counts an older slot. A late call whose
    /// bucket already counts a newer slot is counted there.
    fn bucket(&self, slot: u64) -> &Bucket {
        let b = &self.buckets[(slot % BUCKETS) as usize];
        let tag = slot + 1;
        loop {
            let seen = b.slot.load(Ordering::Acquire);
            if seen == ROLLING {
                // Another call is zeroing three counters: a few nanoseconds.
                std::thread::yield_now();
                continue;
            }
            if seen >= tag {
                return b;
            }
            if b.slot
                .compare_exchange(seen, ROLLING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                b.calls.store(0, Ordering::Relaxed);
                b.failures.store(0, Ordering::Relaxed);
                b.slow.store(0, Ordering::Relaxed);
                b.slot.store(tag, Ordering::Release);
                return b;
            }
        }
    }

    /// Counts one call at `now`.
    pub fn record(&self, failure: bool, slow: bool, now: Instant) {
        let b = self.bucket(self.slot(now));
        b.calls.fetch_add(1, Ordering::Relaxed);
        if failure {
            b.failures.fetch_add(1, Ordering::Relaxed);
        }
        if slow {
            b.slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Totals of the buckets still inside the window at `now`.
    pub fn totals(&self, now: Instant) -> Totals {
        let current = self.slot(now);
        self.buckets
            .iter()
            .filter(|b| {
                let tag = b.slot.load(Ordering::Acquire);
                tag != 0 && tag != ROLLING && tag - 1 <= current && current - (tag - 1) < BUCKETS
            })
            .fold(Totals::default(), |t, b| Totals {
                calls: t.calls + b.calls.load(Ordering::Relaxed),
                failures: t.failures + b.failures.load(Ordering::Relaxed),
                slow: t.slow + b.slow.load(Ordering::Relaxed),
            })
    }

    /// Forgets every call (the next call of each bucket resets it).
    pub fn clear(&self) {
        for b in &self.buckets {
            let _ = b
                .slot
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tag| {
                    (tag != ROLLING).then_some(0)
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out_bucket_by_bucket() {
        let t0 = Instant::now();
        let w = Window::new(Duration::from_secs(10), t0);
        w.record(true, false, t0);
        w.record(false, true, t0 + Duration::from_secs(5));
        assert_eq!(
            w.totals(t0 + Duration::from_secs(5)),
            Totals {
                calls: 2,
                failures: 1,
                slow: 1
            }
        );
        // The first bucket (0-1s) leaves the window at 10s; the second (5-6s) at 15s.
        assert_eq!(w.totals(t0 + Duration::from_secs(10)).calls, 1);
        assert_eq!(w.totals(t0 + Duration::from_secs(15)).calls, 0);
    }

    #[test]
    fn a_reused_slot_starts_from_zero() {
        let t0 = Instant::now();
        let w = Window::new(Duration::from_secs(10), t0);
        w.record(true, false, t0);
        w.record(false, false, t0 + Duration::from_secs(10));
        assert_eq!(
            w.totals(t0 + Duration::from_secs(10)),
            Totals {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn rates() {
        let t = Totals {
            calls: 4,
            failures: 1,
            slow: 2,
        };
        assert_eq!(t.failure_rate(), 0.25);
        assert_eq!(t.slow_rate(), 0.5);
        assert_eq!(Totals::default().failure_rate(), 0.0);
    }

    /// Many threads recording at once lose no call.
    #[test]
    fn concurrent_records_are_all_counted() {
        let t0 = Instant::now();
        let w = std::sync::Arc::new(Window::new(Duration::from_secs(10), t0));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for n in 0..10_000u32 {
                        // Spread over three buckets so rollovers race too.
                        let at = t0 + Duration::from_secs(u64::from((n + i) % 3));
                        w.record(n % 2 == 0, n % 5 == 0, at);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            w.totals(t0 + Duration::from_secs(2)),
            Totals {
                calls: 80_000,
                failures: 40_000,
                slow: 16_000
            }
        );
    }
}
