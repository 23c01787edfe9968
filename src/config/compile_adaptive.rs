//! Compiles `upstreams.<name>.adaptive_concurrency`. Defaults are those of
//! [`AdaptiveConfig::default`]; config/backstop.yaml documents the same values.

use std::time::Duration;

use serde_saphyr::Spanned;

use super::compile_policy::mode;
use super::raw::RawAdaptive;
use super::validate::{duration_or, Issues};
use crate::policy::adaptive::{AdaptiveConfig, Algorithm};

/// The block, with every problem reported under `path`.
pub(crate) fn adaptive(
    issues: &mut Issues,
    path: &str,
    raw: &Spanned<RawAdaptive>,
) -> AdaptiveConfig {
    let a = &raw.value;
    let d = AdaptiveConfig::default();
    let algorithm = match a.algorithm.as_ref().map(|s| s.value.trim()) {
        None | Some("gradient") => Algorithm::Gradient,
        Some("aimd") => Algorithm::Aimd,
        Some(other) => {
            let value = a.algorithm.as_ref().expect("matched Some");
            let message = format!("unknown algorithm {other:?}: expected gradient or aimd");
            issues.unknown(
                &format!("{path}.algorithm"),
                value,
                other,
                message,
                &["gradient", "aimd"],
            );
            Algorithm::Gradient
        }
    };
    let mut count = |key: &str, value: &Option<Spanned<u32>>, default: u32| match value {
        Some(v) if v.value == 0 => {
            issues.at(&format!("{path}.{key}"), v, "must be at least 1".into());
            default
        }
        Some(v) => v.value,
        None => default,
    };
    let min_limit = count("min_limit", &a.min_limit, d.min_limit);
    let max_limit = count("max_limit", &a.max_limit, d.max_limit);
    let initial_limit = count(
        "initial_limit",
        &a.initial_limit,
        d.initial_limit.clamp(min_limit, max_limit.max(min_limit)),
    );
    if min_limit > max_limit {
        if let Some(v) = &a.min_limit {
            issues.at(
                &format!("{path}.min_limit"),
                v,
                format!("min_limit {min_limit} is above max_limit {max_limit}"),
            );
        }
    }
    if let Some(v) = &a.initial_limit {
        if !(min_limit..=max_limit).contains(&v.value) {
            issues.at(
                &format!("{path}.initial_limit"),
                v,
                format!(
                    "initial_limit must be between min_limit {min_limit} and max_limit {max_limit}"
                ),
            );
        }
    }
    let window = duration_or(
        issues,
        &format!("{path}.window"),
        a.window.as_ref(),
        d.window,
        Duration::from_secs(10),
    );
    let baseline_window = duration_or(
        issues,
        &format!("{path}.baseline_window"),
        a.baseline_window.as_ref(),
        d.baseline_window,
        Duration::from_secs(3600),
    );
    if baseline_window < window {
        if let Some(v) = &a.baseline_window {
            issues.at(
                &format!("{path}.baseline_window"),
                v,
                "baseline_window is shorter than window".into(),
            );
        }
    }
    let mut ratio =
        |key: &str, value: &Option<Spanned<f64>>, default: f64, ok: fn(f64) -> bool, want: &str| {
            match value {
                Some(v) if !ok(v.value) => {
                    issues.at(&format!("{path}.{key}"), v, format!("must be {want}"));
                    default
                }
                Some(v) => v.value,
                None => default,
            }
        };
    let tolerance = ratio(
        "tolerance",
        &a.tolerance,
        d.tolerance,
        |t| (1.0..=10.0).contains(&t),
        "between 1 and 10",
    );
    let backoff = ratio(
        "backoff",
        &a.backoff,
        d.backoff,
        |b| b > 0.0 && b < 1.0,
        "above 0 and below 1",
    );
    let latency_threshold = duration_or(
        issues,
        &format!("{path}.latency_threshold"),
        a.latency_threshold.as_ref(),
        d.latency_threshold,
        Duration::from_secs(600),
    );
    AdaptiveConfig {
        algorithm,
        min_limit,
        max_limit,
        initial_limit,
        window,
        tolerance,
        baseline_window,
        backoff,
        latency_threshold,
        mode: mode(issues, &format!("{path}.mode"), a.mode.as_ref()),
    }
}
