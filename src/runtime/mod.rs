//! The running config: one immutable [`Snapshot`] behind one `ArcSwap`.
//!
//! Each request loads the snapshot once and keeps that `Arc` to its end, so every phase of one
//! request sees one config even if a reload swaps in another meanwhile. A snapshot is replaced
//! whole, never piece by piece.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use std::sync::Arc as StdArc;

use crate::dataplane::breaker_cell::BreakerCell;
use crate::dataplane::client::ClientError;
use crate::dataplane::upstream::LiveUpstream;
use crate::metrics::handles::RouteMetrics;
use crate::metrics::Metrics;
use crate::policy::retry_budget::RetryBudget;

/// A compiled config with its live upstreams.
#[derive(Debug)]
pub struct Snapshot {
    /// The config it was built from.
    pub config: Config,
    /// Live upstreams, in the order of `config.upstreams`.
    pub upstreams: Vec<StdArc<LiveUpstream>>,
    /// Active health check tasks; dropped (and stopped) with the snapshot.
    pub health_checks: Vec<crate::dataplane::tasks::Tasks>,
    /// Metric handles per route, in the order of `config.routes`.
    pub route_metrics: Vec<RouteMetrics>,
    /// Route-level breakers, in the order of `config.routes` (`None`: the upstream's applies).
    pub route_breakers: Vec<Option<StdArc<BreakerCell>>>,
    /// Rate limits, in the order of `config.routes`.
    pub route_limiters: Vec<Option<crate::dataplane::ratelimit::RouteLimiter>>,
    /// The shared Redis client for global rate limits.
    pub redis: Option<StdArc<crate::dataplane::ratelimit::global::Redis>>,
    /// SLO counters and budgets.
    pub slos: crate::slo::live::Slos,
    /// Retry budgets, in the order of `config.routes` (`None` without a retry policy).
    pub route_budgets: Vec<Option<std::sync::Mutex<RetryBudget>>>,
    /// The metrics, for the rare paths (retries, failover) that count by label.
    pub metrics: Metrics,
    /// Metric handles for requests no route took.
    pub no_route_metrics: RouteMetrics,
    /// 1 for the config loaded at startup, +1 per accepted reload.
    pub generation: u64,
}

impl Snapshot {
    /// Builds the live parts of `config`.
    pub fn build(config: Config, generation: u64, metrics: &Metrics) -> Result<Self, ClientError> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| LiveUpstream::build(u, metrics).map(StdArc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let health_checks = config
            .upstreams
            .iter()
            .zip(&upstreams)
            .filter_map(|(c, live)| {
                c.health_check
                    .as_ref()
                    .map(|h| crate::dataplane::health::start(live, h, metrics))
            })
            .collect();
        let route_metrics = config
            .routes
            .iter()
            .map(|r| RouteMetrics::new(metrics, &r.name, &config.upstreams[r.upstream].name))
            .collect();
        let route_breakers = config
            .routes
            .iter()
            .map(|r| {
                let upstream = &config.upstreams[r.upstream].name;
                r.circuit_breaker
                    .clone()
                    .map(|b| BreakerCell::new(b, upstream, &r.name, metrics))
            })
            .collect();
        let route_budgets = config
            .routes
            .iter()
            .map(|r| {
                r.retry.as_ref().map(|p| {
                    let budget = RetryBudget::new(
                        p.budget_ratio,
                        p.budget_min_per_second,
                        tokio::time::Instant::now(),
                    );
                    std::sync::Mutex::new(budget)
                })
            })
            .collect();
        // Connect only when a route needs it: a redis: section alone starts nothing.
        let global = config.routes.iter().any(|r| {
            r.rate_limit
                .as_ref()
                .is_some_and(|l| l.scope == crate::policy::rate::Scope::Global)
        });
        let redis = config
            .redis
            .clone()
            .filter(|_| global)
            .map(crate::dataplane::ratelimit::global::Redis::start);
        let route_limiters = config
            .routes
            .iter()
            .map(|r| {
                r.rate_limit.as_ref().map(|l| {
                    crate::dataplane::ratelimit::RouteLimiter::new(
                        &r.name,
                        l,
                        redis.as_ref(),
                        metrics,
                    )
                })
            })
            .collect();
        Ok(Self {
            slos: crate::slo::live::Slos::new(&config.slos, config.routes.len(), metrics),
            route_limiters,
            redis,
            health_checks,
            route_budgets,
            metrics: metrics.clone(),
            route_breakers,
            no_route_metrics: RouteMetrics::new(metrics, "", ""),
            route_metrics,
            config,
            upstreams,
            generation,
        })
    }
}

/// Shared handle to the current snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotHandle(Arc<ArcSwap<Snapshot>>);

impl SnapshotHandle {
    /// A handle holding `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(snapshot)))
    }

    /// The current snapshot; keep it for the whole request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// Replaces the snapshot atomically.
    pub fn store(&self, snapshot: Snapshot) {
        self.0.store(Arc::new(snapshot));
    }
}
