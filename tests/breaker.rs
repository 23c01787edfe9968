//! Circuit breakers, bulkheads and outlier ejection against real backends; deliveries are
//! counted at the backend.

mod support;

use std::time::Duration;

use http::Request;
use http_body_util::Full;
use support::{closed_port, eventually, get, metrics, proxy, sample, send, Backend, Behaviour};

fn one_upstream(backend: &Backend, upstream_extra: &str) -> String {
    format!(
        "upstreams:\n  pg:\n    endpoints: [{{ address: \"{}\" }}]\n{upstream_extra}routes:\n  - {{ name: pay, upstream: pg }}\n",
        backend.addr
    )
}

async fn circuits(app: &backstop::App) -> serde_json::Value {
    get(format!("http://{}/admin/circuits", app.admin_addr()))
        .await
        .json()["circuits"]
        .clone()
}

async fn admin_post(app: &backstop::App, path: &str) -> support::Answer {
    send(
        Request::post(format!("http://{}{path}", app.admin_addr()))
            .header("x-backstop-admin", "1")
            .body(Full::default())
            .unwrap(),
    )
    .await
}

/// After N consecutive 5xx the breaker opens: callers get 503 circuit_open with Retry-After, and
/// the backend sees nothing more while it is open.
#[tokio::test]
async fn opens_after_consecutive_failures_and_shields_the_backend() {
    let backend = Backend::start(Behaviour::Status(503)).await;
    let cfg = "    circuit_breaker:\n      consecutive_failures: 3\n      open_for: 60s\n";
    let app = proxy(&one_upstream(&backend, cfg)).await;
    let url = format!("http://{}/charge", app.proxy_addr());
    for _ in 0..3 {
        let r = get(url.clone()).await;
        assert_eq!(
            (r.status.as_u16(), r.header("x-backstop-reason")),
            (503, ""),
            "backend's own 503"
        );
    }
    for _ in 0..10 {
        let r = get(url.clone()).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-backstop-reason"), "circuit_open");
        assert_eq!(r.json()["error"], "circuit_open");
        let retry_after: u64 = r.header("retry-after").parse().unwrap();
        assert!(
            (50..=67).contains(&retry_after),
            "open_for 60s +-10%: {retry_after}"
        );
    }
    assert_eq!(backend.hits(), 3, "nothing reached the backend while open");
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            r#"backstop_circuit_state{route="",state="open",upstream="pg"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"backstop_circuit_state{route="",state="closed",upstream="pg"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"backstop_circuit_transitions_total{from="closed",route="",to="open",upstream="pg"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"backstop_circuit_rejected_total{mode="enforce",route="",upstream="pg"}"#
        ),
        Some(10.0)
    );
    let c = &circuits(&app).await[0];
    assert_eq!(c["state"], "open");
    assert!(
        c["reason"]
            .as_str()
            .unwrap()
            .starts_with("consecutive_failures 3 >= 3"),
        "{c}"
    );
}

/// Half-open admits exactly `half_open_requests` probes even under concurrency; when they all
/// succeed the breaker closes and traffic flows again.
#[tokio::test]
async fn half_open_admits_exactly_n_probes_then_closes() {
    let backend = Backend::start(Behaviour::Status(503)).await;
    let cfg = "    circuit_breaker:\n      consecutive_failures: 1\n      open_for: 300ms\n      half_open_requests: 2\n";
    let app = proxy(&one_upstream(&backend, cfg)).await;
    let url = format!("http://{}/charge", app.proxy_addr());
    get(url.clone()).await;
    assert_eq!(circuits(&app).await[0]["state"], "open");
    backend.set(Behaviour::Delay(Duration::from_millis(400)));
    eventually(Duration::from_secs(5), || async {
        circuits(&app).await[0]["seconds_until_half_open"] == 0.0
    })
    .await;
    let burst: Vec<_> = (0..6).map(|_| tokio::spawn(get(url.clone()))).collect();
    let mut statuses = Vec::new();
    for r in burst {
        let r = r.await.unwrap();
        statuses.push((r.status.as_u16(), r.header("x-backstop-reason").to_owned()));
    }
    let probes = statuses.iter().filter(|(s, _)| *s == 200).count();
    // Refused while the probes are out: `circuit_half_open` once the dataplane answers through
    // BreakerCell::check, `circuit_open` before.
    let rejected = statuses
        .iter()
        .filter(|(_, reason)| reason == "circuit_half_open" || reason == "circuit_open")
        .count();
    assert_eq!((probes, rejected), (2, 4), "{statuses:?}");
    assert_eq!(
        backend.hits(),
        1 + 2,
        "one failure, then exactly two probes"
    );
    assert_eq!(circuits(&app).await[0]["state"], "closed");
    assert_eq!(get(url).await.status, 200);
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            r#"backstop_circuit_transitions_total{from="half_open",route="",to="closed",upstream="pg"}"#
        ),
        Some(1.0)
    );
}

/// Calls slower than slow_call.duration open the breaker even though they succeed.
#[tokio::test]
async fn slow_calls_open_the_breaker() {
    let backend = Backend::start(Behaviour::Delay(Duration::from_millis(150))).await;
    let cfg = "    circuit_breaker:\n      slow_call: { duration: 100ms, threshold: 50%, min_requests: 3 }\n      open_for: 60s\n";
    let app = proxy(&one_upstream(&backend, cfg)).await;
    let url = format!("http://{}/quote", app.proxy_addr());
    for _ in 0..3 {
        assert_eq!(get(url.clone()).await.status, 200);
    }
    assert_eq!(get(url).await.header("x-backstop-reason"), "circuit_open");
    assert_eq!(backend.hits(), 3);
    let reason = circuits(&app).await[0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.starts_with("slow_call_rate 100% >= 50% over 30s, 3 requests"),
        "{reason}"
    );
}

/// Connect failures count as failures by default.
#[tokio::test]
async fn connect_failures_open_the_breaker() {
    let addr = closed_port().await;
    let yaml = format!(
        "upstreams:\n  pg:\n    endpoints: [{{ address: \"{addr}\" }}]\n    circuit_breaker: {{ consecutive_failures: 2 }}\nroutes:\n  - {{ name: pay, upstream: pg }}\n"
    );
    let app = proxy(&yaml).await;
    let url = format!("http://{}/", app.proxy_addr());
    assert_eq!(
        get(url.clone()).await.header("x-backstop-reason"),
        "upstream_connect_failed"
    );
    assert_eq!(
        get(url.clone()).await.header("x-backstop-reason"),
        "upstream_connect_failed"
    );
    assert_eq!(get(url).await.header("x-backstop-reason"), "circuit_open");
}

/// Shadow mode forwards every request but counts what it would have rejected.
#[tokio::test]
async fn shadow_mode_forwards_everything_and_counts() {
    let backend = Backend::start(Behaviour::Status(503)).await;
    let cfg = "    circuit_breaker:\n      mode: shadow\n      consecutive_failures: 2\n      open_for: 60s\n";
    let app = proxy(&one_upstream(&backend, cfg)).await;
    for _ in 0..10 {
        let r = get(format!("http://{}/", app.proxy_addr())).await;
        assert_eq!(
            (r.status.as_u16(), r.header("x-backstop-reason")),
            (503, "")
        );
    }
    assert_eq!(backend.hits(), 10, "shadow mode rejects nothing");
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            r#"backstop_circuit_rejected_total{mode="shadow",route="",upstream="pg"}"#
        ),
        Some(8.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"backstop_circuit_state{route="",state="open",upstream="pg"}"#
        ),
        Some(1.0)
    );
}

/// A route-level breaker opens for its route only; another route to the same upstream flows.
#[tokio::test]
async fn route_level_breaker_is_separate_from_other_routes() {
    let backend = Backend::start(Behaviour::Status(503)).await;
    let yaml = format!(
        "upstreams:\n  agency:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - name: eu\n    match: {{ path_prefix: /eu }}\n    upstream: agency\n    circuit_breaker: {{ consecutive_failures: 1, open_for: 60s }}\n  - name: us\n    match: {{ path_prefix: /us }}\n    upstream: agency\n",
        backend.addr
    );
    let app = proxy(&yaml).await;
    let base = format!("http://{}", app.proxy_addr());
    get(format!("{base}/eu/orders")).await;
    assert_eq!(
        get(format!("{base}/eu/orders"))
            .await
            .header("x-backstop-reason"),
        "circuit_open"
    );
    let us = get(format!("{base}/us/orders")).await;
    assert_eq!(
        (us.status.as_u16(), us.header("x-backstop-reason")),
        (503, ""),
        "reached the backend"
    );
    assert_eq!(backend.hits(), 2);
    let c = &circuits(&app).await[0];
    assert_eq!(
        (c["route"].as_str(), c["state"].as_str()),
        (Some("eu"), Some("open"))
    );
}

/// The admin API forces a breaker open, closed, or resets it.
#[tokio::test]
async fn admin_forces_breaker_states() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&one_upstream(
        &backend,
        "    circuit_breaker: { consecutive_failures: 5 }\n",
    ))
    .await;
    let url = format!("http://{}/", app.proxy_addr());
    let r = admin_post(&app, "/admin/circuits/pg/open").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["state"].as_str()),
        (200, Some("open"))
    );
    assert_eq!(
        get(url.clone()).await.header("x-backstop-reason"),
        "circuit_open"
    );
    assert_eq!(backend.hits(), 0);
    assert_eq!(
        admin_post(&app, "/admin/circuits/pg/close").await.json()["state"],
        "closed"
    );
    assert_eq!(get(url.clone()).await.status, 200);
    assert_eq!(
        admin_post(&app, "/admin/circuits/pg/reset").await.json()["reason"],
        "reset by admin"
    );
    assert_eq!(
        admin_post(&app, "/admin/circuits/nope/open").await.status,
        404
    );
    assert_eq!(
        admin_post(&app, "/admin/circuits/pg/explode").await.status,
        404
    );
    let r = get(format!(
        "http://{}/admin/circuits/pg/open",
        app.admin_addr()
    ))
    .await;
    assert_eq!(r.status, 405, "GET does not mutate");
}

/// Beyond max_concurrent_requests the proxy answers 503 upstream_overloaded at once.
#[tokio::test]
async fn bulkhead_rejects_beyond_the_limit() {
    let backend = Backend::start(Behaviour::Delay(Duration::from_millis(500))).await;
    let app = proxy(&one_upstream(&backend, "    max_concurrent_requests: 2\n")).await;
    let url = format!("http://{}/", app.proxy_addr());
    let slow: Vec<_> = (0..2).map(|_| tokio::spawn(get(url.clone()))).collect();
    eventually(Duration::from_secs(5), || async { backend.hits() == 2 }).await;
    for _ in 0..3 {
        let r = get(url.clone()).await;
        assert_eq!(
            (r.status.as_u16(), r.header("x-backstop-reason")),
            (503, "upstream_overloaded")
        );
    }
    for r in slow {
        assert_eq!(r.await.unwrap().status, 200);
    }
    assert_eq!(backend.hits(), 2);
    let m = metrics(&app).await;
    assert_eq!(
        sample(&m, r#"backstop_overload_rejected_total{upstream="pg"}"#),
        Some(3.0)
    );
    assert_eq!(
        sample(&m, r#"backstop_upstream_in_flight{upstream="pg"}"#),
        Some(0.0)
    );
    assert_eq!(get(url).await.status, 200, "slots are freed");
}

/// A failing endpoint is ejected and traffic shifts to the healthy one.
#[tokio::test]
async fn outlier_ejection_shifts_traffic_to_healthy_endpoints() {
    let (bad, good) = (
        Backend::start(Behaviour::Status(503)).await,
        Backend::start(Behaviour::Echo).await,
    );
    let yaml = format!(
        "upstreams:\n  agency:\n    endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}]\n    load_balancing: round_robin\n    outlier_detection: {{ consecutive_failures: 2, base_ejection: 60s }}\nroutes:\n  - {{ name: r, upstream: agency }}\n",
        bad.addr, good.addr
    );
    let app = proxy(&yaml).await;
    for _ in 0..20 {
        get(format!("http://{}/", app.proxy_addr())).await;
    }
    assert_eq!(bad.hits(), 2, "ejected after two failures in a row");
    assert_eq!(good.hits(), 18);
    let m = metrics(&app).await;
    let ejected = |b: &Backend| {
        format!(
            r#"backstop_endpoint_ejected{{endpoint="{}",upstream="agency"}}"#,
            b.addr
        )
    };
    assert_eq!(sample(&m, &ejected(&bad)), Some(1.0));
    assert_eq!(sample(&m, &ejected(&good)), Some(0.0));
    let total = format!(
        r#"backstop_endpoint_ejections_total{{endpoint="{}",upstream="agency"}}"#,
        bad.addr
    );
    assert_eq!(sample(&m, &total), Some(1.0));
}

/// Ejection never takes out more than max_ejected of the endpoints, even when all fail.
#[tokio::test]
async fn outlier_ejection_respects_max_ejected() {
    let (a, b) = (
        Backend::start(Behaviour::Status(503)).await,
        Backend::start(Behaviour::Status(503)).await,
    );
    let yaml = format!(
        "upstreams:\n  agency:\n    endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}]\n    load_balancing: round_robin\n    outlier_detection: {{ consecutive_failures: 1, max_ejected: 50% }}\nroutes:\n  - {{ name: r, upstream: agency }}\n",
        a.addr, b.addr
    );
    let app = proxy(&yaml).await;
    for _ in 0..10 {
        get(format!("http://{}/", app.proxy_addr())).await;
    }
    let m = metrics(&app).await;
    let ejected: f64 = [&a, &b]
        .iter()
        .filter_map(|x| {
            sample(
                &m,
                &format!(
                    r#"backstop_endpoint_ejected{{endpoint="{}",upstream="agency"}}"#,
                    x.addr
                ),
            )
        })
        .sum();
    assert_eq!(ejected, 1.0, "one of two endpoints at most");
    assert_eq!(
        a.hits() + b.hits(),
        10,
        "every request still went somewhere"
    );
}

/// Once the open period ends the breaker reports half_open with no traffic at all: in the
/// state gauge (so an alert on `state="open"` stops firing), in /admin/circuits and on the
/// status page. Nothing reaches the backend meanwhile.
#[tokio::test]
async fn open_period_end_shows_half_open_without_traffic() {
    let backend = Backend::start(Behaviour::Status(503)).await;
    let cfg = "    circuit_breaker:\n      consecutive_failures: 1\n      open_for: 200ms\n";
    let app = proxy(&one_upstream(&backend, cfg)).await;
    get(format!("http://{}/charge", app.proxy_addr())).await;
    let state = |m: &str, s: &str| {
        sample(
            m,
            &format!(r#"backstop_circuit_state{{route="",state="{s}",upstream="pg"}}"#),
        )
    };
    assert_eq!(state(&metrics(&app).await, "open"), Some(1.0));
    // Only the metrics endpoint is read here: the gauge must move on its own.
    eventually(Duration::from_secs(3), || async {
        state(&metrics(&app).await, "half_open") == Some(1.0)
    })
    .await;
    let m = metrics(&app).await;
    assert_eq!(state(&m, "open"), Some(0.0));
    assert_eq!(state(&m, "closed"), Some(0.0));
    assert_eq!(
        sample(
            &m,
            r#"backstop_circuit_transitions_total{from="open",route="",to="half_open",upstream="pg"}"#
        ),
        Some(1.0)
    );
    let c = &circuits(&app).await[0];
    assert_eq!(c["state"], "half_open", "{c}");
    assert_eq!(c["seconds_until_half_open"], 0.0, "{c}");
    let page = get(format!("http://{}/", app.admin_addr())).await;
    let html = String::from_utf8_lossy(&page.body);
    assert!(
        html.contains(r#"<span class="state half_open">half_open</span>"#),
        "{html}"
    );
    assert_eq!(backend.hits(), 1, "no traffic moved the breaker");
}

/// The admin view alone also resolves an ended open period, without waiting for any timer.
#[tokio::test]
async fn admin_view_reports_half_open_as_soon_as_the_period_ends() {
    let backend = Backend::start(Behaviour::Status(503)).await;
    let cfg = "    circuit_breaker:\n      consecutive_failures: 1\n      open_for: 100ms\n";
    let app = proxy(&one_upstream(&backend, cfg)).await;
    get(format!("http://{}/charge", app.proxy_addr())).await;
    eventually(Duration::from_secs(3), || async {
        circuits(&app).await[0]["state"] == "half_open"
    })
    .await;
    let upstreams = get(format!("http://{}/admin/upstreams", app.admin_addr()))
        .await
        .json();
    assert_eq!(upstreams["upstreams"][0]["breaker"], "half_open");
    assert_eq!(backend.hits(), 1);
}

/// While half-open with every probe slot taken, a rejected request says so: 503
/// `circuit_half_open`, not "the breaker is open". Needs the dataplane to map the breaker's
/// refusal through `BreakerCell::check` (see the module docs of breaker_cell).
#[tokio::test]
async fn half_open_rejection_says_half_open() {
    let backend = Backend::start(Behaviour::Status(503)).await;
    let cfg = "    circuit_breaker:\n      consecutive_failures: 1\n      open_for: 100ms\n      half_open_requests: 1\n";
    let app = proxy(&one_upstream(&backend, cfg)).await;
    let url = format!("http://{}/charge", app.proxy_addr());
    get(url.clone()).await;
    eventually(Duration::from_secs(3), || async {
        circuits(&app).await[0]["state"] == "half_open"
    })
    .await;
    backend.set(Behaviour::Delay(Duration::from_millis(500)));
    let probe = tokio::spawn(get(url.clone()));
    eventually(Duration::from_secs(3), || async { backend.hits() == 2 }).await;
    let r = get(url).await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-backstop-reason")),
        (503, "circuit_half_open")
    );
    assert_eq!(r.json()["error"], "circuit_half_open");
    assert!(!r.json()["message"].as_str().unwrap().contains("is open"));
    assert_eq!(probe.await.unwrap().status, 200);
    assert_eq!(
        backend.hits(),
        2,
        "the rejected request did not reach the backend"
    );
}
