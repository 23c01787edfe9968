//! The dataplane side of outlier detection: the shared detector (lock-free on the request path,
//! see [`crate::policy::outlier`]), per-endpoint metrics, and a timer that clears the ejected
//! gauge when an ejection ends.

use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::policy::outlier::{OutlierConfig, OutlierDetector};

/// Outlier detection for one upstream.
#[derive(Debug)]
pub struct EjectionCell {
    upstream: String,
    addresses: Vec<String>,
    detector: OutlierDetector,
    gauges: Vec<(IntGauge, IntCounter)>,
}

impl EjectionCell {
    /// No endpoint ejected.
    pub fn new(
        config: OutlierConfig,
        upstream: &str,
        addresses: Vec<String>,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let gauges = addresses
            .iter()
            .map(|a| metrics.ejection(upstream, a))
            .collect();
        Arc::new(Self {
            upstream: upstream.to_owned(),
            detector: OutlierDetector::new(config, addresses.len(), Instant::now()),
            addresses,
            gauges,
        })
    }

    /// Whether `endpoint` may receive traffic now.
    pub fn is_available(&self, endpoint: usize, now: Instant) -> bool {
        self.detector.is_available(endpoint, now)
    }

    /// When `endpoint`'s ejection ends, if ejected.
    pub fn ejected_until(&self, endpoint: usize, now: Instant) -> Option<Instant> {
        self.detector.ejected_until(endpoint, now)
    }

    /// Records one call at `endpoint`.
    pub fn record(self: &Arc<Self>, endpoint: usize, failure: bool, now: Instant) {
        let Some(ejection) = self.detector.record(endpoint, failure, now) else {
            return;
        };
        let address = self.addresses.get(endpoint).map_or("", String::as_str);
        tracing::warn!(
            upstream = %self.upstream,
            endpoint = address,
            ejection = ejection.count,
            duration = %humantime::format_duration(ejection.duration),
            "endpoint ejected after consecutive failures"
        );
        if let Some((gauge, counter)) = self.gauges.get(endpoint) {
            gauge.set(1);
            counter.inc();
        }
        let cell = self.clone();
        let until = now + ejection.duration;
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            if cell.is_available(endpoint, Instant::now()) {
                if let Some((gauge, _)) = cell.gauges.get(endpoint) {
                    gauge.set(0);
                }
                tracing::info!(upstream = %cell.upstream, endpoint = cell.addresses.get(endpoint).map_or("", String::as_str), "endpoint ejection ended");
            }
        });
    }
}
