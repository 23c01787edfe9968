//! OpenSLO v1 import and export of the `slos:` section (`backstop slo export --openslo`,
//! `backstop slo import FILE`).
//!
//! # Export
//! One `kind: SLO` document per SLO, with an inline SLI whose `ratioMetric` counts good and
//! total events in `backstop_slo_events_total{slo=NAME}` (Prometheus, `counter: true`),
//! `budgetingMethod: Occurrences`, one objective (`target`), and a `timeWindow` that is
//! rolling (`28d`) or calendar-aligned (`1M` / `1Q`, starting on January 1st at 00:00 in the
//! SLO's offset). What the query cannot say (the routes, the SLI kind, `exclude_rate_limited`,
//! `alerting.min_events`) goes into `metadata.annotations` under `backstop.io/`, so an export
//! imports back to the same section.
//!
//! # Import
//! Reads `kind: SLO` documents (others, such as `Service`, are skipped; an `indicatorRef`
//! resolves against `kind: SLI` documents of the same file) and prints the `slos:` YAML. The
//! routes and the SLI come from the `backstop.io/` annotations when present; otherwise from
//! the `ratioMetric` queries, when they are over backstop's own request metrics:
//! `backstop_requests_total{route=...}` (availability; the bad or good query filters on
//! `status`) or `backstop_request_duration_seconds_bucket{route=...,le="0.3"}` (latency below
//! 300ms). Everything else is refused with the reason: a threshold metric, a source other than
//! Prometheus, timeslice budgeting, several objectives, a time zone that is not a fixed offset.

use std::fmt::Write;
use std::time::Duration;

use serde_json::Value;

use super::calendar::{offset_text, parse_offset, CalendarUnit};
use super::rules::prom_duration;
use super::{Sli, SloConfig, DEFAULT_MIN_EVENTS};
use crate::config::Config;

const ROUTES: &str = "backstop.io/routes";
const SLI: &str = "backstop.io/sli";
const EXCLUDE_RATE_LIMITED: &str = "backstop.io/exclude-rate-limited";
const MIN_EVENTS: &str = "backstop.io/min-events";

/// Why an OpenSLO file cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Not YAML.
    #[error("not a YAML file: {0}")]
    Yaml(String),
    /// No `kind: SLO` document.
    #[error("no OpenSLO object of kind SLO (apiVersion openslo/v1) in the file")]
    NoSlo,
    /// One SLO cannot be expressed in backstop.
    #[error("SLO {name:?}: {reason}")]
    Unsupported {
        /// `metadata.name`.
        name: String,
        /// Why.
        reason: String,
    },
}

/// The time window of an SLO as backstop writes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Window {
    /// `window: 28d`.
    Rolling(String),
    /// `window: calendar_month` / `calendar_quarter` with `time_zone:` (seconds east of UTC).
    Calendar(CalendarUnit, i32),
}

/// One entry of the `slos:` section, as text fields (what import produces and export reads).
#[derive(Debug, Clone, PartialEq)]
pub struct SloSpec {
    /// `name:`
    pub name: String,
    /// `routes:`, by name.
    pub routes: Vec<String>,
    /// `objective:` as a ratio.
    pub objective: f64,
    /// `window:` and `time_zone:`.
    pub window: Window,
    /// `sli:` `availability` (None) or a `latency_below` threshold.
    pub latency_below: Option<Duration>,
    /// `exclude_rate_limited:`
    pub exclude_rate_limited: bool,
    /// `alerting.min_events:`
    pub min_events: u64,
}

impl SloSpec {
    /// The spec of a compiled SLO; routes are named from `config`.
    pub fn of(config: &Config, slo: &SloConfig) -> Self {
        let (latency_below, exclude_rate_limited) = match slo.sli {
            Sli::Availability {
                exclude_rate_limited,
            } => (None, exclude_rate_limited),
            Sli::LatencyBelow(d) => (Some(d), false),
        };
        Self {
            name: slo.name.clone(),
            routes: slo
                .routes
                .iter()
                .filter_map(|&i| config.routes.get(i).map(|r| r.name.clone()))
                .collect(),
            objective: slo.objective,
            window: match slo.calendar {
                Some(c) => Window::Calendar(c.unit, c.utc_offset_seconds),
                None => Window::Rolling(prom_duration(slo.window)),
            },
            latency_below,
            exclude_rate_limited,
            min_events: slo.min_events,
        }
    }
}

/// `99.9` for 0.999, without float noise.
fn percent_text(ratio: f64) -> String {
    format!("{}", (ratio * 100.0 * 1e9).round() / 1e9)
}

/// A duration as backstop's config writes it (`300ms`, `1s`).
fn duration_text(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// A YAML double-quoted string.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// An IANA name for a fixed offset when there is one (`UTC`, `Etc/GMT-2` for +02:00: the
/// Etc zones' signs are inverted), else `+05:30`.
fn zone_name(offset: i32) -> String {
    match offset {
        0 => "UTC".into(),
        o if o % 3600 == 0 => format!("Etc/GMT{:+}", -o / 3600),
        o => offset_text(o),
    }
}

/// Reads a time zone written by [`zone_name`] or as a fixed offset.
fn zone_offset(name: &str) -> Result<i32, String> {
    if let Some(hours) = name.strip_prefix("Etc/GMT") {
        if hours.is_empty() {
            return Ok(0);
        }
        if let Ok(h) = hours.parse::<i32>() {
            if h.abs() <= 14 {
                return Ok(-h * 3600);
            }
        }
    }
    parse_offset(name).map_err(|_| {
        format!("time zone {name:?} is not a fixed UTC offset; backstop's calendar windows take UTC, Etc/GMT-2 or +02:00 (no time zone database is bundled)")
    })
}

/// The OpenSLO v1 YAML of every SLO of `config` (one document each).
pub fn export(config: &Config) -> String {
    let mut out = String::from(
        "# Generated by `backstop slo export --openslo`: the slos section as OpenSLO v1.\n",
    );
    for slo in &config.slos {
        export_one(&mut out, &SloSpec::of(config, slo));
    }
    out
}

fn export_one(out: &mut String, s: &SloSpec) {
    let name = &s.name;
    let sli = match s.latency_below {
        None => "availability".to_owned(),
        Some(d) => format!("latency_below: {}", duration_text(d)),
    };
    let _ = writeln!(
        out,
        "---\napiVersion: openslo/v1\nkind: SLO\nmetadata:\n  name: {name}"
    );
    let _ = writeln!(out, "  annotations:");
    let _ = writeln!(out, "    {ROUTES}: {}", quoted(&s.routes.join(",")));
    let _ = writeln!(out, "    {SLI}: {}", quoted(&sli));
    if s.exclude_rate_limited {
        let _ = writeln!(out, "    {EXCLUDE_RATE_LIMITED}: \"true\"");
    }
    let _ = writeln!(out, "    {MIN_EVENTS}: \"{}\"", s.min_events);
    let what = match s.latency_below {
        None => "answered without a 5xx or a failure of backstop's own".to_owned(),
        Some(d) => format!("answered within {}", duration_text(d)),
    };
    let _ = writeln!(out, "spec:");
    let _ = writeln!(
        out,
        "  description: {}",
        quoted(&format!(
            "{}% of the requests on routes {} {what}.",
            percent_text(s.objective),
            s.routes.join(", ")
        ))
    );
    let _ = writeln!(out, "  service: backstop");
    let _ = writeln!(out, "  indicator:\n    metadata:\n      name: {name}\n    spec:\n      ratioMetric:\n        counter: true");
    for (part, filter) in [("good", ",result=\"good\""), ("total", "")] {
        let _ = writeln!(
            out,
            "        {part}:\n          metricSource:\n            type: Prometheus\n            spec:\n              query: {}",
            quoted(&format!("sum(backstop_slo_events_total{{slo=\"{name}\"{filter}}})"))
        );
    }
    let _ = writeln!(out, "  timeWindow:");
    match &s.window {
        Window::Rolling(d) => {
            let _ = writeln!(out, "    - duration: {d}\n      isRolling: true");
        }
        Window::Calendar(unit, offset) => {
            let d = match unit {
                CalendarUnit::Month => "1M",
                CalendarUnit::Quarter => "1Q",
            };
            let _ = writeln!(
                out,
                "    - duration: {d}\n      isRolling: false\n      calendar:\n        startTime: \"2020-01-01 00:00:00\"\n        timeZone: {}",
                zone_name(*offset)
            );
        }
    }
    let _ = writeln!(out, "  budgetingMethod: Occurrences");
    let _ = writeln!(
        out,
        "  objectives:\n    - displayName: {}\n      target: {}",
        quoted(&format!("{}%", percent_text(s.objective))),
        (s.objective * 1e12).round() / 1e12
    );
}

/// The `slos:` YAML for `specs`, as `backstop slo import` prints it.
pub fn render_slos(specs: &[SloSpec]) -> String {
    let mut out = String::from("slos:\n");
    for s in specs {
        let _ = writeln!(out, "  - name: {}", s.name);
        let _ = writeln!(out, "    routes: [{}]", s.routes.join(", "));
        let _ = writeln!(out, "    objective: {}%", percent_text(s.objective));
        match &s.window {
            Window::Rolling(d) => {
                let _ = writeln!(out, "    window: {d}");
            }
            Window::Calendar(unit, offset) => {
                let _ = writeln!(out, "    window: {}", unit.name());
                let _ = writeln!(out, "    time_zone: \"{}\"", offset_text(*offset));
            }
        }
        match s.latency_below {
            None => {
                let _ = writeln!(out, "    sli: availability");
            }
            Some(d) => {
                let _ = writeln!(out, "    sli: {{ latency_below: {} }}", duration_text(d));
            }
        }
        if s.exclude_rate_limited {
            let _ = writeln!(out, "    exclude_rate_limited: true");
        }
        if s.min_events != DEFAULT_MIN_EVENTS {
            let _ = writeln!(out, "    alerting: {{ min_events: {} }}", s.min_events);
        }
    }
    out
}

/// Reads an OpenSLO file and returns the backstop `slos:` entries, or why it cannot.
pub fn import(text: &str) -> Result<Vec<SloSpec>, ImportError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| ImportError::Yaml(e.to_string()))?;
    let slis: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "SLI").collect();
    let slos: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "SLO").collect();
    if slos.is_empty() {
        return Err(ImportError::NoSlo);
    }
    slos.into_iter()
        .map(|doc| {
            let name = doc["metadata"]["name"].as_str().unwrap_or("").to_owned();
            import_one(doc, &slis).map_err(|reason| ImportError::Unsupported {
                name: name.clone(),
                reason,
            })
        })
        .collect()
}

fn import_one(doc: &Value, slis: &[&Value]) -> Result<SloSpec, String> {
    if let Some(v) = doc["apiVersion"].as_str() {
        if v != "openslo/v1" {
            return Err(format!(
                "apiVersion {v:?} is not supported; export it as openslo/v1"
            ));
        }
    }
    let name = doc["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name is missing")?
        .to_owned();
    let spec = &doc["spec"];
    match spec["budgetingMethod"].as_str() {
        None | Some("Occurrences") => {}
        Some(other) => {
            return Err(format!(
                "budgetingMethod {other} is not supported: backstop counts occurrences (good and bad events), not time slices"
            ))
        }
    }
    let objectives = spec["objectives"].as_array().cloned().unwrap_or_default();
    let [objective] = objectives.as_slice() else {
        return Err(format!(
            "backstop takes exactly one objective per SLO, this one has {}",
            objectives.len()
        ));
    };
    let target = objective["target"]
        .as_f64()
        .or_else(|| objective["targetPercent"].as_f64().map(|p| p / 100.0))
        .ok_or("the objective has no target (ratio) or targetPercent")?;
    if !(target > 0.0 && target < 1.0) {
        return Err(format!(
            "objective target {target} must be between 0 and 1 (exclusive)"
        ));
    }
    let window = import_window(spec)?;
    let indicator = match (&spec["indicator"], spec["indicatorRef"].as_str()) {
        (i, _) if i.is_object() => i,
        (_, Some(r)) => slis
            .iter()
            .find(|s| s["metadata"]["name"] == r)
            .copied()
            .ok_or(format!(
                "indicatorRef {r:?} names no SLI object in this file"
            ))?,
        _ => return Err("no indicator and no indicatorRef".into()),
    };
    let annotations = &doc["metadata"]["annotations"];
    let (routes, latency_below) = match annotations[ROUTES].as_str() {
        Some(routes) => {
            let routes: Vec<String> = routes
                .split(',')
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty())
                .collect();
            let sli = annotations[SLI].as_str().unwrap_or("availability").trim();
            let latency = match sli.strip_prefix("latency_below:") {
                Some(t) => Some(
                    humantime::parse_duration(t.trim())
                        .map_err(|e| format!("annotation {SLI}: {t:?} is not a duration ({e})"))?,
                ),
                None if sli == "availability" => None,
                None => {
                    return Err(format!(
                    "annotation {SLI}: {sli:?} is neither availability nor latency_below: DURATION"
                ))
                }
            };
            (routes, latency)
        }
        None => sli_from_queries(&indicator["spec"])?,
    };
    if routes.is_empty() {
        return Err(format!("annotation {ROUTES} names no route"));
    }
    let flag = |key: &str| annotations[key].as_str().map(str::trim);
    let min_events = match flag(MIN_EVENTS) {
        Some(n) => n
            .parse()
            .map_err(|_| format!("annotation {MIN_EVENTS}: {n:?} is not a count"))?,
        None => DEFAULT_MIN_EVENTS,
    };
    Ok(SloSpec {
        name,
        routes,
        objective: target,
        window,
        latency_below,
        exclude_rate_limited: flag(EXCLUDE_RATE_LIMITED) == Some("true"),
        min_events,
    })
}

fn import_window(spec: &Value) -> Result<Window, String> {
    let windows = spec["timeWindow"].as_array().cloned().unwrap_or_default();
    let [w] = windows.as_slice() else {
        return Err(format!(
            "backstop takes exactly one timeWindow, this SLO has {}",
            windows.len()
        ));
    };
    let duration = w["duration"].as_str().unwrap_or("").trim().to_owned();
    let rolling = w["isRolling"].as_bool().unwrap_or(false);
    if rolling {
        let (n, unit) = duration.split_at(duration.len().saturating_sub(1));
        let n: u64 = n
            .parse()
            .map_err(|_| format!("timeWindow duration {duration:?} is not a number and a unit"))?;
        let secs = match unit {
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => {
                return Err(format!(
                    "a rolling timeWindow of {duration:?}: backstop takes minutes, hours, days or weeks (at most 90d)"
                ))
            }
        };
        let d = Duration::from_secs(n * secs);
        if d > Duration::from_secs(90 * 86_400) || d < Duration::from_secs(3600) {
            return Err(format!(
                "a rolling timeWindow of {duration}: backstop takes 1h to 90d"
            ));
        }
        return Ok(Window::Rolling(prom_duration(d)));
    }
    let unit = match duration.as_str() {
        "1M" => CalendarUnit::Month,
        "1Q" | "3M" => CalendarUnit::Quarter,
        other => {
            return Err(format!(
                "a calendar timeWindow of {other:?}: backstop takes 1M (calendar_month) or 1Q (calendar_quarter)"
            ))
        }
    };
    let calendar = &w["calendar"];
    if let Some(start) = calendar["startTime"].as_str() {
        // The period starts on the first of a month (of a quarter's first month) at 00:00.
        let date = start.trim();
        let month: u32 = date.get(5..7).and_then(|m| m.parse().ok()).unwrap_or(0);
        let aligned = date.get(7..).is_some_and(|rest| {
            rest.starts_with("-01")
                && rest[3..]
                    .trim_start_matches(['T', ' '])
                    .starts_with("00:00")
        });
        if !aligned || (unit == CalendarUnit::Quarter && month % 3 != 1) {
            return Err(format!(
                "calendar startTime {date:?}: backstop's calendar periods start on the first of a month (quarters in January, April, July, October) at 00:00"
            ));
        }
    }
    let offset = match calendar["timeZone"].as_str() {
        Some(tz) => zone_offset(tz.trim())?,
        None => 0,
    };
    Ok(Window::Calendar(unit, offset))
}

/// The value of `label="..."` or `label=~"..."` in a PromQL query.
fn matcher<'a>(query: &'a str, label: &str) -> Option<(&'a str, bool)> {
    let mut rest = query;
    while let Some(i) = rest.find(label) {
        let before = rest[..i].chars().last();
        let after = &rest[i + label.len()..];
        rest = after;
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let after = after.trim_start();
        let (regex, value) = if let Some(v) = after.strip_prefix("=~") {
            (true, v)
        } else if let Some(v) = after.strip_prefix('=') {
            (false, v)
        } else {
            continue;
        };
        let value = value.trim_start().strip_prefix('"')?;
        let end = value.find('"')?;
        return Some((&value[..end], regex));
    }
    None
}

/// Routes and SLI from the queries of a `ratioMetric` over backstop's request metrics.
fn sli_from_queries(spec: &Value) -> Result<(Vec<String>, Option<Duration>), String> {
    if spec["thresholdMetric"].is_object() {
        return Err("a thresholdMetric SLI is not supported: backstop's SLIs are ratios of good to all requests (ratioMetric)".into());
    }
    let ratio = &spec["ratioMetric"];
    if !ratio.is_object() {
        return Err("the SLI has no ratioMetric".into());
    }
    let mut queries = Vec::new();
    for part in ["good", "bad", "total"] {
        let source = &ratio[part]["metricSource"];
        if source.is_null() {
            continue;
        }
        let kind = source["type"].as_str().unwrap_or("");
        if !kind.eq_ignore_ascii_case("prometheus") {
            return Err(format!(
                "the {part} metric comes from {kind:?}; backstop's SLIs are Prometheus queries over its own metrics"
            ));
        }
        let query = source["spec"]["query"]
            .as_str()
            .or_else(|| source["spec"]["promql"].as_str())
            .ok_or(format!("the {part} metric has no query"))?;
        queries.push((part, query.to_owned()));
    }
    let total = queries
        .iter()
        .find(|(p, _)| *p == "total")
        .map(|(_, q)| q.as_str())
        .ok_or("the ratioMetric has no total")?;
    let no_route = || {
        format!("its SLI does not name a backstop route: the queries must be over backstop_requests_total{{route=...}} or backstop_request_duration_seconds_bucket{{route=...}}, or the SLO must carry the annotation {ROUTES} (as `backstop slo export --openslo` writes); the total query is {total:?}")
    };
    if total.contains("backstop_slo_events_total") {
        return Err(format!("its SLI counts backstop_slo_events_total, which does not say which routes or SLI kind: add the annotations {ROUTES} and {SLI}"));
    }
    let (routes, _) = queries
        .iter()
        .find_map(|(_, q)| matcher(q, "route"))
        .ok_or_else(no_route)?;
    let routes: Vec<String> = routes
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split('|')
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .collect();
    if routes
        .iter()
        .any(|r| r.contains(['.', '*', '+', '[', '^', '$']))
    {
        return Err(format!(
            "route matcher {:?} is a pattern, not a list of route names (a|b)",
            routes.join("|")
        ));
    }
    let good = queries.iter().find(|(p, _)| *p == "good").map(|(_, q)| q);
    if let Some(good) = good.filter(|q| q.contains("backstop_request_duration_seconds_bucket")) {
        let (le, _) = matcher(good, "le").ok_or(
            "the good query reads backstop_request_duration_seconds_bucket without le=\"SECONDS\"",
        )?;
        let seconds: f64 = le
            .parse()
            .map_err(|_| format!("le={le:?} is not a number of seconds"))?;
        if !(seconds > 0.0 && seconds.is_finite()) {
            return Err(format!("le={le:?} is not a latency threshold"));
        }
        return Ok((routes, Some(Duration::from_secs_f64(seconds))));
    }
    if queries
        .iter()
        .all(|(_, q)| q.contains("backstop_requests_total"))
    {
        let filters_status = queries.iter().filter(|(p, _)| *p != "total").any(|(_, q)| {
            matcher(q, "status").is_some_and(|(v, _)| v.starts_with('5'))
                || q.contains("status!~\"5")
        });
        if !filters_status {
            return Err("the good or bad query over backstop_requests_total must filter on status 5xx (status=~\"5..\" or status!~\"5..\") for an availability SLI".into());
        }
        return Ok((routes, None));
    }
    Err(no_route())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_matchers_are_read_from_queries() {
        let q = r#"sum(rate(backstop_requests_total{route=~"pay|checkout",status!~"5.."}[5m]))"#;
        assert_eq!(matcher(q, "route"), Some(("pay|checkout", true)));
        assert_eq!(matcher(q, "status"), None);
        assert_eq!(
            matcher(r#"x{upstream_route="a", route = "b"}"#, "route"),
            Some(("b", false))
        );
    }

    #[test]
    fn zones_round_trip_through_etc_names() {
        for o in [0, 7200, -18000, 19800, 14 * 3600] {
            assert_eq!(zone_offset(&zone_name(o)), Ok(o), "{o}");
        }
        assert_eq!(zone_name(7200), "Etc/GMT-2");
        assert!(zone_offset("Europe/Berlin")
            .unwrap_err()
            .contains("not a fixed UTC offset"));
    }
}
