//! The dataplane side of rate limits: find the key, ask the local or global limiter, and say
//! the result in headers (429 + Retry-After, and the IETF RateLimit fields on every answer).
//!
//! Headers follow draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy: "<route>";q=<n>;w=<s>`
//! (the route's quota: n requests per w seconds) and `RateLimit: "<route>";r=<remaining>;t=<s>`
//! (requests left now, seconds until the bucket is full again or, when rejected, until the next
//! request is allowed).

pub mod global;
pub mod local;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use prometheus::{IntCounter, IntGauge};

use self::global::Redis;
use self::local::LocalLimiter;
use super::tasks::Tasks;
use crate::metrics::Metrics;
use crate::policy::rate::{ceil_secs, LimitKey, OnError, RateLimitConfig, Scope, Verdict};
use crate::policy::Mode;

/// Longest header value used as a key; longer values are cut (keys stay bounded in memory).
const MAX_KEY_LEN: usize = 256;
/// How often idle local keys are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(2);

/// A route's rate limit.
#[derive(Debug)]
pub struct RouteLimiter {
    route: String,
    config: RateLimitConfig,
    local: Option<Arc<LocalLimiter>>,
    global: Option<Arc<Redis>>,
    policy_header: HeaderValue,
    limited: IntCounter,
    backend_errors: IntCounter,
    fast_fails: IntCounter,
    _pruning: Tasks,
}

/// The outcome for one request.
#[derive(Debug)]
pub enum Decision {
    /// Forward it; add these headers to the response. The note, for the access log, says when
    /// it was admitted only because of shadow mode or a Redis failure with `on_error: allow`.
    Admit(RateHeaders, Option<&'static str>),
    /// Answer 429 with these headers and this Retry-After.
    Reject(RateHeaders, Duration),
    /// `key: header:NAME`, the header is absent and `on_missing_key: reject`.
    MissingKey,
}

/// The RateLimit header fields for one response.
#[derive(Debug, Clone)]
pub struct RateHeaders {
    policy: HeaderValue,
    state: Option<HeaderValue>,
}

impl RateHeaders {
    /// Adds the fields to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert("ratelimit-policy", self.policy.clone());
        if let Some(state) = &self.state {
            headers.insert("ratelimit", state.clone());
        }
    }
}

impl RouteLimiter {
    /// The limiter of `route`; `redis` is the process's shared client when configured.
    pub fn new(
        route: &str,
        config: &RateLimitConfig,
        redis: Option<&Arc<Redis>>,
        metrics: &Metrics,
    ) -> Self {
        let scope = match config.scope {
            Scope::Local => "local",
            Scope::Global => "global",
        };
        let (limited, keys, backend_errors) =
            metrics.rate_limit(route, scope, config.mode.as_str());
        let local = (config.scope == Scope::Local).then(|| {
            let evictions = metrics.rate_limit_evictions(route);
            Arc::new(LocalLimiter::new(config).counting_evictions(evictions))
        });
        let pruning = match &local {
            Some(limiter) => {
                let limiter = Arc::downgrade(limiter);
                Tasks(vec![tokio::spawn(prune(limiter, keys))])
            }
            None => Tasks::default(),
        };
        let window = config.rate.per.as_secs();
        let policy = format!("\"{route}\";q={};w={window}", config.rate.count);
        Self {
            route: route.to_owned(),
            config: config.clone(),
            local,
            global: if config.scope == Scope::Global {
                redis.cloned()
            } else {
                None
            },
            policy_header: HeaderValue::from_str(&policy)
                .expect("route names are valid header text"),
            limited,
            backend_errors,
            fast_fails: metrics.redis_fast_fail(route),
            _pruning: pruning,
        }
    }

    /// Decides about a request with `headers` from `client` (its IP as text).
    pub async fn decide(&self, headers: &HeaderMap, client: &str) -> Decision {
        let Some(key) = self.key(headers, client) else {
            return Decision::MissingKey;
        };
        let verdict = match (&self.local, &self.global) {
            (Some(local), _) => local.check(&key),
            (None, Some(redis)) => {
                let bucket = format!("backstop:rl:{}:{key}", self.route);
                match redis.check(&bucket, &self.config).await {
                    Ok(verdict) => verdict,
                    Err(e) => {
                        self.backend_errors.inc();
                        if e.is_fast() {
                            // Redis is known to be down: said once when that began, not per request.
                            self.fast_fails.inc();
                            tracing::debug!(route = %self.route, error = %e, on_error = redis.on_error().as_str(), "global rate limit undecided");
                        } else {
                            tracing::warn!(route = %self.route, error = %redis.describe(&e), on_error = redis.on_error().as_str(), "global rate limit undecided");
                        }
                        let allowed = redis.on_error() == OnError::Allow;
                        let retry = Duration::from_secs(1);
                        return if allowed {
                            Decision::Admit(
                                RateHeaders {
                                    policy: self.policy_header.clone(),
                                    state: None,
                                },
                                Some("rate_limit_backend_error_allowed"),
                            )
                        } else {
                            self.limited.inc();
                            Decision::Reject(
                                RateHeaders {
                                    policy: self.policy_header.clone(),
                                    state: None,
                                },
                                retry,
                            )
                        };
                    }
                }
            }
            (None, None) => {
                return Decision::Admit(
                    RateHeaders {
                        policy: self.policy_header.clone(),
                        state: None,
                    },
                    None,
                )
            }
        };
        let headers = self.headers(verdict);
        if verdict.allowed {
            return Decision::Admit(headers, None);
        }
        self.limited.inc();
        match self.config.mode {
            Mode::Enforce => Decision::Reject(headers, verdict.reset),
            Mode::Shadow => {
                tracing::debug!(route = %self.route, "shadow rate limit would reject");
                Decision::Admit(headers, Some("rate_limit_shadow_reject"))
            }
        }
    }

    /// A stable short hash of this request's key, for the access log (the key itself is never
    /// logged): FNV-1a, 32 bits, the same in every process and release.
    pub fn key_hash(&self, headers: &HeaderMap, client: &str) -> Option<u32> {
        self.key(headers, client).map(|key| fnv1a(key.as_bytes()))
    }

    /// Requests this limit rejected (or would have, in shadow mode) so far.
    pub fn rejected(&self) -> u64 {
        self.limited.get()
    }

    fn key<'a>(&self, headers: &'a HeaderMap, client: &'a str) -> Option<Cow<'a, str>> {
        match &self.config.key {
            LimitKey::Route => Some(Cow::Borrowed("")),
            LimitKey::ClientIp => Some(Cow::Borrowed(client)),
            LimitKey::Header(name) => match headers.get(name) {
                Some(value) => {
                    let bytes = &value.as_bytes()[..value.len().min(MAX_KEY_LEN)];
                    Some(String::from_utf8_lossy(bytes))
                }
                None if self.config.reject_missing_key => None,
                None => Some(Cow::Borrowed("\u{0}missing")),
            },
        }
    }

    fn headers(&self, verdict: Verdict) -> RateHeaders {
        let t = if verdict.allowed && verdict.reset.is_zero() {
            0
        } else {
            ceil_secs(verdict.reset)
        };
        let state = format!("\"{}\";r={};t={t}", self.route, verdict.remaining);
        RateHeaders {
            policy: self.policy_header.clone(),
            state: HeaderValue::from_str(&state).ok(),
        }
    }
}

async fn prune(limiter: std::sync::Weak<LocalLimiter>, keys: IntGauge) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tick.tick().await;
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        keys.set(limiter.prune() as i64);
    }
}

/// 32-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

#[cfg(test)]
mod key_hash_tests {
    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(super::fnv1a(b""), 0x811c_9dc5);
        assert_eq!(super::fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(super::fnv1a(b"foobar"), 0xbf9c_f968);
    }
}
