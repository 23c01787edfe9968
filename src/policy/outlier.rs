//! Passive outlier detection: take an endpoint that keeps failing out of rotation for a while.
//!
//! An endpoint with `consecutive_failures` failures in a row is ejected for
//! `base_ejection x (times ejected so far)`, capped at `max_ejection`, so a flapping endpoint
//! stays out longer each time. Never more than `max_ejected` of an upstream's endpoints are out
//! at once: when a whole pool fails, the breaker (not ejection) is the tool that should act,
//! and ejecting everything would leave nowhere to send even a probe.

//!
//! Lock-free on the request path: "may endpoint i receive traffic" is one atomic load (the end
//! of its ejection, in nanoseconds since the detector started) and recording a call is atomic
//! adds. Only the decision to eject, which must count the endpoints already out against
//! `max_ejected`, takes a lock; it is rare.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// A compiled `outlier_detection:` block.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection length; multiplied by the ejection count.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Largest share of endpoints out at once (0-1].
    pub max_ejected: f64,
}

#[derive(Debug, Default)]
struct EndpointState {
    consecutive: AtomicU32,
    /// Written under the lock only.
    ejections: AtomicU32,
    /// End of the current or last ejection in nanoseconds since `epoch`; 0: never ejected.
    ejected_until: AtomicU64,
}

/// An ejection that just happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// Endpoint index.
    pub endpoint: usize,
    /// How long.
    pub duration: Duration,
    /// How many times this endpoint has been ejected, this one included.
    pub count: u32,
    /// Failures in a row that caused it.
    pub consecutive_failures: u32,
}

/// The outlier state of one upstream's endpoints.
#[derive(Debug)]
pub struct OutlierDetector {
    config: OutlierConfig,
    epoch: Instant,
    endpoints: Vec<EndpointState>,
    /// Held while deciding an ejection, so that `max_ejected` holds under concurrency.
    turn: Mutex<()>,
}

impl OutlierDetector {
    /// No endpoint ejected; `now` is the start of its clock.
    pub fn new(config: OutlierConfig, endpoints: usize, now: Instant) -> Self {
        Self {
            config,
            epoch: now,
            endpoints: (0..endpoints).map(|_| EndpointState::default()).collect(),
            turn: Mutex::new(()),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        let n = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    fn until(&self, endpoint: usize) -> u64 {
        self.endpoints
            .get(endpoint)
            .map_or(0, |e| e.ejected_until.load(Ordering::Acquire))
    }

    /// Whether `endpoint` may receive traffic at `now`.
    pub fn is_available(&self, endpoint: usize, now: Instant) -> bool {
        let until = self.until(endpoint);
        until == 0 || self.nanos(now) >= until
    }

    /// Endpoints ejected at `now`.
    pub fn ejected(&self, now: Instant) -> Vec<usize> {
        (0..self.endpoints.len())
            .filter(|&i| !self.is_available(i, now))
            .collect()
    }

    /// When `endpoint`'s ejection ends, if it is ejected at `now`.
    pub fn ejected_until(&self, endpoint: usize, now: Instant) -> Option<Instant> {
        (!self.is_available(endpoint, now))
            .then(|| self.epoch + Duration::from_nanos(self.until(endpoint)))
    }

    /// Times `endpoint` has been ejected.
    pub fn ejections(&self, endpoint: usize) -> u32 {
        self.endpoints
            .get(endpoint)
            .map_or(0, |e| e.ejections.load(Ordering::Relaxed))
    }

    /// Most endpoints that may be out at once.
    fn cap(&self) -> usize {
        (self.config.max_ejected * self.endpoints.len() as f64).floor() as usize
    }

    /// Records one call's outcome at `endpoint`; returns the ejection it caused, if any.
    pub fn record(&self, endpoint: usize, failure: bool, now: Instant) -> Option<Ejection> {
        let e = self.endpoints.get(endpoint)?;
        if !failure {
            if e.consecutive.load(Ordering::Relaxed) != 0 {
                e.consecutive.store(0, Ordering::Relaxed);
            }
            return None;
        }
        let consecutive = e.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if consecutive < self.config.consecutive_failures || !self.is_available(endpoint, now) {
            return None;
        }
        let _turn = self.lock();
        // Decided again under the lock: another call may have ejected it, or another endpoint.
        if !self.is_available(endpoint, now) || self.ejected(now).len() >= self.cap() {
            return None;
        }
        let consecutive_failures = e.consecutive.swap(0, Ordering::Relaxed).max(consecutive);
        let count = e.ejections.load(Ordering::Relaxed) + 1;
        e.ejections.store(count, Ordering::Relaxed);
        let duration = self
            .config
            .base_ejection
            .saturating_mul(count)
            .min(self.config.max_ejection);
        let until = self.nanos(now + duration).max(1);
        e.ejected_until.store(until, Ordering::Release);
        Some(Ejection {
            endpoint,
            duration,
            count,
            consecutive_failures,
        })
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.turn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn detector(n: usize, max_ejected: f64) -> OutlierDetector {
        OutlierDetector::new(
            OutlierConfig {
                consecutive_failures: 3,
                base_ejection: 30 * S,
                max_ejection: 300 * S,
                max_ejected,
            },
            n,
            Instant::now(),
        )
    }

    #[test]
    fn ejects_after_consecutive_failures_and_returns_after_the_ejection() {
        let t0 = Instant::now();
        let d = detector(3, 0.5);
        assert_eq!(d.record(0, true, t0), None);
        assert_eq!(d.record(0, true, t0), None);
        let e = d.record(0, true, t0).unwrap();
        assert_eq!(
            e,
            Ejection {
                endpoint: 0,
                duration: 30 * S,
                count: 1,
                consecutive_failures: 3
            }
        );
        assert!(!d.is_available(0, t0 + 29 * S));
        assert!(d.is_available(0, t0 + 30 * S));
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let d = detector(3, 0.5);
        d.record(0, true, t0);
        d.record(0, true, t0);
        d.record(0, false, t0);
        d.record(0, true, t0);
        assert_eq!(d.record(0, true, t0), None);
    }

    #[test]
    fn repeated_ejections_grow_and_are_capped() {
        let t0 = Instant::now();
        let d = OutlierDetector::new(
            OutlierConfig {
                consecutive_failures: 1,
                base_ejection: 30 * S,
                max_ejection: 75 * S,
                max_ejected: 1.0,
            },
            1,
            t0,
        );
        let mut now = t0;
        let mut lengths = Vec::new();
        for _ in 0..4 {
            let e = d.record(0, true, now).unwrap();
            lengths.push(e.duration);
            now += e.duration;
        }
        assert_eq!(lengths, vec![30 * S, 60 * S, 75 * S, 75 * S]);
    }

    #[test]
    fn never_ejects_more_than_max_ejected() {
        let t0 = Instant::now();
        let d = detector(4, 0.5);
        for endpoint in 0..4 {
            for _ in 0..3 {
                d.record(endpoint, true, t0);
            }
        }
        assert_eq!(d.ejected(t0), vec![0, 1], "half of four endpoints at most");
        let one = detector(1, 0.5);
        for _ in 0..5 {
            assert_eq!(
                one.record(0, true, t0),
                None,
                "50% of one endpoint is zero endpoints"
            );
        }
    }

    /// Failures recorded from many threads at once: `max_ejected` holds exactly and every
    /// ejection is reported once.
    #[test]
    fn concurrent_failures_never_eject_more_than_max_ejected() {
        let t0 = Instant::now();
        let d = std::sync::Arc::new(detector(8, 0.5));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let d = d.clone();
                std::thread::spawn(move || {
                    (0..2_000)
                        .filter_map(|n| d.record((i + n) % 8, true, t0))
                        .count()
                })
            })
            .collect();
        let ejections: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(d.ejected(t0).len(), 4, "half of eight endpoints");
        assert_eq!(ejections, 4, "each ejection reported once");
    }
}
