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
    /// Limits and deadlines of the proxy listener.
    pub server: ServerLimits,
    /// Which requests get an access log line.
    pub access_log: AccessLog,
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
    /// Settings of `backstop rules` (`slos_rules:`).
    pub slos_rules: crate::slo::rules::RulesConfig,
    /// Bucket bounds of the request duration histogram, ascending (`metrics.latency_buckets`).
    pub latency_buckets: Vec<Duration>,
    /// Things that work but should be fixed (e.g. a token file readable by others), one line
    /// each, printed by `validate` and logged at startup and on reload.
    pub warnings: Vec<String>,
}

/// The `access_log:` section.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccessLog {
    /// Share of successful requests logged, in [0, 1]; failures are always logged.
    pub sample: f64,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self { sample: 1.0 }
    }
}

/// The `server:` section: what a client connection may cost the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Deadline for a new connection's first request head (HTTP/1) or preface (HTTP/2), and
    /// for every later request head on a keep-alive connection once its first byte arrived.
    pub header_read_timeout: Duration,
    /// Idle keep-alive connections are closed after this long.
    pub idle_timeout: Duration,
    /// Longest gap between two reads of a request body.
    pub client_body_timeout: Duration,
    /// Most open client connections; `None` derives it from the fd limit at start.
    pub max_connections: Option<usize>,
    /// Largest request head, in bytes.
    pub max_request_headers_bytes: usize,
    /// Most concurrent HTTP/2 streams per connection, and in total.
    pub max_concurrent_streams: u32,
    /// Most bytes kept for replay across all requests at once.
    pub max_buffered_bytes: u64,
    /// Peers whose forwarded headers are trusted.
    pub trusted_proxies: Vec<Cidr>,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(30),
            max_connections: None,
            max_request_headers_bytes: 64 * 1024,
            max_concurrent_streams: 1000,
            max_buffered_bytes: 64 * 1024 * 1024,
            trusted_proxies: Vec::new(),
        }
    }
}

/// An IP network, `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub addr: std::net::IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside this network. IPv4-mapped IPv6 addresses match IPv4 networks.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let bits = u32::from(self.prefix.min(32));
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let bits = u32::from(self.prefix.min(128));
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The top-level `redis:` section. Its `Debug` hides the URL's credentials.
#[derive(Clone, PartialEq, Eq)]
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

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &crate::redact::redact_url(&self.url))
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .field("cluster", &self.cluster)
            .finish()
    }
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
    /// HTTP version spoken to the endpoints.
    pub protocol: UpstreamProtocol,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// Longest wait for the next piece of a response body.
    pub read_timeout: Duration,
    /// Most idle pooled connections kept per endpoint.
    pub max_idle_connections: usize,
    /// Bulkhead limit on requests in flight.
    pub max_concurrent_requests: Option<u32>,
    /// A concurrency limit learned from latency and failures.
    pub adaptive_concurrency: Option<crate::policy::adaptive::AdaptiveConfig>,
    /// Upstream-level circuit breaker.
    pub circuit_breaker: Option<BreakerConfig>,
    /// Passive per-endpoint ejection.
    pub outlier_detection: Option<OutlierConfig>,
    /// How an endpoint is chosen within a priority group.
    pub load_balancing: LoadBalancing,
    /// Active health checks.
    pub health_check: Option<HealthCheck>,
    /// The upstream deduplicates by idempotency key itself (`honours_idempotency_key`).
    pub honours_idempotency_key: bool,
    /// Keys backstop adds to non-idempotent requests that lack one (`idempotency_key`).
    pub idempotency_key: Option<GeneratedKey>,
    /// Pacing to the partner's quota (`quota`).
    pub quota: Option<QuotaConfig>,
    /// What the partner's answers mean (`outcome`), when the status alone misleads.
    pub outcome: Option<crate::policy::outcome_rules::Rules>,
}

/// `upstreams.<name>.quota`: stop sending while the partner says its quota is spent, and (with
/// `rate`) never send faster than the declared rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Wait (up to `max_wait`) rather than answer 429 at once.
    pub queue: bool,
    /// Longest wait in queue mode.
    pub max_wait: Duration,
    /// A declared egress rate (`rate`, `burst`, `scope`); `None`: only the learned quota.
    pub declared: Option<DeclaredRate>,
}

/// `upstreams.<name>.quota.rate`: the rate backstop sends at, at most, to the partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeclaredRate {
    /// Steady rate.
    pub rate: crate::policy::rate::Rate,
    /// Requests that may go at once (the bucket size, at least 1).
    pub burst: u32,
    /// Per process, or shared by the fleet through Redis.
    pub scope: crate::policy::rate::Scope,
}

/// `upstreams.<name>.idempotency_key`: the header backstop fills with a fresh key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    /// Header carrying the key.
    pub header: HeaderName,
    /// Add a UUID v4 to a non-idempotent request without one.
    pub generate: bool,
}

/// The HTTP version an upstream speaks (`protocol:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, one request at a time per pooled connection.
    #[default]
    Http1,
    /// HTTP/2: ALPN `h2` over TLS, h2c with prior knowledge without; requests share a few
    /// multiplexed connections per endpoint.
    Http2,
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
    /// Whether `%2F` and `%5C` may appear in the path of requests to this route.
    pub allow_encoded_slashes: bool,
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
    /// The connection upgrade this route tunnels; `None` refuses upgrade requests.
    pub upgrade: Option<Upgrade>,
    /// The idempotency layer; `None` passes keys through untouched.
    pub idempotency: Option<Idempotency>,
    /// Hedged requests; `None` sends one attempt at a time.
    pub hedge: Option<Hedge>,
}

/// `routes[].hedge`: a second attempt when the first is slow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hedge {
    /// When the extra attempt goes.
    pub after: HedgeAfter,
    /// Most extra attempts per request.
    pub max_extra: u32,
    /// Extra attempts as a share of requests.
    pub budget: f64,
}

/// How long an attempt may take before a hedge follows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeAfter {
    /// A fixed delay.
    Fixed(Duration),
    /// This quantile (0.5-0.999) of the route's recent attempt latency.
    Percentile(f64),
}

/// `routes[].idempotency`: requests with a key are delivered at most once per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// Header carrying the client's key.
    pub header: HeaderName,
    /// Where keys are recorded.
    pub store: IdempotencyStore,
    /// How long a completed (or unknown) outcome is kept.
    pub ttl: Duration,
    /// Largest response body stored for replay.
    pub max_response_bytes: usize,
    /// Largest request body read to fingerprint it; larger ones are refused with 413.
    pub max_request_bytes: usize,
    /// What a repeat must match.
    pub fingerprint: FingerprintParts,
    /// Forward the request unrecorded (`true`) or refuse it with 503 when the store fails.
    pub forward_on_error: bool,
    /// Most keys the local store keeps for this route.
    pub max_keys: usize,
}

/// Where idempotency keys are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotencyStore {
    /// In this process's memory.
    Local,
    /// In the top-level `redis:`, shared by every replica.
    Redis,
}

/// The parts of a request its fingerprint covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FingerprintParts {
    /// The method.
    pub method: bool,
    /// The path and query.
    pub path: bool,
    /// The body.
    pub body: bool,
}

/// A protocol a route lets a connection switch to (HTTP/1.1 `Upgrade`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// `Upgrade: websocket` (RFC 6455).
    Websocket,
}

/// How a route matches the request's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// The host, lower-case, without port.
    Exact(String),
    /// `*.example.com`: any host ending in `.example.com`, stored as `.example.com`.
    Suffix(String),
}
