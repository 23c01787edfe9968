//! Generated idempotency keys (`upstreams.<name>.idempotency_key`): backstop adds one key to
//! a non-idempotent request without one, sends it with every attempt, and so may retry it.
//! Every test counts what the backend received.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{metrics, proxy, sample, send, Backend, Behaviour};

/// One upstream with `idempotency_key` (when `key` is not empty) and a route retrying resets.
fn config(backend: &Backend, key: &str) -> String {
    format!(
        "upstreams:\n  partner:\n    endpoints: [{{ address: \"{}\" }}]\n{key}routes:\n  - name: orders\n    upstream: partner\n    retry: {{ attempts: 3, on: [reset], backoff: {{ base: 1ms, max: 2ms }} }}\n",
        backend.addr
    )
}

const GENERATE: &str = "    idempotency_key: { header: Idempotency-Key, generate: true }\n";

fn post(base: &str, key: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = Request::post(format!("http://{base}/orders"));
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.body(Full::new(Bytes::from_static(b"{\"item\":1}")))
        .unwrap()
}

#[tokio::test]
async fn a_generated_key_goes_with_every_attempt_and_makes_a_post_retryable() {
    let backend = Backend::start(Behaviour::Echo).await;
    backend.script(vec![Behaviour::Reset]);
    let app = proxy(&config(&backend, GENERATE)).await;
    let base = app.proxy_addr().to_string();

    let answer = send(post(&base, None)).await;
    assert_eq!(answer.status, 200, "retried after the reset");
    assert_eq!(backend.hits(), 2);
    let seen = backend.seen();
    let first = seen[0]["idempotency-key"].to_str().unwrap().to_owned();
    assert_eq!(
        seen[1]["idempotency-key"],
        first.as_str(),
        "one key for every attempt"
    );
    assert_eq!(first.len(), 36, "a UUID: {first}");
    assert_eq!(answer.header("x-backstop-idempotency-key"), first);

    // The next request gets a fresh key.
    send(post(&base, None)).await;
    assert_ne!(backend.last_headers()["idempotency-key"], first.as_str());
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            "backstop_idempotency_keys_generated_total{upstream=\"partner\"}"
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn without_generate_a_post_that_may_have_been_delivered_is_not_retried() {
    let backend = Backend::start(Behaviour::Echo).await;
    backend.script(vec![Behaviour::Reset]);
    let app = proxy(&config(&backend, "")).await;
    let base = app.proxy_addr().to_string();

    let answer = send(post(&base, None)).await;
    assert_eq!(answer.status, 502);
    assert_eq!(backend.hits(), 1);
    assert!(!backend.last_headers().contains_key("idempotency-key"));
    assert_eq!(answer.header("x-backstop-idempotency-key"), "");
}

#[tokio::test]
async fn a_client_key_is_kept_and_safe_methods_get_none() {
    let backend = Backend::start(Behaviour::Echo).await;
    backend.script(vec![Behaviour::Reset]);
    let app = proxy(&config(&backend, GENERATE)).await;
    let base = app.proxy_addr().to_string();

    let answer = send(post(&base, Some("client-key"))).await;
    assert_eq!(answer.status, 200, "the upstream honours keys: retried");
    assert_eq!(backend.hits(), 2);
    for headers in backend.seen() {
        assert_eq!(headers["idempotency-key"], "client-key");
    }
    assert_eq!(answer.header("x-backstop-idempotency-key"), "");

    let get = support::get(format!("http://{base}/orders")).await;
    assert_eq!(get.status, 200);
    assert!(!backend.last_headers().contains_key("idempotency-key"));
}
