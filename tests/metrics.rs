//! /metrics, /healthz and /readyz on the admin listener, and what the counters count.

mod support;

use support::{closed_port, get, metrics, proxy, sample, simple_config, Backend, Behaviour};

/// Requests, durations and attempts are counted with bounded labels; build info is present.
#[tokio::test]
async fn metrics_count_requests_attempts_and_durations() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&simple_config(
        &[&backend],
        "    match: { path_prefix: /api }\n",
    ))
    .await;
    for i in 0..3 {
        get(format!("http://{}/api/items/{i}", app.proxy_addr())).await;
    }
    get(format!("http://{}/not-routed", app.proxy_addr())).await;
    backend.set(Behaviour::Status(503));
    get(format!("http://{}/api/x", app.proxy_addr())).await;

    let text = metrics(&app).await;
    let requests = |labels: &str| sample(&text, &format!("backstop_requests_total{{{labels}}}"));
    assert_eq!(
        requests(r#"method="GET",route="all",status="200",upstream="svc""#),
        Some(3.0)
    );
    assert_eq!(
        requests(r#"method="GET",route="all",status="503",upstream="svc""#),
        Some(1.0)
    );
    assert_eq!(
        requests(r#"method="GET",route="",status="404",upstream="""#),
        Some(1.0)
    );
    let endpoint = backend.addr;
    let attempts = |result: &str| {
        sample(
            &text,
            &format!(
                r#"backstop_upstream_attempts_total{{endpoint="{endpoint}",result="{result}",upstream="svc"}}"#
            ),
        )
    };
    assert_eq!(attempts("success"), Some(3.0));
    assert_eq!(attempts("5xx"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            r#"backstop_request_duration_seconds_count{route="all",upstream="svc"}"#
        ),
        Some(4.0)
    );
    assert!(text.contains(
        r#"backstop_request_duration_seconds_bucket{route="all",upstream="svc",le="0.0001"}"#
    ));
    assert!(
        text.contains(r#"le="0.3""#),
        "an SLO-friendly 300ms bucket exists"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(
            &text,
            &format!(r#"backstop_build_info{{version="{version}"}}"#)
        ),
        Some(1.0)
    );
    assert!(
        !text.contains("/api/items"),
        "raw paths never become labels"
    );
    assert_eq!(sample(&text, "backstop_requests_in_flight"), Some(0.0));
}

/// Connect failures are counted as attempts with their own result.
#[tokio::test]
async fn connect_failures_are_counted_per_endpoint() {
    let addr = closed_port().await;
    let yaml = format!("upstreams:\n  svc:\n    endpoints: [{{ address: \"{addr}\" }}]\nroutes:\n  - {{ name: all, upstream: svc }}\n");
    let app = proxy(&yaml).await;
    get(format!("http://{}/", app.proxy_addr())).await;
    let text = metrics(&app).await;
    let series = format!(
        r#"backstop_upstream_attempts_total{{endpoint="{addr}",result="connect_failure",upstream="svc"}}"#
    );
    assert_eq!(sample(&text, &series), Some(1.0));
    let series = r#"backstop_requests_total{method="GET",route="all",status="502",upstream="svc"}"#;
    assert_eq!(sample(&text, series), Some(1.0));
}

/// Health endpoints answer; readiness is up once serving.
#[tokio::test]
async fn health_and_readiness() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&simple_config(&[&backend], "")).await;
    let admin = app.admin_addr();
    assert_eq!(get(format!("http://{admin}/healthz")).await.status, 200);
    assert_eq!(get(format!("http://{admin}/readyz")).await.status, 200);
    assert_eq!(get(format!("http://{admin}/nope")).await.status, 404);
    let m = get(format!("http://{admin}/metrics")).await;
    assert!(m
        .header("content-type")
        .starts_with("text/plain; version=0.0.4"));
}

/// With admin.token_file, mutating endpoints need the bearer token; reads do not.
#[tokio::test]
async fn admin_token_guards_mutating_endpoints() {
    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;
    let backend = Backend::start(Behaviour::Echo).await;
    let token = std::env::temp_dir().join(format!("backstop-admin-token-{}", std::process::id()));
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let yaml = format!(
        "upstreams:\n  svc:\n    endpoints: [{{ address: \"{}\" }}]\n    circuit_breaker: {{ consecutive_failures: 5 }}\nroutes:\n  - {{ name: all, upstream: svc }}\n",
        backend.addr
    );
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n  token_file: {}\n{yaml}",
        token.display()
    );
    let config = backstop::config::load_str(&yaml).unwrap();
    let app = backstop::App::start(config, backstop::metrics::Metrics::new())
        .await
        .unwrap();
    let post = |auth: Option<&str>| {
        let mut req = Request::post(format!(
            "http://{}/admin/circuits/svc/open",
            app.admin_addr()
        ))
        .header("x-backstop-admin", "1");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        support::send(req.body(Full::<Bytes>::default()).unwrap())
    };
    assert_eq!(post(None).await.status, 403, "no token, even on loopback");
    assert_eq!(post(Some("Bearer wrong")).await.status, 403);
    assert_eq!(post(Some("Bearer s3cret-token")).await.status, 200);
    let config = get(format!("http://{}/admin/config", app.admin_addr())).await;
    assert_eq!(config.status, 200, "reads need no token");
    assert_eq!(config.json()["admin"]["token"], "***");
    assert!(
        !String::from_utf8_lossy(&config.body).contains("s3cret"),
        "the token is never shown"
    );
}
