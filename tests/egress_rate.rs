//! A declared egress rate per upstream (issue #14 item 4, declared part):
//! `upstreams.<name>.quota: { rate, burst, mode, max_wait, scope }`. Counted at the partner:
//! it sees about `burst + rate * elapsed`, never more; in queue mode waiters are spread at the
//! rate; with `scope: global` a fleet sharing one Redis sends at the rate together.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::{closed_port, eventually, get, metrics, proxy, sample, Answer, RedisServer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A partner that answers 200 and notes when each request arrived.
async fn partner() -> (SocketAddr, Arc<Mutex<Vec<Instant>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = arrivals.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let svc = service_fn(move |_req: Request<Incoming>| {
                seen.lock().unwrap().push(Instant::now());
                async move {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"ok",
                    ))))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, arrivals)
}

fn config(addr: SocketAddr, quota: &str) -> String {
    format!(
        "upstreams:\n  partner:\n    endpoints: [{{ address: \"{addr}\" }}]\n    quota: {quota}\nroutes:\n  - {{ name: r, upstream: partner, timeout: 5s }}\n"
    )
}

/// `n` requests to `url` at once; their answers.
async fn burst(url: &str, n: usize) -> Vec<Answer> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        set.spawn(get(url.to_owned()));
    }
    let mut answers = Vec::new();
    while let Some(answer) = set.join_next().await {
        answers.push(answer.unwrap());
    }
    answers
}

fn series(result: &str) -> String {
    format!("backstop_upstream_quota_total{{result=\"{result}\",upstream=\"partner\"}}")
}

#[tokio::test]
async fn reject_mode_sends_the_burst_and_the_rate_and_answers_the_rest_429() {
    let (addr, arrivals) = partner().await;
    let app = proxy(&config(addr, "{ rate: 20/s, burst: 0, mode: reject }")).await;
    let url = format!("http://{}/x", app.proxy_addr());
    let started = Instant::now();
    let answers = burst(&url, 50).await;
    let elapsed = started.elapsed().as_secs_f64();
    let delivered = arrivals.lock().unwrap().len();
    let most = 1 + (20.0 * elapsed).ceil() as usize;
    assert!(
        (1..=most).contains(&delivered),
        "the partner saw {delivered} in {elapsed:.3}s; at most burst + rate * elapsed = {most}"
    );
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!(
        refused.len() + delivered,
        50,
        "every request not delivered was refused"
    );
    for answer in &refused {
        assert_eq!(
            answer.header("x-backstop-reason"),
            "upstream_quota_exhausted"
        );
        let retry_after: u64 = answer.header("retry-after").parse().unwrap();
        assert!((1..=2).contains(&retry_after), "{retry_after}");
    }
    let text = metrics(&app).await;
    assert_eq!(
        sample(&text, &series("declared_shed")),
        Some(refused.len() as f64)
    );
    assert_eq!(
        sample(&text, &series("shed")),
        Some(0.0),
        "the learned quota's label counts only its own refusals"
    );

    // Recovery: below the rate (10/s), everything is delivered.
    let before = arrivals.lock().unwrap().len();
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    pace.tick().await;
    for i in 0..8 {
        // The load's own pace, one request per 100ms.
        pace.tick().await;
        assert_eq!(
            get(url.clone()).await.status,
            200,
            "request {i} below the rate"
        );
    }
    assert_eq!(arrivals.lock().unwrap().len(), before + 8);
}

#[tokio::test]
async fn queue_mode_spreads_waiters_at_the_rate_and_delivers_all() {
    let (addr, arrivals) = partner().await;
    let app = proxy(&config(
        addr,
        "{ rate: 20/s, burst: 0, mode: queue, max_wait: 2s }",
    ))
    .await;
    let url = format!("http://{}/x", app.proxy_addr());
    let answers = burst(&url, 20).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "all within max_wait: {statuses:?}"
    );
    let mut at = arrivals.lock().unwrap().clone();
    assert_eq!(at.len(), 20);
    at.sort();
    let span = at[19] - at[0];
    assert!(
        span >= Duration::from_millis(19 * 50 - 50),
        "20 arrivals at 20/s span about 950ms: {span:?}"
    );
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    let close = gaps
        .iter()
        .filter(|g| **g < Duration::from_millis(25))
        .count();
    assert!(
        close <= 2,
        "spaced about 50ms apart, not released together: {gaps:?}"
    );
    let text = metrics(&app).await;
    assert_eq!(sample(&text, &series("declared_queued")), Some(19.0));
    assert_eq!(sample(&text, &series("declared_shed")), Some(0.0));
}

#[tokio::test]
async fn queue_mode_refuses_what_would_wait_longer_than_max_wait() {
    let (addr, arrivals) = partner().await;
    let app = proxy(&config(
        addr,
        "{ rate: 20/s, burst: 0, mode: queue, max_wait: 200ms }",
    ))
    .await;
    let url = format!("http://{}/x", app.proxy_addr());
    let answers = burst(&url, 20).await;
    let delivered = answers.iter().filter(|a| a.status == 200).count();
    // Slots at 0, 50, ..., 200ms (and one or two more while the burst arrives).
    assert!(
        (5..=8).contains(&delivered),
        "delivered {delivered}: those whose slot is within 200ms"
    );
    assert_eq!(arrivals.lock().unwrap().len(), delivered);
    assert!(answers
        .iter()
        .filter(|a| a.status != 200)
        .all(|a| a.status == 429 && a.header("x-backstop-reason") == "upstream_quota_exhausted"));
}

/// Two backstop processes running `quota` against one partner, sharing one Redis (with
/// `on_error: deny`), both connected to it.
struct Fleet {
    a: support::Binary,
    b: support::Binary,
    arrivals: Arc<Mutex<Vec<Instant>>>,
    _redis: RedisServer,
}

async fn fleet(name: &str, quota: &str) -> Fleet {
    let redis = RedisServer::start().await;
    let (addr, arrivals) = partner().await;
    let dir = std::env::temp_dir().join(format!("backstop-egress-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("backstop.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nredis: {{ url: \"{}\", timeout: 100ms, on_error: deny }}\n{}",
        redis.url(),
        config(addr, quota)
    );
    std::fs::write(&file, yaml).unwrap();
    let (a, b) = (
        support::Binary::start(&file).await,
        support::Binary::start(&file).await,
    );
    // Wait until both are connected (before that, on_error: deny answers 429).
    for bin in [&a, &b] {
        eventually(Duration::from_secs(10), || {
            get(format!("http://{}/x", bin.proxy)).map(|a| a.status == 200)
        })
        .await;
    }
    Fleet {
        a,
        b,
        arrivals,
        _redis: redis,
    }
}

/// Two backstop processes sharing one Redis send at the declared rate together, not twice it.
#[tokio::test]
async fn two_processes_share_one_global_rate() {
    let Fleet {
        a,
        b,
        arrivals,
        _redis: _kept_running,
    } = fleet(
        "reject",
        "{ rate: 20/s, burst: 0, mode: reject, scope: global }",
    )
    .await;
    let status = |proxy: String| async move { get(format!("http://{proxy}/x")).await.status };
    let before = arrivals.lock().unwrap().len();
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(2) {
        status(a.proxy.clone()).await;
        status(b.proxy.clone()).await;
        sent += 2;
    }
    let secs = started.elapsed().as_secs_f64();
    let delivered = (arrivals.lock().unwrap().len() - before) as f64;
    let expected = 20.0 * secs + 1.0;
    assert!(
        sent as f64 > expected * 3.0,
        "the test sent enough to be paced: {sent}"
    );
    assert!(
        delivered <= expected * 1.2 && delivered >= expected * 0.7,
        "the partner saw {delivered}, expected about {expected} (not twice that)"
    );
    let noted = |bin: &support::Binary| bin.logged(|v| v["note"] == "quota_rate_shed");
    assert!(
        noted(&a) || noted(&b),
        "the access log notes the declared rate's refusals"
    );
}

/// Redis unreachable: a global declared rate follows `redis.on_error`, counted.
#[tokio::test]
async fn redis_unreachable_follows_on_error() {
    let (addr, arrivals) = partner().await;
    let closed = closed_port().await;
    let quota = "{ rate: 20/s, burst: 0, mode: reject, scope: global }";
    for (on_error, status) in [("allow", 200), ("deny", 429)] {
        let yaml = format!(
            "redis: {{ url: \"redis://{closed}\", timeout: 50ms, on_error: {on_error} }}\n{}",
            config(addr, quota)
        );
        let app = proxy(&yaml).await;
        let url = format!("http://{}/x", app.proxy_addr());
        let before = arrivals.lock().unwrap().len();
        let answers = burst(&url, 10).await;
        assert!(
            answers.iter().all(|a| a.status == status),
            "on_error: {on_error}"
        );
        let delivered = arrivals.lock().unwrap().len() - before;
        assert_eq!(delivered, if status == 200 { 10 } else { 0 });
        let text = metrics(&app).await;
        assert_eq!(
            sample(&text, &series("declared_backend_error")),
            Some(10.0),
            "on_error: {on_error}"
        );
    }
}

#[test]
fn validate_names_the_key_path() {
    let check = |quota: &str, redis: bool, wanted: &str| {
        let yaml = format!(
            "listen: 127.0.0.1:0\n{}{}",
            if redis {
                "redis: { url: \"redis://127.0.0.1:1\" }\n"
            } else {
                ""
            },
            config("127.0.0.1:1".parse().unwrap(), quota)
        );
        let error = backstop::config::load_str(&yaml)
            .err()
            .unwrap_or_else(|| panic!("{quota} was accepted"))
            .to_string();
        assert!(error.contains(wanted), "{quota}: {error}");
    };
    check(
        "{ rate: 20/x }",
        false,
        "upstreams.partner.quota.rate: invalid rate \"20/x\"",
    );
    check(
        "{ rate: 20/s, scope: global }",
        false,
        "upstreams.partner.quota.scope: scope global needs a top-level redis: section",
    );
    check(
        "{ rate: 20/s, scope: fleet }",
        true,
        "upstreams.partner.quota.scope: unknown scope \"fleet\"",
    );
    check(
        "{ burst: 5 }",
        false,
        "upstreams.partner.quota.burst: burst needs rate",
    );
    check(
        "{ rate: 20/s, max_wait: 2m }",
        false,
        "upstreams.partner.quota.max_wait",
    );
    let yaml = format!(
        "listen: 127.0.0.1:0\nredis: {{ url: \"redis://127.0.0.1:1\" }}\n{}",
        config(
            "127.0.0.1:1".parse().unwrap(),
            "{ rate: 300/s, burst: 50, mode: queue, max_wait: 200ms, scope: global }"
        )
    );
    let config = backstop::config::load_str(&yaml).expect("the issue's example is valid");
    let declared = config.upstreams[0].quota.unwrap().declared.unwrap();
    assert_eq!((declared.rate.count, declared.burst), (300, 50));
}

/// In queue mode the fleet's waiters reserve their slots in Redis: spread at the rate across
/// both processes, all delivered within max_wait.
#[tokio::test]
async fn a_global_queue_spreads_the_fleets_waiters() {
    let fleet = fleet(
        "queue",
        "{ rate: 20/s, burst: 0, mode: queue, max_wait: 2s, scope: global }",
    )
    .await;
    let before = fleet.arrivals.lock().unwrap().len();
    let (url_a, url_b) = (
        format!("http://{}/x", fleet.a.proxy),
        format!("http://{}/x", fleet.b.proxy),
    );
    let (from_a, from_b) = tokio::join!(burst(&url_a, 10), burst(&url_b, 10));
    let statuses: Vec<u16> = from_a
        .iter()
        .chain(&from_b)
        .map(|a| a.status.as_u16())
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "all within max_wait: {statuses:?}"
    );
    let mut at = fleet.arrivals.lock().unwrap()[before..].to_vec();
    assert_eq!(at.len(), 20);
    at.sort();
    let span = at[19] - at[0];
    assert!(
        span >= Duration::from_millis(19 * 50 - 50),
        "20 arrivals at 20/s for the fleet span about 950ms, not half that: {span:?}"
    );
}

/// The declared rate's bucket survives a reload that keeps the upstream's `quota` (even when
/// the rest of the upstream changes) and starts over when `quota` changes.
#[tokio::test]
async fn the_bucket_survives_a_reload_that_keeps_the_quota() {
    let (addr, arrivals) = partner().await;
    let dir = std::env::temp_dir().join(format!("backstop-egress-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("backstop.yaml");
    let yaml = |connect_timeout: &str, rate: &str| {
        format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nupstreams:\n  partner:\n    endpoints: [{{ address: \"{addr}\" }}]\n    connect_timeout: {connect_timeout}\n    quota: {{ rate: {rate}, mode: reject }}\nroutes:\n  - {{ name: r, upstream: partner }}\n"
        )
    };
    std::fs::write(&file, yaml("1s", "1/m")).unwrap();
    let config = backstop::config::load(&file).unwrap();
    let app = backstop::App::start_watching(config, backstop::metrics::Metrics::new(), &file)
        .await
        .unwrap();
    let url = format!("http://{}/x", app.proxy_addr());
    let reload = || async {
        let request = Request::post(format!("http://{}/admin/reload", app.admin_addr()))
            .header("x-backstop-admin", "1")
            .body(Full::<Bytes>::default())
            .unwrap();
        support::send(request).await.json()["generation"].clone()
    };
    assert_eq!(get(url.clone()).await.status, 200);
    assert_eq!(get(url.clone()).await.status, 429, "one a minute");

    std::fs::write(&file, yaml("2s", "1/m")).unwrap();
    assert_eq!(reload().await, 2);
    assert_eq!(
        get(url.clone()).await.status,
        429,
        "the slot taken before the reload still counts"
    );

    std::fs::write(&file, yaml("2s", "2/m")).unwrap();
    assert_eq!(reload().await, 3);
    assert_eq!(
        get(url.clone()).await.status,
        200,
        "a new rate, a new bucket"
    );
    assert_eq!(arrivals.lock().unwrap().len(), 2);
}
