//! Config validation: golden tests for every invalid fixture, and the shipped configs load.
//!
//! Each `tests/fixtures/config/invalid/NAME.yaml` has a `NAME.expected` holding exactly the
//! lines `backstop validate` prints for it: key path, message, line and column, hint.

use std::path::Path;
use std::process::Command;

fn fixtures() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/invalid");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every invalid fixture is refused with exactly the expected problems.
#[test]
fn invalid_configs_report_every_problem_exactly() {
    let files = fixtures();
    assert!(files.len() >= 8, "fixtures are present");
    let mut failures = Vec::new();
    for file in files {
        let expected = std::fs::read_to_string(file.with_extension("expected"))
            .unwrap_or_else(|_| panic!("{} has no .expected file", file.display()));
        let expected: Vec<&str> = expected.lines().filter(|l| !l.is_empty()).collect();
        match backstop::config::load(&file) {
            Ok(_) => failures.push(format!("{}: accepted, expected errors", file.display())),
            Err(e) => {
                let got = e.issues();
                if got != expected {
                    failures.push(format!(
                        "{}:\n  got:      {got:#?}\n  expected: {expected:#?}",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `backstop validate` exits 1 and prints every problem on stderr.
#[test]
fn validate_command_lists_problems_and_exits_1() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config/invalid/unknown_upstream.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["validate", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
    assert!(
        stderr.contains(r#"routes[0].upstream: unknown upstream "paymnts" (line 13, column 15); did you mean "payments"?"#),
        "{stderr}"
    );
}

/// The shipped configs are valid, and `validate` says so with exit 0.
#[test]
fn shipped_configs_validate() {
    for name in ["config/backstop.yaml", "config/demo.yaml"] {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        if let Err(e) = backstop::config::load(&file) {
            panic!("{name} is invalid:\n{e}");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
            .args(["validate", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("valid ("));
    }
}

/// The same file gives the same hash; a changed file a different one.
#[test]
fn config_hash_identifies_the_file() {
    let a = backstop::config::load_str("upstreams:\n  u:\n    endpoints: [{ address: \"127.0.0.1:1\" }]\nroutes:\n  - { name: r, upstream: u }\n").unwrap();
    let b = backstop::config::load_str("upstreams:\n  u:\n    endpoints: [{ address: \"127.0.0.1:2\" }]\nroutes:\n  - { name: r, upstream: u }\n").unwrap();
    assert_eq!(a.sha256.len(), 64);
    assert_ne!(a.sha256, b.sha256);
}
