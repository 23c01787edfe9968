//! End-to-end behaviour of the proxy against real backends on loopback.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{closed_port, get, proxy, send, simple_config, Backend, Behaviour};

/// The first route that matches wins; host, method and header conditions all count.
#[tokio::test]
async fn routes_match_in_order_by_host_path_method_and_header() {
    let (a, b, c, d) = (
        Backend::start(Behaviour::Echo).await,
        Backend::start(Behaviour::Echo).await,
        Backend::start(Behaviour::Echo).await,
        Backend::start(Behaviour::Echo).await,
    );
    let yaml = format!(
        r#"
upstreams:
  a: {{ endpoints: [ {{ address: "{}" }} ] }}
  b: {{ endpoints: [ {{ address: "{}" }} ] }}
  c: {{ endpoints: [ {{ address: "{}" }} ] }}
  d: {{ endpoints: [ {{ address: "{}" }} ] }}
routes:
  - name: tenant-acme
    match: {{ path_prefix: /v1/payments, headers: {{ x-tenant: acme }} }}
    upstream: a
  - name: create
    match: {{ path_prefix: /v1/payments, methods: [POST] }}
    upstream: b
  - name: by-host
    match: {{ host: "*.partner.example" }}
    upstream: c
  - name: fallback
    match: {{ path_prefix: / }}
    upstream: d
"#,
        a.addr, b.addr, c.addr, d.addr
    );
    let app = proxy(&yaml).await;
    let base = format!("http://{}", app.proxy_addr());
    let req = |method: &str, path: &str| {
        Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
    };

    let r = send(
        req("POST", "/v1/payments")
            .header("x-tenant", "acme")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(
        r.json()["backend"],
        a.addr.to_string(),
        "header route comes first"
    );
    let r = send(
        req("POST", "/v1/payments/123")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.json()["backend"], b.addr.to_string());
    let r = send(
        req("GET", "/v1/payments")
            .header("host", "eu.partner.example:8080")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(
        r.json()["backend"],
        c.addr.to_string(),
        "GET is not the create route; host matches"
    );
    let r = send(req("GET", "/v1/paymentsfoo").body(Full::default()).unwrap()).await;
    assert_eq!(
        r.json()["backend"],
        d.addr.to_string(),
        "prefixes are segment-aware"
    );
    assert_eq!((a.hits(), b.hits(), c.hits(), d.hits()), (1, 1, 1, 1));
}

/// Method, path, query and end-to-end headers arrive; hop-by-hop headers do not; forwarding
/// headers and a request id are added; traceparent passes untouched.
#[tokio::test]
async fn forwards_requests_and_rewrites_headers() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&simple_config(&[&backend], "")).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = Request::put(format!(
        "http://{}/orders/7?expand=items&x=1",
        app.proxy_addr()
    ))
    .header("host", "orders.internal")
    .header("traceparent", traceparent)
    .header("connection", "keep-alive, x-drop-me")
    .header("x-drop-me", "secret")
    .header("keep-alive", "timeout=5")
    .header("x-custom", "kept")
    .body(Full::new(Bytes::from_static(b"{\"qty\":2}")))
    .unwrap();
    let r = send(req).await;
    assert_eq!(r.status, 200);
    let echo = r.json();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/orders/7");
    assert_eq!(echo["query"], "expand=items&x=1");
    assert_eq!(echo["body_len"], 9);
    let seen = backend.last_headers();
    assert_eq!(
        seen["host"], "orders.internal",
        "Host is kept without host_header"
    );
    assert_eq!(seen["traceparent"], traceparent);
    assert_eq!(seen["x-custom"], "kept");
    assert!(
        seen.get("x-drop-me").is_none(),
        "headers named in Connection are hop-by-hop"
    );
    assert!(seen.get("keep-alive").is_none());
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    let id = seen["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a uuid was generated: {id}");
    assert_eq!(
        r.header("x-request-id"),
        id,
        "the same id goes back to the client"
    );

    let given = send(
        Request::get(format!("http://{}/", app.proxy_addr()))
            .header("x-request-id", "req-from-client")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(given.header("x-request-id"), "req-from-client");
    assert_eq!(backend.last_headers()["x-request-id"], "req-from-client");
}

/// `host_header` replaces the Host the upstream sees.
#[tokio::test]
async fn host_header_rewrites_host() {
    let backend = Backend::start(Behaviour::Echo).await;
    let yaml = format!(
        "upstreams:\n  pg:\n    endpoints: [{{ address: \"{}\" }}]\n    host_header: api.pg.example\nroutes:\n  - {{ name: r, upstream: pg }}\n",
        backend.addr
    );
    let app = proxy(&yaml).await;
    get(format!("http://{}/x", app.proxy_addr())).await;
    assert_eq!(backend.last_headers()["host"], "api.pg.example");
}

/// A request that matches no route gets 404 with the JSON error and the reason header.
#[tokio::test]
async fn no_route_is_404_with_reason() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&simple_config(
        &[&backend],
        "    match: { path_prefix: /api }\n",
    ))
    .await;
    let r = get(format!("http://{}/other", app.proxy_addr())).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-backstop-reason"), "no_route");
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.json()["error"], "no_route");
    assert_eq!(r.json()["route"], serde_json::Value::Null);
    assert!(!r.header("x-request-id").is_empty());
    assert_eq!(backend.hits(), 0);
}

/// A closed port gives 502 upstream_connect_failed naming route and upstream.
#[tokio::test]
async fn connect_failure_is_502() {
    let addr = closed_port().await;
    let yaml = format!("upstreams:\n  svc:\n    endpoints: [{{ address: \"{addr}\" }}]\nroutes:\n  - {{ name: all, upstream: svc }}\n");
    let app = proxy(&yaml).await;
    let r = get(format!("http://{}/", app.proxy_addr())).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-backstop-reason"), "upstream_connect_failed");
    let body = r.json();
    assert_eq!(body["error"], "upstream_connect_failed");
    assert_eq!(body["route"], "all");
    assert_eq!(body["upstream"], "svc");
    assert!(body["message"].as_str().unwrap().contains("connect"));
}

/// A backend that drops the connection after reading the request gives 502 upstream_error.
#[tokio::test]
async fn reset_is_502_upstream_error() {
    let backend = Backend::start(Behaviour::Reset).await;
    let app = proxy(&simple_config(&[&backend], "")).await;
    let r = get(format!("http://{}/", app.proxy_addr())).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-backstop-reason"), "upstream_error");
    assert_eq!(r.json()["error"], "upstream_error");
    assert_eq!(backend.hits(), 1);
}

/// A backend that accepts and stays silent gives 504 at the route timeout, not later.
#[tokio::test]
async fn silent_backend_is_504_at_the_route_timeout() {
    let backend = Backend::start(Behaviour::Silent).await;
    let app = proxy(&simple_config(&[&backend], "    timeout: 300ms\n")).await;
    let started = std::time::Instant::now();
    let r = get(format!("http://{}/", app.proxy_addr())).await;
    let took = started.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(r.header("x-backstop-reason"), "upstream_timeout");
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(
        took >= Duration::from_millis(300),
        "answered before the deadline: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "answered long after the deadline: {took:?}"
    );
}

/// A backend's 5xx passes through untouched: backstop does not invent a reason for it.
#[tokio::test]
async fn upstream_5xx_passes_through() {
    let backend = Backend::start(Behaviour::Status(503)).await;
    let app = proxy(&simple_config(&[&backend], "")).await;
    let r = get(format!("http://{}/", app.proxy_addr())).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-backstop-reason"), "");
}

/// Endpoints of one priority share traffic by weight.
#[tokio::test]
async fn weighted_round_robin_spreads_by_weight() {
    let (a, b) = (
        Backend::start(Behaviour::Echo).await,
        Backend::start(Behaviour::Echo).await,
    );
    let yaml = format!(
        "upstreams:\n  svc:\n    endpoints:\n      - {{ address: \"{}\", weight: 3 }}\n      - {{ address: \"{}\", weight: 1 }}\n    load_balancing: round_robin\nroutes:\n  - {{ name: all, upstream: svc }}\n",
        a.addr, b.addr
    );
    let app = proxy(&yaml).await;
    for _ in 0..40 {
        get(format!("http://{}/", app.proxy_addr())).await;
    }
    assert_eq!((a.hits(), b.hits()), (30, 10));
}

/// HTTP/2 without TLS (prior knowledge) is served downstream and forwarded as HTTP/1.1.
#[tokio::test]
async fn serves_h2c_downstream() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&simple_config(&[&backend], "")).await;
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let resp = client
        .request(
            Request::get(format!("http://{}/h2", app.proxy_addr()))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(backend.hits(), 1);
    assert_eq!(backend.last_headers()["host"], app.proxy_addr().to_string());
}
