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
