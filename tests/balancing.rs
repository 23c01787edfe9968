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

/// Requests a backend received from clients, not counting active health checks.
fn served(backend: &Backend) -> usize {
    backend
        .seen()
        .iter()
        .filter(|h| {
            h.get("user-agent")
                .is_none_or(|ua| ua.as_bytes() != b"backstop-health-check")
        })
        .count()
}

/// Sends `n` GETs through the proxy, `concurrency` at a time; every one must succeed.
async fn burst(proxy: std::net::SocketAddr, n: usize, concurrency: usize) {
    let per_task = n / concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..per_task {
                    assert_eq!(get(format!("http://{proxy}/")).await.status, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("request task");
    }
}

fn share(part: usize, total: usize) -> f64 {
    part as f64 / total.max(1) as f64
}

/// Issue #10 item 1: two identical endpoints under p2c_ewma (the default) split the traffic
/// evenly, sequentially and concurrently, from a cold start: no first-sample lock-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_splits_identical_endpoints_evenly() {
    let a = Backend::start(Behaviour::Echo).await;
    let b = Backend::start(Behaviour::Echo).await;
    let yaml = format!(
        "upstreams:\n  pg:\n    endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}]\nroutes:\n  - {{ name: r, upstream: pg }}\n",
        a.addr, b.addr
    );
    let app = proxy(&yaml).await;
    burst(app.proxy_addr(), 1000, 1).await;
    let (seq_a, seq_b) = (a.hits(), b.hits());
    assert_eq!(seq_a + seq_b, 1000);
    let s = share(seq_a, 1000);
    assert!(
        (0.4..=0.6).contains(&s),
        "sequential: a got {seq_a}, b got {seq_b}"
    );
    burst(app.proxy_addr(), 1000, 8).await;
    let (con_a, con_b) = (a.hits() - seq_a, b.hits() - seq_b);
    assert_eq!(con_a + con_b, 1000);
    let s = share(con_a, 1000);
    assert!(
        (0.4..=0.6).contains(&s),
        "concurrent: a got {con_a}, b got {con_b}"
    );
}

/// Issue #10 item 1: an endpoint that timed out is penalised, but once it answers again its
/// share comes back to an even split by the next passing health check (interval 200ms here;
/// allow a few intervals for a loaded machine), instead of staying at zero for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_gives_a_recovered_endpoint_its_share_back() {
    let flaky = Backend::start(Behaviour::Delay(Duration::from_millis(400))).await;
    let steady = Backend::start(Behaviour::Echo).await;
    let yaml = format!(
        "upstreams:\n  pg:\n    endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}]\n    health_check: {{ path: /health, interval: 200ms, timeout: 1s }}\nroutes:\n  - {{ name: r, upstream: pg, timeout: 150ms }}\n",
        flaky.addr, steady.addr
    );
    let app = proxy(&yaml).await;
    let addr = app.proxy_addr();
    // Slow phase: send until the flaky endpoint has taken (and timed out on) some requests.
    support::eventually(Duration::from_secs(5), || async {
        let _ = get(format!("http://{addr}/")).await;
        served(&flaky) >= 1
    })
    .await;
    flaky.set(Behaviour::Echo);
    // Recovered: its share of a batch of sequential requests returns to 40-60%, in a batch
    // that starts within a few check intervals (one is enough on an idle machine).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut batches = Vec::new();
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no even batch within 3s of recovery: flaky's share per 100: {batches:?}"
        );
        let (f0, s0) = (served(&flaky), served(&steady));
        burst(addr, 100, 1).await;
        let (f, s) = (served(&flaky) - f0, served(&steady) - s0);
        assert_eq!(f + s, 100, "every request reached a backend once");
        batches.push(f);
        if (0.4..=0.6).contains(&share(f, 100)) {
            break;
        }
    }
}
