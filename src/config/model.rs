//! The compiled config: validated, typed, defaults applied, references resolved.
//!
//! Nothing here can be invalid: a [`Config`] exists only when every check passed. The dataplane
//! reads these types and never re-parses a string on the request path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use crate::policy::breaker::BreakerConfig;
use crate::policy::outlier::OutlierConfig;
use crate::policy::retry::RetryPolicy;

/// A whole, valid config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Proxy listener.
    pub listen: SocketAddr,
    /// Admin listener (metrics, health).
    pub admin_listen: SocketAddr,
    /// Bearer token required by mutating admin endpoints (read from `admin.token_file`).
    pub admin_token: Option<String>,
    /// The read views (status page, `/admin/*`) need the token too (`admin.protect_reads`).
    pub admin_protect_reads: bool,
    /// Time in-flight requests get to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// Upstreams, sorted by name.
    pub upstreams: Vec<Upstream>,
    /// Routes in match order.
    pub routes: Vec<Route>,
    /// Hex SHA-256 of the file's bytes, to tell which config a process runs.
    pub sha256: String,
    /// Redis for global rate limits.
    pub redis: Option<RedisConfig>,
    /// Service level objectives.
    pub slos: Vec<crate::slo::SloConfig>,
    /// Things that work but should be fixed (e.g. a token file readable by others), one line
    /// each, printed by `validate` and logged at startup and on reload.
    pub warnings: Vec<String>,
}

/// The top-level `redis:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Longest wait for one decision.
    pub timeout: Duration,
    /// What to do when Redis fails or is slow.
    pub on_error: crate::policy::rate::OnError,
    /// Use the Redis Cluster client.
    pub cluster: bool,
}

/// A named pool of endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Name from the config.
    pub name: String,
    /// Endpoints in config order.
    pub endpoints: Vec<Endpoint>,
    /// TCP + TLS connect deadline.
    pub connect_timeout: Duration,
    /// TLS settings; `None` for plain HTTP.
    pub tls: Option<Tls>,
    /// Host header to send instead of the client's.
    pub host_header: Option<HeaderValue>,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// Most idle pooled connections kept per endpoint.
    pub max_idle_connections: usize,
    /// Bulkhead limit on requests in flight.
    pub max_concurrent_requests: Option<u32>,
    /// Upstream-level circuit breaker.
    pub circuit_breaker: Option<BreakerConfig>,
    /// Passive per-endpoint ejection.
    pub outlier_detection: Option<OutlierConfig>,
    /// How an endpoint is chosen within a priority group.
    pub load_balancing: LoadBalancing,
    /// Active health checks.
    pub health_check: Option<HealthCheck>,
}

/// How an endpoint is chosen within a priority group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalancing {
    /// Power of two random choices on peak-EWMA latency x in-flight, divided by weight.
    P2cEwma,
    /// Smooth weighted round robin.
    RoundRobin,
    /// Power of two random choices on in-flight requests, divided by weight.
    LeastRequest,
}

/// Active health check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path to GET.
    pub path: http::uri::PathAndQuery,
    /// Time between checks.
    pub interval: Duration,
    /// Deadline of one check.
    pub timeout: Duration,
    /// Successes in a row that make an endpoint healthy.
    pub healthy_threshold: u32,
    /// Failures in a row that make an endpoint unhealthy.
    pub unhealthy_threshold: u32,
    /// Inclusive status ranges that count as healthy.
    pub expect_status: Vec<(u16, u16)>,
}

/// One address of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` as written; used as the metrics label.
    pub address: String,
    /// Lower is preferred.
    pub priority: u32,
    /// Share of traffic within its priority group.
    pub weight: u32,
}

/// Upstream TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Name for SNI and certificate checks; defaults to the endpoint's host.
    pub sni: Option<String>,
    /// CA bundle to trust instead of the web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Whether to verify the certificate at all.
    pub verify: bool,
}

/// One route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Name from the config.
    pub name: String,
    /// Host to match, if any.
    pub host: Option<HostMatch>,
    /// Segment-aware path prefix.
    pub path_prefix: String,
    /// Methods to match; `None` matches all.
    pub methods: Option<Vec<Method>>,
    /// Headers that must be present with exactly these values. A value marked `secret: true`
    /// in the file is a sensitive `HeaderValue` (`is_sensitive()`): views show it as `***`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Total deadline for the response headers, across all attempts.
    pub timeout: Duration,
    /// Route-level breaker (keyed by route + upstream), replacing the upstream's for this route.
    pub circuit_breaker: Option<BreakerConfig>,
    /// Retry policy; `None` means one attempt.
    pub retry: Option<RetryPolicy>,
    /// Indices into [`Config::upstreams`] to fail over to, in order.
    pub failover: Vec<usize>,
    /// Rate limit.
    pub rate_limit: Option<crate::policy::rate::RateLimitConfig>,
}

/// How a route matches the request's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// The host, lower-case, without port.
    Exact(String),
    /// `*.example.com`: any host ending in `.example.com`, stored as `.example.com`.
    Suffix(String),
}
