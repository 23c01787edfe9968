//! Typed JSON views of the running config and its live state for the admin API.
//!
//! Every view is a struct with `Serialize` and `JsonSchema`: what `/admin/config`,
//! `/admin/routes`, `/admin/upstreams` and `/admin/slos` answer is exactly these types, and
//! `backstop schema --admin` prints their JSON Schema ([`schemas`]).
//!
//! Conventions (also in the README, "Admin API"):
//! - durations are whole milliseconds in keys ending `_ms`; histogram bounds and the latency
//!   SLI threshold, which may be below a millisecond, are seconds in keys ending `_seconds`
//!   (like Prometheus' `le`), and so are three keys older than this convention:
//!   `drain_timeout_seconds`, `slos[].window_seconds` and `ejected_for_seconds`;
//! - a single choice is a snake_case word (`on_error: allow`, `mode: shadow`,
//!   `load_balancing: p2c_ewma`, `non_idempotent: unsent_only`); the lists of conditions
//!   (`retry.on`, `failure_on`) and `rate_limit.rate` / `rate_limit.key` are written as in the
//!   config file (`connect-failure`, `5xx`, `100/s`, `header:x-api-key`);
//! - an absent optional block is `null`, never left out.
//!
//! Secrets are never shown: the admin token is `***` (or `""` without one), a Redis URL's
//! password is replaced by `***`, and so is a header-match value marked `secret: true`.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::{redact_url, Config, HostMatch, LoadBalancing, Route, Upgrade, Upstream};
use crate::policy::breaker::{BreakerConfig, StateName};
use crate::policy::classify::FailureSet;
use crate::policy::outlier::OutlierConfig;
use crate::policy::rate::{LimitKey, OnError, Rate, RateLimitConfig, Scope};
use crate::policy::retry::{NonIdempotent, RetryPolicy};
use crate::policy::Mode;
use crate::runtime::Snapshot;
use crate::slo::live::SloStatus;
use crate::slo::{Sli, SloConfig};

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `GET /admin/config`: the running config, secrets redacted.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ConfigView {
    /// 1 for the config loaded at startup, +1 per accepted reload.
    pub generation: u64,
    /// Hex SHA-256 of the config file's bytes.
    pub sha256: String,
    /// Proxy listener, `host:port`.
    pub listen: String,
    /// The admin listener.
    pub admin: AdminView,
    /// Time in-flight requests get to finish after SIGTERM, in seconds.
    pub drain_timeout_seconds: f64,
    /// Redis for global rate limits; `null` without a `redis:` section.
    pub redis: Option<RedisView>,
    /// Upstreams, sorted by name.
    pub upstreams: Vec<UpstreamConfigView>,
    /// Routes in match order (the same items as `GET /admin/routes`).
    pub routes: Vec<RouteView>,
    /// Service level objectives.
    pub slos: Vec<SloConfigView>,
    /// The `metrics:` section.
    pub metrics: MetricsView,
    /// The `access_log:` section.
    pub access_log: AccessLogView,
}

/// The `access_log:` section.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AccessLogView {
    /// Share of successful requests logged, 0 to 1; failures are always logged.
    pub sample: f64,
}

/// The `admin:` section.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AdminView {
    /// Admin listener, `host:port`.
    pub listen: String,
    /// `***` when a token is configured, else `""`.
    pub token: String,
    /// Whether the read views need the token too.
    pub protect_reads: bool,
}

/// The `redis:` section, its URL's password redacted.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RedisView {
    /// `redis://host:port[/db]`, password as `***`.
    pub url: String,
    /// Longest wait for one decision.
    pub timeout_ms: u64,
    /// What a global rate limit does when Redis cannot answer.
    pub on_error: OnErrorView,
    /// Whether the Redis Cluster client is used.
    pub cluster: bool,
}

/// `redis.on_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnErrorView {
    /// Fail open: admit.
    Allow,
    /// Fail closed: reject.
    Deny,
}

impl From<OnError> for OnErrorView {
    fn from(e: OnError) -> Self {
        match e {
            OnError::Allow => Self::Allow,
            OnError::Deny => Self::Deny,
        }
    }
}

/// `enforce` or `shadow`, of a breaker or a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModeView {
    /// Decisions are applied.
    Enforce,
    /// Decisions are counted and logged only.
    Shadow,
}

impl From<Mode> for ModeView {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Enforce => Self::Enforce,
            Mode::Shadow => Self::Shadow,
        }
    }
}

/// One upstream as configured.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct UpstreamConfigView {
    /// Name from the config.
    pub name: String,
    /// Endpoints in config order.
    pub endpoints: Vec<EndpointConfigView>,
    /// TCP + TLS connect deadline.
    pub connect_timeout_ms: u64,
    /// TLS settings; `null` for plain HTTP.
    pub tls: Option<TlsView>,
    /// Host header sent instead of the client's; `null` keeps the client's.
    pub host_header: Option<String>,
    /// `http1` or `http2`.
    pub protocol: ProtocolView,
    /// How long an idle pooled connection is kept.
    pub idle_timeout_ms: u64,
    /// Longest wait for the next piece of a response body.
    pub read_timeout_ms: u64,
    /// Most idle pooled connections kept per endpoint.
    pub max_idle_connections: u64,
    /// How an endpoint is chosen within a priority group.
    pub load_balancing: LoadBalancingView,
    /// Bulkhead limit on requests in flight; `null` for none.
    pub max_concurrent_requests: Option<u32>,
    /// Adaptive concurrency; `null` when not configured.
    pub adaptive_concurrency: Option<AdaptiveView>,
    /// Pacing to the partner's quota; `null` when not configured.
    pub quota: Option<QuotaView>,
    /// Outcome rules in order; empty when not configured.
    pub outcome: Vec<OutcomeRuleView>,
    /// Upstream-level circuit breaker.
    pub circuit_breaker: Option<BreakerView>,
    /// Passive per-endpoint ejection.
    pub outlier_detection: Option<OutlierView>,
    /// Active health checks.
    pub health_check: Option<HealthCheckView>,
}

/// The upstream's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolView {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2.
    Http2,
}

/// One rule of `outcome:`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct OutcomeRuleView {
    /// Its name (`rule N` when not given).
    pub name: String,
    /// Statuses and classes it applies to (`409`, `5xx`); empty: any.
    pub status: Vec<String>,
    /// The header it looks at, if any.
    pub header: Option<FieldMatchView>,
    /// The JSON body field it looks at, if any.
    pub json: Option<FieldMatchView>,
    /// `success`, `failure` or `client_error`.
    pub outcome: String,
    /// A failure the retry stage may retry.
    pub retryable: bool,
}

/// A header or JSON field condition.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FieldMatchView {
    /// Header name or JSON path.
    pub key: String,
    /// Accepted values; `null`: present with any value.
    pub values: Option<Vec<String>>,
}

fn outcome_view(rules: &crate::policy::outcome_rules::Rules) -> Vec<OutcomeRuleView> {
    use crate::policy::outcome_rules::StatusItem;
    rules
        .rules
        .iter()
        .map(|r| OutcomeRuleView {
            name: r.name.clone(),
            status: r
                .status
                .iter()
                .map(|s| match s {
                    StatusItem::Code(c) => c.to_string(),
                    StatusItem::Class(c) => format!("{c}xx"),
                })
                .collect(),
            header: r.header.as_ref().map(|(name, values)| FieldMatchView {
                key: name.to_string(),
                values: values.clone(),
            }),
            json: r.json.as_ref().map(|(path, values)| FieldMatchView {
                key: path.as_str().to_owned(),
                values: values.clone(),
            }),
            outcome: r.verdict.as_str().to_owned(),
            retryable: r.retryable,
        })
        .collect()
}

/// `quota:` as configured.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QuotaView {
    /// `queue` or `reject`.
    pub mode: String,
    /// Longest wait in queue mode.
    pub max_wait_ms: u64,
    /// Declared egress rate as the config writes it (`300/s`); `null`: only the learned quota.
    pub rate: Option<String>,
    /// Requests that may go at once under `rate`; `null` without `rate`.
    pub burst: Option<u32>,
    /// Where the declared rate is counted; `null` without `rate`.
    pub scope: Option<ScopeView>,
}

/// `adaptive_concurrency:` as configured.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AdaptiveView {
    /// `gradient` or `aimd`.
    pub algorithm: String,
    /// Lowest limit.
    pub min_limit: u32,
    /// Highest limit.
    pub max_limit: u32,
    /// Limit at start.
    pub initial_limit: u32,
    /// How often the limit moves.
    pub window_ms: u64,
    /// gradient: latency multiple of the baseline tolerated before shrinking.
    pub tolerance: f64,
    /// gradient: the baseline period.
    pub baseline_window_ms: u64,
    /// Multiplier on a drop.
    pub backoff: f64,
    /// aimd: a window slower than this is a drop.
    pub latency_threshold_ms: u64,
    /// `enforce` or `shadow`.
    pub mode: String,
}

impl From<&crate::policy::adaptive::AdaptiveConfig> for AdaptiveView {
    fn from(a: &crate::policy::adaptive::AdaptiveConfig) -> Self {
        Self {
            algorithm: a.algorithm.as_str().to_owned(),
            min_limit: a.min_limit,
            max_limit: a.max_limit,
            initial_limit: a.initial_limit,
            window_ms: ms(a.window),
            tolerance: a.tolerance,
            baseline_window_ms: ms(a.baseline_window),
            backoff: a.backoff,
            latency_threshold_ms: ms(a.latency_threshold),
            mode: a.mode.as_str().to_owned(),
        }
    }
}

/// One endpoint as configured.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EndpointConfigView {
    /// `host:port` as written.
    pub address: String,
    /// Lower is preferred.
    pub priority: u32,
    /// Share of traffic within its priority group.
    pub weight: u32,
}

/// Upstream TLS settings.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TlsView {
    /// Name for SNI and certificate checks; `null`: the endpoint's host.
    pub sni: Option<String>,
    /// CA bundle trusted instead of the web PKI roots.
    pub ca_file: Option<String>,
    /// Whether the certificate is verified at all.
    pub verify: bool,
}

/// `load_balancing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancingView {
    /// Power of two random choices on peak-EWMA latency x in-flight, divided by weight.
    P2cEwma,
    /// Smooth weighted round robin.
    RoundRobin,
    /// Power of two random choices on in-flight requests, divided by weight.
    LeastRequest,
}

impl From<LoadBalancing> for LoadBalancingView {
    fn from(l: LoadBalancing) -> Self {
        match l {
            LoadBalancing::P2cEwma => Self::P2cEwma,
            LoadBalancing::RoundRobin => Self::RoundRobin,
            LoadBalancing::LeastRequest => Self::LeastRequest,
        }
    }
}

/// A `circuit_breaker:` block.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BreakerView {
    /// enforce or shadow.
    pub mode: ModeView,
    /// Opens after this many failures in a row.
    pub consecutive_failures: Option<u32>,
    /// Opens when the failure share reaches a threshold.
    pub failure_rate: Option<RateConditionView>,
    /// Opens when the share of slow calls reaches a threshold.
    pub slow_call: Option<SlowCallView>,
    /// First open period.
    pub open_for_ms: u64,
    /// Longest open period after repeated re-opens.
    pub max_open_for_ms: u64,
    /// Probes admitted while half-open.
    pub half_open_requests: u32,
    /// What counts as a failure, as the config writes it (`connect-failure`, `5xx`, `429`).
    pub failure_on: Vec<String>,
    /// `local`, or `redis` when every replica shares the breaker.
    pub shared: crate::policy::breaker::Sharing,
}

/// `failure_rate:` of a breaker.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RateConditionView {
    /// Share (0-1] at which the breaker opens.
    pub threshold: f64,
    /// Sliding window length.
    pub window_ms: u64,
    /// Fewest calls in the window before the rate is trusted.
    pub min_requests: u32,
}

/// `slow_call:` of a breaker.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SlowCallView {
    /// A call slower than this is slow.
    pub duration_ms: u64,
    /// Share (0-1] of slow calls at which the breaker opens.
    pub threshold: f64,
    /// Sliding window length.
    pub window_ms: u64,
    /// Fewest calls in the window before the rate is trusted.
    pub min_requests: u32,
}

impl From<&BreakerConfig> for BreakerView {
    fn from(b: &BreakerConfig) -> Self {
        let rate = |r: &crate::policy::breaker::RateCondition| RateConditionView {
            threshold: r.threshold,
            window_ms: ms(r.window),
            min_requests: r.min_requests,
        };
        Self {
            mode: b.mode.into(),
            consecutive_failures: b.consecutive_failures,
            failure_rate: b.failure_rate.as_ref().map(rate),
            slow_call: b
                .slow_call_duration
                .zip(b.slow_call_rate.as_ref())
                .map(|(duration, r)| SlowCallView {
                    duration_ms: ms(duration),
                    threshold: r.threshold,
                    window_ms: ms(r.window),
                    min_requests: r.min_requests,
                }),
            open_for_ms: ms(b.open_for),
            max_open_for_ms: ms(b.max_open_for),
            half_open_requests: b.half_open_requests,
            failure_on: failure_words(&b.failure_on),
            shared: b.shared,
        }
    }
}

/// A failure set in the config's words.
fn failure_words(f: &FailureSet) -> Vec<String> {
    let named = [
        (f.connect_failure, "connect-failure"),
        (f.timeout, "timeout"),
        (f.reset, "reset"),
        (f.any_5xx, "5xx"),
    ];
    named
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, w)| (*w).to_owned())
        .chain(f.statuses.iter().map(u16::to_string))
        .collect()
}

/// An `outlier_detection:` block.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct OutlierView {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection period.
    pub base_ejection_ms: u64,
    /// Longest ejection period.
    pub max_ejection_ms: u64,
    /// Largest share (0-1) of endpoints ejected at once.
    pub max_ejected: f64,
}

impl From<&OutlierConfig> for OutlierView {
    fn from(o: &OutlierConfig) -> Self {
        Self {
            consecutive_failures: o.consecutive_failures,
            base_ejection_ms: ms(o.base_ejection),
            max_ejection_ms: ms(o.max_ejection),
            max_ejected: o.max_ejected,
        }
    }
}

/// A `health_check:` block.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HealthCheckView {
    /// Path (and query) checked with GET.
    pub path: String,
    /// Time between checks.
    pub interval_ms: u64,
    /// Deadline of one check.
    pub timeout_ms: u64,
    /// Successes in a row that make an endpoint healthy.
    pub healthy_threshold: u32,
    /// Failures in a row that make an endpoint unhealthy.
    pub unhealthy_threshold: u32,
    /// Healthy statuses as the config writes them: `200` or `200-299`.
    pub expect_status: Vec<String>,
}

impl From<&Upstream> for UpstreamConfigView {
    fn from(u: &Upstream) -> Self {
        Self {
            name: u.name.clone(),
            endpoints: u
                .endpoints
                .iter()
                .map(|e| EndpointConfigView {
                    address: e.address.clone(),
                    priority: e.priority,
                    weight: e.weight,
                })
                .collect(),
            connect_timeout_ms: ms(u.connect_timeout),
            tls: u.tls.as_ref().map(|t| TlsView {
                sni: t.sni.clone(),
                ca_file: t.ca_file.as_ref().map(|p| p.display().to_string()),
                verify: t.verify,
            }),
            host_header: u
                .host_header
                .as_ref()
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()),
            protocol: match u.protocol {
                crate::config::UpstreamProtocol::Http1 => ProtocolView::Http1,
                crate::config::UpstreamProtocol::Http2 => ProtocolView::Http2,
            },
            idle_timeout_ms: ms(u.idle_timeout),
            read_timeout_ms: ms(u.read_timeout),
            max_idle_connections: u.max_idle_connections as u64,
            load_balancing: u.load_balancing.into(),
            max_concurrent_requests: u.max_concurrent_requests,
            adaptive_concurrency: u.adaptive_concurrency.as_ref().map(AdaptiveView::from),
            quota: u.quota.map(|q| QuotaView {
                mode: if q.queue { "queue" } else { "reject" }.to_owned(),
                max_wait_ms: ms(q.max_wait),
                rate: q.declared.map(|d| rate_text(d.rate)),
                burst: q.declared.map(|d| d.burst),
                scope: q.declared.map(|d| d.scope.into()),
            }),
            outcome: u.outcome.as_ref().map(outcome_view).unwrap_or_default(),
            circuit_breaker: u.circuit_breaker.as_ref().map(BreakerView::from),
            outlier_detection: u.outlier_detection.as_ref().map(OutlierView::from),
            health_check: u.health_check.as_ref().map(|h| HealthCheckView {
                path: h.path.to_string(),
                interval_ms: ms(h.interval),
                timeout_ms: ms(h.timeout),
                healthy_threshold: h.healthy_threshold,
                unhealthy_threshold: h.unhealthy_threshold,
                expect_status: h
                    .expect_status
                    .iter()
                    .map(|&(lo, hi)| {
                        if lo == hi {
                            lo.to_string()
                        } else {
                            format!("{lo}-{hi}")
                        }
                    })
                    .collect(),
            }),
        }
    }
}

/// `GET /admin/routes`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RoutesView {
    /// Routes in match order.
    pub routes: Vec<RouteView>,
}

/// One route as configured.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RouteView {
    /// Name from the config.
    pub name: String,
    /// The upstream it sends to.
    pub upstream: String,
    /// Upstreams it fails over to, in order.
    pub failover: Vec<String>,
    /// What it matches.
    #[serde(rename = "match")]
    pub matcher: MatchView,
    /// Total deadline for the response headers, across all attempts.
    pub timeout_ms: u64,
    /// Retry policy; `null`: one attempt.
    pub retry: Option<RetryView>,
    /// Rate limit.
    pub rate_limit: Option<RateLimitView>,
    /// Route-level breaker, replacing the upstream's for this route.
    pub circuit_breaker: Option<BreakerView>,
    /// The connection upgrade it tunnels; `null` refuses upgrades.
    pub upgrade: Option<UpgradeView>,
    /// The idempotency layer; `null` when not configured.
    pub idempotency: Option<IdempotencyView>,
    /// Hedged requests; `null` when not configured.
    pub hedge: Option<HedgeView>,
}

/// `match:` of a route.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct MatchView {
    /// Host as the config writes it (`api.example.com`, `*.example.com`); `null`: any host.
    pub host: Option<String>,
    /// Segment-aware path prefix.
    pub path_prefix: String,
    /// Methods matched; `null`: all.
    pub methods: Option<Vec<String>>,
    /// Headers that must have exactly these values; secret values as `***`.
    pub headers: BTreeMap<String, String>,
    /// Whether `%2F` and `%5C` may appear in the path.
    pub allow_encoded_slashes: bool,
}

/// `upgrade:` of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeView {
    /// `Upgrade: websocket`.
    Websocket,
}

/// A `retry:` block.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RetryView {
    /// Total attempts, the first included.
    pub attempts: u32,
    /// Deadline of each attempt; `null`: only the route's timeout.
    pub per_try_timeout_ms: Option<u64>,
    /// Conditions that trigger a retry, as the config writes them (`connect-failure`, `5xx`,
    /// `503`).
    pub on: Vec<String>,
    /// Back-off between attempts.
    pub backoff: BackoffView,
    /// Retry budget.
    pub budget: BudgetView,
    /// What happens to non-idempotent requests.
    pub non_idempotent: NonIdempotentView,
    /// Header carrying the idempotency key.
    pub idempotency_header: String,
    /// Request bodies up to this many bytes are kept for replay.
    pub max_buffered_body: u64,
    /// The smaller budget while the route's SLOs burn fast; `null` when not configured.
    pub when_burning: Option<WhenBurningView>,
}

/// `retry.when_burning`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct WhenBurningView {
    /// Burn rate above which retries are cut.
    pub burn_rate: f64,
    /// Its window.
    pub window_ms: u64,
    /// Retry budget ratio meanwhile, 0 to 1.
    pub budget_ratio: f64,
}

/// `routes[].hedge`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HedgeView {
    /// A fixed delay in milliseconds; `null` when `after` is a percentile.
    pub after_ms: Option<u64>,
    /// The latency percentile (e.g. 95.0) `after` follows; `null` for a fixed delay.
    pub after_percentile: Option<f64>,
    /// Most hedges per request.
    pub max_extra: u32,
    /// Hedges as a share of requests, 0-1.
    pub budget: f64,
}

impl From<&crate::config::Hedge> for HedgeView {
    fn from(h: &crate::config::Hedge) -> Self {
        let (after_ms, after_percentile) = match h.after {
            crate::config::HedgeAfter::Fixed(d) => (Some(ms(d)), None),
            crate::config::HedgeAfter::Percentile(q) => (None, Some(q * 100.0)),
        };
        Self {
            after_ms,
            after_percentile,
            max_extra: h.max_extra,
            budget: h.budget,
        }
    }
}

/// `routes[].idempotency`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IdempotencyView {
    /// Header carrying the key.
    pub header: String,
    /// `local` or `redis`.
    pub store: String,
    /// How long a completed response is kept.
    pub ttl_ms: u64,
    /// Largest response stored for replay, in bytes.
    pub max_response_bytes: u64,
    /// Largest request body fingerprinted, in bytes.
    pub max_request_bytes: u64,
    /// What the fingerprint covers: `method`, `path`, `body`.
    pub fingerprint: Vec<String>,
    /// `forward` or `refuse` when the store fails.
    pub on_error: String,
    /// Most keys kept (local store).
    pub max_keys: u64,
}

/// `retry.backoff`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BackoffView {
    /// Base of the exponential back-off.
    pub base_ms: u64,
    /// Cap of the back-off (also caps an honoured Retry-After).
    pub max_ms: u64,
}

/// `retry.budget`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BudgetView {
    /// Retries may not exceed this share of requests.
    pub ratio: f64,
    /// Retries always allowed per second.
    pub min_per_second: u32,
}

/// `retry.non_idempotent` (the config writes `unsent-only`, `idempotency-key`, `never`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NonIdempotentView {
    /// Retried only when provably never sent.
    UnsentOnly,
    /// Retried like idempotent requests when the idempotency key header is present.
    IdempotencyKey,
    /// Never retried.
    Never,
}

impl From<&RetryPolicy> for RetryView {
    fn from(p: &RetryPolicy) -> Self {
        let on = &p.on;
        let named = [
            (on.connect_failure, "connect-failure"),
            (on.refused_stream, "refused-stream"),
            (on.reset, "reset"),
            (on.timeout, "timeout"),
            (on.any_5xx, "5xx"),
        ];
        Self {
            attempts: p.attempts,
            per_try_timeout_ms: p.per_try_timeout.map(ms),
            on: named
                .iter()
                .filter(|(set, _)| *set)
                .map(|(_, w)| (*w).to_owned())
                .chain(on.statuses.iter().map(u16::to_string))
                .collect(),
            backoff: BackoffView {
                base_ms: ms(p.backoff_base),
                max_ms: ms(p.backoff_max),
            },
            budget: BudgetView {
                ratio: p.budget_ratio,
                min_per_second: p.budget_min_per_second,
            },
            non_idempotent: match p.non_idempotent {
                NonIdempotent::UnsentOnly => NonIdempotentView::UnsentOnly,
                NonIdempotent::IdempotencyKey => NonIdempotentView::IdempotencyKey,
                NonIdempotent::Never => NonIdempotentView::Never,
            },
            idempotency_header: p.idempotency_header.to_string(),
            max_buffered_body: p.max_buffered_body as u64,
            when_burning: p.when_burning.map(|w| WhenBurningView {
                burn_rate: w.burn_rate,
                window_ms: ms(w.window),
                budget_ratio: w.budget_ratio,
            }),
        }
    }
}

/// A `rate_limit:` block.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RateLimitView {
    /// enforce or shadow.
    pub mode: ModeView,
    /// Steady rate as the config writes it: `100/s`, `6000/m`, `10000/h`.
    pub rate: String,
    /// Extra requests allowed at once.
    pub burst: u32,
    /// Bucket key as the config writes it: `route`, `client_ip` or `header:NAME`.
    pub key: String,
    /// Where the buckets live.
    pub scope: ScopeView,
    /// With `key: header:NAME` and no such header: `reject` (400) or one `shared` bucket.
    pub on_missing_key: MissingKeyView,
    /// Most live keys (local scope).
    pub max_keys: u64,
}

/// `rate_limit.scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScopeView {
    /// In this process.
    Local,
    /// In Redis, shared by every replica.
    Global,
}

/// `rate_limit.on_missing_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissingKeyView {
    /// Answer 400.
    Reject,
    /// Count the request in one shared bucket.
    Shared,
}

/// A rate as the config writes it: `100/s`, `6000/m`, `10000/h`.
fn rate_text(rate: Rate) -> String {
    let unit = match rate.per.as_secs() {
        3600 => "h",
        60 => "m",
        _ => "s",
    };
    format!("{}/{unit}", rate.count)
}

impl From<Scope> for ScopeView {
    fn from(scope: Scope) -> Self {
        match scope {
            Scope::Local => ScopeView::Local,
            Scope::Global => ScopeView::Global,
        }
    }
}

impl From<&RateLimitConfig> for RateLimitView {
    fn from(l: &RateLimitConfig) -> Self {
        Self {
            mode: l.mode.into(),
            rate: rate_text(l.rate),
            burst: l.burst,
            key: match &l.key {
                LimitKey::Route => "route".to_owned(),
                LimitKey::ClientIp => "client_ip".to_owned(),
                LimitKey::Header(name) => format!("header:{name}"),
            },
            scope: l.scope.into(),
            on_missing_key: if l.reject_missing_key {
                MissingKeyView::Reject
            } else {
                MissingKeyView::Shared
            },
            max_keys: l.max_keys as u64,
        }
    }
}

fn route_view(config: &Config, r: &Route) -> RouteView {
    let name_of = |i: usize| {
        config
            .upstreams
            .get(i)
            .map_or_else(String::new, |u| u.name.clone())
    };
    RouteView {
        name: r.name.clone(),
        upstream: name_of(r.upstream),
        failover: r.failover.iter().map(|&f| name_of(f)).collect(),
        matcher: MatchView {
            host: r.host.as_ref().map(|h| match h {
                HostMatch::Exact(host) => host.clone(),
                HostMatch::Suffix(suffix) => format!("*{suffix}"),
            }),
            path_prefix: r.path_prefix.clone(),
            methods: r
                .methods
                .as_ref()
                .map(|m| m.iter().map(ToString::to_string).collect()),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| {
                    let shown = if v.is_sensitive() {
                        "***".to_owned()
                    } else {
                        String::from_utf8_lossy(v.as_bytes()).into_owned()
                    };
                    (k.to_string(), shown)
                })
                .collect(),
            allow_encoded_slashes: r.allow_encoded_slashes,
        },
        timeout_ms: ms(r.timeout),
        retry: r.retry.as_ref().map(RetryView::from),
        rate_limit: r.rate_limit.as_ref().map(RateLimitView::from),
        circuit_breaker: r.circuit_breaker.as_ref().map(BreakerView::from),
        upgrade: r.upgrade.map(|u| match u {
            Upgrade::Websocket => UpgradeView::Websocket,
        }),
        hedge: r.hedge.as_ref().map(HedgeView::from),
        idempotency: r.idempotency.as_ref().map(|i| IdempotencyView {
            header: i.header.to_string(),
            store: match i.store {
                crate::config::IdempotencyStore::Local => "local",
                crate::config::IdempotencyStore::Redis => "redis",
            }
            .to_owned(),
            ttl_ms: ms(i.ttl),
            max_response_bytes: i.max_response_bytes as u64,
            max_request_bytes: i.max_request_bytes as u64,
            fingerprint: [
                (i.fingerprint.method, "method"),
                (i.fingerprint.path, "path"),
                (i.fingerprint.body, "body"),
            ]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| name.to_owned())
            .collect(),
            on_error: if i.forward_on_error {
                "forward"
            } else {
                "refuse"
            }
            .to_owned(),
            max_keys: i.max_keys as u64,
        }),
    }
}

/// One SLO as configured.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SloConfigView {
    /// Name (the `slo` label).
    pub name: String,
    /// Names of the routes it covers.
    pub routes: Vec<String>,
    /// Target share of good events, e.g. 0.999.
    pub objective: f64,
    /// Compliance period, in seconds.
    pub window_seconds: u64,
    /// What makes an event good.
    pub sli: SliView,
}

/// An SLI, tagged by `kind`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SliView {
    /// Not a 5xx and not a failure of backstop's own.
    Availability {
        /// backstop's own 429s are left out instead of counted bad.
        exclude_rate_limited: bool,
    },
    /// Answered within a time.
    LatencyBelow {
        /// The threshold, a bound of the duration histogram.
        threshold_seconds: f64,
    },
}

fn slo_config_view(config: &Config, s: &SloConfig) -> SloConfigView {
    SloConfigView {
        name: s.name.clone(),
        routes: s
            .routes
            .iter()
            .filter_map(|&i| config.routes.get(i).map(|r| r.name.clone()))
            .collect(),
        objective: s.objective,
        window_seconds: s.window.as_secs(),
        sli: match s.sli {
            Sli::Availability {
                exclude_rate_limited,
            } => SliView::Availability {
                exclude_rate_limited,
            },
            Sli::LatencyBelow(t) => SliView::LatencyBelow {
                threshold_seconds: t.as_secs_f64(),
            },
        },
    }
}

/// The `metrics:` section.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct MetricsView {
    /// Bucket bounds of `backstop_request_duration_seconds`, in seconds (the `le` labels).
    pub latency_buckets_seconds: Vec<f64>,
}

/// The running config, secrets redacted.
pub fn config(snapshot: &Snapshot) -> ConfigView {
    let c = &snapshot.config;
    ConfigView {
        generation: snapshot.generation,
        sha256: c.sha256.clone(),
        listen: c.listen.to_string(),
        admin: AdminView {
            listen: c.admin_listen.to_string(),
            token: if c.admin_token.is_some() { "***" } else { "" }.to_owned(),
            protect_reads: c.admin_protect_reads,
        },
        drain_timeout_seconds: c.drain_timeout.as_secs_f64(),
        redis: c.redis.as_ref().map(|r| RedisView {
            url: redact_url(&r.url),
            timeout_ms: ms(r.timeout),
            on_error: r.on_error.into(),
            cluster: r.cluster,
        }),
        upstreams: c.upstreams.iter().map(UpstreamConfigView::from).collect(),
        routes: routes(snapshot).routes,
        slos: c.slos.iter().map(|s| slo_config_view(c, s)).collect(),
        access_log: AccessLogView {
            sample: c.access_log.sample,
        },
        metrics: MetricsView {
            latency_buckets_seconds: c
                .latency_buckets
                .iter()
                .map(Duration::as_secs_f64)
                .collect(),
        },
    }
}

/// The routes in match order.
pub fn routes(snapshot: &Snapshot) -> RoutesView {
    let c = &snapshot.config;
    RoutesView {
        routes: c.routes.iter().map(|r| route_view(c, r)).collect(),
    }
}

/// `GET /admin/upstreams`: endpoints with health, ejection, in-flight and latency.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct UpstreamsView {
    /// Upstreams, sorted by name.
    pub upstreams: Vec<UpstreamStatusView>,
}

/// One upstream's live state.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct UpstreamStatusView {
    /// Name from the config.
    pub name: String,
    /// Requests in flight to it now.
    pub in_flight: u32,
    /// The adaptive concurrency limit now; `null` when not configured.
    pub adaptive_limit: Option<u32>,
    /// Its breaker's state; `null` without an upstream-level breaker.
    pub breaker: Option<BreakerStateView>,
    /// Its endpoints in config order.
    pub endpoints: Vec<EndpointStatusView>,
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerStateView {
    /// Traffic flows.
    Closed,
    /// Rejecting.
    Open,
    /// Probing.
    HalfOpen,
}

impl From<StateName> for BreakerStateView {
    fn from(s: StateName) -> Self {
        match s {
            StateName::Closed => Self::Closed,
            StateName::Open => Self::Open,
            StateName::HalfOpen => Self::HalfOpen,
        }
    }
}

/// One endpoint's live state.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EndpointStatusView {
    /// `host:port` as written.
    pub address: String,
    /// Whether active health checks (if any) consider it healthy.
    pub healthy: bool,
    /// Seconds until outlier detection returns it; `null` when not ejected.
    pub ejected_for_seconds: Option<f64>,
    /// Requests in flight to it now.
    pub in_flight: u32,
    /// Its peak-EWMA latency estimate, in milliseconds (fractional).
    pub ewma_latency_ms: f64,
}

/// Endpoints with health, ejection, in-flight and latency.
pub fn upstreams(snapshot: &Snapshot) -> UpstreamsView {
    let now = Instant::now();
    let upstreams = snapshot
        .upstreams
        .iter()
        .map(|u| UpstreamStatusView {
            name: u.name.clone(),
            in_flight: u.bulkhead.in_flight(),
            adaptive_limit: u.adaptive.as_ref().map(|a| a.limit()),
            breaker: u.breaker.as_ref().map(|b| b.state().into()),
            endpoints: u
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| EndpointStatusView {
                    address: e.address.clone(),
                    healthy: e.is_healthy(),
                    ejected_for_seconds: u
                        .ejection
                        .as_ref()
                        .and_then(|x| x.ejected_until(i, now))
                        .map(|until| until.saturating_duration_since(now).as_secs_f64()),
                    in_flight: e.load.in_flight(),
                    ewma_latency_ms: e.load.ewma().as_secs_f64() * 1000.0,
                })
                .collect(),
        })
        .collect();
    UpstreamsView { upstreams }
}

/// `GET /admin/slos`: every SLO's live budget and burn rates.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SlosView {
    /// SLOs in config order.
    pub slos: Vec<SloStatus>,
}

/// Live budgets and burn rates.
pub fn slos(snapshot: &Snapshot) -> SlosView {
    let now = Instant::now();
    SlosView {
        slos: snapshot.slos.all().iter().map(|s| s.status(now)).collect(),
    }
}

/// The JSON Schema of every typed admin view, keyed by its path (`backstop schema --admin`).
pub fn schemas() -> serde_json::Value {
    let schema = |s: schemars::Schema| serde_json::to_value(s).unwrap_or_default();
    serde_json::json!({
        "/admin/config": schema(schemars::schema_for!(ConfigView)),
        "/admin/routes": schema(schemars::schema_for!(RoutesView)),
        "/admin/upstreams": schema(schemars::schema_for!(UpstreamsView)),
        "/admin/slos": schema(schemars::schema_for!(SlosView)),
        "/admin/circuits": schema(schemars::schema_for!(crate::admin::circuits::CircuitsView)),
    })
}
