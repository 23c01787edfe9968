//! The live side of one configured route: its config, its policies' state and its metric
//! handles, in one place.
//!
//! Each policy that keeps state per route (breaker, rate limit, retry budget) is one field
//! here, built by [`LiveRoute::build`] through [`kept`], so a reload keeps the state of every
//! part whose config did not change.

use std::sync::Arc;

use crate::config::{Config, IdempotencyStore, Route};
use crate::dataplane::breaker_cell::BreakerCell;
use crate::dataplane::hedge_cell::HedgeCell;
use crate::dataplane::idempotency::local::LocalStore;
use crate::dataplane::idempotency::redis::RedisStore;
use crate::dataplane::idempotency::Store;
use crate::dataplane::ratelimit::global::Redis;
use crate::dataplane::ratelimit::RouteLimiter;
use crate::metrics::handles::RouteMetrics;
use crate::metrics::Metrics;
use crate::policy::rate::Scope;
use crate::policy::retry_budget::RetryBudget;

/// A route ready to take requests.
#[derive(Debug)]
pub struct LiveRoute {
    /// The config it was built from.
    pub config: Route,
    /// Request counters and latency for the route's own upstream.
    pub metrics: RouteMetrics,
    /// Route-level breaker (`None`: the upstream's applies).
    pub breaker: Option<Arc<BreakerCell>>,
    /// Rate limit.
    pub limiter: Option<Arc<RouteLimiter>>,
    /// Retry budget (`None` without a retry policy).
    pub budget: Option<Arc<RetryBudget>>,
    /// The smaller budget while the route's SLOs burn fast (`retry.when_burning`).
    pub burn: Option<super::burn_guard::BurnGuard>,
    /// Idempotency key records (`None` without `idempotency:`).
    pub idempotency: Option<Arc<Store>>,
    /// Hedging budget and latency (`None` without `hedge:`).
    pub hedge: Option<Arc<HedgeCell>>,
}

/// What a route's live parts are built from besides its own config.
#[derive(Debug)]
pub struct Context<'a> {
    /// The whole config (for upstream names).
    pub config: &'a Config,
    /// The metrics registry.
    pub metrics: &'a Metrics,
    /// The Redis client for global limits, if any route needs one.
    pub redis: Option<&'a Arc<Redis>>,
    /// Whether the Redis config is unchanged from the previous snapshot.
    pub redis_same: bool,
}

impl LiveRoute {
    /// Builds the route, carrying each part over from `previous` (the route of the same name
    /// before a reload) when that part's config is unchanged.
    pub fn build(config: &Route, previous: Option<&LiveRoute>, cx: &Context<'_>) -> Self {
        let upstream = &cx.config.upstreams[config.upstream].name;
        let breaker = config.circuit_breaker.as_ref().map(|wanted| {
            kept(previous.and_then(|p| p.breaker.as_ref()), |b| {
                b.upstream == *upstream && b.config() == wanted
            })
            .unwrap_or_else(|| BreakerCell::new(wanted.clone(), upstream, &config.name, cx.metrics))
        });
        let limiter = config.rate_limit.as_ref().map(|limit| {
            kept(previous.and_then(|p| p.limiter.as_ref()), |_| {
                let old = previous.and_then(|p| p.config.rate_limit.as_ref());
                old == Some(limit) && (limit.scope == Scope::Local || cx.redis_same)
            })
            .unwrap_or_else(|| {
                Arc::new(RouteLimiter::new(&config.name, limit, cx.redis, cx.metrics))
            })
        });
        let budget = config.retry.as_ref().map(|p| {
            let old = previous.and_then(|prev| prev.config.retry.as_ref());
            kept(previous.and_then(|prev| prev.budget.as_ref()), |_| {
                old.is_some_and(|old| {
                    old.budget_ratio == p.budget_ratio
                        && old.budget_min_per_second == p.budget_min_per_second
                })
            })
            .unwrap_or_else(|| {
                let now = tokio::time::Instant::now();
                Arc::new(RetryBudget::new(
                    p.budget_ratio,
                    p.budget_min_per_second,
                    now,
                ))
            })
        });
        let idempotency = config.idempotency.as_ref().and_then(|wanted| {
            let old = previous.and_then(|p| p.config.idempotency.as_ref());
            kept(previous.and_then(|p| p.idempotency.as_ref()), |_| {
                old.is_some_and(|old| {
                    old.store == wanted.store
                        && old.max_keys == wanted.max_keys
                        && (wanted.store == IdempotencyStore::Local || cx.redis_same)
                })
            })
            .or_else(|| {
                let store = match wanted.store {
                    IdempotencyStore::Local => Store::Local(LocalStore::new(
                        wanted.max_keys,
                        cx.metrics.idempotency_evictions(&config.name),
                    )),
                    IdempotencyStore::Redis => {
                        Store::Redis(RedisStore::new(cx.redis?.clone(), &config.name))
                    }
                };
                Some(Arc::new(store))
            })
        });
        let hedge = config.hedge.map(|wanted| {
            kept(previous.and_then(|p| p.hedge.as_ref()), |h| {
                h.config == wanted
            })
            .unwrap_or_else(|| Arc::new(HedgeCell::new(wanted, &config.name, cx.metrics)))
        });
        Self {
            config: config.clone(),
            metrics: RouteMetrics::new(cx.metrics, &config.name, upstream),
            breaker,
            limiter,
            budget,
            burn: config
                .retry
                .as_ref()
                .and_then(|p| p.when_burning)
                .map(|rule| super::burn_guard::BurnGuard::new(rule, &config.name, cx.metrics)),
            idempotency,
            hedge,
        }
    }
}

/// The one rule for carrying live state over a reload: the previous part is kept (shared, with
/// its state) when `same` says its config is unchanged; `None` means build a new one.
pub fn kept<T>(previous: Option<&Arc<T>>, same: impl FnOnce(&T) -> bool) -> Option<Arc<T>> {
    previous.filter(|p| same(p)).cloned()
}
