//! The dataplane side of outlier detection: the shared detector (lock-free on the request path,
//! see [`crate::policy::outlier`]), per-endpoint metrics, and a timer that clears the ejected
//! gauge when an ejection ends.
//!
//! History: each endpoint keeps its last [`HISTORY`] ejection events (ejected, returned) with
//! wall-clock times, shown by `/admin/circuits` and the status page. It lives in the cell, so it
//! survives a hot reload as the ejection state does; its lock is taken on ejections, returns and
//! views only.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use prometheus::{IntCounter, IntGauge};
use serde::Serialize;
use tokio::time::Instant;

use super::breaker_cell::rfc3339;
use crate::metrics::Metrics;
use crate::policy::outlier::{OutlierConfig, OutlierDetector};

/// Outlier detection for one upstream.
#[derive(Debug)]
pub struct EjectionCell {
    upstream: String,
    addresses: Vec<String>,
    detector: OutlierDetector,
    gauges: Vec<(IntGauge, IntCounter)>,
    histories: Vec<Mutex<VecDeque<Entry>>>,
}

/// Events kept per endpoint.
pub const HISTORY: usize = 8;

/// What happened to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EjectionEvent {
    /// Taken out of rotation.
    Ejected,
    /// Back in rotation.
    Returned,
}

/// Why, from a bounded set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EjectionReason {
    /// `consecutive_failures` failures in a row.
    ConsecutiveFailures,
    /// The ejection period ended.
    EjectionElapsed,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    at: SystemTime,
    event: EjectionEvent,
    reason: EjectionReason,
    consecutive_failures: u32,
    ejections: u32,
    duration: Duration,
}

/// One endpoint as `/admin/circuits` shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EndpointView {
    /// Upstream name.
    pub upstream: String,
    /// Endpoint address.
    pub endpoint: String,
    /// Out of rotation now.
    pub ejected: bool,
    /// Until its return, when ejected.
    pub seconds_until_return: Option<f64>,
    /// Times ejected since the upstream started.
    pub ejections: u32,
    /// The last events, oldest first.
    pub history: Vec<EjectionView>,
}

/// One past ejection event.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EjectionView {
    /// RFC 3339 wall-clock time, milliseconds.
    pub at: String,
    /// ejected or returned.
    pub event: EjectionEvent,
    /// Why.
    pub reason: EjectionReason,
    /// Failures in a row that caused an ejection (0 for a return).
    pub consecutive_failures: u32,
    /// Times ejected so far, this one included.
    pub ejections: u32,
    /// Length of the ejection.
    pub duration_seconds: f64,
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
            histories: addresses.iter().map(|_| Mutex::default()).collect(),
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

    fn remember(&self, endpoint: usize, entry: Entry) {
        let Some(history) = self.histories.get(endpoint) else {
            return;
        };
        // One push and pop per update: a poisoned lock still holds a consistent ring.
        let mut h: MutexGuard<'_, _> = history.lock().unwrap_or_else(|e| e.into_inner());
        h.push_back(entry);
        while h.len() > HISTORY {
            h.pop_front();
        }
    }

    /// Every endpoint with its ejection state and history.
    pub fn describe(&self, now: Instant) -> Vec<EndpointView> {
        self.addresses
            .iter()
            .enumerate()
            .map(|(i, address)| {
                let until = self.detector.ejected_until(i, now);
                let history = self.histories.get(i).map_or_else(Vec::new, |h| {
                    let h = h.lock().unwrap_or_else(|e| e.into_inner());
                    h.iter()
                        .map(|e| EjectionView {
                            at: rfc3339(e.at),
                            event: e.event,
                            reason: e.reason,
                            consecutive_failures: e.consecutive_failures,
                            ejections: e.ejections,
                            duration_seconds: e.duration.as_secs_f64(),
                        })
                        .collect()
                });
                EndpointView {
                    upstream: self.upstream.clone(),
                    endpoint: address.clone(),
                    ejected: until.is_some(),
                    seconds_until_return: until
                        .map(|u| u.saturating_duration_since(now).as_secs_f64()),
                    ejections: self.detector.ejections(i),
                    history,
                }
            })
            .collect()
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
        self.remember(
            endpoint,
            Entry {
                at: SystemTime::now(),
                event: EjectionEvent::Ejected,
                reason: EjectionReason::ConsecutiveFailures,
                consecutive_failures: ejection.consecutive_failures,
                ejections: ejection.count,
                duration: ejection.duration,
            },
        );
        let cell = self.clone();
        let until = now + ejection.duration;
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            if cell.is_available(endpoint, Instant::now()) {
                if let Some((gauge, _)) = cell.gauges.get(endpoint) {
                    gauge.set(0);
                }
                cell.remember(
                    endpoint,
                    Entry {
                        at: SystemTime::now(),
                        event: EjectionEvent::Returned,
                        reason: EjectionReason::EjectionElapsed,
                        consecutive_failures: 0,
                        ejections: ejection.count,
                        duration: ejection.duration,
                    },
                );
                tracing::info!(upstream = %cell.upstream, endpoint = cell.addresses.get(endpoint).map_or("", String::as_str), "endpoint ejection ended");
            }
        });
    }
}
