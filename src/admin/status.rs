//! `GET /`: the status page an on-call engineer opens first.
//!
//! Plain HTML with inline CSS, no external assets and no JavaScript; it refreshes itself every
//! five seconds. Counts are over the last minute (the [`Sampler`]'s window, named on the page),
//! never lifetime totals under a "last minute" header. Per route: request rate, answers by
//! class, errors split into "backstop refused" (circuit open, overloaded, rate limited: its own
//! 503s and 429s) and "upstream failed" (the upstream's 5xx, resets as 502, timeouts as 504),
//! retries, failovers, `outcome_unknown`, p99, the breaker with its open-since time, what
//! tripped it and its last transitions, and the windowed rate-limit count. Per upstream: its
//! own refusals, failed attempts and endpoint health with ejection history. SLO budgets as what
//! is left of the allowance the window's events give, red and "overspent by" when negative,
//! with a note while the process has seen less than the window. After each reload, a line
//! with what changed.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use super::sampler::Sampler;
use super::sampler::{Counts, Key, Window};
use crate::metrics::handles::RouteTotals;
use crate::runtime::Snapshot;

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
    sampler.note_generation(snapshot);
    let counts = Counts::read(&snapshot.metrics);
    let span = sampler
        .with_window(&counts, |w, _| w.span)
        .unwrap_or_default();
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>backstop status</title><style>
body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2430;background:#f6f7f9}}
h1{{font-size:20px;margin:0 0 4px}} h2{{font-size:16px;margin:28px 0 8px}}
.meta{{color:#5b6575}} table{{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0001}}
th,td{{text-align:left;padding:6px 10px;border-bottom:1px solid #e6e8ec;vertical-align:top}} th{{background:#eef0f4;font-weight:600}}
th small{{font-weight:400;color:#5b6575}}
.state{{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:12px}}
.closed,.healthy{{background:#d9f2e3;color:#12613a}} .open,.unhealthy,.ejected{{background:#fbdada;color:#8a1c1c}} .half_open{{background:#fff0c2;color:#7a5a00}}
.bar{{background:#e6e8ec;border-radius:4px;width:220px;height:12px;display:inline-block;vertical-align:middle}}
.fill{{display:block;height:12px;border-radius:4px}} .fill.ok{{background:#2e9e5b}} .fill.low{{background:#d6a100}} .fill.over{{background:#c23b3b}}
.over-text{{color:#8a1c1c;font-weight:600}} .reason{{color:#5b6575;font-size:12px}}
.refused{{color:#7a5a00}} .failed{{color:#8a1c1c}} .reload code{{background:#eef0f4;padding:0 4px;border-radius:3px}}
</style></head><body>
<h1>backstop</h1><div class="meta">config generation {} · sha256 {} · up {} · refreshes every 5s · <span data-k="window">counts over the last {}</span></div>
"#,
        snapshot.generation,
        esc(&snapshot.config.sha256[..12.min(snapshot.config.sha256.len())]),
        human(sampler.uptime()),
        human(span),
    );
    reloads(&mut h, sampler);
    routes(&mut h, snapshot, sampler, &counts, now);
    upstreams(&mut h, snapshot, sampler, &counts, now);
    slos(&mut h, snapshot, sampler.uptime(), now);
    h.push_str("</body></html>\n");
    h
}

/// A duration for people: whole seconds below a minute, else the two largest units.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, m) if seconds == 0 => format!("{m}m"),
        (0, 0, m) => format!("{m}m {seconds}s"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// "What changed" for each of the last reloads, newest first.
fn reloads(h: &mut String, sampler: &Sampler) {
    let reloads = sampler.reloads();
    if reloads.is_empty() {
        return;
    }
    h.push_str("<h2>Recent reloads</h2><ul>\n");
    for r in reloads {
        let what = if r.lines.is_empty() {
            "no setting the admin view shows changed".to_owned()
        } else {
            r.lines
                .iter()
                .map(|l| format!("<code>{}</code>", esc(l)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let more = if r.more > 0 {
            format!(
                " (and {} more: see <code>backstop validate --diff</code>)",
                r.more
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            h,
            r#"<li class="reload" data-generation="{}">generation {} (seen {}): what changed: {what}{more}</li>"#,
            r.generation,
            r.generation,
            esc(&r.seen_at)
        );
    }
    h.push_str("</ul>\n");
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

/// A number cell a test (or a scraper) can find: `data-k="ROW:COLUMN"`.
fn cell(row: &str, column: &str, content: &str) -> String {
    format!(r#"<td data-k="{}:{column}">{content}</td>"#, esc(row))
}

/// Backstop's own refusals and the upstream's failures of one route over the window.
#[derive(Debug, Default, PartialEq, Eq)]
struct Split {
    answered: [u64; 5], // 1xx..5xx
    circuit_open: u64,
    overloaded: u64,
    rate_limited: u64,
    rate_limited_shadow: u64,
    upstream_5xx: u64,
    upstream_reset: u64,
    upstream_timeout: u64,
    retries: u64,
    failovers: u64,
    outcome_unknown: u64,
}

impl Split {
    fn refused(&self) -> u64 {
        self.circuit_open + self.overloaded + self.rate_limited
    }
    fn failed(&self) -> u64 {
        self.upstream_5xx + self.upstream_reset + self.upstream_timeout
    }
}

/// Splits a route's answers: `circuit_open`, `upstream_overloaded` and
/// `adaptive_concurrency_limited` are backstop's own 503s, `rate_limited` its 429s (all read
/// from their own counters); what is left of the 5xx came from (or is about) the upstream:
/// 502 a reset or unusable connection, 504 a timeout, others the upstream's own status.
///
/// Refusals come from `backstop_refused_total{route,reason}`, which counts each refused
/// request under its own route whichever breaker or limit refused it (the route's, or a
/// shared upstream's), so the split is exact on shared upstreams too.
fn split(w: &Window<'_>, route: &str) -> Split {
    let status = |from: u16, to: u16| {
        w.delta_sum(|k| matches!(k, Key::Status { route: r, status } if r == route && (from..=to).contains(status)))
    };
    let mut s = Split::default();
    for (i, class) in s.answered.iter_mut().enumerate() {
        let base = 100 * (i as u16 + 1);
        *class = status(base, base + 99);
    }
    let refused = |reason: &str| {
        w.delta(&Key::Refused {
            route: route.to_owned(),
            reason: reason.to_owned(),
        })
    };
    // Counted per route whichever breaker or limit refused (the route's or its upstream's).
    s.circuit_open = refused("circuit_open") + refused("circuit_half_open");
    s.overloaded = refused("upstream_overloaded") + refused("adaptive_concurrency_limited");
    s.rate_limited = w.delta(&Key::RateLimited {
        route: route.to_owned(),
        enforce: true,
    });
    s.rate_limited_shadow = w.delta(&Key::RateLimited {
        route: route.to_owned(),
        enforce: false,
    });
    let own_503 = s.circuit_open + s.overloaded;
    s.upstream_reset = status(502, 502);
    s.upstream_timeout = status(504, 504);
    s.upstream_5xx = s.answered[4]
        .saturating_sub(s.upstream_reset + s.upstream_timeout)
        .saturating_sub(own_503);
    s.retries = w.delta(&Key::Retries(route.to_owned()));
    s.failovers = w.delta(&Key::Failovers(route.to_owned()));
    s.outcome_unknown = w.delta(&Key::OutcomeUnknown(route.to_owned()));
    s
}

fn routes(h: &mut String, snapshot: &Snapshot, sampler: &Sampler, counts: &Counts, now: Instant) {
    h.push_str("<h2>Routes</h2><table><tr><th>route</th><th>upstream</th><th>req/s</th><th>answers <small>2xx / 4xx / 5xx</small></th><th>backstop refused <small>circuit open, overloaded, rate limited</small></th><th>upstream failed <small>5xx, reset, timeout</small></th><th>retries</th><th>failovers</th><th>outcome unknown</th><th>p99</th><th>breaker</th><th>rate limited</th></tr>\n");
    for live in &snapshot.routes {
        let route = &live.config;
        let upstream = &snapshot.upstreams[route.upstream];
        let totals = live.metrics.totals();
        let row = sampler.with_window(counts, |w, old| {
            let s = split(w, &route.name);
            let p99 = p99(&totals, &old(&route.name), route.timeout.as_secs_f64());
            let all: u64 = s.answered.iter().sum();
            (s, all as f64 / w.span.as_secs_f64().max(1.0), p99)
        });
        let name = &route.name;
        let cells = match row {
            Some((s, rps, p99)) => {
                let refused = format!(
                    r#"<span class="refused">{}</span><div class="reason">circuit open {} · overloaded {} · rate limited {}</div>"#,
                    s.refused(),
                    s.circuit_open,
                    s.overloaded,
                    s.rate_limited,
                );
                let failed = format!(
                    r#"<span class="failed">{}</span><div class="reason">5xx {} · reset {} · timeout {}</div>"#,
                    s.failed(),
                    s.upstream_5xx,
                    s.upstream_reset,
                    s.upstream_timeout
                );
                let shadow = if s.rate_limited_shadow > 0 {
                    format!(
                        r#"<div class="reason">{} more in shadow mode</div>"#,
                        s.rate_limited_shadow
                    )
                } else {
                    String::new()
                };
                let lifetime = live.limiter.as_ref().map_or(String::new(), |l| {
                    format!(
                        r#"<div class="reason">{} since the limiter started</div>"#,
                        l.rejected()
                    )
                });
                [
                    cell(name, "rps", &format!("{rps:.1}")),
                    cell(
                        name,
                        "answers",
                        &format!("{} / {} / {}", s.answered[1], s.answered[3], s.answered[4]),
                    ),
                    cell(name, "refused", &refused),
                    cell(name, "failed", &failed),
                    cell(
                        name,
                        "retries",
                        &match &live.burn {
                            Some(g) if g.is_burning() => format!(
                                r#"{}<div class="reason burning">cut: SLO burning (when_burning)</div>"#,
                                s.retries
                            ),
                            _ => s.retries.to_string(),
                        },
                    ),
                    cell(name, "failovers", &s.failovers.to_string()),
                    cell(name, "outcome_unknown", &s.outcome_unknown.to_string()),
                    cell(name, "p99", &p99.map_or("—".into(), ms)),
                    cell(
                        name,
                        "breaker",
                        &breaker_cell(live.breaker.as_ref().or(upstream.breaker.as_ref()), now),
                    ),
                    cell(
                        name,
                        "rate_limited",
                        &if live.limiter.is_some() || s.rate_limited > 0 {
                            format!("{}{shadow}{lifetime}", s.rate_limited)
                        } else {
                            "—".into()
                        },
                    ),
                ]
                .concat()
            }
            None => "<td colspan=\"10\">…</td>".into(),
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td>{cells}</tr>",
            esc(name),
            esc(&upstream.name),
        );
    }
    h.push_str("</table>\n");
}

/// The p99 between the oldest sample and now, within its bucket, at most `cap`.
fn p99(now: &RouteTotals, old: &RouteTotals, cap: f64) -> Option<f64> {
    let count = now.count.saturating_sub(old.count);
    let span: Vec<(f64, u64)> = now
        .buckets
        .iter()
        .enumerate()
        .map(|(i, (bound, cumulative))| {
            let before = old.buckets.get(i).map_or(0, |b| b.1);
            (*bound, cumulative.saturating_sub(before))
        })
        .collect();
    quantile(0.99, &span, count, cap)
}

fn upstreams(
    h: &mut String,
    snapshot: &Snapshot,
    sampler: &Sampler,
    counts: &Counts,
    now: Instant,
) {
    h.push_str("<h2>Upstreams</h2><table><tr><th>upstream</th><th>breaker</th><th>in flight</th><th>backstop refused <small>breaker, concurrency limits</small></th><th>failed attempts <small>5xx, connect, timeout, error</small></th><th>endpoints</th></tr>\n");
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
        let name = &u.name;
        let window = sampler.with_window(counts, |w, _| {
            let breaker = w.delta(&Key::CircuitRejected { upstream: name.clone(), route: String::new() });
            let limits = w.delta(&Key::Overloaded(name.clone())) + w.delta(&Key::AdaptiveRejected(name.clone()));
            let attempts = |result: &str| w.delta(&Key::Attempts { upstream: name.clone(), result: result.to_owned() });
            let failed = ["5xx", "connect_failure", "timeout", "error"].map(attempts);
            (
                format!(r#"<span class="refused">{}</span><div class="reason">breaker {breaker} · concurrency {limits}</div>"#, breaker + limits),
                format!(
                    r#"<span class="failed">{}</span><div class="reason">5xx {} · connect {} · timeout {} · error {}</div>"#,
                    failed.iter().sum::<u64>(),
                    failed[0], failed[1], failed[2], failed[3]
                ),
            )
        });
        let (refused, failed) = window.unwrap_or_else(|| ("…".into(), "…".into()));
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td>{}{}<td>{endpoints}</td></tr>",
            esc(name),
            breaker_cell(u.breaker.as_ref(), now),
            u.bulkhead.in_flight(),
            cell(name, "refused", &refused),
            cell(name, "failed", &failed),
        );
    }
    h.push_str("</table>\n");
}

/// One SLO's budget as the page shows it: what is left of the allowance its window's events
/// give (`(1 - objective) x events`), red when overspent.
#[derive(Debug, PartialEq)]
struct Budget {
    /// `ok`, `low` or `over`: the bar's class.
    class: &'static str,
    /// Bar width in percent.
    width: f64,
    text: String,
}

fn budget(objective: f64, good: u64, bad: u64) -> Budget {
    let events = good + bad;
    if events == 0 {
        return Budget {
            class: "ok",
            width: 100.0,
            text: "no events yet".into(),
        };
    }
    let allowed = (1.0 - objective) * events as f64;
    let remaining = 1.0 - bad as f64 / allowed;
    if remaining < 0.0 {
        return Budget {
            class: "over",
            width: 100.0,
            text: format!(
                r#"<span class="over-text">overspent by {:.1}%</span> · {bad} bad of {} allowed ({:.1}× the allowance)"#,
                -remaining * 100.0,
                amount(allowed),
                bad as f64 / allowed
            ),
        };
    }
    Budget {
        class: if remaining > 0.5 { "ok" } else { "low" },
        width: (remaining * 100.0).round(),
        text: format!(
            "{:.1}% left · {bad} bad of {} allowed",
            remaining * 100.0,
            amount(allowed)
        ),
    }
}

/// An allowance of bad events: fractions keep three decimals, larger ones one.
fn amount(x: f64) -> String {
    if x < 1.0 {
        format!("{x:.3}")
    } else {
        format!("{x:.1}")
    }
}

fn slos(h: &mut String, snapshot: &Snapshot, uptime: Duration, now: Instant) {
    if snapshot.slos.all().is_empty() {
        return;
    }
    h.push_str("<h2>SLO error budgets</h2><table><tr><th>slo</th><th>objective</th><th>budget <small>remaining of the window's allowance</small></th><th>burn rate <small>5m / 1h</small></th></tr>\n");
    for slo in snapshot.slos.all() {
        let status = slo.status(now);
        let b = budget(status.objective, status.good, status.bad);
        let window = Duration::from_secs(status.window_seconds);
        let seen = if uptime < window {
            format!(
                r#"<div class="reason" data-k="{}:seen">seen {} of {}: the allowance counts only what this process saw</div>"#,
                esc(&status.name),
                human(uptime),
                human(window)
            )
        } else {
            String::new()
        };
        let burn = |w: &str| status.burn_rate.get(w).copied().unwrap_or(0.0);
        let burn_note = if uptime < Duration::from_secs(300) {
            format!(
                r#"<div class="reason">both cover the same {} (the process is younger than 5m)</div>"#,
                human(uptime)
            )
        } else if uptime < Duration::from_secs(3600) {
            format!(
                r#"<div class="reason">1h covers only {}</div>"#,
                human(uptime)
            )
        } else {
            String::new()
        };
        let name = &status.name;
        let _ = writeln!(
            h,
            r#"<tr><td>{}</td><td>{:.2}%</td>{}{}</tr>"#,
            esc(name),
            status.objective * 100.0,
            cell(
                name,
                "budget",
                &format!(
                    r#"<span class="bar"><span class="fill {}" style="width:{}%"></span></span> {}{seen}"#,
                    b.class, b.width, b.text
                )
            ),
            cell(
                name,
                "burn",
                &format!("{:.2} / {:.2}{burn_note}", burn("5m"), burn("1h"))
            ),
        );
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::{budget, human, quantile};

    #[test]
    fn budgets_are_what_is_left_of_the_allowance() {
        // 99.9% over 10 000 events allows 10 bad; 4 bad leave 60%.
        let b = budget(0.999, 9_996, 4);
        assert_eq!((b.class, b.width), ("ok", 60.0), "{b:?}");
        assert!(
            b.text.starts_with("60.0% left · 4 bad of 10.0 allowed"),
            "{b:?}"
        );
        let b = budget(0.999, 9_992, 8);
        assert_eq!((b.class, b.width), ("low", 20.0), "{b:?}");
        // 3 bad of 3 against 0.003 allowed: overspent, red, no negative percentage.
        let b = budget(0.999, 0, 3);
        assert_eq!((b.class, b.width), ("over", 100.0), "{b:?}");
        assert!(b.text.contains("overspent by 99900.0%"), "{b:?}");
        assert!(
            b.text
                .contains("3 bad of 0.003 allowed (1000.0× the allowance)"),
            "{b:?}"
        );
        assert!(!b.text.contains(">-") && !b.text.contains(" -"), "{b:?}");
        assert_eq!(budget(0.99, 0, 0).text, "no events yet");
    }

    #[test]
    fn human_durations() {
        use std::time::Duration;
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(180)), "3m");
        assert_eq!(human(Duration::from_secs(28 * 86_400)), "28d");
        assert_eq!(human(Duration::from_secs(3 * 3600 + 120)), "3h 2m");
    }

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
