//! `backstop rules`: the Prometheus rule file for the config's SLOs, plus operational alerts.
//!
//! # Labels kept
//! Every aggregation keeps `slos_rules.keep_labels` (default `[job]`) besides its own labels,
//! so a Prometheus that scrapes staging and production (different `job` or `namespace`) keeps
//! one error ratio, one budget and one alert per deployment instead of merging them.
//!
//! # Recording chain (names)
//! For each SLO, with `L` the kept labels:
//! 1. every cycle: `backstop:slo_events:rate5m{slo,L}` and `backstop:slo_bad_events:rate5m{slo,L}`
//!    (events per second over 5m, summed over replicas), and the error ratios
//!    `backstop:slo_error_ratio:rate<W>{slo,L}` for W in 5m (from the two series above), 30m,
//!    1h, 2h and 6h (raw `rate()`: short ranges, exact for the page alert);
//! 2. every `slos_rules.long_window_interval` (default 5m), in a group of its own:
//!    `backstop:slo_events:rate1d` / `backstop:slo_bad_events:rate1d` = `avg_over_time` of the
//!    5m series over 1d; the ratios for 1d and 3d from the 5m series; the ratio for the SLO
//!    period (e.g. `rate28d`) from the 1d series when the period is longer than 3d;
//!    `backstop:slo_error_budget_remaining:ratio{slo,L}` = 1 - ratio over the period /
//!    (1 - objective).
//!
//! An average of per-second rates over a window is the events in the window divided by its
//! length, so a ratio of two such averages weights every event equally, like a raw `rate()`
//! would. No rule reads 28 days of raw samples: the period ratio reads one 1d series at the
//! long interval (8064 samples for 28d at 5m). The price: averaging the 1d moving average over
//! the period blurs its edges by a day (it weighs 29 days, the first and last with a ramp).
//!
//! A calendar SLO (`window: calendar_month | calendar_quarter`) has no period ratio; the long
//! group accumulates `backstop:slo_events:calendar_to_date` and
//! `backstop:slo_bad_events:calendar_to_date` instead (`calendar_rules`), and its budget
//! reads `backstop:slo_error_ratio:calendar_to_date`. The events per second over 1h, 6h
//! (raw) and 3d (from the 5m series) are recorded for `min_events`.
//!
//! # Alerts
//! - `BackstopSLOBurnRatePage` / `BackstopSLOBurnRateTicket`: multi-window, multi-burn-rate
//!   alerts from the Google SRE Workbook (page: 14.4x over 1h and 5m, or 6x over 6h and 30m;
//!   ticket: 3x over 1d and 2h, or 1x over 3d and 6h), labelled `severity` and `slo`. Each
//!   condition also needs `min_events` events in its long window (unless 0), so a few
//!   failures at night do not page a low-traffic SLO.
//! - Operational ([`OPERATIONAL`]): a breaker open (or probing) longer than
//!   `breaker_open_for`, any outcome_unknown request, a rejected reload, Redis errors or
//!   fast-fails, retries refused by a retry budget for 10m, and a share of an upstream's
//!   endpoints ejected of at least `ejected_share`.
//!
//! Every alert has `summary`, a `description` with `$value`, the prose `runbook` and, when
//! `slos_rules.runbook_base_url` is set, `runbook_url` = that URL + `#` + the alert name in
//! lower case (the README's runbook headings have exactly those anchors).

use std::fmt::Write;
use std::time::Duration;

use super::calendar::{Calendar, CalendarUnit};
use super::SloConfig;

/// Windows of the recording rules, besides the SLO period.
pub const WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// Windows computed with a raw `rate()` every cycle (the rest come from recorded series).
const RAW_WINDOWS: [&str; 4] = ["30m", "1h", "2h", "6h"];

/// Names of the operational alerts, in the order they are rendered.
pub const OPERATIONAL: [&str; 6] = [
    "BackstopCircuitOpenTooLong",
    "BackstopOutcomeUnknown",
    "BackstopConfigReloadRejected",
    "BackstopRedisErrors",
    "BackstopRetryBudgetExhausted",
    "BackstopEndpointsEjected",
];

/// (burn factor, long window, short window).
pub(crate) type BurnCondition = (f64, &'static str, &'static str);

/// (severity, for, the two conditions, either of which fires).
pub(crate) const ALERTS: [(&str, &str, [BurnCondition; 2]); 2] = [
    ("page", "2m", [(14.4, "1h", "5m"), (6.0, "6h", "30m")]),
    ("ticket", "15m", [(3.0, "1d", "2h"), (1.0, "3d", "6h")]),
];

const RUNBOOK: &str = "Check /admin/circuits and /admin/slos on the admin listener, then backstop_requests_total by status for the routes of this SLO (README: Grafana and Prometheus).";

/// Settings of the generated rules (`slos_rules:` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct RulesConfig {
    /// Labels kept in every aggregation besides the rule's own (`slo`, `route`, ...).
    pub keep_labels: Vec<String>,
    /// Base of the `runbook_url` annotations; none leaves that annotation out.
    pub runbook_base_url: Option<String>,
    /// Evaluation interval of the group with the 1d, 3d and period windows.
    pub long_window_interval: Duration,
    /// `BackstopCircuitOpenTooLong` fires after a breaker stayed open or half-open this long.
    pub breaker_open_for: Duration,
    /// `BackstopEndpointsEjected` fires when at least this share of an upstream's endpoints
    /// (across replicas) is ejected.
    pub ejected_share: f64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            keep_labels: vec!["job".to_owned()],
            runbook_base_url: None,
            long_window_interval: Duration::from_secs(300),
            breaker_open_for: Duration::from_secs(600),
            ejected_share: 0.5,
        }
    }
}

impl RulesConfig {
    /// `by (...)` with the kept labels after `own`, without duplicates.
    fn by(&self, own: &[&str]) -> String {
        let mut labels: Vec<&str> = own.to_vec();
        for l in &self.keep_labels {
            if !labels.contains(&l.as_str()) {
                labels.push(l);
            }
        }
        format!("by ({})", labels.join(", "))
    }
}

/// A Prometheus duration for `d` (whole days, hours, minutes or seconds).
pub fn prom_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A ratio without floating-point noise (`0.0144`, not `0.014400000000000001`).
fn ratio(x: f64) -> f64 {
    (x * 1e12).round() / 1e12
}

/// One recording or alerting rule.
struct Rule {
    /// `record: NAME` or `alert: NAME`.
    head: String,
    expr: String,
    /// `for:` of an alert.
    wait: Option<&'static str>,
    labels: Vec<(&'static str, String)>,
    annotations: Vec<(&'static str, String)>,
}

impl Rule {
    fn record(name: String, expr: String, slo: &str) -> Self {
        Self {
            head: format!("record: {name}"),
            expr,
            wait: None,
            labels: vec![("slo", slo.to_owned())],
            annotations: Vec::new(),
        }
    }
}

/// A YAML double-quoted string.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn write_group(out: &mut String, name: &str, interval: Option<&str>, rules: &[Rule]) {
    let _ = writeln!(out, "  - name: {name}");
    if let Some(i) = interval {
        let _ = writeln!(out, "    interval: {i}");
    }
    let _ = writeln!(out, "    rules:");
    for r in rules {
        let _ = writeln!(out, "      - {}", r.head);
        let _ = writeln!(out, "        expr: >-");
        for line in r.expr.lines() {
            let _ = writeln!(out, "          {line}");
        }
        if let Some(w) = r.wait {
            let _ = writeln!(out, "        for: {w}");
        }
        if !r.labels.is_empty() {
            let _ = writeln!(out, "        labels:");
            for (k, v) in &r.labels {
                let _ = writeln!(out, "          {k}: {}", quoted(v));
            }
        }
        if !r.annotations.is_empty() {
            let _ = writeln!(out, "        annotations:");
            for (k, v) in &r.annotations {
                let _ = writeln!(out, "          {k}: {}", quoted(v));
            }
        }
    }
}

/// The whole rule file.
pub fn render(slos: &[SloConfig], rules: &RulesConfig) -> String {
    let mut out = String::from("# Generated by `backstop rules`; do not edit. Recording rules and burn-rate alerts\n# for the SLOs in backstop.yaml, and operational alerts (naming scheme and recording\n# chain: README, \"Grafana and Prometheus\").\ngroups:\n");
    for slo in slos {
        render_slo(&mut out, slo, rules);
    }
    write_group(&mut out, "backstop-operational", None, &operational(rules));
    out
}

/// Annotations every alert carries.
fn annotations(
    rules: &RulesConfig,
    alert: &str,
    summary: String,
    description: String,
    runbook: &str,
) -> Vec<(&'static str, String)> {
    let mut a = vec![
        ("summary", summary),
        ("description", description),
        ("runbook", runbook.to_owned()),
    ];
    if let Some(base) = &rules.runbook_base_url {
        a.push((
            "runbook_url",
            format!("{base}#{}", alert.to_ascii_lowercase()),
        ));
    }
    a
}

fn render_slo(out: &mut String, slo: &SloConfig, rules: &RulesConfig) {
    let name = &slo.name;
    let period = prom_duration(slo.window);
    let budget = ratio(1.0 - slo.objective);
    let by = rules.by(&["slo"]);
    let all = format!("backstop_slo_events_total{{slo=\"{name}\"}}");
    let bad = format!("backstop_slo_events_total{{slo=\"{name}\",result=\"bad\"}}");
    let sel = format!("{{slo=\"{name}\"}}");
    // A window's bad events per second; 0 (not nothing) while no event was ever bad.
    let bad_rate =
        |w: &str| format!("(sum {by} (rate({bad}[{w}])) or 0 * sum {by} (rate({all}[{w}])))");
    let ratio_name = |w: &str| format!("backstop:slo_error_ratio:rate{w}");

    let mut short = vec![
        Rule::record(
            "backstop:slo_events:rate5m".into(),
            format!("sum {by} (rate({all}[5m]))"),
            name,
        ),
        Rule::record(
            "backstop:slo_bad_events:rate5m".into(),
            bad_rate("5m"),
            name,
        ),
        Rule::record(
            ratio_name("5m"),
            format!("backstop:slo_bad_events:rate5m{sel}\n/\nbackstop:slo_events:rate5m{sel}"),
            name,
        ),
    ];
    for w in RAW_WINDOWS {
        short.push(Rule::record(
            ratio_name(w),
            format!("{}\n/\nsum {by} (rate({all}[{w}]))", bad_rate(w)),
            name,
        ));
    }
    // Events per second over the long windows of the page conditions, for min_events.
    for w in ["1h", "6h"] {
        short.push(Rule::record(
            format!("backstop:slo_events:rate{w}"),
            format!("sum {by} (rate({all}[{w}]))"),
            name,
        ));
    }
    write_group(
        out,
        &format!("backstop-slo-{name}-recordings"),
        None,
        &short,
    );

    let from_5m = |w: &str| {
        format!("avg_over_time(backstop:slo_bad_events:rate5m{sel}[{w}])\n/\navg_over_time(backstop:slo_events:rate5m{sel}[{w}])")
    };
    let mut long = vec![
        Rule::record(
            "backstop:slo_events:rate1d".into(),
            format!("avg_over_time(backstop:slo_events:rate5m{sel}[1d])"),
            name,
        ),
        Rule::record(
            "backstop:slo_bad_events:rate1d".into(),
            format!("avg_over_time(backstop:slo_bad_events:rate5m{sel}[1d])"),
            name,
        ),
        Rule::record(
            ratio_name("1d"),
            format!("backstop:slo_bad_events:rate1d{sel}\n/\nbackstop:slo_events:rate1d{sel}"),
            name,
        ),
        Rule::record(ratio_name("3d"), from_5m("3d"), name),
        Rule::record(
            "backstop:slo_events:rate3d".into(),
            format!("avg_over_time(backstop:slo_events:rate5m{sel}[3d])"),
            name,
        ),
    ];
    let period_ratio = if let Some(calendar) = &slo.calendar {
        long.extend(calendar_rules(calendar, name, rules));
        "backstop:slo_error_ratio:calendar_to_date".to_owned()
    } else {
        ratio_name(&period)
    };
    if slo.calendar.is_none() && !WINDOWS.contains(&period.as_str()) {
        let expr = if slo.window <= Duration::from_secs(3 * 86_400) {
            from_5m(&period)
        } else {
            format!("avg_over_time(backstop:slo_bad_events:rate1d{sel}[{period}])\n/\navg_over_time(backstop:slo_events:rate1d{sel}[{period}])")
        };
        long.push(Rule::record(ratio_name(&period), expr, name));
    }
    long.push(Rule::record(
        "backstop:slo_error_budget_remaining:ratio".into(),
        format!("1 - {period_ratio}{sel} / {budget}"),
        name,
    ));
    let interval = prom_duration(rules.long_window_interval);
    write_group(
        out,
        &format!("backstop-slo-{name}-long"),
        Some(&interval),
        &long,
    );

    let mut alerts = Vec::new();
    for (severity, wait, conditions) in ALERTS {
        let alert = if severity == "page" {
            "BackstopSLOBurnRatePage"
        } else {
            "BackstopSLOBurnRateTicket"
        };
        let expr: Vec<String> = conditions
            .iter()
            .map(|(factor, long, short)| {
                let threshold = ratio(factor * (1.0 - slo.objective));
                let enough = if slo.min_events == 0 {
                    String::new()
                } else {
                    let seconds = window_seconds(long);
                    format!(
                        " and backstop:slo_events:rate{long}{sel} * {seconds} >= {}",
                        slo.min_events
                    )
                };
                format!(
                    "(backstop:slo_error_ratio:rate{long}{sel} > {threshold} and backstop:slo_error_ratio:rate{short}{sel} > {threshold}{enough})"
                )
            })
            .collect();
        let burns: Vec<String> = conditions
            .iter()
            .map(|(f, l, s)| format!("{f}x over {l} and {s}"))
            .collect();
        let period_text = match &slo.calendar {
            Some(c) => format!(
                "per {} in UTC{}",
                c.unit.name().replace('_', " "),
                c.offset_text()
            ),
            None => format!("over {period}"),
        };
        let at_least = if slo.min_events == 0 {
            String::new()
        } else {
            format!(
                " (with at least {} events in the long window)",
                slo.min_events
            )
        };
        let description = format!(
            "The error budget of {name} ({objective}% {period_text}) burns at {burns} or more{at_least}: {{{{ $value | humanizePercentage }}}} of its events failed over the long window.",
            objective = slo.objective * 100.0,
            burns = burns.join(", or "),
        );
        alerts.push(Rule {
            head: format!("alert: {alert}"),
            expr: expr.join("\nor\n"),
            wait: Some(wait),
            labels: vec![("severity", severity.to_owned()), ("slo", name.clone())],
            annotations: annotations(
                rules,
                alert,
                format!("SLO {name} is burning its error budget too fast"),
                description,
                RUNBOOK,
            ),
        });
    }
    write_group(out, &format!("backstop-slo-{name}-alerts"), None, &alerts);
}

/// Seconds in a window of [`WINDOWS`] (`1h` -> 3600).
fn window_seconds(w: &str) -> u64 {
    let (n, unit) = w.split_at(w.len() - 1);
    let n: u64 = n.parse().unwrap_or(0);
    n * match unit {
        "m" => 60,
        "h" => 3600,
        _ => 86_400,
    }
}

/// `time() + OFFSET` in PromQL, the local time as Unix seconds.
fn local_time(offset: i32) -> String {
    match offset {
        0 => "time()".to_owned(),
        o if o < 0 => format!("time() - {}", -i64::from(o)),
        o => format!("time() + {o}"),
    }
}

/// Seconds since the start of the current calendar period (a label-less vector), in PromQL.
/// Month: the days before today plus the time of day, all in the fixed offset. Quarter: that,
/// plus the length of the one or two months of the quarter before this one (`days_in_month`
/// of an instant in each).
pub(crate) fn into_period(calendar: &Calendar) -> String {
    let t = local_time(calendar.utc_offset_seconds);
    // `%` keeps the dividend's sign: (x % d + d) % d is the time of day before 1970 too.
    let month =
        format!("((day_of_month(vector({t})) - 1) * 86400 + (({t}) % 86400 + 86400) % 86400)");
    match calendar.unit {
        CalendarUnit::Month => month,
        CalendarUnit::Quarter => {
            let prev1 = format!("days_in_month(vector({t} - scalar({month}) - 1))");
            let prev2 = format!(
                "days_in_month(vector({t} - scalar({month}) - 86400 * scalar({prev1}) - 1))"
            );
            let pos = format!("((month(vector({t})) - 1) % 3)");
            format!("({month}\n  + ({pos} >= bool 1) * 86400 * {prev1}\n  + ({pos} >= bool 2) * 86400 * {prev2})")
        }
    }
}

/// The recording rules of a calendar period, in the long group: events and bad events since
/// the period started, accumulated by adding each evaluation's `increase()` over the group's
/// interval to the previous total while that total belongs to the same period (its recorded start matches);
/// the start of the period; and the error ratio to date.
fn calendar_rules(calendar: &Calendar, name: &str, rules: &RulesConfig) -> Vec<Rule> {
    let sel = format!("{{slo=\"{name}\"}}");
    let by = rules.by(&["slo"]);
    let all = format!("backstop_slo_events_total{{slo=\"{name}\"}}");
    let bad = format!("backstop_slo_events_total{{slo=\"{name}\",result=\"bad\"}}");
    // Events in the last interval: the windows of successive evaluations tile the time line.
    let i = prom_duration(rules.long_window_interval);
    let increase_all = format!("sum {by} (increase({all}[{i}]))");
    let increase_bad =
        format!("(sum {by} (increase({bad}[{i}])) or 0 * sum {by} (increase({all}[{i}])))");
    let lookback = prom_duration(calendar.unit.longest() + Duration::from_secs(86_400));
    let start = format!("scalar(round(vector(time()) - {}))", into_period(calendar));
    let starts = "backstop:slo_calendar:period_start_seconds";
    // A new period (or the first evaluation): only the share of the interval after the start
    // counts, assuming events spread evenly over the interval.
    let first_share = format!(
        "scalar(clamp_max({} / {}, 1))",
        into_period(calendar),
        rules.long_window_interval.as_secs().max(1)
    );
    let to_date = |series: &str, this: &str| {
        format!("{this}\n+ (\n  last_over_time({series}{sel}[{lookback}])\n  and\n  last_over_time({starts}{sel}[{lookback}]) == {start}\n)\nor\n{this} * {first_share}")
    };
    vec![
        Rule::record(
            "backstop:slo_events:calendar_to_date".into(),
            to_date("backstop:slo_events:calendar_to_date", &increase_all),
            name,
        ),
        Rule::record(
            "backstop:slo_bad_events:calendar_to_date".into(),
            to_date("backstop:slo_bad_events:calendar_to_date", &increase_bad),
            name,
        ),
        Rule::record(
            starts.into(),
            format!("0 * backstop:slo_events:calendar_to_date{sel} + {start}"),
            name,
        ),
        Rule::record(
            "backstop:slo_error_ratio:calendar_to_date".into(),
            format!("backstop:slo_bad_events:calendar_to_date{sel}\n/\nbackstop:slo_events:calendar_to_date{sel}"),
            name,
        ),
    ]
}

/// `sum by (...) (increase(METRIC[5m])) > 0`, or the series that appeared with a value in the
/// last 5m: backstop creates some counters at their first event, and `increase` needs two
/// samples, so without the second half the first event would never alert.
fn increased(metric: &str, by: &str) -> String {
    format!("sum {by} (increase({metric}[5m])) > 0\nor\nsum {by} ({metric} unless {metric} offset 5m) > 0")
}

fn operational(rules: &RulesConfig) -> Vec<Rule> {
    let open_for = rules.breaker_open_for.as_secs();
    let open_text = prom_duration(rules.breaker_open_for);
    let share = ratio(rules.ejected_share);
    let breaker_by = rules.by(&["instance", "upstream", "route"]);
    let route_upstream = rules.by(&["route", "upstream"]);
    let route = rules.by(&["route"]);
    let instance = rules.by(&["instance"]);
    let upstream = rules.by(&["upstream"]);
    let specs: [(&str, &str, &str, String, String, String, &str); 6] = [
        (
            OPERATIONAL[0],
            "page",
            "1m",
            format!("(time() - max {breaker_by} (backstop_circuit_opened_at_timestamp_seconds > 0)) > {open_for}\nand\nmax {breaker_by} (backstop_circuit_state{{state=~\"open|half_open\"}}) == 1"),
            "Circuit breaker of {{ $labels.upstream }} open for more than ".to_owned() + &open_text,
            "The breaker of upstream {{ $labels.upstream }} (route \"{{ $labels.route }}\", empty for the upstream's own) on {{ $labels.instance }} opened {{ $value | humanizeDuration }} ago and has not closed since: its requests are rejected or failed over.".into(),
            "Check /admin/circuits for the reason and the upstream's endpoints; backstop_circuit_transition_reasons_total says why it opened.",
        ),
        (
            OPERATIONAL[1],
            "ticket",
            "0m",
            increased("backstop_outcome_unknown_total", &route_upstream),
            "Requests on route {{ $labels.route }} with an unknown outcome".into(),
            "{{ $value | humanize }} non-idempotent requests on route {{ $labels.route }} failed after being sent to {{ $labels.upstream }} in the last 5m and were not retried: they may or may not have been applied. Their answers carry x-backstop-outcome: unknown.".into(),
            "Reconcile these requests with the upstream (clients saw x-backstop-outcome: unknown; x-request-id ties each to the access log) before retrying them.",
        ),
        (
            OPERATIONAL[2],
            "ticket",
            "0m",
            format!("sum {instance} (increase(backstop_config_reloads_total{{result=\"rejected\"}}[15m])) > 0"),
            "Config reload rejected on {{ $labels.instance }}".into(),
            "{{ $value | humanize }} config reloads were rejected on {{ $labels.instance }} in the last 15m; it still runs the previous config.".into(),
            "Run backstop validate on the new file; the process log has every issue with its key path.",
        ),
        (
            OPERATIONAL[3],
            "ticket",
            "2m",
            format!("{}\nor\n{}", increased("backstop_rate_limit_backend_errors_total", &route), increased("backstop_redis_fast_fail_total", &route)),
            "Redis errors in the global rate limit of route {{ $labels.route }}".into(),
            "{{ $value | humanize }} global rate limit decisions of route {{ $labels.route }} in the last 5m failed at Redis or skipped it while it was down, and applied on_error.".into(),
            "Check backstop_redis_available and the Redis server; the route's on_error decides whether requests pass meanwhile.",
        ),
        (
            OPERATIONAL[4],
            "ticket",
            "10m",
            increased("backstop_retry_budget_exhausted_total", &route),
            "Retry budget of route {{ $labels.route }} exhausted".into(),
            "The retry budget of route {{ $labels.route }} refused {{ $value | humanize }} retries in the last 5m, and has kept refusing for 10m: failures reach clients unretried.".into(),
            "Look for the failing upstream (backstop_upstream_attempts_total by result); raise retry.budget only if the upstream can take the extra load.",
        ),
        (
            OPERATIONAL[5],
            "page",
            "2m",
            format!("avg {upstream} (backstop_endpoint_ejected) >= {share}"),
            "Endpoints of {{ $labels.upstream }} ejected".into(),
            format!("{{{{ $value | humanizePercentage }}}} of the endpoints of upstream {{{{ $labels.upstream }}}} (across replicas) are ejected by outlier detection (threshold {}%): the rest take all of its traffic.", ratio(share * 100.0)),
            "Check /admin/upstreams and the ejected endpoints; backstop_upstream_attempts_total by endpoint and result shows what fails.",
        ),
    ];
    specs
        .into_iter()
        .map(
            |(alert, severity, wait, expr, summary, description, runbook)| Rule {
                head: format!("alert: {alert}"),
                expr,
                wait: Some(wait),
                labels: vec![("severity", severity.to_owned())],
                annotations: annotations(rules, alert, summary, description, runbook),
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slo::Sli;

    fn pay(window_days: u64) -> SloConfig {
        SloConfig {
            name: "pay".into(),
            routes: vec![0],
            objective: 0.999,
            window: Duration::from_secs(window_days * 86_400),
            sli: Sli::Availability {
                exclude_rate_limited: false,
            },
            calendar: None,
            min_events: crate::slo::DEFAULT_MIN_EVENTS,
        }
    }

    #[test]
    fn durations_render_as_prometheus_durations() {
        assert_eq!(prom_duration(Duration::from_secs(28 * 86_400)), "28d");
        assert_eq!(prom_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(prom_duration(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn renders_recordings_and_both_alerts() {
        let text = render(&[pay(28)], &RulesConfig::default());
        for w in WINDOWS.iter().chain(["28d"].iter()) {
            assert!(
                text.contains(&format!("record: backstop:slo_error_ratio:rate{w}\n")),
                "{w}"
            );
        }
        assert!(text.contains("alert: BackstopSLOBurnRatePage"));
        assert!(text.contains("rate1h{slo=\"pay\"} > 0.0144"), "{text}");
        assert!(text.contains("severity: \"ticket\""));
    }

    #[test]
    fn every_aggregation_keeps_the_configured_labels() {
        let rules = RulesConfig {
            keep_labels: vec!["job".into(), "namespace".into()],
            ..RulesConfig::default()
        };
        let text = render(&[pay(28)], &rules);
        let mut sums = 0;
        for (i, _) in text.match_indices("sum ").chain(text.match_indices("max ")) {
            sums += 1;
            assert!(
                text[i..]
                    .split(')')
                    .next()
                    .unwrap()
                    .contains("job, namespace"),
                "an aggregation drops the kept labels: {}",
                &text[i..i + 60]
            );
        }
        assert!(sums >= 10, "{text}");
        for (i, _) in text.match_indices("avg ") {
            assert!(text[i..].starts_with("avg by (upstream, job, namespace)"));
        }
        assert!(!text.contains("by (slo)"), "{text}");
    }

    #[test]
    fn no_period_ratio_reads_raw_samples_for_more_than_6h() {
        let text = render(&[pay(28)], &RulesConfig::default());
        for w in ["1d", "3d", "28d"] {
            assert!(
                !text.contains(&format!("backstop_slo_events_total{{slo=\"pay\"}}[{w}]")),
                "{w}"
            );
            assert!(!text.contains(&format!("result=\"bad\"}}[{w}]")), "{w}");
        }
        assert!(text.contains("avg_over_time(backstop:slo_bad_events:rate1d{slo=\"pay\"}[28d])"));
        assert!(text.contains("    interval: 5m\n"));
        // A period of 2d comes from the 5m series, not from the 1d one.
        let text = render(&[pay(2)], &RulesConfig::default());
        assert!(text.contains("avg_over_time(backstop:slo_bad_events:rate5m{slo=\"pay\"}[2d])"));
    }

    #[test]
    fn runbook_urls_and_values_in_every_alert() {
        let rules = RulesConfig {
            runbook_base_url: Some("https://runbooks.example.com/backstop".into()),
            ..RulesConfig::default()
        };
        let text = render(&[pay(28)], &rules);
        let alerts = text.matches("- alert: ").count();
        assert_eq!(alerts, 2 + OPERATIONAL.len());
        assert_eq!(text.matches("runbook_url: \"https://").count(), alerts);
        assert_eq!(text.matches("$value").count(), alerts, "{text}");
        assert!(text.contains(
            "runbook_url: \"https://runbooks.example.com/backstop#backstopcircuitopentoolong\""
        ));
        let without = render(&[pay(28)], &RulesConfig::default());
        assert!(!without.contains("runbook_url"));
    }

    #[test]
    fn operational_alerts_without_slos() {
        let text = render(&[], &RulesConfig::default());
        for alert in OPERATIONAL {
            assert!(text.contains(&format!("- alert: {alert}\n")), "{alert}");
        }
        assert!(!text.contains("backstop:slo_"));
    }
}
