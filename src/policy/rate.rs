//! Rate limit settings shared by the local (governor) and global (Redis) limiters.
//!
//! Both run GCRA with the same parameters: one request per `interval`, and up to `capacity`
//! (burst + 1) at once, so a route behaves the same whether its limit is local or global.

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

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
        assert_eq!(ceil_secs(Duration::ZERO), 1);
    }
}
