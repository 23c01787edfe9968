//! The controller against a simulated backend in virtual time: latency is flat up to the
//! backend's capacity (the knee) and grows with queueing beyond it.

use std::time::Duration;

use super::*;

/// A backend that answers in `base` up to `knee` concurrent requests, and queues beyond.
#[derive(Clone, Copy)]
struct Backend {
    base: Duration,
    knee: u32,
}

impl Backend {
    fn latency(self, in_flight: u32) -> Duration {
        if in_flight <= self.knee {
            self.base
        } else {
            self.base
                .mul_f64(f64::from(in_flight) / f64::from(self.knee))
        }
    }
}

/// One window with `demand` closed-loop clients behind `limit`.
fn window(backend: Backend, demand: u32, limit: u32, length: Duration) -> Window {
    let in_flight = demand.min(limit).max(1);
    let latency = backend.latency(in_flight);
    let samples = (f64::from(in_flight) * length.as_secs_f64() / latency.as_secs_f64()).max(1.0);
    Window {
        samples: samples as u32,
        failures: 0,
        mean_latency: latency,
        peak_in_flight: in_flight,
    }
}

/// Runs `seconds` of virtual time; returns the limits seen.
fn run(c: &mut AdaptiveLimit, backend: Backend, demand: u32, seconds: u64) -> Vec<u32> {
    let length = c.config().window;
    let windows = Duration::from_secs(seconds).as_millis() / length.as_millis();
    (0..windows)
        .map(|_| {
            let w = window(backend, demand, c.limit(), length);
            c.on_window(w)
        })
        .collect()
}

fn gradient() -> AdaptiveConfig {
    AdaptiveConfig::default()
}

#[test]
fn the_limit_converges_near_the_knee_and_stays_there_under_sustained_overload() {
    let backend = Backend {
        base: Duration::from_millis(20),
        knee: 40,
    };
    let mut c = AdaptiveLimit::new(gradient());
    // Ten virtual minutes of 10x the backend's capacity in demand.
    let limits = run(&mut c, backend, 400, 600);
    let settled = &limits[limits.len() / 10..];
    let (low, high) = (settled.iter().min().unwrap(), settled.iter().max().unwrap());
    assert!(
        *low >= 40 && *high <= 80,
        "settled between {low} and {high}, knee 40 (tolerance 1.5)"
    );
    // No creep: the last minute is no higher than the second.
    let second_minute = limits[600..1200].iter().max().unwrap();
    let last_minute = limits[limits.len() - 600..].iter().max().unwrap();
    assert!(
        last_minute <= second_minute,
        "{last_minute} > {second_minute}"
    );
    assert_eq!(c.baseline(), Some(Duration::from_millis(20)));
}

#[test]
fn a_slower_partner_shrinks_the_limit_and_recovery_restores_it() {
    let healthy = Backend {
        base: Duration::from_millis(20),
        knee: 40,
    };
    let mut c = AdaptiveLimit::new(gradient());
    run(&mut c, healthy, 400, 60);
    let before = c.limit();
    // The partner degrades: five times slower, a quarter of the capacity.
    let degraded = Backend {
        base: Duration::from_millis(100),
        knee: 10,
    };
    let during = run(&mut c, degraded, 400, 60);
    let low = *during.iter().min().unwrap();
    assert!(low < before / 2, "shrank from {before} to {low}");
    // It is not pinned at the floor: at min_limit the new latency becomes the baseline.
    let last = *during.last().unwrap();
    assert!(
        (10..=20).contains(&last),
        "settles near the degraded knee (10), got {last}"
    );
    // Recovery: the limit climbs back near the healthy knee.
    let after = run(&mut c, healthy, 400, 60);
    let last = *after.last().unwrap();
    assert!((40..=80).contains(&last), "recovered to {last}");
}

#[test]
fn an_unused_limit_does_not_grow() {
    let backend = Backend {
        base: Duration::from_millis(5),
        knee: 1000,
    };
    let mut c = AdaptiveLimit::new(gradient());
    let limits = run(&mut c, backend, 3, 300);
    assert_eq!(*limits.iter().max().unwrap(), 20, "stays at initial_limit");
}

#[test]
fn drops_shrink_the_limit_whatever_the_latency() {
    let mut c = AdaptiveLimit::new(gradient());
    let fast = Window {
        samples: 100,
        failures: 10,
        mean_latency: Duration::from_millis(5),
        peak_in_flight: 20,
    };
    assert_eq!(c.on_window(fast), 18, "20 x 0.9");
    assert_eq!(c.on_window(fast), 16);
    let few = Window {
        failures: 1,
        ..fast
    };
    assert!(c.on_window(few) >= 16, "1% failures is not a drop");
}

#[test]
fn aimd_grows_by_one_and_backs_off_on_drops_and_slow_windows() {
    let config = AdaptiveConfig {
        algorithm: Algorithm::Aimd,
        latency_threshold: Duration::from_millis(100),
        ..AdaptiveConfig::default()
    };
    let mut c = AdaptiveLimit::new(config);
    let ok = Window {
        samples: 50,
        failures: 0,
        mean_latency: Duration::from_millis(10),
        peak_in_flight: 20,
    };
    assert_eq!(c.on_window(ok), 21);
    let slow = Window {
        mean_latency: Duration::from_millis(150),
        ..ok
    };
    assert_eq!(c.on_window(slow), 19, "21 x 0.9");
    let idle = Window {
        peak_in_flight: 2,
        ..ok
    };
    assert_eq!(c.on_window(idle), 19, "unused: no growth");
}

#[test]
fn the_limit_stays_within_its_bounds() {
    let config = AdaptiveConfig {
        min_limit: 3,
        max_limit: 30,
        ..AdaptiveConfig::default()
    };
    let fast = Backend {
        base: Duration::from_millis(1),
        knee: 10_000,
    };
    let mut c = AdaptiveLimit::new(config.clone());
    assert_eq!(*run(&mut c, fast, 10_000, 60).iter().max().unwrap(), 30);
    let mut c = AdaptiveLimit::new(config);
    let failing = Window {
        samples: 10,
        failures: 10,
        mean_latency: Duration::ZERO,
        peak_in_flight: 20,
    };
    for _ in 0..100 {
        c.on_window(failing);
    }
    assert_eq!(c.limit(), 3);
}
