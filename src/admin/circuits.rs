//! `GET /admin/circuits` and `POST /admin/circuits/{upstream}/open|close|reset`.
//!
//! The list shows every breaker with its state, the transition that started its current open
//! episode (`trip`, `opened_at`) and its last transitions (`history`), and every endpoint under
//! outlier detection with its last ejections.
//!
//! Forcing a breaker is an incident tool: "stop sending to the gateway now", or "we fixed it,
//! close it". `?route=NAME` targets a route-level breaker instead of the upstream's.

use std::sync::Arc;

use http::StatusCode;
use serde::Serialize;
use tokio::time::Instant;

use crate::dataplane::breaker_cell::{BreakerCell, CircuitView, Force};
use crate::dataplane::ejection::EndpointView;
use crate::runtime::Snapshot;

/// Every breaker of the snapshot, upstream-level first.
fn cells(snapshot: &Snapshot) -> impl Iterator<Item = &Arc<BreakerCell>> {
    snapshot
        .upstreams
        .iter()
        .filter_map(|u| u.breaker.as_ref())
        .chain(snapshot.routes.iter().filter_map(|r| r.breaker.as_ref()))
}

/// Every breaker (with its original trip and history) and every endpoint under outlier
/// detection (with its ejection history).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CircuitsView {
    /// Breakers, upstream-level first.
    pub circuits: Vec<CircuitView>,
    /// Endpoints of upstreams with `outlier_detection`.
    pub endpoints: Vec<EndpointView>,
}

/// The typed view of every breaker and ejection.
pub fn view(snapshot: &Snapshot) -> CircuitsView {
    let now = Instant::now();
    CircuitsView {
        circuits: cells(snapshot).map(|c| c.view(now)).collect(),
        endpoints: snapshot
            .upstreams
            .iter()
            .filter_map(|u| u.ejection.as_ref())
            .flat_map(|e| e.describe(now))
            .collect(),
    }
}

/// The JSON list of breakers and ejections.
pub fn list(snapshot: &Snapshot) -> serde_json::Value {
    serde_json::to_value(view(snapshot)).unwrap_or(serde_json::Value::Null)
}

/// Applies `action` ("open", "close", "reset") to the breaker of `upstream` (and `route`).
pub fn force(
    snapshot: &Snapshot,
    upstream: &str,
    action: &str,
    route: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let action = match action {
        "open" => Force::Open,
        "close" => Force::Close,
        "reset" => Force::Reset,
        other => {
            let message = format!("unknown action {other:?}: expected open, close or reset");
            return (
                StatusCode::NOT_FOUND,
                serde_json::json!({ "error": message }),
            );
        }
    };
    let route = route.unwrap_or("");
    let Some(cell) = cells(snapshot).find(|c| c.upstream == upstream && c.route == route) else {
        let message = format!("no circuit breaker for upstream {upstream:?} route {route:?}");
        return (
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": message }),
        );
    };
    let now = Instant::now();
    cell.force(action, now);
    tracing::warn!(upstream, route, action = ?action, "circuit breaker forced through the admin API");
    (StatusCode::OK, cell.describe(now))
}
