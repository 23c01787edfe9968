//! The per-request context every stage shares: the snapshot the request is served with, its
//! clock and deadline, and the [`Outcome`] the stages fill in for the observe stage.

use std::sync::Arc;

use tokio::time::Instant;

use super::outcome::Outcome;
use crate::dataplane::upstream::LiveUpstream;
use crate::metrics::handles::RouteMetrics;
use crate::runtime::{LiveRoute, Snapshot};

/// One request on its way through the pipeline.
#[derive(Debug)]
pub struct Exchange {
    /// The snapshot loaded once for this request; every stage uses it.
    pub snapshot: Arc<Snapshot>,
    /// When the request's head was handed to the pipeline.
    pub started: Instant,
    /// What happened, for metrics, SLOs and the access log.
    pub outcome: Outcome,
}

impl Exchange {
    /// A fresh exchange on `snapshot`.
    pub fn new(snapshot: Arc<Snapshot>, started: Instant) -> Self {
        Self {
            snapshot,
            started,
            outcome: Outcome::default(),
        }
    }

    /// The matched route. Only stages after route matching call it.
    ///
    /// # Panics
    /// Before a route matched: a stage out of order is a bug, not an input.
    pub fn route(&self) -> &LiveRoute {
        let index = self
            .outcome
            .route
            .expect("a route matched before this stage");
        &self.snapshot.routes[index]
    }

    /// The route's total deadline.
    pub fn deadline(&self) -> Instant {
        self.started + self.route().config.timeout
    }

    /// The upstream of the last attempt, else the route's.
    fn live_upstream(&self) -> Option<&LiveUpstream> {
        let route = self.snapshot.routes.get(self.outcome.route?)?;
        self.snapshot
            .upstreams
            .get(self.outcome.upstream.unwrap_or(route.config.upstream))
            .map(|u| &**u)
    }

    /// The metric handles of the matched route, or of "no route". `None` when a failover
    /// upstream answered: its label set is not precomputed.
    pub fn route_metrics(&self) -> Option<&RouteMetrics> {
        let Some(route) = self.outcome.route else {
            return Some(&self.snapshot.no_route_metrics);
        };
        let live = self.snapshot.routes.get(route)?;
        if self
            .outcome
            .upstream
            .is_some_and(|u| u != live.config.upstream)
        {
            return None;
        }
        Some(&live.metrics)
    }

    /// Route name, or "" when none matched.
    pub fn route_name(&self) -> &str {
        self.outcome
            .route
            .and_then(|r| self.snapshot.routes.get(r))
            .map_or("", |r| r.config.name.as_str())
    }

    /// Name of the upstream that took the last attempt (else the route's), or "".
    pub fn upstream_name(&self) -> &str {
        self.live_upstream().map_or("", |u| u.name.as_str())
    }

    /// The names of upstream `u` and its endpoint `e`, or "" for either that does not exist.
    pub fn names(&self, u: usize, e: usize) -> (&str, &str) {
        match self.snapshot.upstreams.get(u) {
            Some(up) => (
                up.name.as_str(),
                up.endpoints.get(e).map_or("", |e| e.address.as_str()),
            ),
            None => ("", ""),
        }
    }

    /// Endpoint address of the last attempt, or "".
    pub fn endpoint_address(&self) -> &str {
        match (self.live_upstream(), self.outcome.endpoint) {
            (Some(u), Some(e)) => u.endpoints.get(e).map_or("", |e| e.address.as_str()),
            _ => "",
        }
    }
}
