//! Prometheus and Grafana artefacts against the real tools: promtool checks the generated
//! rules and our /metrics, promtool unit tests prove the alerts fire at the right burn, and a
//! real Prometheus scrapes a running backstop so that every dashboard expression and every
//! recording rule can be shown to return data.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{eventually, get, proxy, Backend, Behaviour};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("backstop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rules_for(config: &Path, into: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["rules", "-c"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(into, out.stdout).unwrap();
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool is installed (./scripts/test installs the prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The rules for the shipped configs pass `promtool check rules`; the promtool unit tests prove
/// the page alert fires at 15x burn and not at 5x.
#[test]
fn generated_rules_pass_promtool_check_and_unit_tests() {
    let dir = temp_dir("rules");
    for config in [
        "config/backstop.yaml",
        "config/demo.yaml",
        "tests/prometheus/backstop.yaml",
    ] {
        rules_for(&root().join(config), &dir.join("rules.yaml"));
        let out = promtool(&["check", "rules", "rules.yaml"], &dir);
        assert!(out.contains("SUCCESS"), "{config}: {out}");
    }
    std::fs::copy(
        root().join("tests/prometheus/alerts.test.yaml"),
        dir.join("alerts.test.yaml"),
    )
    .unwrap();
    let out = promtool(&["test", "rules", "alerts.test.yaml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The metric names in the dashboards exist: exported by backstop or recorded by its rules.
#[test]
fn dashboards_use_only_known_metrics_and_a_datasource_variable() {
    let names = std::fs::read_to_string(root().join("src/metrics/names.rs")).unwrap();
    let mut known: Vec<String> = names
        .lines()
        .filter_map(|l| {
            l.split('"')
                .nth(1)
                .filter(|_| l.contains("pub const"))
                .map(String::from)
        })
        .collect();
    known.extend([
        "backstop:slo_error_ratio:rate".to_string(),
        "backstop:slo_error_budget_remaining:ratio".to_string(),
    ]);
    for file in [
        "dashboards/backstop-overview.json",
        "dashboards/backstop-slo.json",
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(dash["schemaVersion"].as_u64().unwrap() >= 39, "{file}");
        let vars = dash["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter()
                .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
            "{file}"
        );
        for panel in dash["panels"].as_array().unwrap() {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{file}: no hard-coded datasource uid"
            );
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for word in
                    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                {
                    if word.starts_with("backstop") {
                        let base = word
                            .trim_end_matches("_bucket")
                            .trim_end_matches("_count")
                            .trim_end_matches("_sum");
                        let ok = known.iter().any(|k| {
                            base == k || (k.ends_with("rate") && base.starts_with(k.as_str()))
                        });
                        assert!(ok, "{file}: unknown metric {word} in {expr}");
                    }
                }
            }
        }
    }
}

/// `promtool check metrics` accepts what /metrics serves.
#[tokio::test]
async fn promtool_accepts_our_metrics() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&scrape_config(&backend)).await;
    traffic(&app, &backend).await;
    let text = support::metrics(&app).await;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check metrics:\n{report}");
}

fn scrape_config(backend: &Backend) -> String {
    format!(
        r#"upstreams:
  pg:
    endpoints: [{{ address: "{addr}" }}]
    circuit_breaker: {{ consecutive_failures: 50 }}
    outlier_detection: {{ consecutive_failures: 50 }}
    health_check: {{ path: /health, interval: 1s }}
routes:
  - name: pay
    upstream: pg
    retry: {{ attempts: 2, on: [503], backoff: {{ base: 1ms, max: 1ms }} }}
    rate_limit: {{ rate: 5/s, burst: 5 }}
slos:
  - {{ name: pay-availability, routes: [pay], objective: 99.9%, sli: availability }}
"#,
        addr = backend.addr
    )
}

/// Requests that make every family of the dashboards non-empty: successes, a retried 503,
/// rate-limited answers.
async fn traffic(app: &backstop::App, backend: &Backend) {
    backend.script(vec![Behaviour::Status(503)]);
    for _ in 0..12 {
        get(format!("http://{}/pay", app.proxy_addr())).await;
    }
}

/// A real Prometheus scrapes backstop with the generated rules loaded: the target is up, the
/// recording rules produce series, and every dashboard expression parses and returns data.
#[tokio::test]
async fn real_prometheus_scrapes_backstop_and_every_panel_has_data() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&scrape_config(&backend)).await;
    let dir = temp_dir("prometheus");
    let config_file = dir.join("backstop.yaml");
    std::fs::write(
        &config_file,
        format!("listen: 127.0.0.1:0\n{}", scrape_config(&backend)),
    )
    .unwrap();
    rules_for(&config_file, &dir.join("rules.yaml"));
    let port = support::closed_port().await.port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [rules.yaml]\nscrape_configs:\n  - job_name: backstop\n    static_configs: [{{ targets: ['{}'] }}]\n",
            app.admin_addr()
        ),
    )
    .unwrap();
    let mut prometheus = Command::new("prometheus")
        .current_dir(&dir)
        .args(["--config.file=prometheus.yml", "--storage.tsdb.path=data"])
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed (./scripts/test installs it)");
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let query = |q: String| {
        let url = format!("{api}/query?query={}", percent_encode(&q));
        async move { get(url).await.json() }
    };
    // Keep traffic flowing while Prometheus collects at least two scrapes of everything.
    let result = async {
        eventually(Duration::from_secs(30), || async {
            let Some(targets) = support::try_get(format!("{api}/targets")).await else {
                return false;
            };
            targets.status == 200 && targets.json()["data"]["activeTargets"][0]["health"] == "up"
        })
        .await;
        let needed = [
            "backstop:slo_error_ratio:rate5m",
            "backstop:slo_error_budget_remaining:ratio",
        ];
        eventually(Duration::from_secs(30), || async {
            traffic(&app, &backend).await;
            let mut all = true;
            for q in needed {
                all &= query(q.to_string()).await["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty());
            }
            all
        })
        .await;
        for file in [
            "dashboards/backstop-overview.json",
            "dashboards/backstop-slo.json",
        ] {
            let dash: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(root().join(file)).unwrap()).unwrap();
            for panel in dash["panels"].as_array().unwrap() {
                for target in panel["targets"].as_array().unwrap() {
                    let expr = target["expr"]
                        .as_str()
                        .unwrap()
                        .replace("$__rate_interval", "1m")
                        .replace("$route", ".*")
                        .replace("$slo", ".*");
                    let mut last = serde_json::Value::Null;
                    let has_data = async {
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                        let mut poll = tokio::time::interval(Duration::from_millis(200));
                        while tokio::time::Instant::now() < deadline {
                            poll.tick().await;
                            traffic(&app, &backend).await;
                            last = query(expr.clone()).await;
                            if last["status"] == "success"
                                && last["data"]["result"]
                                    .as_array()
                                    .is_some_and(|r| !r.is_empty())
                            {
                                return true;
                            }
                        }
                        false
                    }
                    .await;
                    assert!(
                        has_data,
                        "{file} panel {:?}: {expr}\n{last}",
                        panel["title"]
                    );
                }
            }
        }
    };
    let outcome = tokio::time::timeout(Duration::from_secs(150), result).await;
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    outcome.expect("prometheus checks finished in time");
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
