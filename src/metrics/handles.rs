//! Metric handles resolved once per config instead of once per request.
//!
//! `with_label_values` hashes every label string and takes a lock; on the request path that
//! costs more than the rest of our own per-request work. The route and upstream labels are
//! known when the config is compiled, so each route gets its histogram up front and a lazily
//! filled table of request counters by (method, status); each endpoint gets its attempt
//! counters up front (which also makes those series exist from the first scrape).

use std::sync::OnceLock;
use std::time::Duration;

use http::Method;
use prometheus::{Histogram, IntCounter};

use super::{method_label, AttemptResult, Metrics};

const METHODS: usize = 10;
const STATUSES: usize = 500; // 100..=599

type StatusTable = Box<[OnceLock<IntCounter>]>;

/// The handles of one route (or of "no route").
#[derive(Debug)]
pub struct RouteMetrics {
    metrics: Metrics,
    route: String,
    upstream: String,
    duration: Histogram,
    upstream_duration: Histogram,
    requests: [OnceLock<StatusTable>; METHODS],
}

impl RouteMetrics {
    /// Handles for `route` to `upstream` ("" and "" for requests no route took).
    pub fn new(metrics: &Metrics, route: &str, upstream: &str) -> Self {
        Self {
            metrics: metrics.clone(),
            route: route.to_owned(),
            upstream: upstream.to_owned(),
            duration: metrics.duration_handle(route, upstream),
            upstream_duration: metrics.upstream_duration_handle(route, upstream),
            requests: Default::default(),
        }
    }

    /// Counts the time one request waited on upstreams.
    pub fn observe_upstream(&self, waited: Duration) {
        self.upstream_duration.observe(waited.as_secs_f64());
    }

    /// Counts one answered request and its duration.
    pub fn observe(&self, method: &Method, status: u16, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
        let m = method_index(method);
        let slot = usize::from(status.clamp(100, 599) - 100);
        let table =
            self.requests[m].get_or_init(|| (0..STATUSES).map(|_| OnceLock::new()).collect());
        table[slot]
            .get_or_init(|| {
                self.metrics
                    .requests_handle(&self.route, &self.upstream, method, status)
            })
            .inc();
    }
}

/// Cumulative totals of one route, for the status page's live rates.
#[derive(Debug, Clone, Default)]
pub struct RouteTotals {
    /// Requests answered.
    pub count: u64,
    /// Of which 5xx.
    pub errors: u64,
    /// Duration histogram: (upper bound in seconds, cumulative count).
    pub buckets: Vec<(f64, u64)>,
}

impl RouteMetrics {
    /// The route's cumulative totals now.
    pub fn totals(&self) -> RouteTotals {
        use prometheus::core::Metric;
        let histogram = self.duration.metric();
        let buckets = histogram
            .get_histogram()
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect();
        let errors = self
            .requests
            .iter()
            .filter_map(|table| table.get())
            .flat_map(|table| table[400..].iter().filter_map(|c| c.get()))
            .map(|c| c.get())
            .sum();
        RouteTotals {
            count: self.duration.get_sample_count(),
            errors,
            buckets,
        }
    }
}

/// The attempt counters of one endpoint, one per result.
#[derive(Debug)]
pub struct EndpointMetrics([IntCounter; 6]);

impl EndpointMetrics {
    /// Handles for `endpoint` of `upstream`.
    pub fn new(metrics: &Metrics, upstream: &str, endpoint: &str) -> Self {
        Self(AttemptResult::ALL.map(|r| metrics.attempts_handle(upstream, endpoint, r)))
    }

    /// Counts one attempt.
    pub fn attempt(&self, result: AttemptResult) {
        self.0[result as usize].inc();
    }
}

fn method_index(method: &Method) -> usize {
    match method_label(method) {
        "GET" => 0,
        "HEAD" => 1,
        "POST" => 2,
        "PUT" => 3,
        "DELETE" => 4,
        "PATCH" => 5,
        "OPTIONS" => 6,
        "TRACE" => 7,
        "CONNECT" => 8,
        _ => 9,
    }
}
