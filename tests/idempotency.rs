//! The idempotency layer (`routes[].idempotency`) against real sockets: every test counts what
//! the backend received, not only what the client saw.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::Request;
use http_body_util::Full;
use support::{eventually, metrics, proxy, sample, send, Answer, Backend, Behaviour, RedisServer};

/// One upstream (`honours` sets `honours_idempotency_key`) and one route with `idempotency`.
fn config(backend: &Backend, honours: bool, idempotency: &str) -> String {
    format!(
        "upstreams:\n  pay:\n    endpoints: [{{ address: \"{}\" }}]\n    honours_idempotency_key: {honours}\nroutes:\n  - name: charges\n    upstream: pay\n    timeout: 5s\n    idempotency: {idempotency}\n",
        backend.addr
    )
}

fn post(base: &str, key: Option<&str>, body: &'static str) -> Request<Full<Bytes>> {
    let mut req = Request::post(format!("http://{base}/charges"));
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn count(metrics: &str, route: &str, result: &str) -> f64 {
    sample(
        metrics,
        &format!("backstop_idempotency_total{{result=\"{result}\",route=\"{route}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_repeat_after_completion_is_replayed_not_delivered() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&config(&backend, false, "{ store: local }")).await;
    let base = app.proxy_addr().to_string();

    let first = send(post(&base, Some("k-1"), "{\"amount\":10}")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("idempotent-replayed"), "");
    let again = send(post(&base, Some("k-1"), "{\"amount\":10}")).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), "true");
    assert_eq!(again.body, first.body, "the stored body is replayed");
    assert_eq!(again.header("content-type"), first.header("content-type"));
    assert_eq!(backend.hits(), 1, "the repeat never reached the backend");

    // Without a key, nothing is recorded: both are delivered.
    send(post(&base, None, "x")).await;
    send(post(&base, None, "x")).await;
    assert_eq!(backend.hits(), 3);

    let m = metrics(&app).await;
    assert_eq!(count(&m, "charges", "stored"), 1.0);
    assert_eq!(count(&m, "charges", "replayed"), 1.0);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_are_delivered_once() {
    let backend = Backend::start(Behaviour::Delay(Duration::from_millis(300))).await;
    let app = proxy(&config(&backend, false, "{ store: local }")).await;
    let base = app.proxy_addr().to_string();

    let answers: Vec<Answer> =
        join_all((0..20).map(|_| send(post(&base, Some("k-race"), "pay 10")))).await;
    assert_eq!(backend.hits(), 1, "twenty clients, one delivery");
    let delivered = answers
        .iter()
        .filter(|a| a.status == 200 && a.header("idempotent-replayed").is_empty())
        .count();
    assert_eq!(delivered, 1);
    for a in &answers {
        let in_progress = a.status == 409
            && a.header("x-backstop-reason") == "idempotency_in_progress"
            && !a.header("retry-after").is_empty();
        let replayed = a.status == 200;
        assert!(in_progress || replayed, "unexpected answer {}", a.status);
    }
    let m = metrics(&app).await;
    assert!(count(&m, "charges", "in_progress") >= 1.0);
    let after = send(post(&base, Some("k-race"), "pay 10")).await;
    assert_eq!(after.header("idempotent-replayed"), "true");
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn the_same_key_for_a_different_request_is_refused() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&config(&backend, false, "{ store: local }")).await;
    let base = app.proxy_addr().to_string();

    assert_eq!(
        send(post(&base, Some("k-2"), "amount=10")).await.status,
        200
    );
    let other = send(post(&base, Some("k-2"), "amount=99")).await;
    assert_eq!(other.status, 422);
    assert_eq!(other.header("x-backstop-reason"), "idempotency_key_reused");
    assert_eq!(backend.hits(), 1);
    assert_eq!(count(&metrics(&app).await, "charges", "conflict"), 1.0);
}

#[tokio::test]
async fn an_unknown_outcome_is_not_delivered_again() {
    let backend = Backend::start(Behaviour::Echo).await;
    backend.script(vec![Behaviour::Reset]);
    let app = proxy(&config(&backend, false, "{ store: local }")).await;
    let base = app.proxy_addr().to_string();

    let first = send(post(&base, Some("k-3"), "pay")).await;
    assert_eq!(first.status, 502);
    assert_eq!(first.header("x-backstop-outcome"), "unknown");
    let again = send(post(&base, Some("k-3"), "pay")).await;
    assert_eq!(again.status, 409);
    assert_eq!(
        again.header("x-backstop-reason"),
        "idempotency_outcome_unknown"
    );
    assert_eq!(
        backend.hits(),
        1,
        "a possibly charged request is not sent twice"
    );
    let m = metrics(&app).await;
    assert_eq!(count(&m, "charges", "unknown"), 1.0);
    assert_eq!(count(&m, "charges", "refused_unknown"), 1.0);
}

#[tokio::test]
async fn an_unknown_outcome_is_sent_again_to_an_upstream_that_honours_keys() {
    let backend = Backend::start(Behaviour::Echo).await;
    backend.script(vec![Behaviour::Reset]);
    let app = proxy(&config(&backend, true, "{ store: local }")).await;
    let base = app.proxy_addr().to_string();

    assert_eq!(send(post(&base, Some("k-4"), "pay")).await.status, 502);
    let again = send(post(&base, Some("k-4"), "pay")).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        backend.hits(),
        2,
        "the upstream deduplicates; backstop sends it again"
    );
    assert_eq!(backend.last_headers()["idempotency-key"], "k-4");
    let third = send(post(&base, Some("k-4"), "pay")).await;
    assert_eq!(third.header("idempotent-replayed"), "true");
    assert_eq!(backend.hits(), 2);
    // A different request with the key is still refused.
    assert_eq!(send(post(&base, Some("k-4"), "other")).await.status, 422);
}

#[tokio::test]
async fn a_request_the_upstream_declined_can_be_retried() {
    let backend = Backend::start(Behaviour::Echo).await;
    backend.script(vec![Behaviour::Status(429)]);
    let app = proxy(&config(&backend, false, "{ store: local }")).await;
    let base = app.proxy_addr().to_string();

    assert_eq!(send(post(&base, Some("k-5"), "pay")).await.status, 429);
    let again = send(post(&base, Some("k-5"), "pay")).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), "");
    assert_eq!(backend.hits(), 2);
    assert_eq!(count(&metrics(&app).await, "charges", "released"), 1.0);
}

#[tokio::test]
async fn a_response_too_large_to_store_is_answered_whole_but_not_replayed() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&config(
        &backend,
        false,
        "{ store: local, max_response_bytes: 16 }",
    ))
    .await;
    let base = app.proxy_addr().to_string();

    let first = send(post(&base, Some("k-6"), "pay")).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.json()["method"],
        "POST",
        "the client got the whole body"
    );
    let again = send(post(&base, Some("k-6"), "pay")).await;
    assert_eq!(again.status, 409);
    assert_eq!(
        again.header("x-backstop-reason"),
        "idempotency_response_not_stored"
    );
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn a_body_over_the_fingerprint_limit_is_refused_before_delivery() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&config(
        &backend,
        false,
        "{ store: local, max_request_bytes: 8 }",
    ))
    .await;
    let base = app.proxy_addr().to_string();

    let big = send(post(&base, Some("k-7"), "0123456789abcdef")).await;
    assert_eq!(big.status, 413);
    assert_eq!(
        big.header("x-backstop-reason"),
        "idempotency_body_too_large"
    );
    assert_eq!(backend.hits(), 0);
    assert_eq!(send(post(&base, Some("k-8"), "small")).await.status, 200);
}

#[tokio::test]
async fn a_client_that_leaves_mid_flight_and_retries_is_not_charged_twice() {
    let backend = Backend::start(Behaviour::Delay(Duration::from_millis(400))).await;
    let app = proxy(&config(&backend, false, "{ store: local }")).await;
    let base = app.proxy_addr().to_string();

    // The client gives up after the request reached the backend and drops its connection.
    let request = tokio::spawn(send(post(&base, Some("k-9"), "pay")));
    eventually(Duration::from_secs(5), || async { backend.hits() == 1 }).await;
    request.abort();
    let _ = request.await;
    // Its retry: in progress while the proxy still waits, unknown once it gave up.
    eventually(Duration::from_secs(5), || {
        let base = base.clone();
        async move {
            let a = send(post(&base, Some("k-9"), "pay")).await;
            let reason = a.header("x-backstop-reason");
            assert!(
                a.status == 409 || a.header("idempotent-replayed") == "true",
                "a retry is never delivered: {} {reason}",
                a.status
            );
            reason == "idempotency_outcome_unknown" || a.header("idempotent-replayed") == "true"
        }
    })
    .await;
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn two_processes_sharing_redis_deliver_a_key_once() {
    let redis = RedisServer::start().await;
    let backend = Backend::start(Behaviour::Delay(Duration::from_millis(300))).await;
    let dir = std::env::temp_dir().join(format!("backstop-idem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("backstop.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nredis: {{ url: \"{}\", timeout: 500ms }}\n{}",
        redis.url(),
        config(&backend, false, "{ store: redis }")
    );
    std::fs::write(&file, yaml).unwrap();
    let (a, b) = (
        support::Binary::start(&file).await,
        support::Binary::start(&file).await,
    );
    for bin in [&a, &b] {
        let url = format!("http://{}/metrics", bin.admin);
        eventually(Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let m = String::from_utf8_lossy(&support::get(url).await.body).into_owned();
                sample(&m, "backstop_redis_available") == Some(1.0)
            }
        })
        .await;
    }
    let answers: Vec<Answer> = join_all((0..20).map(|i| {
        let proxy = if i % 2 == 0 { &a.proxy } else { &b.proxy };
        send(post(proxy, Some("k-shared"), "pay 10"))
    }))
    .await;
    assert_eq!(
        backend.hits(),
        1,
        "two replicas, twenty clients, one delivery"
    );
    assert!(answers.iter().all(|a| a.status == 200 || a.status == 409));
    for proxy in [&a.proxy, &b.proxy] {
        let again = send(post(proxy, Some("k-shared"), "pay 10")).await;
        assert_eq!(again.header("idempotent-replayed"), "true");
    }
    assert_eq!(
        send(post(&b.proxy, Some("k-shared"), "pay 99"))
            .await
            .status,
        422
    );
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn redis_down_follows_on_error_and_is_counted() {
    let mut redis = RedisServer::start().await;
    let backend = Backend::start(Behaviour::Echo).await;
    let yaml = |on_error: &str, route: &str| {
        format!(
            "redis: {{ url: \"{}\", timeout: 200ms }}\n{}",
            redis.url(),
            config(
                &backend,
                false,
                &format!("{{ store: redis, on_error: {on_error} }}")
            )
            .replace("charges", route)
        )
    };
    let refuse = proxy(&yaml("refuse", "refusing")).await;
    let forward = proxy(&yaml("forward", "forwarding")).await;
    for app in [&refuse, &forward] {
        eventually(Duration::from_secs(10), || async {
            sample(&metrics(app).await, "backstop_redis_available") == Some(1.0)
        })
        .await;
    }
    let r = refuse.proxy_addr().to_string();
    let f = forward.proxy_addr().to_string();
    assert_eq!(send(post(&r, Some("k-up"), "pay")).await.status, 200);
    assert_eq!(backend.hits(), 1);

    redis.stop();
    let refused = send(post(&r, Some("k-down"), "pay")).await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.header("x-backstop-reason"),
        "idempotency_store_unavailable"
    );
    assert_eq!(backend.hits(), 1, "refuse: nothing delivered unrecorded");
    assert_eq!(send(post(&f, Some("k-down"), "pay")).await.status, 200);
    assert_eq!(backend.hits(), 2, "forward: delivered unrecorded");
    assert!(count(&metrics(&refuse).await, "refusing", "store_error") >= 1.0);
    assert!(count(&metrics(&forward).await, "forwarding", "store_error") >= 1.0);
}
