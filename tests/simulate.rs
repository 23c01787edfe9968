//! `backstop simulate` (issue #16 item 1) against a traffic file whose report is worked out
//! by hand below, `--compare`, the JSON access log as input, and a bad file.
//!
//! tests/fixtures/simulate/config.yaml: upstream `p` with a breaker that opens after 3
//! failures in a row for 10s (jittered by up to 10%) and closes after 1 good probe; route
//! `limited` (/l) keyed by x-merchant at 1/s with a burst of 1 (2 at once); route `r`
//! (everything else); SLO r-availability at 99% over 1h on `r`.
//!
//! traffic.csv, by hand:
//! - t=0,1,2: `r` gets 503 in 10ms. The third completes at 2.010: 3 failures in a row, the
//!   breaker opens (until 11.0 to 13.0 with the jitter).
//! - t=3,4,5: refused by the open breaker: 503 circuit_open, never sent.
//! - t=13: the open period is over: one probe, recorded 200, closes the breaker at 13.010.
//! - t=14: 200.
//!   So `r`: 8 requests, 8 admitted, 3 refused, 2x 2xx, 6x 5xx; transitions closed->open at
//!   00:02.010, open->half_open at 00:13.000, half_open->closed at 00:13.010. SLO: 8 events,
//!   6 bad: budget left 1 - (6/8)/(1-0.99) = -74 (-7400%).
//! - t=20.0, 20.1 (m-1), 20.1 (m-2), 20.2 (m-1) on `limited`: m-1's bucket holds 2, so its
//!   third request is limited; m-2 has its own bucket. 4 requests, 3 admitted, 1 limited.
//!
//! looser.yaml needs 5 failures in a row: no transition, nothing refused, 5x 2xx on `r`.

use std::process::Command;

fn simulate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .arg("simulate")
        .args(args)
        .output()
        .expect("backstop runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const CONFIG: &str = "tests/fixtures/simulate/config.yaml";
const LOOSER: &str = "tests/fixtures/simulate/looser.yaml";
const TRAFFIC: &str = "tests/fixtures/simulate/traffic.csv";

#[test]
fn the_report_matches_the_hand_worked_one() {
    let (ok, out, err) = simulate(&["-c", CONFIG, "--traffic", TRAFFIC, "--format", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let report = &v["config"];
    assert_eq!(report["requests"], 12);
    assert_eq!(report["unrouted"], 0);
    let limited = &report["routes"][0];
    assert_eq!(
        (
            &limited["requests"],
            &limited["admitted"],
            &limited["rate_limited"],
            &limited["answered_2xx"],
            &limited["answered_4xx"]
        ),
        (&4.into(), &3.into(), &1.into(), &3.into(), &1.into())
    );
    let r = &report["routes"][1];
    assert_eq!(r["name"], "r");
    assert_eq!(r["requests"], 8);
    assert_eq!(r["admitted"], 8);
    assert_eq!(r["circuit_refused"], 3);
    assert_eq!(r["answered_2xx"], 2);
    assert_eq!(r["answered_5xx"], 6);
    assert_eq!(r["retried"], 0);
    let transitions: Vec<(String, String, String)> = report["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["at"].as_str().unwrap().to_owned(),
                t["from"].as_str().unwrap().to_owned(),
                t["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("00:02.010", "closed", "open"),
        ("00:13.000", "open", "half_open"),
        ("00:13.010", "half_open", "closed"),
    ];
    assert_eq!(
        transitions,
        expected.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
    );
    assert!(report["transitions"][0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("consecutive_failures 3 >= 3"));
    let slo = &report["slos"][0];
    assert_eq!(slo["events"], 8);
    assert_eq!(slo["bad"], 6);
    let budget = slo["budget_remaining"].as_f64().unwrap();
    assert!((budget - -74.0).abs() < 1e-6, "budget {budget}");
    assert!(v["compare"].is_null());
}

#[test]
fn compare_shows_both_configs_side_by_side() {
    let (ok, out, err) = simulate(&["-c", CONFIG, "--traffic", TRAFFIC, "--compare", LOOSER]);
    assert!(ok, "{err}");
    assert!(out.contains("circuit open 3 -> 0"), "{out}");
    assert!(
        out.contains("answered 2xx 2 -> 5  4xx 0  5xx 6 -> 3"),
        "{out}"
    );
    assert!(out.contains("compared: breaker transitions: 0"), "{out}");
    assert!(out.contains("budget left -7400.0% -> -3650.0%"), "{out}");
}

#[test]
fn the_json_access_log_is_traffic_too_and_retries_reuse_recorded_attempts() {
    let dir = std::env::temp_dir().join(format!("backstop-simulate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "upstreams:\n  pg:\n    endpoints: [{ address: 127.0.0.1:9 }]\nroutes:\n  - { name: pay, upstream: pg, retry: { attempts: 2, on: [503], backoff: { base: 10ms, max: 10ms } } }\n",
    )
    .unwrap();
    // Two recorded requests: one whose first attempt got 503 and its retry 200, one 200.
    let log = dir.join("access.log");
    std::fs::write(
        &log,
        concat!(
            r#"{"timestamp":"2026-11-30T10:00:00.050Z","level":"INFO","message":"backstop is serving"}"#, "\n",
            r#"{"timestamp":"2026-11-30T10:00:00.050Z","level":"INFO","message":"request","method":"GET","path":"/p","route":"pay","status":200,"duration_ms":30.0,"trail":"pg/127.0.0.1:9 503 10.0ms, retry 503: pg/127.0.0.1:9 200 8.0ms"}"#, "\n",
            r#"{"timestamp":"2026-11-30T10:00:01.000Z","level":"INFO","message":"request","method":"GET","path":"/p","route":"pay","status":200,"duration_ms":5.0,"trail":"pg/127.0.0.1:9 200 5.0ms"}"#, "\n",
        ),
    )
    .unwrap();
    let (ok, out, err) = simulate(&[
        "-c",
        config.to_str().unwrap(),
        "--traffic",
        log.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pay = &v["config"]["routes"][0];
    assert_eq!(
        v["config"]["requests"], 2,
        "the non-request line is skipped"
    );
    assert_eq!(pay["retried"], 1);
    assert_eq!(pay["answered_2xx"], 2, "the retry got the recorded 200");
}

#[test]
fn a_bad_traffic_file_names_its_line() {
    let dir = std::env::temp_dir().join(format!("backstop-simulate-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("t.csv");
    std::fs::write(
        &file,
        "1700000000,GET,a,/x,200,1\n1700000001,GET,a,/x,abc,1\n",
    )
    .unwrap();
    let (ok, _, err) = simulate(&["-c", CONFIG, "--traffic", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("line 2") && err.contains("status"), "{err}");
}
