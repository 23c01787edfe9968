//! Adaptive concurrency per upstream (issue #15 item 1) against real backends: rejections are
//! immediate 503s counted at the backend, shadow mode only counts, and the learned limit
//! falls on a 5xx storm and climbs back after the partner recovers. The controller's
//! convergence near a backend's knee is proved with a simulated backend in virtual time
//! (src/policy/adaptive/tests.rs).

mod support;

use std::time::Duration;

use support::{eventually, get, metrics, proxy, sample, Backend, Behaviour};

fn config(backend: &Backend, adaptive: &str) -> String {
    format!(
        "upstreams:\n  partner:\n    endpoints: [{{ address: \"{}\" }}]\n    adaptive_concurrency: {adaptive}\nroutes:\n  - {{ name: r, upstream: partner }}\n",
        backend.addr
    )
}

async fn burst(addr: std::net::SocketAddr, n: usize) -> Vec<(u16, String)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let a = get(format!("http://{addr}/x")).await;
                (a.status.as_u16(), a.header("x-backstop-reason").to_owned())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn requests_beyond_the_limit_get_an_immediate_503_and_never_reach_the_partner() {
    let backend = Backend::start(Behaviour::Delay(Duration::from_millis(300))).await;
    let app = proxy(&config(
        &backend,
        "{ min_limit: 4, max_limit: 4, initial_limit: 4 }",
    ))
    .await;
    let answers = burst(app.proxy_addr(), 20).await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let limited = answers
        .iter()
        .filter(|(s, r)| *s == 503 && r == "adaptive_concurrency_limited")
        .count();
    assert_eq!(ok + limited, 20, "{answers:?}");
    assert!(limited >= 1, "some were over the limit: {answers:?}");
    assert_eq!(
        backend.hits(),
        ok,
        "rejected requests never reached the partner"
    );
    let text = metrics(&app).await;
    assert_eq!(
        sample(
            &text,
            "backstop_adaptive_concurrency_limit{upstream=\"partner\"}"
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &text,
            "backstop_adaptive_concurrency_rejections_total{mode=\"enforce\",upstream=\"partner\"}"
        ),
        Some(limited as f64)
    );
}

#[tokio::test]
async fn shadow_mode_counts_and_forwards_everything() {
    let backend = Backend::start(Behaviour::Delay(Duration::from_millis(300))).await;
    let app = proxy(&config(
        &backend,
        "{ min_limit: 2, max_limit: 2, initial_limit: 2, mode: shadow }",
    ))
    .await;
    let answers = burst(app.proxy_addr(), 10).await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    assert_eq!(backend.hits(), 10);
    let text = metrics(&app).await;
    let would = sample(
        &text,
        "backstop_adaptive_concurrency_rejections_total{mode=\"shadow\",upstream=\"partner\"}",
    )
    .unwrap_or(0.0);
    assert!(would >= 1.0, "would-be rejections counted: {would}");
}

#[tokio::test]
async fn the_limit_falls_on_a_5xx_storm_and_climbs_back_after_recovery() {
    let backend = Backend::start(Behaviour::Status(503)).await;
    let app = proxy(&config(
        &backend,
        "{ min_limit: 2, max_limit: 40, initial_limit: 20, window: 20ms }",
    ))
    .await;
    let addr = app.proxy_addr();
    let admin = app.admin_addr();
    let limit = |text: &str| {
        sample(
            text,
            "backstop_adaptive_concurrency_limit{upstream=\"partner\"}",
        )
        .unwrap_or(-1.0)
    };
    // Failures in every window: the limit backs off towards min_limit.
    eventually(Duration::from_secs(10), || async move {
        burst(addr, 8).await;
        limit(&metrics_of(admin).await) <= 10.0
    })
    .await;
    backend.set(Behaviour::Echo);
    // Healthy, fast answers with the limit in use: it climbs back.
    eventually(Duration::from_secs(10), || async move {
        burst(addr, 16).await;
        limit(&metrics_of(admin).await) >= 16.0
    })
    .await;
}

async fn metrics_of(admin: std::net::SocketAddr) -> String {
    String::from_utf8_lossy(&get(format!("http://{admin}/metrics")).await.body).into_owned()
}
