//! `retry.when_burning`: while a route's SLOs burn their error budget fast, its retries draw
//! from a smaller budget, so retries do not amplify an outage the SLO already counts.
//!
//! The burn rate is read at most once a second per route, only when a retry is being
//! decided (never on the first attempt's path); the switch both ways is logged and counted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::policy::retry::WhenBurning;
use crate::policy::retry_budget::RetryBudget;
use crate::slo::live::Slos;

/// How long a burn-rate reading is trusted.
const RECHECK: Duration = Duration::from_secs(1);

/// One route's guard.
#[derive(Debug)]
pub struct BurnGuard {
    /// The rule.
    pub rule: WhenBurning,
    /// The budget retries draw from while burning (the rule's ratio, no per-second floor).
    pub budget: Arc<RetryBudget>,
    route: String,
    burning: AtomicBool,
    /// Nanoseconds from `start` of the last reading, plus one (0: never read).
    checked: AtomicU64,
    start: Instant,
    gauge: IntGauge,
    to_burning: IntCounter,
    to_normal: IntCounter,
}

impl BurnGuard {
    /// A guard for `route`.
    pub fn new(rule: WhenBurning, route: &str, metrics: &Metrics) -> Self {
        let now = Instant::now();
        let (gauge, to_burning, to_normal) = metrics.retry_burning(route);
        gauge.set(0);
        Self {
            rule,
            budget: Arc::new(RetryBudget::new(rule.budget_ratio, 0, now)),
            route: route.to_owned(),
            burning: AtomicBool::new(false),
            checked: AtomicU64::new(0),
            start: now,
            gauge,
            to_burning,
            to_normal,
        }
    }

    /// Whether retries are cut now, as of the last reading (for the status page).
    pub fn is_burning(&self) -> bool {
        self.burning.load(Ordering::Relaxed)
    }

    /// Whether retries of route `index` are cut now; reads the burn rate when the last
    /// reading is older than a second.
    pub fn check(&self, slos: &Slos, index: usize, now: Instant) -> bool {
        let at = u64::try_from(now.saturating_duration_since(self.start).as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.checked.load(Ordering::Relaxed);
        let fresh = last != 0 && at.saturating_sub(last) < RECHECK.as_nanos() as u64;
        if fresh
            || self
                .checked
                .compare_exchange(last, at, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return self.is_burning();
        }
        let rate = slos
            .route_burn_rate(index, self.rule.window, now)
            .unwrap_or(0.0);
        let burning = rate > self.rule.burn_rate;
        if self.burning.swap(burning, Ordering::AcqRel) != burning {
            self.gauge.set(i64::from(burning));
            if burning {
                self.to_burning.inc();
                tracing::warn!(route = %self.route, burn_rate = rate, threshold = self.rule.burn_rate, budget_ratio = self.rule.budget_ratio, "SLO burning fast: retries cut to the when_burning budget");
            } else {
                self.to_normal.inc();
                tracing::info!(route = %self.route, burn_rate = rate, "SLO burn back under the threshold: retries use the full budget again");
            }
        }
        burning
    }
}
