//! Calendar windows (`window: calendar_month | calendar_quarter`, `time_zone:`) and
//! traffic-aware burn-rate alerts (`alerting.min_events`): config validation, and promtool
//! unit tests of the generated rules (tests/prometheus/calendar.test.yaml; the low-traffic
//! cases are in tests/prometheus/alerts.test.yaml, run by tests/prometheus.rs).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backstop::slo::calendar::{Calendar, CalendarUnit};
use support::{eventually, get, metrics, proxy, sample, Backend, Behaviour};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool is installed (./scripts/test installs the prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The calendar rules pass `promtool check rules`, and their unit tests prove that the counts
/// restart at the local start of the month and of the quarter (in -01:00), that the period
/// start is right for both, and that the budget is whole again after the reset.
#[test]
fn calendar_rules_reset_at_the_local_period_start() {
    let dir = std::env::temp_dir().join(format!("backstop-slo-calendar-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["rules", "-c"])
        .arg(root().join("tests/prometheus/calendar.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("rules.yaml"), &out.stdout).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("record: backstop:slo_error_ratio:calendar_to_date"));
    assert!(
        !text.contains("rate31d"),
        "a calendar SLO has no rolling period ratio"
    );
    assert!(promtool(&["check", "rules", "rules.yaml"], &dir).contains("SUCCESS"));
    std::fs::copy(
        root().join("tests/prometheus/calendar.test.yaml"),
        dir.join("calendar.test.yaml"),
    )
    .unwrap();
    let out = promtool(&["test", "rules", "calendar.test.yaml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
}

const BASE: &str = "upstreams:\n  pg: { endpoints: [ { address: \"127.0.0.1:9001\" } ] }\nroutes:\n  - { name: pay, upstream: pg }\n";

#[test]
fn calendar_windows_and_min_events_compile() {
    let c = backstop::config::load_str(&format!("{BASE}slos:\n  - {{ name: a, routes: [pay], objective: 99.9%, window: calendar_quarter, time_zone: \"-05:30\", sli: availability, alerting: {{ min_events: 50 }} }}\n  - {{ name: b, routes: [pay], objective: 99.9%, sli: availability }}\n")).unwrap();
    let a = &c.slos[0];
    let calendar = a.calendar.unwrap();
    assert_eq!(calendar.utc_offset_seconds, -(5 * 3600 + 1800));
    assert_eq!(calendar.unit.name(), "calendar_quarter");
    assert_eq!(
        a.window.as_secs(),
        92 * 86_400,
        "the ring holds the longest quarter"
    );
    assert_eq!(a.min_events, 50);
    assert_eq!(c.slos[1].calendar, None);
    assert_eq!(c.slos[1].min_events, 10, "the default");
}

#[test]
fn a_zone_name_or_a_zone_on_a_rolling_window_is_refused_with_its_key_path() {
    let err = backstop::config::load_str(&format!("{BASE}slos:\n  - {{ name: a, routes: [pay], objective: 99.9%, window: calendar_month, time_zone: Europe/Berlin, sli: availability }}\n  - {{ name: b, routes: [pay], objective: 99.9%, window: 28d, time_zone: \"+02:00\", sli: availability }}\n  - {{ name: c, routes: [pay], objective: 99.9%, window: calendar_year, sli: availability }}\n")).unwrap_err().to_string();
    assert!(err.contains("slos[0].time_zone"), "{err}");
    assert!(err.contains("not a fixed UTC offset"), "{err}");
    assert!(err.contains("slos[1].time_zone"), "{err}");
    assert!(err.contains("applies to a calendar window only"), "{err}");
    assert!(err.contains("slos[2].window"), "{err}");
}

/// The length of the current month in +02:00, in seconds.
fn this_month_in_plus_two() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let month = Calendar {
        unit: CalendarUnit::Month,
        utc_offset_seconds: 7200,
    };
    (month.period_end(now) - month.period_start(now)) as u64
}

/// A running proxy with a calendar_month SLO in +02:00: /admin/slos reports the current
/// month's length as its window, counts this month's events, and the live budget gauge follows
/// them (the reset at the month start is proved with a fake clock in src/slo/live.rs).
#[tokio::test]
async fn a_running_proxy_keeps_a_calendar_budget() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&format!(
        "upstreams:\n  pg: {{ endpoints: [{{ address: \"{}\" }}] }}\nroutes:\n  - {{ name: pay, upstream: pg }}\nslos:\n  - {{ name: pay-month, routes: [pay], objective: 99%, window: calendar_month, time_zone: \"+02:00\", sli: availability }}\n",
        backend.addr
    ))
    .await;
    let base = format!("http://{}", app.proxy_addr());
    for _ in 0..3 {
        assert_eq!(get(format!("{base}/a")).await.status, 200);
    }
    backend.set(Behaviour::Status(503));
    assert_eq!(get(format!("{base}/a")).await.status, 503);
    assert_eq!(backend.hits(), 4);

    let before = this_month_in_plus_two();
    let admin = get(format!("http://{}/admin/slos", app.admin_addr()))
        .await
        .json();
    let after = this_month_in_plus_two();
    let slo = &admin["slos"][0];
    assert_eq!(slo["name"], "pay-month");
    let window = slo["window_seconds"].as_u64().unwrap();
    assert!(window == before || window == after, "{window}");
    assert!([28, 29, 30, 31].map(|d| d * 86_400).contains(&window));
    assert_eq!(
        (slo["good"].as_u64(), slo["bad"].as_u64()),
        (Some(3), Some(1))
    );
    // 1 bad in 4 = 25% errors against a 1% budget.
    let expected = 1.0 - 0.25 / 0.01;
    eventually(Duration::from_secs(10), || async {
        let m = metrics(&app).await;
        sample(
            &m,
            r#"backstop_slo_error_budget_remaining{slo="pay-month"}"#,
        )
        .is_some_and(|b| (b - expected).abs() < 1e-6)
    })
    .await;
}
