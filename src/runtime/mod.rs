//! The running config: one immutable [`Snapshot`] behind one `ArcSwap`.
//!
//! Each request loads the snapshot once and keeps that `Arc` to its end, so every phase of one
//! request sees one config even if a reload swaps in another meanwhile. A snapshot is replaced
//! whole, never piece by piece.
//!
//! Building a snapshot from a reloaded config carries live state over by stable name for
//! everything whose config did not change: a whole upstream (connection pool, breaker,
//! ejections, health, load estimates) when its config is equal; else its breaker alone when the
//! breaker's config is equal; route breakers, rate-limit buckets, retry budgets and SLO budgets
//! likewise. So a reload never forgets that a partner's breaker is open.

pub mod reload;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::dataplane::breaker_cell::BreakerCell;
use crate::dataplane::client::ClientError;
use crate::dataplane::ratelimit::global::Redis;
use crate::dataplane::ratelimit::RouteLimiter;
use crate::dataplane::upstream::LiveUpstream;
use crate::metrics::handles::RouteMetrics;
use crate::metrics::Metrics;
use crate::policy::rate::Scope;
use crate::policy::retry_budget::RetryBudget;
use crate::slo::live::Slos;

/// A compiled config with its live state.
#[derive(Debug)]
pub struct Snapshot {
    /// The config it was built from.
    pub config: Config,
    /// Live upstreams, in the order of `config.upstreams`.
    pub upstreams: Vec<Arc<LiveUpstream>>,
    /// Metric handles per route, in the order of `config.routes`.
    pub route_metrics: Vec<RouteMetrics>,
    /// Route-level breakers, in the order of `config.routes` (`None`: the upstream's applies).
    pub route_breakers: Vec<Option<Arc<BreakerCell>>>,
    /// Rate limits, in the order of `config.routes`.
    pub route_limiters: Vec<Option<Arc<RouteLimiter>>>,
    /// The shared Redis client for global rate limits.
    pub redis: Option<Arc<Redis>>,
    /// SLO counters and budgets.
    pub slos: Slos,
    /// Retry budgets, in the order of `config.routes` (`None` without a retry policy).
    pub route_budgets: Vec<Option<Arc<RetryBudget>>>,
    /// The metrics, for the rare paths (retries, failover) that count by label.
    pub metrics: Metrics,
    /// Metric handles for requests no route took.
    pub no_route_metrics: RouteMetrics,
    /// 1 for the config loaded at startup, +1 per accepted reload.
    pub generation: u64,
}

impl Snapshot {
    /// Builds the live parts of `config`, carrying state over from `previous` where the config
    /// of a part did not change.
    pub fn build(
        config: Config,
        generation: u64,
        metrics: &Metrics,
        previous: Option<&Snapshot>,
    ) -> Result<Self, ClientError> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let before =
                    previous.and_then(|p| p.upstreams.iter().find(|l| l.config.name == u.name));
                match before {
                    Some(same) if same.config == *u => Ok(same.clone()),
                    _ => {
                        let breaker = before
                            .and_then(|b| b.breaker.clone())
                            .filter(|b| u.circuit_breaker.as_ref() == Some(b.config()));
                        LiveUpstream::start(u, metrics, breaker, before.map(|b| &**b))
                    }
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let route_metrics = config
            .routes
            .iter()
            .map(|r| RouteMetrics::new(metrics, &r.name, &config.upstreams[r.upstream].name))
            .collect();
        let previous_route = |name: &str| {
            previous.and_then(|p| {
                p.config
                    .routes
                    .iter()
                    .position(|r| r.name == name)
                    .map(|i| (p, i))
            })
        };
        let route_breakers = config
            .routes
            .iter()
            .map(|r| {
                let upstream = &config.upstreams[r.upstream].name;
                let breaker = r.circuit_breaker.clone()?;
                let carried = previous_route(&r.name)
                    .and_then(|(p, i)| p.route_breakers[i].clone())
                    .filter(|b| b.upstream == *upstream && *b.config() == breaker);
                Some(
                    carried
                        .unwrap_or_else(|| BreakerCell::new(breaker, upstream, &r.name, metrics)),
                )
            })
            .collect();
        let route_budgets = config
            .routes
            .iter()
            .map(|r| {
                let p = r.retry.as_ref()?;
                let carried = previous_route(&r.name).and_then(|(prev, i)| {
                    let old = prev.config.routes[i].retry.as_ref()?;
                    let same = old.budget_ratio == p.budget_ratio
                        && old.budget_min_per_second == p.budget_min_per_second;
                    same.then(|| prev.route_budgets[i].clone()).flatten()
                });
                Some(carried.unwrap_or_else(|| {
                    let now = tokio::time::Instant::now();
                    Arc::new(RetryBudget::new(
                        p.budget_ratio,
                        p.budget_min_per_second,
                        now,
                    ))
                }))
            })
            .collect();
        // Connect only when a route needs it: a redis: section alone starts nothing.
        let global = config.routes.iter().any(|r| {
            r.rate_limit
                .as_ref()
                .is_some_and(|l| l.scope == Scope::Global)
        });
        let redis = match previous {
            Some(p) if global && p.redis.is_some() && p.config.redis == config.redis => {
                p.redis.clone()
            }
            _ => config
                .redis
                .clone()
                .filter(|_| global)
                .map(|c| Redis::start(c, metrics.redis_available())),
        };
        let redis_same = previous.is_some_and(|p| p.config.redis == config.redis);
        let route_limiters = config
            .routes
            .iter()
            .map(|r| {
                let limit = r.rate_limit.as_ref()?;
                let carried = previous_route(&r.name).and_then(|(prev, i)| {
                    let same = prev.config.routes[i].rate_limit.as_ref() == Some(limit)
                        && (limit.scope == Scope::Local || redis_same);
                    same.then(|| prev.route_limiters[i].clone()).flatten()
                });
                Some(carried.unwrap_or_else(|| {
                    Arc::new(RouteLimiter::new(&r.name, limit, redis.as_ref(), metrics))
                }))
            })
            .collect();
        Ok(Self {
            slos: Slos::new(
                &config.slos,
                config.routes.len(),
                metrics,
                previous.map(|p| &p.slos),
            ),
            route_limiters,
            redis,
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
