//! `backstop slo export --openslo` and `backstop slo import FILE`: the `slos:` section as
//! OpenSLO v1 and back, run through the real binary.

use std::path::PathBuf;
use std::process::Command;

const BASE: &str = "upstreams:\n  pg: { endpoints: [ { address: \"127.0.0.1:9001\" } ] }\nroutes:\n  - { name: pay, upstream: pg }\n  - { name: checkout, upstream: pg }\n  - { name: search, upstream: pg }\n";

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("backstop-slo-openslo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// (exit code, stdout, stderr) of the binary.
fn backstop(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn export(config: &str, name: &str) -> String {
    let path = temp_file(name, config);
    let (code, out, err) = backstop(&["slo", "export", "--openslo", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    out
}

fn import(openslo: &str, name: &str) -> (i32, String, String) {
    let path = temp_file(name, openslo);
    backstop(&["slo", "import", path.to_str().unwrap()])
}

/// Every kind of SLO backstop has: rolling and calendar windows (month and quarter, whole and
/// half-hour offsets), availability with and without rate-limited requests, latency, and a
/// non-default min_events. Export then import gives the same compiled SLOs, and exporting the
/// imported section again gives the same OpenSLO text.
#[test]
fn export_then_import_gives_the_same_slos_section() {
    let slos = "slos:\n  - { name: pay-availability, routes: [pay, checkout], objective: 99.9%, window: 28d, sli: availability, exclude_rate_limited: true }\n  - { name: pay-latency, routes: [pay], objective: 99%, window: 7d, sli: { latency_below: 300ms }, alerting: { min_events: 25 } }\n  - { name: checkout-month, routes: [checkout], objective: 99.95%, window: calendar_month, time_zone: \"+02:00\", sli: availability }\n  - { name: search-quarter, routes: [search], objective: 99.5%, window: calendar_quarter, time_zone: \"+05:30\", sli: availability, alerting: { min_events: 0 } }\n";
    let config = format!("{BASE}{slos}");
    let openslo = export(&config, "round-trip.yaml");
    assert_eq!(openslo.matches("kind: SLO\n").count(), 4, "{openslo}");
    assert!(openslo.contains("apiVersion: openslo/v1"));
    assert!(openslo.contains("query: \"sum(backstop_slo_events_total{slo=\\\"pay-availability\\\",result=\\\"good\\\"})\""), "{openslo}");
    assert!(openslo.contains("duration: 1M\n      isRolling: false"));
    assert!(openslo.contains("timeZone: Etc/GMT-2"));
    assert!(openslo.contains("duration: 1Q"));
    assert!(openslo.contains("target: 0.9995"));

    let (code, imported, err) = import(&openslo, "round-trip.openslo.yaml");
    assert_eq!(code, 0, "{err}");
    let before = backstop::config::load_str(&config).unwrap();
    let after = backstop::config::load_str(&format!("{BASE}{imported}"))
        .unwrap_or_else(|e| panic!("{e}\n{imported}"));
    assert_eq!(before.slos, after.slos, "{imported}");
    assert_eq!(
        export(&format!("{BASE}{imported}"), "round-trip-2.yaml"),
        openslo
    );
}

/// An OpenSLO file written by hand, with SLIs over backstop's own request metrics (no
/// backstop annotations), an indicatorRef to an SLI object, a calendar month in Etc/GMT-2 and
/// a Service object that is skipped.
#[test]
fn import_reads_slis_over_backstop_request_metrics() {
    let openslo = r#"apiVersion: openslo/v1
kind: Service
metadata: { name: payments }
spec: { description: Payments }
---
apiVersion: openslo/v1
kind: SLI
metadata: { name: pay-fast }
spec:
  ratioMetric:
    counter: true
    good:
      metricSource:
        type: Prometheus
        spec: { query: 'sum(rate(backstop_request_duration_seconds_bucket{route="pay",le="0.3"}[5m]))' }
    total:
      metricSource:
        type: Prometheus
        spec: { query: 'sum(rate(backstop_request_duration_seconds_count{route="pay"}[5m]))' }
---
apiVersion: openslo/v1
kind: SLO
metadata: { name: pay-available }
spec:
  service: payments
  budgetingMethod: Occurrences
  indicator:
    metadata: { name: pay-available }
    spec:
      ratioMetric:
        counter: true
        bad:
          metricSource:
            type: Prometheus
            spec: { query: 'sum(rate(backstop_requests_total{route=~"pay|checkout",status=~"5.."}[5m]))' }
        total:
          metricSource:
            type: Prometheus
            spec: { query: 'sum(rate(backstop_requests_total{route=~"pay|checkout"}[5m]))' }
  timeWindow:
    - duration: 1M
      isRolling: false
      calendar: { startTime: "2024-01-01 00:00:00", timeZone: Etc/GMT-2 }
  objectives:
    - { displayName: good, target: 0.999 }
---
apiVersion: openslo/v1
kind: SLO
metadata: { name: pay-fast }
spec:
  service: payments
  indicatorRef: pay-fast
  timeWindow: [ { duration: 4w, isRolling: true } ]
  objectives: [ { targetPercent: 99 } ]
"#;
    let (code, out, err) = import(openslo, "by-hand.yaml");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "slos:\n  - name: pay-available\n    routes: [pay, checkout]\n    objective: 99.9%\n    window: calendar_month\n    time_zone: \"+02:00\"\n    sli: availability\n  - name: pay-fast\n    routes: [pay]\n    objective: 99%\n    window: 28d\n    sli: { latency_below: 300ms }\n"
    );
    let config = backstop::config::load_str(&format!("{BASE}{out}")).unwrap();
    assert_eq!(config.slos.len(), 2);
}

/// SLOs that backstop cannot express are refused, each with the reason, and exit 1.
#[test]
fn import_of_an_unsupported_slo_says_why() {
    let slo = |spec: &str| {
        format!("apiVersion: openslo/v1\nkind: SLO\nmetadata: {{ name: x }}\nspec:\n  service: s\n  timeWindow: [ {{ duration: 28d, isRolling: true }} ]\n  objectives: [ {{ target: 0.99 }} ]\n{spec}")
    };
    let prom = |q: &str| format!("metricSource: {{ type: Prometheus, spec: {{ query: '{q}' }} }}");
    let cases = [
        (
            slo("  indicator:\n    metadata: { name: x }\n    spec:\n      thresholdMetric: { metricSource: { type: Prometheus, spec: { query: 'up' } } }\n"),
            "a thresholdMetric SLI is not supported",
        ),
        (
            slo(&format!("  indicator:\n    metadata: {{ name: x }}\n    spec:\n      ratioMetric:\n        counter: true\n        good: {{ {} }}\n        total: {{ {} }}\n", prom("sum(http_requests_total{code!~\"5..\"})"), prom("sum(http_requests_total)"))),
            "does not name a backstop route",
        ),
        (
            slo(&format!("  indicator:\n    metadata: {{ name: x }}\n    spec:\n      ratioMetric:\n        counter: true\n        good: {{ {} }}\n        total: {{ {} }}\n", prom("sum(backstop_slo_events_total{slo=\"x\",result=\"good\"})"), prom("sum(backstop_slo_events_total{slo=\"x\"})"))),
            "add the annotations backstop.io/routes",
        ),
        (
            slo("  indicator:\n    metadata: { name: x }\n    spec:\n      ratioMetric:\n        counter: true\n        good: { metricSource: { type: Datadog, spec: { query: 'sum:requests.ok' } } }\n        total: { metricSource: { type: Datadog, spec: { query: 'sum:requests' } } }\n"),
            "comes from \"Datadog\"",
        ),
        (
            slo("  budgetingMethod: Timeslices\n  indicator: { metadata: { name: x }, spec: { ratioMetric: {} } }\n"),
            "backstop counts occurrences",
        ),
        (
            "apiVersion: openslo/v1\nkind: SLO\nmetadata:\n  name: x\n  annotations: { backstop.io/routes: pay }\nspec:\n  indicator: { metadata: { name: x }, spec: { ratioMetric: {} } }\n  timeWindow: [ { duration: 1M, isRolling: false, calendar: { startTime: \"2024-01-01 00:00:00\", timeZone: Europe/Berlin } } ]\n  objectives: [ { target: 0.99 } ]\n".to_owned(),
            "\"Europe/Berlin\" is not a fixed UTC offset",
        ),
        (
            "apiVersion: openslo/v1\nkind: Service\nmetadata: { name: x }\n".to_owned(),
            "no OpenSLO object of kind SLO",
        ),
    ];
    for (i, (text, why)) in cases.iter().enumerate() {
        let (code, out, err) = import(text, &format!("bad-{i}.yaml"));
        assert_eq!(code, 1, "case {i}: {out}");
        assert!(out.is_empty(), "case {i}: {out}");
        assert!(err.contains(why), "case {i}: {err}");
        assert!(err.contains("cannot import"), "case {i}: {err}");
    }
}
