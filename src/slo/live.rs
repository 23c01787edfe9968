//! The live side of the SLOs: count each request's event and keep the budget gauges fresh.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Gauge, IntCounter};
use tokio::time::Instant;

use super::budget::EventRing;
use super::{classify, SloConfig};
use crate::dataplane::tasks::Tasks;
use crate::metrics::Metrics;

/// Burn-rate windows exported as gauges.
pub const BURN_WINDOWS: [(&str, Duration); 4] = [
    ("5m", Duration::from_secs(300)),
    ("30m", Duration::from_secs(1800)),
    ("1h", Duration::from_secs(3600)),
    ("6h", Duration::from_secs(6 * 3600)),
];
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// One SLO's counters, ring and gauges.
#[derive(Debug)]
pub struct LiveSlo {
    /// Its config.
    pub config: SloConfig,
    events: [IntCounter; 2],
    ring: EventRing,
    budget: Gauge,
    burn: Vec<Gauge>,
}

impl LiveSlo {
    fn record(&self, good: bool, now: Instant) {
        self.events[usize::from(!good)].inc();
        self.ring.record(good, now);
    }

    fn refresh(&self, now: Instant) {
        let ring = &self.ring;
        self.budget
            .set(ring.budget_remaining(self.config.objective, now));
        for (gauge, (_, span)) in self.burn.iter().zip(BURN_WINDOWS) {
            gauge.set(ring.burn_rate(self.config.objective, span, now));
        }
    }

    /// Budget left and burn rates now, for the admin API (`GET /admin/slos`).
    pub fn status(&self, now: Instant) -> SloStatus {
        let ring = &self.ring;
        let burn_rate = BURN_WINDOWS
            .iter()
            .map(|(name, span)| {
                (
                    (*name).to_owned(),
                    ring.burn_rate(self.config.objective, *span, now),
                )
            })
            .collect();
        let counts = ring.counts(self.config.window, now);
        SloStatus {
            name: self.config.name.clone(),
            objective: self.config.objective,
            window_seconds: self.config.window.as_secs(),
            good: counts.good,
            bad: counts.bad,
            error_budget_remaining: ring.budget_remaining(self.config.objective, now),
            burn_rate,
        }
    }

    /// [`LiveSlo::status`] as JSON.
    pub fn describe(&self, now: Instant) -> serde_json::Value {
        serde_json::to_value(self.status(now)).unwrap_or_default()
    }
}

/// One SLO's live budget, as `GET /admin/slos` shows it.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct SloStatus {
    /// Name (the `slo` label).
    pub name: String,
    /// Target share of good events, e.g. 0.999.
    pub objective: f64,
    /// Compliance period, in seconds.
    pub window_seconds: u64,
    /// Good events seen by this process within the window.
    pub good: u64,
    /// Bad events seen by this process within the window.
    pub bad: u64,
    /// Share of the error budget left; negative when overspent.
    pub error_budget_remaining: f64,
    /// Burn rate by window (`5m`, `30m`, `1h`, `6h`); 1 spends exactly the budget.
    pub burn_rate: std::collections::BTreeMap<String, f64>,
}

/// Every SLO of a config, and which ones each route feeds.
#[derive(Debug)]
pub struct Slos {
    slos: Vec<Arc<LiveSlo>>,
    by_route: Vec<Vec<usize>>,
    _refresh: Tasks,
}

impl Slos {
    /// Live state for `configs` over `routes` routes, keeping the budgets of `previous` SLOs
    /// whose config is unchanged; starts the gauge refresher.
    pub fn new(
        configs: &[SloConfig],
        routes: usize,
        metrics: &Metrics,
        previous: Option<&Slos>,
    ) -> Self {
        let now = Instant::now();
        let slos: Vec<Arc<LiveSlo>> = configs
            .iter()
            .map(|c| {
                let same = previous.and_then(|p| p.slos.iter().find(|s| s.config == *c));
                if let Some(same) = same {
                    return same.clone();
                }
                let (events, objective, budget) = metrics.slo(&c.name);
                objective.set(c.objective);
                budget.set(1.0);
                let burn = BURN_WINDOWS
                    .iter()
                    .map(|(w, _)| metrics.slo_burn(&c.name, w))
                    .collect();
                Arc::new(LiveSlo {
                    config: c.clone(),
                    events,
                    ring: EventRing::new(c.window, &BURN_WINDOWS.map(|(_, span)| span), now),
                    budget,
                    burn,
                })
            })
            .collect();
        let mut by_route = vec![Vec::new(); routes];
        for (i, c) in configs.iter().enumerate() {
            for &r in &c.routes {
                if let Some(list) = by_route.get_mut(r) {
                    list.push(i);
                }
            }
        }
        let refresh = if slos.is_empty() {
            Tasks::default()
        } else {
            let weak: Vec<_> = slos.iter().map(Arc::downgrade).collect();
            Tasks(vec![tokio::spawn(async move {
                let mut tick = tokio::time::interval(REFRESH_EVERY);
                loop {
                    tick.tick().await;
                    let now = Instant::now();
                    for slo in weak.iter().filter_map(std::sync::Weak::upgrade) {
                        slo.refresh(now);
                    }
                }
            })])
        };
        Self {
            slos,
            by_route,
            _refresh: refresh,
        }
    }

    /// Counts one answered request on `route`.
    pub fn record(
        &self,
        route: usize,
        status: u16,
        reason: Option<crate::dataplane::rescue::ProxyError>,
        elapsed: Duration,
    ) {
        let Some(list) = self.by_route.get(route) else {
            return;
        };
        if list.is_empty() {
            return;
        }
        let now = Instant::now();
        for &i in list {
            let slo = &self.slos[i];
            if let Some(good) = classify(slo.config.sli, status, reason, elapsed) {
                slo.record(good, now);
            }
        }
    }

    /// Every SLO, for the admin API.
    pub fn all(&self) -> &[Arc<LiveSlo>] {
        &self.slos
    }
}
