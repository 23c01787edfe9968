//! The live side of an upstream's adaptive concurrency limit ([`crate::policy::adaptive`]).
//!
//! Admission is lock-free: one atomic add against the current limit. Each answer adds to the
//! current window's counters (atomics); the first answer after the window ends closes it
//! (one compare-and-swap decides who), hands the totals to the controller under a lock taken
//! once per window, and publishes the new limit. A rejection is 503
//! `adaptive_concurrency_limited` at once, never a queue.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::policy::adaptive::{AdaptiveConfig, AdaptiveLimit, Window};
use crate::policy::classify::{Call, CallResult};
use crate::policy::outcome_rules::Verdict;
use crate::policy::Mode;

/// One upstream's adaptive limit.
#[derive(Debug)]
pub struct AdaptiveCell {
    controller: Mutex<AdaptiveLimit>,
    mode: Mode,
    limit: AtomicU32,
    in_flight: AtomicU32,
    start: Instant,
    /// Nanoseconds from `start` when the current window began.
    window_start: AtomicU64,
    window_nanos: u64,
    samples: AtomicU32,
    failures: AtomicU32,
    successes: AtomicU32,
    latency_micros: AtomicU64,
    peak: AtomicU32,
    limit_gauge: IntGauge,
    in_flight_gauge: IntGauge,
    rejected: IntCounter,
}

/// A request counted under the limit; dropping it without [`AdaptivePermit::record`] (the
/// client went away) frees the place without a sample.
#[derive(Debug)]
pub struct AdaptivePermit(Arc<AdaptiveCell>);

impl AdaptiveCell {
    /// The limit for `upstream`, starting at `initial_limit`.
    pub fn new(config: AdaptiveConfig, upstream: &str, metrics: &Metrics) -> Arc<Self> {
        let mode = config.mode;
        let (limit_gauge, in_flight_gauge, rejected) = metrics.adaptive(upstream, mode.as_str());
        let window_nanos = u64::try_from(config.window.as_nanos()).unwrap_or(u64::MAX);
        let controller = AdaptiveLimit::new(config);
        let limit = controller.limit();
        limit_gauge.set(i64::from(limit));
        Arc::new(Self {
            controller: Mutex::new(controller),
            mode,
            limit: AtomicU32::new(limit),
            in_flight: AtomicU32::new(0),
            start: Instant::now(),
            window_start: AtomicU64::new(0),
            window_nanos,
            samples: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            successes: AtomicU32::new(0),
            latency_micros: AtomicU64::new(0),
            peak: AtomicU32::new(0),
            limit_gauge,
            in_flight_gauge,
            rejected,
        })
    }

    /// The config it runs.
    pub fn config(&self) -> AdaptiveConfig {
        self.lock().config().clone()
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Counts a request in, or `None` when the limit is reached (in shadow mode: counted as
    /// a rejection, admitted).
    pub fn try_acquire(self: &Arc<Self>) -> Option<AdaptivePermit> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= self.limit.load(Ordering::Relaxed) {
            self.rejected.inc();
            if self.mode == Mode::Enforce {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
        }
        self.peak.fetch_max(before + 1, Ordering::Relaxed);
        self.in_flight_gauge.inc();
        Some(AdaptivePermit(self.clone()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AdaptiveLimit> {
        self.controller
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sample(&self, call: Call, now: Instant) {
        let failed = match call.result {
            CallResult::Status(s) => s >= 500 || s == 429,
            CallResult::ConnectFailure | CallResult::Timeout | CallResult::Reset => true,
            CallResult::Judged(_, d) => d.verdict == Verdict::Failure,
        };
        self.samples.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        } else {
            self.successes.fetch_add(1, Ordering::Relaxed);
            let micros = u64::try_from(call.elapsed.as_micros()).unwrap_or(u64::MAX);
            self.latency_micros.fetch_add(micros, Ordering::Relaxed);
        }
        let at =
            u64::try_from(now.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX);
        let began = self.window_start.load(Ordering::Acquire);
        if at.saturating_sub(began) < self.window_nanos {
            return;
        }
        if self
            .window_start
            .compare_exchange(began, at, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return; // another answer closes this window
        }
        let successes = self.successes.swap(0, Ordering::AcqRel);
        let window = Window {
            samples: self.samples.swap(0, Ordering::AcqRel),
            failures: self.failures.swap(0, Ordering::AcqRel),
            mean_latency: std::time::Duration::from_micros(
                self.latency_micros.swap(0, Ordering::AcqRel) / u64::from(successes.max(1)),
            ),
            peak_in_flight: self
                .peak
                .swap(self.in_flight.load(Ordering::Acquire), Ordering::AcqRel),
        };
        let limit = self.lock().on_window(window);
        self.limit.store(limit, Ordering::Relaxed);
        self.limit_gauge.set(i64::from(limit));
    }
}

impl AdaptivePermit {
    /// Feeds the attempt's answer to the controller and frees the place.
    pub fn record(self, call: Call, now: Instant) {
        self.0.sample(call, now);
    }
}

impl Drop for AdaptivePermit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.in_flight_gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cell(limit: u32, mode: Mode) -> Arc<AdaptiveCell> {
        let config = AdaptiveConfig {
            initial_limit: limit,
            min_limit: 1,
            mode,
            ..AdaptiveConfig::default()
        };
        AdaptiveCell::new(config, "u", &Metrics::new())
    }

    #[tokio::test]
    async fn admits_up_to_the_limit_and_frees_places_on_drop() {
        let c = cell(2, Mode::Enforce);
        let a = c.try_acquire().unwrap();
        let _b = c.try_acquire().unwrap();
        assert!(c.try_acquire().is_none(), "third is over the limit");
        drop(a);
        assert!(c.try_acquire().is_some(), "a place was freed");
    }

    #[tokio::test]
    async fn shadow_mode_admits_and_counts() {
        let c = cell(1, Mode::Shadow);
        let _a = c.try_acquire().unwrap();
        assert!(c.try_acquire().is_some());
        assert_eq!(c.rejected.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_of_failures_lowers_the_limit() {
        let c = cell(20, Mode::Enforce);
        let failed = Call {
            result: CallResult::Status(503),
            elapsed: Duration::from_millis(5),
        };
        for _ in 0..10 {
            c.try_acquire().unwrap().record(failed, Instant::now());
        }
        tokio::time::advance(Duration::from_millis(150)).await;
        c.try_acquire().unwrap().record(failed, Instant::now());
        assert_eq!(c.limit(), 18, "20 x 0.9 after a window of drops");
    }
}
