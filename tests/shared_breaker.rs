//! Breakers shared by every replica (`circuit_breaker.shared: redis`): three real `backstop`
//! processes, one real redis-server, one backend that counts what reaches it.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use support::{eventually, get, sample, Backend, Behaviour, Binary, RedisServer};

const OPEN: &str = r#"backstop_circuit_state{route="",state="open",upstream="pg"}"#;
const HALF_OPEN: &str = r#"backstop_circuit_state{route="",state="half_open",upstream="pg"}"#;
const CLOSED: &str = r#"backstop_circuit_state{route="",state="closed",upstream="pg"}"#;
const CONNECTED: &str = r#"backstop_circuit_shared_connected{route="",upstream="pg"}"#;
const FALLBACK: &str = r#"backstop_circuit_shared_fallback_total{route="",upstream="pg"}"#;

/// Writes a config with one shared upstream-level breaker in front of `backend`.
fn config_file(
    name: &str,
    redis: &RedisServer,
    backend: &Backend,
    breaker: &str,
) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("backstop-sb-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("backstop.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nredis: {{ url: \"{}\", timeout: 500ms }}\nupstreams:\n  pg:\n    endpoints: [{{ address: \"{}\" }}]\n    circuit_breaker:\n{breaker}      shared: redis\nroutes:\n  - {{ name: pay, upstream: pg }}\n",
        redis.url(),
        backend.addr,
    );
    std::fs::write(&file, yaml).unwrap();
    file
}

async fn metrics(bin: &Binary) -> String {
    String::from_utf8_lossy(&get(format!("http://{}/metrics", bin.admin)).await.body).into_owned()
}

/// Waits until `series` is `value` on every replica in `bins`.
async fn all_say(bins: &[&Binary], series: &'static str, value: f64, within: Duration) {
    let admins: Vec<String> = bins.iter().map(|b| b.admin.clone()).collect();
    eventually(within, || {
        let admins = admins.clone();
        async move {
            for admin in admins {
                let m = String::from_utf8_lossy(&get(format!("http://{admin}/metrics")).await.body)
                    .into_owned();
                if sample(&m, series) != Some(value) {
                    return false;
                }
            }
            true
        }
    })
    .await;
}

/// (shared, synced) of the breaker as /admin/circuits shows it.
async fn circuit(bin: &Binary) -> (String, serde_json::Value) {
    let view = get(format!("http://{}/admin/circuits", bin.admin))
        .await
        .json();
    let c = &view["circuits"][0];
    (
        c["shared"].as_str().unwrap_or("").to_owned(),
        c["synced"].clone(),
    )
}

/// (status, x-backstop-reason) of one GET through `bin`.
async fn call(bin: &Binary) -> (u16, String) {
    let a = get(format!("http://{}/charge", bin.proxy)).await;
    (a.status.as_u16(), a.header("x-backstop-reason").to_owned())
}

/// An outage seen by one replica opens all three: the other two refuse without sending. After
/// the open period the fleet sends exactly `half_open_requests` probes in total, though every
/// replica gets traffic, and when they pass all three close.
#[tokio::test]
async fn an_outage_seen_by_one_replica_opens_all_and_the_fleet_probes_once() {
    let redis = RedisServer::start().await;
    let backend = Backend::start(Behaviour::Status(503)).await;
    let breaker = "      consecutive_failures: 2\n      open_for: 2s\n      max_open_for: 2s\n      half_open_requests: 2\n";
    let file = config_file("fleet", &redis, &backend, breaker);
    let bins = [
        Binary::start(&file).await,
        Binary::start(&file).await,
        Binary::start(&file).await,
    ];
    let all: Vec<&Binary> = bins.iter().collect();
    all_say(&all, CONNECTED, 1.0, Duration::from_secs(10)).await;
    assert_eq!(circuit(&bins[0]).await, ("redis".to_owned(), true.into()));

    // The outage, seen by replica 1 only.
    for _ in 0..2 {
        assert_eq!(
            call(&bins[0]).await,
            (503, String::new()),
            "the backend's own 503"
        );
    }
    assert_eq!(backend.hits(), 2);
    all_say(&all, OPEN, 1.0, Duration::from_secs(1)).await;
    let before = backend.hits();
    for bin in &bins[1..] {
        for _ in 0..5 {
            assert_eq!(call(bin).await, (503, "circuit_open".to_owned()));
        }
        let m = metrics(bin).await;
        let learned = r#"backstop_circuit_transition_reasons_total{from="closed",reason="peer_opened",route="",to="open",upstream="pg"}"#;
        assert_eq!(sample(&m, learned), Some(1.0), "opened by the fleet");
    }
    assert_eq!(backend.hits(), before, "the other replicas sent nothing");

    // Recovery: every replica half-open on the fleet's clock; probes are slow enough that the
    // whole burst is decided before one of them passes.
    backend.set(Behaviour::Delay(Duration::from_millis(500)));
    all_say(&all, HALF_OPEN, 1.0, Duration::from_secs(5)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let answers = loop {
        // Three requests at once through each replica.
        let burst = join_all((0..9).map(|i| call(&bins[i % 3]))).await;
        if backend.hits() > before {
            break burst;
        }
        // Every claim came just before the fleet's open period ended: try again.
        assert!(
            tokio::time::Instant::now() < deadline,
            "no probe got through"
        );
    };
    assert_eq!(
        backend.hits() - before,
        2,
        "half_open_requests probes in total: {answers:?}"
    );
    assert_eq!(answers.iter().filter(|a| a.0 == 200).count(), 2);
    assert!(answers
        .iter()
        .filter(|a| a.0 != 200)
        .all(|a| a.0 == 503 && a.1.starts_with("circuit_")));
    all_say(&all, CLOSED, 1.0, Duration::from_secs(2)).await;
    assert_eq!(backend.hits() - before, 2, "closing sent nothing more");
    for bin in &bins {
        assert_eq!(call(bin).await.0, 200);
    }
    assert_eq!(backend.hits() - before, 5);
}

/// Redis killed: each replica goes on with its own breaker and says so; traffic flows, an
/// outage opens only the replica that saw it; when Redis is back, that open is published and
/// the other replica opens too.
#[tokio::test]
async fn without_redis_each_replica_decides_alone_and_publishes_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let backend = Backend::start(Behaviour::Echo).await;
    let breaker = "      consecutive_failures: 2\n      open_for: 30s\n";
    let file = config_file("fallback", &redis, &backend, breaker);
    let bins = [Binary::start(&file).await, Binary::start(&file).await];
    let all: Vec<&Binary> = bins.iter().collect();
    all_say(&all, CONNECTED, 1.0, Duration::from_secs(10)).await;
    for bin in &bins {
        assert_eq!(sample(&metrics(bin).await, FALLBACK), Some(0.0));
    }

    redis.stop();
    for bin in &bins {
        assert_eq!(
            call(bin).await.0,
            200,
            "closed: no Redis on the request path"
        );
    }
    all_say(&all, CONNECTED, 0.0, Duration::from_secs(5)).await;
    assert_eq!(circuit(&bins[0]).await, ("redis".to_owned(), false.into()));
    for bin in &bins {
        let fallback = sample(&metrics(bin).await, FALLBACK).unwrap_or(0.0);
        assert!(fallback >= 1.0, "the fallback is counted: {fallback}");
    }
    let hits = backend.hits();
    for bin in &bins {
        for _ in 0..3 {
            assert_eq!(call(bin).await.0, 200);
        }
    }
    assert_eq!(backend.hits(), hits + 6, "traffic still flows");

    // An outage seen by replica 1 alone opens replica 1 alone.
    backend.set(Behaviour::Status(503));
    for _ in 0..2 {
        assert_eq!(call(&bins[0]).await, (503, String::new()));
    }
    assert_eq!(call(&bins[0]).await, (503, "circuit_open".to_owned()));
    let hits = backend.hits();
    assert_eq!(
        call(&bins[1]).await,
        (503, String::new()),
        "replica 2 still sends"
    );
    assert_eq!(backend.hits(), hits + 1);

    // Redis back: replica 1's open reaches replica 2.
    redis.restart().await;
    all_say(&all, CONNECTED, 1.0, Duration::from_secs(20)).await;
    all_say(&[&bins[1]], OPEN, 1.0, Duration::from_secs(5)).await;
    let hits = backend.hits();
    assert_eq!(call(&bins[1]).await, (503, "circuit_open".to_owned()));
    assert_eq!(backend.hits(), hits);
}

/// A reload that leaves the breaker's config as it was keeps its shared state: still open on
/// the fleet's word, still connected, no new transition, nothing sent.
#[tokio::test]
async fn a_reload_keeps_the_shared_breakers_state() {
    let redis = RedisServer::start().await;
    let backend = Backend::start(Behaviour::Status(503)).await;
    let breaker = "      consecutive_failures: 2\n      open_for: 30s\n";
    let file = config_file("reload", &redis, &backend, breaker);
    let bins = [Binary::start(&file).await, Binary::start(&file).await];
    let all: Vec<&Binary> = bins.iter().collect();
    all_say(&all, CONNECTED, 1.0, Duration::from_secs(10)).await;
    for _ in 0..2 {
        call(&bins[0]).await;
    }
    all_say(&all, OPEN, 1.0, Duration::from_secs(2)).await;

    // An unrelated change: a second route.
    let yaml = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        format!("{yaml}  - {{ name: other, upstream: pg, match: {{ path_prefix: /other }} }}\n"),
    )
    .unwrap();
    bins[1].signal("-HUP");
    eventually(Duration::from_secs(5), || async {
        bins[1].logged(|l| l["message"] == "config reloaded")
    })
    .await;
    let hits = backend.hits();
    assert_eq!(call(&bins[1]).await, (503, "circuit_open".to_owned()));
    assert_eq!(backend.hits(), hits);
    let m = metrics(&bins[1]).await;
    let opened =
        r#"backstop_circuit_transitions_total{from="closed",route="",to="open",upstream="pg"}"#;
    assert_eq!(sample(&m, opened), Some(1.0), "no new transition");
    assert_eq!(sample(&m, CONNECTED), Some(1.0));
    assert_eq!(sample(&m, OPEN), Some(1.0));
}
