//! Outcome rules per upstream (issue #14 item 3): a gateway that answers `200
//! {"code":"PG_TIMEOUT"}` when the payment failed is judged a failure by the rule, which feeds
//! retries, the breaker and the SLO; a 503 a rule calls the caller's fault does not. Counted at
//! the gateway, with the same config minus the rule as the control.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::{eventually, metrics, proxy, sample, Backend, Behaviour};

const TIMEOUT_BODY: &str = r#"{"code":"PG_TIMEOUT","message":"acquirer did not answer"}"#;
const OK_BODY: &str = r#"{"code":"OK","payment":"p_1"}"#;

const RULES: &str = "    outcome:
      - { name: duplicate, status: 409, outcome: success }
      - { name: pg_timeout, status: 200, json: { path: $.code, in: [PG_TIMEOUT, PG_BUSY] }, outcome: failure, retryable: true }
      - { name: declined, status: 5xx, json: { path: $.error.reason, in: [card_declined] }, outcome: client_error }
";

/// One gateway upstream `pay` (with `rules` under it) and one route `r` with `route_extra`.
fn config(gateway: &Backend, rules: &str, upstream_extra: &str, route_extra: &str) -> String {
    format!(
        "upstreams:\n  pay:\n    endpoints: [{{ address: \"{}\" }}]\n{upstream_extra}{rules}routes:\n  - name: r\n    upstream: pay\n{route_extra}",
        gateway.addr
    )
}

const RETRY: &str =
    "    retry: { attempts: 3, on: [5xx], backoff: { base: 1ms, max: 1ms }, budget: { ratio: 100%, min_per_second: 100 } }\n";

#[tokio::test]
async fn a_gateway_error_in_a_200_is_retried_and_counted_by_its_rule() {
    for with_rules in [true, false] {
        let gateway = Backend::start(Behaviour::Json(200, OK_BODY.into())).await;
        gateway.script(vec![Behaviour::Json(200, TIMEOUT_BODY.into())]);
        let rules = if with_rules { RULES } else { "" };
        let app = proxy(&config(&gateway, rules, "", RETRY)).await;
        let answer = support::get(format!("http://{}/charge/1", app.proxy_addr())).await;
        assert_eq!(answer.status, 200);
        if with_rules {
            assert_eq!(answer.json()["code"], "OK", "the retry's answer");
            assert_eq!(gateway.hits(), 2, "the judged failure was retried once");
            let m = metrics(&app).await;
            let judged = "backstop_outcome_rule_total{outcome=\"failure\",rule=\"pg_timeout\",upstream=\"pay\"}";
            assert_eq!(sample(&m, judged), Some(1.0), "{m}");
            let retried = "backstop_retries_total{reason=\"outcome_rule\",route=\"r\"}";
            assert_eq!(sample(&m, retried), Some(1.0), "{m}");
            let judged_attempts: f64 = m
                .lines()
                .filter(|l| l.starts_with("backstop_upstream_attempts_total{"))
                .filter(|l| {
                    l.contains("result=\"outcome_failure\"") && l.contains("upstream=\"pay\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            assert_eq!(judged_attempts, 1.0, "{m}");
        } else {
            assert_eq!(answer.json()["code"], "PG_TIMEOUT", "control: status only");
            assert_eq!(gateway.hits(), 1, "control: a 200 is never retried");
        }
    }
}

#[tokio::test]
async fn a_post_is_retried_after_a_judged_failure_only_with_an_idempotency_key() {
    let gateway = Backend::start(Behaviour::Json(200, TIMEOUT_BODY.into())).await;
    let keyed = "    idempotency_key: { header: Idempotency-Key }\n";
    let app = proxy(&config(&gateway, RULES, keyed, RETRY)).await;
    let url = format!("http://{}/charge", app.proxy_addr());

    let answer = support::post_keyed(&url, None).await;
    assert_eq!(answer.json()["code"], "PG_TIMEOUT");
    assert_eq!(
        gateway.hits(),
        1,
        "delivered once: no key, no second delivery"
    );

    let answer = support::post_keyed(&url, Some("k-1")).await;
    assert_eq!(answer.json()["code"], "PG_TIMEOUT", "every attempt failed");
    assert_eq!(
        gateway.hits(),
        1 + 3,
        "with a key the partner deduplicates: 3 attempts"
    );
}

#[tokio::test]
async fn judged_failures_open_the_breaker_and_a_declined_card_does_not() {
    let breaker = "    circuit_breaker: { consecutive_failures: 3, open_for: 30s }\n";
    // A 503 the rule calls the caller's fault: never a breaker failure, never retried.
    let declined = r#"{"error":{"reason":"card_declined"}}"#;
    let gateway = Backend::start(Behaviour::Json(503, declined.into())).await;
    let app = proxy(&config(&gateway, RULES, breaker, RETRY)).await;
    let url = format!("http://{}/charge", app.proxy_addr());
    for _ in 0..5 {
        assert_eq!(support::get(url.clone()).await.status, 503);
    }
    assert_eq!(gateway.hits(), 5, "not retried, breaker still closed");

    // Now 200s that say the payment timed out: the breaker opens after three of them (each
    // retried, so after the first request's three attempts).
    gateway.set(Behaviour::Json(200, TIMEOUT_BODY.into()));
    let first = support::get(url.clone()).await;
    assert_eq!(first.json()["code"], "PG_TIMEOUT");
    let refused = support::get(url.clone()).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("x-backstop-reason"), "circuit_open");
    assert_eq!(
        gateway.hits(),
        5 + 3,
        "the open breaker keeps traffic off the gateway"
    );

    // Control: the same traffic through an upstream without rules never opens it.
    let plain = Backend::start(Behaviour::Json(200, TIMEOUT_BODY.into())).await;
    let app = proxy(&config(&plain, "", breaker, RETRY)).await;
    let url = format!("http://{}/charge", app.proxy_addr());
    for _ in 0..5 {
        assert_eq!(support::get(url.clone()).await.status, 200);
    }
    assert_eq!(plain.hits(), 5);
}

#[tokio::test]
async fn slo_counts_the_rule_s_verdict() {
    let slo =
        "slos:\n  - { name: pay-availability, routes: [r], objective: 99%, sli: availability }\n";
    let gateway = Backend::start(Behaviour::Json(200, TIMEOUT_BODY.into())).await;
    let yaml = format!("{}{slo}", config(&gateway, RULES, "", ""));
    let app = proxy(&yaml).await;
    let url = format!("http://{}/charge", app.proxy_addr());
    for _ in 0..4 {
        assert_eq!(support::get(url.clone()).await.status, 200);
    }
    // A 409 the rule calls a success (the order exists) and a plain 200: good events.
    gateway.set(Behaviour::Json(409, r#"{"code":"DUPLICATE"}"#.into()));
    assert_eq!(support::get(url.clone()).await.status, 409);
    gateway.set(Behaviour::Json(200, OK_BODY.into()));
    assert_eq!(support::get(url.clone()).await.status, 200);
    let bad = "backstop_slo_events_total{result=\"bad\",slo=\"pay-availability\"}";
    let good = "backstop_slo_events_total{result=\"good\",slo=\"pay-availability\"}";
    eventually(Duration::from_secs(5), || async {
        let m = metrics(&app).await;
        sample(&m, bad) == Some(4.0) && sample(&m, good) == Some(2.0)
    })
    .await;
}

#[tokio::test]
async fn bodies_the_rules_cannot_judge_pass_through_untouched() {
    // Over the 16 KiB peek: streamed as it came, and no json condition matches.
    let big = format!(
        r#"{{"code":"PG_TIMEOUT","pad":"{}"}}"#,
        "x".repeat(64 * 1024)
    );
    let gateway = Backend::start(Behaviour::Json(200, big.clone())).await;
    let app = proxy(&config(&gateway, RULES, "", RETRY)).await;
    let answer = support::get(format!("http://{}/big", app.proxy_addr())).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), big.len());
    assert_eq!(answer.body, Bytes::from(big));
    assert_eq!(
        gateway.hits(),
        1,
        "too large to judge: not a failure, not retried"
    );

    // Not JSON at all.
    gateway.set(Behaviour::Json(200, "PG_TIMEOUT <html>".into()));
    let answer = support::get(format!("http://{}/html", app.proxy_addr())).await;
    assert_eq!(&answer.body[..], b"PG_TIMEOUT <html>");
    assert_eq!(gateway.hits(), 2);

    // A small judged body reaches the client byte for byte too.
    gateway.set(Behaviour::Json(200, OK_BODY.into()));
    let answer = support::get(format!("http://{}/ok", app.proxy_addr())).await;
    assert_eq!(&answer.body[..], OK_BODY.as_bytes());
}

#[tokio::test]
async fn the_access_log_names_the_rule_that_decided() {
    let gateway = Backend::start(Behaviour::Json(200, TIMEOUT_BODY.into())).await;
    let dir = std::env::temp_dir().join(format!("backstop-outcome-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("backstop.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n{}",
        config(&gateway, RULES, "", "")
    );
    std::fs::write(&file, yaml).unwrap();
    let bin = support::Binary::start(&file).await;
    let answer = support::get(format!("http://{}/charge", bin.proxy)).await;
    assert_eq!(answer.status, 200);
    eventually(Duration::from_secs(5), || async {
        bin.logged(|l| l["message"] == "request" && l["outcome_rule"] == "pg_timeout")
    })
    .await;
}
