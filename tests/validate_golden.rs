//! Golden files for `backstop validate`: one-pass validation, lint warnings, `--strict` and
//! `--diff`. Each `tests/golden/validate/NAME.yaml` whose first line is `# args: ...` is run
//! with those arguments (in that directory) and its exit code, stdout and stderr must equal
//! `NAME.golden`. `UPDATE_GOLDEN=1 cargo test --test validate_golden` rewrites the goldens;
//! without it a mismatch fails.

mod support;

use std::path::Path;
use std::process::Command;

#[test]
fn validate_output_matches_the_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/validate");
    let (ran, failures) = support::check_golden_dir(&dir);
    assert!(ran >= 8, "fixtures are present ({ran})");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One pass: the typo'd key, the wrong type, the unknown upstream and the bad value of one
/// file are all reported by the first run, in file order.
#[test]
fn one_run_reports_schema_and_value_problems_together() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/validate");
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["validate", "-c", "one_pass.yaml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let keys = [
        "upstreams.payments.conect_timeout: unknown field",
        "upstreams.payments.endpoints[0].priority:",
        "upstreams.payments.endpoints[1].wieght: unknown field",
        "routes[0].upstream: unknown upstream \"paymnts\"",
        "routes[0].timeout: invalid duration",
        "routes[0].retry.backof: unknown field",
    ];
    let mut last = 0;
    for key in keys {
        let at = stderr
            .find(key)
            .unwrap_or_else(|| panic!("{key} missing:\n{stderr}"));
        assert!(at >= last, "{key} out of file order:\n{stderr}");
        last = at;
    }
    assert!(stderr.contains("6 problem(s)"), "{stderr}");
}
