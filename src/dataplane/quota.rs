//! Pacing to a partner's own quota (`upstreams.<name>.quota`), learned from its answers.
//!
//! Partners enforce quotas of their own and say so: `Retry-After` on a 429 or 503, the IETF
//! `RateLimit` field (`"name";r=0;t=30`, or the older `limit=100, remaining=0, reset=30`), or
//! the common `X-RateLimit-Remaining` / `X-RateLimit-Reset` pair (reset in seconds from now,
//! or a Unix time). While the partner says its quota is spent, backstop stops sending: a
//! request waits until the quota is back when that is within `max_wait` (queue mode),
//! otherwise it is answered 429 `upstream_quota_exhausted` with the partner's `Retry-After`,
//! without reaching the partner. The state is one atomic (paused until), read per attempt.
//!
//! A declared egress rate (`rate`, `burst`, `scope`) paces too: GCRA per upstream, in this
//! process (one atomic theoretical arrival time) or shared by the fleet in Redis
//! (`scope: global`). A request that may wait takes its slot at once and then sleeps ("reserve,
//! then sleep"), so a burst of waiters is spread at the rate instead of released together.
//! An attempt passes both parts: the declared slot is taken no earlier than the learned pause
//! ends. [`QuotaCell::pace`] decides both.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, StatusCode};
use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;

use super::ratelimit::global::{Redis, Reservation};
use crate::config::{DeclaredRate, QuotaConfig};
use crate::metrics::Metrics;
use crate::policy::rate::{OnError, Scope};

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

/// [`QuotaCell::pace`]'s answer: what to do, and the access-log note when the declared rate
/// had a say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paced {
    /// Send now, wait, or refuse.
    pub admit: Admit,
    /// `quota_rate_queued`, `quota_rate_shed`, `quota_rate_backend_error_allowed` or
    /// `quota_rate_backend_error_denied`; `None` when the declared rate did not hold the
    /// attempt back.
    pub note: Option<&'static str>,
}

/// The declared egress rate of one upstream.
#[derive(Debug)]
struct Declared {
    rate: DeclaredRate,
    /// Nanoseconds between two slots.
    interval: u64,
    /// Local GCRA: the theoretical arrival time, nanoseconds from the cell's `start`.
    tat: AtomicU64,
    /// Global scope: the fleet's shared client and the bucket's key.
    redis: Option<(Arc<Redis>, String)>,
    queued: IntCounter,
    shed: IntCounter,
    backend_errors: IntCounter,
}

/// One upstream's quota: what the partner said, and the declared rate.
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
    declared: Option<Declared>,
}

impl QuotaCell {
    /// A cell for `upstream`; `redis` is the process's shared client, used by a declared rate
    /// with `scope: global` (without it such a rate is counted in this process).
    pub fn new(
        config: QuotaConfig,
        upstream: &str,
        redis: Option<&Arc<Redis>>,
        metrics: &Metrics,
    ) -> Self {
        let (remaining, reset, queued, shed) = metrics.upstream_quota(upstream);
        remaining.set(-1);
        let declared = config.declared.map(|rate| Declared {
            rate,
            interval: u64::try_from(rate.rate.interval().as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
            tat: AtomicU64::new(0),
            redis: redis
                .filter(|_| rate.scope == Scope::Global)
                .map(|r| (Arc::clone(r), format!("backstop:quota:{upstream}"))),
            queued: metrics.upstream_quota_result(upstream, "declared_queued"),
            shed: metrics.upstream_quota_result(upstream, "declared_shed"),
            backend_errors: metrics.upstream_quota_result(upstream, "declared_backend_error"),
        });
        Self {
            config,
            start: Instant::now(),
            paused_until: AtomicU64::new(0),
            remaining,
            reset,
            queued,
            shed,
            last_remaining: AtomicI64::new(-1),
            declared,
        }
    }

    /// The config it runs.
    pub fn config(&self) -> QuotaConfig {
        self.config
    }

    /// Whether it can be kept by a snapshot whose shared Redis client is `redis`: a global
    /// declared rate must use that client, not the one of the config before.
    pub fn uses(&self, redis: Option<&Arc<Redis>>) -> bool {
        let Some(d) = &self.declared else { return true };
        if d.rate.scope == Scope::Local {
            return true;
        }
        match (&d.redis, redis) {
            (Some((mine, _)), Some(theirs)) => Arc::ptr_eq(mine, theirs),
            (None, None) => true,
            _ => false,
        }
    }

    /// Both parts for one attempt: the learned pause ([`QuotaCell::admit`]), then a slot of
    /// the declared rate, taken no earlier than the pause ends. `left` is the time the request
    /// has before its deadline; a wait stays within `max_wait` (queue mode) and below `left`.
    pub async fn pace(&self, now: Instant, left: Duration) -> Paced {
        let learned = self.admit(now, left);
        let Some(declared) = &self.declared else {
            return Paced {
                admit: learned,
                note: None,
            };
        };
        let not_before = match learned {
            Admit::Now => Duration::ZERO,
            Admit::After(wait) => wait,
            Admit::Refuse(_) => {
                return Paced {
                    admit: learned,
                    note: None,
                }
            }
        };
        let max_wait = if self.config.queue {
            self.config
                .max_wait
                .min(left.saturating_sub(Duration::from_nanos(1)))
        } else {
            Duration::ZERO
        };
        let reserved = match &declared.redis {
            None => Ok(self.reserve_local(declared, now, not_before, max_wait)),
            Some((redis, key)) => {
                let rate = declared.rate;
                redis
                    .reserve(
                        key,
                        rate.rate.interval(),
                        rate.burst.saturating_add(1),
                        not_before,
                        max_wait,
                    )
                    .await
                    .map_err(|e| (redis, e))
            }
        };
        match reserved {
            Ok(Reservation::Granted(wait)) if wait <= not_before => Paced {
                admit: learned,
                note: None,
            },
            Ok(Reservation::Granted(wait)) => {
                declared.queued.inc();
                Paced {
                    admit: Admit::After(wait),
                    note: Some("quota_rate_queued"),
                }
            }
            Ok(Reservation::Refused(wait)) => {
                declared.shed.inc();
                Paced {
                    admit: Admit::Refuse(wait),
                    note: Some("quota_rate_shed"),
                }
            }
            Err((redis, error)) => {
                declared.backend_errors.inc();
                if error.is_fast() {
                    // Redis is known to be down: said once when that began, not per request.
                    tracing::debug!(error = %error, on_error = redis.on_error().as_str(), "declared upstream rate undecided");
                } else {
                    tracing::warn!(error = %redis.describe(&error), on_error = redis.on_error().as_str(), "declared upstream rate undecided");
                }
                match redis.on_error() {
                    OnError::Allow => Paced {
                        admit: learned,
                        note: Some("quota_rate_backend_error_allowed"),
                    },
                    OnError::Deny => {
                        declared.shed.inc();
                        Paced {
                            admit: Admit::Refuse(Duration::from_secs(1)),
                            note: Some("quota_rate_backend_error_denied"),
                        }
                    }
                }
            }
        }
    }

    /// Local GCRA that reserves: the slot is taken when it is within `max_wait`, and never
    /// before `not_before` from `now`.
    fn reserve_local(
        &self,
        declared: &Declared,
        now: Instant,
        not_before: Duration,
        max_wait: Duration,
    ) -> Reservation {
        let now = self.nanos(now);
        let not_before = now.saturating_add(duration_nanos(not_before));
        let max_wait = duration_nanos(max_wait);
        let interval = declared.interval;
        // `burst` extra requests at once beyond the first, as in route rate limits.
        let tolerance = interval.saturating_mul(u64::from(declared.rate.burst));
        let mut tat = declared.tat.load(Ordering::Acquire);
        loop {
            let start = tat.max(not_before);
            let wait = start.saturating_sub(tolerance).max(not_before) - now;
            if wait > max_wait {
                return Reservation::Refused(Duration::from_nanos(wait));
            }
            let next = start.saturating_add(interval);
            match declared
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Reservation::Granted(Duration::from_nanos(wait)),
                Err(current) => tat = current,
            }
        }
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

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
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
            declared: None,
        };
        QuotaCell::new(config, "u", None, &Metrics::new())
    }

    /// A cell with a declared local rate of 20/s (a slot every 50ms).
    fn declared(queue: bool, burst: u32) -> QuotaCell {
        let config = QuotaConfig {
            queue,
            max_wait: Duration::from_millis(200),
            declared: Some(DeclaredRate {
                rate: crate::policy::rate::Rate::parse("20/s").unwrap(),
                burst,
                scope: Scope::Local,
            }),
        };
        QuotaCell::new(config, "u", None, &Metrics::new())
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn reject_mode_sends_at_the_declared_rate_and_refuses_the_rest() {
        let q = declared(false, 0);
        let now = Instant::now();
        let left = Duration::from_secs(10);
        assert_eq!(q.pace(now, left).await.admit, Admit::Now);
        let refused = q.pace(now, left).await;
        assert_eq!(refused.admit, Admit::Refuse(ms(50)));
        assert_eq!(refused.note, Some("quota_rate_shed"));
        assert_eq!(q.pace(now + ms(49), left).await.admit, Admit::Refuse(ms(1)));
        assert_eq!(q.pace(now + ms(50), left).await.admit, Admit::Now);
        let shed = q.declared.as_ref().unwrap().shed.get();
        assert_eq!(shed, 2, "a refusal takes no slot");
    }

    #[tokio::test(start_paused = true)]
    async fn queue_mode_reserves_slots_so_waiters_are_spread_at_the_rate() {
        let q = declared(true, 0);
        let now = Instant::now();
        let left = Duration::from_secs(10);
        let mut admits = Vec::new();
        for _ in 0..6 {
            admits.push(q.pace(now, left).await.admit);
        }
        assert_eq!(
            admits,
            [
                Admit::Now,
                Admit::After(ms(50)),
                Admit::After(ms(100)),
                Admit::After(ms(150)),
                Admit::After(ms(200)),
                Admit::Refuse(ms(250)),
            ],
            "one slot per 50ms, up to max_wait (200ms)"
        );
        assert_eq!(q.declared.as_ref().unwrap().queued.get(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn burst_slots_go_at_once() {
        let q = declared(false, 2);
        let now = Instant::now();
        let left = Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(q.pace(now, left).await.admit, Admit::Now);
        }
        assert_eq!(q.pace(now, left).await.admit, Admit::Refuse(ms(50)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_stays_within_the_deadline() {
        let q = declared(true, 0);
        let now = Instant::now();
        let left = ms(120);
        assert_eq!(q.pace(now, left).await.admit, Admit::Now);
        assert_eq!(q.pace(now, left).await.admit, Admit::After(ms(50)));
        assert_eq!(q.pace(now, left).await.admit, Admit::After(ms(100)));
        assert_eq!(
            q.pace(now, left).await.admit,
            Admit::Refuse(ms(150)),
            "150ms is past the 120ms the request has left"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_declared_slot_comes_after_the_learned_pause() {
        let q = declared(true, 0);
        let now = Instant::now();
        let left = Duration::from_secs(10);
        q.learn(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "1")]),
            now - ms(900),
        );
        assert_eq!(
            q.pace(now, left).await,
            Paced {
                admit: Admit::After(ms(100)),
                note: None
            },
            "the pause decides; the slot is taken at its end"
        );
        assert_eq!(q.pace(now, left).await.admit, Admit::After(ms(150)));
        assert_eq!(
            q.pace(now + ms(100), left).await.admit,
            Admit::After(ms(100)),
            "slots at 100 and 150ms are taken: the next is at 200ms"
        );
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
