//! The access log explains each request (issue #13 item 1): per-attempt trail with why each
//! attempt followed, Envoy-style flags, the client address, the rate-limit key as a short hash,
//! upstream time apart from total time, and sampling that never drops a failure.

mod support;

use std::time::Duration;

use support::{eventually, send, Backend, Behaviour};

/// FNV-1a 32, as the access log hashes rate-limit keys.
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

fn line_for<'a>(
    logs: &'a [serde_json::Value],
    route: &str,
    status: u64,
) -> Option<&'a serde_json::Value> {
    logs.iter()
        .find(|l| l["message"] == "request" && l["route"] == route && l["status"] == status)
}

#[tokio::test]
async fn access_log_explains_a_retry_a_failover_and_a_429() {
    let bad = Backend::start(Behaviour::Status(503)).await;
    let good = Backend::start(Behaviour::Echo).await;
    let dir = std::env::temp_dir().join(format!("backstop-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("backstop.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\naccess_log: {{ sample: 0% }}\n\
upstreams:\n  pg-a:\n    endpoints: [{{ address: \"{bad}\" }}]\n  pg-b:\n    endpoints: [{{ address: \"{good}\" }}]\n\
routes:\n\
  - {{ name: pay, match: {{ path_prefix: /pay }}, upstream: pg-a, failover: [pg-b], retry: {{ attempts: 2, on: [503], backoff: {{ base: 1ms, max: 1ms }} }} }}\n\
  - {{ name: limited, match: {{ path_prefix: /limited }}, upstream: pg-b, rate_limit: {{ rate: 1/m, key: \"header:x-merchant\" }} }}\n\
  - {{ name: ok, upstream: pg-b }}\n",
        bad = bad.addr,
        good = good.addr,
    );
    std::fs::write(&file, yaml).unwrap();
    let bin = support::Binary::start(&file).await;
    let request = |path: &str| {
        http::Request::get(format!("http://{}{path}", bin.proxy))
            .header("x-merchant", "m-1")
            .body(http_body_util::Full::default())
            .unwrap()
    };
    // Successes on a route without incident: sampled at 0%, never logged.
    for _ in 0..5 {
        assert_eq!(send(request("/ok")).await.status, 200);
    }
    assert_eq!(send(request("/pay")).await.status, 200, "failed over");
    assert_eq!(send(request("/limited")).await.status, 200);
    assert_eq!(send(request("/limited")).await.status, 429);
    assert_eq!(bad.hits(), 1);
    eventually(Duration::from_secs(5), || async {
        bin.logged(|l| l["route"] == "limited" && l["status"] == 429)
    })
    .await;
    let logs = bin.logs.lock().unwrap().clone();

    let pay =
        line_for(&logs, "pay", 200).expect("the failed-over request is logged at 0% sampling");
    let trail = pay["trail"].as_str().unwrap();
    assert_eq!(
        trail,
        format!(
            "pg-a/{} 503 {}, retry 503: failover no_available_endpoint: pg-b/{} 200 {}",
            bad.addr,
            trail.split(' ').nth(2).unwrap().trim_end_matches(','),
            good.addr,
            trail.rsplit(' ').next().unwrap()
        ),
        "the trail names both attempts and why the second went elsewhere"
    );
    assert_eq!(pay["flags"], "FO");
    assert_eq!(pay["attempts"], 2);
    assert_eq!(pay["client"], "127.0.0.1");
    let (total, upstream) = (
        pay["duration_ms"].as_f64().unwrap(),
        pay["upstream_ms"].as_f64().unwrap(),
    );
    assert!(
        upstream > 0.0 && upstream <= total,
        "upstream {upstream} of total {total}"
    );

    let limited = line_for(&logs, "limited", 429).unwrap();
    assert_eq!(limited["flags"], "RL");
    assert_eq!(limited["reason"], "rate_limited");
    assert_eq!(limited["rate_key"], format!("{:08x}", fnv1a(b"m-1")));
    assert!(
        !limited.to_string().contains("m-1"),
        "the key itself is never logged"
    );
    assert_eq!(limited["trail"], "", "no attempt was made");

    assert!(
        line_for(&logs, "ok", 200).is_none() && line_for(&logs, "limited", 200).is_none(),
        "successes are sampled out at 0%"
    );
}

/// Upstream time apart from total time is a metric too: one failed attempt and one retry are
/// summed in `backstop_upstream_duration_seconds`; a request backstop refused has none.
#[tokio::test]
async fn upstream_time_is_a_histogram_per_route() {
    let slow = Backend::start(Behaviour::Delay(Duration::from_millis(120))).await;
    let yaml = format!(
        "upstreams:\n  pg:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - {{ name: r, upstream: pg, rate_limit: {{ rate: 1/m }} }}\n",
        slow.addr
    );
    let app = support::proxy(&yaml).await;
    let ok = support::get(format!("http://{}/x", app.proxy_addr())).await;
    assert_eq!(ok.status, 200);
    let limited = support::get(format!("http://{}/x", app.proxy_addr())).await;
    assert_eq!(limited.status, 429);
    let text = support::metrics(&app).await;
    let series = "backstop_upstream_duration_seconds_count{route=\"r\",upstream=\"pg\"}";
    assert_eq!(
        support::sample(&text, series),
        Some(1.0),
        "only the forwarded one"
    );
    let sum = support::sample(
        &text,
        "backstop_upstream_duration_seconds_sum{route=\"r\",upstream=\"pg\"}",
    )
    .unwrap();
    assert!((0.12..1.0).contains(&sum), "waited {sum}s on the upstream");
}
