//! Every transition of the breaker, on a fake clock (Instants built by adding durations).

use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::policy::classify::{Call, CallResult, FailureSet};
use crate::policy::Mode;

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

fn config() -> BreakerConfig {
    BreakerConfig {
        mode: Mode::Enforce,
        consecutive_failures: None,
        failure_rate: None,
        slow_call_duration: None,
        slow_call_rate: None,
        open_for: 10 * S,
        max_open_for: 120 * S,
        half_open_requests: 3,
        failure_on: FailureSet::default(),
        shared: Sharing::Local,
    }
}

fn consecutive(n: u32) -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: Some(n),
        ..config()
    }
}

fn ok() -> Call {
    Call {
        result: CallResult::Status(200),
        elapsed: 10 * MS,
    }
}
fn fail() -> Call {
    Call {
        result: CallResult::Status(503),
        elapsed: 10 * MS,
    }
}

/// Sends one call through admit + record.
fn call(b: &Breaker, c: Call, now: Instant) -> (Admission, Option<Transition>) {
    let (a, t1) = b.admit(now);
    let t2 = match a {
        Admission::Reject { .. } => None,
        _ => b.record(a, c, now),
    };
    (a, t2.or(t1))
}

/// Zero-jitter helper: the jitter is within +-10%, so compare with a tolerance.
fn about(d: Duration, expected: Duration) -> bool {
    d >= expected.mul_f64(0.9) && d <= expected.mul_f64(1.1)
}

#[test]
fn consecutive_failures_open_and_a_success_resets_the_count() {
    let t0 = Instant::now();
    let b = Breaker::new(consecutive(3), t0, 7);
    call(&b, fail(), t0);
    call(&b, fail(), t0);
    call(&b, ok(), t0);
    call(&b, fail(), t0);
    assert_eq!(call(&b, fail(), t0).1, None);
    assert_eq!(b.state(), StateName::Closed);
    let (_, t) = call(&b, fail(), t0);
    let t = t.expect("third failure in a row opens");
    assert_eq!((t.from, t.to), (StateName::Closed, StateName::Open));
    assert!(
        t.reason
            .starts_with("consecutive_failures 3 >= 3; open for"),
        "{}",
        t.reason
    );
}

#[test]
fn open_rejects_with_retry_after_then_half_opens() {
    let t0 = Instant::now();
    let b = Breaker::new(consecutive(1), t0, 7);
    call(&b, fail(), t0);
    let (a, _) = b.admit(t0 + S);
    let Admission::Reject { retry_after } = a else {
        panic!("open rejects: {a:?}")
    };
    let period = b.next_probe_in(t0).unwrap();
    assert!(about(period, 10 * S), "{period:?}");
    assert_eq!(retry_after, period - S);
    let (a, t) = b.admit(t0 + period);
    assert_eq!(a, Admission::Probe);
    assert_eq!(t.unwrap().to, StateName::HalfOpen);
}

#[test]
fn half_open_admits_exactly_n_probes() {
    let t0 = Instant::now();
    let b = Breaker::new(consecutive(1), t0, 7);
    call(&b, fail(), t0);
    let later = t0 + 20 * S;
    let admissions: Vec<Admission> = (0..5).map(|_| b.admit(later).0).collect();
    assert_eq!(&admissions[..3], &[Admission::Probe; 3]);
    assert!(matches!(admissions[3], Admission::Reject { .. }));
    assert!(matches!(admissions[4], Admission::Reject { .. }));
}

#[test]
fn all_probes_succeeding_closes() {
    let t0 = Instant::now();
    let b = Breaker::new(consecutive(1), t0, 7);
    call(&b, fail(), t0);
    let later = t0 + 20 * S;
    let probes: Vec<Admission> = (0..3).map(|_| b.admit(later).0).collect();
    assert_eq!(b.record(probes[0], ok(), later), None);
    assert_eq!(b.record(probes[1], ok(), later), None);
    let t = b
        .record(probes[2], ok(), later)
        .expect("third success closes");
    assert_eq!((t.from, t.to), (StateName::HalfOpen, StateName::Closed));
    assert_eq!(t.reason, "3 of 3 probe(s) succeeded");
    assert_eq!(b.admit(later).0, Admission::Allow);
}

#[test]
fn a_failed_probe_reopens_for_twice_as_long_capped() {
    let t0 = Instant::now();
    let cfg = BreakerConfig {
        max_open_for: 30 * S,
        ..consecutive(1)
    };
    let b = Breaker::new(cfg, t0, 7);
    call(&b, fail(), t0);
    let mut now = t0;
    let mut periods = Vec::new();
    for _ in 0..4 {
        let p = b.next_probe_in(now).unwrap();
        periods.push(p);
        now += p;
        let (a, _) = b.admit(now);
        assert_eq!(a, Admission::Probe);
        let t = b.record(a, fail(), now).expect("failed probe reopens");
        assert_eq!((t.from, t.to), (StateName::HalfOpen, StateName::Open));
        assert!(
            t.reason.starts_with("probe failed (status 503"),
            "{}",
            t.reason
        );
    }
    assert!(about(periods[0], 10 * S), "{periods:?}");
    assert!(about(periods[1], 20 * S), "{periods:?}");
    assert!(
        periods[2] <= 30 * S && periods[2] >= 27 * S,
        "capped: {periods:?}"
    );
    assert!(periods[3] <= 30 * S, "{periods:?}");
}

#[test]
fn closing_resets_the_back_off() {
    let t0 = Instant::now();
    let b = Breaker::new(consecutive(1), t0, 7);
    call(&b, fail(), t0);
    let mut now = t0 + 20 * S;
    let (a, _) = b.admit(now);
    b.record(a, fail(), now); // reopen: 20s
    now += 40 * S;
    let probes: Vec<Admission> = (0..3).map(|_| b.admit(now).0).collect();
    for p in probes {
        b.record(p, ok(), now);
    }
    assert_eq!(b.state(), StateName::Closed);
    call(&b, fail(), now);
    assert!(
        about(b.next_probe_in(now).unwrap(), 10 * S),
        "back to open_for after a close"
    );
}

#[test]
fn failure_rate_needs_min_requests_and_reports_the_numbers() {
    let t0 = Instant::now();
    let cfg = BreakerConfig {
        failure_rate: Some(RateCondition {
            threshold: 0.5,
            window: 30 * S,
            min_requests: 10,
        }),
        ..config()
    };
    let b = Breaker::new(cfg, t0, 7);
    for _ in 0..9 {
        assert_eq!(
            call(&b, fail(), t0).1,
            None,
            "below min_requests nothing opens"
        );
    }
    let mut opened = None;
    for i in 0..10 {
        let c = if i % 2 == 0 { ok() } else { fail() };
        if let (_, Some(t)) = call(&b, c, t0 + S) {
            opened = Some(t);
            break;
        }
    }
    let t = opened.expect("opens once the window has 10 calls at >= 50%");
    assert!(
        t.reason
            .starts_with("failure_rate 90% >= 50% over 30s, 10 requests"),
        "{}",
        t.reason
    );
}

#[test]
fn failure_rate_window_slides() {
    let t0 = Instant::now();
    let cfg = BreakerConfig {
        failure_rate: Some(RateCondition {
            threshold: 0.5,
            window: 10 * S,
            min_requests: 4,
        }),
        ..config()
    };
    let b = Breaker::new(cfg, t0, 7);
    for _ in 0..3 {
        call(&b, fail(), t0);
    }
    // 12s later the three failures have left the window: one more failure is 1 of 1 < min.
    assert_eq!(call(&b, fail(), t0 + 12 * S).1, None);
    assert_eq!(
        b.totals(t0 + 12 * S),
        Totals {
            calls: 1,
            failures: 1,
            slow: 0
        }
    );
    // Successes dilute: 2 failures of 4 calls within the window still reach 50%.
    call(&b, ok(), t0 + 13 * S);
    call(&b, ok(), t0 + 13 * S);
    let (_, t) = call(&b, fail(), t0 + 14 * S);
    assert_eq!(t.map(|t| t.to), Some(StateName::Open));
}

#[test]
fn slow_calls_open_the_breaker() {
    let t0 = Instant::now();
    let cfg = BreakerConfig {
        slow_call_duration: Some(2 * S),
        slow_call_rate: Some(RateCondition {
            threshold: 0.8,
            window: 30 * S,
            min_requests: 5,
        }),
        ..config()
    };
    let b = Breaker::new(cfg, t0, 7);
    let slow = Call {
        result: CallResult::Status(200),
        elapsed: 3 * S,
    };
    for _ in 0..4 {
        call(&b, slow, t0);
    }
    let (_, t) = call(&b, slow, t0);
    let t = t.expect("5 slow of 5 opens");
    assert!(
        t.reason
            .starts_with("slow_call_rate 100% >= 80% over 30s, 5 requests"),
        "{}",
        t.reason
    );
}

#[test]
fn four_xx_is_not_a_failure_by_default() {
    let t0 = Instant::now();
    let b = Breaker::new(consecutive(2), t0, 7);
    let not_found = Call {
        result: CallResult::Status(404),
        elapsed: MS,
    };
    for _ in 0..10 {
        assert_eq!(call(&b, not_found, t0).1, None);
    }
    assert_eq!(b.consecutive_failures(), 0);
}

#[test]
fn late_results_from_an_earlier_state_are_ignored() {
    let t0 = Instant::now();
    let b = Breaker::new(consecutive(1), t0, 7);
    let (early, _) = b.admit(t0); // admitted while closed, finishes later
    call(&b, fail(), t0); // opens
    assert_eq!(b.record(early, ok(), t0), None);
    assert_eq!(b.state(), StateName::Open);
}

#[test]
fn cancelled_probes_free_their_slot() {
    let t0 = Instant::now();
    let b = Breaker::new(
        BreakerConfig {
            half_open_requests: 1,
            ..consecutive(1)
        },
        t0,
        7,
    );
    call(&b, fail(), t0);
    let later = t0 + 20 * S;
    assert_eq!(b.admit(later).0, Admission::Probe);
    assert!(matches!(b.admit(later).0, Admission::Reject { .. }));
    b.cancel_probe();
    assert_eq!(b.admit(later).0, Admission::Probe);
}

#[test]
fn admin_force_open_close_and_reset() {
    let t0 = Instant::now();
    let b = Breaker::new(consecutive(1), t0, 7);
    let t = b.force_open(t0).unwrap();
    assert_eq!(
        (t.to, t.reason.as_str()),
        (StateName::Open, "forced open by admin")
    );
    // Forced open stays open however long it has been.
    assert!(matches!(b.admit(t0 + 3600 * S).0, Admission::Reject { .. }));
    assert_eq!(b.next_probe_in(t0), None);
    assert_eq!(b.force_close(t0).unwrap().to, StateName::Closed);
    assert_eq!(b.force_close(t0), None, "already closed");
    call(&b, fail(), t0);
    assert_eq!(b.reset(t0).unwrap().reason, "reset by admin");
    assert_eq!(b.admit(t0).0, Admission::Allow);
}

#[test]
fn jitter_depends_on_the_seed_only() {
    let t0 = Instant::now();
    let period = |seed| {
        let b = Breaker::new(consecutive(1), t0, seed);
        call(&b, fail(), t0);
        b.next_probe_in(t0).unwrap()
    };
    assert_eq!(period(1), period(1));
    assert_ne!(period(1), period(2));
}

#[test]
fn open_period_end_is_half_open_without_traffic() {
    let t0 = Instant::now();
    let b = Breaker::new(consecutive(1), t0, 3);
    call(&b, fail(), t0);
    let until = t0 + b.next_probe_in(t0).unwrap();
    assert_eq!(b.state_at(until - MS), StateName::Open);
    assert_eq!(b.tick(until - MS), None, "not yet");
    assert_eq!(b.state_at(until), StateName::HalfOpen, "resolved on read");
    let t = b.tick(until).unwrap();
    assert_eq!((t.from, t.to), (StateName::Open, StateName::HalfOpen));
    assert!(t.reason.starts_with("open for "), "{}", t.reason);
    assert_eq!(b.state(), StateName::HalfOpen);
    assert_eq!(b.tick(until + S), None, "moves once");
    // Every probe slot is free after a tick: exactly half_open_requests probes, then refusals.
    let admitted: Vec<_> = (0..4).map(|_| b.admit(until + S)).collect();
    assert!(admitted[..3]
        .iter()
        .all(|(a, t)| *a == Admission::Probe && t.is_none()));
    assert!(matches!(admitted[3].0, Admission::Reject { .. }));
}

#[test]
fn forced_open_never_ticks_to_half_open() {
    let t0 = Instant::now();
    let b = Breaker::new(consecutive(1), t0, 3);
    b.force_open(t0);
    assert_eq!(b.tick(t0 + 3600 * S), None);
    assert_eq!(b.state_at(t0 + 3600 * S), StateName::Open);
}

/// Closed, calls recorded from many threads at once are all counted: window totals and the
/// consecutive-failure count are exact (no lock on that path, atomics only).
#[test]
fn concurrent_records_in_closed_are_counted_exactly() {
    let t0 = Instant::now();
    let cfg = BreakerConfig {
        failure_rate: Some(RateCondition {
            threshold: 1.0,
            window: 30 * S,
            min_requests: u32::MAX,
        }),
        ..config()
    };
    let b = std::sync::Arc::new(Breaker::new(cfg, t0, 7));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || {
                for _ in 0..5_000 {
                    let (a, _) = b.admit(t0);
                    assert_eq!(a, Admission::Allow);
                    assert_eq!(b.record(a, fail(), t0), None);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        b.totals(t0),
        Totals {
            calls: 40_000,
            failures: 40_000,
            slow: 0
        }
    );
    assert_eq!(b.consecutive_failures(), 40_000);
    assert_eq!(b.state(), StateName::Closed);
}

/// Many threads crossing the threshold together open the breaker once: one transition.
#[test]
fn concurrent_failures_open_exactly_once() {
    let t0 = Instant::now();
    let b = std::sync::Arc::new(Breaker::new(consecutive(100), t0, 7));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || {
                (0..1_000)
                    .filter_map(|_| b.record(Admission::Allow, fail(), t0))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let transitions: Vec<Transition> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(transitions.len(), 1, "{transitions:?}");
    let t = &transitions[0];
    assert_eq!(
        (t.from, t.to, t.cause),
        (
            StateName::Closed,
            StateName::Open,
            Cause::ConsecutiveFailures
        )
    );
    assert!(t.consecutive_failures >= 100, "{t:?}");
    assert_eq!(b.state(), StateName::Open);
}

/// Every transition names its cause from the bounded set and carries the counts of its moment.
#[test]
fn transitions_carry_cause_and_counts() {
    let t0 = Instant::now();
    let b = Breaker::new(
        BreakerConfig {
            half_open_requests: 1,
            ..consecutive(2)
        },
        t0,
        7,
    );
    call(&b, fail(), t0);
    let opened = call(&b, fail(), t0).1.unwrap();
    assert_eq!(
        (opened.cause, opened.consecutive_failures),
        (Cause::ConsecutiveFailures, 2)
    );
    let until = t0 + b.next_probe_in(t0).unwrap();
    assert_eq!(b.tick(until).unwrap().cause, Cause::OpenPeriodElapsed);
    let (a, _) = b.admit(until);
    let failed = b.record(a, fail(), until).unwrap();
    assert_eq!(failed.cause, Cause::ProbeFailed);
    let later = until + 60 * S;
    let (a, t) = b.admit(later);
    assert_eq!(t.unwrap().cause, Cause::OpenPeriodElapsed);
    assert_eq!(b.record(a, ok(), later).unwrap().cause, Cause::ProbesPassed);
    assert_eq!(
        b.consecutive_failures(),
        0,
        "a close starts counting afresh"
    );
    assert_eq!(b.force_open(later).unwrap().cause, Cause::ForcedOpen);
    assert_eq!(b.force_close(later).unwrap().cause, Cause::ForcedClosed);
    assert_eq!(b.since().2, Cause::ForcedClosed);
}

/// Shared breakers: an open learned from the fleet opens for the fleet's remaining period (a
/// second adoption only moves its end); a forced open is left alone.
#[test]
fn adopting_the_fleets_open() {
    let t0 = Instant::now();
    let b = Breaker::new(consecutive(5), t0, 1);
    let t = b.adopt_open(t0, 4 * S).unwrap();
    assert_eq!(
        (t.from, t.to, t.cause),
        (StateName::Closed, StateName::Open, Cause::PeerOpened)
    );
    assert_eq!(b.next_probe_in(t0), Some(4 * S));
    assert_eq!(b.adopt_open(t0, 2 * S), None, "already open: no transition");
    assert_eq!(b.next_probe_in(t0), Some(2 * S), "the fleet's end");
    assert_eq!(b.state_at(t0 + 2 * S), StateName::HalfOpen);
    let forced = Breaker::new(consecutive(5), t0, 1);
    forced.force_open(t0);
    assert_eq!(forced.adopt_open(t0, S), None);
    assert_eq!(forced.next_probe_in(t0), None, "still forced open");
    assert_eq!(
        forced.adopt_close(t0, "x".into(), Cause::PeerClosed),
        None,
        "a forced open stays"
    );
}

/// Shared breakers: a passed fleet probe frees its local slot but does not close (the fleet's
/// count does, through adopt_close); a failed one opens as a local probe would. Without Redis,
/// the local count closes.
#[test]
fn fleet_probes_leave_the_close_to_the_fleet() {
    let t0 = Instant::now();
    let b = Breaker::new(
        BreakerConfig {
            half_open_requests: 1,
            ..consecutive(1)
        },
        t0,
        3,
    );
    b.adopt_open(t0, Duration::ZERO);
    let (a, _) = b.admit(t0);
    assert_eq!(a, Admission::Probe);
    let (t, passed) = b.record_fleet_probe(ok(), t0);
    assert!(passed && t.is_none(), "no local close: {t:?}");
    assert_eq!(b.state(), StateName::HalfOpen);
    let t = b
        .adopt_close(t0, "fleet".into(), Cause::ProbesPassed)
        .unwrap();
    assert_eq!((t.from, t.to), (StateName::HalfOpen, StateName::Closed));
    assert_eq!(b.adopt_close(t0, "again".into(), Cause::PeerClosed), None);

    b.adopt_open(t0, Duration::ZERO);
    let (a, _) = b.admit(t0);
    assert_eq!(a, Admission::Probe);
    let (t, passed) = b.record_fleet_probe(fail(), t0);
    assert!(!passed);
    assert_eq!(
        t.map(|t| (t.to, t.cause)),
        Some((StateName::Open, Cause::ProbeFailed))
    );

    let later = t0 + 600 * S;
    let (a, _) = b.admit(later);
    assert_eq!(a, Admission::Probe);
    b.record_fleet_probe(ok(), later);
    let t = b.close_if_probes_passed(later).unwrap();
    assert_eq!((t.to, t.cause), (StateName::Closed, Cause::ProbesPassed));
}
