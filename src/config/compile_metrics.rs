//! The `metrics:` block: the bucket bounds of the request duration histogram.
//!
//! Every SLO latency threshold must be a bucket bound (so the Prometheus rules can count good
//! events from the histogram), and a route timeout that is one makes "answered in time"
//! readable from it too; `latency_buckets` lets a config choose them.

use std::time::Duration;

use super::raw::RawMetrics;
use super::validate::{duration, Issues};
use crate::metrics::DEFAULT_LATENCY_BUCKETS;

/// Most bounds: each route and upstream pair exports one series per bound.
pub const MAX_LATENCY_BUCKETS: usize = 50;

/// Compiles `metrics.latency_buckets`: non-empty, positive durations in strictly ascending
/// order, at most [`MAX_LATENCY_BUCKETS`]; the default when absent (or invalid).
pub(crate) fn latency_buckets(issues: &mut Issues, raw: Option<&RawMetrics>) -> Vec<Duration> {
    let default = DEFAULT_LATENCY_BUCKETS.to_vec();
    let Some(list) = raw.and_then(|m| m.latency_buckets.as_ref()) else {
        return default;
    };
    let path = "metrics.latency_buckets";
    if list.value.is_empty() {
        issues.at(
            path,
            list,
            "needs at least one bucket bound, e.g. [100ms, 300ms, 1s]".into(),
        );
        return default;
    }
    if list.value.len() > MAX_LATENCY_BUCKETS {
        issues.at(
            path,
            list,
            format!(
                "{} bounds is more than the maximum {MAX_LATENCY_BUCKETS}",
                list.value.len()
            ),
        );
        return default;
    }
    let before = issues.0.len();
    let mut bounds: Vec<Duration> = Vec::with_capacity(list.value.len());
    for (i, item) in list.value.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let Some(d) = duration(issues, &at, item) else {
            continue;
        };
        if let Some(&last) = bounds.last() {
            if d <= last {
                issues.at(
                    &at,
                    item,
                    format!(
                        "{} is not above the bound before it ({}): bounds must be in ascending order",
                        item.value.trim(),
                        humantime::format_duration(last)
                    ),
                );
                continue;
            }
        }
        bounds.push(d);
    }
    if issues.0.len() > before {
        return default;
    }
    bounds
}
