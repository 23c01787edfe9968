//! Rate limits: local GCRA per route and key, and a global limit shared through a real Redis.

mod support;

use std::time::Duration;

use futures_util::FutureExt;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{
    eventually, get, metrics, proxy, sample, send, Answer, Backend, Behaviour, RedisServer,
};

fn limited(backend: &Backend, limit: &str) -> String {
    format!(
        "upstreams:\n  partner:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - name: orders\n    upstream: partner\n    rate_limit: {limit}\n",
        backend.addr
    )
}

async fn get_with(app: &backstop::App, header: Option<(&str, &str)>) -> Answer {
    let mut req = Request::get(format!("http://{}/orders", app.proxy_addr()));
    if let Some((k, v)) = header {
        req = req.header(k, v);
    }
    send(req.body(Full::<Bytes>::default()).unwrap()).await
}

/// A burst against `10/s, burst: 5` admits 6 at once (plus at most one more as time passes);
/// the rest get 429 with Retry-After and RateLimit headers; allowed answers carry them too.
#[tokio::test]
async fn a_burst_admits_the_right_count_with_headers() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&limited(&backend, "{ rate: 10/s, burst: 5 }")).await;
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(get_with(&app, None).await);
    }
    let admitted: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    let rejected: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(
        (6..=7).contains(&admitted.len()),
        "admitted {}",
        admitted.len()
    );
    assert_eq!(admitted.len() + rejected.len(), 20);
    assert_eq!(
        backend.hits(),
        admitted.len(),
        "rejected requests never reach the backend"
    );
    assert_eq!(
        admitted[0].header("ratelimit-policy"),
        "\"orders\";q=10;w=1"
    );
    assert_eq!(admitted[0].header("ratelimit"), "\"orders\";r=5;t=1");
    let r = rejected[0];
    assert_eq!(r.header("x-backstop-reason"), "rate_limited");
    assert_eq!(r.json()["error"], "rate_limited");
    assert_eq!(r.header("retry-after"), "1");
    assert_eq!(r.header("ratelimit-policy"), "\"orders\";q=10;w=1");
    assert_eq!(r.header("ratelimit"), "\"orders\";r=0;t=1");
    let m = metrics(&app).await;
    let series = r#"backstop_rate_limited_total{mode="enforce",route="orders",scope="local"}"#;
    assert_eq!(sample(&m, series), Some(rejected.len() as f64));
}

/// Keys are independent: one merchant's exhausted bucket does not limit another.
#[tokio::test]
async fn keys_are_independent() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&limited(
        &backend,
        "{ rate: 1/m, burst: 1, key: \"header:x-merchant-id\" }",
    ))
    .await;
    let a = Some(("x-merchant-id", "m-a"));
    assert_eq!(get_with(&app, a).await.status, 200);
    assert_eq!(get_with(&app, a).await.status, 200);
    assert_eq!(get_with(&app, a).await.status, 429);
    assert_eq!(
        get_with(&app, Some(("x-merchant-id", "m-b"))).await.status,
        200
    );
}

/// A missing key header is rejected with 400, or shares one bucket with `on_missing_key: shared`.
#[tokio::test]
async fn missing_key_header_is_rejected_or_shared() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&limited(
        &backend,
        "{ rate: 1/m, key: \"header:x-merchant-id\" }",
    ))
    .await;
    let r = get_with(&app, None).await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-backstop-reason")),
        (400, "rate_limit_key_missing")
    );
    assert_eq!(backend.hits(), 0);

    let app = proxy(&limited(
        &backend,
        "{ rate: 1/m, key: \"header:x-merchant-id\", on_missing_key: shared }",
    ))
    .await;
    assert_eq!(get_with(&app, None).await.status, 200);
    assert_eq!(
        get_with(&app, None).await.status,
        429,
        "one shared bucket for keyless requests"
    );
    assert_eq!(
        get_with(&app, Some(("x-merchant-id", "m-1"))).await.status,
        200
    );
}

/// client_ip keys: clients on different loopback addresses have separate buckets.
#[tokio::test]
async fn client_ip_keys_separate_clients() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&limited(&backend, "{ rate: 1/m, key: client_ip }")).await;
    let from = |ip: &str| {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_local_address(Some(ip.parse().unwrap()));
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build::<_, Full<Bytes>>(http)
    };
    let url = format!("http://{}/orders", app.proxy_addr());
    let one = from("127.0.0.1");
    let two = from("127.0.0.2");
    let status = |c: &hyper_util::client::legacy::Client<_, Full<Bytes>>| {
        let req = Request::get(url.clone()).body(Full::default()).unwrap();
        let fut = c.request(req);
        async move { fut.await.unwrap().status().as_u16() }
    };
    assert_eq!(status(&one).await, 200);
    assert_eq!(status(&one).await, 429);
    assert_eq!(
        status(&two).await,
        200,
        "another client address has its own bucket"
    );
}

/// Shadow mode forwards everything and counts what it would have rejected.
#[tokio::test]
async fn shadow_mode_forwards_and_counts() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&limited(&backend, "{ mode: shadow, rate: 1/m }")).await;
    for _ in 0..5 {
        assert_eq!(get_with(&app, None).await.status, 200);
    }
    assert_eq!(backend.hits(), 5);
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            r#"backstop_rate_limited_total{mode="shadow",route="orders",scope="local"}"#
        ),
        Some(4.0)
    );
}

/// Thousands of distinct keys: live keys stay at the cap, and idle keys are pruned.
#[tokio::test]
async fn key_state_stays_bounded_under_a_key_flood() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&limited(
        &backend,
        "{ rate: 100/s, key: \"header:x-merchant-id\", max_keys: 200 }",
    ))
    .await;
    for i in 0..2000 {
        let id = format!("m-{i}");
        let r = get_with(&app, Some(("x-merchant-id", id.as_str()))).await;
        assert!(r.status == 200 || r.status == 429);
    }
    let keys = || async {
        sample(
            &metrics(&app).await,
            r#"backstop_rate_limit_keys{route="orders"}"#,
        )
    };
    eventually(Duration::from_secs(10), || async {
        keys().await.is_some_and(|k| k <= 201.0)
    })
    .await;
    eventually(Duration::from_secs(10), || async {
        keys().await == Some(0.0)
    })
    .await;
}

fn global(backend: &Backend, redis: &RedisServer, on_error: &str) -> String {
    format!(
        "redis: {{ url: \"{}\", timeout: 100ms, on_error: {on_error} }}\n{}",
        redis.url(),
        limited(backend, "{ rate: 20/s, burst: 0, scope: global }")
    )
}

/// Two backstop processes sharing one Redis admit the configured rate together, not twice it.
#[tokio::test]
async fn two_processes_share_one_global_limit() {
    let redis = RedisServer::start().await;
    let backend = Backend::start(Behaviour::Echo).await;
    let dir = std::env::temp_dir().join(format!("backstop-global-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("backstop.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n{}",
        global(&backend, &redis, "deny")
    );
    std::fs::write(&file, yaml).unwrap();
    let (a, b) = (
        support::Binary::start(&file).await,
        support::Binary::start(&file).await,
    );
    let status = |proxy: String| async move { get(format!("http://{proxy}/orders")).await.status };
    // Wait until both are connected (before that, on_error: deny answers 429).
    for bin in [&a, &b] {
        eventually(Duration::from_secs(10), || {
            status(bin.proxy.clone()).then(|s| async move { s == 200 })
        })
        .await;
    }
    let before = backend.hits();
    let started = std::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(2) {
        status(a.proxy.clone()).await;
        status(b.proxy.clone()).await;
        sent += 2;
    }
    let secs = started.elapsed().as_secs_f64();
    let admitted = (backend.hits() - before) as f64;
    let expected = 20.0 * secs + 1.0;
    assert!(
        sent as f64 > expected * 3.0,
        "the test sent enough to be limited: {sent}"
    );
    assert!(
        admitted <= expected * 1.2 && admitted >= expected * 0.7,
        "admitted {admitted}, expected about {expected}"
    );
}

/// When Redis stops, decisions follow on_error quickly and are counted; when it is back,
/// limiting resumes by itself.
#[tokio::test]
async fn redis_outage_follows_on_error_and_recovers() {
    let mut redis = RedisServer::start().await;
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&global(&backend, &redis, "allow")).await;
    eventually(Duration::from_secs(10), || async {
        get_with(&app, None).await.status == 429
    })
    .await;

    redis.stop();
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(get_with(&app, None).await.status.as_u16());
    }
    assert!(
        statuses.iter().all(|s| *s == 200),
        "fail open while redis is down: {statuses:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "never blocked long: {:?}",
        started.elapsed()
    );
    let m = metrics(&app).await;
    assert!(
        sample(
            &m,
            r#"backstop_rate_limit_backend_errors_total{route="orders"}"#
        )
        .unwrap_or(0.0)
            >= 10.0
    );

    redis.restart().await;
    eventually(Duration::from_secs(15), || async {
        let mut limited = false;
        for _ in 0..5 {
            limited |= get_with(&app, None).await.status == 429;
        }
        limited
    })
    .await;
}

/// The global limit works against Redis Cluster: keys of different routes and merchants land
/// in different slots, and each decision touches one key.
#[tokio::test]
async fn global_limit_works_against_redis_cluster() {
    let cluster = support::RedisCluster::start().await;
    let backend = Backend::start(Behaviour::Echo).await;
    let yaml = format!(
        "redis: {{ url: \"{}\", cluster: true, timeout: 200ms, on_error: deny }}\n{}",
        cluster.url(),
        limited(
            &backend,
            "{ rate: 1/m, burst: 1, scope: global, key: \"header:x-merchant-id\" }"
        )
    );
    let app = proxy(&yaml).await;
    let m1 = Some(("x-merchant-id", "merchant-1"));
    eventually(Duration::from_secs(10), || async {
        get_with(&app, m1).await.status == 200
    })
    .await;
    let errors = r#"backstop_rate_limit_backend_errors_total{route="orders"}"#;
    let errors_before = sample(&metrics(&app).await, errors);
    assert_eq!(
        get_with(&app, m1).await.status,
        200,
        "burst 1: a second request at once"
    );
    assert_eq!(get_with(&app, m1).await.status, 429);
    for i in 2..12 {
        let id = format!("merchant-{i}");
        assert_eq!(
            get_with(&app, Some(("x-merchant-id", id.as_str())))
                .await
                .status,
            200,
            "{id}"
        );
    }
    assert_eq!(
        sample(&metrics(&app).await, errors),
        errors_before,
        "no errors once connected"
    );
}

/// The access log records the rate-limit decision: a shadow would-be rejection is noted on a
/// request that was forwarded, a real rejection carries the reason.
#[tokio::test]
async fn access_log_records_rate_limit_decisions() {
    let backend = Backend::start(Behaviour::Echo).await;
    let dir = std::env::temp_dir().join(format!("backstop-ratelog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("backstop.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nupstreams:\n  partner:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - {{ name: shadowed, match: {{ path_prefix: /s }}, upstream: partner, rate_limit: {{ mode: shadow, rate: 1/m }} }}\n  - {{ name: enforced, upstream: partner, rate_limit: {{ rate: 1/m }} }}\n",
        backend.addr
    );
    std::fs::write(&file, yaml).unwrap();
    let bin = support::Binary::start(&file).await;
    for path in ["/s", "/s", "/e", "/e"] {
        get(format!("http://{}{path}", bin.proxy)).await;
    }
    eventually(Duration::from_secs(5), || async {
        bin.logged(|l| {
            l["route"] == "shadowed"
                && l["note"] == "rate_limit_shadow_reject"
                && l["status"] == 200
        }) && bin.logged(|l| {
            l["route"] == "enforced" && l["reason"] == "rate_limited" && l["status"] == 429
        })
    })
    .await;
}

/// A junk-key flood fills the key cap: a merchant never seen before still gets its own fresh
/// bucket (its first request is admitted), because the least recently used idle key is
/// evicted instead of new keys sharing one overflow bucket; evictions are counted.
#[tokio::test]
async fn a_new_key_is_admitted_while_the_cap_is_full_of_junk_keys() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&limited(
        &backend,
        "{ rate: 1/m, burst: 0, key: \"header:x-merchant-id\", max_keys: 50 }",
    ))
    .await;
    // The flood: 500 distinct junk keys, each used once (each bucket now empty for a minute).
    for i in 0..500 {
        let id = format!("junk-{i}");
        get_with(&app, Some(("x-merchant-id", id.as_str()))).await;
    }
    // Ten merchants never seen before: each first request is admitted and reaches the backend.
    let before = backend.hits();
    for i in 0..10 {
        let id = format!("merchant-{i}");
        let r = get_with(&app, Some(("x-merchant-id", id.as_str()))).await;
        assert_eq!(r.status, 200, "first request of {id}");
        assert_eq!(
            r.header("ratelimit"),
            "\"orders\";r=0;t=60",
            "{id} has its own bucket"
        );
    }
    assert_eq!(backend.hits() - before, 10, "counted at the backend");
    // Each merchant's own bucket is enforced: a second request at once is limited.
    let r = get_with(&app, Some(("x-merchant-id", "merchant-9"))).await;
    assert_eq!(r.status, 429);
    let m = metrics(&app).await;
    let evictions = sample(&m, r#"backstop_rate_limit_evictions_total{route="orders"}"#);
    assert_eq!(evictions, Some(460.0), "510 keys through a cap of 50");
    eventually(Duration::from_secs(10), || async {
        sample(
            &metrics(&app).await,
            r#"backstop_rate_limit_keys{route="orders"}"#,
        ) == Some(50.0)
    })
    .await;
}

/// Redis down fails fast: after a few consecutive errors, decisions apply `on_error` at once
/// (counted in backstop_redis_fast_fail_total) instead of each waiting on Redis, and
/// backstop_redis_available says 0. One background probe finds Redis back; limiting resumes.
#[tokio::test]
async fn redis_down_fails_fast_and_a_probe_brings_it_back() {
    let mut redis = RedisServer::start().await;
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&global(&backend, &redis, "allow")).await;
    eventually(Duration::from_secs(10), || async {
        get_with(&app, None).await.status == 429
    })
    .await;
    let errors = r#"backstop_rate_limit_backend_errors_total{route="orders"}"#;
    let fast = r#"backstop_redis_fast_fail_total{route="orders"}"#;
    let counts = || async {
        let m = metrics(&app).await;
        (
            sample(&m, errors).unwrap_or(0.0),
            sample(&m, fast).unwrap_or(0.0),
            sample(&m, "backstop_redis_available"),
        )
    };
    let (errors_before, fast_before, available) = counts().await;
    assert_eq!(available, Some(1.0));

    redis.stop();
    let hits_before = backend.hits();
    for _ in 0..50 {
        assert_eq!(get_with(&app, None).await.status, 200, "on_error: allow");
    }
    assert_eq!(backend.hits() - hits_before, 50, "counted at the backend");
    let (errors_after, fast_after, available) = counts().await;
    let undecided = errors_after - errors_before;
    let fast_fails = fast_after - fast_before;
    assert_eq!(
        undecided, 50.0,
        "every decision Redis did not make is counted"
    );
    assert!(
        undecided - fast_fails <= 3.0,
        "only the first consecutive errors asked Redis: {} of 50 did",
        undecided - fast_fails
    );
    assert_eq!(available, Some(0.0));

    redis.restart().await;
    eventually(Duration::from_secs(15), || async {
        let mut limited = false;
        for _ in 0..5 {
            limited |= get_with(&app, None).await.status == 429;
        }
        limited
    })
    .await;
    assert_eq!(counts().await.2, Some(1.0));
}

/// The Redis URL's password never reaches the log, and "connected" is said only after Redis
/// answered: here nothing listens, so it is never said. Reads every stderr line from the start
/// (the support Binary keeps only lines after "backstop is serving").
#[tokio::test]
async fn redis_password_is_never_logged_and_connected_only_after_ping() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let backend = Backend::start(Behaviour::Echo).await;
    let closed = support::closed_port().await;
    let password = "Sup3rS3cretPw";
    let dir = std::env::temp_dir().join(format!("backstop-redact-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("backstop.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nredis: {{ url: \"redis://app:{password}@{closed}\", timeout: 50ms, on_error: allow }}\n{}",
        limited(&backend, "{ rate: 20/s, scope: global }")
    );
    std::fs::write(&file, yaml).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["run", "-c"])
        .arg(&file)
        .args(["--log-format", "json"])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let sink = lines.clone();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    let logged = |needle: &'static str| {
        let lines = lines.clone();
        move || {
            let found = lines.lock().unwrap().iter().any(|l| l.contains(needle));
            async move { found }
        }
    };
    eventually(Duration::from_secs(10), logged("backstop is serving")).await;
    let proxy_addr = {
        let lines = lines.lock().unwrap();
        let serving = lines
            .iter()
            .find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"] == "backstop is serving")
                    .then(|| v["proxy"].as_str().map(String::from))
            })
            .flatten()
            .unwrap();
        serving
    };
    // Decisions that fail (and so log) while Redis is unreachable.
    for _ in 0..5 {
        assert_eq!(get(format!("http://{proxy_addr}/orders")).await.status, 200);
    }
    eventually(Duration::from_secs(10), logged("cannot connect to redis")).await;
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines.iter().all(|l| !l.contains(password)),
        "the password leaked: {:?}",
        lines
            .iter()
            .filter(|l| l.contains(password))
            .collect::<Vec<_>>()
    );
    assert!(
        lines.iter().any(|l| l.contains("redis://app:***@")),
        "the URL is logged, redacted"
    );
    let connected: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("connected to redis") && !l.contains("cannot connect"))
        .collect();
    assert!(connected.is_empty(), "nothing listens: {connected:?}");
    child.kill().await.unwrap();
}
