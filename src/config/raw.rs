//! The YAML schema, exactly as users write it.
//!
//! These structs mirror the file one to one: every struct denies unknown keys so that a typo
//! (`wieght:`) is an error instead of a silently ignored setting. Values that need parsing
//! (durations, percentages, addresses) stay strings wrapped in [`Spanned`] so that
//! [`super::compile`] can report every bad value at once, with its line and column, instead of
//! stopping at the first one as serde would.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// A string value with the place in the file it came from.
pub type Text = Spanned<String>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address the proxy listens on, `host:port`.
    pub listen: Option<Text>,
    /// The admin listener (metrics, health).
    pub admin: Option<RawAdmin>,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub drain_timeout: Option<Text>,
    /// Named upstreams (backend pools).
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// Routes, tried in order; the first match wins.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Redis for global rate limits.
    pub redis: Option<Spanned<RawRedis>>,
    /// Service level objectives.
    #[serde(default)]
    pub slos: Vec<RawSlo>,
}

/// One entry under `slos:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlo {
    /// Unique name; the `slo` label.
    pub name: Text,
    /// Routes whose requests count.
    pub routes: Spanned<Vec<Text>>,
    /// e.g. `99.9%`.
    pub objective: Text,
    /// e.g. `28d`.
    pub window: Option<Text>,
    /// `availability` or `{ latency_below: 300ms }`.
    pub sli: Spanned<RawSli>,
    /// Do not count backstop's own 429s against availability.
    pub exclude_rate_limited: Option<bool>,
}

/// `sli:`
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSli {
    /// `availability`.
    Named(String),
    /// `{ latency_below: 300ms }`.
    Latency {
        /// The threshold.
        latency_below: String,
    },
}

/// `redis:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://host:port[/db]`.
    pub url: Text,
    /// Longest wait for one decision.
    pub timeout: Option<Text>,
    /// allow | deny when Redis fails or is slow.
    pub on_error: Option<Text>,
    /// Use the Redis Cluster client.
    pub cluster: Option<bool>,
}

/// `rate_limit:` on a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// enforce | shadow.
    pub mode: Option<Text>,
    /// `100/s`, `6000/m`, `10000/h`.
    pub rate: Text,
    /// Extra requests allowed at once above the steady rate.
    pub burst: Option<Spanned<u32>>,
    /// route | client_ip | header:NAME.
    pub key: Option<Text>,
    /// local | global.
    pub scope: Option<Text>,
    /// reject | shared.
    pub on_missing_key: Option<Text>,
    /// Most live keys kept per route (local scope).
    pub max_keys: Option<Spanned<u32>>,
}

/// `admin:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address of the admin listener.
    pub listen: Option<Text>,
    /// File holding the bearer token for mutating admin endpoints.
    pub token_file: Option<Text>,
}

/// One entry under `upstreams:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Where the upstream's instances are.
    pub endpoints: Spanned<Vec<RawEndpoint>>,
    /// Time allowed to establish a TCP (and TLS) connection.
    pub connect_timeout: Option<Text>,
    /// `false`, `true`, or TLS options.
    pub tls: Option<Spanned<RawTls>>,
    /// Replace the `Host` header sent upstream.
    pub host_header: Option<Text>,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Option<Text>,
    /// Most idle pooled connections kept per endpoint.
    pub max_idle_connections: Option<Spanned<u32>>,
    /// Bulkhead: most requests in flight to this upstream; beyond it, 503 upstream_overloaded.
    pub max_concurrent_requests: Option<Spanned<u32>>,
    /// Circuit breaker for the whole upstream.
    pub circuit_breaker: Option<Spanned<RawCircuitBreaker>>,
    /// Passive per-endpoint ejection.
    pub outlier_detection: Option<Spanned<RawOutlier>>,
    /// p2c_ewma | round_robin | least_request.
    pub load_balancing: Option<Text>,
    /// Active health checks.
    pub health_check: Option<Spanned<RawHealthCheck>>,
}

/// `health_check:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Path to GET.
    pub path: Option<Text>,
    /// Time between checks.
    pub interval: Option<Text>,
    /// Deadline of one check.
    pub timeout: Option<Text>,
    /// Successes in a row that make an endpoint healthy.
    pub healthy_threshold: Option<Spanned<u32>>,
    /// Failures in a row that make an endpoint unhealthy.
    pub unhealthy_threshold: Option<Spanned<u32>>,
    /// Statuses that count as healthy: `200-299`, `204`.
    pub expect_status: Option<Vec<Text>>,
}

/// `circuit_breaker:` on an upstream or a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    /// enforce | shadow.
    pub mode: Option<Text>,
    /// Open after N failures in a row.
    pub consecutive_failures: Option<Spanned<u32>>,
    /// Open when the failure share over a window reaches a threshold.
    pub failure_rate: Option<RawRate>,
    /// Open when the share of slow calls reaches a threshold.
    pub slow_call: Option<RawSlowCall>,
    /// First open period.
    pub open_for: Option<Text>,
    /// Cap of the doubling open period.
    pub max_open_for: Option<Text>,
    /// Probes while half-open.
    pub half_open_requests: Option<Spanned<u32>>,
    /// What counts as a failure.
    pub failure_on: Option<Vec<Text>>,
}

/// `failure_rate:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    /// e.g. `50%`.
    pub threshold: Text,
    /// Sliding window length.
    pub window: Option<Text>,
    /// Fewest calls before the rate counts.
    pub min_requests: Option<Spanned<u32>>,
}

/// `slow_call:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlowCall {
    /// A call at least this long is slow.
    pub duration: Text,
    /// e.g. `80%`.
    pub threshold: Text,
    /// Sliding window length (default: failure_rate's, else 30s).
    pub window: Option<Text>,
    /// Fewest calls before the rate counts (default: failure_rate's, else 20).
    pub min_requests: Option<Spanned<u32>>,
}

/// `outlier_detection:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: Option<Spanned<u32>>,
    /// First ejection length.
    pub base_ejection: Option<Text>,
    /// Longest ejection.
    pub max_ejection: Option<Text>,
    /// Largest share of endpoints ejected at once, e.g. `50%`.
    pub max_ejected: Option<Text>,
}

/// One endpoint of an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    /// `host:port`.
    pub address: Text,
    /// Lower is preferred.
    pub priority: Option<Spanned<u32>>,
    /// Relative share of traffic within a priority group.
    pub weight: Option<Spanned<u32>>,
}

/// `tls:` is either a switch or a table of options.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawTls {
    /// `tls: true` (verify against the bundled web PKI roots) or `tls: false`.
    Enabled(bool),
    /// `tls: { sni: ..., ca_file: ..., verify: true }`.
    Options(RawTlsOptions),
}

/// The table form of `tls:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsOptions {
    /// Server name sent in SNI and checked in the certificate.
    pub sni: Option<String>,
    /// PEM file with the CA certificates to trust instead of the web PKI roots.
    pub ca_file: Option<String>,
    /// Verify the upstream's certificate (default true).
    pub verify: Option<bool>,
}

/// One entry under `routes:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique name; used in metrics and logs.
    pub name: Text,
    /// What requests this route takes.
    #[serde(rename = "match", default)]
    pub matcher: Option<RawMatch>,
    /// Name of the upstream.
    pub upstream: Text,
    /// Total time allowed for the response headers.
    pub timeout: Option<Text>,
    /// A breaker for this route's traffic only, instead of the upstream's.
    pub circuit_breaker: Option<Spanned<RawCircuitBreaker>>,
    /// Retry policy.
    pub retry: Option<Spanned<RawRetry>>,
    /// Other upstreams to use, in order, when this route's upstream cannot take the request.
    pub failover: Option<Vec<Text>>,
    /// Rate limit.
    pub rate_limit: Option<Spanned<RawRateLimit>>,
}

/// `retry:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Total attempts, the first included.
    pub attempts: Option<Spanned<u32>>,
    /// Deadline of each attempt.
    pub per_try_timeout: Option<Text>,
    /// Conditions that trigger a retry.
    pub on: Option<Vec<Text>>,
    /// Exponential back-off with full jitter.
    pub backoff: Option<RawBackoff>,
    /// Retry budget.
    pub budget: Option<RawBudget>,
    /// unsent-only | idempotency-key | never.
    pub non_idempotent: Option<Text>,
    /// Header carrying the idempotency key.
    pub idempotency_header: Option<Text>,
    /// Largest request body kept for replay, in bytes.
    pub max_buffered_body: Option<Spanned<u64>>,
}

/// `backoff:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    /// First back-off ceiling.
    pub base: Option<Text>,
    /// Largest back-off.
    pub max: Option<Text>,
}

/// `budget:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    /// Share of requests, e.g. `20%`.
    pub ratio: Option<Text>,
    /// Retries always allowed per second.
    pub min_per_second: Option<Spanned<u32>>,
}

/// `match:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Exact host (port ignored), or `*.example.com`.
    pub host: Option<Text>,
    /// Path prefix, segment-aware.
    pub path_prefix: Option<Text>,
    /// Allowed methods.
    pub methods: Option<Vec<Text>>,
    /// Headers that must be present with exactly this value.
    #[serde(default)]
    pub headers: BTreeMap<String, Text>,
}
