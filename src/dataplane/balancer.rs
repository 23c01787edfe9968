//! Which endpoint gets the next attempt.
//!
//! Smooth weighted round robin over the preferred (lowest) priority group: weights 3:1 give
//! `a a b a` rather than `a a a b`, so a heavy endpoint never receives a burst. The schedule is
//! computed once per config and the request path only bumps an atomic counter. Health,
//! ejection and failover to the next priority group arrive with their policies and narrow the
//! candidates before this choice.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Endpoint;

/// Longest schedule kept; weights are scaled down proportionally beyond it.
const MAX_SCHEDULE: usize = 4096;

/// A precomputed weighted round robin schedule over endpoint indices.
#[derive(Debug)]
pub struct Balancer {
    schedule: Vec<usize>,
    next: AtomicUsize,
}

impl Balancer {
    /// Builds the schedule for the lowest-priority group of `endpoints` (never empty after
    /// validation).
    pub fn new(endpoints: &[Endpoint]) -> Self {
        let best = endpoints.iter().map(|e| e.priority).min().unwrap_or(0);
        let group: Vec<(usize, u64)> = endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.priority == best)
            .map(|(i, e)| (i, u64::from(e.weight.max(1))))
            .collect();
        Self {
            schedule: smooth_wrr(&group),
            next: AtomicUsize::new(0),
        }
    }

    /// The index of the endpoint for the next attempt.
    pub fn pick(&self) -> usize {
        self.pick_available(|_| true)
    }

    /// The next endpoint in the schedule for which `available` holds; when none does, the
    /// next one regardless (sending somewhere beats failing everything).
    pub fn pick_available(&self, available: impl Fn(usize) -> bool) -> usize {
        let len = self.schedule.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let first = self.schedule.get(start % len).copied().unwrap_or(0);
        if available(first) {
            return first;
        }
        (1..len)
            .map(|k| self.schedule[(start + k) % len])
            .find(|&i| available(i))
            .unwrap_or(first)
    }
}

/// nginx's smooth weighted round robin, unrolled into one full cycle.
fn smooth_wrr(group: &[(usize, u64)]) -> Vec<usize> {
    let total: u64 = group.iter().map(|(_, w)| w).sum();
    let scale = (total as usize).div_ceil(MAX_SCHEDULE).max(1) as u64;
    let weights: Vec<(usize, i64)> = group
        .iter()
        .map(|&(i, w)| (i, (w / scale).max(1) as i64))
        .collect();
    let total: i64 = weights.iter().map(|(_, w)| w).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (k, (_, w)) in weights.iter().enumerate() {
            current[k] += w;
            if current[k] > current[best] {
                best = k;
            }
        }
        current[best] -= total;
        schedule.push(weights[best].0);
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(priority: u32, weight: u32) -> Endpoint {
        Endpoint {
            address: format!("h{priority}{weight}:1"),
            priority,
            weight,
        }
    }

    #[test]
    fn weights_are_interleaved() {
        let b = Balancer::new(&[ep(0, 3), ep(0, 1)]);
        let picks: Vec<usize> = (0..8).map(|_| b.pick()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn unavailable_endpoints_are_skipped() {
        let b = Balancer::new(&[ep(0, 1), ep(0, 1), ep(0, 1)]);
        let picks: Vec<usize> = (0..4).map(|_| b.pick_available(|i| i != 1)).collect();
        assert_eq!(picks, vec![0, 2, 2, 0]);
        assert_eq!(
            b.pick_available(|_| false),
            1,
            "nothing available: keep the schedule"
        );
    }

    #[test]
    fn only_the_preferred_priority_gets_traffic() {
        let b = Balancer::new(&[ep(1, 1), ep(0, 1), ep(0, 1)]);
        let picks: Vec<usize> = (0..4).map(|_| b.pick()).collect();
        assert_eq!(picks, vec![1, 2, 1, 2]);
    }
}
