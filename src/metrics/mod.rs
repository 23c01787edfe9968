//! Metrics: one registry we own, created once and passed down.
//!
//! We do not use the `prometheus` crate's global default registry: tests run many proxies in one
//! process and each must count only its own traffic. Label values are bounded: route and
//! upstream names come from the config, methods are folded to a fixed set, statuses are three
//! digits, and endpoints are config addresses. Raw paths and client addresses never become labels.

pub mod handles;
pub mod names;
pub mod server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Default bucket bounds of the request duration histogram, in seconds
/// (`metrics.latency_buckets` replaces them). Fine below a millisecond (a proxy's own
/// overhead) and with exact bounds at common SLO thresholds (100ms, 300ms, 1s).
pub const DURATION_BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// [`DURATION_BUCKETS`] as durations: the default of `metrics.latency_buckets`.
pub const DEFAULT_LATENCY_BUCKETS: [Duration; 19] = [
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(300),
    Duration::from_millis(500),
    Duration::from_millis(750),
    Duration::from_secs(1),
    Duration::from_millis(2500),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
];

/// The outcome of one attempt at an upstream endpoint, as the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum AttemptResult {
    /// A response came back with a status below 500.
    Success,
    /// A 5xx response came back.
    Status5xx,
    /// The connection could not be made.
    ConnectFailure,
    /// No response before the deadline.
    Timeout,
    /// The connection broke or the response was malformed.
    Error,
    /// A response the upstream's `outcome:` rules judged a failure (e.g. a 200 whose body
    /// says the payment timed out).
    OutcomeFailure,
}

impl AttemptResult {
    /// Every result, in declaration order (the index of each is `result as usize`).
    pub const ALL: [AttemptResult; 6] = [
        AttemptResult::Success,
        AttemptResult::Status5xx,
        AttemptResult::ConnectFailure,
        AttemptResult::Timeout,
        AttemptResult::Error,
        AttemptResult::OutcomeFailure,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Success => "success",
            AttemptResult::Status5xx => "5xx",
            AttemptResult::ConnectFailure => "connect_failure",
            AttemptResult::Timeout => "timeout",
            AttemptResult::Error => "error",
            AttemptResult::OutcomeFailure => "outcome_failure",
        }
    }
}

/// Handles to every metric family; cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Families>);

#[derive(Debug)]
struct Families {
    registry: Registry,
    requests: IntCounterVec,
    /// The bounds in seconds, and the request and upstream duration families on them;
    /// replaced when the bounds change.
    duration: Mutex<(Vec<f64>, HistogramVec, HistogramVec)>,
    attempts: IntCounterVec,
    outcome_rules: IntCounterVec,
    hedges: IntCounterVec,
    in_flight: IntGauge,
    circuit_state: IntGaugeVec,
    circuit_transitions: IntCounterVec,
    circuit_rejected: IntCounterVec,
    circuit_transition_reasons: IntCounterVec,
    circuit_opened_at: GaugeVec,
    circuit_shared_connected: IntGaugeVec,
    circuit_shared_fallback: IntCounterVec,
    endpoint_ejected: IntGaugeVec,
    endpoint_ejections: IntCounterVec,
    upstream_in_flight: IntGaugeVec,
    overload_rejected: IntCounterVec,
    adaptive_limit: IntGaugeVec,
    adaptive_in_flight: IntGaugeVec,
    adaptive_rejections: IntCounterVec,
    refused: IntCounterVec,
    quota_remaining: IntGaugeVec,
    quota_reset: IntGaugeVec,
    quota_total: IntCounterVec,
    retry_burning: IntGaugeVec,
    retry_burn_switches: IntCounterVec,
    retries: IntCounterVec,
    budget_exhausted: IntCounterVec,
    outcome_unknown: IntCounterVec,
    failover: IntCounterVec,
    endpoint_healthy: IntGaugeVec,
    health_checks: IntCounterVec,
    rate_limited: IntCounterVec,
    rate_limit_keys: IntGaugeVec,
    rate_limit_errors: IntCounterVec,
    rate_limit_evictions: IntCounterVec,
    redis_fast_fail: IntCounterVec,
    redis_available: IntGauge,
    slo_events: IntCounterVec,
    slo_objective: GaugeVec,
    slo_budget: GaugeVec,
    slo_burn: GaugeVec,
    reloads: IntCounterVec,
    generation: IntGauge,
    last_reload: prometheus::Gauge,
    config_hash: IntGaugeVec,
    read_timeouts: IntCounterVec,
    idempotency: IntCounterVec,
    idempotency_evictions: IntCounterVec,
    idempotency_keys_generated: IntCounterVec,
}

fn float_gauges(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn gauges(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

impl Metrics {
    /// Creates a fresh registry with every family registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let requests = counters(
            r,
            names::REQUESTS_TOTAL,
            "Requests answered by backstop.",
            &["route", "upstream", "method", "status"],
        );
        let (duration, upstream_duration) = duration_families(&DURATION_BUCKETS);
        for family in [&duration, &upstream_duration] {
            registry
                .register(Box::new(family.clone()))
                .expect("metric names are unique");
        }
        let attempts = counters(
            r,
            names::UPSTREAM_ATTEMPTS_TOTAL,
            "Attempts sent to upstream endpoints, by result.",
            &["upstream", "endpoint", "result"],
        );
        let in_flight = IntGauge::new(names::REQUESTS_IN_FLIGHT, "Requests being served now.")
            .expect("valid metric");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("metric names are unique");
        let build = gauges(
            r,
            names::BUILD_INFO,
            "Build information; always 1.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Self(Arc::new(Families {
            requests,
            duration: Mutex::new((DURATION_BUCKETS.to_vec(), duration, upstream_duration)),
            attempts,
            outcome_rules: counters(r, names::OUTCOME_RULE_TOTAL, "Upstream answers an outcome rule judged, by rule and verdict.", &["upstream", "rule", "outcome"]),
            hedges: counters(r, names::HEDGES_TOTAL, "Hedged attempts per route: sent, won (answered first), and the ones not sent: budget_exhausted, slo_burning, no_endpoint.", &["route", "result"]),
            in_flight,
            circuit_state: gauges(r, names::CIRCUIT_STATE, "Circuit breaker state, one-hot over closed, open, half_open.", &["upstream", "route", "state"]),
            circuit_transitions: counters(r, names::CIRCUIT_TRANSITIONS_TOTAL, "Circuit breaker state transitions.", &["upstream", "route", "from", "to"]),
            circuit_rejected: counters(r, names::CIRCUIT_REJECTED_TOTAL, "Requests rejected (enforce) or that would have been rejected (shadow) by a breaker.", &["upstream", "route", "mode"]),
            circuit_transition_reasons: counters(r, names::CIRCUIT_TRANSITION_REASONS_TOTAL, "Circuit breaker state transitions by reason.", &["upstream", "route", "from", "to", "reason"]),
            circuit_opened_at: float_gauges(r, names::CIRCUIT_OPENED_AT, "Unix time the breaker last opened from closed; 0 if it never opened.", &["upstream", "route"]),
            circuit_shared_connected: gauges(r, names::CIRCUIT_SHARED_CONNECTED, "Shared breaker (shared: redis): 1 while its last exchange with Redis succeeded, 0 while it decides alone.", &["upstream", "route"]),
            circuit_shared_fallback: counters(r, names::CIRCUIT_SHARED_FALLBACK_TOTAL, "Shared breaker (shared: redis): exchanges with Redis that failed, after which it went on with its local state.", &["upstream", "route"]),
            endpoint_ejected: gauges(r, names::ENDPOINT_EJECTED, "1 while outlier detection has the endpoint ejected.", &["upstream", "endpoint"]),
            endpoint_ejections: counters(r, names::ENDPOINT_EJECTIONS_TOTAL, "Outlier ejections per endpoint.", &["upstream", "endpoint"]),
            upstream_in_flight: gauges(r, names::UPSTREAM_IN_FLIGHT, "Requests in flight to the upstream.", &["upstream"]),
            overload_rejected: counters(r, names::OVERLOAD_REJECTED_TOTAL, "Requests rejected by max_concurrent_requests.", &["upstream"]),
            adaptive_limit: gauges(r, names::ADAPTIVE_LIMIT, "The adaptive concurrency limit of the upstream.", &["upstream"]),
            adaptive_in_flight: gauges(r, names::ADAPTIVE_IN_FLIGHT, "Requests in flight under the adaptive concurrency limit.", &["upstream"]),
            retry_burning: gauges(r, names::RETRY_BURNING, "1 while the route's retries are cut because its SLOs burn fast (retry.when_burning).", &["route"]),
            retry_burn_switches: counters(r, names::RETRY_BURN_SWITCHES_TOTAL, "Switches of retry.when_burning, by the state switched to (burning, normal).", &["route", "to"]),
            quota_remaining: gauges(r, names::UPSTREAM_QUOTA_REMAINING, "The quota the partner last said it has left; -1 before it said.", &["upstream"]),
            quota_reset: gauges(r, names::UPSTREAM_QUOTA_RESET_SECONDS, "Seconds until the partner's quota resets, as it last said.", &["upstream"]),
            quota_total: counters(r, names::UPSTREAM_QUOTA_TOTAL, "Attempts held back by the partner's quota (queued, shed) or the declared rate (declared_queued, declared_shed, declared_backend_error).", &["upstream", "result"]),
            refused: counters(r, names::REFUSED_TOTAL, "Requests backstop refused itself, by route and reason (circuit_open, circuit_half_open, upstream_overloaded, adaptive_concurrency_limited, rate_limited).", &["route", "reason"]),
            adaptive_rejections: counters(r, names::ADAPTIVE_REJECTIONS_TOTAL, "Requests rejected (enforce) or that would have been rejected (shadow) by the adaptive concurrency limit.", &["upstream", "mode"]),
            retries: counters(r, names::RETRIES_TOTAL, "Retries by route and triggering condition.", &["route", "reason"]),
            budget_exhausted: counters(r, names::RETRY_BUDGET_EXHAUSTED_TOTAL, "Retries refused by the retry budget.", &["route"]),
            outcome_unknown: counters(r, names::OUTCOME_UNKNOWN_TOTAL, "Non-idempotent requests that failed after being sent and were not retried.", &["route", "upstream"]),
            failover: counters(r, names::FAILOVER_TOTAL, "Attempts sent to a failover upstream.", &["route", "from", "to"]),
            endpoint_healthy: gauges(r, names::ENDPOINT_HEALTHY, "1 while active health checks consider the endpoint healthy.", &["upstream", "endpoint"]),
            health_checks: counters(r, names::HEALTH_CHECKS_TOTAL, "Active health checks by result.", &["upstream", "endpoint", "result"]),
            rate_limited: counters(r, names::RATE_LIMITED_TOTAL, "Requests rejected (enforce) or that would have been (shadow) by a rate limit.", &["route", "scope", "mode"]),
            rate_limit_keys: gauges(r, names::RATE_LIMIT_KEYS, "Live keys of a route's local rate limit.", &["route"]),
            rate_limit_errors: counters(r, names::RATE_LIMIT_BACKEND_ERRORS_TOTAL, "Global rate limit decisions Redis could not make in time.", &["route"]),
            redis_fast_fail: counters(r, names::REDIS_FAST_FAIL_TOTAL, "Global rate limit decisions that applied on_error at once, without asking Redis, while it was known to be down.", &["route"]),
            redis_available: {
                let g = IntGauge::new(names::REDIS_AVAILABLE, "1 while Redis answers global rate limit decisions; 0 while not connected or failing fast.").expect("valid metric");
                registry.register(Box::new(g.clone())).expect("metric names are unique");
                g
            },
            idempotency: counters(r, names::IDEMPOTENCY_TOTAL, "Requests with an idempotency key by what the idempotency layer did.", &["route", "result"]),
            idempotency_evictions: counters(r, names::IDEMPOTENCY_EVICTIONS_TOTAL, "Keys a route's local idempotency store evicted at max_keys before their ttl.", &["route"]),
            idempotency_keys_generated: counters(r, names::IDEMPOTENCY_KEYS_GENERATED_TOTAL, "Idempotency keys backstop added to non-idempotent requests.", &["upstream"]),
            rate_limit_evictions: counters(r, names::RATE_LIMIT_EVICTIONS_TOTAL, "Keys a route's local rate limit evicted to make room for new ones at max_keys.", &["route"]),
            slo_events: counters(r, names::SLO_EVENTS_TOTAL, "SLI events per SLO, good or bad.", &["slo", "result"]),
            slo_objective: float_gauges(r, names::SLO_OBJECTIVE, "SLO objective as a ratio.", &["slo"]),
            slo_budget: float_gauges(r, names::SLO_ERROR_BUDGET_REMAINING, "Share of the error budget left, since process start up to the SLO window; negative when overspent.", &["slo"]),
            slo_burn: float_gauges(r, names::SLO_BURN_RATE, "Error budget burn rate seen by this process over a window (1 = spending exactly the budget).", &["slo", "window"]),
            reloads: counters(r, names::CONFIG_RELOADS_TOTAL, "Config reloads by result.", &["result"]),
            generation: {
                let g = IntGauge::new(names::CONFIG_GENERATION, "Generation of the running config.").expect("valid metric");
                registry.register(Box::new(g.clone())).expect("metric names are unique");
                g
            },
            last_reload: {
                let g = prometheus::Gauge::new(names::CONFIG_LAST_RELOAD_SUCCESS, "Unix time of the last successful config load.").expect("valid metric");
                registry.register(Box::new(g.clone())).expect("metric names are unique");
                g
            },
            config_hash: gauges(r, names::CONFIG_HASH, "Constant 1, labelled with the SHA-256 of the running config.", &["sha256"]),
            read_timeouts: counters(r, names::UPSTREAM_READ_TIMEOUTS_TOTAL, "Upstream response bodies cut because no data arrived for read_timeout.", &["upstream", "endpoint"]),
            registry,
        }))
    }

    /// The one-hot state gauge of a breaker.
    pub fn circuit_state(&self, upstream: &str, route: &str, state: &str) -> IntGauge {
        self.0
            .circuit_state
            .with_label_values(&[upstream, route, state])
    }

    /// The transition counter of a breaker.
    pub fn circuit_transitions(
        &self,
        upstream: &str,
        route: &str,
        from: &str,
        to: &str,
    ) -> prometheus::IntCounter {
        self.0
            .circuit_transitions
            .with_label_values(&[upstream, route, from, to])
    }

    /// The transition counter of a breaker by reason.
    pub fn circuit_transition_reasons(
        &self,
        upstream: &str,
        route: &str,
        from: &str,
        to: &str,
        reason: &str,
    ) -> prometheus::IntCounter {
        self.0
            .circuit_transition_reasons
            .with_label_values(&[upstream, route, from, to, reason])
    }

    /// The opened-at gauge of a breaker.
    pub fn circuit_opened_at(&self, upstream: &str, route: &str) -> prometheus::Gauge {
        self.0
            .circuit_opened_at
            .with_label_values(&[upstream, route])
    }

    /// A shared breaker's connected gauge and fallback counter.
    pub fn circuit_shared(
        &self,
        upstream: &str,
        route: &str,
    ) -> (IntGauge, prometheus::IntCounter) {
        (
            self.0
                .circuit_shared_connected
                .with_label_values(&[upstream, route]),
            self.0
                .circuit_shared_fallback
                .with_label_values(&[upstream, route]),
        )
    }

    /// The rejection counter of a breaker in a mode.
    pub fn circuit_rejected(
        &self,
        upstream: &str,
        route: &str,
        mode: &str,
    ) -> prometheus::IntCounter {
        self.0
            .circuit_rejected
            .with_label_values(&[upstream, route, mode])
    }

    /// The ejected gauge and the ejection counter of an endpoint.
    pub fn ejection(&self, upstream: &str, endpoint: &str) -> (IntGauge, prometheus::IntCounter) {
        (
            self.0
                .endpoint_ejected
                .with_label_values(&[upstream, endpoint]),
            self.0
                .endpoint_ejections
                .with_label_values(&[upstream, endpoint]),
        )
    }

    /// The rejection counter, live-keys gauge and backend-error counter of a route's limit.
    pub fn rate_limit(
        &self,
        route: &str,
        scope: &str,
        mode: &str,
    ) -> (prometheus::IntCounter, IntGauge, prometheus::IntCounter) {
        (
            self.0.rate_limited.with_label_values(&[route, scope, mode]),
            self.0.rate_limit_keys.with_label_values(&[route]),
            self.0.rate_limit_errors.with_label_values(&[route]),
        )
    }

    /// The eviction counter of a route's local rate limit.
    pub fn rate_limit_evictions(&self, route: &str) -> prometheus::IntCounter {
        self.0.rate_limit_evictions.with_label_values(&[route])
    }

    /// The fast-fail counter of a route's global rate limit.
    pub fn redis_fast_fail(&self, route: &str) -> prometheus::IntCounter {
        self.0.redis_fast_fail.with_label_values(&[route])
    }

    /// The Redis availability gauge.
    pub fn redis_available(&self) -> IntGauge {
        self.0.redis_available.clone()
    }

    /// The good and bad event counters, objective gauge and budget gauge of an SLO.
    pub fn slo(
        &self,
        slo: &str,
    ) -> (
        [prometheus::IntCounter; 2],
        prometheus::Gauge,
        prometheus::Gauge,
    ) {
        (
            ["good", "bad"].map(|r| self.0.slo_events.with_label_values(&[slo, r])),
            self.0.slo_objective.with_label_values(&[slo]),
            self.0.slo_budget.with_label_values(&[slo]),
        )
    }

    /// The burn-rate gauge of an SLO over `window` ("5m", "30m", "1h", "6h").
    pub fn slo_burn(&self, slo: &str, window: &str) -> prometheus::Gauge {
        self.0.slo_burn.with_label_values(&[slo, window])
    }

    /// The reload families: accepted and rejected counters, generation, last success, hash.
    pub fn config_families(
        &self,
    ) -> (
        prometheus::IntCounter,
        prometheus::IntCounter,
        IntGauge,
        prometheus::Gauge,
        IntGaugeVec,
    ) {
        (
            self.0.reloads.with_label_values(&["accepted"]),
            self.0.reloads.with_label_values(&["rejected"]),
            self.0.generation.clone(),
            self.0.last_reload.clone(),
            self.0.config_hash.clone(),
        )
    }

    /// Counts a retry.
    pub fn retry(&self, route: &str, reason: &str) {
        self.0.retries.with_label_values(&[route, reason]).inc();
    }

    /// The hedge counter of `route` for `result`.
    pub fn hedge_handle(&self, route: &str, result: &str) -> prometheus::IntCounter {
        self.0.hedges.with_label_values(&[route, result])
    }

    /// Counts a retry refused by the budget.
    pub fn budget_exhausted(&self, route: &str) {
        self.0.budget_exhausted.with_label_values(&[route]).inc();
    }

    /// Counts an unknown outcome.
    pub fn outcome_unknown(&self, route: &str, upstream: &str) {
        self.0
            .outcome_unknown
            .with_label_values(&[route, upstream])
            .inc();
    }

    /// Counts one idempotency layer decision for `route`.
    pub fn idempotency(&self, route: &str, result: &str) {
        self.0.idempotency.with_label_values(&[route, result]).inc();
    }

    /// The counter of keys a route's local idempotency store evicted.
    pub fn idempotency_evictions(&self, route: &str) -> prometheus::IntCounter {
        self.0.idempotency_evictions.with_label_values(&[route])
    }

    /// Counts a key generated for a request to `upstream`.
    pub fn idempotency_key_generated(&self, upstream: &str) {
        self.0
            .idempotency_keys_generated
            .with_label_values(&[upstream])
            .inc();
    }

    /// Counts an attempt sent to a failover upstream.
    pub fn failover(&self, route: &str, from: &str, to: &str) {
        self.0.failover.with_label_values(&[route, from, to]).inc();
    }

    /// The health gauge and the check counters (success, failure) of an endpoint.
    pub fn health(
        &self,
        upstream: &str,
        endpoint: &str,
    ) -> (IntGauge, [prometheus::IntCounter; 2]) {
        (
            self.0
                .endpoint_healthy
                .with_label_values(&[upstream, endpoint]),
            ["success", "failure"].map(|r| {
                self.0
                    .health_checks
                    .with_label_values(&[upstream, endpoint, r])
            }),
        )
    }

    /// The in-flight gauge and the overload counter of an upstream.
    pub fn upstream_load(&self, upstream: &str) -> (IntGauge, prometheus::IntCounter) {
        (
            self.0.upstream_in_flight.with_label_values(&[upstream]),
            self.0.overload_rejected.with_label_values(&[upstream]),
        )
    }

    /// The limit gauge, in-flight gauge and rejection counter of an upstream's adaptive
    /// concurrency limit in `mode`.
    pub fn adaptive(
        &self,
        upstream: &str,
        mode: &str,
    ) -> (IntGauge, IntGauge, prometheus::IntCounter) {
        (
            self.0.adaptive_limit.with_label_values(&[upstream]),
            self.0.adaptive_in_flight.with_label_values(&[upstream]),
            self.0
                .adaptive_rejections
                .with_label_values(&[upstream, mode]),
        )
    }

    /// The counter of response bodies of one endpoint cut by `read_timeout`.
    pub fn read_timeout_handle(&self, upstream: &str, endpoint: &str) -> prometheus::IntCounter {
        self.0
            .read_timeouts
            .with_label_values(&[upstream, endpoint])
    }

    /// The registry, for modules that add their own families.
    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    /// The request counter of one label set; see [`handles::RouteMetrics`] for the cached path.
    pub fn requests_handle(
        &self,
        route: &str,
        upstream: &str,
        method: &Method,
        status: u16,
    ) -> prometheus::IntCounter {
        let mut code = itoa::Buffer::new();
        self.0.requests.with_label_values(&[
            route,
            upstream,
            method_label(method),
            code.format(status),
        ])
    }

    /// The duration histogram of one route.
    pub fn duration_handle(&self, route: &str, upstream: &str) -> prometheus::Histogram {
        let family = self.0.duration.lock().unwrap_or_else(|e| e.into_inner());
        family.1.with_label_values(&[route, upstream])
    }

    /// The burning gauge and the two switch counters (to burning, to normal) of a route.
    pub fn retry_burning(
        &self,
        route: &str,
    ) -> (IntGauge, prometheus::IntCounter, prometheus::IntCounter) {
        (
            self.0.retry_burning.with_label_values(&[route]),
            self.0
                .retry_burn_switches
                .with_label_values(&[route, "burning"]),
            self.0
                .retry_burn_switches
                .with_label_values(&[route, "normal"]),
        )
    }

    /// Remaining and reset gauges, queued and shed counters of an upstream's quota.
    pub fn upstream_quota(
        &self,
        upstream: &str,
    ) -> (
        IntGauge,
        IntGauge,
        prometheus::IntCounter,
        prometheus::IntCounter,
    ) {
        (
            self.0.quota_remaining.with_label_values(&[upstream]),
            self.0.quota_reset.with_label_values(&[upstream]),
            self.0.quota_total.with_label_values(&[upstream, "queued"]),
            self.0.quota_total.with_label_values(&[upstream, "shed"]),
        )
    }

    /// One `result` of an upstream's quota counter (`declared_queued`, `declared_shed`,
    /// `declared_backend_error`).
    pub fn upstream_quota_result(&self, upstream: &str, result: &str) -> prometheus::IntCounter {
        self.0.quota_total.with_label_values(&[upstream, result])
    }

    /// The counter of requests of `route` backstop refused for `reason`.
    pub fn refused_handle(&self, route: &str, reason: &str) -> prometheus::IntCounter {
        self.0.refused.with_label_values(&[route, reason])
    }

    /// The upstream-time histogram of one route.
    pub fn upstream_duration_handle(&self, route: &str, upstream: &str) -> prometheus::Histogram {
        let family = self.0.duration.lock().unwrap_or_else(|e| e.into_inner());
        family.2.with_label_values(&[route, upstream])
    }

    /// Uses `bounds` as the buckets of the duration histograms from now on. Unchanged bounds
    /// keep the family; new ones replace it, so its series start over (handles taken before
    /// keep counting into the old family, which is no longer exported). Call it before taking
    /// the handles of a new snapshot.
    pub fn set_latency_buckets(&self, bounds: &[Duration]) {
        let seconds: Vec<f64> = bounds.iter().map(Duration::as_secs_f64).collect();
        let mut family = self.0.duration.lock().unwrap_or_else(|e| e.into_inner());
        if family.0 == seconds || seconds.is_empty() {
            return;
        }
        let (requests, upstreams) = duration_families(&seconds);
        for (old, fresh) in [(&family.1, &requests), (&family.2, &upstreams)] {
            let _ = self.0.registry.unregister(Box::new(old.clone()));
            if let Err(e) = self.0.registry.register(Box::new(fresh.clone())) {
                // Cannot happen (the old family is gone); keep the old one exported.
                tracing::error!(error = %e, "cannot replace a duration histogram");
                let _ = self.0.registry.register(Box::new(old.clone()));
                return;
            }
        }
        *family = (seconds, requests, upstreams);
    }

    /// The attempt counter of one endpoint and result.
    pub fn attempts_handle(
        &self,
        upstream: &str,
        endpoint: &str,
        result: AttemptResult,
    ) -> prometheus::IntCounter {
        self.0
            .attempts
            .with_label_values(&[upstream, endpoint, result.as_str()])
    }

    /// The counter of answers from `upstream` that outcome rule `rule` judged `outcome`.
    pub fn outcome_rule_handle(
        &self,
        upstream: &str,
        rule: &str,
        outcome: &str,
    ) -> prometheus::IntCounter {
        self.0
            .outcome_rules
            .with_label_values(&[upstream, rule, outcome])
    }

    /// The gauge of requests being served.
    pub fn in_flight(&self) -> &IntGauge {
        &self.0.in_flight
    }

    /// Everything in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.0.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The request and upstream duration histogram families with `bounds` (seconds, ascending).
fn duration_families(bounds: &[f64]) -> (HistogramVec, HistogramVec) {
    let family = |name: &str, help: &str| {
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(bounds.to_vec()),
            &["route", "upstream"],
        )
        .expect("valid metric")
    };
    (
        family(
            names::REQUEST_DURATION_SECONDS,
            "Time from request received to response headers sent, in seconds.",
        ),
        family(
            names::UPSTREAM_DURATION_SECONDS,
            "Time requests spent waiting on upstreams, summed over their attempts, in seconds.",
        ),
    )
}

/// Folds methods to a fixed set so a client cannot create label values at will.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}
