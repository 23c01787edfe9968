//! Adaptive concurrency: a limit on requests in flight to one upstream that finds the
//! partner's capacity from its latency and failures, instead of a number tuned once.
//!
//! The controller sees one [`Window`] of samples at a time (every `window`, e.g. 100 ms) and
//! moves the limit:
//! - **gradient** (in the spirit of Netflix's Gradient2 and Envoy's adaptive concurrency): the
//!   limit is scaled by `tolerance × baseline / latency`, clamped to [0.5, 1], so it shrinks
//!   when the window's latency grows beyond `tolerance` times the no-load latency, and grows by
//!   a small, bounded step (`sqrt(limit)`) when latency is within tolerance.
//! - **aimd**: grows by one per window without a drop, shrinks by `backoff` on a window with
//!   one (a failure, or an answer slower than `latency_threshold`).
//!
//! Known failure modes of the anchors, and what is done instead:
//! - Envoy pins concurrency to a tiny number for each minimum-RTT re-measurement and rejects
//!   traffic meanwhile (envoy issues 8337, 9007). Here the baseline is learned continuously:
//!   the lowest window latency over `baseline_window`, no pinning, no measurement phase; and
//!   when the limit sits at `min_limit` with latency still high, that latency cannot be our
//!   own queueing (the partner got slower), so it becomes the baseline at once and the limit
//!   can grow again instead of staying pinned.
//! - Envoy's baseline creeps up under sustained load (11579): a baseline taken under load
//!   includes queueing, the gradient stays at 1 and the limit keeps growing. Here the baseline
//!   falls at once to any lower window latency and rises only from windows that did not use
//!   the limit (so their latency is the partner's, not queueing behind us), by at most
//!   [`BASELINE_RISE`] per `baseline_window`; under sustained load it does not rise at all.
//! - Gradient2's queue term lets the limit grow without bound under modest overload (Netflix
//!   PR 134): here the limit grows only when the window actually used it (in flight reached
//!   [`UTILISED`] of the limit: an unused limit proves nothing) and by at most `sqrt(limit)`.
//! - Gradient2 ignores drops (Netflix issue 176): here a window whose failure share is above
//!   [`DROP_SHARE`] shrinks the limit by `backoff` whatever the latency says.
//!
//! Plain state machine: no clock reads, no I/O; the dataplane feeds it windows.

use std::time::Duration;

/// Share of the limit a window's peak in-flight must reach for the limit to grow.
pub const UTILISED: f64 = 0.8;
/// Share of failed samples in a window that counts as a drop.
pub const DROP_SHARE: f64 = 0.05;
/// Most the baseline may rise per `baseline_window` when every window is slower (a partner
/// that really got slower is learned within minutes; queueing under load is not).
pub const BASELINE_RISE: f64 = 0.1;

/// Which controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Latency gradient against a learned baseline.
    Gradient,
    /// Additive increase, multiplicative decrease on drops.
    Aimd,
}

impl Algorithm {
    /// The config and label name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Gradient => "gradient",
            Algorithm::Aimd => "aimd",
        }
    }
}

/// `upstreams.<name>.adaptive_concurrency`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveConfig {
    /// The controller.
    pub algorithm: Algorithm,
    /// The limit never goes below this.
    pub min_limit: u32,
    /// The limit never goes above this.
    pub max_limit: u32,
    /// The limit at start (and after a config change).
    pub initial_limit: u32,
    /// How often the limit moves.
    pub window: Duration,
    /// gradient: latency may grow to this multiple of the baseline before the limit shrinks.
    pub tolerance: f64,
    /// gradient: the baseline is the lowest window latency over this long.
    pub baseline_window: Duration,
    /// Multiplier on a drop (both algorithms).
    pub backoff: f64,
    /// aimd: an answer slower than this is a drop.
    pub latency_threshold: Duration,
    /// enforce or shadow.
    pub mode: super::Mode,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Gradient,
            min_limit: 5,
            max_limit: 1000,
            initial_limit: 20,
            window: Duration::from_millis(100),
            tolerance: 1.5,
            baseline_window: Duration::from_secs(30),
            backoff: 0.9,
            latency_threshold: Duration::from_secs(1),
            mode: super::Mode::Enforce,
        }
    }
}

/// What one window saw.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Answers (successes and failures) that ended in the window.
    pub samples: u32,
    /// Of those, failures (timeout, reset, connect failure, 5xx, 429).
    pub failures: u32,
    /// Mean latency of the successful answers.
    pub mean_latency: Duration,
    /// Most requests in flight at once during the window.
    pub peak_in_flight: u32,
}

/// The controller's state.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    config: AdaptiveConfig,
    limit: f64,
    /// The no-load latency: falls at once to any lower window latency.
    baseline: Option<Duration>,
    /// Lowest latency this period among windows that did not use the limit (their latency
    /// is the partner's, not queueing behind our own limit).
    unloaded_min: Option<Duration>,
    /// Time into the current baseline period.
    baseline_age: Duration,
}

impl AdaptiveLimit {
    /// A controller at `initial_limit`.
    pub fn new(config: AdaptiveConfig) -> Self {
        let limit = f64::from(
            config
                .initial_limit
                .clamp(config.min_limit, config.max_limit),
        );
        Self {
            config,
            limit,
            baseline: None,
            unloaded_min: None,
            baseline_age: Duration::ZERO,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.limit.round() as u32
    }

    /// The no-load latency the gradient compares against, once one was seen.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline
    }

    /// The config.
    pub fn config(&self) -> &AdaptiveConfig {
        &self.config
    }

    /// Moves the limit after a window; returns the new limit.
    pub fn on_window(&mut self, window: Window) -> u32 {
        if window.samples == 0 {
            return self.limit();
        }
        let dropped = f64::from(window.failures) > f64::from(window.samples) * DROP_SHARE;
        let utilised = f64::from(window.peak_in_flight) >= self.limit * UTILISED;
        let limit = match self.config.algorithm {
            Algorithm::Aimd => {
                let slow = window.mean_latency > self.config.latency_threshold;
                if dropped || slow {
                    self.limit * self.config.backoff
                } else if utilised {
                    self.limit + 1.0
                } else {
                    self.limit
                }
            }
            Algorithm::Gradient => {
                let succeeded = window.samples > window.failures;
                if succeeded && !dropped && self.limit <= f64::from(self.config.min_limit) {
                    // At the floor the latency cannot be our own queueing: the partner got
                    // slower. Take it as the baseline at once rather than stay pinned.
                    self.baseline = Some(window.mean_latency);
                    self.unloaded_min = None;
                    self.baseline_age = Duration::ZERO;
                }
                if succeeded {
                    self.learn_baseline(window.mean_latency, utilised);
                }
                if dropped {
                    self.limit * self.config.backoff
                } else {
                    match self.baseline().filter(|_| succeeded) {
                        None => self.limit,
                        Some(baseline) => {
                            let latency = window.mean_latency.max(Duration::from_micros(1));
                            let gradient = (self.config.tolerance * baseline.as_secs_f64()
                                / latency.as_secs_f64())
                            .clamp(0.5, 1.0);
                            if gradient < 1.0 {
                                self.limit * gradient
                            } else if utilised {
                                self.limit + self.limit.sqrt()
                            } else {
                                self.limit
                            }
                        }
                    }
                }
            }
        };
        self.limit = limit.clamp(
            f64::from(self.config.min_limit),
            f64::from(self.config.max_limit),
        );
        self.limit()
    }

    /// The baseline falls at once to a lower window latency. It rises only at the end of a
    /// `baseline_window`, only to the lowest latency of windows that did not use the limit,
    /// and by at most [`BASELINE_RISE`]: under sustained load every window uses the limit,
    /// so queueing never becomes the baseline.
    fn learn_baseline(&mut self, latency: Duration, utilised: bool) {
        self.baseline = Some(self.baseline.map_or(latency, |b| b.min(latency)));
        if !utilised {
            self.unloaded_min = Some(self.unloaded_min.map_or(latency, |m| m.min(latency)));
        }
        self.baseline_age += self.config.window;
        if self.baseline_age < self.config.baseline_window {
            return;
        }
        self.baseline_age = Duration::ZERO;
        if let (Some(unloaded), Some(baseline)) = (self.unloaded_min.take(), self.baseline) {
            if unloaded > baseline {
                self.baseline = Some(unloaded.min(baseline.mul_f64(1.0 + BASELINE_RISE)));
            }
        }
    }
}

#[cfg(test)]
mod tests;
