//! The status page: what an on-call engineer opens first. Checked as HTML, then in a real
//! headless Chromium (Debian's chromium, installed by ./scripts/test), with a screenshot saved
//! to target/test-artifacts/status-page.png.

mod support;

use std::path::PathBuf;
use std::process::Command;
use support::{get, proxy, Backend, Behaviour};

fn config(failing: &Backend, healthy: &Backend) -> String {
    format!(
        "upstreams:\n  pg:\n    endpoints: [{{ address: \"{}\" }}]\n    circuit_breaker: {{ consecutive_failures: 2, open_for: 60s }}\n  agency:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - {{ name: payments-create, match: {{ path_prefix: /pay }}, upstream: pg }}\n  - {{ name: agency-orders, upstream: agency, rate_limit: {{ rate: 1/m, burst: 1 }} }}\nslos:\n  - {{ name: payments-availability, routes: [payments-create], objective: 99.9%, sli: availability }}\n",
        failing.addr, healthy.addr
    )
}

async fn open_breaker_app() -> (backstop::App, Backend, Backend) {
    let (failing, healthy) = (
        Backend::start(Behaviour::Status(503)).await,
        Backend::start(Behaviour::Echo).await,
    );
    let app = proxy(&config(&failing, &healthy)).await;
    for _ in 0..3 {
        get(format!("http://{}/pay", app.proxy_addr())).await;
    }
    for _ in 0..3 {
        get(format!("http://{}/orders", app.proxy_addr())).await;
    }
    (app, failing, healthy)
}

/// The page lists routes and upstreams, shows the open breaker with its reason, the rate-limit
/// rejections and the SLO budget; it refreshes itself and loads nothing from elsewhere.
#[tokio::test]
async fn status_page_shows_an_open_breaker_with_its_reason() {
    let (app, _failing, _healthy) = open_breaker_app().await;
    let page = get(format!("http://{}/", app.admin_addr())).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains(r#"<meta http-equiv="refresh" content="5">"#));
    assert!(
        html.contains(r#"<span class="state open">open</span>"#),
        "{html}"
    );
    assert!(
        html.contains("consecutive_failures 2 &gt;= 2"),
        "the reason is shown: {html}"
    );
    assert!(html.contains("payments-create") && html.contains("agency-orders"));
    assert!(html.contains("payments-availability"), "SLO budget bars");
    assert!(!html.contains("<script"), "readable without JavaScript");
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "no external assets"
    );
}

/// Headless Chromium renders the page; the rendered DOM shows the open breaker, and a
/// screenshot is kept as a test artifact.
#[tokio::test]
async fn chromium_renders_the_status_page() {
    let (app, _failing, _healthy) = open_breaker_app().await;
    let url = format!("http://{}/", app.admin_addr());
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let profile = std::env::temp_dir().join(format!("backstop-chromium-{}", std::process::id()));
    let chromium = |extra: &[String]| {
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(&url);
        cmd
    };
    let dom = tokio::task::spawn_blocking({
        let mut cmd = chromium(&["--dump-dom".to_string()]);
        move || {
            cmd.output()
                .expect("chromium is installed (./scripts/test installs it)")
        }
    })
    .await
    .unwrap();
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom_text.contains(r#"class="state open""#),
        "rendered DOM shows the open breaker:\n{dom_text}"
    );
    let shot = tokio::task::spawn_blocking({
        let mut cmd = chromium(&[
            format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,1100".to_string(),
        ]);
        move || cmd.output().expect("chromium runs")
    })
    .await
    .unwrap();
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let size = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a real screenshot was written: {size} bytes");
    let _ = std::fs::remove_dir_all(&profile);
}
