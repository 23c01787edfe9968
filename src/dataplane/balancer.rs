//! Which endpoint gets the next attempt.
//!
//! Endpoints are grouped by priority; lower priorities are preferred. Within a group, smooth
//! weighted round robin: weights 3:1 give `a a b a` rather than `a a a b`, so a heavy endpoint
//! never receives a burst. The schedules are computed once per config and the request path
//! only bumps an atomic counter. The caller says which endpoints are available (healthy, not
//! ejected, not already tried by this request); the first group with an available endpoint
//! takes the attempt, which is how traffic fails over to priority 1 when priority 0 is down
//! and comes back when it recovers.
//!
//! Within a group, `round_robin` follows the schedule; `p2c_ewma` (the default) and
//! `least_request` draw two random available endpoints and take the one with the lower cost
//! (peak-EWMA latency x (in-flight + 1) / weight, or (in-flight + 1) / weight): a slow or busy
//! endpoint sheds load at once, without a global scan or lock.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::{Endpoint, LoadBalancing};

/// Longest schedule kept per group; weights are scaled down proportionally beyond it.
const MAX_SCHEDULE: usize = 4096;

#[derive(Debug)]
struct Group {
    priority: u32,
    schedule: Vec<usize>,
    members: Vec<usize>,
    next: AtomicUsize,
}

/// Precomputed schedules, one per priority group, and the choice rule.
#[derive(Debug)]
pub struct Balancer {
    groups: Vec<Group>,
    mode: LoadBalancing,
}

impl Balancer {
    /// Builds the schedules for `endpoints` (never empty after validation).
    pub fn new(endpoints: &[Endpoint], mode: LoadBalancing) -> Self {
        let mut priorities: Vec<u32> = endpoints.iter().map(|e| e.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let groups = priorities
            .into_iter()
            .map(|priority| {
                let members: Vec<(usize, u64)> = endpoints
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.priority == priority)
                    .map(|(i, e)| (i, u64::from(e.weight.max(1))))
                    .collect();
                Group {
                    priority,
                    schedule: smooth_wrr(&members),
                    members: members.iter().map(|(i, _)| *i).collect(),
                    next: AtomicUsize::new(0),
                }
            })
            .collect();
        Self { groups, mode }
    }

    /// The next endpoint of the preferred group, ignoring availability.
    pub fn pick(&self) -> usize {
        self.groups
            .first()
            .map_or(0, |g| g.next_from(|_| true).unwrap_or(0))
    }

    /// The next available endpoint of the first group that has one, with its priority.
    /// `cost` is consulted by the power-of-two-choices modes: lower is better.
    pub fn pick_available(
        &self,
        available: impl Fn(usize) -> bool,
        cost: impl Fn(usize) -> f64,
    ) -> Option<(usize, u32)> {
        self.groups.iter().find_map(|g| {
            let chosen = match self.mode {
                LoadBalancing::RoundRobin => g.next_from(&available),
                LoadBalancing::P2cEwma | LoadBalancing::LeastRequest => {
                    g.two_choices(&available, &cost)
                }
            };
            chosen.map(|i| (i, g.priority))
        })
    }

    /// The choice rule.
    pub fn mode(&self) -> LoadBalancing {
        self.mode
    }
}

impl Group {
    fn two_choices(
        &self,
        available: impl Fn(usize) -> bool,
        cost: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        let n = self.members.len();
        if n == 1 {
            return Some(self.members[0]).filter(|&i| available(i));
        }
        let a = rand::random_range(0..n);
        let b = (a + 1 + rand::random_range(0..n - 1)) % n;
        let (a, b) = (self.members[a], self.members[b]);
        match (available(a), available(b)) {
            (true, true) => Some(if cost(b) < cost(a) { b } else { a }),
            (true, false) => Some(a),
            (false, true) => Some(b),
            (false, false) => self.next_from(available),
        }
    }

    fn next_from(&self, available: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|k| self.schedule[(start + k) % len])
            .find(|&i| available(i))
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
        let b = Balancer::new(&[ep(0, 3), ep(0, 1)], LoadBalancing::RoundRobin);
        let picks: Vec<usize> = (0..8).map(|_| b.pick()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn unavailable_endpoints_are_skipped() {
        let b = Balancer::new(&[ep(0, 1), ep(0, 1), ep(0, 1)], LoadBalancing::RoundRobin);
        let picks: Vec<usize> = (0..4)
            .map(|_| b.pick_available(|i| i != 1, |_| 0.0).unwrap().0)
            .collect();
        assert_eq!(picks, vec![0, 2, 2, 0]);
        assert_eq!(b.pick_available(|_| false, |_| 0.0), None);
    }

    #[test]
    fn lower_priorities_take_traffic_only_when_the_preferred_group_is_unavailable() {
        for mode in [LoadBalancing::RoundRobin, LoadBalancing::P2cEwma] {
            let b = Balancer::new(&[ep(1, 1), ep(0, 1), ep(0, 1)], mode);
            assert_eq!(
                b.pick_available(|i| i == 0, |_| 0.0),
                Some((0, 1)),
                "priority 0 down: priority 1"
            );
            assert_eq!(
                b.pick_available(|_| true, |_| 0.0).map(|p| p.1),
                Some(0),
                "back to priority 0"
            );
        }
        let b = Balancer::new(&[ep(1, 1), ep(0, 1), ep(0, 1)], LoadBalancing::RoundRobin);
        let picks: Vec<usize> = (0..4).map(|_| b.pick()).collect();
        assert_eq!(picks, vec![1, 2, 1, 2]);
    }

    #[test]
    fn two_choices_prefer_the_cheaper_endpoint() {
        let b = Balancer::new(&[ep(0, 1), ep(0, 1)], LoadBalancing::P2cEwma);
        for _ in 0..20 {
            assert_eq!(
                b.pick_available(|_| true, |i| if i == 0 { 5.0 } else { 1.0 })
                    .unwrap()
                    .0,
                1
            );
        }
        assert_eq!(
            b.pick_available(|i| i == 0, |i| if i == 0 { 5.0 } else { 1.0 })
                .unwrap()
                .0,
            0
        );
    }
}
