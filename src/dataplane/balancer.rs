//! Which endpoint gets the next attempt.
//!
//! Endpoints are grouped by priority; lower priorities are preferred. Within a group, smooth
//! weighted round robin: weights 3:1 give `a a b a` rather than `a a a b`, so a heavy endpoint
//! never receives a burst. The schedules are computed once per config and the request path
//! only bumps an atomic counter. The caller says which endpoints are available (healthy, not
//! ejected, not already tried by this request); the first group with an available endpoint
//! takes the attempt, which is how traffic fails over to priority 1 when priority 0 is down
//! and comes back when it recovers.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Endpoint;

/// Longest schedule kept per group; weights are scaled down proportionally beyond it.
const MAX_SCHEDULE: usize = 4096;

#[derive(Debug)]
struct Group {
    priority: u32,
    schedule: Vec<usize>,
    next: AtomicUsize,
}

/// Precomputed weighted round robin schedules, one per priority group.
#[derive(Debug)]
pub struct Balancer {
    groups: Vec<Group>,
}

impl Balancer {
    /// Builds the schedules for `endpoints` (never empty after validation).
    pub fn new(endpoints: &[Endpoint]) -> Self {
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
                    next: AtomicUsize::new(0),
                }
            })
            .collect();
        Self { groups }
    }

    /// The next endpoint of the preferred group, ignoring availability.
    pub fn pick(&self) -> usize {
        self.groups
            .first()
            .map_or(0, |g| g.next_from(|_| true).unwrap_or(0))
    }

    /// The next available endpoint of the first group that has one, with its priority.
    pub fn pick_available(&self, available: impl Fn(usize) -> bool) -> Option<(usize, u32)> {
        self.groups
            .iter()
            .find_map(|g| g.next_from(&available).map(|i| (i, g.priority)))
    }

    /// The preferred priority.
    pub fn first_priority(&self) -> u32 {
        self.groups.first().map_or(0, |g| g.priority)
    }
}

impl Group {
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
        let b = Balancer::new(&[ep(0, 3), ep(0, 1)]);
        let picks: Vec<usize> = (0..8).map(|_| b.pick()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn unavailable_endpoints_are_skipped() {
        let b = Balancer::new(&[ep(0, 1), ep(0, 1), ep(0, 1)]);
        let picks: Vec<usize> = (0..4)
            .map(|_| b.pick_available(|i| i != 1).unwrap().0)
            .collect();
        assert_eq!(picks, vec![0, 2, 2, 0]);
        assert_eq!(b.pick_available(|_| false), None);
    }

    #[test]
    fn lower_priorities_take_traffic_only_when_the_preferred_group_is_unavailable() {
        let b = Balancer::new(&[ep(1, 1), ep(0, 1), ep(0, 1)]);
        let picks: Vec<usize> = (0..4).map(|_| b.pick()).collect();
        assert_eq!(picks, vec![1, 2, 1, 2]);
        assert_eq!(
            b.pick_available(|i| i == 0),
            Some((0, 1)),
            "priority 0 down: priority 1"
        );
        assert_eq!(
            b.pick_available(|_| true).map(|p| p.1),
            Some(0),
            "back to priority 0"
        );
    }
}
