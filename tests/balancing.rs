//! Latency-aware load balancing.

mod support;

use std::time::Duration;

use support::{get, proxy, Backend, Behaviour};

/// With p2c_ewma (the default) a slow endpoint is avoided once its latency is known.
#[tokio::test]
async fn p2c_ewma_steers_traffic_away_from_a_slow_endpoint() {
    let slow = Backend::start(Behaviour::Delay(Duration::from_millis(150))).await;
    let fast = Backend::start(Behaviour::Echo).await;
    let yaml = format!(
        "upstreams:\n  pg:\n    endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}]\nroutes:\n  - {{ name: r, upstream: pg }}\n",
        slow.addr, fast.addr
    );
    let app = proxy(&yaml).await;
    for _ in 0..40 {
        assert_eq!(
            get(format!("http://{}/", app.proxy_addr())).await.status,
            200
        );
    }
    assert!(
        slow.hits() <= 3,
        "the slow endpoint got {} of 40",
        slow.hits()
    );
    assert_eq!(slow.hits() + fast.hits(), 40);
}

/// round_robin ignores latency: both endpoints get the same share.
#[tokio::test]
async fn round_robin_ignores_latency() {
    let slow = Backend::start(Behaviour::Delay(Duration::from_millis(20))).await;
    let fast = Backend::start(Behaviour::Echo).await;
    let yaml = format!(
        "upstreams:\n  pg:\n    endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}]\n    load_balancing: round_robin\nroutes:\n  - {{ name: r, upstream: pg }}\n",
        slow.addr, fast.addr
    );
    let app = proxy(&yaml).await;
    for _ in 0..10 {
        get(format!("http://{}/", app.proxy_addr())).await;
    }
    assert_eq!((slow.hits(), fast.hits()), (5, 5));
}
