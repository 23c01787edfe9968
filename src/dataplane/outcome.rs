//! What happened to one request, handed from the proxy to the observe layer.
//!
//! The proxy attaches an [`Outcome`] to the response's extensions; the outer layer takes it off
//! to count metrics and write the access log. Names are looked up through the snapshot the
//! request used, so no string is copied per request.

use std::sync::Arc;

use crate::metrics::handles::RouteMetrics;
use crate::runtime::Snapshot;

/// The route, upstream and endpoint a request went to, and how it ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The snapshot the request was served with.
    pub snapshot: Arc<Snapshot>,
    /// Index of the matched route.
    pub route: Option<usize>,
    /// Index of the upstream of the last attempt (the route's, or a failover upstream).
    pub upstream: Option<usize>,
    /// Index of the endpoint of the last attempt within that upstream.
    pub endpoint: Option<usize>,
    /// Attempts sent upstream.
    pub attempts: u32,
    /// Why backstop answered itself, if it did.
    pub reason: Option<super::rescue::ProxyError>,
    /// Why a retry was not made, for the access log (e.g. `retry_budget_exhausted`).
    pub note: Option<&'static str>,
}

impl Outcome {
    /// A fresh outcome for a request served with `snapshot`.
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        Self {
            snapshot,
            route: None,
            upstream: None,
            endpoint: None,
            attempts: 0,
            reason: None,
            note: None,
        }
    }

    /// The metric handles of the matched route, or of "no route". `None` when a failover
    /// upstream answered: its label set is not precomputed.
    pub fn route_metrics(&self) -> Option<&RouteMetrics> {
        let Some(route) = self.route else {
            return Some(&self.snapshot.no_route_metrics);
        };
        let configured = self.snapshot.config.routes.get(route)?.upstream;
        if self.upstream.is_some_and(|u| u != configured) {
            return None;
        }
        self.snapshot.route_metrics.get(route)
    }

    fn live_upstream(&self) -> Option<&crate::dataplane::upstream::LiveUpstream> {
        let route = self.snapshot.config.routes.get(self.route?)?;
        self.snapshot
            .upstreams
            .get(self.upstream.unwrap_or(route.upstream))
            .map(|u| &**u)
    }

    /// Route name, or "" when none matched.
    pub fn route_name(&self) -> &str {
        self.route
            .and_then(|r| self.snapshot.config.routes.get(r))
            .map_or("", |r| r.name.as_str())
    }

    /// Name of the upstream that took the last attempt (else the route's), or "".
    pub fn upstream_name(&self) -> &str {
        self.live_upstream().map_or("", |u| u.name.as_str())
    }

    /// Endpoint address of the last attempt, or "".
    pub fn endpoint_address(&self) -> &str {
        match (self.live_upstream(), self.endpoint) {
            (Some(u), Some(e)) => u.endpoints.get(e).map_or("", |e| e.address.as_str()),
            _ => "",
        }
    }
}
