//! `backstop schema` describes the files backstop accepts; `validate --diff` says what a reload
//! would change.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The shipped configs validate against the schema; a typo'd key does not.
#[test]
fn schema_accepts_the_shipped_configs_and_rejects_typos() {
    let (ok, text) = run(&["schema"]);
    assert!(ok);
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for file in ["config/backstop.yaml", "config/demo.yaml"] {
        let yaml: serde_json::Value =
            serde_saphyr::from_str(&std::fs::read_to_string(root().join(file)).unwrap()).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&yaml)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{file}: {errors:?}");
    }
    let typo: serde_json::Value =
        serde_saphyr::from_str("upstreams:\n  a:\n    endpoints: [{ address: x, wieght: 1 }]\n")
            .unwrap();
    assert!(
        !validator.is_valid(&typo),
        "unknown keys are refused by the schema too"
    );
}

/// The diff names what changed, upstream by upstream and route by route.
#[test]
fn validate_diff_lists_changes() {
    let dir = std::env::temp_dir().join(format!("backstop-diff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let old = "upstreams:\n  pg: { endpoints: [{ address: \"127.0.0.1:1\" }] }\n  legacy: { endpoints: [{ address: \"127.0.0.1:2\" }] }\nroutes:\n  - { name: pay, upstream: pg, timeout: 5s }\n  - { name: old, upstream: legacy }\n";
    let new = "upstreams:\n  pg:\n    endpoints: [{ address: \"127.0.0.1:1\" }, { address: \"127.0.0.1:3\" }]\n    circuit_breaker: { consecutive_failures: 5 }\n  pg-b: { endpoints: [{ address: \"127.0.0.1:4\" }] }\nroutes:\n  - { name: pay, upstream: pg, timeout: 3s, failover: [pg-b] }\n";
    std::fs::write(dir.join("old.yaml"), old).unwrap();
    std::fs::write(dir.join("new.yaml"), new).unwrap();
    let (ok, text) = run(&[
        "validate",
        "--diff",
        dir.join("old.yaml").to_str().unwrap(),
        dir.join("new.yaml").to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        vec![
            "routes[pay].failover: (unset) -> [pg-b]",
            "routes[pay].timeout: 5s -> 3s",
            "upstreams.pg.circuit_breaker.consecutive_failures: (unset) -> 5 (its state starts over)",
            "upstreams.pg.endpoints[1].address: (unset) -> 127.0.0.1:3",
            "upstreams.pg-b: added",
            "routes[old]: removed",
            "upstreams.legacy: removed",
        ]
    );
    let (ok, text) = run(&[
        "validate",
        "--diff",
        dir.join("old.yaml").to_str().unwrap(),
        dir.join("old.yaml").to_str().unwrap(),
    ]);
    assert!(ok && text.trim() == "no changes", "{text}");
}
