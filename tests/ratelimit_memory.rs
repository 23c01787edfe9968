//! Memory of local rate-limit state, measured: a million live keys in the documented bound.
//!
//! This test binary counts every allocation (its own global allocator), so it holds one test.

#[path = "support/counting.rs"]
mod counting;

use backstop::dataplane::ratelimit::local::LocalLimiter;
use backstop::policy::rate::{LimitKey, Rate, RateLimitConfig, Scope};
use backstop::policy::Mode;

/// A million live 16-byte keys (merchant-0000000) under `max_keys: 1000000`: the bytes the
/// limiter holds, divided by the keys, stay within the bound the reference config and README
/// state (56 bytes plus the key's length, rounded up: at most 80 bytes for these keys). The
/// number is printed; run with --nocapture to see it.
#[test]
fn a_million_keys_fit_in_the_documented_bound() {
    let config = RateLimitConfig {
        mode: Mode::Enforce,
        rate: Rate::parse("1/h").unwrap(),
        burst: 0,
        key: LimitKey::Route,
        scope: Scope::Local,
        reject_missing_key: true,
        max_keys: 1_000_000,
    };
    let mut key = String::with_capacity(32);
    let before = counting::live();
    let limiter = LocalLimiter::new(&config);
    for i in 0..1_000_000 {
        use std::fmt::Write;
        key.clear();
        write!(key, "merchant-{i:07}").unwrap();
        assert!(limiter.check(&key).allowed);
    }
    let held = counting::live() - before;
    let per_key = held as f64 / 1e6;
    println!(
        "local rate limit state: {per_key:.1} bytes per 16-byte key, {held} bytes for 1M keys"
    );
    assert_eq!(limiter.keys(), 1_000_000);
    assert_eq!(limiter.evictions(), 0);
    assert!(per_key <= 80.0, "{per_key:.1} bytes per key");
    assert!(per_key >= 56.0, "the count saw the state: {per_key:.1}");
    drop(limiter);
    let left = counting::live() - before;
    assert!(
        left < 1 << 20,
        "dropping the limiter frees it: {left} bytes left"
    );
}
