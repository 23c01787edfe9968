//! Metrics of the proxy listener's connections.

use prometheus::{IntCounter, IntCounterVec, IntGauge};

use super::names;
use super::Metrics;

/// Handles for the listener's connection metrics, registered once per process.
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    /// Open client connections.
    pub open: IntGauge,
    /// The connection limit in force.
    pub limit: IntGauge,
    /// Times the limit was reached.
    pub saturated: IntCounter,
    closed: IntCounterVec,
}

impl ServerMetrics {
    /// Registers (or, on a second listener in one registry, reuses) the families.
    pub fn new(metrics: &Metrics) -> Self {
        let registry = metrics.registry();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            match registry.register(Box::new(g.clone())) {
                Ok(()) => g,
                Err(prometheus::Error::AlreadyReg) => g,
                Err(e) => panic!("cannot register {name}: {e}"),
            }
        };
        let closed = IntCounterVec::new(
            prometheus::Opts::new(
                names::CONNECTIONS_CLOSED_TOTAL,
                "Client connections closed, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(closed.clone()));
        let saturated = IntCounter::new(
            names::CONNECTIONS_SATURATED_TOTAL,
            "Times the proxy listener reached max_connections and stopped accepting.",
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(saturated.clone()));
        Self {
            open: gauge(names::CONNECTIONS_OPEN, "Client connections open."),
            limit: gauge(
                names::CONNECTIONS_LIMIT,
                "The proxy listener's connection limit.",
            ),
            saturated,
            closed,
        }
    }

    /// Counts a closed connection.
    pub fn closed(&self, reason: &str) {
        self.closed.with_label_values(&[reason]).inc();
    }
}
