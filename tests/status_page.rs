//! The status page: what an on-call engineer opens first. Checked as HTML, then in a real
//! headless Chromium (Debian's chromium, installed by ./scripts/test), with a screenshot saved
//! to target/test-artifacts/status-page.png.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use support::{eventually, get, proxy, send, Backend, Behaviour};

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
        let mut cmd = chromium_command(&url, &profile);
        cmd.arg("--hide-scrollbars").args(extra);
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

/// The incident config: a dedicated upstream behind a breaker, a route that retries and fails
/// over, a route whose upstream resets POSTs, a rate-limited route, an SLO.
fn incident_config(
    pg: &Backend,
    pg_a: &Backend,
    pg_b: &Backend,
    ledger: &Backend,
    agency: &Backend,
    rate: &str,
) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n\
upstreams:\n\
\x20\x20pg:\n    endpoints: [{{ address: \"{}\" }}]\n    circuit_breaker: {{ consecutive_failures: 2, open_for: 60s }}\n\
\x20\x20pg-a:\n    endpoints: [{{ address: \"{}\" }}]\n\
\x20\x20pg-b:\n    endpoints: [{{ address: \"{}\" }}]\n\
\x20\x20ledger:\n    endpoints: [{{ address: \"{}\" }}]\n\
\x20\x20agency:\n    endpoints: [{{ address: \"{}\" }}]\n\
routes:\n\
\x20\x20- {{ name: payments-create, match: {{ path_prefix: /pay }}, upstream: pg }}\n\
\x20\x20- {{ name: payments-read, match: {{ path_prefix: /read }}, upstream: pg }}\n\
\x20\x20- {{ name: checkout, match: {{ path_prefix: /checkout }}, upstream: pg-a, failover: [pg-b], retry: {{ attempts: 2, on: [503], backoff: {{ base: 1ms, max: 1ms }} }} }}\n\
\x20\x20- {{ name: ledger, match: {{ path_prefix: /ledger }}, upstream: ledger, retry: {{ attempts: 3, on: [reset, 503] }} }}\n\
\x20\x20- {{ name: agency-orders, match: {{ path_prefix: /orders }}, upstream: agency, rate_limit: {{ rate: {rate}, burst: 1 }} }}\n\
slos:\n\
\x20\x20- {{ name: payments-availability, routes: [payments-create], objective: 99.9%, sli: availability }}\n",
        pg.addr, pg_a.addr, pg_b.addr, ledger.addr, agency.addr
    )
}

/// Headless Chromium for `url` with its own profile directory; the caller adds what to do
/// (`--dump-dom`, `--screenshot=...`).
fn chromium_command(url: &str, profile: &std::path::Path) -> Command {
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
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(url);
    cmd
}

/// Runs headless Chromium on `url` and returns the DOM it rendered.
async fn chromium_dom(url: &str) -> String {
    let profile = std::env::temp_dir().join(format!(
        "backstop-chromium-dom-{}-{}",
        std::process::id(),
        url.len()
    ));
    let mut cmd = chromium_command(url, &profile);
    cmd.arg("--dump-dom");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            cmd.output()
                .expect("chromium is installed (./scripts/test installs it)")
        }),
    )
    .await
    .expect("chromium finished within 60s")
    .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The inner HTML of the cell `data-k="KEY"` in a rendered DOM.
fn cell<'a>(dom: &'a str, key: &str) -> &'a str {
    let open = format!("data-k=\"{key}\"");
    let at = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no cell {key} in the DOM:\n{dom}"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest.find("</td>").unwrap_or(rest.len());
    &rest[start..end]
}

/// The text of a cell up to its first tag: its headline number.
fn headline<'a>(dom: &'a str, key: &str) -> &'a str {
    let c = cell(dom, key);
    let c = c.strip_prefix("<span class=\"refused\">").unwrap_or(c);
    let c = c.strip_prefix("<span class=\"failed\">").unwrap_or(c);
    c.split('<').next().unwrap_or("").trim()
}

/// An incident driven through the real proxy: a breaker opens (backstop refuses), the upstream
/// answers 503 (upstream failed), a retry fails over, a POST is reset (outcome unknown), a rate
/// limit answers 429, and a reload changes the limit. Headless Chromium's rendered DOM shows the
/// refusals apart from the upstream failures with the right numbers, the windowed counts, the
/// overspent budget in a red bar and what the reload changed.
#[tokio::test]
async fn chromium_dom_splits_backstop_refusals_from_upstream_failures() {
    let pg = Backend::start(Behaviour::Status(503)).await;
    let pg_a = Backend::start(Behaviour::Status(503)).await;
    let pg_b = Backend::start(Behaviour::Echo).await;
    let ledger = Backend::start(Behaviour::Reset).await;
    let agency = Backend::start(Behaviour::Echo).await;
    let dir = std::env::temp_dir().join(format!("backstop-status-incident-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("backstop.yaml");
    let yaml = incident_config(&pg, &pg_a, &pg_b, &ledger, &agency, "1/m");
    std::fs::write(&file, &yaml).unwrap();
    let config = backstop::config::load_str(&yaml).unwrap();
    let app = backstop::App::start_watching(config, backstop::metrics::Metrics::new(), &file)
        .await
        .unwrap();
    let proxy = app.proxy_addr();

    // Two upstream 503s open the breaker; the third is backstop's own 503.
    let mut reasons = Vec::new();
    for _ in 0..3 {
        let r = get(format!("http://{proxy}/pay")).await;
        assert_eq!(r.status, 503);
        reasons.push(r.header("x-backstop-reason").to_owned());
    }
    assert_eq!(reasons, ["", "", "circuit_open"]);
    assert_eq!(pg.hits(), 2, "the breaker kept the third request away");
    // Another route on the same upstream meets the same (upstream-level) breaker.
    let read = get(format!("http://{proxy}/read")).await;
    assert_eq!(read.header("x-backstop-reason"), "circuit_open");
    assert_eq!(pg.hits(), 2);
    // A retry on 503 that fails over to pg-b.
    assert_eq!(get(format!("http://{proxy}/checkout")).await.status, 200);
    assert_eq!((pg_a.hits(), pg_b.hits()), (1, 1));
    // A POST reset after it was sent: 502, not retried, outcome unknown.
    let post = http::Request::post(format!("http://{proxy}/ledger"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"amount\":1}")))
        .unwrap();
    let r = send(post).await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-backstop-outcome")),
        (502, "unknown")
    );
    assert_eq!(ledger.hits(), 1);
    // Two requests through the limit (rate 1/m, burst 1), then two 429s.
    let statuses: Vec<u16> = statuses(&format!("http://{proxy}/orders"), 4).await;
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert_eq!(agency.hits(), 2);

    // A reload that changes the limit.
    std::fs::write(
        &file,
        incident_config(&pg, &pg_a, &pg_b, &ledger, &agency, "2/m"),
    )
    .unwrap();
    let reload = send(
        http::Request::post(format!("http://{}/admin/reload", app.admin_addr()))
            .header("x-backstop-admin", "1")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(reload.status, 200);
    eventually(Duration::from_secs(5), || async {
        app.snapshots().load().generation == 2
    })
    .await;

    let dom = chromium_dom(&format!("http://{}/", app.admin_addr())).await;
    // Backstop's own refusals, apart from the upstream's failures.
    assert_eq!(headline(&dom, "payments-create:refused"), "1", "{dom}");
    assert!(cell(&dom, "payments-create:refused").contains("circuit open 1"));
    assert_eq!(headline(&dom, "payments-create:failed"), "2", "{dom}");
    assert!(cell(&dom, "payments-create:failed").contains("5xx 2 · reset 0 · timeout 0"));
    // The shared upstream's refusal is counted under the route whose request it was.
    assert_eq!(headline(&dom, "payments-read:refused"), "1", "{dom}");
    assert_eq!(headline(&dom, "payments-read:failed"), "0", "{dom}");
    assert_eq!(headline(&dom, "payments-create:answers"), "0 / 0 / 3");
    // The retry and the failover; the client saw a 200, so nothing failed.
    assert_eq!(headline(&dom, "checkout:retries"), "1");
    assert_eq!(headline(&dom, "checkout:failovers"), "1");
    assert_eq!(headline(&dom, "checkout:answers"), "1 / 0 / 0");
    assert_eq!(headline(&dom, "checkout:failed"), "0");
    // The reset POST: an upstream failure, and its outcome is unknown.
    assert_eq!(headline(&dom, "ledger:outcome_unknown"), "1");
    assert!(cell(&dom, "ledger:failed").contains("reset 1"), "{dom}");
    assert_eq!(headline(&dom, "ledger:refused"), "0");
    // Rate limited, counted over the window, and as a refusal (not an upstream failure);
    // the count survives the reload that rebuilt the limiter.
    assert_eq!(headline(&dom, "agency-orders:rate_limited"), "2", "{dom}");
    assert!(cell(&dom, "agency-orders:refused").contains("rate limited 2"));
    assert_eq!(headline(&dom, "agency-orders:failed"), "0");
    assert!(dom.contains("counts over the last"), "the window is named");
    // Upstream rows: pg's breaker refused two (one per route), pg-a failed one attempt.
    assert_eq!(headline(&dom, "pg:refused"), "2");
    assert_eq!(headline(&dom, "pg-a:failed"), "1");
    // The budget: overspent, in a red bar, said in words, and the process is young.
    let budget = cell(&dom, "payments-availability:budget");
    assert!(budget.contains(r#"class="fill over""#), "red bar: {budget}");
    assert!(budget.contains("overspent by"), "{budget}");
    assert!(
        !budget
            .as_bytes()
            .windows(2)
            .any(|w| w[0] == b'-' && w[1].is_ascii_digit()),
        "no negative percentage: {budget}"
    );
    assert!(budget.contains("3 bad of 0.003 allowed"), "{budget}");
    assert!(
        budget.contains("of 28d"),
        "seen less than the window: {budget}"
    );
    // What the reload changed.
    let reload_at = dom
        .find(r#"data-generation="2""#)
        .unwrap_or_else(|| panic!("a line for the reload:\n{dom}"));
    let line = &dom[reload_at
        ..dom[reload_at..]
            .find("</li>")
            .map_or(dom.len(), |e| reload_at + e)];
    assert!(
        line.contains("routes[agency-orders].rate_limit.rate")
            && line.contains("1/m")
            && line.contains("2/m"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Status codes of `n` GETs to `url`, one after another.
async fn statuses(url: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(url.to_owned()).await.status.as_u16());
    }
    out
}
