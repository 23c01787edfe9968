//! `backstop simulate`: what a config would have done with recorded traffic, offline.
//!
//! Every policy is a state machine with an injected clock, so recorded requests can be run
//! through routing, rate limits, breakers, outlier ejection, bulkheads, retries with budgets
//! and back-off, failover and SLOs in virtual time, with no network, using the proxy's own
//! policy types ([`engine`] lists the approximations). `--compare` runs a second config on
//! the same traffic and prints both side by side.

pub mod engine;
pub mod traffic;

use std::fmt::Write as _;

pub use engine::{run, Report};

/// The report as text; with `other`, both side by side (`this -> other` where they differ).
pub fn render_text(this: &Report, other: Option<&Report>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} requests over {:.0}s, {} matched no route",
        this.requests, this.span_seconds, this.unrouted
    );
    let pair = |a: u64, b: Option<u64>| match b {
        Some(b) if b != a => format!("{a} -> {b}"),
        _ => a.to_string(),
    };
    for (i, r) in this.routes.iter().enumerate() {
        let o = other.and_then(|o| o.routes.get(i));
        let f = |get: fn(&engine::RouteReport) -> u64| pair(get(r), o.map(get));
        let _ = writeln!(out, "\nroute {}", r.name);
        let _ = writeln!(
            out,
            "  requests {}  admitted {}  rate limited {}  circuit open {}  overloaded {}",
            f(|x| x.requests),
            f(|x| x.admitted),
            f(|x| x.rate_limited),
            f(|x| x.circuit_refused),
            f(|x| x.overloaded)
        );
        let _ = writeln!(
            out,
            "  retried {}  budget exhausted {}  failed over {}",
            f(|x| x.retried),
            f(|x| x.budget_exhausted),
            f(|x| x.failed_over)
        );
        let _ = writeln!(
            out,
            "  answered 2xx {}  4xx {}  5xx {}",
            f(|x| x.answered_2xx),
            f(|x| x.answered_4xx),
            f(|x| x.answered_5xx)
        );
    }
    for (label, report) in std::iter::once(("", this)).chain(other.map(|o| ("compared: ", o))) {
        let _ = writeln!(
            out,
            "\n{label}breaker transitions: {}",
            report.transitions.len()
        );
        for t in report.transitions.iter().take(50) {
            let _ = writeln!(
                out,
                "  {} {} {} -> {}: {}",
                t.at, t.breaker, t.from, t.to, t.reason
            );
        }
        if report.transitions.len() > 50 {
            let _ = writeln!(out, "  ... {} more", report.transitions.len() - 50);
        }
    }
    for (i, s) in this.slos.iter().enumerate() {
        let o = other.and_then(|o| o.slos.get(i));
        let budget = |s: &engine::SloReport| format!("{:.1}%", s.budget_remaining * 100.0);
        let alerts = |s: &engine::SloReport| {
            if s.alerts.is_empty() {
                "none".to_owned()
            } else {
                s.alerts
                    .iter()
                    .map(|a| format!("{} at {}", a.severity, a.at))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let window = humantime::format_duration(std::time::Duration::from_secs(s.window_seconds));
        let seen =
            humantime::format_duration(std::time::Duration::from_secs(this.span_seconds as u64));
        let _ = writeln!(
            out,
            "\nslo {} (the traffic spans {seen} of its {window} window)",
            s.name
        );
        let _ = writeln!(
            out,
            "  events {}  bad {}  budget left {}  alerts {}",
            pair(s.events, o.map(|o| o.events)),
            pair(s.bad, o.map(|o| o.bad)),
            match o {
                Some(o) if budget(o) != budget(s) => format!("{} -> {}", budget(s), budget(o)),
                _ => budget(s),
            },
            match o {
                Some(o) if alerts(o) != alerts(s) => format!("{} -> {}", alerts(s), alerts(o)),
                _ => alerts(s),
            }
        );
    }
    out
}
