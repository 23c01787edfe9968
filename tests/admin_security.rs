//! The admin plane against other origins: cross-site simple POSTs, DNS rebinding, and
//! `admin.protect_reads`. Every request goes to the real admin listener on loopback.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{get, proxy, send, Backend, Behaviour};

fn config(backend: &Backend) -> String {
    format!(
        "upstreams:\n  payments:\n    endpoints: [{{ address: \"{}\" }}]\n    circuit_breaker: {{ consecutive_failures: 5 }}\nroutes:\n  - {{ name: pay, upstream: payments }}\n",
        backend.addr
    )
}

async fn state(app: &backstop::App) -> String {
    get(format!("http://{}/admin/circuits", app.admin_addr()))
        .await
        .json()["circuits"][0]["state"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn open_request(app: &backstop::App) -> http::request::Builder {
    Request::post(format!(
        "http://{}/admin/circuits/payments/open",
        app.admin_addr()
    ))
}

/// A page on another site POSTs a "simple" request (no preflight) to force the payments
/// breaker open: refused, the breaker stays closed and traffic still flows.
#[tokio::test]
async fn cross_site_simple_post_is_refused() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&config(&backend)).await;
    let r = send(
        open_request(&app)
            .header("origin", "http://evil.example")
            .header("content-type", "text/plain")
            .body(Full::from("x"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("Origin"));
    // Even with a JSON body a foreign Origin is refused.
    let r = send(
        open_request(&app)
            .header("origin", "http://evil.example")
            .header("content-type", "application/json")
            .body(Full::from("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 403);
    // No Origin, but a simple request (form or text body, no custom header): refused too.
    let r = send(
        open_request(&app)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::from("a=1"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 415, "{:?}", r.body);
    let error = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("application/json") && error.contains("X-Backstop-Admin"),
        "says what to send: {error}"
    );
    assert_eq!(state(&app).await, "closed");
    assert_eq!(
        get(format!("http://{}/", app.proxy_addr())).await.status,
        200
    );
    assert_eq!(backend.hits(), 1, "the breaker never rejected");
}

/// DNS rebinding: attacker.example resolves to 127.0.0.1, so the browser sends
/// `Host: attacker.example`. Refused for reload and breaker changes.
#[tokio::test]
async fn dns_rebinding_host_is_refused() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&config(&backend)).await;
    for path in ["/admin/reload", "/admin/circuits/payments/open"] {
        let r = send(
            Request::post(format!("http://{}{path}", app.admin_addr()))
                .header(
                    "host",
                    format!("attacker.example:{}", app.admin_addr().port()),
                )
                .header("x-backstop-admin", "1")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 403, "{path}: {:?}", r.body);
        assert!(r.json()["error"].as_str().unwrap().contains("Host"));
    }
    assert_eq!(state(&app).await, "closed");
}

/// The legitimate ways: a JSON POST, or the custom header, from the admin's own origin or
/// from a tool that sends no Origin, with Host localhost or the listener's address.
#[tokio::test]
async fn legit_admin_posts_are_accepted() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&config(&backend)).await;
    let port = app.admin_addr().port();
    let r = send(
        open_request(&app)
            .header("content-type", "application/json")
            .body(Full::from("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.json()["state"].as_str()),
        (200, Some("open"))
    );
    let close = |host: String, origin: Option<String>| {
        let mut req = Request::post(format!(
            "http://{}/admin/circuits/payments/close",
            app.admin_addr()
        ))
        .header("host", host)
        .header("x-backstop-admin", "1");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        send(req.body(Full::<Bytes>::default()).unwrap())
    };
    let r = close(
        format!("localhost:{port}"),
        Some(format!("http://localhost:{port}")),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.json()["state"].as_str()),
        (200, Some("closed"))
    );
    let r = close(
        format!("127.0.0.1:{port}"),
        Some(format!("http://127.0.0.1:{port}")),
    )
    .await;
    assert_eq!(r.status, 200);
    // Another port on localhost is another origin.
    let r = close(
        format!("localhost:{port}"),
        Some("http://localhost:1".into()),
    )
    .await;
    assert_eq!(r.status, 403);
}

/// `admin.protect_reads: true` puts the views behind the token; health stays open for probes.
#[tokio::test]
async fn protect_reads_requires_the_token() {
    let backend = Backend::start(Behaviour::Echo).await;
    let token = std::env::temp_dir().join(format!("backstop-admin-sec-{}", std::process::id()));
    std::fs::write(&token, "read-token\n").unwrap();
    let yaml = format!(
        "  token_file: {}\n  protect_reads: true\n{}",
        token.display(),
        config(&backend)
    );
    // support::proxy prepends `admin:\n  listen: ...`, so the two keys above join that block.
    let app = proxy(&yaml).await;
    let admin = app.admin_addr();
    for path in [
        "/",
        "/admin/config",
        "/admin/circuits",
        "/admin/routes",
        "/admin/upstreams",
        "/admin/slos",
    ] {
        let r = get(format!("http://{admin}{path}")).await;
        assert_eq!(r.status, 401, "{path} without the token");
        let r = send(
            Request::get(format!("http://{admin}{path}"))
                .header("authorization", "Bearer wrong")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 401, "{path} with a wrong token");
        let r = send(
            Request::get(format!("http://{admin}{path}"))
                .header("authorization", "Bearer read-token")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{path} with the token");
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            get(format!("http://{admin}{path}")).await.status,
            200,
            "{path} stays open"
        );
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("backstop-sec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `backstop validate -c file`: (exit code, stdout + stderr).
fn validate(file: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["validate", "-c"])
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A Redis password in a bad config is never printed: not by `validate`, not in the
/// reload-rejected log line, not in the 422 body of `POST /admin/reload`.
#[tokio::test]
async fn redis_password_is_never_printed() {
    let backend = Backend::start(Behaviour::Echo).await;
    let d = temp_dir("redis");
    let file = d.join("backstop.yaml");
    let good = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n{}",
        config(&backend)
    );
    let bad = format!("{good}redis:\n  url: \"redis://app:hunter2-pw@127.0.0.1:notaport/0\"\n");
    std::fs::write(&file, &bad).unwrap();
    let (code, out) = validate(&file);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("redis.url"), "the problem is reported: {out}");
    assert!(
        !out.contains("hunter2"),
        "validate printed the password: {out}"
    );
    assert!(out.contains("app:***@"), "{out}");

    std::fs::write(&file, &good).unwrap();
    let bin = support::Binary::start(&file).await;
    std::fs::write(&file, &bad).unwrap();
    let r = send(
        Request::post(format!("http://{}/admin/reload", bin.admin))
            .header("x-backstop-admin", "1")
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 422);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        body.contains("redis.url") && !body.contains("hunter2"),
        "{body}"
    );
    support::eventually(std::time::Duration::from_secs(10), || async {
        bin.logged(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("config reload rejected: redis.url"))
        })
    })
    .await;
    let logs = serde_json::to_string(&*bin.logs.lock().unwrap()).unwrap();
    assert!(!logs.contains("hunter2"), "a log line holds the password");
}

/// A huge scalar in a bad config is echoed truncated, with its size.
#[tokio::test]
async fn huge_values_are_echoed_truncated() {
    let d = temp_dir("huge");
    let file = d.join("backstop.yaml");
    let huge = "x".repeat(2_000_000);
    std::fs::write(
        &file,
        format!("listen: \"{huge}\"\nupstreams:\n  svc:\n    endpoints: [{{ address: \"127.0.0.1:1\" }}]\nroutes:\n  - {{ name: all, upstream: svc }}\n"),
    )
    .unwrap();
    let (code, out) = validate(&file);
    assert_eq!(code, 1);
    assert!(out.len() < 2_000, "{} bytes of output", out.len());
    assert!(out.contains("listen: invalid listen address"), "{out}");
    assert!(out.contains("(2000000 bytes)"), "{out}");
    std::fs::write(&file, format!("admin: {{ protect_reads: \"{huge}\" }}\n")).unwrap();
    let (code, out) = validate(&file);
    assert_eq!(code, 1);
    assert!(
        out.len() < 2_000,
        "{} bytes of output: {}",
        out.len(),
        &out[..300]
    );
}

/// Header-match values marked `secret: true` are shown as *** in the admin views, and still
/// match.
#[tokio::test]
async fn secret_header_values_are_hidden_in_admin_views() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&format!(
        "upstreams:\n  svc:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - name: partner\n    match:\n      headers:\n        x-api-key: {{ value: \"key-abc-123\", secret: true }}\n        x-tenant: acme\n    upstream: svc\n",
        backend.addr
    ))
    .await;
    for view in ["/admin/routes", "/admin/config"] {
        let r = get(format!("http://{}{view}", app.admin_addr())).await;
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert!(!body.contains("key-abc-123"), "{view}: {body}");
        let headers = &r.json()["routes"][0]["match"]["headers"];
        assert_eq!(headers["x-api-key"], "***", "{view}: {body}");
        assert_eq!(headers["x-tenant"], "acme", "{view}: {body}");
    }
    let matched = send(
        Request::get(format!("http://{}/", app.proxy_addr()))
            .header("x-api-key", "key-abc-123")
            .header("x-tenant", "acme")
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    assert_eq!(matched.status, 200);
    let missed = send(
        Request::get(format!("http://{}/", app.proxy_addr()))
            .header("x-api-key", "other")
            .header("x-tenant", "acme")
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    assert_eq!(missed.status, 404);
    assert_eq!(backend.hits(), 1);
}

/// A token file readable by group or others is warned about, in `validate` and at startup.
#[tokio::test]
async fn readable_token_file_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let backend = Backend::start(Behaviour::Echo).await;
    let d = temp_dir("token");
    let token = d.join("token");
    std::fs::write(&token, "tok-1\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let file = d.join("backstop.yaml");
    std::fs::write(
        &file,
        format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token_file: {} }}\n{}",
            token.display(),
            config(&backend)
        ),
    )
    .unwrap();
    let (code, out) = validate(&file);
    assert_eq!(code, 0, "a warning is not an error: {out}");
    assert!(
        out.contains("warning: admin.token_file") && out.contains("chmod 600"),
        "{out}"
    );
    assert!(!out.contains("tok-1"));
    let bin = support::Binary::start(&file).await;
    support::eventually(std::time::Duration::from_secs(5), || async {
        bin.logged(|l| {
            l["level"] == "WARN"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("admin.token_file"))
        })
    })
    .await;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out) = validate(&file);
    assert_eq!(code, 0);
    assert!(!out.contains("warning"), "{out}");
}
