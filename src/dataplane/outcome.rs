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
    /// Index of the endpoint of the last attempt within the route's upstream.
    pub endpoint: Option<usize>,
    /// Attempts sent upstream.
    pub attempts: u32,
    /// Why backstop answered itself, if it did.
    pub reason: Option<&'static str>,
}

impl Outcome {
    /// A fresh outcome for a request served with `snapshot`.
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        Self {
            snapshot,
            route: None,
            endpoint: None,
            attempts: 0,
            reason: None,
        }
    }

    /// The metric handles of the matched route, or of "no route".
    pub fn route_metrics(&self) -> &RouteMetrics {
        self.route
            .and_then(|r| self.snapshot.route_metrics.get(r))
            .unwrap_or(&self.snapshot.no_route_metrics)
    }

    /// Route name, or "" when none matched.
    pub fn route_name(&self) -> &str {
        self.route
            .and_then(|r| self.snapshot.config.routes.get(r))
            .map_or("", |r| r.name.as_str())
    }

    /// Upstream name, or "".
    pub fn upstream_name(&self) -> &str {
        self.route
            .and_then(|r| self.snapshot.config.routes.get(r))
            .and_then(|r| self.snapshot.upstreams.get(r.upstream))
            .map_or("", |u| u.name.as_str())
    }

    /// Endpoint address of the last attempt, or "".
    pub fn endpoint_address(&self) -> &str {
        let upstream = self
            .route
            .and_then(|r| self.snapshot.config.routes.get(r))
            .and_then(|r| self.snapshot.upstreams.get(r.upstream));
        match (upstream, self.endpoint) {
            (Some(u), Some(e)) => u.endpoints.get(e).map_or("", |e| e.address.as_str()),
            _ => "",
        }
    }
}
