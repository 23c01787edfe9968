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
    /// (an instant, the Unix time in seconds then): calendar periods follow the wall clock.
    anchor: (Instant, i64),
}

/// The span a budget covers when the wall clock reads `unix`: the rolling window, or the time
/// since the calendar period started (whole minutes, the current one included; at least one).
pub fn budget_span(config: &SloConfig, unix: i64) -> Duration {
    match config.calendar {
        None => config.window,
        Some(c) => Duration::from_secs((unix - c.period_start(unix)).max(0) as u64 + 1),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl LiveSlo {
    fn record(&self, good: bool, now: Instant) {
        self.events[usize::from(!good)].inc();
        self.ring.record(good, now);
    }

    /// Unix time (seconds) at `now`, from the wall clock read when this SLO started.
    fn unix(&self, now: Instant) -> i64 {
        self.anchor.1 + now.saturating_duration_since(self.anchor.0).as_secs() as i64
    }

    /// The span the budget covers at `now`: the rolling window, or the time since the
    /// calendar period started.
    fn budget_span(&self, now: Instant) -> Duration {
        budget_span(&self.config, self.unix(now))
    }

    fn budget_remaining(&self, now: Instant) -> f64 {
        let counts = self.ring.counts(self.budget_span(now), now);
        1.0 - counts.error_ratio() / (1.0 - self.config.objective)
    }

    fn refresh(&self, now: Instant) {
        let ring = &self.ring;
        self.budget.set(self.budget_remaining(now));
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
        let counts = ring.counts(self.budget_span(now), now);
        let window_seconds = match self.config.calendar {
            Some(c) => {
                let unix = self.unix(now);
                (c.period_end(unix) - c.period_start(unix)).max(0) as u64
            }
            None => self.config.window.as_secs(),
        };
        SloStatus {
            name: self.config.name.clone(),
            objective: self.config.objective,
            window_seconds,
            good: counts.good,
            bad: counts.bad,
            error_budget_remaining: self.budget_remaining(now),
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
    /// (For a calendar period, `window_seconds` is the current period's length, and `good`,
    /// `bad` and the budget count from its start.)
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
                    anchor: (now, unix_now()),
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
        verdict: Option<crate::policy::outcome_rules::Verdict>,
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
            if let Some(good) = classify(slo.config.sli, status, reason, verdict, elapsed) {
                slo.record(good, now);
            }
        }
    }

    /// The highest burn rate over `span` among the SLOs covering `route`; `None` when no SLO
    /// covers it. Reads the rings' running totals (a short lock): for decisions off the hot
    /// path, such as whether a retry may draw from the full budget.
    pub fn route_burn_rate(&self, route: usize, span: Duration, now: Instant) -> Option<f64> {
        self.by_route
            .get(route)?
            .iter()
            .map(|&i| {
                let slo = &self.slos[i];
                slo.ring.burn_rate(slo.config.objective, span, now)
            })
            .reduce(f64::max)
    }

    /// Every SLO, for the admin API.
    pub fn all(&self) -> &[Arc<LiveSlo>] {
        &self.slos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slo::budget::EventRing;
    use crate::slo::calendar::{Calendar, CalendarUnit};
    use crate::slo::Sli;

    fn config(calendar: Option<Calendar>) -> SloConfig {
        SloConfig {
            name: "pay".into(),
            routes: vec![0],
            objective: 0.99,
            window: calendar.map_or(Duration::from_secs(28 * 86_400), |c| c.unit.longest()),
            sli: Sli::Availability {
                exclude_rate_limited: false,
            },
            calendar,
            min_events: 10,
        }
    }

    /// A calendar month in +02:00 starts at 22:00 UTC on the last day of the month before:
    /// failures at 21:00 UTC on February 28th belong to February and leave the budget of
    /// March (local) whole; the same failures seen by a rolling window stay counted.
    #[test]
    fn a_calendar_budget_starts_afresh_at_the_local_month_start() {
        let month = Calendar {
            unit: CalendarUnit::Month,
            utc_offset_seconds: 7200,
        };
        let calendar = config(Some(month));
        let rolling = config(None);
        // 2026-02-28 21:00 UTC = 23:00 in +02:00, one hour before March starts there.
        let feb_28_21h: i64 = 1_772_312_400;
        let t0 = Instant::now();
        let ring = EventRing::new(calendar.window, &[], t0);
        for _ in 0..50 {
            ring.record(false, t0);
        }
        let budget = |c: &SloConfig, after: Duration| {
            let counts = ring.counts(
                budget_span(c, feb_28_21h + after.as_secs() as i64),
                t0 + after,
            );
            1.0 - counts.error_ratio() / (1.0 - c.objective)
        };
        // Still February (local) 30 minutes later: 100% bad, budget -99.
        assert!((budget(&calendar, Duration::from_secs(1800)) + 99.0).abs() < 1e-9);
        // 90 minutes later it is March 1st, 00:30 local: nothing counted yet, budget whole.
        ring.record(true, t0 + Duration::from_secs(5400));
        assert_eq!(budget(&calendar, Duration::from_secs(5400)), 1.0);
        assert_eq!(
            budget_span(&calendar, feb_28_21h + 5400),
            Duration::from_secs(1801)
        );
        assert!(budget(&rolling, Duration::from_secs(5400)) < -90.0);
    }
}
