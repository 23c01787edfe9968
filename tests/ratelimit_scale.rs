//! Local rate limits at scale, in process through the limiter type: many more keys than the
//! cap, each used at a rate it is allowed.

use backstop::dataplane::ratelimit::local::LocalLimiter;
use backstop::policy::rate::{LimitKey, Rate, RateLimitConfig, Scope};
use backstop::policy::Mode;

fn config(rate: &str, max_keys: usize) -> RateLimitConfig {
    RateLimitConfig {
        mode: Mode::Enforce,
        rate: Rate::parse(rate).unwrap(),
        burst: 0,
        key: LimitKey::Header(http::HeaderName::from_static("x-merchant-id")),
        scope: Scope::Local,
        reject_missing_key: true,
        max_keys,
    }
}

/// 200 000 merchant ids cycle twice through a limiter capped at 100 000 keys. Each key comes
/// back only after the 199 999 others, far later than its 1 ms interval, so every request is
/// within its key's rate and must be admitted (the issue saw 45% 429 from a shared overflow
/// bucket). State stays at the cap.
#[test]
fn two_hundred_thousand_keys_cycling_within_their_rate_are_all_admitted() {
    let limiter = LocalLimiter::new(&config("1000/s", 100_000));
    let keys: Vec<String> = (0..200_000).map(|i| format!("merchant-{i:06}")).collect();
    let mut rejected = 0usize;
    for _ in 0..2 {
        for key in &keys {
            if !limiter.check(key).allowed {
                rejected += 1;
            }
        }
    }
    assert_eq!(rejected, 0, "rejected {rejected} of 400000");
    assert_eq!(limiter.keys(), 100_000, "live keys stay at the cap");
    // Every request after the first 100 000 brought a key not in the table: one eviction each.
    assert_eq!(limiter.evictions(), 300_000);
}

/// A junk-key flood far beyond the cap never makes a new merchant's first request a 429.
#[test]
fn a_junk_key_flood_never_rejects_a_new_merchants_first_request() {
    let limiter = LocalLimiter::new(&config("1/h", 10_000));
    for round in 0..20 {
        for i in 0..5_000 {
            // Junk keys are used once each and stay limited for an hour.
            limiter.check(&format!("junk-{round}-{i}"));
        }
        let merchant = format!("merchant-{round}");
        assert!(limiter.check(&merchant).allowed, "{merchant} first request");
        assert!(!limiter.check(&merchant).allowed, "{merchant} own bucket");
    }
    assert!(limiter.keys() <= 10_000);
    assert!(limiter.evictions() >= 90_000);
}
