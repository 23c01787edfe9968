//! `retry.when_burning` (issue #15 item 4): while the route's SLO burns faster than the
//! threshold, retries draw from the smaller budget (here none), counted at the backend; the
//! switch is counted, shown on the status page, and undone when the burn falls.

mod support;

use std::time::Duration;

use futures_util::FutureExt;
use support::{eventually, get, metrics, proxy, sample, Backend, Behaviour};

/// How many times the backend saw one request.
async fn deliveries_of_one_request(url: String, backend: Backend) -> usize {
    let before = backend.hits();
    get(url).await;
    backend.hits() - before
}

#[tokio::test]
async fn retries_stop_while_the_slo_burns_and_resume_after() {
    let backend = Backend::start(Behaviour::Status(503)).await;
    // 99% objective: a burn rate of 50 means more than half of the requests fail.
    let yaml = format!(
        "upstreams:\n  pg:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - {{ name: r, upstream: pg, retry: {{ attempts: 2, on: [503], backoff: {{ base: 1ms, max: 1ms }}, budget: {{ ratio: 100%, min_per_second: 1000 }}, when_burning: {{ burn_rate: 50, window: 5m, budget_ratio: 0% }} }} }}\nslos:\n  - {{ name: r-availability, routes: [r], objective: 99%, window: 1h, sli: availability }}\n",
        backend.addr
    );
    let app = proxy(&yaml).await;
    let url = format!("http://{}/x", app.proxy_addr());

    // Not burning yet: the first failure is retried (two deliveries).
    assert_eq!(get(url.clone()).await.status, 503);
    assert_eq!(backend.hits(), 2, "retried while the SLO was fine");

    // Every request fails: once the burn rate is read again (at most a second later), a
    // failure is answered without a retry: one delivery per request.
    eventually(Duration::from_secs(5), || {
        deliveries_of_one_request(url.clone(), backend.clone()).map(|n| n == 1)
    })
    .await;
    let text = metrics(&app).await;
    assert_eq!(
        sample(&text, "backstop_retry_burning{route=\"r\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "backstop_retry_burn_switches_total{route=\"r\",to=\"burning\"}"
        ),
        Some(1.0)
    );
    let page = String::from_utf8_lossy(&get(format!("http://{}/", app.admin_addr())).await.body)
        .into_owned();
    assert!(
        page.contains("cut: SLO burning"),
        "shown on the status page"
    );

    // The partner recovers: successes bring the burn rate under 50. The guard reads it again
    // at the next retry decision (at most once a second): a failure then is retried again.
    backend.set(Behaviour::Echo);
    // Three successes per failure so far keep the ratio under half through the checks below.
    let failures = backend.hits();
    for _ in 0..failures * 3 {
        assert_eq!(get(url.clone()).await.status, 200);
    }
    backend.set(Behaviour::Status(503));
    eventually(Duration::from_secs(5), || {
        deliveries_of_one_request(url.clone(), backend.clone()).map(|n| n == 2)
    })
    .await;
    let text = metrics(&app).await;
    assert_eq!(
        sample(&text, "backstop_retry_burning{route=\"r\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "backstop_retry_burn_switches_total{route=\"r\",to=\"normal\"}"
        ),
        Some(1.0)
    );
}
