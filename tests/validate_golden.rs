//! Golden files for `backstop validate`: one-pass validation, lint warnings, `--strict` and
//! `--diff`. Each `tests/golden/validate/NAME.yaml` whose first line is `# args: ...` is run
//! with those arguments (in that directory) and its exit code, stdout and stderr must equal
//! `NAME.golden`. `UPDATE_GOLDEN=1 cargo test --test validate_golden` rewrites the goldens;
//! without it a mismatch fails.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs every fixture of `dir` against its golden file; the mismatches, empty when all match.
fn check_dir(dir: &Path) -> (usize, Vec<String>) {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let (mut ran, mut failures) = (0, Vec::new());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let Some(args) = text.lines().next().and_then(|l| l.strip_prefix("# args: ")) else {
            continue;
        };
        ran += 1;
        let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
            .args(args.split_whitespace())
            .current_dir(dir)
            .env_remove("BACKSTOP_CONFIG")
            .env_remove("BACKSTOP_ADMIN_TOKEN")
            .output()
            .unwrap();
        let got = format!(
            "exit: {}\n--- stdout\n{}--- stderr\n{}",
            out.status.code().map_or("signal".into(), |c| c.to_string()),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let golden = file.with_extension("golden");
        if update {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if got != expected {
            failures.push(format!(
                "{}:\n--- got\n{got}--- expected\n{expected}",
                file.display()
            ));
        }
    }
    (ran, failures)
}

#[test]
fn validate_output_matches_the_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/validate");
    let (ran, failures) = check_dir(&dir);
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
