//! `backstop lint`: every rule has a fixture under `tests/golden/lint/RULE.yaml` whose output
//! (exit code, stdout, stderr) must equal `RULE.golden`; `UPDATE_GOLDEN=1` rewrites them.
//! A clean file has no findings, and `--strict` turns a finding into exit 1.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/lint")
}

#[test]
fn lint_output_matches_the_golden_files() {
    let (ran, failures) = support::check_golden_dir(&dir());
    assert!(ran >= 10, "fixtures are present ({ran})");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every rule has its fixture, and that fixture finds that rule (and no other).
#[test]
fn every_rule_has_a_fixture_that_finds_it() {
    for rule in backstop::config::LINT_RULES {
        let file = dir().join(format!("{rule}.yaml"));
        let (config, text) = backstop::config::load_with_text(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let findings = backstop::config::lint(&config, &text);
        assert!(!findings.is_empty(), "{rule}: no finding");
        for f in &findings {
            assert_eq!(f.rule, rule, "{rule}: also found {f}");
            assert!(f.issue.position.is_some(), "{f} has a line");
            assert!(
                f.issue
                    .hint
                    .as_deref()
                    .is_some_and(|h| h.starts_with("fix: ")),
                "{f} has a fix"
            );
        }
    }
}

/// The shipped configs have no findings.
#[test]
fn shipped_configs_are_lint_clean() {
    for name in ["config/backstop.yaml", "config/demo.yaml"] {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        let (config, text) = backstop::config::load_with_text(&file).unwrap();
        let findings: Vec<String> = backstop::config::lint(&config, &text)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(findings.is_empty(), "{name}: {findings:#?}");
    }
}

/// An invalid file is reported as by validate, with exit 1.
#[test]
fn lint_of_an_invalid_file_exits_1() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config/invalid/unknown_upstream.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["lint", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 problem(s)"));
}
