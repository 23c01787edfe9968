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
//! dataplane shares it between requests, turns [`Admission`]s into responses and
//! [`Transition`]s into log lines, metrics and history.
//!
//! # Shared by every replica
//! With `shared: redis` this stays the replica's own state machine; the dataplane
//! (`crate::dataplane::shared_breaker`) feeds it what the fleet decided: [`Breaker::adopt_open`]
//! and [`Breaker::adopt_close`], and [`Breaker::record_fleet_probe`] for a probe whose slot was
//! claimed fleet-wide (a pass does not close here: the fleet's count does).
//!
//! # No lock on the common path
//! The state lives in one atomic word (the state in its low bits; when open, the end of the
//! open period in nanoseconds since the breaker started above them). Closed, `admit` is one
//! atomic load; open within its period, it is one load and a subtraction. Closed, `record` is
//! atomic adds: the consecutive-failure count and the window buckets (see [`Window`]). A lock is
//! taken only to change state (closed -> open, the half-open probes, admin actions), which is
//! rare, and by the views.

mod window;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
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
    /// Whether replicas share this breaker (`shared: redis`).
    pub shared: Sharing,
}

/// Where a breaker's decisions are shared (`circuit_breaker.shared`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sharing {
    /// Each replica's breaker learns and probes alone.
    #[default]
    Local,
    /// Replicas share opens, half-open probe slots and closes through the top-level `redis:`
    /// (see `crate::dataplane::shared_breaker`); this state machine stays the local one.
    Redis,
}

impl Sharing {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            Sharing::Local => "local",
            Sharing::Redis => "redis",
        }
    }
}

/// The three states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
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

/// Why a breaker changed state: a bounded set, fit for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The breaker was created (its state before any transition).
    Started,
    /// `consecutive_failures` failures in a row.
    ConsecutiveFailures,
    /// The failure share over the window reached the threshold.
    FailureRate,
    /// The slow share over the window reached the threshold.
    SlowCallRate,
    /// A half-open probe failed.
    ProbeFailed,
    /// A half-open probe succeeded but was slow.
    ProbeSlow,
    /// Every half-open probe succeeded.
    ProbesPassed,
    /// The open period ended: probing starts.
    OpenPeriodElapsed,
    /// Forced open through the admin API.
    ForcedOpen,
    /// Forced closed through the admin API.
    ForcedClosed,
    /// Reset through the admin API.
    Reset,
    /// Another replica opened the shared breaker (`shared: redis`).
    PeerOpened,
    /// Another replica's probes passed: the shared breaker closed (`shared: redis`).
    PeerClosed,
}

impl Cause {
    /// Every cause, in declaration order.
    pub const ALL: [Cause; 13] = [
        Cause::Started,
        Cause::ConsecutiveFailures,
        Cause::FailureRate,
        Cause::SlowCallRate,
        Cause::ProbeFailed,
        Cause::ProbeSlow,
        Cause::ProbesPassed,
        Cause::OpenPeriodElapsed,
        Cause::ForcedOpen,
        Cause::ForcedClosed,
        Cause::Reset,
        Cause::PeerOpened,
        Cause::PeerClosed,
    ];

    /// The label value (snake_case, as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Started => "started",
            Cause::ConsecutiveFailures => "consecutive_failures",
            Cause::FailureRate => "failure_rate",
            Cause::SlowCallRate => "slow_call_rate",
            Cause::ProbeFailed => "probe_failed",
            Cause::ProbeSlow => "probe_slow",
            Cause::ProbesPassed => "probes_passed",
            Cause::OpenPeriodElapsed => "open_period_elapsed",
            Cause::ForcedOpen => "forced_open",
            Cause::ForcedClosed => "forced_closed",
            Cause::Reset => "reset",
            Cause::PeerOpened => "peer_opened",
            Cause::PeerClosed => "peer_closed",
        }
    }
}

impl fmt::Display for Cause {
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
    /// Why, as one of a bounded set.
    pub cause: Cause,
    /// The window totals at the moment of the transition (before a close clears them).
    pub totals: Totals,
    /// Failures in a row at the moment of the transition.
    pub consecutive_failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant, forced: bool },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

/// The state word: the state in the low two bits; open, the end of the open period in
/// nanoseconds since `epoch` above them ([`FOREVER`] when forced open).
const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const STATE_BITS: u64 = 3;
const FOREVER: u64 = u64::MAX >> 2;

/// What changes only under the lock.
#[derive(Debug)]
struct Slow {
    state: State,
    since: Instant,
    reason: String,
    cause: Cause,
    /// Opens since the last close: drives the back-off of the open period.
    reopens: u32,
    rng: u64,
}

/// One breaker's state. See the module docs.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    epoch: Instant,
    word: AtomicU64,
    consecutive: AtomicU32,
    failures: Option<Window>,
    slow: Option<Window>,
    locked: Mutex<Slow>,
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
            epoch: now,
            word: AtomicU64::new(CLOSED),
            consecutive: AtomicU32::new(0),
            failures,
            slow,
            locked: Mutex::new(Slow {
                state: State::Closed,
                since: now,
                reason: "started".into(),
                cause: Cause::Started,
                reopens: 0,
                rng: splitmix64(seed) | 1,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slow> {
        // Every method updates the locked part in one step, so a poisoned lock (a panic
        // elsewhere while holding it) still holds a consistent state machine.
        self.locked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn nanos(&self, at: Instant) -> u64 {
        let n = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(n).unwrap_or(u64::MAX).min(FOREVER - 1)
    }

    /// The state word for `state`; see [`FOREVER`].
    fn word_of(&self, state: &State) -> u64 {
        match *state {
            State::Closed => CLOSED,
            State::Open { forced: true, .. } => (FOREVER << 2) | OPEN,
            State::Open { until, .. } => (self.nanos(until) << 2) | OPEN,
            State::HalfOpen { .. } => HALF_OPEN,
        }
    }

    /// (state, end of the open period in nanoseconds) from the word.
    fn load(&self) -> (u64, u64) {
        let w = self.word.load(Ordering::Acquire);
        (w & STATE_BITS, w >> 2)
    }

    /// The config it runs.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The current state.
    pub fn state(&self) -> StateName {
        match self.load().0 {
            CLOSED => StateName::Closed,
            OPEN => StateName::Open,
            _ => StateName::HalfOpen,
        }
    }

    /// When the current state began, why, and why as a [`Cause`].
    pub fn since(&self) -> (Instant, String, Cause) {
        let s = self.lock();
        (s.since, s.reason.clone(), s.cause)
    }

    /// Failures in a row so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
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
        match self.load() {
            (OPEN, until) if until != FOREVER => {
                Some(Duration::from_nanos(until.saturating_sub(self.nanos(now))))
            }
            _ => None,
        }
    }

    /// The state at `now`: an open breaker whose open period is over is already half_open,
    /// even before [`Breaker::tick`] or a request moved it.
    pub fn state_at(&self, now: Instant) -> StateName {
        match self.load() {
            (OPEN, until) if until != FOREVER && self.nanos(now) >= until => StateName::HalfOpen,
            _ => self.state(),
        }
    }

    /// Moves open -> half_open when the open period is over at `now`, with no request needed;
    /// every probe slot is still free. Returns the transition, if any.
    pub fn tick(&self, now: Instant) -> Option<Transition> {
        if self.state_at(now) != StateName::HalfOpen || self.state() != StateName::Open {
            return None;
        }
        let mut s = self.lock();
        match s.state {
            State::Open {
                until,
                forced: false,
            } if now >= until => Some(self.half_open(&mut s, now, 0)),
            _ => None,
        }
    }

    fn half_open(&self, s: &mut Slow, now: Instant, in_flight: u32) -> Transition {
        let open_for = now.saturating_duration_since(s.since);
        let reason = format!(
            "open for {}; probing with {} request(s)",
            human(open_for),
            self.config.half_open_requests
        );
        self.go(
            s,
            State::HalfOpen {
                in_flight,
                succeeded: 0,
            },
            now,
            reason,
            Cause::OpenPeriodElapsed,
        )
    }

    /// Decides about one request at `now`. May move open -> half_open.
    pub fn admit(&self, now: Instant) -> (Admission, Option<Transition>) {
        match self.load() {
            (CLOSED, _) => return (Admission::Allow, None),
            (OPEN, FOREVER) => {
                let retry_after = self.config.open_for;
                return (Admission::Reject { retry_after }, None);
            }
            (OPEN, until) => {
                let at = self.nanos(now);
                if at < until {
                    let retry_after = Duration::from_nanos(until - at);
                    return (Admission::Reject { retry_after }, None);
                }
            }
            _ => {}
        }
        let mut s = self.lock();
        match s.state {
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
                let t = self.half_open(&mut s, now, 1);
                (Admission::Probe, Some(t))
            }
            State::HalfOpen {
                in_flight,
                succeeded,
            } => {
                if in_flight + succeeded < self.config.half_open_requests {
                    s.state = State::HalfOpen {
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
    pub fn record(&self, admission: Admission, call: Call, now: Instant) -> Option<Transition> {
        let failure = self.config.failure_on.is_failure(call.result);
        let slow = self
            .config
            .slow_call_duration
            .is_some_and(|d| call.elapsed >= d);
        match admission {
            Admission::Allow => self.record_closed(failure, slow, now),
            Admission::Probe => self.record_probe(failure, slow, call, now, false).0,
            Admission::Reject { .. } => None,
        }
    }

    /// Shared breakers: records a probe whose slot was claimed from the whole fleet. A failure
    /// or a slow call opens, as [`Breaker::record`] does; a success only frees the local slot,
    /// since the fleet's count of passed probes decides the close ([`Breaker::adopt_close`]).
    /// Returns the transition, if any, and whether the probe passed.
    pub fn record_fleet_probe(&self, call: Call, now: Instant) -> (Option<Transition>, bool) {
        let failure = self.config.failure_on.is_failure(call.result);
        let slow = self
            .config
            .slow_call_duration
            .is_some_and(|d| call.elapsed >= d);
        self.record_probe(failure, slow, call, now, true)
    }

    /// Shared breakers: another replica opened (or the fleet's open period is `remaining`).
    /// Closed or half_open, opens until `now + remaining` (zero: probing is due now). Already
    /// open, the end of its open period moves to the fleet's, with no transition. A breaker
    /// forced open by the admin API stays as it is.
    pub fn adopt_open(&self, now: Instant, remaining: Duration) -> Option<Transition> {
        let mut s = self.lock();
        let until = now + remaining;
        match s.state {
            State::Open { forced: true, .. } => None,
            State::Open { forced: false, .. } => {
                s.state = State::Open {
                    until,
                    forced: false,
                };
                self.word.store(self.word_of(&s.state), Ordering::Release);
                None
            }
            State::Closed | State::HalfOpen { .. } => {
                s.reopens += 1;
                let reason = format!("opened by another replica; open for {}", human(remaining));
                let to = State::Open {
                    until,
                    forced: false,
                };
                Some(self.go(&mut s, to, now, reason, Cause::PeerOpened))
            }
        }
    }

    /// Shared breakers: the fleet closed (its probes passed). Closes unless already closed or
    /// forced open by the admin API.
    pub fn adopt_close(&self, now: Instant, reason: String, cause: Cause) -> Option<Transition> {
        let mut s = self.lock();
        match s.state {
            State::Closed | State::Open { forced: true, .. } => None,
            _ => Some(self.close(&mut s, now, reason, cause)),
        }
    }

    /// Shared breakers that cannot reach Redis: closes when this replica's own probes
    /// (recorded with [`Breaker::record_fleet_probe`]) number `half_open_requests`, as a local
    /// breaker would.
    pub fn close_if_probes_passed(&self, now: Instant) -> Option<Transition> {
        let mut s = self.lock();
        match s.state {
            State::HalfOpen { succeeded, .. } if succeeded >= self.config.half_open_requests => {
                let reason = format!("{succeeded} of {succeeded} probe(s) succeeded");
                Some(self.close(&mut s, now, reason, Cause::ProbesPassed))
            }
            _ => None,
        }
    }

    fn record_probe(
        &self,
        failure: bool,
        slow: bool,
        call: Call,
        now: Instant,
        fleet: bool,
    ) -> (Option<Transition>, bool) {
        let passed = !(failure || slow);
        let mut s = self.lock();
        let State::HalfOpen {
            in_flight,
            succeeded,
        } = s.state
        else {
            // A probe admitted in an earlier half-open period finished late.
            return (None, passed);
        };
        let transition = if failure || slow {
            let (what, cause) = if failure {
                ("failed", Cause::ProbeFailed)
            } else {
                ("was slow", Cause::ProbeSlow)
            };
            let reason = format!("probe {what} ({})", describe(call));
            Some(self.open(&mut s, now, reason, cause))
        } else if !fleet && succeeded + 1 >= self.config.half_open_requests {
            let n = succeeded + 1;
            let reason = format!("{n} of {n} probe(s) succeeded");
            Some(self.close(&mut s, now, reason, Cause::ProbesPassed))
        } else {
            s.state = State::HalfOpen {
                in_flight: in_flight.saturating_sub(1),
                succeeded: succeeded + 1,
            };
            None
        };
        (transition, passed)
    }

    /// A probe that was admitted but never completed (the client went away).
    pub fn cancel_probe(&self) {
        let mut s = self.lock();
        if let State::HalfOpen {
            in_flight,
            succeeded,
        } = s.state
        {
            s.state = State::HalfOpen {
                in_flight: in_flight.saturating_sub(1),
                succeeded,
            };
        }
    }

    /// Opens and stays open until [`Breaker::force_close`] or [`Breaker::reset`] (incidents).
    pub fn force_open(&self, now: Instant) -> Option<Transition> {
        let mut s = self.lock();
        let was_open = matches!(s.state, State::Open { .. });
        let t = self.go(
            &mut s,
            State::Open {
                until: now,
                forced: true,
            },
            now,
            "forced open by admin".into(),
            Cause::ForcedOpen,
        );
        (!was_open).then_some(t)
    }

    /// Closes now, keeping the back-off memory of earlier opens.
    pub fn force_close(&self, now: Instant) -> Option<Transition> {
        let mut s = self.lock();
        let was_closed = s.state == State::Closed;
        let reopens = s.reopens;
        let t = self.close(
            &mut s,
            now,
            "forced closed by admin".into(),
            Cause::ForcedClosed,
        );
        s.reopens = reopens;
        (!was_closed).then_some(t)
    }

    /// Closes now and forgets everything: windows, counters, back-off.
    pub fn reset(&self, now: Instant) -> Option<Transition> {
        let mut s = self.lock();
        let was_closed = s.state == State::Closed;
        let t = self.close(&mut s, now, "reset by admin".into(), Cause::Reset);
        (!was_closed).then_some(t)
    }

    /// Closed: counts the call with atomics and, only when an opening condition holds, takes
    /// the lock to open. A call admitted in an earlier state that finished late says nothing
    /// about now.
    fn record_closed(&self, failure: bool, slow: bool, now: Instant) -> Option<Transition> {
        if self.load().0 != CLOSED {
            return None;
        }
        let consecutive = if failure {
            self.consecutive.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            0
        };
        for w in [&self.failures, &self.slow].into_iter().flatten() {
            w.record(failure, slow, now);
        }
        let (reason, cause) = self.opening_reason(consecutive, now)?;
        let mut s = self.lock();
        // Another call may have opened it meanwhile: one transition only.
        (s.state == State::Closed).then(|| self.open(&mut s, now, reason, cause))
    }

    fn opening_reason(&self, consecutive: u32, now: Instant) -> Option<(String, Cause)> {
        if let Some(n) = self.config.consecutive_failures {
            if consecutive >= n {
                let reason = format!("consecutive_failures {consecutive} >= {n}");
                return Some((reason, Cause::ConsecutiveFailures));
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
                return Some((reason, Cause::FailureRate));
            }
        }
        if let (Some(w), Some(c)) = (&self.slow, &self.config.slow_call_rate) {
            if let Some(reason) = over("slow_call_rate", w, c, Totals::slow_rate) {
                return Some((reason, Cause::SlowCallRate));
            }
        }
        None
    }

    fn open(&self, s: &mut Slow, now: Instant, reason: String, cause: Cause) -> Transition {
        let period = open_period(&self.config, s);
        s.reopens += 1;
        self.go(
            s,
            State::Open {
                until: now + period,
                forced: false,
            },
            now,
            format!("{reason}; open for {}", human(period)),
            cause,
        )
    }

    fn close(&self, s: &mut Slow, now: Instant, reason: String, cause: Cause) -> Transition {
        let t = self.go(s, State::Closed, now, reason, cause);
        s.reopens = 0;
        t
    }

    /// Moves to `to` under the lock and publishes the state word. Entering closed, the
    /// counters are cleared first (after the transition took their totals), so the first
    /// calls counted are those after the close.
    fn go(
        &self,
        s: &mut Slow,
        to: State,
        now: Instant,
        reason: String,
        cause: Cause,
    ) -> Transition {
        let from = self.state();
        let totals = self.totals(now);
        let consecutive_failures = self.consecutive_failures();
        if to == State::Closed {
            self.consecutive.store(0, Ordering::Relaxed);
            for w in [&self.failures, &self.slow].into_iter().flatten() {
                w.clear();
            }
        }
        s.state = to;
        s.since = now;
        s.reason = reason.clone();
        s.cause = cause;
        self.word.store(self.word_of(&to), Ordering::Release);
        Transition {
            from,
            to: self.state(),
            reason,
            cause,
            totals,
            consecutive_failures,
        }
    }
}

/// open_for x 2^reopens, capped at max_open_for, then jittered by up to -10%..+10% (still
/// capped), so replicas that opened together do not probe together.
fn open_period(config: &BreakerConfig, s: &mut Slow) -> Duration {
    let doubled = config.open_for.saturating_mul(1u32 << s.reopens.min(20));
    let base = doubled.min(config.max_open_for);
    let jitter = 0.9 + 0.2 * next_unit(&mut s.rng);
    base.mul_f64(jitter).min(config.max_open_for)
}

fn next_unit(rng: &mut u64) -> f64 {
    // xorshift64: deterministic for a seed, good enough for jitter.
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    (*rng >> 11) as f64 / (1u64 << 53) as f64
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
        CallResult::Judged(s, d) => format!("status {s} judged {}", d.verdict.as_str()),
    };
    format!("{what} after {}", human(call.elapsed))
}
