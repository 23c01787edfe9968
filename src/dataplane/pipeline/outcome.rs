//! What happened to one request, filled in by the stages and read by the observe stage.
//!
//! Indexes, not names: names are looked up through the request's snapshot when the access
//! log or a metric needs them, so no string is copied per request.

use crate::dataplane::rescue::ProxyError;

/// The route, upstream and endpoint a request went to, and how it ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Index of the matched route.
    pub route: Option<usize>,
    /// Index of the upstream of the last attempt (the route's, or a failover upstream).
    pub upstream: Option<usize>,
    /// Index of the endpoint of the last attempt within that upstream.
    pub endpoint: Option<usize>,
    /// Attempts sent upstream.
    pub attempts: u32,
    /// Why backstop answered itself, if it did.
    pub reason: Option<ProxyError>,
    /// Why a retry was not made, for the access log (e.g. `retry_budget_exhausted`).
    pub note: Option<&'static str>,
}
