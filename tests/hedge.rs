//! Hedged requests (issue #15 item 2): a slow attempt gets a second one at another endpoint
//! of the same upstream, the first answer wins and the other is cancelled; never for a
//! non-idempotent request without a key; within a budget; not while the SLO burns. Counted at
//! the backends.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::{eventually, metrics, proxy, sample, Backend, Behaviour};

/// A slow endpoint and a fast one behind one upstream, round robin, so that about every other
/// request starts at the slow one.
async fn pair() -> (Backend, Backend) {
    let slow = Backend::start(Behaviour::Delay(Duration::from_secs(3))).await;
    let fast = Backend::start(Behaviour::Echo).await;
    (slow, fast)
}

fn config(slow: &Backend, fast: &Backend, upstream_extra: &str, route_extra: &str) -> String {
    format!(
        "upstreams:\n  pg:\n    load_balancing: round_robin\n    endpoints:\n      - address: \"{}\"\n      - address: \"{}\"\n{upstream_extra}routes:\n  - name: r\n    upstream: pg\n    timeout: 10s\n{route_extra}",
        slow.addr, fast.addr
    )
}

const HEDGE: &str = "    hedge: { after: 30ms, max_extra: 1, budget: 100% }\n";

fn counter(m: &str, result: &str) -> f64 {
    sample(
        m,
        &format!("backstop_hedges_total{{result=\"{result}\",route=\"r\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_slow_attempt_is_hedged_to_the_other_endpoint_and_the_first_answer_wins() {
    let (slow, fast) = pair().await;
    let app = proxy(&config(&slow, &fast, "", HEDGE)).await;
    let url = format!("http://{}/quote", app.proxy_addr());
    let mut answered_by = Vec::new();
    for _ in 0..6 {
        let answer = support::get(url.clone()).await;
        assert_eq!(answer.status, 200);
        answered_by.push(answer.json()["backend"].as_str().unwrap().to_owned());
    }
    let fast_addr = fast.addr.to_string();
    assert!(
        answered_by.iter().all(|b| *b == fast_addr),
        "every answer came from the fast endpoint: {answered_by:?}"
    );
    // Every first attempt at the slow endpoint got a hedge, which won; the fast endpoint saw
    // each request once (as the first attempt or as the hedge).
    let m = metrics(&app).await;
    let sent = counter(&m, "sent");
    assert!(sent >= 1.0, "{m}");
    assert_eq!(slow.hits() as f64, sent, "{m}");
    // (A first attempt at the fast endpoint slower than 30ms on a loaded machine gets a hedge
    // to the slow one, which loses: won can be below sent, never above.)
    let won = counter(&m, "won");
    assert!(won >= 1.0 && won <= sent, "{m}");
    assert_eq!(fast.hits(), 6);
}

#[tokio::test]
async fn after_p90_waits_for_enough_samples_then_follows_the_route_s_latency() {
    let (slow, fast) = pair().await;
    slow.set(Behaviour::Delay(Duration::from_millis(300)));
    let hedge = "    hedge: { after: p90, budget: 100% }\n";
    let app = proxy(&config(&slow, &fast, "", hedge)).await;
    let url = format!("http://{}/quote", app.proxy_addr());
    // Fewer than 20 samples: no percentile to trust, no hedging.
    let mut from_slow = 0;
    for _ in 0..2 {
        if support::get(url.clone()).await.json()["backend"] == slow.addr.to_string() {
            from_slow += 1;
        }
    }
    assert_eq!(
        from_slow, 1,
        "one of two started (and ended) at the slow endpoint"
    );
    assert_eq!(counter(&metrics(&app).await, "sent"), 0.0);
    // Fast answers set p90 to a few milliseconds...
    slow.set(Behaviour::Echo);
    for _ in 0..30 {
        assert_eq!(support::get(url.clone()).await.status, 200);
    }
    // ...so a request stuck at the slow endpoint is hedged after that, not after seconds.
    slow.set(Behaviour::Delay(Duration::from_secs(3)));
    for _ in 0..4 {
        let answer = support::get(url.clone()).await;
        assert_eq!(answer.json()["backend"], fast.addr.to_string());
    }
    let m = metrics(&app).await;
    assert!(counter(&m, "sent") >= 1.0, "{m}");
    assert!(counter(&m, "won") >= 1.0, "{m}");
}

#[tokio::test]
async fn without_hedging_the_slow_endpoint_answers_slowly() {
    // The control for the test above: the same pair without `hedge:`.
    let (slow, fast) = pair().await;
    slow.set(Behaviour::Delay(Duration::from_millis(300)));
    let app = proxy(&config(&slow, &fast, "", "")).await;
    let url = format!("http://{}/quote", app.proxy_addr());
    let mut from_slow = 0;
    for _ in 0..4 {
        let answer = support::get(url.clone()).await;
        if answer.json()["backend"] == slow.addr.to_string() {
            from_slow += 1;
        }
    }
    assert_eq!(from_slow, 2);
    assert_eq!(slow.hits() + fast.hits(), 4, "one attempt each");
}

#[tokio::test]
async fn a_post_is_hedged_only_with_a_key_the_upstream_honours() {
    let (slow, fast) = pair().await;
    slow.set(Behaviour::Delay(Duration::from_millis(300)));
    let keyed = "    idempotency_key: { header: Idempotency-Key }\n";
    let app = proxy(&config(&slow, &fast, keyed, HEDGE)).await;
    let url = format!("http://{}/charge", app.proxy_addr());
    // Without a key: one delivery each, whatever the route says.
    for _ in 0..4 {
        assert_eq!(support::post_keyed(&url, None).await.status, 200);
    }
    assert_eq!(
        slow.hits() + fast.hits(),
        4,
        "never a second copy without a key"
    );
    let m = metrics(&app).await;
    assert_eq!(counter(&m, "sent"), 0.0);
    // With a key: those that start at the slow endpoint are hedged.
    let slow_before = slow.hits();
    for i in 0..4 {
        assert_eq!(
            support::post_keyed(&url, Some(&format!("k-{i}")))
                .await
                .status,
            200
        );
    }
    let m = metrics(&app).await;
    let sent = counter(&m, "sent");
    assert!(sent >= 1.0, "{m}");
    assert_eq!((slow.hits() - slow_before) as f64, sent, "{m}");
    assert_eq!(slow.hits() + fast.hits(), 4 + 4 + sent as usize);
}

#[tokio::test]
async fn the_budget_caps_hedges_as_a_share_of_requests() {
    // Both endpoints slow: every request is due a hedge, the budget allows 10% of them.
    let a = Backend::start(Behaviour::Delay(Duration::from_millis(150))).await;
    let b = Backend::start(Behaviour::Delay(Duration::from_millis(150))).await;
    let hedge = "    hedge: { after: 20ms, budget: 10% }\n";
    let app = proxy(&config(&a, &b, "", hedge)).await;
    let url = format!("http://{}/quote", app.proxy_addr());
    let requests = 40;
    let all = (0..requests).map(|_| support::get(url.clone()));
    for answer in futures_util::future::join_all(all).await {
        assert_eq!(answer.status, 200);
    }
    let m = metrics(&app).await;
    let sent = counter(&m, "sent");
    let exhausted = counter(&m, "budget_exhausted");
    assert!(sent <= 4.0, "at most 10% of 40: {sent}");
    assert_eq!(sent + exhausted, f64::from(requests), "{m}");
    assert_eq!(a.hits() + b.hits(), requests as usize + sent as usize);
}

#[tokio::test]
async fn a_failure_while_the_hedge_runs_does_not_end_the_race() {
    // One endpoint answers 503 at once, the other 200 after 800ms. A request that starts at
    // the slow one is hedged to the failing one after 200ms; that 503 is not the answer while
    // the first attempt still runs. A request that starts at the failing one gets its 503
    // before `after`: that is the answer (retrying is the retry stage's job), no hedge.
    let failing = Backend::start(Behaviour::Status(503)).await;
    let slow = Backend::start(Behaviour::Delay(Duration::from_millis(800))).await;
    // A wide `after`, so that the immediate 503 comes back before it even on a busy machine.
    let hedge = "    hedge: { after: 200ms, max_extra: 1, budget: 100% }\n";
    let app = proxy(&config(&failing, &slow, "", hedge)).await;
    let url = format!("http://{}/x", app.proxy_addr());
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(support::get(url.clone()).await.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 503]);
    assert_eq!((failing.hits(), slow.hits()), (2, 1));
    let m = metrics(&app).await;
    assert_eq!(counter(&m, "sent"), 1.0, "{m}");
    assert_eq!(counter(&m, "won"), 0.0, "the first attempt answered: {m}");
}

#[tokio::test]
async fn hedging_stops_while_the_slo_burns() {
    let (slow, fast) = pair().await;
    let yaml = format!(
        "{}    retry: {{ attempts: 1, when_burning: {{ burn_rate: 2, window: 5m, budget_ratio: 0% }} }}\nslos:\n  - {{ name: s, routes: [r], objective: 99%, sli: availability }}\n",
        config(&slow, &fast, "", HEDGE)
    );
    let app = proxy(&yaml).await;
    let url = format!("http://{}/quote", app.proxy_addr());
    // Burn the budget: 503s from both endpoints.
    slow.set(Behaviour::Status(503));
    fast.set(Behaviour::Status(503));
    for _ in 0..10 {
        assert_eq!(support::get(url.clone()).await.status, 503);
    }
    slow.set(Behaviour::Delay(Duration::from_millis(300)));
    fast.set(Behaviour::Echo);
    // The burn rate is re-read at most once a second: wait until a hedge was held back.
    eventually(Duration::from_secs(5), || async {
        assert_eq!(support::get(url.clone()).await.status, 200);
        counter(&metrics(&app).await, "slo_burning") >= 1.0
    })
    .await;
    let m = metrics(&app).await;
    let (sent, held_back) = (counter(&m, "sent"), counter(&m, "slo_burning"));
    let before = slow.hits() + fast.hits();
    for _ in 0..4 {
        assert_eq!(support::get(url.clone()).await.status, 200);
    }
    assert_eq!(
        slow.hits() + fast.hits() - before,
        4,
        "no hedges while burning"
    );
    let m = metrics(&app).await;
    assert_eq!(counter(&m, "sent"), sent, "{m}");
    assert_eq!(
        counter(&m, "slo_burning") - held_back,
        2.0,
        "the two that started at the slow endpoint were due a hedge: {m}"
    );
}

#[tokio::test]
async fn validate_refuses_hedging_a_post_only_route_without_a_key() {
    let yaml = "upstreams:\n  pg:\n    endpoints: [{ address: 127.0.0.1:9 }]\nroutes:\n  - name: pay\n    match: { methods: [POST] }\n    upstream: pg\n    hedge: { after: p95 }\n";
    let error = backstop::config::load_str(yaml).unwrap_err().to_string();
    assert!(error.contains("routes[0].hedge"), "{error}");
    assert!(error.contains("deliver a payment twice"), "{error}");
    // With a key the partner honours, the same route may hedge.
    let keyed = yaml.replace(
        "endpoints: [{ address: 127.0.0.1:9 }]",
        "endpoints: [{ address: 127.0.0.1:9 }]\n    idempotency_key: { header: Idempotency-Key }",
    );
    backstop::config::load_str(&keyed).unwrap();
}

#[tokio::test]
async fn hedges_stay_in_the_first_attempt_s_priority_group() {
    // One slow primary endpoint and a fast backup group: a backup group is for when the
    // primary is down, not for speed, and a keyed request stays where its key was seen.
    let slow = Backend::start(Behaviour::Delay(Duration::from_millis(200))).await;
    let backup = Backend::start(Behaviour::Echo).await;
    let yaml = format!(
        "upstreams:\n  pg:\n    endpoints:\n      - {{ address: \"{}\", priority: 0 }}\n      - {{ address: \"{}\", priority: 1 }}\nroutes:\n  - name: r\n    upstream: pg\n{HEDGE}",
        slow.addr, backup.addr
    );
    let app = proxy(&yaml).await;
    let answer = support::get(format!("http://{}/quote", app.proxy_addr())).await;
    assert_eq!(answer.json()["backend"], slow.addr.to_string());
    assert_eq!(backup.hits(), 0, "no hedge to the backup group");
    let m = metrics(&app).await;
    assert_eq!(counter(&m, "no_endpoint"), 1.0, "{m}");
}

#[tokio::test]
async fn a_quick_409_for_the_same_key_does_not_win_the_race() {
    // The provider answers a concurrent duplicate of a key 409 at once; the first attempt,
    // which is the one charging, must still give the answer.
    let charging = Backend::start(Behaviour::Delay(Duration::from_millis(200))).await;
    let duplicate = Backend::start(Behaviour::Status(409)).await;
    let keyed = "    idempotency_key: { header: Idempotency-Key }\n";
    let app = proxy(&config(&charging, &duplicate, keyed, HEDGE)).await;
    let url = format!("http://{}/charge", app.proxy_addr());
    let mut answered_409 = 0;
    for i in 0..4 {
        let answer = support::post_keyed(&url, Some(&format!("k-{i}"))).await;
        if answer.status == 409 {
            answered_409 += 1;
        }
    }
    let m = metrics(&app).await;
    let sent = counter(&m, "sent");
    assert!(sent >= 1.0, "{m}");
    assert_eq!(counter(&m, "won"), 0.0, "{m}");
    // A 409 reaches the client only when the first attempt itself went to that endpoint
    // (round robin), never from a hedge racing the charging attempt.
    assert_eq!(answered_409 as f64, duplicate.hits() as f64 - sent, "{m}");
    assert_eq!(charging.hits() + answered_409, 4);
}

#[tokio::test]
async fn a_hedge_carries_the_whole_body_and_the_first_attempt_keeps_its_own() {
    let (slow, fast) = pair().await;
    slow.set(Behaviour::Delay(Duration::from_millis(200)));
    let app = proxy(&config(&slow, &fast, "", HEDGE)).await;
    let url = format!("http://{}/doc", app.proxy_addr());
    let body = Bytes::from(vec![b'x'; 32 * 1024]);
    for _ in 0..4 {
        let req = http::Request::put(url.clone())
            .body(http_body_util::Full::new(body.clone()))
            .unwrap();
        let answer = support::send(req).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json()["body_len"], 32 * 1024, "{:?}", answer.json());
    }
    let m = metrics(&app).await;
    assert!(counter(&m, "sent") >= 1.0, "{m}");
}

#[tokio::test]
async fn an_upstream_paced_to_a_partner_quota_is_not_hedged() {
    let (slow, fast) = pair().await;
    slow.set(Behaviour::Delay(Duration::from_millis(200)));
    let quota = "    quota: { mode: queue, max_wait: 200ms }\n";
    let app = proxy(&config(&slow, &fast, quota, HEDGE)).await;
    let url = format!("http://{}/quote", app.proxy_addr());
    for _ in 0..4 {
        assert_eq!(support::get(url.clone()).await.status, 200);
    }
    assert_eq!(
        slow.hits() + fast.hits(),
        4,
        "a hedge would spend the partner's quota"
    );
}
