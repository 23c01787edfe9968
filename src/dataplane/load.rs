//! Per-endpoint load, for the power-of-two-choices balancers.
//!
//! Peak-EWMA: a response slower than the average moves the average up to it at once (a slow
//! endpoint is avoided immediately); faster responses pull it down gradually. The cost of an
//! endpoint is that latency times (in-flight + 1), so a busy endpoint also sheds load.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::LoadBalancing;

/// Weight of the old average when a response is faster than it.
const DECAY: f64 = 0.8;
/// Starting latency estimate, so an unknown endpoint is neither shunned nor flooded.
const INITIAL_NS: u64 = 1_000_000;

/// Load of one endpoint.
#[derive(Debug)]
pub struct EndpointLoad {
    in_flight: AtomicU32,
    ewma_ns: AtomicU64,
    weight: f64,
}

/// Counts one request in flight until dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a EndpointLoad);

impl EndpointLoad {
    /// An idle endpoint of `weight`.
    pub fn new(weight: u32) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(INITIAL_NS),
            weight: f64::from(weight.max(1)),
        }
    }

    /// Marks a request in flight.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Folds one response time into the peak-EWMA.
    pub fn observe(&self, rtt: Duration) {
        let rtt = rtt.as_nanos().min(u128::from(u64::MAX)) as u64;
        let _ = self
            .ewma_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if rtt >= old {
                    rtt
                } else {
                    (old as f64 * DECAY + rtt as f64 * (1.0 - DECAY)) as u64
                })
            });
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency estimate.
    pub fn ewma(&self) -> Duration {
        Duration::from_nanos(self.ewma_ns.load(Ordering::Relaxed))
    }

    /// The balancing cost under `mode`; lower is better.
    pub fn cost(&self, mode: LoadBalancing) -> f64 {
        let busy = f64::from(self.in_flight()) + 1.0;
        match mode {
            LoadBalancing::P2cEwma => {
                self.ewma_ns.load(Ordering::Relaxed) as f64 * busy / self.weight
            }
            LoadBalancing::LeastRequest | LoadBalancing::RoundRobin => busy / self.weight,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let l = EndpointLoad::new(1);
        l.observe(Duration::from_millis(100));
        assert_eq!(l.ewma(), Duration::from_millis(100));
        l.observe(Duration::from_millis(0));
        assert_eq!(l.ewma(), Duration::from_millis(80));
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
