//! Pacing to a partner's own quota (`upstreams.<name>.quota`), learned from its answers.
//!
//! Partners enforce quotas of their own and say so: `Retry-After` on a 429 or 503, the IETF
//! `RateLimit` field (`"name";r=0;t=30`, or the older `limit=100, remaining=0, reset=30`), or
//! the common `X-RateLimit-Remaining` / `X-RateLimit-Reset` pair (reset in seconds from now,
//! or a Unix time). While the partner says its quota is spent, backstop stops sending: a
//! request waits until the quota is back when that is within `max_wait` (queue mode),
//! otherwise it is answered 429 `upstream_quota_exhausted` with the partner's `Retry-After`,
//! without reaching the partner. The state is one atomic (paused until), read per attempt.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, StatusCode};
use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;

use crate::config::QuotaConfig;
use crate::metrics::Metrics;

/// Longest pause a partner's answer can impose (a bad header must not stop an upstream for a
/// day).
const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// What to do with an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send it now.
    Now,
    /// Wait this long, then send it.
    After(Duration),
    /// Answer 429; the quota is back in this long.
    Refuse(Duration),
}

/// One upstream's learned quota.
#[derive(Debug)]
pub struct QuotaCell {
    config: QuotaConfig,
    start: Instant,
    /// Nanoseconds from `start` until which the partner's quota is spent (0: not paused).
    paused_until: AtomicU64,
    remaining: IntGauge,
    reset: IntGauge,
    queued: IntCounter,
    shed: IntCounter,
    last_remaining: AtomicI64,
}

impl QuotaCell {
    /// A cell for `upstream`.
    pub fn new(config: QuotaConfig, upstream: &str, metrics: &Metrics) -> Self {
        let (remaining, reset, queued, shed) = metrics.upstream_quota(upstream);
        remaining.set(-1);
        Self {
            config,
            start: Instant::now(),
            paused_until: AtomicU64::new(0),
            remaining,
            reset,
            queued,
            shed,
            last_remaining: AtomicI64::new(-1),
        }
    }

    /// The config it runs.
    pub fn config(&self) -> QuotaConfig {
        self.config
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether an attempt may go now, wait, or must be refused; `left` is the time the request
    /// has before its deadline.
    pub fn admit(&self, now: Instant, left: Duration) -> Admit {
        let until = self.paused_until.load(Ordering::Acquire);
        let at = self.nanos(now);
        if until <= at {
            return Admit::Now;
        }
        let wait = Duration::from_nanos(until - at);
        if self.config.queue && wait <= self.config.max_wait && wait < left {
            self.queued.inc();
            Admit::After(wait)
        } else {
            self.shed.inc();
            Admit::Refuse(wait)
        }
    }

    /// Learns from an answer of the partner.
    pub fn learn(&self, status: StatusCode, headers: &HeaderMap, now: Instant) {
        let (remaining, reset) = advertised(headers);
        if let Some(r) = remaining {
            self.remaining.set(r);
            self.last_remaining.store(r, Ordering::Relaxed);
        }
        if let Some(reset) = reset {
            self.reset
                .set(i64::try_from(reset.as_secs()).unwrap_or(i64::MAX));
        }
        let told_to_wait = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
        .then(|| retry_after(headers))
        .flatten();
        let spent = remaining == Some(0) || status == StatusCode::TOO_MANY_REQUESTS;
        let pause = told_to_wait.or_else(|| reset.filter(|_| spent));
        if let Some(pause) = pause {
            let until = self.nanos(now + pause.min(MAX_PAUSE));
            self.paused_until.fetch_max(until, Ordering::AcqRel);
        }
    }
}

/// `Retry-After` in seconds or as an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// (remaining, reset) from the IETF `RateLimit` field or `X-RateLimit-*`.
fn advertised(headers: &HeaderMap) -> (Option<i64>, Option<Duration>) {
    if let Some(v) = headers.get("ratelimit").and_then(|v| v.to_str().ok()) {
        let mut remaining = None;
        let mut reset = None;
        for part in v.split([';', ',']) {
            let (k, val) = match part.trim().split_once('=') {
                Some(kv) => kv,
                None => continue,
            };
            let n = val.trim().trim_matches('"').parse::<i64>().ok();
            match k.trim() {
                "r" | "remaining" => remaining = n,
                "t" | "reset" => reset = n.map(|s| Duration::from_secs(s.max(0) as u64)),
                _ => {}
            }
        }
        if remaining.is_some() || reset.is_some() {
            return (remaining, reset);
        }
    }
    let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
    let remaining = number("x-ratelimit-remaining").map(|r| r as i64);
    let reset = number("x-ratelimit-reset").map(|r| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        // Large values are a Unix time, small ones seconds from now.
        let secs = if r > 1e9 { r - now } else { r };
        Duration::from_secs_f64(secs.clamp(0.0, MAX_PAUSE.as_secs_f64()))
    });
    (remaining, reset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(queue: bool) -> QuotaCell {
        let config = QuotaConfig {
            queue,
            max_wait: Duration::from_millis(200),
        };
        QuotaCell::new(config, "u", &Metrics::new())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_with_retry_after_pauses_the_upstream() {
        let q = cell(false);
        let now = Instant::now();
        let left = Duration::from_secs(10);
        assert_eq!(q.admit(now, left), Admit::Now);
        q.learn(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "2")]),
            now,
        );
        assert_eq!(q.admit(now, left), Admit::Refuse(Duration::from_secs(2)));
        assert_eq!(
            q.admit(now + Duration::from_secs(2), left),
            Admit::Now,
            "back after the partner's time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn queue_mode_waits_within_max_wait_only() {
        let q = cell(true);
        let now = Instant::now();
        let left = Duration::from_secs(10);
        q.learn(
            StatusCode::OK,
            &headers(&[("ratelimit", "\"default\";r=0;t=1")]),
            now,
        );
        assert_eq!(
            q.admit(now, left),
            Admit::Refuse(Duration::from_secs(1)),
            "1s > 200ms"
        );
        let later = now + Duration::from_millis(850);
        assert_eq!(
            q.admit(later, left),
            Admit::After(Duration::from_millis(150))
        );
        assert_eq!(q.queued.get(), 1);
        assert_eq!(q.shed.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_quota_does_not_pause_and_x_ratelimit_is_read() {
        let q = cell(false);
        let now = Instant::now();
        let left = Duration::from_secs(10);
        q.learn(
            StatusCode::OK,
            &headers(&[("x-ratelimit-remaining", "5"), ("x-ratelimit-reset", "30")]),
            now,
        );
        assert_eq!(q.admit(now, left), Admit::Now);
        assert_eq!(q.remaining.get(), 5);
        q.learn(
            StatusCode::OK,
            &headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "30")]),
            now,
        );
        assert_eq!(q.admit(now, left), Admit::Refuse(Duration::from_secs(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_is_capped() {
        let q = cell(false);
        let now = Instant::now();
        q.learn(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "999999")]),
            now,
        );
        assert_eq!(
            q.admit(now, Duration::from_secs(10)),
            Admit::Refuse(MAX_PAUSE)
        );
    }
}
