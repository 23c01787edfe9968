//! The dataplane side of a circuit breaker: a lock around the state machine, its metrics, its
//! log lines, and a permit that cannot be forgotten.
//!
//! Every admitted request holds a [`Permit`]. Recording the outcome consumes it; if the request
//! is dropped first (the client went away), the permit's `Drop` frees its half-open probe slot,
//! so a breaker can never get stuck half-open with phantom probes.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::policy::breaker::{Admission, Breaker, BreakerConfig, StateName, Transition};
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
    breaker: Mutex<Breaker>,
    state_gauges: [IntGauge; 3],
    rejected: IntCounter,
    metrics: Metrics,
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

/// Proof of admission; see the module docs.
#[derive(Debug)]
pub struct Permit {
    cell: Arc<BreakerCell>,
    admission: Admission,
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
        Arc::new(Self {
            upstream: upstream.to_owned(),
            route: route.to_owned(),
            mode,
            failure_on,
            config: kept,
            rejected: metrics.circuit_rejected(upstream, route, mode.as_str()),
            breaker: Mutex::new(breaker),
            state_gauges,
            metrics: metrics.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Breaker> {
        // A panic elsewhere while holding the lock leaves a consistent state machine (every
        // method updates it in one step), so a poisoned lock is still usable.
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides about one request.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Gate {
        let (admission, transition) = self.lock().admit(now);
        if let Some(t) = transition {
            self.emit(&t);
        }
        if let Admission::Reject { retry_after } = admission {
            self.rejected.inc();
            if self.mode == Mode::Enforce {
                return Gate::Reject { retry_after };
            }
            tracing::debug!(upstream = %self.upstream, route = %self.route, "shadow breaker would reject");
        }
        Gate::Pass(Permit {
            cell: self.clone(),
            admission,
            done: false,
        })
    }

    /// Applies an admin action.
    pub fn force(&self, action: Force, now: Instant) {
        let transition = {
            let mut b = self.lock();
            match action {
                Force::Open => b.force_open(now),
                Force::Close => b.force_close(now),
                Force::Reset => b.reset(now),
            }
        };
        if let Some(t) = transition {
            self.emit(&t);
        }
    }

    /// The breaker's state for the admin API.
    pub fn describe(&self, now: Instant) -> serde_json::Value {
        let b = self.lock();
        let (since, reason) = b.since();
        let totals = b.totals(now);
        serde_json::json!({
            "upstream": self.upstream,
            "route": self.route,
            "mode": self.mode.as_str(),
            "state": b.state().as_str(),
            "seconds_in_state": now.saturating_duration_since(since).as_secs_f64(),
            "reason": reason,
            "window": {
                "requests": totals.calls,
                "failures": totals.failures,
                "slow": totals.slow,
                "failure_rate": totals.failure_rate(),
                "slow_rate": totals.slow_rate(),
            },
            "consecutive_failures": b.consecutive_failures(),
            "seconds_until_half_open": b.next_probe_in(now).map(|d| d.as_secs_f64()),
        })
    }

    /// The breaker's config.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// What counts as a failure for this breaker.
    pub fn failure_on(&self) -> &FailureSet {
        &self.failure_on
    }

    /// The current state.
    pub fn state(&self) -> StateName {
        self.lock().state()
    }

    fn emit(&self, t: &Transition) {
        tracing::warn!(
            upstream = %self.upstream,
            route = %self.route,
            mode = self.mode.as_str(),
            from = t.from.as_str(),
            to = t.to.as_str(),
            reason = %t.reason,
            "circuit breaker {}",
            t.to
        );
        self.metrics
            .circuit_transitions(&self.upstream, &self.route, t.from.as_str(), t.to.as_str())
            .inc();
        for (gauge, state) in self.state_gauges.iter().zip(StateName::ALL) {
            gauge.set(i64::from(state == t.to));
        }
    }
}

impl Permit {
    /// What counts as a failure for the breaker that issued this permit.
    pub fn failure_on(&self) -> &FailureSet {
        &self.cell.failure_on
    }

    /// Records the outcome of the call this permit admitted.
    pub fn record(mut self, call: Call, now: Instant) {
        self.done = true;
        let transition = self.cell.lock().record(self.admission, call, now);
        if let Some(t) = transition {
            self.cell.emit(&t);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && self.admission == Admission::Probe {
            self.cell.lock().cancel_probe();
        }
    }
}
