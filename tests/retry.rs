//! Timeouts, payment-safe retries, budgets and failover, proved by counting deliveries at the
//! backend.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{closed_port, get, metrics, proxy, sample, send, Backend, Behaviour};

fn route_with_retry(backends: &[&Backend], retry: &str) -> String {
    let endpoints: String = backends
        .iter()
        .map(|b| format!("{{ address: \"{}\" }}, ", b.addr))
        .collect();
    format!(
        "upstreams:\n  pg:\n    endpoints: [{endpoints}]\n    load_balancing: round_robin\nroutes:\n  - name: pay\n    upstream: pg\n    timeout: 5s\n    retry:\n{retry}"
    )
}

fn post(app: &backstop::App, body: &'static str) -> http::request::Builder {
    let _ = body;
    Request::post(format!("http://{}/v1/payments", app.proxy_addr()))
}

/// GET after a 503 is retried and succeeds; the backend saw exactly two requests.
#[tokio::test]
async fn get_after_503_is_retried_once() {
    let backend = Backend::start(Behaviour::Echo).await;
    backend.script(vec![Behaviour::Status(503)]);
    let app = proxy(&route_with_retry(
        &[&backend],
        "      attempts: 3\n      on: [503]\n      backoff: { base: 1ms, max: 5ms }\n",
    ))
    .await;
    let r = get(format!("http://{}/v1/payments/p1", app.proxy_addr())).await;
    assert_eq!(r.status, 200);
    assert_eq!(backend.hits(), 2);
    let m = metrics(&app).await;
    assert_eq!(
        sample(&m, r#"backstop_retries_total{reason="503",route="pay"}"#),
        Some(1.0)
    );
}

/// A POST that got a 503 is not retried (it may have been processed) and carries no
/// outcome-unknown header: a response was received, so the outcome is known.
#[tokio::test]
async fn post_after_503_is_not_retried() {
    let backend = Backend::start(Behaviour::Status(503)).await;
    let app = proxy(&route_with_retry(
        &[&backend],
        "      attempts: 3\n      on: [503]\n",
    ))
    .await;
    let r = send(
        post(&app, "")
            .body(Full::new(Bytes::from_static(b"{\"amount\":1}")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(backend.hits(), 1, "delivered exactly once");
    assert_eq!(r.header("x-backstop-outcome"), "");
}

/// A POST whose connection is reset after the body was read is not retried and says
/// "outcome unknown", counted in the metric.
#[tokio::test]
async fn post_reset_after_send_is_not_retried_and_marked_unknown() {
    let backend = Backend::start(Behaviour::Reset).await;
    let app = proxy(&route_with_retry(
        &[&backend],
        "      attempts: 3\n      on: [reset, 503]\n",
    ))
    .await;
    let r = send(
        post(&app, "")
            .body(Full::new(Bytes::from_static(b"{\"amount\":1}")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-backstop-reason"), "upstream_error");
    assert_eq!(r.header("x-backstop-outcome"), "unknown");
    assert_eq!(backend.hits(), 1, "never replayed");
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            r#"backstop_outcome_unknown_total{route="pay",upstream="pg"}"#
        ),
        Some(1.0)
    );
}

/// With `non_idempotent: idempotency-key`, a POST carrying the key is retried after a reset,
/// with the same key and the whole body on every attempt.
#[tokio::test]
async fn post_with_idempotency_key_is_retried_with_the_same_key() {
    let backend = Backend::start(Behaviour::Echo).await;
    backend.script(vec![Behaviour::Reset]);
    let retry = "      attempts: 3\n      on: [reset]\n      non_idempotent: idempotency-key\n      backoff: { base: 1ms, max: 2ms }\n";
    let app = proxy(&route_with_retry(&[&backend], retry)).await;
    let body = Bytes::from(vec![b'x'; 3000]);
    let r = send(
        post(&app, "")
            .header("idempotency-key", "pay-7f3a")
            .body(Full::new(body))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 3000, "the replayed body is whole");
    assert_eq!(r.header("x-backstop-outcome"), "");
    let seen = backend.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|h| h["idempotency-key"] == "pay-7f3a"),
        "same key on every attempt"
    );
}

/// Without the key, the same POST is not retried after a reset.
#[tokio::test]
async fn post_without_the_key_is_not_retried_even_in_key_mode() {
    let backend = Backend::start(Behaviour::Echo).await;
    backend.script(vec![Behaviour::Reset]);
    let retry = "      attempts: 3\n      on: [reset]\n      non_idempotent: idempotency-key\n";
    let app = proxy(&route_with_retry(&[&backend], retry)).await;
    let r = send(
        post(&app, "")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-backstop-outcome")),
        (502, "unknown")
    );
    assert_eq!(backend.hits(), 1);
}

/// A POST to an endpoint that refuses connections was never sent: it goes to the next endpoint
/// and is delivered exactly once.
#[tokio::test]
async fn post_to_a_closed_port_fails_over_and_is_delivered_once() {
    let dead = closed_port().await;
    let backend = Backend::start(Behaviour::Echo).await;
    let yaml = format!(
        "upstreams:\n  pg:\n    endpoints: [{{ address: \"{dead}\" }}, {{ address: \"{}\" }}]\n    load_balancing: round_robin\nroutes:\n  - name: pay\n    upstream: pg\n    retry: {{ attempts: 2, backoff: {{ base: 1ms, max: 1ms }} }}\n",
        backend.addr
    );
    let app = proxy(&yaml).await;
    let r = send(
        post(&app, "")
            .body(Full::new(Bytes::from_static(b"{\"amount\":5}")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 12);
    assert_eq!(backend.hits(), 1, "delivered exactly once");
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            r#"backstop_retries_total{reason="connect-failure",route="pay"}"#
        ),
        Some(1.0)
    );
}

/// A retry goes to another endpoint than the one that just failed.
#[tokio::test]
async fn retries_go_to_a_different_endpoint() {
    let (a, b) = (
        Backend::start(Behaviour::Status(503)).await,
        Backend::start(Behaviour::Echo).await,
    );
    let app = proxy(&route_with_retry(
        &[&a, &b],
        "      attempts: 2\n      on: [503]\n      backoff: { base: 1ms, max: 1ms }\n",
    ))
    .await;
    for _ in 0..4 {
        assert_eq!(
            get(format!("http://{}/x", app.proxy_addr())).await.status,
            200
        );
    }
    assert_eq!(b.hits(), 4);
    assert!(
        a.hits() <= 4,
        "a failed attempt is never repeated on the same endpoint"
    );
}

/// A body larger than max_buffered_body makes a request non-retryable once it was sent.
#[tokio::test]
async fn bodies_over_the_buffer_limit_are_not_replayed() {
    let backend = Backend::start(Behaviour::Echo).await;
    backend.script(vec![Behaviour::Reset]);
    let retry = "      attempts: 3\n      on: [reset]\n      max_buffered_body: 1024\n";
    let app = proxy(&route_with_retry(&[&backend], retry)).await;
    let req = Request::put(format!("http://{}/v1/payments/p1", app.proxy_addr()))
        .body(Full::new(Bytes::from(vec![b'y'; 10_000])))
        .unwrap();
    let r = send(req).await;
    assert_eq!(r.status, 502);
    assert_eq!(
        backend.hits(),
        1,
        "a 10 kB body past a 1 kB buffer is not replayed"
    );
}

/// With a backend failing 100%, retries stay within the budget:
/// attempts <= requests x (1 + ratio) + min_per_second x (seconds + 1), the +1 being the
/// starting reserve of one second's worth of min_per_second.
#[tokio::test]
async fn retry_budget_bounds_amplification() {
    let backend = Backend::start(Behaviour::Status(503)).await;
    let retry = "      attempts: 3\n      on: [503]\n      backoff: { base: 1ms, max: 1ms }\n      budget: { ratio: 20%, min_per_second: 5 }\n";
    let app = proxy(&route_with_retry(&[&backend], retry)).await;
    let started = std::time::Instant::now();
    let requests = 200;
    for _ in 0..requests {
        assert_eq!(
            get(format!("http://{}/x", app.proxy_addr())).await.status,
            503
        );
    }
    let seconds = started.elapsed().as_secs_f64().ceil();
    let attempts = backend.hits() as f64;
    let bound = requests as f64 * 1.2 + 5.0 * (seconds + 1.0);
    assert!(attempts <= bound, "{attempts} attempts > bound {bound}");
    assert!(
        attempts > requests as f64,
        "some retries happened: {attempts}"
    );
    let m = metrics(&app).await;
    assert!(
        sample(&m, r#"backstop_retry_budget_exhausted_total{route="pay"}"#).unwrap_or(0.0) > 0.0
    );
}

/// A backend that accepts and never answers: per-try timeouts retry, but the answer is a 504 at
/// the route's total deadline, not later.
#[tokio::test]
async fn total_deadline_is_respected_across_attempts() {
    let backend = Backend::start(Behaviour::Silent).await;
    let yaml = format!(
        "upstreams:\n  pg:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - name: pay\n    upstream: pg\n    timeout: 500ms\n    retry: {{ attempts: 5, per_try_timeout: 200ms, on: [timeout], backoff: {{ base: 1ms, max: 1ms }} }}\n",
        backend.addr
    );
    let app = proxy(&yaml).await;
    let started = std::time::Instant::now();
    let r = get(format!("http://{}/slow", app.proxy_addr())).await;
    let took = started.elapsed();
    assert_eq!(
        (r.status.as_u16(), r.header("x-backstop-reason")),
        (504, "upstream_timeout")
    );
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(
        took < Duration::from_millis(900),
        "answered after the deadline: {took:?}"
    );
    assert!(
        (2..=3).contains(&backend.hits()),
        "per-try timeouts retried: {}",
        backend.hits()
    );
}

/// When the primary upstream's breaker is open, the route's failover upstream takes the
/// request.
#[tokio::test]
async fn failover_upstream_takes_over_when_the_primary_breaker_is_open() {
    let (a, b) = (
        Backend::start(Behaviour::Status(503)).await,
        Backend::start(Behaviour::Echo).await,
    );
    let yaml = format!(
        "upstreams:\n  pg-a:\n    endpoints: [{{ address: \"{}\" }}]\n    circuit_breaker: {{ consecutive_failures: 1, open_for: 60s }}\n  pg-b:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - name: pay\n    upstream: pg-a\n    failover: [pg-b]\n",
        a.addr, b.addr
    );
    let app = proxy(&yaml).await;
    let url = format!("http://{}/v1/payments", app.proxy_addr());
    let first = send(
        Request::post(&url)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap(),
    )
    .await;
    assert_eq!(first.status, 503, "pg-a's own 503 opens its breaker");
    let second = send(
        Request::post(&url)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap(),
    )
    .await;
    assert_eq!(second.status, 200);
    assert_eq!(second.json()["backend"], b.addr.to_string());
    assert_eq!((a.hits(), b.hits()), (1, 1));
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            r#"backstop_failover_total{from="pg-a",route="pay",to="pg-b"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"backstop_requests_total{method="POST",route="pay",status="200",upstream="pg-b"}"#
        ),
        Some(1.0)
    );
}

/// Every attempt feeds the breaker: one request whose two attempts both fail opens a breaker
/// that needs two failures in a row.
#[tokio::test]
async fn every_attempt_feeds_the_breaker() {
    let backend = Backend::start(Behaviour::Status(503)).await;
    let yaml = format!(
        "upstreams:\n  pg:\n    endpoints: [{{ address: \"{}\" }}]\n    circuit_breaker: {{ consecutive_failures: 2, open_for: 60s }}\nroutes:\n  - name: pay\n    upstream: pg\n    retry: {{ attempts: 2, on: [503], backoff: {{ base: 1ms, max: 1ms }} }}\n",
        backend.addr
    );
    let app = proxy(&yaml).await;
    let first = get(format!("http://{}/x", app.proxy_addr())).await;
    assert_eq!(
        (first.status.as_u16(), first.header("x-backstop-reason")),
        (503, "")
    );
    assert_eq!(backend.hits(), 2, "one request, two attempts");
    let second = get(format!("http://{}/x", app.proxy_addr())).await;
    assert_eq!(second.header("x-backstop-reason"), "circuit_open");
    assert_eq!(backend.hits(), 2);
}

/// Budget exhaustion shows in the access log of the real binary, and the original failure is
/// returned.
#[tokio::test]
async fn budget_exhaustion_is_an_access_log_reason() {
    let backend = Backend::start(Behaviour::Status(503)).await;
    let dir = std::env::temp_dir().join(format!("backstop-budget-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("backstop.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nupstreams:\n  pg:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - name: pay\n    upstream: pg\n    retry: {{ attempts: 3, on: [503], backoff: {{ base: 1ms, max: 1ms }}, budget: {{ ratio: 0%, min_per_second: 1 }} }}\n",
        backend.addr
    );
    std::fs::write(&file, yaml).unwrap();
    let bin = support::Binary::start(&file).await;
    for _ in 0..5 {
        assert_eq!(
            get(format!("http://{}/x", bin.proxy)).await.status,
            503,
            "the original failure"
        );
    }
    support::eventually(Duration::from_secs(5), || async {
        bin.logged(|l| {
            l["route"] == "pay" && l["note"] == "retry_budget_exhausted" && l["status"] == 503
        })
    })
    .await;
}
