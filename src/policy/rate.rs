//! Rate limit settings shared by the local and global (Redis) limiters, and the GCRA step.
//!
//! Both run GCRA with the same parameters: one request per `interval`, and up to `capacity`
//! (burst + 1) at once, so a route behaves the same whether its limit is local or global.
//! [`gcra`] is the local step; the Redis Lua script in `dataplane::ratelimit::global` is the
//! same arithmetic in microseconds.

use std::time::Duration;

use http::HeaderName;

use super::Mode;

/// `rate: N/s | N/m | N/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per window.
    pub count: u32,
    /// The window.
    pub per: Duration,
}

impl Rate {
    /// Parses `100/s`, `6000/m`, `10000/h`.
    pub fn parse(text: &str) -> Option<Rate> {
        let (count, unit) = text.trim().split_once('/')?;
        let count: u32 = count.trim().parse().ok().filter(|c| *c > 0)?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return None,
        };
        Some(Rate { count, per })
    }

    /// Time between two requests at the steady rate.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }
}

/// What a request is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// One bucket for the whole route.
    Route,
    /// One bucket per client address.
    ClientIp,
    /// One bucket per value of this header.
    Header(HeaderName),
}

/// Where the buckets live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// In this process.
    Local,
    /// In Redis, shared by every replica.
    Global,
}

/// `max_keys` when the config does not say: a million live keys, about 70 MB for keys of 16
/// bytes (see `dataplane::ratelimit::local` for the bound), allocated only as keys arrive.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// A compiled `rate_limit:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// enforce or shadow.
    pub mode: Mode,
    /// Steady rate.
    pub rate: Rate,
    /// Extra requests allowed at once.
    pub burst: u32,
    /// Bucket key.
    pub key: LimitKey,
    /// Local or global.
    pub scope: Scope,
    /// With `key: header:NAME` and no header: reject (400) or use one shared bucket.
    pub reject_missing_key: bool,
    /// Most live keys per route (local scope).
    pub max_keys: usize,
}

impl RateLimitConfig {
    /// Requests allowed at once: the burst plus the steady rate's own slot.
    pub fn capacity(&self) -> u32 {
        self.burst.saturating_add(1)
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Admitted.
    pub allowed: bool,
    /// Requests still allowed at once after this one.
    pub remaining: u32,
    /// Until the bucket is full again (allowed) or the next request is allowed (rejected).
    pub reset: Duration,
}

/// What to do when Redis cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Fail open: admit.
    Allow,
    /// Fail closed: reject.
    Deny,
}

impl OnError {
    /// The config word, as logs and the admin API write it.
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Allow => "allow",
            OnError::Deny => "deny",
        }
    }
}

/// One GCRA decision. `tat` is the bucket's theoretical arrival time (0 for a new key), `now`
/// the current time, both in nanoseconds on one clock. Returns the verdict and the new `tat`
/// to store (unchanged when rejected). A bucket whose `tat <= now` is full: forgetting it
/// loses nothing.
pub fn gcra(tat: u64, now: u64, interval: u64, capacity: u32) -> (Verdict, u64) {
    let interval = interval.max(1);
    let tat = tat.max(now);
    let limit = now.saturating_add(interval.saturating_mul(u64::from(capacity)));
    let new_tat = tat.saturating_add(interval);
    if new_tat > limit {
        let verdict = Verdict {
            allowed: false,
            remaining: 0,
            reset: Duration::from_nanos(new_tat - limit),
        };
        return (verdict, tat);
    }
    let remaining = ((limit - new_tat) / interval).min(u64::from(u32::MAX)) as u32;
    let verdict = Verdict {
        allowed: true,
        remaining,
        reset: Duration::from_nanos(new_tat - now),
    };
    (verdict, new_tat)
}

/// While Redis fails, the first wait before probing it again.
pub const PROBE_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest wait between two probes.
pub const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The wait before the probe after one that failed after `previous`: doubled, at most
/// [`PROBE_BACKOFF_MAX`].
pub fn next_backoff(previous: Duration) -> Duration {
    (previous * 2).clamp(PROBE_BACKOFF_MIN, PROBE_BACKOFF_MAX)
}

/// `wait` jittered into `[wait / 2, wait]` by `unit` in `[0, 1]`, so that replicas that lost
/// Redis together do not probe it together.
pub fn jittered(wait: Duration, unit: f64) -> Duration {
    wait.mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
}

/// Whole seconds, rounded up, at least 1 (for Retry-After and the RateLimit header's `t`).
pub fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(
            Rate::parse("100/s"),
            Some(Rate {
                count: 100,
                per: Duration::from_secs(1)
            })
        );
        assert_eq!(
            Rate::parse("60/m").unwrap().interval(),
            Duration::from_secs(1)
        );
        assert_eq!(
            Rate::parse("3600/h").unwrap().interval(),
            Duration::from_secs(1)
        );
        assert_eq!(Rate::parse("0/s"), None);
        assert_eq!(Rate::parse("10/d"), None);
        assert_eq!(Rate::parse("ten/s"), None);
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn gcra_admits_capacity_at_once_then_one_per_interval() {
        // 10/s, burst 5: capacity 6, interval 100ms.
        let (mut tat, now) = (0, 1_000 * MS);
        let mut remaining = Vec::new();
        for _ in 0..6 {
            let (v, next) = gcra(tat, now, 100 * MS, 6);
            assert!(v.allowed);
            remaining.push(v.remaining);
            tat = next;
        }
        assert_eq!(remaining, [5, 4, 3, 2, 1, 0]);
        let (v, same) = gcra(tat, now, 100 * MS, 6);
        assert!(!v.allowed);
        assert_eq!(same, tat, "a rejection does not move the bucket");
        assert_eq!(v.reset, Duration::from_millis(100));
        let (v, _) = gcra(tat, now + 100 * MS, 100 * MS, 6);
        assert!(v.allowed, "one more after one interval");
        assert_eq!(
            v.reset,
            Duration::from_millis(600),
            "full again in 6 intervals"
        );
    }

    #[test]
    fn gcra_bucket_is_full_again_once_tat_has_passed() {
        let (v, tat) = gcra(0, 5 * MS, MS, 1);
        assert!(v.allowed);
        assert_eq!(tat, 6 * MS);
        assert!(!gcra(tat, 5 * MS, MS, 1).0.allowed);
        assert!(gcra(tat, 6 * MS, MS, 1).0.allowed);
        let (v, _) = gcra(tat, u64::MAX, u64::MAX, u32::MAX);
        assert!(v.allowed, "saturates instead of overflowing");
    }

    #[test]
    fn probe_backoff_doubles_to_a_cap_and_jitters_within_half() {
        let mut wait = PROBE_BACKOFF_MIN;
        let mut waits = vec![wait];
        for _ in 0..7 {
            wait = next_backoff(wait);
            waits.push(wait);
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(
            jittered(Duration::from_secs(4), 0.0),
            Duration::from_secs(2)
        );
        assert_eq!(
            jittered(Duration::from_secs(4), 1.0),
            Duration::from_secs(4)
        );
        assert_eq!(
            jittered(Duration::from_secs(4), 7.0),
            Duration::from_secs(4)
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
        assert_eq!(ceil_secs(Duration::ZERO), 1);
    }
}
