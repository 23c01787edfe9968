//! The YAML schema, exactly as users write it.
//!
//! These structs mirror the file one to one: every struct denies unknown keys so that a typo
//! (`wieght:`) is an error instead of a silently ignored setting. Values that need parsing
//! (durations, percentages, addresses) stay strings wrapped in [`Spanned`] so that
//! [`super::compile`] can report every bad value at once, with its line and column, instead of
//! stopping at the first one as serde would.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// A string value with the place in the file it came from.
pub type Text = Spanned<String>;

/// For the JSON Schema only: where backstop reads a string, YAML may also give a number
/// (`failure_on: [5xx, 429]`), which backstop reads as its text.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum Scalar {
    Text(String),
    Number(f64),
}

/// The whole file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address the proxy listens on, `host:port`.
    #[schemars(with = "Option<String>")]
    pub listen: Option<Text>,
    /// The admin listener (metrics, health).
    pub admin: Option<RawAdmin>,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[schemars(with = "Option<String>")]
    pub drain_timeout: Option<Text>,
    /// Limits and deadlines of the downstream listener.
    pub server: Option<RawServer>,
    /// The access log (target `backstop::access`).
    pub access_log: Option<RawAccessLog>,
    /// Named upstreams (backend pools).
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// Routes, tried in order; the first match wins.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Redis for global rate limits.
    #[schemars(with = "Option<RawRedis>")]
    pub redis: Option<Spanned<RawRedis>>,
    /// Service level objectives.
    #[serde(default)]
    pub slos: Vec<RawSlo>,
    /// Settings of `backstop rules` (the Prometheus rule file).
    pub slos_rules: Option<RawSlosRules>,
    /// Metrics settings.
    pub metrics: Option<RawMetrics>,
}

/// `metrics:` settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Bucket bounds of `backstop_request_duration_seconds`, ascending durations (`5ms`,
    /// `800ms`, `2s`); every `latency_below` SLO threshold must be one of them.
    #[schemars(with = "Option<Vec<String>>")]
    pub latency_buckets: Option<Spanned<Vec<Text>>>,
}

/// `access_log:`: which requests get an access log line.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// Share of successful requests logged, e.g. `1%`; requests backstop refused or that
    /// failed upstream are always logged. Default `100%`.
    #[schemars(with = "Option<String>")]
    pub sample: Option<Text>,
}

/// `server:` limits and deadlines that protect the proxy listener from slow or hostile clients.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Time a new connection has to send its first request's headers (HTTP/1) or its preface
    /// and first headers (HTTP/2).
    #[schemars(with = "Option<String>")]
    pub header_read_timeout: Option<Text>,
    /// Longest an idle keep-alive connection (HTTP/1.1 or HTTP/2) is kept open.
    #[schemars(with = "Option<String>")]
    pub idle_timeout: Option<Text>,
    /// Longest gap between two pieces of a request body before the request is answered 408.
    #[schemars(with = "Option<String>")]
    pub client_body_timeout: Option<Text>,
    /// Most open client connections; `auto` derives it from the file-descriptor limit.
    #[schemars(with = "Option<Scalar>")]
    pub max_connections: Option<Text>,
    /// Largest request head (request line and headers), in bytes.
    #[schemars(with = "Option<u32>")]
    pub max_request_headers_bytes: Option<Spanned<u32>>,
    /// Most concurrent HTTP/2 streams, per connection and across all connections.
    #[schemars(with = "Option<u32>")]
    pub max_concurrent_streams: Option<Spanned<u32>>,
    /// Most bytes of request bodies kept for replay across all requests at once.
    #[schemars(with = "Option<u64>")]
    pub max_buffered_bytes: Option<Spanned<u64>>,
    /// Peers whose forwarded headers (x-forwarded-*, x-real-ip) are trusted, as CIDRs.
    #[schemars(with = "Option<Vec<String>>")]
    pub trusted_proxies: Option<Vec<Text>>,
}

/// One entry under `slos:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSlo {
    /// Unique name; the `slo` label.
    #[schemars(with = "String")]
    pub name: Text,
    /// Routes whose requests count.
    #[schemars(with = "Vec<String>")]
    pub routes: Spanned<Vec<Text>>,
    /// e.g. `99.9%`.
    #[schemars(with = "String")]
    pub objective: Text,
    /// A rolling window, e.g. `28d`, or a calendar period: `calendar_month` or
    /// `calendar_quarter`.
    #[schemars(with = "Option<String>")]
    pub window: Option<Text>,
    /// Time zone of a calendar window, as a fixed UTC offset: `UTC` (default), `+02:00`,
    /// `-05:00`.
    #[schemars(with = "Option<String>")]
    pub time_zone: Option<Text>,
    /// Settings of this SLO's burn-rate alerts.
    pub alerting: Option<RawSloAlerting>,
    /// `availability` or `{ latency_below: 300ms }`.
    #[schemars(with = "RawSli")]
    pub sli: Spanned<RawSli>,
    /// Do not count backstop's own 429s against availability.
    pub exclude_rate_limited: Option<bool>,
}

/// `slos[].alerting:`
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSloAlerting {
    /// A burn-rate alert needs at least this many events in its long window (default 10; 0
    /// turns the check off).
    #[schemars(with = "Option<u64>")]
    pub min_events: Option<Spanned<u64>>,
}

/// `slos_rules:` settings of the generated Prometheus rules.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSlosRules {
    /// Labels kept in every aggregation besides the rules' own, e.g. `[job, namespace]`.
    #[schemars(with = "Option<Vec<String>>")]
    pub keep_labels: Option<Vec<Text>>,
    /// Base URL of the `runbook_url` annotations (`#<alert name>` is appended).
    #[schemars(with = "Option<String>")]
    pub runbook_base_url: Option<Text>,
    /// Evaluation interval of the group with the 1d, 3d and period windows, e.g. `5m`.
    #[schemars(with = "Option<String>")]
    pub long_window_interval: Option<Text>,
    /// A breaker open or half-open this long alerts, e.g. `10m`.
    #[schemars(with = "Option<String>")]
    pub breaker_open_for: Option<Text>,
    /// At least this share of an upstream's endpoints ejected alerts, e.g. `50%`.
    #[schemars(with = "Option<String>")]
    pub ejected_share: Option<Text>,
}

/// `sli:`
#[derive(Debug, Deserialize, JsonSchema)]
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
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://host:port[/db]`.
    #[schemars(with = "String")]
    pub url: Text,
    /// Longest wait for one decision.
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Text>,
    /// allow | deny when Redis fails or is slow.
    #[schemars(with = "Option<String>")]
    pub on_error: Option<Text>,
    /// Use the Redis Cluster client.
    pub cluster: Option<bool>,
}

/// `rate_limit:` on a route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// enforce | shadow.
    #[schemars(with = "Option<String>")]
    pub mode: Option<Text>,
    /// `100/s`, `6000/m`, `10000/h`.
    #[schemars(with = "String")]
    pub rate: Text,
    /// Extra requests allowed at once above the steady rate.
    #[schemars(with = "Option<u32>")]
    pub burst: Option<Spanned<u32>>,
    /// route | client_ip | header:NAME.
    #[schemars(with = "Option<String>")]
    pub key: Option<Text>,
    /// local | global.
    #[schemars(with = "Option<String>")]
    pub scope: Option<Text>,
    /// reject | shared.
    #[schemars(with = "Option<String>")]
    pub on_missing_key: Option<Text>,
    /// Most live keys kept per route (local scope).
    #[schemars(with = "Option<u32>")]
    pub max_keys: Option<Spanned<u32>>,
}

/// `admin:`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address of the admin listener.
    #[schemars(with = "Option<String>")]
    pub listen: Option<Text>,
    /// File holding the bearer token for mutating admin endpoints.
    #[schemars(with = "Option<String>")]
    pub token_file: Option<Text>,
    /// Put the read views (status page, /admin/*) behind the token too.
    #[schemars(with = "Option<bool>")]
    pub protect_reads: Option<Spanned<bool>>,
}

/// One entry under `upstreams:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Where the upstream's instances are.
    #[schemars(with = "Vec<RawEndpoint>")]
    pub endpoints: Spanned<Vec<RawEndpoint>>,
    /// Time allowed to establish a TCP (and TLS) connection.
    #[schemars(with = "Option<String>")]
    pub connect_timeout: Option<Text>,
    /// `false`, `true`, or TLS options.
    #[schemars(with = "Option<RawTls>")]
    pub tls: Option<Spanned<RawTls>>,
    /// Replace the `Host` header sent upstream.
    #[schemars(with = "Option<String>")]
    pub host_header: Option<Text>,
    /// `http1` (default) or `http2`. HTTP/2 over `tls` is negotiated with ALPN `h2`; without
    /// `tls` it is h2c with prior knowledge.
    #[schemars(with = "Option<String>")]
    pub protocol: Option<Text>,
    /// How long an idle pooled connection is kept.
    #[schemars(with = "Option<String>")]
    pub idle_timeout: Option<Text>,
    /// Longest wait for the next piece of a response body once headers arrived.
    #[schemars(with = "Option<String>")]
    pub read_timeout: Option<Text>,
    /// Most idle pooled connections kept per endpoint.
    #[schemars(with = "Option<u32>")]
    pub max_idle_connections: Option<Spanned<u32>>,
    /// Bulkhead: most requests in flight to this upstream; beyond it, 503 upstream_overloaded.
    #[schemars(with = "Option<u32>")]
    pub max_concurrent_requests: Option<Spanned<u32>>,
    /// A concurrency limit learned from the upstream's latency and failures.
    #[schemars(with = "Option<RawAdaptive>")]
    pub adaptive_concurrency: Option<Spanned<RawAdaptive>>,
    /// Circuit breaker for the whole upstream.
    #[schemars(with = "Option<RawCircuitBreaker>")]
    pub circuit_breaker: Option<Spanned<RawCircuitBreaker>>,
    /// Passive per-endpoint ejection.
    #[schemars(with = "Option<RawOutlier>")]
    pub outlier_detection: Option<Spanned<RawOutlier>>,
    /// p2c_ewma | round_robin | least_request.
    #[schemars(with = "Option<String>")]
    pub load_balancing: Option<Text>,
    /// Active health checks.
    #[schemars(with = "Option<RawHealthCheck>")]
    pub health_check: Option<Spanned<RawHealthCheck>>,
    /// The upstream deduplicates requests by their idempotency key itself: a repeat of a
    /// request whose outcome is unknown may be forwarded again (default false).
    pub honours_idempotency_key: Option<bool>,
    /// Idempotency keys backstop adds to non-idempotent requests that lack one.
    #[schemars(with = "Option<RawIdempotencyKey>")]
    pub idempotency_key: Option<Spanned<RawIdempotencyKey>>,
    /// Pacing to the partner's own quota, learned from its answers.
    #[schemars(with = "Option<RawQuota>")]
    pub quota: Option<Spanned<RawQuota>>,
    /// What the partner's answers mean: ordered rules over the status, a header and a JSON
    /// body field; the first match decides success, failure or client_error.
    #[schemars(with = "Option<Vec<RawOutcomeRule>>")]
    pub outcome: Option<Spanned<Vec<Spanned<RawOutcomeRule>>>>,
}

/// One rule of `outcome:` on an upstream.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOutcomeRule {
    /// Name in the access log and metrics (default `rule N`, 1-based).
    #[schemars(with = "Option<String>")]
    pub name: Option<Text>,
    /// A status, a class (`5xx`) or a list of them; absent: any status.
    #[schemars(with = "Option<serde_json::Value>")]
    pub status: Option<Spanned<serde_json::Value>>,
    /// A response header: `{ name: X-Result, in: [FAILED] }`; without `in`, present with any
    /// value.
    #[schemars(with = "Option<RawFieldMatch>")]
    pub header: Option<Spanned<RawFieldMatch>>,
    /// A field of a JSON body (read up to 16 KiB): `{ path: $.code, in: [PG_TIMEOUT] }`.
    #[schemars(with = "Option<RawFieldMatch>")]
    pub json: Option<Spanned<RawFieldMatch>>,
    /// `success`, `failure` or `client_error`.
    #[schemars(with = "Option<String>")]
    pub outcome: Option<Text>,
    /// A `failure` the route's retry policy may retry (default false).
    pub retryable: Option<bool>,
}

/// `header:` or `json:` in an outcome rule.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFieldMatch {
    /// Header name (`header:` only).
    #[schemars(with = "Option<String>")]
    pub name: Option<Text>,
    /// JSON path such as `$.error.code` (`json:` only).
    #[schemars(with = "Option<String>")]
    pub path: Option<Text>,
    /// Accepted values, compared as text; absent: present with any value.
    #[serde(rename = "in")]
    pub values: Option<Vec<serde_json::Value>>,
}

/// `idempotency_key:` on an upstream.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIdempotencyKey {
    /// Header carrying the key (default `Idempotency-Key`).
    #[schemars(with = "Option<String>")]
    pub header: Option<Text>,
    /// Add a fresh key (UUID v4) to a non-idempotent request that has none.
    pub generate: Option<bool>,
}

/// `idempotency:` on a route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIdempotency {
    /// Header carrying the client's key (default `Idempotency-Key`).
    #[schemars(with = "Option<String>")]
    pub header: Option<Text>,
    /// local | redis.
    #[schemars(with = "Option<String>")]
    pub store: Option<Text>,
    /// How long a completed response is kept (default 24h).
    #[schemars(with = "Option<String>")]
    pub ttl: Option<Text>,
    /// Largest response body stored for replay: bytes, or `64KiB`, `1MiB` (default 64KiB).
    #[schemars(with = "Option<Scalar>")]
    pub max_response_bytes: Option<Text>,
    /// Largest request body read to fingerprint it: bytes, or `KiB`/`MiB` (default 1MiB).
    #[schemars(with = "Option<Scalar>")]
    pub max_request_bytes: Option<Text>,
    /// What a repeat must match: any of method, path, body (default all three).
    #[schemars(with = "Option<Vec<String>>")]
    pub fingerprint: Option<Vec<Text>>,
    /// forward | refuse when the store fails (default refuse).
    #[schemars(with = "Option<String>")]
    pub on_error: Option<Text>,
    /// Most keys kept per route by the local store (default 100000).
    #[schemars(with = "Option<u32>")]
    pub max_keys: Option<Spanned<u32>>,
}

/// `health_check:`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Path to GET.
    #[schemars(with = "Option<String>")]
    pub path: Option<Text>,
    /// Time between checks.
    #[schemars(with = "Option<String>")]
    pub interval: Option<Text>,
    /// Deadline of one check.
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Text>,
    /// Successes in a row that make an endpoint healthy.
    #[schemars(with = "Option<u32>")]
    pub healthy_threshold: Option<Spanned<u32>>,
    /// Failures in a row that make an endpoint unhealthy.
    #[schemars(with = "Option<u32>")]
    pub unhealthy_threshold: Option<Spanned<u32>>,
    /// Statuses that count as healthy: `200-299`, `204`.
    #[schemars(with = "Option<Vec<Scalar>>")]
    pub expect_status: Option<Vec<Text>>,
}

/// `circuit_breaker:` on an upstream or a route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    /// enforce | shadow.
    #[schemars(with = "Option<String>")]
    pub mode: Option<Text>,
    /// Open after N failures in a row.
    #[schemars(with = "Option<u32>")]
    pub consecutive_failures: Option<Spanned<u32>>,
    /// Open when the failure share over a window reaches a threshold.
    pub failure_rate: Option<RawRate>,
    /// Open when the share of slow calls reaches a threshold.
    pub slow_call: Option<RawSlowCall>,
    /// First open period.
    #[schemars(with = "Option<String>")]
    pub open_for: Option<Text>,
    /// Cap of the doubling open period.
    #[schemars(with = "Option<String>")]
    pub max_open_for: Option<Text>,
    /// Probes while half-open.
    #[schemars(with = "Option<u32>")]
    pub half_open_requests: Option<Spanned<u32>>,
    /// What counts as a failure.
    #[schemars(with = "Option<Vec<Scalar>>")]
    pub failure_on: Option<Vec<Text>>,
    /// local (default) | redis: share opens, probes and closes with every replica through
    /// the top-level `redis:`.
    #[schemars(with = "Option<String>")]
    pub shared: Option<Text>,
}

/// `failure_rate:`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    /// e.g. `50%`.
    #[schemars(with = "String")]
    pub threshold: Text,
    /// Sliding window length.
    #[schemars(with = "Option<String>")]
    pub window: Option<Text>,
    /// Fewest calls before the rate counts.
    #[schemars(with = "Option<u32>")]
    pub min_requests: Option<Spanned<u32>>,
}

/// `slow_call:`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSlowCall {
    /// A call at least this long is slow.
    #[schemars(with = "String")]
    pub duration: Text,
    /// e.g. `80%`.
    #[schemars(with = "String")]
    pub threshold: Text,
    /// Sliding window length (default: failure_rate's, else 30s).
    #[schemars(with = "Option<String>")]
    pub window: Option<Text>,
    /// Fewest calls before the rate counts (default: failure_rate's, else 20).
    #[schemars(with = "Option<u32>")]
    pub min_requests: Option<Spanned<u32>>,
}

/// `quota:`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    /// `queue` (default): wait up to `max_wait` for the partner's quota to come back;
    /// `reject`: answer 429 at once while it is spent.
    #[schemars(with = "Option<String>")]
    pub mode: Option<Text>,
    /// Longest wait in `queue` mode (default 200ms).
    #[schemars(with = "Option<String>")]
    pub max_wait: Option<Text>,
    /// A declared egress rate to the partner, `N/s`, `N/m` or `N/h` (none by default: only
    /// the learned quota paces).
    #[schemars(with = "Option<String>")]
    pub rate: Option<Text>,
    /// Requests that may go at once under `rate` (the bucket size, at least 1; default 1:
    /// evenly spaced).
    #[schemars(with = "Option<u32>")]
    pub burst: Option<Spanned<u32>>,
    /// `local` (default): each backstop process sends at `rate`; `global`: the fleet
    /// together, shared through the top-level `redis:`.
    #[schemars(with = "Option<String>")]
    pub scope: Option<Text>,
}

/// `adaptive_concurrency:`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdaptive {
    /// `gradient` (default) or `aimd`.
    #[schemars(with = "Option<String>")]
    pub algorithm: Option<Text>,
    /// Lowest limit (default 5).
    #[schemars(with = "Option<u32>")]
    pub min_limit: Option<Spanned<u32>>,
    /// Highest limit (default 1000).
    #[schemars(with = "Option<u32>")]
    pub max_limit: Option<Spanned<u32>>,
    /// Limit at start (default 20).
    #[schemars(with = "Option<u32>")]
    pub initial_limit: Option<Spanned<u32>>,
    /// How often the limit moves (default 100ms).
    #[schemars(with = "Option<String>")]
    pub window: Option<Text>,
    /// gradient: latency may grow to this multiple of the no-load latency before the limit
    /// shrinks (default 1.5).
    #[schemars(with = "Option<f64>")]
    pub tolerance: Option<Spanned<f64>>,
    /// gradient: the no-load latency is the lowest window latency over this long (default 30s).
    #[schemars(with = "Option<String>")]
    pub baseline_window: Option<Text>,
    /// Multiplier on a window with drops (default 0.9).
    #[schemars(with = "Option<f64>")]
    pub backoff: Option<Spanned<f64>>,
    /// aimd: an answer slower than this is a drop (default 1s).
    #[schemars(with = "Option<String>")]
    pub latency_threshold: Option<Text>,
    /// enforce (default) or shadow.
    #[schemars(with = "Option<String>")]
    pub mode: Option<Text>,
}

/// `outlier_detection:`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// Failures in a row that eject an endpoint.
    #[schemars(with = "Option<u32>")]
    pub consecutive_failures: Option<Spanned<u32>>,
    /// First ejection length.
    #[schemars(with = "Option<String>")]
    pub base_ejection: Option<Text>,
    /// Longest ejection.
    #[schemars(with = "Option<String>")]
    pub max_ejection: Option<Text>,
    /// Largest share of endpoints ejected at once, e.g. `50%`.
    #[schemars(with = "Option<String>")]
    pub max_ejected: Option<Text>,
}

/// One endpoint of an upstream.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    /// `host:port`.
    #[schemars(with = "String")]
    pub address: Text,
    /// Lower is preferred.
    #[schemars(with = "Option<u32>")]
    pub priority: Option<Spanned<u32>>,
    /// Relative share of traffic within a priority group.
    #[schemars(with = "Option<u32>")]
    pub weight: Option<Spanned<u32>>,
}

/// `tls:` is either a switch or a table of options.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawTls {
    /// `tls: true` (verify against the bundled web PKI roots) or `tls: false`.
    Enabled(bool),
    /// `tls: { sni: ..., ca_file: ..., verify: true }`.
    Options(RawTlsOptions),
}

/// The table form of `tls:`.
#[derive(Debug, Deserialize, JsonSchema)]
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
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique name; used in metrics and logs.
    #[schemars(with = "String")]
    pub name: Text,
    /// What requests this route takes.
    #[serde(rename = "match", default)]
    pub matcher: Option<RawMatch>,
    /// Name of the upstream.
    #[schemars(with = "String")]
    pub upstream: Text,
    /// Total time allowed for the response headers.
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Text>,
    /// A breaker for this route's traffic only, instead of the upstream's.
    #[schemars(with = "Option<RawCircuitBreaker>")]
    pub circuit_breaker: Option<Spanned<RawCircuitBreaker>>,
    /// Retry policy.
    #[schemars(with = "Option<RawRetry>")]
    pub retry: Option<Spanned<RawRetry>>,
    /// Other upstreams to use, in order, when this route's upstream cannot take the request.
    #[schemars(with = "Option<Vec<String>>")]
    pub failover: Option<Vec<Text>>,
    /// Rate limit.
    #[schemars(with = "Option<RawRateLimit>")]
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    /// Connection upgrades passed through to the upstream: `websocket`. Without it an
    /// upgrade request is refused with 400 `upgrade_not_allowed`.
    #[schemars(with = "Option<String>")]
    pub upgrade: Option<Text>,
    /// Idempotency keys: the first request with a key is delivered once, repeats get its
    /// stored response.
    #[schemars(with = "Option<RawIdempotency>")]
    pub idempotency: Option<Spanned<RawIdempotency>>,
    /// Hedged requests: a slow attempt gets a second one to another endpoint of the same
    /// upstream; the first answer wins.
    #[schemars(with = "Option<RawHedge>")]
    pub hedge: Option<Spanned<RawHedge>>,
}

/// `hedge:` on a route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHedge {
    /// A fixed delay (`50ms`) or a percentile of the route's recent attempt latency (`p95`,
    /// the default).
    #[schemars(with = "Option<String>")]
    pub after: Option<Text>,
    /// Most extra attempts per request, 1-4 (default 1).
    #[schemars(with = "Option<u32>")]
    pub max_extra: Option<Spanned<u32>>,
    /// Hedges as a share of requests over 10s (default 5%).
    #[schemars(with = "Option<String>")]
    pub budget: Option<Text>,
}

/// `retry:`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Total attempts, the first included.
    #[schemars(with = "Option<u32>")]
    pub attempts: Option<Spanned<u32>>,
    /// Deadline of each attempt.
    #[schemars(with = "Option<String>")]
    pub per_try_timeout: Option<Text>,
    /// Conditions that trigger a retry.
    #[schemars(with = "Option<Vec<Scalar>>")]
    pub on: Option<Vec<Text>>,
    /// Exponential back-off with full jitter.
    pub backoff: Option<RawBackoff>,
    /// Retry budget.
    pub budget: Option<RawBudget>,
    /// A smaller retry budget while the route's SLOs burn fast.
    pub when_burning: Option<RawWhenBurning>,
    /// unsent-only | idempotency-key | never.
    #[schemars(with = "Option<String>")]
    pub non_idempotent: Option<Text>,
    /// Header carrying the idempotency key.
    #[schemars(with = "Option<String>")]
    pub idempotency_header: Option<Text>,
    /// Largest request body kept for replay, in bytes.
    #[schemars(with = "Option<u64>")]
    pub max_buffered_body: Option<Spanned<u64>>,
}

/// `backoff:`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    /// First back-off ceiling.
    #[schemars(with = "Option<String>")]
    pub base: Option<Text>,
    /// Largest back-off.
    #[schemars(with = "Option<String>")]
    pub max: Option<Text>,
}

/// `when_burning:`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWhenBurning {
    /// Burn rate above which retries are cut (default 14.4).
    #[schemars(with = "Option<f64>")]
    pub burn_rate: Option<Spanned<f64>>,
    /// Window of the burn rate: 5m (default), 30m, 1h or 6h.
    #[schemars(with = "Option<String>")]
    pub window: Option<Text>,
    /// Retry budget ratio while burning (default 0%).
    #[schemars(with = "Option<String>")]
    pub budget_ratio: Option<Text>,
}

/// `budget:`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    /// Share of requests, e.g. `20%`.
    #[schemars(with = "Option<String>")]
    pub ratio: Option<Text>,
    /// Retries always allowed per second.
    #[schemars(with = "Option<u32>")]
    pub min_per_second: Option<Spanned<u32>>,
}

/// `match:`
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Exact host (port ignored), or `*.example.com`.
    #[schemars(with = "Option<String>")]
    pub host: Option<Text>,
    /// Path prefix, segment-aware.
    #[schemars(with = "Option<String>")]
    pub path_prefix: Option<Text>,
    /// Allowed methods.
    #[schemars(with = "Option<Vec<String>>")]
    pub methods: Option<Vec<Text>>,
    /// Let percent-encoded slashes and backslashes (`%2F`, `%5C`) through to this route.
    pub allow_encoded_slashes: Option<bool>,
    /// Headers that must be present with exactly this value: `value`, or
    /// `{ value: ..., secret: true }` to show it as `***` in admin views.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawHeaderMatch>")]
    pub headers: BTreeMap<String, Spanned<RawHeaderMatch>>,
}

/// One header of `match.headers`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawHeaderMatch {
    /// `x-tenant: acme`.
    Plain(#[schemars(with = "Scalar")] ScalarText),
    /// `x-api-key: { value: abc, secret: true }`.
    Detailed {
        /// The value to match exactly.
        #[schemars(with = "Scalar")]
        value: ScalarText,
        /// Show the value as `***` in admin views and never echo it in errors.
        #[serde(default)]
        secret: bool,
    },
}

impl RawHeaderMatch {
    /// The value to match.
    pub fn value(&self) -> &str {
        match self {
            RawHeaderMatch::Plain(v) | RawHeaderMatch::Detailed { value: v, .. } => &v.0,
        }
    }

    /// Whether the value is secret.
    pub fn secret(&self) -> bool {
        matches!(self, RawHeaderMatch::Detailed { secret: true, .. })
    }
}

/// A YAML scalar read as its text (`2` -> `"2"`, `true` -> `"true"`).
#[derive(Debug)]
pub struct ScalarText(pub String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = ScalarText;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_owned()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
        }
        d.deserialize_any(Visit)
    }
}
