//! `backstop demo` shows what it promises: the per-merchant limit answers 429s under the
//! demo's own load, the welcome says where to look, it runs from any directory with the
//! built-in config, and `--port-base` moves every port.

mod support;

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backstop::demo::{ports, Demo, Options};
use support::{eventually, get};

/// Sum of every sample of `name` that has all `labels` (`key="value"`).
fn total(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sum of every `backstop_requests_total` sample of `route` with `status`.
fn answered(metrics: &str, route: &str, status: &str) -> f64 {
    let (route, status) = (format!("route=\"{route}\""), format!("status=\"{status}\""));
    total(metrics, "backstop_requests_total", &[&route, &status])
}

/// The demo at its default rate, on ports the OS picks: within seconds some agency-b calls
/// are answered 429 by the per-merchant limit, and not all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_load_hits_the_per_merchant_limit() {
    let demo = Demo::launch(
        ports::CONFIG,
        Options {
            rps: 20,
            load_for: Duration::from_secs(20),
            port_base: Some(0),
        },
    )
    .await
    .unwrap();
    assert!(demo.proxy_addr().ip().is_loopback());
    let url = format!("http://{}/metrics", demo.admin_addr());
    eventually(Duration::from_secs(12), || {
        let url = url.clone();
        async move {
            let metrics = String::from_utf8_lossy(&get(url).await.body).into_owned();
            answered(&metrics, "agency-b-orders", "429") >= 3.0
        }
    })
    .await;
    let metrics = String::from_utf8_lossy(&get(url).await.body).into_owned();
    let limited = answered(&metrics, "agency-b-orders", "429");
    let served = answered(&metrics, "agency-b-orders", "200");
    assert!(
        served > limited,
        "the other merchants stay under the limit: {served} 200s, {limited} 429s"
    );
    let rejected = total(
        &metrics,
        "backstop_rate_limited_total",
        &["route=\"agency-b-orders\"", "mode=\"enforce\""],
    );
    assert!(rejected >= limited, "{metrics}");
    assert!(
        demo.tally().rate_limited.load(Ordering::Relaxed) > 0,
        "the load generator saw 429s"
    );
    demo.shutdown().await;
}

/// The welcome names each scenario with the real addresses and what to look at.
#[tokio::test]
async fn welcome_says_where_to_look_for_each_scenario() {
    let demo = Demo::launch(
        ports::CONFIG,
        Options {
            rps: 0,
            load_for: Duration::ZERO,
            port_base: Some(0),
        },
    )
    .await
    .unwrap();
    let text = demo.welcome();
    let admin = demo.admin_addr().to_string();
    let proxy = demo.proxy_addr().to_string();
    for want in [
        format!("status page:  http://{admin}/"),
        format!("curl -s http://{admin}/admin/circuits"),
        format!("curl -i http://{proxy}/v1/agency-a/orders/ord_1"),
        "backstop_circuit_rejected_total.*mode=\"shadow\"".to_owned(),
        "backstop_failover_total".to_owned(),
        "backstop_rate_limited_total".to_owned(),
        format!("http://{proxy}/v1/agency-b/quotes"),
        format!("curl -s http://{admin}/admin/slos"),
        "backstop demo --print-config".to_owned(),
    ] {
        assert!(text.contains(&want), "welcome lacks {want:?}:\n{text}");
    }
    // The curl in scenario 3 really shows the limit: a third call within a second is a 429.
    let mut codes = Vec::new();
    for _ in 0..4 {
        let req = http::Request::get(format!("http://{proxy}/v1/agency-b/quotes"))
            .header("x-merchant-id", "you")
            .body(http_body_util::Full::default())
            .unwrap();
        codes.push(support::send(req).await.status.as_u16());
    }
    assert!(
        !codes[..2].contains(&429),
        "the burst of 2 passes: {codes:?}"
    );
    assert!(codes.contains(&429), "{codes:?}");
    demo.shutdown().await;
}

fn binary() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
}

/// `backstop demo --help` documents the port layout.
#[test]
fn help_documents_the_port_layout() {
    let out = binary().args(["demo", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "--port-base <N>",
        "N+0: proxy",
        "N+1: admin",
        "N+10: simulated agency-a endpoint",
        "N+14: simulated payments-b endpoint",
    ] {
        assert!(help.contains(want), "help lacks {want:?}:\n{help}");
    }
}

/// `--print-config --port-base` writes a config that `validate` accepts, with the moved ports;
/// run from a directory without config/ (the config is built in).
#[test]
fn printed_config_with_moved_ports_validates() {
    let dir = std::env::temp_dir().join(format!("backstop-demo-print-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = binary()
        .args(["demo", "--print-config", "--port-base", "23000"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for port in [
        "23000", "23001", "23010", "23011", "23012", "23013", "23014",
    ] {
        assert!(
            text.contains(&format!("127.0.0.1:{port}")),
            "{port}:\n{text}"
        );
    }
    assert!(!text.contains("19101"), "{text}");
    std::fs::write(dir.join("demo.yaml"), &text).unwrap();
    let status = binary()
        .args(["validate", "-c", "demo.yaml"])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let too_high = binary()
        .args(["demo", "--print-config", "--port-base", "65530"])
        .output()
        .unwrap();
    assert!(!too_high.status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The URL on the first line of `lines` that starts with `prefix` (the demo's welcome).
async fn printed_url(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    prefix: &str,
) -> String {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the demo printed its welcome")
            .unwrap()
            .expect("the demo is still running");
        if let Some(rest) = line.trim().strip_prefix(prefix) {
            let url = rest.split_whitespace().next().unwrap();
            return url.trim_end_matches('/').to_owned();
        }
    }
}

/// The real binary, started in an empty directory with `--port-base 0`: it serves the demo
/// from its built-in config, answers through the proxy, and stops cleanly on SIGTERM.
#[tokio::test]
async fn binary_runs_from_any_directory() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = std::env::temp_dir().join(format!("backstop-demo-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args([
            "demo",
            "--port-base",
            "0",
            "--rps",
            "20",
            "--load-for",
            "10s",
        ])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let proxy = printed_url(&mut lines, "proxy:").await;
    let admin = printed_url(&mut lines, "status page:").await;
    for url in [&proxy, &admin] {
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        assert!(url.starts_with("http://127.0.0.1:") && port != 0, "{url}");
    }
    let req = http::Request::get(format!("{proxy}/v1/agency-b/quotes"))
        .header("x-merchant-id", "test")
        .body(http_body_util::Full::default())
        .unwrap();
    let answer = support::send(req).await;
    assert_eq!(
        answer.json()["backend"],
        "agency-b",
        "a simulated backend answered"
    );
    eventually(Duration::from_secs(10), || {
        let url = format!("{admin}/metrics");
        async move {
            let metrics = String::from_utf8_lossy(&get(url).await.body).into_owned();
            answered(&metrics, "payments-create", "200") > 0.0
        }
    })
    .await;
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the demo stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        rest.push_str(&line);
        rest.push('\n');
    }
    assert!(rest.contains("demo stopped: sent"), "{rest}");
    std::fs::remove_dir_all(&dir).unwrap();
}
