//! A time-based sliding window of call counts, kept in buckets.
//!
//! The window is cut into [`BUCKETS`] buckets; a bucket older than the window is reset when the
//! clock reaches its slot again. So "the failure rate over 30s" always means the last 30s (to
//! within one bucket, 3s here), not a counter that resets every 30s and forgets a storm that
//! straddles the reset.

use std::time::Duration;

use tokio::time::Instant;

/// Buckets per window.
pub const BUCKETS: u64 = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    slot: u64,
    calls: u32,
    failures: u32,
    slow: u32,
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
#[derive(Debug, Clone)]
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
            buckets: [Bucket::default(); BUCKETS as usize],
        }
    }

    /// The window's length.
    pub fn length(&self) -> Duration {
        self.bucket * BUCKETS as u32
    }

    fn slot(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_nanos() / self.bucket.as_nanos()) as u64
    }

    /// Counts one call at `now`.
    pub fn record(&mut self, failure: bool, slow: bool, now: Instant) {
        let slot = self.slot(now);
        let b = &mut self.buckets[(slot % BUCKETS) as usize];
        if b.slot != slot || b.calls == 0 {
            *b = Bucket {
                slot,
                ..Bucket::default()
            };
        }
        b.calls += 1;
        b.failures += u32::from(failure);
        b.slow += u32::from(slow);
    }

    /// Totals of the buckets still inside the window at `now`.
    pub fn totals(&self, now: Instant) -> Totals {
        let current = self.slot(now);
        self.buckets
            .iter()
            .filter(|b| b.calls > 0 && b.slot <= current && current - b.slot < BUCKETS)
            .fold(Totals::default(), |t, b| Totals {
                calls: t.calls + b.calls,
                failures: t.failures + b.failures,
                slow: t.slow + b.slow,
            })
    }

    /// Forgets every call.
    pub fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out_bucket_by_bucket() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(10), t0);
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
        let mut w = Window::new(Duration::from_secs(10), t0);
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
}
