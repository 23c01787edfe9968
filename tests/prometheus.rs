//! Prometheus and Grafana artefacts against the real tools: promtool checks the generated
//! rules and our /metrics, promtool unit tests prove the alerts fire at the right burn, and a
//! real Prometheus scrapes a running backstop so that every dashboard expression and every
//! recording rule can be shown to return data.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{eventually, get, proxy, send, Backend, Behaviour};

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

const DASHBOARDS: [&str; 2] = [
    "dashboards/backstop-overview.json",
    "dashboards/backstop-slo.json",
];

fn dashboard(file: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join(file)).unwrap()).unwrap()
}

/// Every query of a dashboard: (what, expression), panels' targets and annotations.
fn queries(dash: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            out.push((
                format!("panel {:?}", panel["title"]),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    for a in dash["annotations"]["list"].as_array().unwrap() {
        out.push((
            format!("annotation {:?}", a["name"]),
            a["expr"].as_str().unwrap().to_owned(),
        ));
    }
    out
}

/// The words of `expr` that name a backstop metric or recorded series.
fn metric_names(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("backstop"))
        .collect()
}

/// The metric names in the dashboards exist (exported by backstop or recorded by its rules),
/// and every panel has a description, thresholds and the datasource variable.
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
    known.extend(
        [
            "backstop:slo_error_ratio:rate",
            "backstop:slo_events:rate",
            "backstop:slo_bad_events:rate",
            "backstop:slo_error_budget_remaining:ratio",
        ]
        .map(String::from),
    );
    for file in DASHBOARDS {
        let dash = dashboard(file);
        assert!(dash["schemaVersion"].as_u64().unwrap() >= 39, "{file}");
        let vars = dash["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter()
                .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
            "{file}"
        );
        for var in ["job", "instance"] {
            assert!(vars.iter().any(|v| v["name"] == var), "{file}: ${var}");
        }
        for panel in dash["panels"].as_array().unwrap() {
            let title = &panel["title"];
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{file}: no hard-coded datasource uid"
            );
            assert!(
                panel["description"].as_str().is_some_and(|d| d.len() > 20),
                "{file}: panel {title} has no description"
            );
            let steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"].as_array();
            assert!(
                steps.is_some_and(|s| !s.is_empty()),
                "{file}: panel {title} has no thresholds"
            );
        }
        for (what, expr) in queries(&dash) {
            for word in metric_names(&expr) {
                let base = word
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_count")
                    .trim_end_matches("_sum");
                let ok = known
                    .iter()
                    .any(|k| base == k || (k.ends_with("rate") && base.starts_with(k.as_str())));
                assert!(ok, "{file} {what}: unknown metric {word} in {expr}");
            }
        }
    }
}

/// The backends behind the scrape config: `pg` echoes (a scripted 503 now and then), `flaky`
/// drops every connection after reading the request, `tight` always answers 503.
struct Backends {
    pg: Backend,
    flaky: Backend,
    tight: Backend,
}

impl Backends {
    async fn start() -> Self {
        Self {
            pg: Backend::start(Behaviour::Echo).await,
            flaky: Backend::start(Behaviour::Reset).await,
            tight: Backend::start(Behaviour::Status(503)).await,
        }
    }
}

/// A config under which [`traffic`] fills every family the dashboards and alerts use: retries,
/// rate limiting, an SLO, a breaker that opens (flaky), failover to pg, outcome_unknown (POSTs
/// reset after being sent), outlier ejection and a retry budget that refuses every retry.
fn scrape_config(b: &Backends) -> String {
    format!(
        r#"upstreams:
  pg:
    endpoints: [{{ address: "{pg}" }}]
    circuit_breaker: {{ consecutive_failures: 50 }}
    outlier_detection: {{ consecutive_failures: 50 }}
    health_check: {{ path: /health, interval: 1s }}
  flaky:
    endpoints: [{{ address: "{flaky}" }}]
    circuit_breaker: {{ consecutive_failures: 2, open_for: 1s, max_open_for: 1s, half_open_requests: 1 }}
    outlier_detection: {{ consecutive_failures: 2, base_ejection: 1s, max_ejection: 1s }}
  tight:
    endpoints: [{{ address: "{tight}" }}]
routes:
  - name: charge
    match: {{ path_prefix: /charge }}
    upstream: flaky
    failover: [pg]
  - name: scarce
    match: {{ path_prefix: /scarce }}
    upstream: tight
    retry: {{ attempts: 2, on: [503], backoff: {{ base: 1ms, max: 1ms }}, budget: {{ ratio: 0%, min_per_second: 0 }} }}
  - name: pay
    upstream: pg
    retry: {{ attempts: 2, on: [503], backoff: {{ base: 1ms, max: 1ms }} }}
    rate_limit: {{ rate: 5/s, burst: 5 }}
slos:
  - {{ name: pay-availability, routes: [pay], objective: 99.9%, sli: availability }}
slos_rules:
  long_window_interval: 1s
"#,
        pg = b.pg.addr,
        flaky = b.flaky.addr,
        tight = b.tight.addr,
    )
}

/// Requests that make every family of the dashboards non-empty: successes, a retried 503,
/// rate-limited answers, POSTs whose outcome is unknown, failovers once flaky's breaker is
/// open, and retries the budget refuses.
async fn traffic(app: &backstop::App, b: &Backends) {
    b.pg.script(vec![Behaviour::Status(503)]);
    for _ in 0..12 {
        get(format!("http://{}/pay", app.proxy_addr())).await;
    }
    for _ in 0..3 {
        send(
            Request::post(format!("http://{}/charge", app.proxy_addr()))
                .body(Full::<Bytes>::from("{}"))
                .unwrap(),
        )
        .await;
    }
    get(format!("http://{}/scarce", app.proxy_addr())).await;
}

/// `promtool check metrics` accepts what /metrics serves.
#[tokio::test]
async fn promtool_accepts_our_metrics() {
    let backends = Backends::start().await;
    let app = proxy(&scrape_config(&backends)).await;
    traffic(&app, &backends).await;
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

/// Every dashboard query filters by `$job`; a query on a metric backstop exports (not a
/// recorded series, which aggregates instances away) filters by `$instance` too; and a query
/// on a family with an `upstream` label filters by `$upstream`. Label sets are read from a
/// live /metrics after traffic, so they are the real ones.
#[tokio::test]
async fn every_dashboard_query_follows_the_job_instance_and_upstream_variables() {
    let backends = Backends::start().await;
    let app = proxy(&scrape_config(&backends)).await;
    traffic(&app, &backends).await;
    let text = support::metrics(&app).await;
    let with_upstream: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("upstream=\""))
        .filter_map(|l| l.split('{').next())
        .collect();
    assert!(with_upstream.contains(&"backstop_upstream_attempts_total"));
    for file in DASHBOARDS {
        for (what, expr) in queries(&dashboard(file)) {
            assert!(expr.contains("job=~\"$job\""), "{file} {what}: {expr}");
            for word in metric_names(&expr) {
                if word.starts_with("backstop_") {
                    assert!(
                        expr.contains("instance=~\"$instance\""),
                        "{file} {what}: {word} without $instance: {expr}"
                    );
                }
                if with_upstream.iter().any(|m| {
                    *m == word
                        || m.strip_prefix(word)
                            .is_some_and(|rest| ["_bucket", "_count", "_sum"].contains(&rest))
                }) {
                    assert!(
                        expr.contains("upstream=~\"$upstream\""),
                        "{file} {what}: {word} has an upstream label: {expr}"
                    );
                }
            }
        }
    }
}

async fn reload(app: &backstop::App) -> u16 {
    send(
        Request::post(format!("http://{}/admin/reload", app.admin_addr()))
            .header("x-backstop-admin", "1")
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await
    .status
    .as_u16()
}

/// A real Prometheus scrapes backstop with the generated rules loaded: the target is up, the
/// recording rules (the 5m rates and the chain from them to the period) produce series, and
/// every dashboard expression and annotation, with the job, instance and upstream variables
/// set, parses and returns data. One reload is accepted and one rejected on the way, so the
/// reload annotations have something to mark.
#[tokio::test]
async fn real_prometheus_scrapes_backstop_and_every_panel_has_data() {
    let backends = Backends::start().await;
    let dir = temp_dir("prometheus");
    let config_file = dir.join("backstop.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n{}",
        scrape_config(&backends)
    );
    std::fs::write(&config_file, &yaml).unwrap();
    let config = backstop::config::load(&config_file).unwrap();
    let app =
        backstop::App::start_watching(config, backstop::metrics::Metrics::new(), &config_file)
            .await
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
    let instance = app.admin_addr().to_string();
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
            "backstop:slo_events:rate1d",
            "backstop:slo_error_ratio:rate28d",
            "backstop:slo_error_budget_remaining:ratio",
        ];
        eventually(Duration::from_secs(30), || async {
            traffic(&app, &backends).await;
            let mut all = true;
            for q in needed {
                all &= query(q.to_string()).await["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty());
            }
            all
        })
        .await;
        // The recorded series keep `job` (slos_rules.keep_labels defaults to [job]).
        let ratio = query("backstop:slo_error_ratio:rate28d".into()).await;
        assert_eq!(
            ratio["data"]["result"][0]["metric"]["job"], "backstop",
            "{ratio}"
        );
        // One accepted reload (a changed file) and one rejected (an invalid one).
        std::fs::write(&config_file, format!("{yaml}# changed\n")).unwrap();
        assert_eq!(reload(&app).await, 200);
        std::fs::write(&config_file, format!("{yaml}nonsense: [\n")).unwrap();
        assert_ne!(reload(&app).await, 200);
        for file in DASHBOARDS {
            for (what, expr) in queries(&dashboard(file)) {
                let expr = expr
                    .replace("$__rate_interval", "1m")
                    .replace("$job", "backstop")
                    .replace("$instance", &instance)
                    .replace("$upstream", "pg|flaky|tight")
                    .replace("$route", ".*")
                    .replace("$slo", ".*");
                assert!(
                    !expr.contains('$'),
                    "{file} {what}: unknown variable in {expr}"
                );
                let mut last = serde_json::Value::Null;
                let has_data = async {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                    let mut poll = tokio::time::interval(Duration::from_millis(200));
                    while tokio::time::Instant::now() < deadline {
                        poll.tick().await;
                        traffic(&app, &backends).await;
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
                assert!(has_data, "{file} {what}: {expr}\n{last}");
            }
        }
    };
    let outcome = tokio::time::timeout(Duration::from_secs(200), result).await;
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
