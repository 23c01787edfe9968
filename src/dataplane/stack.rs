//! The order in which policies wrap the proxy, written once.
//!
//! Outermost first:
//! 1. observe: request id, in-flight, metrics, access log (sees what the client saw)
//! 2. proxy: route match, endpoint choice, forward
//!
//! Later policies slot in between, in this order: rate limit (reject before any work),
//! total deadline, retry with budget, circuit breaker and outlier ejection per attempt.

use std::net::IpAddr;
use std::sync::Arc;

use tower::ServiceBuilder;

use super::activity::ListenerLoad;
use super::observe::{Observe, ObserveLayer};
use super::proxy::Proxy;
use crate::metrics::Metrics;
use crate::runtime::SnapshotHandle;

/// The service stack for one downstream connection.
pub type Stack = Observe<Proxy>;

/// Builds the stack for a connection from `client_ip`.
pub fn build(
    snapshots: &SnapshotHandle,
    metrics: &Metrics,
    client_ip: IpAddr,
    load: &Arc<ListenerLoad>,
) -> Stack {
    ServiceBuilder::new()
        .layer(ObserveLayer::new(metrics.clone()))
        .service(Proxy::new(snapshots.clone(), client_ip, load.clone()))
}
