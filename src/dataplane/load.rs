//! Per-endpoint load, for the power-of-two-choices balancers.
//!
//! Peak-EWMA with decay on read (as in tower's `PeakEwma` and linkerd2-proxy): a response
//! slower than the estimate moves the estimate up to it at once (a slow endpoint is avoided
//! immediately); a faster one pulls it half way down. Between samples the estimate
//! decays toward zero with the time constant [`DECAY`] every time it is read, so an endpoint
//! that gets no traffic because it looked slow becomes cheaper by itself and is tried again:
//! an estimate never stays frozen. The cost of an endpoint is that estimate times
//! (in-flight + 1) / weight, so a busy endpoint also sheds load.
//!
//! **Recovery time.** A penalised endpoint's estimate halves every `DECAY x ln 2` (about
//! 3.5 s) even without traffic; as it nears its peers' the balancer offers it a growing share
//! (see `balancer`), and a fast answer after a quiet spell replaces the decayed estimate.
//! An endpoint charged 1 s for one timeout is back at its peers' level, and so at an even
//! share, within `DECAY x ln(1 s / peer latency)`: about 12 s against 100 ms peers, 23 s
//! against 10 ms, 35 s against 1 ms. With active health checks it is sooner: every passing
//! check lowers a higher estimate to the median of the other healthy endpoints
//! ([`forgive`]), so it is tried again within one check `interval`. A half-open breaker probe
//! that succeeds should do the same.
//!
//! The estimate and the time it was taken share one `AtomicU64` (an `f32` of nanoseconds and
//! a `u32` of milliseconds since the endpoint was created), so reads and updates are
//! lock-free and always consistent. Every method that depends on time takes `now`, so tests
//! can use a fake clock; the request path passes `tokio::time::Instant::now()`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::upstream::LiveEndpoint;
use crate::config::LoadBalancing;

/// Time constant of the decay on read: an unread-for-`DECAY` estimate is down to 1/e (37%).
pub const DECAY: Duration = Duration::from_secs(5);
/// Weight of the old estimate when a response is faster than it.
const KEEP: f64 = 0.5;
/// Starting estimate when nothing better is known (no sample, no peers), so an unknown
/// endpoint is neither shunned nor flooded.
pub const INITIAL: Duration = Duration::from_millis(1);

/// Load of one endpoint.
#[derive(Debug)]
pub struct EndpointLoad {
    in_flight: AtomicU32,
    /// High 32 bits: the estimate in nanoseconds as `f32` bits; low 32 bits: when it was
    /// taken, in milliseconds since `epoch` (wrapping, so ~49 days between updates at most
    /// are measured exactly; an older estimate has long decayed anyway).
    estimate: AtomicU64,
    epoch: Instant,
    weight: f64,
}

/// Counts one request in flight until dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a EndpointLoad);

impl EndpointLoad {
    /// An idle endpoint of `weight`, starting at [`INITIAL`].
    pub fn new(weight: u32) -> Self {
        Self::starting_at(weight, INITIAL, Instant::now())
    }

    /// An idle endpoint of `weight` whose estimate starts at `estimate` (e.g. the pool's
    /// [`median`], for an endpoint added to a pool that already has samples).
    pub fn starting_at(weight: u32, estimate: Duration, now: Instant) -> Self {
        let load = Self {
            in_flight: AtomicU32::new(0),
            estimate: AtomicU64::new(0),
            epoch: now,
            weight: f64::from(weight.max(1)),
        };
        load.reset(estimate, now);
        load
    }

    /// Marks a request in flight.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Folds one response time into the peak-EWMA, at the current time.
    pub fn observe(&self, rtt: Duration) {
        self.observe_at(rtt, Instant::now());
    }

    /// Folds one response time, received at `now`, into the peak-EWMA.
    pub fn observe_at(&self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let tick = self.tick(now);
        self.update(
            |decayed| {
                if rtt >= decayed {
                    rtt
                } else {
                    decayed * KEEP + rtt * (1.0 - KEEP)
                }
            },
            tick,
        );
    }

    /// Sets the estimate to `estimate` as of `now`, whatever it was.
    pub fn reset(&self, estimate: Duration, now: Instant) {
        let tick = self.tick(now);
        self.update(|_| estimate.as_nanos() as f64, tick);
    }

    /// Lowers the estimate to `to` if it is higher (a passing health check or a successful
    /// half-open probe: whatever penalty it carried is forgiven, a lower estimate is kept).
    pub fn lower_to(&self, to: Duration, now: Instant) {
        let tick = self.tick(now);
        let to = to.as_nanos() as f64;
        self.update(|decayed| decayed.min(to), tick);
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency estimate now.
    pub fn ewma(&self) -> Duration {
        self.ewma_at(Instant::now())
    }

    /// The latency estimate at `now`, decayed for the time since it was last updated.
    pub fn ewma_at(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.decayed_ns(now) as u64)
    }

    /// The balancing cost under `mode` now; lower is better.
    pub fn cost(&self, mode: LoadBalancing) -> f64 {
        self.cost_at(mode, Instant::now())
    }

    /// The balancing cost under `mode` at `now`; lower is better.
    pub fn cost_at(&self, mode: LoadBalancing, now: Instant) -> f64 {
        let busy = f64::from(self.in_flight()) + 1.0;
        match mode {
            LoadBalancing::P2cEwma => self.decayed_ns(now) * busy / self.weight,
            LoadBalancing::LeastRequest | LoadBalancing::RoundRobin => busy / self.weight,
        }
    }

    fn tick(&self, now: Instant) -> u32 {
        // Truncation is the wrap-around described on `estimate`.
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }

    fn decayed_ns(&self, now: Instant) -> f64 {
        let (estimate, at) = unpack(self.estimate.load(Ordering::Relaxed));
        decay(estimate, self.tick(now).wrapping_sub(at))
    }

    /// Replaces the estimate with `f(estimate decayed to tick)`, stamped `tick`.
    fn update(&self, f: impl Fn(f64) -> f64, tick: u32) {
        let _ = self
            .estimate
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
                let (estimate, at) = unpack(packed);
                // An update stamped earlier than the stored one (a racing writer with an older
                // `now`) applies without decay and keeps the newer stamp.
                let elapsed = tick.wrapping_sub(at);
                let (elapsed, stamp) = if elapsed > u32::MAX / 2 {
                    (0, at)
                } else {
                    (elapsed, tick)
                };
                Some(pack(f(decay(estimate, elapsed)), stamp))
            });
    }
}

/// `estimate` after `elapsed_ms` milliseconds of exponential decay toward zero.
fn decay(estimate: f64, elapsed_ms: u32) -> f64 {
    if elapsed_ms == 0 {
        return estimate;
    }
    estimate * (-f64::from(elapsed_ms) / DECAY.as_millis() as f64).exp()
}

fn pack(estimate_ns: f64, tick: u32) -> u64 {
    let estimate = if estimate_ns.is_finite() {
        estimate_ns.clamp(0.0, f64::from(f32::MAX)) as f32
    } else {
        0.0
    };
    (u64::from(estimate.to_bits()) << 32) | u64::from(tick)
}

fn unpack(packed: u64) -> (f64, u32) {
    (
        f64::from(f32::from_bits((packed >> 32) as u32)),
        packed as u32,
    )
}

/// The median of the estimates of `loads` at `now`; [`INITIAL`] when there are none.
pub fn median<'a>(loads: impl IntoIterator<Item = &'a EndpointLoad>, now: Instant) -> Duration {
    let mut all: Vec<f64> = loads.into_iter().map(|l| l.decayed_ns(now)).collect();
    if all.is_empty() {
        return INITIAL;
    }
    all.sort_by(f64::total_cmp);
    let mid = all.len() / 2;
    let ns = if all.len() % 2 == 1 {
        all[mid]
    } else {
        (all[mid - 1] + all[mid]) / 2.0
    };
    Duration::from_nanos(ns as u64)
}

/// Forgives endpoint `e` of `endpoints` any penalty: lowers its estimate to the median of the
/// other healthy endpoints (or [`INITIAL`]). Called on a passing health check; the breaker
/// should call it when a half-open probe to `e` succeeds.
pub fn forgive(endpoints: &[LiveEndpoint], e: usize, now: Instant) {
    let Some(endpoint) = endpoints.get(e) else {
        return;
    };
    let others = endpoints
        .iter()
        .enumerate()
        .filter(|&(i, other)| i != e && other.is_healthy())
        .map(|(_, other)| &other.load);
    endpoint.load.lower_to(median(others, now), now);
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn close(a: Duration, b: Duration) -> bool {
        a.as_secs_f64() / b.as_secs_f64() - 1.0 < 1e-3
            && b.as_secs_f64() / a.as_secs_f64() - 1.0 < 1e-3
    }

    #[test]
    fn peak_ewma_jumps_up_and_pulls_down() {
        let t0 = Instant::now();
        let l = EndpointLoad::starting_at(1, INITIAL, t0);
        l.observe_at(100 * MS, t0);
        assert!(close(l.ewma_at(t0), 100 * MS));
        l.observe_at(Duration::ZERO, t0);
        assert!(close(l.ewma_at(t0), 50 * MS));
    }

    #[test]
    fn the_estimate_decays_on_read_without_new_samples() {
        let t0 = Instant::now();
        let l = EndpointLoad::starting_at(1, INITIAL, t0);
        l.observe_at(Duration::from_secs(1), t0);
        let half_life = DECAY.mul_f64(std::f64::consts::LN_2);
        assert!(
            close(l.ewma_at(t0 + half_life), 500 * MS),
            "{:?}",
            l.ewma_at(t0 + half_life)
        );
        assert!(close(
            l.ewma_at(t0 + DECAY * 2),
            Duration::from_secs(1).mul_f64((-2.0f64).exp())
        ));
        // Reading does not change the stored estimate: reading twice gives the same answer.
        assert_eq!(l.ewma_at(t0 + DECAY), l.ewma_at(t0 + DECAY));
        // The documented bound: 1 s falls to 1 ms within DECAY x ln(1000) (~35 s).
        let bound = DECAY.mul_f64(1000f64.ln()) + MS;
        assert!(l.ewma_at(t0 + bound) <= MS);
        let cost = |at| l.cost_at(LoadBalancing::P2cEwma, at);
        assert!(cost(t0 + DECAY) < cost(t0));
    }

    #[test]
    fn a_fresh_sample_after_a_quiet_spell_replaces_the_decayed_estimate() {
        let t0 = Instant::now();
        let l = EndpointLoad::starting_at(1, INITIAL, t0);
        l.observe_at(Duration::from_secs(1), t0);
        // After 60 s the penalty has decayed below a 10 ms answer, which is taken as it is.
        l.observe_at(10 * MS, t0 + Duration::from_secs(60));
        assert!(close(l.ewma_at(t0 + Duration::from_secs(60)), 10 * MS));
    }

    #[test]
    fn forgiving_lowers_to_the_median_but_never_raises() {
        let t0 = Instant::now();
        let l = EndpointLoad::starting_at(1, INITIAL, t0);
        l.observe_at(Duration::from_secs(1), t0);
        l.lower_to(2 * MS, t0);
        assert!(close(l.ewma_at(t0), 2 * MS));
        l.lower_to(Duration::from_secs(3), t0);
        assert!(close(l.ewma_at(t0), 2 * MS), "a lower estimate is kept");
        l.reset(7 * MS, t0);
        assert!(close(l.ewma_at(t0), 7 * MS));
    }

    #[test]
    fn median_of_the_pool() {
        let t0 = Instant::now();
        let at = |ms: u32| EndpointLoad::starting_at(1, MS * ms, t0);
        let pool = [at(1), at(9), at(3)];
        assert_eq!(median(&pool, t0), 3 * MS);
        assert!(close(median(&pool[..2], t0), 5 * MS));
        assert_eq!(median(std::iter::empty(), t0), INITIAL);
        let new = EndpointLoad::starting_at(1, median(&pool, t0), t0);
        assert_eq!(new.ewma_at(t0), 3 * MS);
    }

    #[test]
    fn an_older_racing_update_does_not_rewind_the_clock() {
        let t0 = Instant::now();
        let l = EndpointLoad::starting_at(1, INITIAL, t0);
        l.observe_at(Duration::from_secs(1), t0 + DECAY);
        l.observe_at(Duration::from_secs(2), t0);
        assert!(close(l.ewma_at(t0 + DECAY), Duration::from_secs(2)));
    }

    #[test]
    fn in_flight_and_weight_raise_and_lower_the_cost() {
        let l = EndpointLoad::new(2);
        let idle = l.cost(LoadBalancing::LeastRequest);
        let guard = l.start();
        assert_eq!(l.cost(LoadBalancing::LeastRequest), idle * 2.0);
        drop(guard);
        assert_eq!(l.in_flight(), 0);
        assert_eq!(
            EndpointLoad::new(1).cost(LoadBalancing::LeastRequest),
            idle * 2.0
        );
    }
}
