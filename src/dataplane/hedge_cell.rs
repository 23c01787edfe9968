//! The live side of a route's `hedge:`: its budget, its recent latency (for `after: p95`) and
//! its counters. The race itself is a pipeline stage (`pipeline::hedge`).
//!
//! The budget is the retry budget's sliding-window token count with no per-second floor:
//! every request on the route deposits `budget` of a token, a hedge withdraws one, so hedges
//! stay below that share of requests over 10s even while the partner is slow everywhere
//! (when hedging cannot help and would only add load).

use std::time::Duration;

use prometheus::IntCounter;
use tokio::time::Instant;

use crate::config::{Hedge, HedgeAfter};
use crate::metrics::Metrics;
use crate::policy::latency_window::LatencyWindow;
use crate::policy::retry_budget::RetryBudget;

/// Why a hedge that was due was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// The budget is spent.
    BudgetExhausted,
    /// An SLO covering the route burns fast (`retry.when_burning`).
    SloBurning,
    /// No other endpoint of the upstream could take it.
    NoEndpoint,
}

/// One route's hedging state.
#[derive(Debug)]
pub struct HedgeCell {
    /// The config it was built from.
    pub config: Hedge,
    budget: RetryBudget,
    latency: LatencyWindow,
    sent: IntCounter,
    won: IntCounter,
    skipped: [IntCounter; 3],
}

impl HedgeCell {
    /// The cell of `route`.
    pub fn new(config: Hedge, route: &str, metrics: &Metrics) -> Self {
        let now = Instant::now();
        let handle = |result| metrics.hedge_handle(route, result);
        Self {
            config,
            budget: RetryBudget::new(config.budget, 0, now),
            latency: LatencyWindow::new(now),
            sent: handle("sent"),
            won: handle("won"),
            skipped: [
                handle("budget_exhausted"),
                handle("slo_burning"),
                handle("no_endpoint"),
            ],
        }
    }

    /// Counts a request on the route into the budget.
    pub fn deposit(&self, now: Instant) {
        self.budget.deposit(now);
    }

    /// How long an attempt may run before a hedge follows; `None` while a percentile has too
    /// few recent samples to trust (no hedging until it has).
    pub fn delay(&self, now: Instant) -> Option<Duration> {
        match self.config.after {
            HedgeAfter::Fixed(delay) => Some(delay),
            HedgeAfter::Percentile(q) => self.latency.quantile(q, now),
        }
    }

    /// Takes a token for one hedge; `false` when the budget is spent.
    pub fn withdraw(&self, now: Instant) -> bool {
        self.budget.withdraw(now)
    }

    /// Counts an attempt's latency (a cancelled one's time so far, a lower bound, so that
    /// cancelling slow attempts does not pull the percentile down).
    pub fn observe(&self, latency: Duration, now: Instant) {
        self.latency.record(latency, now);
    }

    /// Counts a hedge sent.
    pub fn count_sent(&self) {
        self.sent.inc();
    }

    /// Counts a hedge that answered first.
    pub fn count_won(&self) {
        self.won.inc();
    }

    /// Counts a hedge that was due but not sent.
    pub fn count_skipped(&self, why: Skipped) {
        self.skipped[why as usize].inc();
    }
}
