//! Active health checks and priority failover, counted at the backends.

mod support;

use std::time::Duration;

use support::{eventually, get, metrics, proxy, sample, Backend, Behaviour};

/// Requests that reached `b`, health checks excluded.
fn traffic(b: &Backend) -> usize {
    b.seen()
        .iter()
        .filter(|h| {
            h.get("user-agent")
                .is_none_or(|ua| ua != "backstop-health-check")
        })
        .count()
}

fn healthy_series(b: &Backend) -> String {
    format!(
        r#"backstop_endpoint_healthy{{endpoint="{}",upstream="pg"}}"#,
        b.addr
    )
}

fn config(a: &Backend, b: &Backend, b_priority: u32) -> String {
    format!(
        "upstreams:\n  pg:\n    endpoints:\n      - {{ address: \"{}\" }}\n      - {{ address: \"{}\", priority: {b_priority} }}\n    load_balancing: round_robin\n    health_check: {{ path: /health, interval: 50ms, timeout: 200ms, healthy_threshold: 2, unhealthy_threshold: 2 }}\nroutes:\n  - {{ name: pay, upstream: pg }}\n",
        a.addr, b.addr
    )
}

/// A failing health check takes an endpoint out; passing checks bring it back.
#[tokio::test]
async fn health_checks_take_a_dead_endpoint_out_and_bring_it_back() {
    let (a, b) = (
        Backend::start(Behaviour::Echo).await,
        Backend::start(Behaviour::Echo).await,
    );
    let app = proxy(&config(&a, &b, 0)).await;
    let url = format!("http://{}/charge", app.proxy_addr());
    a.set(Behaviour::Status(503));
    eventually(Duration::from_secs(5), || async {
        sample(&metrics(&app).await, &healthy_series(&a)) == Some(0.0)
    })
    .await;
    let before = traffic(&a);
    for _ in 0..10 {
        assert_eq!(get(url.clone()).await.status, 200);
    }
    assert_eq!(traffic(&a), before, "an unhealthy endpoint gets no traffic");
    let m = metrics(&app).await;
    let failures = format!(
        r#"backstop_health_checks_total{{endpoint="{}",result="failure",upstream="pg"}}"#,
        a.addr
    );
    assert!(sample(&m, &failures).unwrap_or(0.0) >= 2.0);

    a.set(Behaviour::Echo);
    eventually(Duration::from_secs(5), || async {
        sample(&metrics(&app).await, &healthy_series(&a)) == Some(1.0)
    })
    .await;
    let before = traffic(&a);
    for _ in 0..10 {
        get(url.clone()).await;
    }
    assert_eq!(traffic(&a) - before, 5, "back in the round robin");
}

/// Priority-1 endpoints get traffic only while priority 0 is down, and traffic returns when it
/// recovers.
#[tokio::test]
async fn priority_one_takes_traffic_only_while_priority_zero_is_down() {
    let (primary, standby) = (
        Backend::start(Behaviour::Echo).await,
        Backend::start(Behaviour::Echo).await,
    );
    let app = proxy(&config(&primary, &standby, 1)).await;
    let url = format!("http://{}/charge", app.proxy_addr());
    for _ in 0..5 {
        get(url.clone()).await;
    }
    assert_eq!((traffic(&primary), traffic(&standby)), (5, 0));

    primary.set(Behaviour::Status(503));
    eventually(Duration::from_secs(5), || async {
        sample(&metrics(&app).await, &healthy_series(&primary)) == Some(0.0)
    })
    .await;
    let before = traffic(&primary);
    for _ in 0..5 {
        assert_eq!(get(url.clone()).await.status, 200);
    }
    assert_eq!(
        (traffic(&primary) - before, traffic(&standby)),
        (0, 5),
        "failed over to priority 1"
    );

    primary.set(Behaviour::Echo);
    eventually(Duration::from_secs(5), || async {
        sample(&metrics(&app).await, &healthy_series(&primary)) == Some(1.0)
    })
    .await;
    let (p, s) = (traffic(&primary), traffic(&standby));
    for _ in 0..5 {
        get(url.clone()).await;
    }
    assert_eq!(
        (traffic(&primary) - p, traffic(&standby) - s),
        (5, 0),
        "back to priority 0"
    );
}
