//! `GET /`: the status page an on-call engineer opens first.
//!
//! Plain HTML with inline CSS, no external assets and no JavaScript; it refreshes itself every
//! five seconds. Every route and upstream with its live request rate, error rate and p99 (over
//! the last minute), breaker state with the reason of its last transition, when it opened and
//! what tripped it, its last transitions (folded), endpoint health and ejections with their
//! history, rate-limit rejections and SLO budget bars.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::handles::RouteTotals;
use crate::runtime::{Snapshot, SnapshotHandle};

const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const KEEP: usize = 13; // one minute of samples

/// Per-route totals sampled every few seconds, so the page can show rates over the last minute.
#[derive(Debug, Default)]
pub struct Sampler {
    samples: Mutex<VecDeque<(Instant, HashMap<String, RouteTotals>)>>,
}

impl Sampler {
    /// Starts sampling `snapshots` in the background.
    pub fn start(snapshots: SnapshotHandle) -> Arc<Self> {
        let sampler = Arc::new(Self::default());
        let weak = Arc::downgrade(&sampler);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                let Some(sampler) = weak.upgrade() else {
                    return;
                };
                sampler.sample(&snapshots.load());
            }
        });
        sampler
    }

    fn sample(&self, snapshot: &Snapshot) {
        let totals = snapshot
            .routes
            .iter()
            .map(|r| (r.config.name.clone(), r.metrics.totals()))
            .collect();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((Instant::now(), totals));
        while samples.len() > KEEP {
            samples.pop_front();
        }
    }

    /// (requests/s, error share, p99 in seconds) of `route` over the sampled span, measured
    /// against `now` totals; the p99 is interpolated within its bucket and at most `cap`.
    fn live(&self, route: &str, now: &RouteTotals, cap: f64) -> Option<(f64, f64, Option<f64>)> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let (at, oldest) = samples.front()?;
        let old = oldest.get(route).cloned().unwrap_or_default();
        let secs = at.elapsed().as_secs_f64().max(1.0);
        let count = now.count.saturating_sub(old.count);
        let errors = now.errors.saturating_sub(old.errors);
        let share = if count == 0 {
            0.0
        } else {
            errors as f64 / count as f64
        };
        let span: Vec<(f64, u64)> = now
            .buckets
            .iter()
            .enumerate()
            .map(|(i, (bound, cumulative))| {
                let before = old.buckets.get(i).map_or(0, |b| b.1);
                (*bound, cumulative.saturating_sub(before))
            })
            .collect();
        let p99 = quantile(0.99, &span, count, cap);
        Some((count as f64 / secs, share, p99))
    }
}

/// The `q` quantile (0-1) of a histogram the way Prometheus' `histogram_quantile` computes it:
/// the bucket holding the rank `q * total`, interpolated linearly inside it (from 0 for the
/// first bucket), then capped at `cap`.
///
/// `buckets` are (upper bound in seconds, cumulative count), ascending, without `+Inf`;
/// `total` counts every observation, those above the last bound too. A rank in the `+Inf`
/// bucket gives the last bound, as in Prometheus. `None` without observations. The cap is the
/// route's timeout: backstop has answered by then, so a p99 above it would be an artefact of a
/// wide bucket, not a latency anyone saw.
pub fn quantile(q: f64, buckets: &[(f64, u64)], total: u64, cap: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(upper, cumulative) in buckets {
        if cumulative as f64 >= rank && cumulative > below {
            let inside = (cumulative - below) as f64;
            let value = lower + (upper - lower) * ((rank - below as f64) / inside);
            return Some(value.min(cap));
        }
        (lower, below) = (upper, cumulative);
    }
    buckets.last().map(|&(bound, _)| bound.min(cap))
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn ms(seconds: f64) -> String {
    if seconds < 0.001 {
        format!("{:.0} µs", seconds * 1e6)
    } else {
        format!("{:.0} ms", seconds * 1e3)
    }
}

/// The whole page.
pub fn render(snapshot: &Snapshot, sampler: &Sampler) -> String {
    let now = Instant::now();
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>backstop status</title><style>
body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2430;background:#f6f7f9}}
h1{{font-size:20px;margin:0 0 4px}} h2{{font-size:16px;margin:28px 0 8px}}
.meta{{color:#5b6575}} table{{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0001}}
th,td{{text-align:left;padding:6px 10px;border-bottom:1px solid #e6e8ec;vertical-align:top}} th{{background:#eef0f4;font-weight:600}}
.state{{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:12px}}
.closed,.healthy{{background:#d9f2e3;color:#12613a}} .open,.unhealthy,.ejected{{background:#fbdada;color:#8a1c1c}} .half_open{{background:#fff0c2;color:#7a5a00}}
.bar{{background:#e6e8ec;border-radius:4px;width:220px;height:12px;display:inline-block;vertical-align:middle}}
.fill{{height:12px;border-radius:4px}} .reason{{color:#5b6575;font-size:12px}}
</style></head><body>
<h1>backstop</h1><div class="meta">config generation {} · sha256 {} · refreshes every 5s · rates over the last minute</div>
"#,
        snapshot.generation,
        esc(&snapshot.config.sha256[..12.min(snapshot.config.sha256.len())])
    );
    routes(&mut h, snapshot, sampler, now);
    upstreams(&mut h, snapshot, now);
    slos(&mut h, snapshot, now);
    h.push_str("</body></html>\n");
    h
}

fn breaker_cell(
    cell: Option<&Arc<crate::dataplane::breaker_cell::BreakerCell>>,
    now: Instant,
) -> String {
    let Some(cell) = cell else {
        return "—".into();
    };
    let v = cell.view(now);
    let state = v.state.as_str();
    let mode = if v.mode == "shadow" { " (shadow)" } else { "" };
    let mut h = format!(
        r#"<span class="state {state}">{state}</span>{mode}<div class="reason">{}</div>"#,
        esc(&v.reason)
    );
    if let Some(trip) = &v.trip {
        let _ = write!(
            h,
            r#"<div class="reason">opened {} · tripped by {}: {}</div>"#,
            esc(&trip.at),
            trip.reason.as_str(),
            esc(&trip.detail)
        );
    }
    if !v.history.is_empty() {
        let _ = write!(
            h,
            r#"<details><summary class="reason">last {} transition(s)</summary>"#,
            v.history.len()
        );
        for t in v.history.iter().rev() {
            let _ = write!(
                h,
                r#"<div class="reason">{} {} → {} {} ({} requests, {} failures, {} slow, {} in a row)</div>"#,
                esc(&t.at),
                t.from.as_str(),
                t.to.as_str(),
                t.reason.as_str(),
                t.window.requests,
                t.window.failures,
                t.window.slow,
                t.consecutive_failures
            );
        }
        h.push_str("</details>");
    }
    h
}

/// The ejection history of an endpoint, newest first, folded.
fn ejection_history(view: Option<&crate::dataplane::ejection::EndpointView>) -> String {
    let Some(v) = view.filter(|v| !v.history.is_empty()) else {
        return String::new();
    };
    let mut h = format!(
        r#"<details><summary class="reason">ejected {} time(s)</summary>"#,
        v.ejections
    );
    for e in v.history.iter().rev() {
        let event = match e.event {
            crate::dataplane::ejection::EjectionEvent::Ejected => format!(
                "ejected for {:.0}s after {} failures in a row",
                e.duration_seconds, e.consecutive_failures
            ),
            crate::dataplane::ejection::EjectionEvent::Returned => "returned".to_string(),
        };
        let _ = write!(h, r#"<div class="reason">{} {event}</div>"#, esc(&e.at));
    }
    h.push_str("</details>");
    h
}

fn routes(h: &mut String, snapshot: &Snapshot, sampler: &Sampler, now: Instant) {
    h.push_str("<h2>Routes</h2><table><tr><th>route</th><th>upstream</th><th>req/s</th><th>5xx</th><th>p99</th><th>breaker</th><th>rate limited</th></tr>\n");
    for live in &snapshot.routes {
        let route = &live.config;
        let upstream = &snapshot.upstreams[route.upstream];
        let totals = live.metrics.totals();
        let (rps, errors, p99) =
            match sampler.live(&route.name, &totals, route.timeout.as_secs_f64()) {
                Some((rps, share, p99)) => (
                    format!("{rps:.1}"),
                    format!("{:.1}%", share * 100.0),
                    p99.map_or("—".into(), ms),
                ),
                None => ("…".into(), "…".into(), "…".into()),
            };
        let breaker = live.breaker.as_ref().or(upstream.breaker.as_ref());
        let limited = live
            .limiter
            .as_ref()
            .map_or("—".into(), |l| l.rejected().to_string());
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{rps}</td><td>{errors}</td><td>{p99}</td><td>{}</td><td>{limited}</td></tr>",
            esc(&route.name),
            esc(&upstream.name),
            breaker_cell(breaker, now)
        );
    }
    h.push_str("</table>\n");
}

fn upstreams(h: &mut String, snapshot: &Snapshot, now: Instant) {
    h.push_str("<h2>Upstreams</h2><table><tr><th>upstream</th><th>breaker</th><th>in flight</th><th>endpoints</th></tr>\n");
    for u in &snapshot.upstreams {
        let ejections = u.ejection.as_ref().map(|x| x.describe(now));
        let mut endpoints = String::new();
        for (i, e) in u.endpoints.iter().enumerate() {
            let ejected = u.ejection.as_ref().and_then(|x| x.ejected_until(i, now));
            let (class, label) = match (e.is_healthy(), ejected) {
                (false, _) => ("unhealthy", "unhealthy".to_string()),
                (true, Some(until)) => (
                    "ejected",
                    format!(
                        "ejected {:.0}s",
                        until.saturating_duration_since(now).as_secs_f64()
                    ),
                ),
                (true, None) => ("healthy", "healthy".to_string()),
            };
            let _ = write!(
                endpoints,
                r#"<div>{} <span class="state {class}">{label}</span> <span class="reason">{} in flight · ewma {}</span></div>"#,
                esc(&e.address),
                e.load.in_flight(),
                ms(e.load.ewma().as_secs_f64())
            );
            endpoints.push_str(&ejection_history(ejections.as_ref().and_then(|x| x.get(i))));
        }
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{endpoints}</td></tr>",
            esc(&u.name),
            breaker_cell(u.breaker.as_ref(), now),
            u.bulkhead.in_flight()
        );
    }
    h.push_str("</table>\n");
}

fn slos(h: &mut String, snapshot: &Snapshot, now: Instant) {
    if snapshot.slos.all().is_empty() {
        return;
    }
    h.push_str("<h2>SLO error budgets</h2><table><tr><th>slo</th><th>objective</th><th>budget remaining (this process)</th><th>burn 5m / 1h</th></tr>\n");
    for slo in snapshot.slos.all() {
        let d = slo.describe(now);
        let left = d["error_budget_remaining"].as_f64().unwrap_or(1.0);
        let width = (left.clamp(0.0, 1.0) * 100.0).round();
        let color = if left > 0.5 {
            "#2e9e5b"
        } else if left > 0.0 {
            "#d6a100"
        } else {
            "#c23b3b"
        };
        let _ = writeln!(
            h,
            r#"<tr><td>{}</td><td>{:.2}%</td><td><span class="bar"><span class="fill" style="display:block;width:{width}%;background:{color}"></span></span> {:.1}%</td><td>{:.2} / {:.2}</td></tr>"#,
            esc(&slo.config.name),
            slo.config.objective * 100.0,
            left * 100.0,
            d["burn_rate"]["5m"].as_f64().unwrap_or(0.0),
            d["burn_rate"]["1h"].as_f64().unwrap_or(0.0)
        );
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::quantile;

    const B: [(f64, u64); 4] = [(0.1, 0), (0.5, 0), (1.0, 0), (2.5, 0)];

    fn with(counts: [u64; 4]) -> Vec<(f64, u64)> {
        let mut cumulative = 0;
        B.iter()
            .zip(counts)
            .map(|(&(bound, _), n)| {
                cumulative += n;
                (bound, cumulative)
            })
            .collect()
    }

    #[test]
    fn interpolates_inside_the_bucket_like_histogram_quantile() {
        // 100 observations, all in (0.5, 1.0]: p99 is 99% of the way through that bucket.
        let b = with([0, 0, 100, 0]);
        let p99 = quantile(0.99, &b, 100, 30.0).unwrap();
        assert!((p99 - 0.995).abs() < 1e-9, "{p99}");
        // 90 fast, 10 in (1.0, 2.5]: rank 99 is the 9th of 10 there.
        let b = with([90, 0, 0, 10]);
        let p99 = quantile(0.99, &b, 100, 30.0).unwrap();
        assert!((p99 - (1.0 + 1.5 * 0.9)).abs() < 1e-9, "{p99}");
        // The first bucket interpolates from 0.
        let p50 = quantile(0.5, &with([10, 0, 0, 0]), 10, 30.0).unwrap();
        assert!((p50 - 0.05).abs() < 1e-9, "{p50}");
        assert_eq!(quantile(0.99, &with([0, 0, 0, 0]), 0, 30.0), None);
    }

    #[test]
    fn never_above_the_cap() {
        // Timeouts at 2.0x s land in (1.0, 2.5]; the route's timeout is 2s.
        let b = with([0, 0, 0, 10]);
        assert_eq!(quantile(0.99, &b, 10, 2.0), Some(2.0));
        // Observations above the last bound give the last bound, capped too.
        assert_eq!(quantile(0.99, &b, 1000, 30.0), Some(2.5));
        assert_eq!(quantile(0.99, &b, 1000, 2.0), Some(2.0));
        for total in 1..50 {
            for counts in [[total, 0, 0, 0], [0, total, 0, 0], [0, 0, 0, total]] {
                let p = quantile(0.99, &with(counts), total, 0.2).unwrap();
                assert!(p <= 0.2, "{counts:?}: {p}");
            }
        }
    }
}
