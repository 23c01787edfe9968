//! Compiles the policy blocks: `circuit_breaker:` and `outlier_detection:`.
//!
//! Defaults live here; config/backstop.yaml documents the same values.

use std::time::Duration;

use serde_saphyr::Spanned;

use super::model::RedisConfig;
use super::model::{HealthCheck, LoadBalancing, UpstreamProtocol};
use super::raw::{
    RawCircuitBreaker, RawHealthCheck, RawOutlier, RawRate, RawRateLimit, RawRedis, RawRoute,
    RawSli, RawSlo,
};
use super::validate::{duration_or, percent, percent_or_zero, Issues};
use crate::policy::breaker::{BreakerConfig, RateCondition, Sharing};
use crate::policy::classify::FailureSet;
use crate::policy::outlier::OutlierConfig;
use crate::policy::rate::{LimitKey, OnError, Rate, RateLimitConfig, Scope};
use crate::policy::retry::{NonIdempotent, RetryOn, RetryPolicy, WhenBurning};
use crate::policy::Mode;
use crate::slo::calendar::{parse_offset, Calendar, CalendarUnit};
use crate::slo::{Sli, SloConfig, DEFAULT_MIN_EVENTS};

const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(10);
const DEFAULT_MAX_OPEN_FOR: Duration = Duration::from_secs(120);
const DEFAULT_HALF_OPEN: u32 = 3;
const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
const DEFAULT_MIN_REQUESTS: u32 = 20;
const HOUR: Duration = Duration::from_secs(3600);

/// `mode: enforce | shadow` (default enforce).
pub(crate) fn mode(issues: &mut Issues, path: &str, raw: Option<&Spanned<String>>) -> Mode {
    match raw.map(|m| m.value.trim()) {
        None | Some("enforce") => Mode::Enforce,
        Some("shadow") => Mode::Shadow,
        Some(other) => {
            let raw = raw.expect("matched Some");
            let message = format!("unknown mode {other:?}: expected enforce or shadow");
            issues.unknown(path, raw, other, message, &["enforce", "shadow"]);
            Mode::Enforce
        }
    }
}

pub(crate) fn breaker(
    issues: &mut Issues,
    path: &str,
    raw: &Spanned<RawCircuitBreaker>,
    has_redis: bool,
) -> Option<BreakerConfig> {
    let b = &raw.value;
    let mode = mode(issues, &format!("{path}.mode"), b.mode.as_ref());
    let consecutive_failures = b.consecutive_failures.as_ref().and_then(|n| {
        if n.value == 0 {
            issues.at(
                &format!("{path}.consecutive_failures"),
                n,
                "must be at least 1".into(),
            );
            None
        } else {
            Some(n.value)
        }
    });
    let failure_rate = b.failure_rate.as_ref().and_then(|r| {
        rate(
            issues,
            &format!("{path}.failure_rate"),
            r,
            DEFAULT_WINDOW,
            DEFAULT_MIN_REQUESTS,
        )
    });
    let (fr_window, fr_min) = failure_rate
        .as_ref()
        .map_or((DEFAULT_WINDOW, DEFAULT_MIN_REQUESTS), |r| {
            (r.window, r.min_requests)
        });
    let (slow_call_duration, slow_call_rate) = match &b.slow_call {
        Some(s) => {
            let sp = format!("{path}.slow_call");
            let duration =
                super::validate::duration(issues, &format!("{sp}.duration"), &s.duration);
            let as_rate = RawRate {
                threshold: s.threshold.clone(),
                window: s.window.clone(),
                min_requests: s.min_requests.clone(),
            };
            (duration, rate(issues, &sp, &as_rate, fr_window, fr_min))
        }
        None => (None, None),
    };
    if b.consecutive_failures.is_none() && b.failure_rate.is_none() && b.slow_call.is_none() {
        issues.at(
            path,
            raw,
            "no opening condition: set at least one of consecutive_failures, failure_rate or slow_call".into(),
        );
    }
    let open_for = duration_or(
        issues,
        &format!("{path}.open_for"),
        b.open_for.as_ref(),
        DEFAULT_OPEN_FOR,
        HOUR,
    );
    let max_open_for = duration_or(
        issues,
        &format!("{path}.max_open_for"),
        b.max_open_for.as_ref(),
        DEFAULT_MAX_OPEN_FOR.max(open_for),
        HOUR,
    );
    if let Some(m) = &b.max_open_for {
        if max_open_for < open_for {
            issues.at(
                &format!("{path}.max_open_for"),
                m,
                format!("max_open_for {} is shorter than open_for", m.value),
            );
        }
    }
    let half_open_requests = match &b.half_open_requests {
        Some(n) if n.value == 0 || n.value > 100 => {
            issues.at(
                &format!("{path}.half_open_requests"),
                n,
                format!("{} is out of range 1-100", n.value),
            );
            DEFAULT_HALF_OPEN
        }
        Some(n) => n.value,
        None => DEFAULT_HALF_OPEN,
    };
    let failure_on = match &b.failure_on {
        None => FailureSet::default(),
        Some(items) => {
            let names: Vec<&str> = items.iter().map(|i| i.value.as_str()).collect();
            match FailureSet::parse(names) {
                Ok(set) => set,
                Err(bad) => {
                    let (i, item) = items
                        .iter()
                        .enumerate()
                        .find(|(_, i)| i.value.trim() == bad)
                        .expect("bad item is listed");
                    let message = format!("unknown failure {bad:?}: expected connect-failure, timeout, reset, 5xx or a status like 429");
                    let ip = format!("{path}.failure_on[{i}]");
                    issues.unknown(&ip, item, &bad, message, &FailureSet::NAMES);
                    FailureSet::default()
                }
            }
        }
    };
    let shared = match b.shared.as_ref().map(|s| (s, s.value.trim())) {
        None | Some((_, "local")) => Sharing::Local,
        Some((s, "redis")) => {
            if !has_redis {
                issues.at(
                    &format!("{path}.shared"),
                    s,
                    "shared: redis needs a top-level redis: section".into(),
                );
            }
            Sharing::Redis
        }
        Some((s, other)) => {
            let message = format!("unknown shared {other:?}: expected local or redis");
            issues.unknown(
                &format!("{path}.shared"),
                s,
                other,
                message,
                &["local", "redis"],
            );
            Sharing::Local
        }
    };
    Some(BreakerConfig {
        mode,
        shared,
        consecutive_failures,
        failure_rate,
        slow_call_duration,
        slow_call_rate,
        open_for,
        max_open_for,
        half_open_requests,
        failure_on,
    })
}

fn rate(
    issues: &mut Issues,
    path: &str,
    raw: &RawRate,
    window: Duration,
    min: u32,
) -> Option<RateCondition> {
    let threshold = percent(issues, &format!("{path}.threshold"), &raw.threshold);
    let window = duration_or(
        issues,
        &format!("{path}.window"),
        raw.window.as_ref(),
        window,
        HOUR,
    );
    if window < Duration::from_secs(1) {
        if let Some(w) = &raw.window {
            issues.at(
                &format!("{path}.window"),
                w,
                "a window shorter than 1s cannot hold a meaningful rate".into(),
            );
        }
    }
    let min_requests = match &raw.min_requests {
        Some(n) if n.value == 0 => {
            issues.at(
                &format!("{path}.min_requests"),
                n,
                "must be at least 1".into(),
            );
            min
        }
        Some(n) => n.value,
        None => min,
    };
    Some(RateCondition {
        threshold: threshold?,
        window,
        min_requests,
    })
}

pub(crate) fn outlier(issues: &mut Issues, path: &str, raw: &Spanned<RawOutlier>) -> OutlierConfig {
    let o = &raw.value;
    let consecutive_failures = match &o.consecutive_failures {
        Some(n) if n.value == 0 => {
            issues.at(
                &format!("{path}.consecutive_failures"),
                n,
                "must be at least 1".into(),
            );
            5
        }
        Some(n) => n.value,
        None => 5,
    };
    let base_ejection = duration_or(
        issues,
        &format!("{path}.base_ejection"),
        o.base_ejection.as_ref(),
        Duration::from_secs(30),
        HOUR,
    );
    let max_ejection = duration_or(
        issues,
        &format!("{path}.max_ejection"),
        o.max_ejection.as_ref(),
        Duration::from_secs(300).max(base_ejection),
        HOUR * 24,
    );
    if let Some(m) = &o.max_ejection {
        if max_ejection < base_ejection {
            issues.at(
                &format!("{path}.max_ejection"),
                m,
                "max_ejection is shorter than base_ejection".into(),
            );
        }
    }
    let max_ejected = o
        .max_ejected
        .as_ref()
        .and_then(|m| percent(issues, &format!("{path}.max_ejected"), m))
        .unwrap_or(0.5);
    OutlierConfig {
        consecutive_failures,
        base_ejection,
        max_ejection,
        max_ejected,
    }
}

/// `retry:` on a route.
pub(crate) fn retry(
    issues: &mut Issues,
    path: &str,
    raw: &Spanned<crate::config::raw::RawRetry>,
) -> Option<RetryPolicy> {
    let r = &raw.value;
    let attempts = match &r.attempts {
        Some(a) if a.value == 0 || a.value > 10 => {
            issues.at(
                &format!("{path}.attempts"),
                a,
                format!("{} is out of range 1-10", a.value),
            );
            1
        }
        Some(a) => a.value,
        None => 2,
    };
    let per_try_timeout = r
        .per_try_timeout
        .as_ref()
        .and_then(|t| super::validate::duration(issues, &format!("{path}.per_try_timeout"), t));
    let on = match &r.on {
        None => RetryOn::parse([
            "connect-failure",
            "refused-stream",
            "reset",
            "timeout",
            "502",
            "503",
            "504",
        ])
        .expect("default list parses"),
        Some(items) => {
            let names: Vec<&str> = items.iter().map(|i| i.value.as_str()).collect();
            RetryOn::parse(names).unwrap_or_else(|bad| {
                let (i, item) = items.iter().enumerate().find(|(_, i)| i.value.trim() == bad).expect("bad item is listed");
                let message = format!("unknown retry condition {bad:?}: expected connect-failure, refused-stream, reset, timeout, 5xx or a status like 503");
                let ip = format!("{path}.on[{i}]");
                issues.unknown(&ip, item, &bad, message, &RetryOn::NAMES);
                RetryOn::default()
            })
        }
    };
    let backoff = r.backoff.as_ref();
    let backoff_base = duration_or(
        issues,
        &format!("{path}.backoff.base"),
        backoff.and_then(|b| b.base.as_ref()),
        Duration::from_millis(25),
        Duration::from_secs(60),
    );
    let backoff_max = duration_or(
        issues,
        &format!("{path}.backoff.max"),
        backoff.and_then(|b| b.max.as_ref()),
        Duration::from_secs(1).max(backoff_base),
        Duration::from_secs(300),
    );
    if let Some(m) = backoff.and_then(|b| b.max.as_ref()) {
        if backoff_max < backoff_base {
            issues.at(
                &format!("{path}.backoff.max"),
                m,
                "backoff.max is shorter than backoff.base".into(),
            );
        }
    }
    let budget = r.budget.as_ref();
    let budget_ratio = budget
        .and_then(|b| b.ratio.as_ref())
        .and_then(|ratio| percent_or_zero(issues, &format!("{path}.budget.ratio"), ratio))
        .unwrap_or(0.2);
    let budget_min_per_second = budget
        .and_then(|b| b.min_per_second.as_ref())
        .map_or(5, |m| m.value);
    let non_idempotent = match r.non_idempotent.as_ref().map(|n| (n, n.value.trim())) {
        None | Some((_, "unsent-only")) => NonIdempotent::UnsentOnly,
        Some((_, "idempotency-key")) => NonIdempotent::IdempotencyKey,
        Some((_, "never")) => NonIdempotent::Never,
        Some((n, other)) => {
            let message =
                format!("unknown value {other:?}: expected unsent-only, idempotency-key or never");
            issues.unknown(
                &format!("{path}.non_idempotent"),
                n,
                other,
                message,
                &["unsent-only", "idempotency-key", "never"],
            );
            NonIdempotent::UnsentOnly
        }
    };
    let idempotency_header = match &r.idempotency_header {
        None => http::HeaderName::from_static("idempotency-key"),
        Some(h) => http::HeaderName::from_bytes(h.value.trim().as_bytes()).unwrap_or_else(|_| {
            issues.at(
                &format!("{path}.idempotency_header"),
                h,
                format!("invalid header name {:?}", h.value),
            );
            http::HeaderName::from_static("idempotency-key")
        }),
    };
    let max_buffered_body = match &r.max_buffered_body {
        Some(m) if m.value > 64 * 1024 * 1024 => {
            issues.at(
                &format!("{path}.max_buffered_body"),
                m,
                "more than 64 MiB kept per request is not a buffer, it is a memory leak".into(),
            );
            65536
        }
        Some(m) => m.value as usize,
        None => 65536,
    };
    let when_burning = r.when_burning.as_ref().map(|w| {
        let burn_rate = match &w.burn_rate {
            Some(b) if !(b.value > 0.0 && b.value <= 1000.0) => {
                issues.at(
                    &format!("{path}.when_burning.burn_rate"),
                    b,
                    "must be above 0 and at most 1000".into(),
                );
                14.4
            }
            Some(b) => b.value,
            None => 14.4,
        };
        let windows = crate::slo::live::BURN_WINDOWS;
        let window = match &w.window {
            None => windows[0].1,
            Some(t) => match windows.iter().find(|(name, _)| *name == t.value.trim()) {
                Some((_, span)) => *span,
                None => {
                    let names: Vec<&str> = windows.iter().map(|(n, _)| *n).collect();
                    let message = format!(
                        "window {:?} is not a burn-rate window: use {}",
                        t.value,
                        names.join(", ")
                    );
                    issues.unknown(
                        &format!("{path}.when_burning.window"),
                        t,
                        &t.value,
                        message,
                        &names,
                    );
                    windows[0].1
                }
            },
        };
        let budget_ratio = w
            .budget_ratio
            .as_ref()
            .and_then(|r| percent_or_zero(issues, &format!("{path}.when_burning.budget_ratio"), r))
            .unwrap_or(0.0);
        WhenBurning {
            burn_rate,
            window,
            budget_ratio,
        }
    });
    Some(RetryPolicy {
        attempts,
        per_try_timeout,
        on,
        backoff_base,
        backoff_max,
        budget_ratio,
        budget_min_per_second,
        non_idempotent,
        idempotency_header,
        max_buffered_body,
        when_burning,
    })
}

/// `load_balancing:` (default p2c_ewma).
pub(crate) fn load_balancing(
    issues: &mut Issues,
    path: &str,
    raw: Option<&Spanned<String>>,
) -> LoadBalancing {
    const NAMES: [&str; 3] = ["p2c_ewma", "round_robin", "least_request"];
    match raw.map(|r| (r, r.value.trim())) {
        None | Some((_, "p2c_ewma")) => LoadBalancing::P2cEwma,
        Some((_, "round_robin")) => LoadBalancing::RoundRobin,
        Some((_, "least_request")) => LoadBalancing::LeastRequest,
        Some((r, other)) => {
            let message = format!(
                "unknown load balancing {other:?}: expected p2c_ewma, round_robin or least_request"
            );
            issues.unknown(path, r, other, message, &NAMES);
            LoadBalancing::P2cEwma
        }
    }
}

/// `protocol:` on an upstream (default http1).
pub(crate) fn protocol(
    issues: &mut Issues,
    path: &str,
    raw: Option<&Spanned<String>>,
) -> UpstreamProtocol {
    const NAMES: [&str; 2] = ["http1", "http2"];
    match raw.map(|r| (r, r.value.trim())) {
        None | Some((_, "http1")) => UpstreamProtocol::Http1,
        Some((_, "http2")) => UpstreamProtocol::Http2,
        Some((r, other)) => {
            let message = format!("unknown protocol {other:?}: expected http1 or http2");
            issues.unknown(path, r, other, message, &NAMES);
            UpstreamProtocol::Http1
        }
    }
}

/// `health_check:` on an upstream.
pub(crate) fn health_check(
    issues: &mut Issues,
    path: &str,
    raw: &Spanned<RawHealthCheck>,
) -> HealthCheck {
    let h = &raw.value;
    let check_path = match &h.path {
        Some(p) if p.value.starts_with('/') => p.value.parse().unwrap_or_else(|_| {
            issues.at(
                &format!("{path}.path"),
                p,
                format!("invalid path {:?}", p.value),
            );
            http::uri::PathAndQuery::from_static("/")
        }),
        Some(p) => {
            issues.at(
                &format!("{path}.path"),
                p,
                format!("path {:?} must start with '/'", p.value),
            );
            http::uri::PathAndQuery::from_static("/")
        }
        None => http::uri::PathAndQuery::from_static("/health"),
    };
    let interval = duration_or(
        issues,
        &format!("{path}.interval"),
        h.interval.as_ref(),
        Duration::from_secs(5),
        HOUR,
    );
    let timeout = duration_or(
        issues,
        &format!("{path}.timeout"),
        h.timeout.as_ref(),
        Duration::from_secs(1),
        HOUR,
    );
    let threshold =
        |issues: &mut Issues, name: &str, raw: &Option<Spanned<u32>>, default: u32| match raw {
            Some(n) if n.value == 0 || n.value > 100 => {
                issues.at(
                    &format!("{path}.{name}"),
                    n,
                    format!("{} is out of range 1-100", n.value),
                );
                default
            }
            Some(n) => n.value,
            None => default,
        };
    let healthy_threshold = threshold(issues, "healthy_threshold", &h.healthy_threshold, 2);
    let unhealthy_threshold = threshold(issues, "unhealthy_threshold", &h.unhealthy_threshold, 3);
    let expect_status = match &h.expect_status {
        None => vec![(200, 299)],
        Some(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let parse = |s: &str| {
                    s.trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|c| (100..=599).contains(c))
                };
                let range = match item.value.split_once('-') {
                    Some((lo, hi)) => parse(lo).zip(parse(hi)).filter(|(lo, hi)| lo <= hi),
                    None => parse(&item.value).map(|c| (c, c)),
                };
                if range.is_none() {
                    issues.at(
                        &format!("{path}.expect_status[{i}]"),
                        item,
                        format!(
                            "invalid status {:?}: expected a code like 200 or a range like 200-299",
                            item.value
                        ),
                    );
                }
                range
            })
            .collect(),
    };
    HealthCheck {
        path: check_path,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
        expect_status,
    }
}

/// `rate_limit:` on a route.
/// A request rate `N/s`, `N/m` or `N/h` (route rate limits, declared egress rates).
pub(crate) fn request_rate(
    issues: &mut Issues,
    path: &str,
    text: &Spanned<String>,
) -> Option<Rate> {
    let rate = Rate::parse(&text.value);
    if rate.is_none() {
        let message = format!(
            "invalid rate {:?}: expected N/s, N/m or N/h with N > 0, e.g. 100/s",
            text.value
        );
        issues.at(path, text, message);
    }
    rate
}

/// Where a rate is counted: `local` (default) or `global`, which needs a `redis:` section.
pub(crate) fn scope(
    issues: &mut Issues,
    path: &str,
    raw: Option<&Spanned<String>>,
    has_redis: bool,
) -> Scope {
    match raw.map(|s| (s, s.value.trim())) {
        None | Some((_, "local")) => Scope::Local,
        Some((s, "global")) => {
            if !has_redis {
                let message = "scope global needs a top-level redis: section".into();
                issues.at(path, s, message);
            }
            Scope::Global
        }
        Some((s, other)) => {
            let message = format!("unknown scope {other:?}: expected local or global");
            issues.unknown(path, s, other, message, &["local", "global"]);
            Scope::Local
        }
    }
}

pub(crate) fn rate_limit(
    issues: &mut Issues,
    path: &str,
    raw: &Spanned<RawRateLimit>,
    has_redis: bool,
) -> Option<RateLimitConfig> {
    let r = &raw.value;
    let mode = mode(issues, &format!("{path}.mode"), r.mode.as_ref());
    let rate = request_rate(issues, &format!("{path}.rate"), &r.rate);
    let burst = r.burst.as_ref().map_or(0, |b| b.value);
    let key = match r.key.as_ref().map(|k| (k, k.value.trim())) {
        None | Some((_, "route")) => LimitKey::Route,
        Some((_, "client_ip")) => LimitKey::ClientIp,
        Some((k, other)) => match other
            .strip_prefix("header:")
            .map(|h| http::HeaderName::from_bytes(h.trim().as_bytes()))
        {
            Some(Ok(name)) => LimitKey::Header(name),
            _ => {
                let message =
                    format!("invalid key {other:?}: expected route, client_ip or header:NAME");
                issues.unknown(
                    &format!("{path}.key"),
                    k,
                    other,
                    message,
                    &["route", "client_ip"],
                );
                LimitKey::Route
            }
        },
    };
    let scope = scope(
        issues,
        &format!("{path}.scope"),
        r.scope.as_ref(),
        has_redis,
    );
    let reject_missing_key = match r.on_missing_key.as_ref().map(|s| (s, s.value.trim())) {
        None | Some((_, "reject")) => true,
        Some((_, "shared")) => false,
        Some((s, other)) => {
            let message = format!("unknown value {other:?}: expected reject or shared");
            issues.unknown(
                &format!("{path}.on_missing_key"),
                s,
                other,
                message,
                &["reject", "shared"],
            );
            true
        }
    };
    let max_keys = match &r.max_keys {
        Some(m) if m.value == 0 => {
            issues.at(&format!("{path}.max_keys"), m, "must be at least 1".into());
            crate::policy::rate::DEFAULT_MAX_KEYS
        }
        Some(m) => m.value as usize,
        None => crate::policy::rate::DEFAULT_MAX_KEYS,
    };
    Some(RateLimitConfig {
        mode,
        rate: rate?,
        burst,
        key,
        scope,
        reject_missing_key,
        max_keys,
    })
}

/// The top-level `redis:` section.
pub(crate) fn redis(issues: &mut Issues, raw: &Spanned<RawRedis>) -> Option<RedisConfig> {
    let r = &raw.value;
    let url = r.url.value.trim();
    if !(url.starts_with("redis://") || url.starts_with("rediss://"))
        || redis::parse_redis_url(url).is_none()
    {
        issues.at(
            "redis.url",
            &r.url,
            format!("invalid url {url:?}: expected redis://host:port or rediss://host:port"),
        );
    }
    let timeout = duration_or(
        issues,
        "redis.timeout",
        r.timeout.as_ref(),
        Duration::from_millis(50),
        Duration::from_secs(10),
    );
    let on_error = match r.on_error.as_ref().map(|s| (s, s.value.trim())) {
        None | Some((_, "allow")) => OnError::Allow,
        Some((_, "deny")) => OnError::Deny,
        Some((s, other)) => {
            let message = format!("unknown value {other:?}: expected allow or deny");
            issues.unknown("redis.on_error", s, other, message, &["allow", "deny"]);
            OnError::Allow
        }
    };
    Some(RedisConfig {
        url: url.to_owned(),
        timeout,
        on_error,
        cluster: r.cluster.unwrap_or(false),
    })
}

/// `slos:`
pub(crate) fn slos(
    issues: &mut Issues,
    raw: &[RawSlo],
    routes: &[RawRoute],
    buckets: &[Duration],
) -> Vec<SloConfig> {
    let mut names = std::collections::HashSet::new();
    raw.iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let path = format!("slos[{i}]");
            super::validate::name(issues, &format!("{path}.name"), &s.name);
            if !names.insert(s.name.value.as_str()) {
                issues.at(&format!("{path}.name"), &s.name, format!("duplicate slo name {:?}", s.name.value));
            }
            if s.routes.value.is_empty() {
                issues.at(&format!("{path}.routes"), &s.routes, "an slo needs at least one route".into());
            }
            let route_names: Vec<&str> = routes.iter().map(|r| r.name.value.as_str()).collect();
            let covered: Vec<usize> = s
                .routes
                .value
                .iter()
                .enumerate()
                .filter_map(|(j, r)| {
                    let found = route_names.iter().position(|n| *n == r.value);
                    if found.is_none() {
                        let message = format!("unknown route {:?}", r.value);
                        issues.unknown(&format!("{path}.routes[{j}]"), r, &r.value, message, &route_names);
                    }
                    found
                })
                .collect();
            let objective = percent(issues, &format!("{path}.objective"), &s.objective);
            if objective == Some(1.0) {
                issues.at(&format!("{path}.objective"), &s.objective, "100% leaves no error budget; use e.g. 99.99%".into());
            }
            let day = Duration::from_secs(24 * 3600);
            let unit = s.window.as_ref().and_then(|w| match w.value.trim() {
                "calendar_month" => Some(CalendarUnit::Month),
                "calendar_quarter" => Some(CalendarUnit::Quarter),
                _ => None,
            });
            let window = match (unit, &s.window) {
                (Some(unit), _) => unit.longest(),
                (None, Some(w)) if w.value.trim().starts_with("calendar") => {
                    let message = format!("unknown calendar window {:?}: expected calendar_month or calendar_quarter (or a rolling window such as 28d)", w.value);
                    issues.unknown(&format!("{path}.window"), w, &w.value, message, &["calendar_month", "calendar_quarter"]);
                    day * 28
                }
                (None, _) => duration_or(issues, &format!("{path}.window"), s.window.as_ref(), day * 28, day * 90),
            };
            if window < Duration::from_secs(3600) {
                if let Some(w) = &s.window {
                    issues.at(&format!("{path}.window"), w, "an slo window shorter than 1h is not a compliance period".into());
                }
            }
            let utc_offset_seconds = match &s.time_zone {
                None => 0,
                Some(tz) => {
                    if unit.is_none() {
                        issues.at(&format!("{path}.time_zone"), tz, "time_zone applies to a calendar window only (calendar_month or calendar_quarter)".into());
                    }
                    parse_offset(&tz.value).unwrap_or_else(|message| {
                        issues.at(&format!("{path}.time_zone"), tz, message);
                        0
                    })
                }
            };
            let calendar = unit.map(|unit| Calendar { unit, utc_offset_seconds });
            let min_events = s.alerting.as_ref().and_then(|a| a.min_events.as_ref()).map_or(DEFAULT_MIN_EVENTS, |m| m.value);
            let sli = match &s.sli.value {
                RawSli::Named(n) if n.trim() == "availability" => Sli::Availability { exclude_rate_limited: s.exclude_rate_limited.unwrap_or(false) },
                RawSli::Named(other) => {
                    let message = format!("unknown sli {other:?}: expected availability or {{ latency_below: 300ms }}");
                    issues.unknown(&format!("{path}.sli"), &s.sli, other, message, &["availability"]);
                    Sli::Availability { exclude_rate_limited: false }
                }
                RawSli::Latency { latency_below } => {
                    let text = serde_saphyr::Spanned { value: latency_below.clone(), referenced: s.sli.referenced, defined: s.sli.defined };
                    let d = super::validate::duration(issues, &format!("{path}.sli.latency_below"), &text).unwrap_or_default();
                    if !d.is_zero() && !buckets.contains(&d) {
                        let list: Vec<String> = buckets.iter().map(|b| humantime::format_duration(*b).to_string()).collect();
                        issues.at(
                            &format!("{path}.sli.latency_below"),
                            &text,
                            format!("{latency_below} is not a bound of the duration histogram; use one of {}, or add it to metrics.latency_buckets", list.join(", ")),
                        );
                    }
                    Sli::LatencyBelow(d)
                }
            };
            Some(SloConfig { name: s.name.value.clone(), routes: covered, objective: objective?, window, sli, calendar, min_events })
        })
        .collect()
}
