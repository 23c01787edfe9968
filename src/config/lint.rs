//! `backstop lint`: settings that are valid but probably not what was meant.
//!
//! Each rule looks at the compiled [`Config`] (so defaults count) and names the key to change,
//! its place in the file, and a fix. `backstop validate` prints the same findings as warnings.
//! Two checks of the issue's list are errors, not findings, because backstop refuses them:
//! an SLO latency threshold that is not a histogram bucket, and an admin listener off loopback
//! without a token.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use http::Method;

use super::error::{ConfigIssue, Position};
use super::key_paths;
use super::model::{Config, Route};
use crate::policy::breaker::BreakerConfig;
use crate::policy::rate::{LimitKey, OnError, Scope};
use crate::policy::retry::NonIdempotent;

/// One finding: which rule, and the problem with its key path, place and fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Rule name, e.g. `per-try-timeout`.
    pub rule: &'static str,
    /// Key path, message, position; `hint` holds the fix.
    pub issue: ConfigIssue,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "warning[{}]: {}", self.rule, self.issue)
    }
}

/// Every rule, in the order findings are listed for one route.
pub const RULES: [&str; 8] = [
    "per-try-timeout",
    "retries-exceed-timeout",
    "retry-non-idempotent",
    "timeout-over-drain",
    "breaker-min-requests",
    "failover-same-endpoints",
    "rate-limit-no-burst",
    "global-deny-no-redis-timeout",
];

struct Lint<'a> {
    keys: BTreeMap<String, Position>,
    config: &'a Config,
    out: Vec<Finding>,
}

impl Lint<'_> {
    /// Records a finding at `path`, placed at the nearest key of the file on that path.
    fn add(&mut self, rule: &'static str, path: String, message: String, fix: String) {
        let position = self.position(&path);
        self.out.push(Finding {
            rule,
            issue: ConfigIssue {
                path,
                message,
                position,
                hint: Some(format!("fix: {fix}")),
            },
        });
    }

    fn position(&self, path: &str) -> Option<Position> {
        let mut at = path;
        loop {
            if let Some(p) = self.keys.get(at) {
                return Some(*p);
            }
            let cut = at.rfind(['.', '['])?;
            at = &at[..cut];
        }
    }

    fn has(&self, path: &str) -> bool {
        self.keys.contains_key(path)
    }
}

/// The findings for `config`, read from `text`, in file order.
pub fn lint(config: &Config, text: &str) -> Vec<Finding> {
    let mut lint = Lint {
        keys: key_paths::positions(text),
        config,
        out: Vec::new(),
    };
    for (i, route) in config.routes.iter().enumerate() {
        route_rules(&mut lint, i, route);
    }
    breakers(&mut lint);
    redis(&mut lint);
    let mut out = lint.out;
    out.sort_by_key(|f| (f.issue.position.is_none(), f.issue.position));
    out
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn route_rules(lint: &mut Lint<'_>, i: usize, route: &Route) {
    let path = format!("routes[{i}]");
    let config = lint.config;
    if let Some(retry) = &route.retry {
        match retry.per_try_timeout {
            Some(per_try) if per_try > route.timeout => lint.add(
                "per-try-timeout",
                format!("{path}.retry.per_try_timeout"),
                format!(
                    "per_try_timeout {} is longer than the route timeout {}: the route timeout ends the first attempt, so no retry is ever made",
                    show(per_try),
                    show(route.timeout)
                ),
                format!(
                    "set retry.per_try_timeout below {}, or raise {path}.timeout",
                    show(route.timeout)
                ),
            ),
            Some(per_try) if retry.attempts > 1 && per_try * retry.attempts > route.timeout => {
                let fit = (route.timeout.as_nanos() / per_try.as_nanos().max(1)) as u32;
                lint.add(
                    "retries-exceed-timeout",
                    format!("{path}.retry.attempts"),
                    format!(
                        "{} attempts of {} need {} but the route timeout is {}: the last attempts are cut short or never made",
                        retry.attempts,
                        show(per_try),
                        show(per_try * retry.attempts),
                        show(route.timeout)
                    ),
                    format!(
                        "lower retry.attempts to {}, or per_try_timeout to {}, or raise {path}.timeout to {}",
                        fit.max(1),
                        show(Duration::from_millis((route.timeout / retry.attempts).as_millis() as u64)),
                        show(per_try * retry.attempts)
                    ),
                );
            }
            _ => {}
        }
        let non_idempotent_only = route.methods.as_ref().is_some_and(|m| {
            !m.is_empty() && m.iter().all(|m| !crate::policy::retry::is_idempotent(m))
        });
        if retry.attempts > 1
            && non_idempotent_only
            && retry.non_idempotent != NonIdempotent::IdempotencyKey
        {
            let methods = route
                .methods
                .iter()
                .flatten()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let effect = match retry.non_idempotent {
                NonIdempotent::Never => "so no request is ever retried",
                _ => "so only requests that were never sent are retried",
            };
            lint.add(
                "retry-non-idempotent",
                format!("{path}.retry"),
                format!("retries are set but every method of this route ({methods}) is non-idempotent and there is no idempotency key, {effect}"),
                format!(
                    "set retry.non_idempotent: idempotency-key and have clients send {}, or remove retry",
                    retry.idempotency_header
                ),
            );
        }
    }
    if route.timeout > config.drain_timeout {
        lint.add(
            "timeout-over-drain",
            format!("{path}.timeout"),
            format!(
                "route timeout {} is longer than drain_timeout {}: a shutdown cuts requests this route still allows",
                show(route.timeout),
                show(config.drain_timeout)
            ),
            format!(
                "raise drain_timeout to at least {}, or lower the route timeout",
                show(route.timeout)
            ),
        );
    }
    let primary = &config.upstreams[route.upstream];
    for (j, &f) in route.failover.iter().enumerate() {
        let other = &config.upstreams[f];
        if addresses(other) == addresses(primary) {
            lint.add(
                "failover-same-endpoints",
                format!("{path}.failover[{j}]"),
                format!(
                    "failover upstream {:?} has the same endpoints as the route's upstream {:?}: when one is down, so is the other",
                    other.name, primary.name
                ),
                "fail over to an upstream with other endpoints (another zone or provider), or remove it".into(),
            );
        }
    }
    if let Some(limit) = &route.rate_limit {
        if limit.burst == 0 {
            let at = if lint.has(&format!("{path}.rate_limit.burst")) {
                format!("{path}.rate_limit.burst")
            } else {
                format!("{path}.rate_limit")
            };
            let per_second = f64::from(limit.rate.count) / limit.rate.per.as_secs_f64();
            let suggest = ((per_second / 10.0).ceil() as u32).max(1);
            lint.add(
                "rate-limit-no-burst",
                at,
                format!(
                    "rate limit without a burst: requests arriving closer together than {} are refused although the rate is not reached",
                    show(limit.rate.interval())
                ),
                format!("set rate_limit.burst, e.g. burst: {suggest}"),
            );
        }
    }
}

/// The endpoint addresses of an upstream, sorted.
fn addresses(u: &super::model::Upstream) -> Vec<&str> {
    let mut a: Vec<&str> = u.endpoints.iter().map(|e| e.address.as_str()).collect();
    a.sort_unstable();
    a.dedup();
    a
}

/// Most requests a rate limit admits to `route` within `window`, when the limit is per route.
fn admitted_in(route: &Route, window: Duration) -> Option<u64> {
    let limit = route.rate_limit.as_ref()?;
    if limit.key != LimitKey::Route {
        return None;
    }
    let steady = window.as_secs_f64() * f64::from(limit.rate.count) / limit.rate.per.as_secs_f64();
    Some(steady.floor() as u64 + u64::from(limit.burst) + 1)
}

/// `min_requests` of a breaker that the rate-limited traffic cannot reach in the window.
fn breakers(lint: &mut Lint<'_>) {
    let config = lint.config;
    let mut checks: Vec<(String, &BreakerConfig, Vec<usize>)> = Vec::new();
    for (i, route) in config.routes.iter().enumerate() {
        if let Some(b) = &route.circuit_breaker {
            checks.push((format!("routes[{i}].circuit_breaker"), b, vec![i]));
        }
    }
    for (u, upstream) in config.upstreams.iter().enumerate() {
        let Some(b) = &upstream.circuit_breaker else {
            continue;
        };
        let feeding: Vec<usize> = (0..config.routes.len())
            .filter(|&i| {
                let r = &config.routes[i];
                r.circuit_breaker.is_none() && (r.upstream == u || r.failover.contains(&u))
            })
            .collect();
        if !feeding.is_empty() {
            checks.push((
                format!("upstreams.{}.circuit_breaker", upstream.name),
                b,
                feeding,
            ));
        }
    }
    for (path, breaker, routes) in checks {
        let conditions = [
            ("failure_rate", breaker.failure_rate.as_ref()),
            ("slow_call", breaker.slow_call_rate.as_ref()),
        ];
        for (name, condition) in conditions {
            let Some(c) = condition else { continue };
            let admitted: Option<u64> = routes
                .iter()
                .map(|&i| admitted_in(&config.routes[i], c.window))
                .sum();
            let Some(admitted) = admitted else { continue };
            if admitted < u64::from(c.min_requests) {
                let names = routes
                    .iter()
                    .map(|&i| format!("routes[{i}]"))
                    .collect::<Vec<_>>()
                    .join(" + ");
                lint.add(
                    "breaker-min-requests",
                    format!("{path}.{name}.min_requests"),
                    format!(
                        "min_requests {} cannot be reached: the rate limit of {names} admits at most {admitted} requests in the {} window, so this condition never opens the breaker",
                        c.min_requests,
                        show(c.window)
                    ),
                    format!(
                        "lower {name}.min_requests to at most {admitted}, or lengthen {name}.window"
                    ),
                );
            }
        }
    }
}

/// Global limits failing closed on Redis errors with the timeout left at its default.
fn redis(lint: &mut Lint<'_>) {
    let config = lint.config;
    let Some(redis) = &config.redis else { return };
    let global = config.routes.iter().any(|r| {
        r.rate_limit
            .as_ref()
            .is_some_and(|l| l.scope == Scope::Global)
    });
    if global && redis.on_error == OnError::Deny && !lint.has("redis.timeout") {
        lint.add(
            "global-deny-no-redis-timeout",
            "redis.on_error".into(),
            format!(
                "global rate limits deny when Redis fails, and redis.timeout is not set: every limited request may wait the default {} and is then refused while Redis is slow",
                show(redis.timeout)
            ),
            "set redis.timeout to the longest wait you accept per request, e.g. timeout: 20ms".into(),
        );
    }
}
