//! SLOs: SLI events per SLO, the live budget and burn-rate gauges, /admin/slos.

mod support;

use std::time::Duration;

use support::{eventually, get, metrics, proxy, sample, Backend, Behaviour};

fn config(backend: &Backend, slos: &str) -> String {
    format!(
        "upstreams:\n  pg:\n    endpoints: [{{ address: \"{}\" }}]\n    circuit_breaker: {{ consecutive_failures: 3, open_for: 60s }}\nroutes:\n  - name: pay\n    match: {{ path_prefix: /pay }}\n    upstream: pg\n    rate_limit: {{ rate: 1/m, burst: 100 }}\n  - name: other\n    upstream: pg\nslos:\n{slos}",
        backend.addr
    )
}

/// Availability: upstream 5xx and backstop's own failures are bad, 2xx and 4xx good; only the
/// SLO's routes count; objective, budget and burn-rate gauges follow.
#[tokio::test]
async fn availability_events_and_live_budget() {
    let backend = Backend::start(Behaviour::Echo).await;
    let slos = "  - { name: pay-availability, routes: [pay], objective: 99%, window: 28d, sli: availability }\n";
    let app = proxy(&config(&backend, slos)).await;
    let base = format!("http://{}", app.proxy_addr());
    for _ in 0..6 {
        assert_eq!(get(format!("{base}/pay/x")).await.status, 200);
    }
    backend.set(Behaviour::Status(404));
    assert_eq!(get(format!("{base}/pay/x")).await.status, 404);
    backend.set(Behaviour::Status(503));
    for _ in 0..3 {
        get(format!("{base}/pay/x")).await;
    }
    assert_eq!(
        get(format!("{base}/pay/x"))
            .await
            .header("x-backstop-reason"),
        "circuit_open"
    );
    get(format!("{base}/elsewhere")).await; // another route: not in the SLO

    let m = metrics(&app).await;
    let events = |result: &str| {
        sample(
            &m,
            &format!(r#"backstop_slo_events_total{{result="{result}",slo="pay-availability"}}"#),
        )
    };
    assert_eq!(events("good"), Some(7.0), "six 200s and one 404");
    assert_eq!(events("bad"), Some(4.0), "three 503s and one circuit_open");
    assert_eq!(
        sample(&m, r#"backstop_slo_objective{slo="pay-availability"}"#),
        Some(0.99)
    );
    // 4 bad of 11 = 36% errors against a 1% budget: the budget is overspent 36 times.
    let expected = 1.0 - (4.0 / 11.0) / 0.01;
    eventually(Duration::from_secs(10), || async {
        let m = metrics(&app).await;
        sample(
            &m,
            r#"backstop_slo_error_budget_remaining{slo="pay-availability"}"#,
        )
        .is_some_and(|b| (b - expected).abs() < 1e-6)
    })
    .await;
    let m = metrics(&app).await;
    let burn = sample(
        &m,
        r#"backstop_slo_burn_rate{slo="pay-availability",window="5m"}"#,
    )
    .unwrap();
    assert!((burn - (4.0 / 11.0) / 0.01).abs() < 1e-6, "{burn}");

    let admin = get(format!("http://{}/admin/slos", app.admin_addr()))
        .await
        .json();
    assert_eq!(admin["slos"][0]["name"], "pay-availability");
    assert_eq!(admin["slos"][0]["bad"], 4);
}

/// backstop's own 429 is bad for availability, or left out with exclude_rate_limited; a
/// latency SLI counts answers slower than its threshold as bad.
#[tokio::test]
async fn rate_limited_and_latency_events() {
    let backend = Backend::start(Behaviour::Delay(Duration::from_millis(120))).await;
    let slos = "  - { name: strict, routes: [pay], objective: 99.9%, sli: availability }\n  - { name: lenient, routes: [pay], objective: 99.9%, sli: availability, exclude_rate_limited: true }\n  - { name: fast, routes: [pay, other], objective: 99%, sli: { latency_below: 100ms } }\n";
    let yaml = config(&backend, slos).replace("burst: 100", "burst: 1");
    let app = proxy(&yaml).await;
    let base = format!("http://{}", app.proxy_addr());
    for _ in 0..3 {
        get(format!("{base}/pay/x")).await;
    }
    let m = metrics(&app).await;
    let events = |slo: &str, result: &str| {
        sample(
            &m,
            &format!(r#"backstop_slo_events_total{{result="{result}",slo="{slo}"}}"#),
        )
    };
    assert_eq!(
        (events("strict", "good"), events("strict", "bad")),
        (Some(2.0), Some(1.0)),
        "the 429 is bad"
    );
    assert_eq!(
        (events("lenient", "good"), events("lenient", "bad")),
        (Some(2.0), Some(0.0)),
        "the 429 is left out"
    );
    assert_eq!(
        events("fast", "bad"),
        Some(2.0),
        "two slow answers (the 429 was fast)"
    );
    assert_eq!(events("fast", "good"), Some(1.0));
}
