//! The dataplane side of a circuit breaker: the shared state machine (lock-free on the common
//! path, see [`crate::policy::breaker`]), its metrics, its log lines, and a permit that cannot
//! be forgotten.
//!
//! Every admitted request holds a [`Permit`]. Recording the outcome consumes it; if the request
//! is dropped first (the client went away), the permit's `Drop` frees its half-open probe slot,
//! so a breaker can never get stuck half-open with phantom probes.
//!
//! The open period ends by the clock: when a breaker opens, a timer task (one per open, holding
//! only a weak reference, so a breaker dropped by a reload ends it) moves it to half_open at
//! the end of the period, so the state gauge, the log and the transition counter say
//! `half_open` with no traffic. Every view ([`BreakerCell::describe`], [`BreakerCell::state`])
//! first applies the clock too, so it never waits for the timer.
//!
//! The dataplane asks [`BreakerCell::check`], which names the refusal: `circuit_open`, or
//! `circuit_half_open` when every probe slot is taken.
//!
//! Shared breakers (`shared: redis`, see [`super::shared_breaker`]): an open on this replica's
//! own evidence is published in a task; a half-open probe claims its fleet slot
//! ([`BreakerCell::claim`]) before it is sent; a passed fleet probe is counted in Redis.
//!
//! History: the cell keeps the last [`HISTORY`] transitions (wall-clock time, from, to, cause,
//! the window counts at that moment) and the transition that started the current open episode
//! (the original trip, kept through half_open and re-opens until the breaker closes). It lives
//! in the cell, so it survives a hot reload exactly as the breaker state does. The lock around
//! it is taken on transitions and by the views only.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use std::time::SystemTime;

use prometheus::{Gauge, IntCounter, IntGauge};
use serde::Serialize;
use tokio::time::Instant;

use super::ratelimit::global::Redis;
use super::rescue::ProxyError;
use super::shared_breaker::{self, Claim, Shared};
use crate::metrics::Metrics;
use crate::policy::breaker::{
    Admission, Breaker, BreakerConfig, Cause, Sharing, StateName, Totals, Transition,
};
use crate::policy::classify::{Call, FailureSet};
use crate::policy::Mode;

/// One breaker: upstream-level (`route` is "") or route-level.
#[derive(Debug)]
pub struct BreakerCell {
    /// Upstream name.
    pub upstream: String,
    /// Route name, "" for an upstream-level breaker.
    pub route: String,
    mode: Mode,
    config: BreakerConfig,
    failure_on: FailureSet,
    breaker: Breaker,
    state_gauges: [IntGauge; 3],
    rejected: IntCounter,
    opened_at: Gauge,
    history: Mutex<History>,
    metrics: Metrics,
    /// The state shared with the other replicas (`shared: redis`).
    shared: Option<Shared>,
    /// Itself, for the timer that ends an open period.
    me: Weak<BreakerCell>,
}

/// Transitions kept per breaker.
pub const HISTORY: usize = 16;

#[derive(Debug, Clone)]
struct Entry {
    at: SystemTime,
    transition: Transition,
}

#[derive(Debug, Default)]
struct History {
    /// Oldest first, at most [`HISTORY`].
    entries: VecDeque<Entry>,
    /// The closed -> open transition of the current open episode; `None` while closed.
    trip: Option<Entry>,
}

/// A breaker as `/admin/circuits` shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CircuitView {
    /// Upstream name.
    pub upstream: String,
    /// Route name, "" for an upstream-level breaker.
    pub route: String,
    /// enforce or shadow.
    pub mode: &'static str,
    /// The state now.
    pub state: StateName,
    /// Since the last transition.
    pub seconds_in_state: f64,
    /// The last transition's reason in words.
    pub reason: String,
    /// The last transition's reason as a cause (`started` before any).
    pub cause: Cause,
    /// The sliding window now.
    pub window: WindowView,
    /// Failures in a row now.
    pub consecutive_failures: u32,
    /// Open: until the first probe; half_open: 0; else null.
    pub seconds_until_half_open: Option<f64>,
    /// RFC 3339 time the current open episode began (closed -> open); null while closed.
    pub opened_at: Option<String>,
    /// The transition that began the current open episode: the original trip reason.
    pub trip: Option<TransitionView>,
    /// The last transitions, oldest first.
    pub history: Vec<TransitionView>,
    /// `local`, or `redis` when replicas share the breaker.
    pub shared: Sharing,
    /// Shared breakers: whether the last exchange with Redis succeeded (false: deciding
    /// alone); null for a local breaker.
    pub synced: Option<bool>,
}

/// The sliding window of a breaker.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct WindowView {
    /// Calls in the window.
    pub requests: u32,
    /// Of which failed.
    pub failures: u32,
    /// Of which were slow.
    pub slow: u32,
    /// failures / requests.
    pub failure_rate: f64,
    /// slow / requests.
    pub slow_rate: f64,
}

/// Window counts at a transition.
#[derive(Debug, Clone, Copy, Serialize, schemars::JsonSchema)]
pub struct Counts {
    /// Calls in the window.
    pub requests: u32,
    /// Of which failed.
    pub failures: u32,
    /// Of which were slow.
    pub slow: u32,
}

/// One past transition.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TransitionView {
    /// RFC 3339 wall-clock time, milliseconds.
    pub at: String,
    /// State before.
    pub from: StateName,
    /// State after.
    pub to: StateName,
    /// Why, from a bounded set.
    pub reason: Cause,
    /// Why, in words.
    pub detail: String,
    /// The window counts at that moment.
    pub window: Counts,
    /// Failures in a row at that moment.
    pub consecutive_failures: u32,
}

impl From<&Entry> for TransitionView {
    fn from(e: &Entry) -> Self {
        let t = &e.transition;
        Self {
            at: rfc3339(e.at),
            from: t.from,
            to: t.to,
            reason: t.cause,
            detail: t.reason.clone(),
            window: counts(t.totals),
            consecutive_failures: t.consecutive_failures,
        }
    }
}

fn counts(t: Totals) -> Counts {
    Counts {
        requests: t.calls,
        failures: t.failures,
        slow: t.slow,
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The breaker's answer for one request.
#[derive(Debug)]
pub enum Gate {
    /// Send the request; record its outcome on the permit.
    Pass(Permit),
    /// Do not send (enforce mode only).
    Reject {
        /// Until the next probe.
        retry_after: Duration,
    },
}

/// What [`BreakerCell::admit`] decided, with the state that refused.
struct Decision {
    gate: Gate,
    half_open: bool,
}

/// Proof of admission; see the module docs.
#[derive(Debug)]
pub struct Permit {
    cell: Arc<BreakerCell>,
    admission: Admission,
    /// A shared breaker's probe: the fleet episode whose slot it holds (`None`: admitted by
    /// the local count, or not claimed yet).
    fleet: Option<u64>,
    /// A shared breaker's probe that must claim a fleet slot before it is sent.
    unclaimed: bool,
    done: bool,
}

/// An admin action on a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Force {
    /// Open until closed or reset.
    Open,
    /// Close, keeping back-off memory.
    Close,
    /// Close and forget everything.
    Reset,
}

impl BreakerCell {
    /// A closed breaker with its metrics.
    pub fn new(config: BreakerConfig, upstream: &str, route: &str, metrics: &Metrics) -> Arc<Self> {
        let mode = config.mode;
        let state_gauges =
            StateName::ALL.map(|s| metrics.circuit_state(upstream, route, s.as_str()));
        state_gauges[0].set(1);
        let failure_on = config.failure_on.clone();
        let kept = config.clone();
        let breaker = Breaker::new(config, Instant::now(), rand::random());
        let shared = (kept.shared == Sharing::Redis).then(|| {
            let (connected, fallback) = metrics.circuit_shared(upstream, route);
            Shared::new(upstream, route, connected, fallback)
        });
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            upstream: upstream.to_owned(),
            route: route.to_owned(),
            mode,
            failure_on,
            config: kept,
            rejected: metrics.circuit_rejected(upstream, route, mode.as_str()),
            breaker,
            state_gauges,
            opened_at: metrics.circuit_opened_at(upstream, route),
            history: Mutex::default(),
            metrics: metrics.clone(),
            shared,
        })
    }

    /// Decides about one request.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Gate {
        self.decide(now).gate
    }

    /// Decides about one request; a refusal is the error to answer with: `circuit_open`, or
    /// `circuit_half_open` when the breaker is probing and every probe slot is taken.
    pub fn check(self: &Arc<Self>, now: Instant) -> Result<Permit, ProxyError> {
        let Decision { gate, half_open } = self.decide(now);
        match gate {
            Gate::Pass(permit) => Ok(permit),
            Gate::Reject { retry_after } if half_open => {
                Err(ProxyError::CircuitHalfOpen { retry_after })
            }
            Gate::Reject { retry_after } => Err(ProxyError::CircuitOpen { retry_after }),
        }
    }

    fn decide(self: &Arc<Self>, now: Instant) -> Decision {
        if let Some(shared) = &self.shared {
            shared.touch();
        }
        let (admission, transition) = self.breaker.admit(now);
        if let Some(t) = transition {
            self.emit(&t);
        }
        let mut half_open = false;
        if let Admission::Reject { retry_after } = admission {
            half_open = self.breaker.state() == StateName::HalfOpen;
            self.rejected.inc();
            if self.mode == Mode::Enforce {
                return Decision {
                    gate: Gate::Reject { retry_after },
                    half_open,
                };
            }
            tracing::debug!(upstream = %self.upstream, route = %self.route, "shadow breaker would reject");
        }
        Decision {
            gate: Gate::Pass(Permit {
                cell: self.clone(),
                admission,
                fleet: None,
                unclaimed: admission == Admission::Probe && self.shared.is_some(),
                done: false,
            }),
            half_open,
        }
    }

    /// Applies the clock: an open breaker whose open period is over moves to half_open now.
    pub fn refresh(&self, now: Instant) {
        let transition = self.breaker.tick(now);
        if let Some(t) = transition {
            self.emit(&t);
        }
    }

    /// The breaker's shared side (`shared: redis`).
    pub fn shared(&self) -> Option<&Shared> {
        self.shared.as_ref()
    }

    /// The local state machine.
    pub(crate) fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Gives a shared breaker the process's Redis client (again after a reload) and starts
    /// its poller; nothing for a local breaker.
    pub fn attach(self: &Arc<Self>, redis: Option<&Arc<Redis>>) {
        shared_breaker::attach(self, redis);
    }

    /// A shared breaker's probe claims one of the fleet's half-open slots before it is sent
    /// (one Redis round trip, half_open only); any other permit passes as it is. Refused:
    /// `circuit_half_open`, or `circuit_open` while the fleet's open period runs.
    pub async fn claim(mut permit: Permit) -> Result<Permit, ProxyError> {
        if !permit.unclaimed {
            return Ok(permit);
        }
        permit.unclaimed = false;
        let cell = permit.cell.clone();
        let Some(shared) = cell.shared() else {
            return Ok(permit);
        };
        match shared_breaker::claim(&cell, shared).await {
            Claim::Fleet(episode) => {
                permit.fleet = Some(episode);
                Ok(permit)
            }
            Claim::Local => Ok(permit),
            Claim::Refused => {
                cell.rejected.inc();
                if cell.mode == Mode::Shadow {
                    // Shadow never refuses: the request goes as a probe of this replica.
                    return Ok(permit);
                }
                drop(permit);
                Err(ProxyError::CircuitHalfOpen {
                    retry_after: Duration::from_secs(1),
                })
            }
            Claim::Closed => {
                drop(permit);
                let now = Instant::now();
                let reason = "closed by another replica: the fleet's probes passed".to_owned();
                if let Some(t) = cell.breaker.adopt_close(now, reason, Cause::PeerClosed) {
                    cell.emit(&t);
                }
                let mut permit = cell.check(now)?;
                permit.unclaimed = false;
                Ok(permit)
            }
        }
    }

    /// Applies an admin action.
    pub fn force(&self, action: Force, now: Instant) {
        let b = &self.breaker;
        let transition = match action {
            Force::Open => b.force_open(now),
            Force::Close => b.force_close(now),
            Force::Reset => b.reset(now),
        };
        if let Some(t) = transition {
            self.emit(&t);
        }
    }

    /// The breaker's state for the admin API (after applying the clock).
    pub fn describe(&self, now: Instant) -> serde_json::Value {
        serde_json::to_value(self.view(now)).unwrap_or(serde_json::Value::Null)
    }

    /// The breaker's state, its original trip and its history (after applying the clock).
    pub fn view(&self, now: Instant) -> CircuitView {
        self.refresh(now);
        let b = &self.breaker;
        let (since, reason, cause) = b.since();
        let state = b.state();
        let totals = b.totals(now);
        let (trip, history) = {
            let h = self.history();
            (
                h.trip.as_ref().map(TransitionView::from),
                h.entries.iter().map(TransitionView::from).collect(),
            )
        };
        CircuitView {
            upstream: self.upstream.clone(),
            route: self.route.clone(),
            mode: self.mode.as_str(),
            state,
            seconds_in_state: now.saturating_duration_since(since).as_secs_f64(),
            reason,
            cause,
            window: WindowView {
                requests: totals.calls,
                failures: totals.failures,
                slow: totals.slow,
                failure_rate: totals.failure_rate(),
                slow_rate: totals.slow_rate(),
            },
            consecutive_failures: b.consecutive_failures(),
            seconds_until_half_open: if state == StateName::HalfOpen {
                Some(0.0)
            } else {
                b.next_probe_in(now).map(|d| d.as_secs_f64())
            },
            opened_at: trip.as_ref().map(|t: &TransitionView| t.at.clone()),
            trip,
            history,
            shared: self.config.shared,
            synced: self.shared.as_ref().map(Shared::synced),
        }
    }

    fn history(&self) -> MutexGuard<'_, History> {
        // Every update is one push (and pop) or one assignment: a poisoned lock is consistent.
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The breaker's config.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// What counts as a failure for this breaker.
    pub fn failure_on(&self) -> &FailureSet {
        &self.failure_on
    }

    /// The current state (after applying the clock).
    pub fn state(&self) -> StateName {
        self.refresh(Instant::now());
        self.breaker.state()
    }

    pub(crate) fn emit(&self, t: &Transition) {
        tracing::warn!(
            upstream = %self.upstream,
            route = %self.route,
            mode = self.mode.as_str(),
            from = t.from.as_str(),
            to = t.to.as_str(),
            cause = t.cause.as_str(),
            reason = %t.reason,
            "circuit breaker {}",
            t.to
        );
        self.metrics
            .circuit_transitions(&self.upstream, &self.route, t.from.as_str(), t.to.as_str())
            .inc();
        self.metrics
            .circuit_transition_reasons(
                &self.upstream,
                &self.route,
                t.from.as_str(),
                t.to.as_str(),
                t.cause.as_str(),
            )
            .inc();
        let entry = Entry {
            at: SystemTime::now(),
            transition: t.clone(),
        };
        {
            let mut h = self.history();
            if t.to == StateName::Closed {
                h.trip = None;
            } else if t.from == StateName::Closed && t.to == StateName::Open {
                self.opened_at.set(unix_seconds(entry.at));
                h.trip = Some(entry.clone());
            }
            h.entries.push_back(entry);
            while h.entries.len() > HISTORY {
                h.entries.pop_front();
            }
        }
        for (gauge, state) in self.state_gauges.iter().zip(StateName::ALL) {
            gauge.set(i64::from(state == t.to));
        }
        if t.to == StateName::Open {
            self.end_open_period_on_time();
            self.publish(t.cause);
        }
    }

    /// A shared breaker that opened on this replica's own evidence tells the others (in a
    /// task: the request that tripped it does not wait on Redis). Opens learned from the
    /// fleet and admin actions are not published.
    fn publish(&self, cause: Cause) {
        let Some(shared) = &self.shared else { return };
        if matches!(cause, Cause::PeerOpened | Cause::ForcedOpen) {
            return;
        }
        shared.opened_locally();
        let (Ok(runtime), Some(cell)) = (tokio::runtime::Handle::try_current(), self.me.upgrade())
        else {
            return;
        };
        runtime.spawn(async move {
            if let Some(shared) = cell.shared() {
                shared_breaker::publish(&cell, shared).await;
            }
        });
    }

    /// Starts the timer that moves this breaker to half_open when its open period ends (no
    /// timer for a forced open, which has no end). Outside a tokio runtime (unit tests of the
    /// views), the views still apply the clock themselves.
    fn end_open_period_on_time(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.me.clone();
        runtime.spawn(async move {
            loop {
                let wait = {
                    let Some(cell) = me.upgrade() else { return };
                    let now = Instant::now();
                    cell.refresh(now);
                    // None: no longer open (or forced open); a later open starts its own timer.
                    let Some(wait) = cell.breaker.next_probe_in(now) else {
                        return;
                    };
                    wait
                };
                tokio::time::sleep(wait).await;
            }
        });
    }
}

impl Permit {
    /// What counts as a failure for the breaker that issued this permit.
    pub fn failure_on(&self) -> &FailureSet {
        &self.cell.failure_on
    }

    /// Whether this permit admitted a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.admission == Admission::Probe
    }

    /// Records the outcome of the call this permit admitted.
    pub fn record(mut self, call: Call, now: Instant) {
        self.done = true;
        let Some(episode) = self.fleet else {
            let transition = self.cell.breaker.record(self.admission, call, now);
            if let Some(t) = transition {
                self.cell.emit(&t);
            }
            return;
        };
        // A fleet probe: a failure opens here (and publishes); a pass is counted in Redis,
        // which decides the close.
        let (transition, passed) = self.cell.breaker.record_fleet_probe(call, now);
        if let Some(t) = transition {
            self.cell.emit(&t);
        }
        let cell = self.cell.clone();
        if let (true, Ok(runtime)) = (passed, tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                if let Some(shared) = cell.shared() {
                    shared_breaker::pass(&cell, shared, episode).await;
                }
            });
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && self.admission == Admission::Probe {
            self.cell.breaker.cancel_probe();
            let cell = self.cell.clone();
            if let (Some(episode), Ok(runtime)) =
                (self.fleet, tokio::runtime::Handle::try_current())
            {
                runtime.spawn(async move {
                    if let Some(shared) = cell.shared() {
                        shared_breaker::release(shared, episode).await;
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::classify::CallResult;

    fn config() -> BreakerConfig {
        BreakerConfig {
            mode: Mode::Enforce,
            consecutive_failures: Some(1),
            failure_rate: None,
            slow_call_duration: None,
            slow_call_rate: None,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(60),
            half_open_requests: 1,
            failure_on: FailureSet::default(),
            shared: crate::policy::breaker::Sharing::Local,
        }
    }

    fn fail() -> Call {
        Call {
            result: CallResult::Status(503),
            elapsed: Duration::from_millis(5),
        }
    }

    fn gauges(cell: &BreakerCell) -> [i64; 3] {
        cell.state_gauges.clone().map(|g| g.get())
    }

    /// On paused time: the gauge says open during the open period and half_open right after
    /// it, with no request; the refusal while probing is `circuit_half_open`.
    #[tokio::test(start_paused = true)]
    async fn open_period_ends_on_the_clock_and_half_open_refusal_says_so() {
        let metrics = Metrics::new();
        let cell = BreakerCell::new(config(), "pg", "", &metrics);
        let Ok(permit) = cell.check(Instant::now()) else {
            panic!("closed breaker admits")
        };
        permit.record(fail(), Instant::now());
        assert_eq!(gauges(&cell), [0, 1, 0], "closed, open, half_open");
        let err = cell.check(Instant::now()).err();
        assert_eq!(err.map(ProxyError::reason), Some("circuit_open"));
        // open_for 10s, jittered by at most +10%.
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(gauges(&cell), [0, 1, 0], "still within the open period");
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(gauges(&cell), [0, 0, 1], "half_open without traffic");
        let transitions = metrics
            .circuit_transitions("pg", "", "open", "half_open")
            .get();
        assert_eq!(transitions, 1);
        let probe = cell.check(Instant::now());
        assert!(probe.is_ok(), "one probe slot");
        let refused = cell.check(Instant::now()).err();
        assert_eq!(refused.map(ProxyError::reason), Some("circuit_half_open"));
        let response = refused.map(|e| e.to_response(None, Some("pg")));
        let header = response
            .as_ref()
            .and_then(|r| r.headers().get("x-backstop-reason"));
        assert_eq!(
            header.and_then(|h| h.to_str().ok()),
            Some("circuit_half_open")
        );
        assert_eq!(response.map(|r| r.status().as_u16()), Some(503));
    }

    /// A breaker dropped by a reload ends its timer; nothing keeps it alive.
    #[tokio::test(start_paused = true)]
    async fn timer_does_not_keep_a_dropped_breaker_alive() {
        let metrics = Metrics::new();
        let cell = BreakerCell::new(config(), "pg", "", &metrics);
        if let Ok(permit) = cell.check(Instant::now()) {
            permit.record(fail(), Instant::now());
        }
        let weak = Arc::downgrade(&cell);
        drop(cell);
        assert!(weak.upgrade().is_none());
        tokio::time::sleep(Duration::from_secs(20)).await;
    }

    /// The ring keeps the last HISTORY transitions, oldest first; the original trip and the
    /// opened-at gauge stay through re-opens and clear (the trip) on close.
    #[tokio::test(start_paused = true)]
    async fn history_is_bounded_and_keeps_the_original_trip() {
        let metrics = Metrics::new();
        let cell = BreakerCell::new(config(), "pg", "", &metrics);
        if let Ok(permit) = cell.check(Instant::now()) {
            permit.record(fail(), Instant::now());
        }
        let view = cell.view(Instant::now());
        let trip = view.trip.clone().expect("open: the trip is kept");
        assert_eq!(
            (trip.from, trip.to, trip.reason),
            (
                StateName::Closed,
                StateName::Open,
                Cause::ConsecutiveFailures
            )
        );
        assert_eq!(view.opened_at.as_deref(), Some(trip.at.as_str()));
        let opened_at = metrics.circuit_opened_at("pg", "").get();
        assert!(opened_at > 1.0e9, "unix seconds: {opened_at}");
        // Fail every probe: open -> half_open -> open, many times.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(120)).await;
            if let Ok(probe) = cell.check(Instant::now()) {
                probe.record(fail(), Instant::now());
            }
        }
        let view = cell.view(Instant::now());
        assert_eq!(view.history.len(), HISTORY);
        let last = view.history.last().map(|t| (t.from, t.to, t.reason));
        assert_eq!(
            last,
            Some((StateName::HalfOpen, StateName::Open, Cause::ProbeFailed))
        );
        assert_eq!(view.trip.map(|t| t.at), Some(trip.at), "the original trip");
        assert_eq!(metrics.circuit_opened_at("pg", "").get(), opened_at);
        let reasons = metrics
            .circuit_transition_reasons("pg", "", "half_open", "open", "probe_failed")
            .get();
        assert_eq!(reasons, 10);
        cell.force(Force::Close, Instant::now());
        let view = cell.view(Instant::now());
        assert!(view.trip.is_none() && view.opened_at.is_none());
        assert_eq!(view.cause, Cause::ForcedClosed);
    }
}
