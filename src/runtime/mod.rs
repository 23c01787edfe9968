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

pub mod burn_guard;
pub mod live_route;
pub mod reload;

pub use live_route::LiveRoute;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::dataplane::client::ClientError;
use crate::dataplane::ratelimit::global::Redis;
use crate::dataplane::upstream::LiveUpstream;
use crate::metrics::handles::RouteMetrics;
use crate::metrics::Metrics;
use crate::policy::breaker::{BreakerConfig, Sharing};
use crate::policy::rate::Scope;
use crate::slo::live::Slos;

/// A compiled config with its live state.
#[derive(Debug)]
pub struct Snapshot {
    /// The config it was built from.
    pub config: Config,
    /// Live upstreams, in the order of `config.upstreams`.
    pub upstreams: Vec<Arc<LiveUpstream>>,
    /// Live routes (config, policy state, metric handles), in the order of `config.routes`.
    pub routes: Vec<LiveRoute>,
    /// The shared Redis client for global rate limits.
    pub redis: Option<Arc<Redis>>,
    /// SLO counters and budgets.
    pub slos: Slos,
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
        // Connect only when a route, an upstream's quota or a shared breaker needs it: a
        // redis: section alone starts nothing.
        let shared = |b: Option<&BreakerConfig>| b.is_some_and(|b| b.shared == Sharing::Redis);
        let global = config.routes.iter().any(|r| {
            r.rate_limit
                .as_ref()
                .is_some_and(|l| l.scope == Scope::Global)
                || r.idempotency
                    .as_ref()
                    .is_some_and(|i| i.store == crate::config::IdempotencyStore::Redis)
                || shared(r.circuit_breaker.as_ref())
        }) || config.upstreams.iter().any(|u| {
            shared(u.circuit_breaker.as_ref())
                || u.quota
                    .and_then(|q| q.declared)
                    .is_some_and(|d| d.scope == Scope::Global)
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
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let before =
                    previous.and_then(|p| p.upstreams.iter().find(|l| l.config.name == u.name));
                let same = |b: &LiveUpstream| {
                    b.config == *u && b.quota.as_ref().is_none_or(|q| q.uses(redis.as_ref()))
                };
                if let Some(same) = live_route::kept(before, same) {
                    return Ok(same);
                }
                let breaker = live_route::kept(before.and_then(|b| b.breaker.as_ref()), |b| {
                    u.circuit_breaker.as_ref() == Some(b.config())
                });
                LiveUpstream::start(u, metrics, breaker, before.map(|b| &**b), redis.as_ref())
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Past the only step that can fail: the routes' histograms use the config's buckets.
        metrics.set_latency_buckets(&config.latency_buckets);
        let cx = live_route::Context {
            config: &config,
            metrics,
            redis: redis.as_ref(),
            redis_same: previous.is_some_and(|p| p.config.redis == config.redis),
        };
        let routes: Vec<LiveRoute> = config
            .routes
            .iter()
            .map(|r| {
                let before =
                    previous.and_then(|p| p.routes.iter().find(|l| l.config.name == r.name));
                LiveRoute::build(r, before, &cx)
            })
            .collect();
        // Shared breakers (kept ones too) use this snapshot's client.
        let breakers = upstreams.iter().filter_map(|u| u.breaker.as_ref());
        for cell in breakers.chain(routes.iter().filter_map(|r| r.breaker.as_ref())) {
            cell.attach(redis.as_ref());
        }
        Ok(Self {
            slos: Slos::new(
                &config.slos,
                config.routes.len(),
                metrics,
                previous.map(|p| &p.slos),
            ),
            routes,
            redis,
            metrics: metrics.clone(),
            no_route_metrics: RouteMetrics::new(metrics, "", ""),
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
