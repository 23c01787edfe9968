//! Circuit breaker: stop sending to an upstream that is failing, let it recover, probe it.
//!
//! # Vocabulary (used everywhere: logs, metrics, admin API, docs)
//! - **closed**: traffic flows; every call is counted in the window.
//! - **open**: calls are rejected at once (503 `circuit_open`, `Retry-After`); nothing reaches
//!   the upstream, which gets room to recover.
//! - **half_open**: after the open period, exactly `half_open_requests` probes are let through;
//!   all must succeed to close; one failure opens again for twice as long (capped, jittered).
//!   A request refused because every probe slot is taken gets 503 `circuit_half_open`.
//!
//! The open period ends by the clock, not by traffic: [`Breaker::tick`] moves an open breaker
//! whose period is over to half_open (the dataplane calls it from a timer and before every
//! view), so a breaker never reports `open` after its open period with nobody calling.
//!
//! # Opening conditions (any that is configured)
//! - `consecutive_failures`: N failures in a row.
//! - `failure_rate`: the failure share over a sliding window reaches the threshold, once the
//!   window holds at least `min_requests` calls.
//! - `slow_call`: the share of calls slower than `duration` reaches the threshold, likewise.
//!
//! This is a plain state machine: `now` is passed in, there is no I/O and no timer. The
//! dataplane holds it behind a lock, turns [`Admission`]s into responses and [`Transition`]s
//! into log lines and metrics.

mod window;

#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

pub use window::{Totals, Window};

use super::classify::{Call, FailureSet};
use super::Mode;

/// A rate condition over a sliding window.
#[derive(Debug, Clone, PartialEq)]
pub struct RateCondition {
    /// Share (0-1] at which the breaker opens.
    pub threshold: f64,
    /// Sliding window length.
    pub window: Duration,
    /// Fewest calls in the window before the rate is trusted.
    pub min_requests: u32,
}

/// A compiled `circuit_breaker:` block.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// enforce or shadow.
    pub mode: Mode,
    /// Open after this many failures in a row.
    pub consecutive_failures: Option<u32>,
    /// Open when the failure share reaches a threshold.
    pub failure_rate: Option<RateCondition>,
    /// A call slower than this is slow.
    pub slow_call_duration: Option<Duration>,
    /// Open when the slow share reaches a threshold.
    pub slow_call_rate: Option<RateCondition>,
    /// First open period.
    pub open_for: Duration,
    /// Longest open period after repeated re-opens.
    pub max_open_for: Duration,
    /// Probes admitted while half-open.
    pub half_open_requests: u32,
    /// What counts as a failure.
    pub failure_on: FailureSet,
}

/// The three states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateName {
    /// Traffic flows.
    Closed,
    /// Rejecting.
    Open,
    /// Probing.
    HalfOpen,
}

impl StateName {
    /// Every state, for one-hot gauges.
    pub const ALL: [StateName; 3] = [StateName::Closed, StateName::Open, StateName::HalfOpen];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Closed => "closed",
            StateName::Open => "open",
            StateName::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for StateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: send it.
    Allow,
    /// Half-open: send it as a probe; its outcome decides.
    Probe,
    /// Open (or half-open with every probe slot taken): do not send.
    Reject {
        /// When the next probe may be admitted.
        retry_after: Duration,
    },
}

/// A change of state, with the reason in words an SRE can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: StateName,
    /// State after.
    pub to: StateName,
    /// Why, e.g. `failure_rate 62% >= 50% over 30s, 41 requests`.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant, forced: bool },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

/// One breaker's state. See the module docs.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    since: Instant,
    reason: String,
    consecutive: u32,
    failures: Option<Window>,
    slow: Option<Window>,
    /// Opens since the last close: drives the back-off of the open period.
    reopens: u32,
    rng: u64,
}

impl Breaker {
    /// A closed breaker. `seed` drives the jitter of open periods (fixed in tests).
    pub fn new(config: BreakerConfig, now: Instant, seed: u64) -> Self {
        let failures = config
            .failure_rate
            .as_ref()
            .map(|c| Window::new(c.window, now));
        let slow = config
            .slow_call_rate
            .as_ref()
            .map(|c| Window::new(c.window, now));
        Self {
            config,
            state: State::Closed,
            since: now,
            reason: "started".into(),
            consecutive: 0,
            failures,
            slow,
            reopens: 0,
            rng: splitmix64(seed) | 1,
        }
    }

    /// The config it runs.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The current state.
    pub fn state(&self) -> StateName {
        match self.state {
            State::Closed => StateName::Closed,
            State::Open { .. } => StateName::Open,
            State::HalfOpen { .. } => StateName::HalfOpen,
        }
    }

    /// When the current state began and why.
    pub fn since(&self) -> (Instant, &str) {
        (self.since, &self.reason)
    }

    /// Failures in a row so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive
    }

    /// Window totals at `now` (failure window, else slow window).
    pub fn totals(&self, now: Instant) -> Totals {
        self.failures
            .as_ref()
            .or(self.slow.as_ref())
            .map(|w| w.totals(now))
            .unwrap_or_default()
    }

    /// Time until the next half-open probe when open (zero if due; `None` when not open or
    /// forced open).
    pub fn next_probe_in(&self, now: Instant) -> Option<Duration> {
        match self.state {
            State::Open {
                until,
                forced: false,
            } => Some(until.saturating_duration_since(now)),
            _ => None,
        }
    }

    /// The state at `now`: an open breaker whose open period is over is already half_open,
    /// even before [`Breaker::tick`] or a request moved it.
    pub fn state_at(&self, now: Instant) -> StateName {
        match self.state {
            State::Open {
                until,
                forced: false,
            } if now >= until => StateName::HalfOpen,
            _ => self.state(),
        }
    }

    /// Moves open -> half_open when the open period is over at `now`, with no request needed;
    /// every probe slot is still free. Returns the transition, if any.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        match self.state {
            State::Open {
                until,
                forced: false,
            } if now >= until => Some(self.half_open(now, 0)),
            _ => None,
        }
    }

    fn half_open(&mut self, now: Instant, in_flight: u32) -> Transition {
        let open_for = now.saturating_duration_since(self.since);
        self.go(
            State::HalfOpen {
                in_flight,
                succeeded: 0,
            },
            now,
            format!(
                "open for {}; probing with {} request(s)",
                human(open_for),
                self.config.half_open_requests
            ),
        )
    }

    /// Decides about one request at `now`. May move open -> half_open.
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        match self.state {
            State::Closed => (Admission::Allow, None),
            State::Open { until, forced } => {
                if forced || now < until {
                    let retry_after = if forced {
                        self.config.open_for
                    } else {
                        until - now
                    };
                    return (Admission::Reject { retry_after }, None);
                }
                let t = self.half_open(now, 1);
                (Admission::Probe, Some(t))
            }
            State::HalfOpen {
                in_flight,
                succeeded,
            } => {
                if in_flight + succeeded < self.config.half_open_requests {
                    self.state = State::HalfOpen {
                        in_flight: in_flight + 1,
                        succeeded,
                    };
                    (Admission::Probe, None)
                } else {
                    // Probes are out; their outcome decides soon.
                    (
                        Admission::Reject {
                            retry_after: Duration::from_secs(1),
                        },
                        None,
                    )
                }
            }
        }
    }

    /// Records the outcome of a call admitted as `admission`. Returns the transition, if any.
    pub fn record(&mut self, admission: Admission, call: Call, now: Instant) -> Option<Transition> {
        let failure = self.config.failure_on.is_failure(call.result);
        let slow = self
            .config
            .slow_call_duration
            .is_some_and(|d| call.elapsed >= d);
        match (self.state, admission) {
            (State::Closed, Admission::Allow) => self.record_closed(failure, slow, now),
            (
                State::HalfOpen {
                    in_flight,
                    succeeded,
                },
                Admission::Probe,
            ) => {
                if failure || slow {
                    let what = if failure { "failed" } else { "was slow" };
                    let reason = format!("probe {what} ({})", describe(call));
                    Some(self.open(now, reason))
                } else if succeeded + 1 >= self.config.half_open_requests {
                    let n = succeeded + 1;
                    Some(self.close(now, format!("{n} of {n} probe(s) succeeded")))
                } else {
                    self.state = State::HalfOpen {
                        in_flight: in_flight.saturating_sub(1),
                        succeeded: succeeded + 1,
                    };
                    None
                }
            }
            // A call admitted in an earlier state finished late: it says nothing about now.
            _ => None,
        }
    }

    /// A probe that was admitted but never completed (the client went away).
    pub fn cancel_probe(&mut self) {
        if let State::HalfOpen {
            in_flight,
            succeeded,
        } = self.state
        {
            self.state = State::HalfOpen {
                in_flight: in_flight.saturating_sub(1),
                succeeded,
            };
        }
    }

    /// Opens and stays open until [`Breaker::force_close`] or [`Breaker::reset`] (incidents).
    pub fn force_open(&mut self, now: Instant) -> Option<Transition> {
        let from = self.state();
        self.state = State::Open {
            until: now,
            forced: true,
        };
        self.since = now;
        self.reason = "forced open by admin".into();
        (from != StateName::Open).then(|| Transition {
            from,
            to: StateName::Open,
            reason: self.reason.clone(),
        })
    }

    /// Closes now, keeping the back-off memory of earlier opens.
    pub fn force_close(&mut self, now: Instant) -> Option<Transition> {
        let from = self.state();
        let reopens = self.reopens;
        let t = self.close(now, "forced closed by admin".into());
        self.reopens = reopens;
        (from != StateName::Closed).then_some(t)
    }

    /// Closes now and forgets everything: windows, counters, back-off.
    pub fn reset(&mut self, now: Instant) -> Option<Transition> {
        let from = self.state();
        let t = self.close(now, "reset by admin".into());
        (from != StateName::Closed).then_some(t)
    }

    fn record_closed(&mut self, failure: bool, slow: bool, now: Instant) -> Option<Transition> {
        self.consecutive = if failure { self.consecutive + 1 } else { 0 };
        if let Some(w) = &mut self.failures {
            w.record(failure, slow, now);
        }
        if let Some(w) = &mut self.slow {
            w.record(failure, slow, now);
        }
        let reason = self.opening_reason(now)?;
        Some(self.open(now, reason))
    }

    fn opening_reason(&self, now: Instant) -> Option<String> {
        if let Some(n) = self.config.consecutive_failures {
            if self.consecutive >= n {
                return Some(format!("consecutive_failures {} >= {n}", self.consecutive));
            }
        }
        let over = |name: &str, window: &Window, cond: &RateCondition, rate: fn(&Totals) -> f64| {
            let t = window.totals(now);
            let r = rate(&t);
            (t.calls >= cond.min_requests && r >= cond.threshold).then(|| {
                format!(
                    "{name} {}% >= {}% over {}, {} requests",
                    percent(r),
                    percent(cond.threshold),
                    human(cond.window),
                    t.calls
                )
            })
        };
        if let (Some(w), Some(c)) = (&self.failures, &self.config.failure_rate) {
            if let Some(reason) = over("failure_rate", w, c, Totals::failure_rate) {
                return Some(reason);
            }
        }
        if let (Some(w), Some(c)) = (&self.slow, &self.config.slow_call_rate) {
            if let Some(reason) = over("slow_call_rate", w, c, Totals::slow_rate) {
                return Some(reason);
            }
        }
        None
    }

    fn open(&mut self, now: Instant, reason: String) -> Transition {
        let period = self.open_period();
        self.reopens += 1;
        self.go(
            State::Open {
                until: now + period,
                forced: false,
            },
            now,
            format!("{reason}; open for {}", human(period)),
        )
    }

    fn close(&mut self, now: Instant, reason: String) -> Transition {
        self.consecutive = 0;
        self.reopens = 0;
        for w in [&mut self.failures, &mut self.slow].into_iter().flatten() {
            w.clear();
        }
        self.go(State::Closed, now, reason)
    }

    /// open_for x 2^reopens, capped at max_open_for, then jittered by up to -10%..+10% (still
    /// capped), so replicas that opened together do not probe together.
    fn open_period(&mut self) -> Duration {
        let doubled = self
            .config
            .open_for
            .saturating_mul(1u32 << self.reopens.min(20));
        let base = doubled.min(self.config.max_open_for);
        let jitter = 0.9 + 0.2 * self.next_unit();
        base.mul_f64(jitter).min(self.config.max_open_for)
    }

    fn next_unit(&mut self) -> f64 {
        // xorshift64: deterministic for a seed, good enough for jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn go(&mut self, to: State, now: Instant, reason: String) -> Transition {
        let from = self.state();
        self.state = to;
        self.since = now;
        self.reason = reason.clone();
        Transition {
            from,
            to: self.state(),
            reason,
        }
    }
}

/// Spreads a seed over all 64 bits so that nearby seeds give unrelated jitter.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `0.625` -> `62.5`, `0.5` -> `50`.
fn percent(ratio: f64) -> String {
    let p = (ratio * 1000.0).round() / 10.0;
    if p.fract() == 0.0 {
        format!("{p:.0}")
    } else {
        format!("{p:.1}")
    }
}

fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    } else {
        humantime::format_duration(Duration::from_millis(ms as u64)).to_string()
    }
}

fn describe(call: Call) -> String {
    use super::classify::CallResult;
    let what = match call.result {
        CallResult::Status(s) => format!("status {s}"),
        CallResult::ConnectFailure => "connect failure".into(),
        CallResult::Timeout => "timeout".into(),
        CallResult::Reset => "reset".into(),
    };
    format!("{what} after {}", human(call.elapsed))
}
