//! The admin API answers typed JSON: every view validates against the schema that
//! `backstop schema --admin` prints, enums are snake_case words and no Rust debug text
//! (`RetryPolicy { attempts: 2, .. }`, `Exact("..")`, `Allow`) leaks into any value.

mod support;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use support::{closed_port, eventually, get, proxy, send, Backend, Behaviour};

/// `backstop schema --admin`: one JSON Schema per view path.
fn admin_schemas() -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["schema", "--admin"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "schema --admin failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("schema --admin prints JSON")
}

/// A config using every block a view shows: breakers (upstream and route level, every
/// condition), outlier detection, health checks, TLS, retry, rate limit, quota with a declared
/// rate, failover, Redis, both SLI kinds.
fn rich_config(a: &Backend, b: &Backend, closed: std::net::SocketAddr) -> String {
    format!(
        r#"access_log: {{ sample: 10% }}
redis:
  url: redis://:hunter2@{closed}/0
  timeout: 50ms
  on_error: deny
upstreams:
  pg:
    endpoints:
      - {{ address: "{a}", weight: 3 }}
    load_balancing: round_robin
    max_concurrent_requests: 50
    adaptive_concurrency: {{ algorithm: aimd, max_limit: 100, mode: shadow }}
    quota: {{ mode: reject, rate: 300/s, burst: 50 }}
    host_header: api.pg.example
    circuit_breaker:
      mode: shadow
      consecutive_failures: 5
      failure_rate: {{ threshold: 50%, window: 30s, min_requests: 20 }}
      slow_call: {{ duration: 2s, threshold: 80% }}
      open_for: 10s
      failure_on: [connect-failure, timeout, 5xx, 429]
    outlier_detection:
      consecutive_failures: 3
      base_ejection: 30s
      max_ejected: 50%
    health_check:
      path: /
      interval: 1s
      timeout: 500ms
      expect_status: [200-299, 404]
  pg-b:
    endpoints:
      - {{ address: "{b}", priority: 1 }}
  secure:
    endpoints:
      - {{ address: "{closed}" }}
    tls: {{ sni: pg.example, verify: false }}
routes:
  - name: partner
    match:
      host: "*.example.com"
      path_prefix: /v1
      methods: [POST, GET]
      headers:
        x-api-key: {{ value: "key-abc-123", secret: true }}
    upstream: pg
    timeout: 2s
    failover: [pg-b]
    retry:
      attempts: 3
      per_try_timeout: 500ms
      on: [connect-failure, reset, 503]
      backoff: {{ base: 25ms, max: 1s }}
      budget: {{ ratio: 20%, min_per_second: 5 }}
      when_burning: {{ burn_rate: 6, window: 30m, budget_ratio: 5% }}
      non_idempotent: idempotency-key
    idempotency: {{ store: local, ttl: 1h }}
    rate_limit:
      mode: shadow
      rate: 6000/m
      burst: 20
      key: header:x-merchant-id
      on_missing_key: shared
    circuit_breaker:
      consecutive_failures: 2
  - name: ws
    match: {{ path_prefix: /ws }}
    upstream: pg-b
    upgrade: websocket
  - name: all
    upstream: pg
    timeout: 3s
slos:
  - {{ name: avail, routes: [partner, all], objective: 99.9%, sli: availability, exclude_rate_limited: true }}
  - {{ name: fast, routes: [all], objective: 99%, sli: {{ latency_below: 300ms }} }}
"#,
        a = a.addr,
        b = b.addr,
    )
}

/// Every string value anywhere in `value`, with its JSON path.
fn strings(value: &Value, path: String, out: &mut Vec<(String, String)>) {
    match value {
        Value::String(s) => out.push((path, s.clone())),
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                strings(v, format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                strings(v, format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// Rust debug text: `Name { field: .. }`, `Variant("..")`, `Some(..)`, or a bare CamelCase
/// variant name such as `Allow` or `P2cEwma`.
fn looks_like_debug(s: &str) -> bool {
    let camel = s.len() > 1
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
        && s.chars().any(|c| c.is_ascii_lowercase());
    s.contains(" { ") || s.contains("(\"") || s.contains("Some(") || camel
}

fn validate(schema: &Value, path: &str, view: &Value) -> Vec<String> {
    let validator = jsonschema::validator_for(schema)
        .unwrap_or_else(|e| panic!("schema of {path} does not compile: {e}"));
    validator
        .iter_errors(view)
        .map(|e| format!("{path}: {e} at {}", e.instance_path()))
        .collect()
}

#[tokio::test]
async fn every_admin_view_is_typed_json_matching_its_schema() {
    let a = Backend::start(Behaviour::Echo).await;
    let b = Backend::start(Behaviour::Echo).await;
    let closed = closed_port().await;
    let app = proxy(&rich_config(&a, &b, closed)).await;
    let admin = app.admin_addr();
    // Traffic, so the SLO and upstream views have counts and latencies to show.
    for _ in 0..3 {
        let r = get(format!("http://{}/x", app.proxy_addr())).await;
        assert_eq!(r.status, 200);
    }
    // Health checks hit `a` too; the three requests did reach it.
    assert!(a.hits() >= 3, "{} hits at the backend", a.hits());
    eventually(Duration::from_secs(5), || async {
        get(format!("http://{admin}/admin/slos")).await.json()["slos"][0]["good"] == 3
    })
    .await;

    let paths = [
        "/admin/config",
        "/admin/routes",
        "/admin/upstreams",
        "/admin/slos",
        "/admin/circuits",
    ];
    let mut views = serde_json::Map::new();
    for path in paths {
        let r = get(format!("http://{admin}{path}")).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), "application/json", "{path}");
        views.insert(path.to_owned(), r.json());
    }
    let mut problems = Vec::new();
    for (path, view) in &views {
        let mut all = Vec::new();
        strings(view, String::new(), &mut all);
        for (at, s) in all {
            if looks_like_debug(&s) {
                problems.push(format!("{path}{at}: debug text {s:?}"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");

    // Every view is checked against the schema `backstop schema --admin` prints.
    let schemas = admin_schemas();
    for path in &paths {
        let schema = schemas
            .get(*path)
            .unwrap_or_else(|| panic!("schema --admin has no {path}"));
        problems.extend(validate(schema, path, &views[*path]));
    }
    assert!(problems.is_empty(), "{problems:#?}");

    let config = &views["/admin/config"];
    let body = config.to_string();
    assert!(!body.contains("hunter2"), "redis password shown: {body}");
    assert!(!body.contains("key-abc-123"), "secret header shown: {body}");
    assert_eq!(config["redis"]["on_error"], "deny");
    assert_eq!(config["redis"]["timeout_ms"], 50);
    let partner = &config["routes"][0];
    assert_eq!(partner["retry"]["when_burning"]["window_ms"], 1_800_000);
    assert_eq!(partner["idempotency"]["store"], "local");
    assert_eq!(partner["idempotency"]["ttl_ms"], 3_600_000);
    let pg = &config["upstreams"][0];
    assert_eq!(pg["quota"]["mode"], "reject");
    assert_eq!(pg["quota"]["rate"], "300/s");
    assert_eq!(pg["quota"]["burst"], 50);
    assert_eq!(pg["quota"]["scope"], "local");
    assert_eq!(pg["name"], "pg");
    assert_eq!(pg["load_balancing"], "round_robin");
    assert_eq!(pg["host_header"], "api.pg.example");
    assert_eq!(pg["circuit_breaker"]["mode"], "shadow");
    assert_eq!(pg["circuit_breaker"]["failure_rate"]["window_ms"], 30_000);
    assert_eq!(pg["circuit_breaker"]["slow_call"]["duration_ms"], 2_000);
    assert_eq!(
        pg["circuit_breaker"]["failure_on"],
        serde_json::json!(["connect-failure", "timeout", "5xx", "429"])
    );
    assert_eq!(pg["outlier_detection"]["base_ejection_ms"], 30_000);
    assert_eq!(
        pg["health_check"]["expect_status"],
        serde_json::json!(["200-299", "404"])
    );
    assert_eq!(config["upstreams"][2]["tls"]["sni"], "pg.example");
    let partner = &config["routes"][0];
    assert_eq!(partner, &views["/admin/routes"]["routes"][0]);
    assert_eq!(partner["match"]["host"], "*.example.com");
    assert_eq!(partner["match"]["headers"]["x-api-key"], "***");
    assert_eq!(partner["timeout_ms"], 2_000);
    assert_eq!(partner["failover"], serde_json::json!(["pg-b"]));
    assert_eq!(partner["retry"]["attempts"], 3);
    assert_eq!(partner["retry"]["per_try_timeout_ms"], 500);
    assert_eq!(
        partner["retry"]["on"],
        serde_json::json!(["connect-failure", "reset", "503"])
    );
    assert_eq!(partner["retry"]["non_idempotent"], "idempotency_key");
    assert_eq!(partner["rate_limit"]["rate"], "6000/m");
    assert_eq!(partner["rate_limit"]["key"], "header:x-merchant-id");
    assert_eq!(partner["rate_limit"]["on_missing_key"], "shared");
    assert_eq!(partner["rate_limit"]["mode"], "shadow");
    assert_eq!(partner["circuit_breaker"]["consecutive_failures"], 2);
    assert_eq!(config["routes"][1]["upgrade"], "websocket");
    assert_eq!(config["slos"][0]["sli"]["kind"], "availability");
    assert_eq!(config["slos"][0]["sli"]["exclude_rate_limited"], true);
    assert_eq!(
        config["slos"][0]["routes"],
        serde_json::json!(["partner", "all"])
    );
    assert_eq!(config["slos"][1]["sli"]["kind"], "latency_below");
    assert_eq!(config["slos"][1]["sli"]["threshold_seconds"], 0.3);

    let upstreams = &views["/admin/upstreams"]["upstreams"];
    assert_eq!(upstreams[0]["breaker"], "closed");
    assert_eq!(upstreams[0]["endpoints"][0]["address"], a.addr.to_string());

    // The schema has teeth: the old debug and capitalised forms are refused.
    let mut wrong = config.clone();
    wrong["redis"]["on_error"] = Value::from("Allow");
    assert!(!validate(&schemas["/admin/config"], "wrong", &wrong).is_empty());
    let mut wrong = views["/admin/routes"].clone();
    wrong["routes"][0]["retry"] = Value::from("RetryPolicy { attempts: 3 }");
    assert!(!validate(&schemas["/admin/routes"], "wrong", &wrong).is_empty());
    let mut wrong = views["/admin/upstreams"].clone();
    wrong["upstreams"][0]["breaker"] = Value::from("half-open");
    assert!(!validate(&schemas["/admin/upstreams"], "wrong", &wrong).is_empty());
    let mut wrong = views["/admin/slos"].clone();
    wrong["slos"][0]["burn_rate"]["5m"] = Value::from("0");
    assert!(!validate(&schemas["/admin/slos"], "wrong", &wrong).is_empty());

    // A forced breaker shows up typed in /admin/upstreams too.
    let forced = send(
        Request::post(format!("http://{admin}/admin/circuits/pg/open"))
            .header("x-backstop-admin", "1")
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    assert_eq!(forced.status, 200);
    let upstreams = get(format!("http://{admin}/admin/upstreams")).await.json();
    assert_eq!(upstreams["upstreams"][0]["breaker"], "open");
    assert!(validate(&schemas["/admin/upstreams"], "forced", &upstreams).is_empty());
}

/// The p99 of the status page over the route's histogram, e.g. `2000 ms`, for `route`.
fn p99_cell(page: &str, route: &str) -> Option<String> {
    let open = format!(r#"<td data-k="{route}:p99">"#);
    let start = page.find(&open)? + open.len();
    let end = page[start..].find("</td>")? + start;
    Some(page[start..end].to_owned())
}

/// A route with a 2s timeout whose upstream takes longer answers 504 at 2s: its p99 on the
/// status page is at most 2s, although the observations sit in the (1s, 2.5s] bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_p99_never_exceeds_the_route_timeout() {
    let slow = Backend::start(Behaviour::Delay(Duration::from_secs(3))).await;
    let yaml = format!(
        "upstreams:\n  svc:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - {{ name: slow, upstream: svc, timeout: 2s }}\n",
        slow.addr
    );
    let app = proxy(&yaml).await;
    let admin = app.admin_addr();
    // The sampler's first sample (taken at start) is the baseline of the page's rates.
    eventually(Duration::from_secs(5), || async {
        p99_cell(
            &String::from_utf8_lossy(&get(format!("http://{admin}/")).await.body),
            "slow",
        )
        .is_some_and(|c| c != "…")
    })
    .await;
    let url = format!("http://{}/pay", app.proxy_addr());
    let answers = futures_util::future::join_all((0..4).map(|_| get(url.clone()))).await;
    assert!(answers.iter().all(|a| a.status == 504));
    assert_eq!(slow.hits(), 4, "every request reached the backend");
    let page = String::from_utf8_lossy(&get(format!("http://{admin}/")).await.body).into_owned();
    let cell = p99_cell(&page, "slow").expect("the route's row");
    let p99_ms: f64 = cell
        .strip_suffix(" ms")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("p99 cell {cell:?}"));
    assert!((1000.0..=2000.0).contains(&p99_ms), "p99 {p99_ms} ms");
}

/// `metrics.latency_buckets` replaces the histogram's bounds: an SLO threshold of 800ms is
/// accepted once 800ms is a bound (and refused with the default bounds), /metrics exports the
/// configured `le` values, and /admin/config shows them.
#[tokio::test]
async fn configured_latency_buckets_make_800ms_a_valid_slo_threshold() {
    let backend = Backend::start(Behaviour::Echo).await;
    let body = format!(
        "upstreams:\n  svc:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - {{ name: pay, upstream: svc, timeout: 2s }}\nslos:\n  - {{ name: fast, routes: [pay], objective: 99%, sli: {{ latency_below: 800ms }} }}\n",
        backend.addr
    );
    let refused = backstop::config::load_str(&body).unwrap_err().to_string();
    assert!(
        refused.contains("800ms is not a bound of the duration histogram"),
        "{refused}"
    );
    let yaml = format!("metrics:\n  latency_buckets: [5ms, 50ms, 200ms, 800ms, 2s]\n{body}");
    let app = proxy(&yaml).await;
    let r = get(format!("http://{}/pay", app.proxy_addr())).await;
    assert_eq!(r.status, 200);
    assert_eq!(backend.hits(), 1);
    let m = support::metrics(&app).await;
    let bucket = |le: &str| {
        support::sample(
            &m,
            &format!(
                r#"backstop_request_duration_seconds_bucket{{route="pay",upstream="svc",le="{le}"}}"#
            ),
        )
    };
    assert_eq!(bucket("0.8"), Some(1.0), "{m}");
    assert_eq!(bucket("2"), Some(1.0), "{m}");
    assert_eq!(bucket("0.3"), None, "default bounds are gone: {m}");
    let config = get(format!("http://{}/admin/config", app.admin_addr()))
        .await
        .json();
    assert_eq!(
        config["metrics"]["latency_buckets_seconds"],
        serde_json::json!([0.005, 0.05, 0.2, 0.8, 2.0])
    );
}
