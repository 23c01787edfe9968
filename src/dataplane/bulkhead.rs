//! The bulkhead: a cap on requests in flight to one upstream.
//!
//! When a partner slows down, requests pile up on it and hold connections, memory and the
//! caller's threads. Past `max_concurrent_requests` backstop answers 503 `upstream_overloaded`
//! at once instead. A request counts from admission until its response headers arrive; a
//! WebSocket tunnel until it closes (its slot lives in the tunnel).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};

use crate::metrics::Metrics;

/// In-flight accounting (always) and limit (when configured) for one upstream.
#[derive(Debug)]
pub struct Bulkhead {
    limit: Option<u32>,
    in_flight: AtomicU32,
    gauge: IntGauge,
    rejected: IntCounter,
}

/// A slot; frees itself when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Bulkhead>);

impl Bulkhead {
    /// A bulkhead for `upstream` with an optional limit.
    pub fn new(upstream: &str, limit: Option<u32>, metrics: &Metrics) -> Arc<Self> {
        let (gauge, rejected) = metrics.upstream_load(upstream);
        Arc::new(Self {
            limit,
            in_flight: AtomicU32::new(0),
            gauge,
            rejected,
        })
    }

    /// Takes a slot, or `None` when the limit is reached.
    pub fn try_enter(self: &Arc<Self>) -> Option<Slot> {
        let previous = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.limit.is_some_and(|limit| previous >= limit) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.rejected.inc();
            return None;
        }
        self.gauge.inc();
        Some(Slot(self.clone()))
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}
