//! Breaker and ejection history (#13 item 2) against real backends: the transitions of a trip,
//! its half-open probe and the close, as `/admin/circuits` (JSON) and the metrics show them;
//! the history survives a hot reload; an ejection and its return are remembered per endpoint.

mod support;

use std::time::{Duration, SystemTime};

use backstop::metrics::Metrics;
use backstop::App;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use support::{eventually, get, metrics, proxy, sample, send, Backend, Behaviour};

async fn circuits(app: &App) -> Value {
    get(format!("http://{}/admin/circuits", app.admin_addr()))
        .await
        .json()
}

fn unix(rfc3339: &str) -> f64 {
    humantime::parse_rfc3339(rfc3339)
        .unwrap()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn transition(t: &Value) -> (&str, &str, &str) {
    (
        t["from"].as_str().unwrap(),
        t["to"].as_str().unwrap(),
        t["reason"].as_str().unwrap(),
    )
}

fn counts(t: &Value) -> (u64, u64, u64) {
    (
        t["window"]["requests"].as_u64().unwrap(),
        t["window"]["failures"].as_u64().unwrap(),
        t["consecutive_failures"].as_u64().unwrap(),
    )
}

/// consecutive_failures opens (with a failure_rate window that never trips, so the window
/// counts are visible), the open period ends, one probe against the recovered backend closes.
const BREAKER: &str = "    circuit_breaker:\n      consecutive_failures: 2\n      failure_rate: { threshold: 50%, window: 30s, min_requests: 1000 }\n      open_for: 300ms\n      half_open_requests: 1\n";

/// Trip, half-open, close: three transitions with their reasons and counts in the history, the
/// original trip and opened_at while open, the opened-at metric equal to that time, and the
/// per-reason transition counter.
#[tokio::test]
async fn trip_probe_and_close_are_in_the_history_and_the_metrics() {
    let backend = Backend::start(Behaviour::Status(503)).await;
    let yaml = format!(
        "upstreams:\n  pg:\n    endpoints: [{{ address: \"{}\" }}]\n{BREAKER}routes:\n  - {{ name: pay, upstream: pg }}\n",
        backend.addr
    );
    let app = proxy(&yaml).await;
    let url = format!("http://{}/charge", app.proxy_addr());
    let before = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for _ in 0..2 {
        assert_eq!(get(url.clone()).await.status, 503);
    }
    let c = circuits(&app).await["circuits"][0].clone();
    assert_eq!(
        (c["state"].as_str(), c["cause"].as_str()),
        (Some("open"), Some("consecutive_failures")),
        "{c}"
    );
    let opened_at = c["opened_at"].as_str().expect("opened_at set while open");
    assert_eq!(c["trip"]["at"].as_str(), Some(opened_at));
    assert_eq!(
        transition(&c["trip"]),
        ("closed", "open", "consecutive_failures")
    );
    let opened = unix(opened_at);
    assert!(opened >= before - 0.001, "{opened} >= {before}");
    let m = metrics(&app).await;
    let gauge = sample(
        &m,
        r#"backstop_circuit_opened_at_timestamp_seconds{route="",upstream="pg"}"#,
    )
    .expect("opened-at metric");
    assert!(
        (gauge - opened).abs() < 0.002,
        "metric {gauge} vs JSON {opened}"
    );

    backend.set(Behaviour::Echo);
    eventually(Duration::from_secs(5), || async {
        circuits(&app).await["circuits"][0]["state"] == "half_open"
    })
    .await;
    assert_eq!(get(url.clone()).await.status, 200, "the probe");
    assert_eq!(backend.hits(), 3, "two failures, one probe");

    let c = circuits(&app).await["circuits"][0].clone();
    assert_eq!(c["state"], "closed", "{c}");
    assert!(c["opened_at"].is_null() && c["trip"].is_null(), "{c}");
    let history = c["history"].as_array().unwrap();
    let transitions: Vec<_> = history.iter().map(transition).collect();
    assert_eq!(
        transitions,
        [
            ("closed", "open", "consecutive_failures"),
            ("open", "half_open", "open_period_elapsed"),
            ("half_open", "closed", "probes_passed"),
        ]
    );
    // The window held the two failures (and nothing was counted while open or probing).
    assert_eq!(counts(&history[0]), (2, 2, 2), "{}", history[0]);
    assert_eq!(counts(&history[1]), (2, 2, 2), "{}", history[1]);
    assert_eq!(counts(&history[2]), (2, 2, 2), "{}", history[2]);
    assert_eq!(history[0]["at"].as_str(), Some(opened_at));
    let times: Vec<f64> = history
        .iter()
        .map(|t| unix(t["at"].as_str().unwrap()))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(
        times[1] - times[0] >= 0.25,
        "open for about 300ms: {times:?}"
    );
    assert_eq!(c["window"]["requests"], 0, "the close cleared the window");

    let m = metrics(&app).await;
    for (from, to, reason) in transitions {
        let series = format!(
            r#"backstop_circuit_transition_reasons_total{{from="{from}",reason="{reason}",route="",to="{to}",upstream="pg"}}"#
        );
        assert_eq!(sample(&m, &series), Some(1.0), "{series}");
    }
    let gauge = sample(
        &m,
        r#"backstop_circuit_opened_at_timestamp_seconds{route="",upstream="pg"}"#,
    );
    assert_eq!(
        gauge.map(|g| (g - opened).abs() < 0.002),
        Some(true),
        "the last open time stays"
    );
}

/// The history lives in the breaker cell: a reload that keeps the breaker's config keeps it.
#[tokio::test]
async fn history_survives_a_reload() {
    let (failing, other) = (
        Backend::start(Behaviour::Status(503)).await,
        Backend::start(Behaviour::Echo).await,
    );
    let dir = std::env::temp_dir().join(format!("backstop-history-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("backstop.yaml");
    let config = |timeout: &str| {
        format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nupstreams:\n  pg:\n    endpoints: [{{ address: \"{}\" }}]\n    circuit_breaker: {{ consecutive_failures: 1, open_for: 60s }}\n  other:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - {{ name: pay, match: {{ path_prefix: /pay }}, upstream: pg }}\n  - {{ name: rest, upstream: other, timeout: {timeout} }}\n",
            failing.addr, other.addr
        )
    };
    std::fs::write(&file, config("5s")).unwrap();
    let app = App::start_watching(
        backstop::config::load(&file).unwrap(),
        Metrics::new(),
        &file,
    )
    .await
    .unwrap();
    get(format!("http://{}/pay", app.proxy_addr())).await;
    let before = circuits(&app).await["circuits"][0].clone();
    assert_eq!(
        before["history"].as_array().map(Vec::len),
        Some(1),
        "{before}"
    );
    std::fs::write(&file, config("2s")).unwrap();
    let reloaded = send(
        Request::post(format!("http://{}/admin/reload", app.admin_addr()))
            .header("x-backstop-admin", "1")
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    assert_eq!(reloaded.json()["generation"], 2);
    let after = circuits(&app).await["circuits"][0].clone();
    assert_eq!(after["history"], before["history"]);
    assert_eq!(after["trip"], before["trip"]);
    assert_eq!(after["opened_at"], before["opened_at"]);
    assert_eq!(failing.hits(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An endpoint that keeps failing is ejected; the ejection and its return are in its history,
/// with the failures in a row that caused it.
#[tokio::test]
async fn ejection_and_return_are_in_the_endpoint_history() {
    let (bad, good) = (
        Backend::start(Behaviour::Status(503)).await,
        Backend::start(Behaviour::Echo).await,
    );
    let yaml = format!(
        "upstreams:\n  agency:\n    endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}]\n    load_balancing: round_robin\n    outlier_detection: {{ consecutive_failures: 2, base_ejection: 300ms, max_ejected: 50% }}\nroutes:\n  - {{ name: r, upstream: agency }}\n",
        bad.addr, good.addr
    );
    let app = proxy(&yaml).await;
    let url = format!("http://{}/x", app.proxy_addr());
    eventually(Duration::from_secs(5), || async {
        get(url.clone()).await;
        circuits(&app).await["endpoints"][0]["ejected"] == true
    })
    .await;
    let hits = bad.hits();
    assert!(hits >= 2, "{hits}");
    let e = circuits(&app).await["endpoints"][0].clone();
    assert_eq!(
        e["endpoint"].as_str(),
        Some(bad.addr.to_string().as_str()),
        "{e}"
    );
    assert_eq!(e["ejections"], 1);
    let first = &e["history"][0];
    assert_eq!(
        (first["event"].as_str(), first["reason"].as_str()),
        (Some("ejected"), Some("consecutive_failures")),
        "{e}"
    );
    assert_eq!(first["consecutive_failures"], 2);
    assert_eq!(first["duration_seconds"], 0.3);
    for _ in 0..4 {
        assert_eq!(
            get(url.clone()).await.status,
            200,
            "the healthy endpoint serves"
        );
    }
    assert_eq!(bad.hits(), hits, "nothing sent to the ejected endpoint");
    eventually(Duration::from_secs(5), || async {
        circuits(&app).await["endpoints"][0]["history"]
            .as_array()
            .map(Vec::len)
            == Some(2)
    })
    .await;
    let e = circuits(&app).await["endpoints"][0].clone();
    assert_eq!(e["ejected"], false, "{e}");
    let back = &e["history"][1];
    assert_eq!(
        (back["event"].as_str(), back["reason"].as_str()),
        (Some("returned"), Some("ejection_elapsed")),
        "{e}"
    );
    assert!(unix(back["at"].as_str().unwrap()) >= unix(first["at"].as_str().unwrap()) + 0.25);
}
