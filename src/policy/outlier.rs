//! Passive outlier detection: take an endpoint that keeps failing out of rotation for a while.
//!
//! An endpoint with `consecutive_failures` failures in a row is ejected for
//! `base_ejection x (times ejected so far)`, capped at `max_ejection`, so a flapping endpoint
//! stays out longer each time. Never more than `max_ejected` of an upstream's endpoints are out
//! at once: when a whole pool fails, the breaker (not ejection) is the tool that should act,
//! and ejecting everything would leave nowhere to send even a probe.

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

#[derive(Debug, Clone, Default)]
struct EndpointState {
    consecutive: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
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
}

/// The outlier state of one upstream's endpoints.
#[derive(Debug)]
pub struct OutlierDetector {
    config: OutlierConfig,
    endpoints: Vec<EndpointState>,
}

impl OutlierDetector {
    /// No endpoint ejected.
    pub fn new(config: OutlierConfig, endpoints: usize) -> Self {
        Self {
            config,
            endpoints: vec![EndpointState::default(); endpoints],
        }
    }

    /// Whether `endpoint` may receive traffic at `now`.
    pub fn is_available(&self, endpoint: usize, now: Instant) -> bool {
        self.endpoints
            .get(endpoint)
            .and_then(|e| e.ejected_until)
            .is_none_or(|until| now >= until)
    }

    /// Endpoints ejected at `now`.
    pub fn ejected(&self, now: Instant) -> Vec<usize> {
        (0..self.endpoints.len())
            .filter(|&i| !self.is_available(i, now))
            .collect()
    }

    /// When `endpoint`'s ejection ends, if it is ejected at `now`.
    pub fn ejected_until(&self, endpoint: usize, now: Instant) -> Option<Instant> {
        self.endpoints
            .get(endpoint)?
            .ejected_until
            .filter(|&u| u > now)
    }

    /// Most endpoints that may be out at once.
    fn cap(&self) -> usize {
        (self.config.max_ejected * self.endpoints.len() as f64).floor() as usize
    }

    /// Records one call's outcome at `endpoint`; returns the ejection it caused, if any.
    pub fn record(&mut self, endpoint: usize, failure: bool, now: Instant) -> Option<Ejection> {
        let ejected_now = self.ejected(now).len();
        let cap = self.cap();
        let config = self.config.clone();
        let e = self.endpoints.get_mut(endpoint)?;
        if !failure {
            e.consecutive = 0;
            return None;
        }
        e.consecutive += 1;
        let already_out = e.ejected_until.is_some_and(|u| u > now);
        if e.consecutive < config.consecutive_failures || already_out || ejected_now >= cap {
            return None;
        }
        e.ejections += 1;
        e.consecutive = 0;
        let duration = config
            .base_ejection
            .saturating_mul(e.ejections)
            .min(config.max_ejection);
        e.ejected_until = Some(now + duration);
        Some(Ejection {
            endpoint,
            duration,
            count: e.ejections,
        })
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
        )
    }

    #[test]
    fn ejects_after_consecutive_failures_and_returns_after_the_ejection() {
        let t0 = Instant::now();
        let mut d = detector(3, 0.5);
        assert_eq!(d.record(0, true, t0), None);
        assert_eq!(d.record(0, true, t0), None);
        let e = d.record(0, true, t0).unwrap();
        assert_eq!(
            e,
            Ejection {
                endpoint: 0,
                duration: 30 * S,
                count: 1
            }
        );
        assert!(!d.is_available(0, t0 + 29 * S));
        assert!(d.is_available(0, t0 + 30 * S));
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut d = detector(3, 0.5);
        d.record(0, true, t0);
        d.record(0, true, t0);
        d.record(0, false, t0);
        d.record(0, true, t0);
        assert_eq!(d.record(0, true, t0), None);
    }

    #[test]
    fn repeated_ejections_grow_and_are_capped() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(
            OutlierConfig {
                consecutive_failures: 1,
                base_ejection: 30 * S,
                max_ejection: 75 * S,
                max_ejected: 1.0,
            },
            1,
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
        let mut d = detector(4, 0.5);
        for endpoint in 0..4 {
            for _ in 0..3 {
                d.record(endpoint, true, t0);
            }
        }
        assert_eq!(d.ejected(t0), vec![0, 1], "half of four endpoints at most");
        let mut one = detector(1, 0.5);
        for _ in 0..5 {
            assert_eq!(
                one.record(0, true, t0),
                None,
                "50% of one endpoint is zero endpoints"
            );
        }
    }
}
