//! Active health: flip an endpoint's state only after N results in a row.
//!
//! One failed check does not take an endpoint out and one success does not bring it back:
//! `unhealthy_threshold` failures in a row take it out, `healthy_threshold` successes in a row
//! bring it back, so a flapping endpoint does not flap the traffic.

/// The health of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    healthy: bool,
    streak: u32,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

impl Health {
    /// Starts healthy: a cold start must not refuse traffic until the first checks pass.
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        Self {
            healthy: true,
            streak: 0,
            healthy_threshold,
            unhealthy_threshold,
        }
    }

    /// Whether the endpoint takes traffic.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one check; returns the new state when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok {
            self.healthy_threshold
        } else {
            self.unhealthy_threshold
        };
        if self.streak >= needed {
            self.healthy = ok;
            self.streak = 0;
            return Some(ok);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_only_after_enough_results_in_a_row() {
        let mut h = Health::new(2, 3);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(true), None, "a success breaks the failure streak");
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), Some(false));
        assert!(!h.is_healthy());
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(true));
    }
}
