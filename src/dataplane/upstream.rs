//! The live side of one configured upstream: its client, its endpoints as URI parts, its
//! balancer.
//!
//! Everything the request path needs is computed here once per config, so forwarding a
//! request does no string parsing.

use http::uri::{Authority, Scheme};
use http::HeaderValue;

use std::sync::Arc;

use super::adaptive_cell::AdaptiveCell;
use super::balancer::Balancer;
use super::breaker_cell::BreakerCell;
use super::bulkhead::Bulkhead;
use super::client::{self, ClientError, UpstreamClient};
use super::ejection::EjectionCell;
use super::ratelimit::global::Redis;
use crate::config::Upstream;
use crate::metrics::handles::EndpointMetrics;
use crate::metrics::Metrics;

/// One endpoint, ready to build request URIs.
#[derive(Debug)]
pub struct LiveEndpoint {
    /// `host:port` as configured; the metrics label.
    pub address: String,
    /// URI authority for requests to this endpoint.
    pub authority: Authority,
    /// Attempt counters.
    pub metrics: EndpointMetrics,
    /// Set by active health checks; true until a check says otherwise.
    pub healthy: std::sync::atomic::AtomicBool,
    /// In-flight and latency, for the balancer.
    pub load: super::load::EndpointLoad,
}

impl LiveEndpoint {
    /// Whether active health checks consider it healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// An upstream ready to take requests.
#[derive(Debug)]
pub struct LiveUpstream {
    /// The config it was built from (reloads compare it to carry state over).
    pub config: Upstream,
    /// Its active health check tasks; stopped when the upstream is dropped.
    pub health: std::sync::OnceLock<super::tasks::Tasks>,
    /// Configured name.
    pub name: String,
    /// Endpoints in config order.
    pub endpoints: Vec<LiveEndpoint>,
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host header override.
    pub host_header: Option<HeaderValue>,
    /// Pooled client.
    pub client: UpstreamClient,
    /// Endpoint choice.
    pub balancer: Balancer,
    /// Upstream-level circuit breaker.
    pub breaker: Option<Arc<BreakerCell>>,
    /// Outlier detection.
    pub ejection: Option<Arc<EjectionCell>>,
    /// In-flight accounting and limit.
    pub bulkhead: Arc<Bulkhead>,
    /// Adaptive concurrency limit.
    pub adaptive: Option<Arc<AdaptiveCell>>,
    /// The partner's quota as it says it (`quota`).
    pub quota: Option<Arc<super::quota::QuotaCell>>,
    /// `backstop_outcome_rule_total` of each outcome rule, in rule order (empty without
    /// `outcome:`).
    pub outcome_counters: Vec<prometheus::IntCounter>,
}

impl LiveUpstream {
    /// Builds the live upstream from its config.
    /// Builds the upstream, reusing `breaker` (carried over a reload) when given, and starts its
    /// health checks. Needs a tokio runtime.
    /// `previous` is the upstream of the same name before a reload: its endpoints' latency
    /// estimates carry over by address, and an added endpoint starts at the median of the
    /// pool's estimates, neither shunned nor flooded.
    /// `redis` is the process's shared client, for a declared quota rate with `scope: global`.
    pub fn start(
        config: &Upstream,
        metrics: &Metrics,
        breaker: Option<Arc<BreakerCell>>,
        previous: Option<&LiveUpstream>,
        redis: Option<&Arc<Redis>>,
    ) -> Result<Arc<Self>, ClientError> {
        let live = Arc::new(Self::build(config, metrics, breaker, previous, redis)?);
        if let Some(check) = &config.health_check {
            let _ = live.health.set(super::health::start(&live, check, metrics));
        }
        Ok(live)
    }

    fn build(
        config: &Upstream,
        metrics: &Metrics,
        breaker: Option<Arc<BreakerCell>>,
        previous: Option<&LiveUpstream>,
        redis: Option<&Arc<Redis>>,
    ) -> Result<Self, ClientError> {
        let now = tokio::time::Instant::now();
        let starting_estimate = |address: &str| {
            let previous = previous?;
            Some(
                match previous.endpoints.iter().find(|e| e.address == address) {
                    Some(same) => same.load.ewma_at(now),
                    None => super::load::median(previous.endpoints.iter().map(|e| &e.load), now),
                },
            )
        };
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| LiveEndpoint {
                address: e.address.clone(),
                authority: e
                    .address
                    .parse()
                    .expect("validated host:port is a valid authority"),
                metrics: EndpointMetrics::new(metrics, &config.name, &e.address),
                healthy: std::sync::atomic::AtomicBool::new(true),
                load: match starting_estimate(&e.address) {
                    Some(estimate) => {
                        super::load::EndpointLoad::starting_at(e.weight, estimate, now)
                    }
                    None => super::load::EndpointLoad::new(e.weight),
                },
            })
            .collect();
        Ok(Self {
            config: config.clone(),
            health: std::sync::OnceLock::new(),
            name: config.name.clone(),
            endpoints,
            scheme: if config.tls.is_some() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            host_header: config.host_header.clone(),
            client: client::build(config, metrics)?,
            balancer: Balancer::new(&config.endpoints, config.load_balancing),
            breaker: breaker.or_else(|| {
                config
                    .circuit_breaker
                    .clone()
                    .map(|b| BreakerCell::new(b, &config.name, "", metrics))
            }),
            ejection: config.outlier_detection.clone().map(|o| {
                let addresses = config.endpoints.iter().map(|e| e.address.clone()).collect();
                EjectionCell::new(o, &config.name, addresses, metrics)
            }),
            bulkhead: Bulkhead::new(&config.name, config.max_concurrent_requests, metrics),
            // The learned limit survives a reload that leaves its config as it was.
            // What the partner said about its quota, and the declared rate's bucket, survive a
            // reload that keeps the config (and, for a global rate, the Redis client).
            quota: config.quota.map(|wanted| {
                let before = previous.and_then(|p| p.quota.as_ref());
                crate::runtime::live_route::kept(before, |q| q.config() == wanted && q.uses(redis))
                    .unwrap_or_else(|| {
                        Arc::new(super::quota::QuotaCell::new(
                            wanted,
                            &config.name,
                            redis,
                            metrics,
                        ))
                    })
            }),
            adaptive: config.adaptive_concurrency.as_ref().map(|wanted| {
                let before = previous.and_then(|p| p.adaptive.as_ref());
                crate::runtime::live_route::kept(before, |a| a.config() == *wanted)
                    .unwrap_or_else(|| AdaptiveCell::new(wanted.clone(), &config.name, metrics))
            }),
            outcome_counters: config
                .outcome
                .iter()
                .flat_map(|rules| &rules.rules)
                .map(|r| metrics.outcome_rule_handle(&config.name, &r.name, r.verdict.as_str()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn upstream(addresses: &[&str]) -> Upstream {
        let endpoints: String = addresses
            .iter()
            .map(|a| format!("      - address: {a}\n"))
            .collect();
        let yaml = format!(
            "upstreams:\n  svc:\n    endpoints:\n{endpoints}routes:\n  - name: r\n    upstream: svc\n"
        );
        crate::config::load_str(&yaml).unwrap().upstreams.remove(0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_keeps_estimates_and_starts_added_endpoints_at_the_median() {
        let metrics = Metrics::new();
        let before = LiveUpstream::start(
            &upstream(&["a:1", "b:1", "c:1"]),
            &metrics,
            None,
            None,
            None,
        )
        .unwrap();
        let now = tokio::time::Instant::now();
        for (e, ms) in [(0, 10), (1, 20), (2, 400)] {
            before.endpoints[e]
                .load
                .reset(Duration::from_millis(ms), now);
        }
        let after = LiveUpstream::start(
            &upstream(&["a:1", "c:1", "d:1"]),
            &metrics,
            None,
            Some(&before),
            None,
        )
        .unwrap();
        let ms = |e: usize| after.endpoints[e].load.ewma_at(now).as_secs_f64() * 1000.0;
        assert!((ms(0) - 10.0).abs() < 0.5, "a kept its estimate: {}", ms(0));
        assert!(
            (ms(1) - 400.0).abs() < 1.0,
            "c kept its estimate: {}",
            ms(1)
        );
        assert!(
            (ms(2) - 20.0).abs() < 0.5,
            "d started at the median: {}",
            ms(2)
        );
    }
}
