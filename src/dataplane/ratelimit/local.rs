//! Local limits: governor's keyed GCRA, with the number of keys kept bounded.
//!
//! Keyed state must not grow without bound when a client sends thousands of distinct keys
//! (merchant ids, addresses): idle keys are pruned on a timer (governor's `retain_recent`),
//! and beyond `max_keys` live keys new traffic shares one overflow bucket until pruning makes
//! room, so memory stays bounded even under a key flood.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::policy::rate::{RateLimitConfig, Verdict};

/// The key traffic shares beyond `max_keys`.
const OVERFLOW_KEY: &str = "\u{0}overflow";

type Limiter<C> = RateLimiter<String, DashMapStateStore<String>, C, StateInformationMiddleware>;

/// A keyed GCRA limiter for one route.
#[derive(Debug)]
pub struct LocalLimiter<C: Clock = DefaultClock> {
    limiter: Limiter<C>,
    max_keys: usize,
    capacity: u32,
    interval: Duration,
}

impl LocalLimiter<DefaultClock> {
    /// A limiter on the real clock.
    pub fn new(config: &RateLimitConfig) -> Self {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock> LocalLimiter<C> {
    /// A limiter on `clock` (tests use governor's fake clock).
    pub fn with_clock(config: &RateLimitConfig, clock: C) -> Self {
        let interval = config.rate.interval().max(Duration::from_nanos(1));
        let capacity = config.capacity();
        let burst = NonZeroU32::new(capacity).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(interval)
            .expect("a positive period")
            .allow_burst(burst);
        let limiter: RateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<C::Instant>> =
            RateLimiter::new(quota, DashMapStateStore::default(), clock);
        let limiter = limiter.with_middleware::<StateInformationMiddleware>();
        Self {
            limiter,
            max_keys: config.max_keys,
            capacity,
            interval,
        }
    }

    /// Decides about one request counted under `key`.
    pub fn check(&self, key: &str) -> Verdict {
        let key = if self.limiter.len() >= self.max_keys {
            OVERFLOW_KEY
        } else {
            key
        };
        match self.limiter.check_key(&key.to_owned()) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                let used = self.capacity.saturating_sub(remaining);
                Verdict {
                    allowed: true,
                    remaining,
                    reset: self.interval * used,
                }
            }
            Err(not_until) => Verdict {
                allowed: false,
                remaining: 0,
                reset: not_until.wait_time_from(self.limiter.clock().now()),
            },
        }
    }

    /// Forgets keys whose buckets are full again; returns the number of live keys.
    pub fn prune(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.limiter.len()
    }

    /// Live keys now.
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rate::{LimitKey, Rate, Scope};
    use crate::policy::Mode;
    use governor::clock::FakeRelativeClock;

    fn config(rate: &str, burst: u32, max_keys: usize) -> RateLimitConfig {
        RateLimitConfig {
            mode: Mode::Enforce,
            rate: Rate::parse(rate).unwrap(),
            burst,
            key: LimitKey::Route,
            scope: Scope::Local,
            reject_missing_key: true,
            max_keys,
        }
    }

    #[test]
    fn a_burst_admits_burst_plus_one_then_the_steady_rate() {
        let clock = FakeRelativeClock::default();
        let l = LocalLimiter::with_clock(&config("10/s", 5, 100), clock.clone());
        let admitted = (0..20).filter(|_| l.check("k").allowed).count();
        assert_eq!(admitted, 6);
        let rejected = l.check("k");
        assert!(!rejected.allowed);
        assert_eq!(rejected.reset, Duration::from_millis(100));
        clock.advance(Duration::from_millis(100));
        assert!(l.check("k").allowed, "one more after one interval");
        assert!(!l.check("k").allowed);
    }

    #[test]
    fn keys_are_independent_and_remaining_counts_down() {
        let clock = FakeRelativeClock::default();
        let l = LocalLimiter::with_clock(&config("1/s", 2, 100), clock);
        assert_eq!(l.check("a").remaining, 2);
        assert_eq!(l.check("a").remaining, 1);
        assert_eq!(l.check("a").remaining, 0);
        assert!(!l.check("a").allowed);
        assert!(l.check("b").allowed, "another key has its own bucket");
    }

    #[test]
    fn keys_beyond_the_cap_share_one_bucket_and_pruning_frees_them() {
        let clock = FakeRelativeClock::default();
        let l = LocalLimiter::with_clock(&config("10/s", 0, 50), clock.clone());
        for i in 0..1000 {
            l.check(&format!("merchant-{i}"));
        }
        assert!(l.keys() <= 51, "bounded: {}", l.keys());
        clock.advance(Duration::from_secs(1));
        assert_eq!(l.prune(), 0, "idle keys are pruned");
    }
}
