//! Installing backstop like a real tool: the release tarball built by `scripts/release` holds a
//! binary that validates the config packed beside it, and deploy/Dockerfile keeps its
//! essentials (checked here as a lint, for machines without a Docker engine).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("backstop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                found.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    found.sort();
    found
}

/// `scripts/release` (reusing the test build of the binary) packs the binary, the reference
/// config, the dashboards, the rules and the README; unpacked elsewhere, the binary validates
/// the packed config and prints the packed rules.
#[test]
fn release_tarball_unpacks_to_a_working_install() {
    let dist = temp_dir("dist");
    let out = Command::new(repo().join("scripts/release"))
        .env("BACKSTOP_BIN", env!("CARGO_BIN_EXE_backstop"))
        .env("DIST_DIR", &dist)
        .env("GZIP_LEVEL", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tarball = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let file = tarball.file_name().unwrap().to_str().unwrap().to_owned();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        file.starts_with(&format!("backstop-{version}-")) && file.ends_with(".tar.gz"),
        "{file}"
    );
    let name = file.trim_end_matches(".tar.gz");
    assert!(
        name.contains("-linux-") || name.contains("-darwin"),
        "{name}: target triple"
    );

    let unpacked = temp_dir("unpacked");
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(status.success());
    let root = unpacked.join(name);
    let files = files_under(&root);
    for want in [
        "bin/backstop",
        "config/backstop.yaml",
        "config/demo.yaml",
        "dashboards/backstop-overview.json",
        "dashboards/backstop-slo.json",
        "prometheus/backstop-rules.yaml",
        "README.md",
    ] {
        assert!(files.iter().any(|f| f == want), "{want} not in {files:?}");
    }
    if repo().join("LICENSE").exists() {
        assert!(files.iter().any(|f| f == "LICENSE"));
    }

    let bin = root.join("bin/backstop");
    let validate = Command::new(&bin)
        .args(["validate", "-c", "config/backstop.yaml"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    assert!(String::from_utf8_lossy(&validate.stdout).contains("valid ("));
    let rules = Command::new(&bin)
        .args(["rules", "-c", "config/backstop.yaml"])
        .current_dir(&root)
        .output()
        .unwrap();
    let packed = std::fs::read_to_string(root.join("prometheus/backstop-rules.yaml")).unwrap();
    assert!(packed.contains("BackstopSLOBurnRatePage"), "{packed}");
    assert_eq!(String::from_utf8_lossy(&rules.stdout), packed);
    let print = Command::new(&bin)
        .args(["demo", "--print-config"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&print.stdout),
        std::fs::read_to_string(root.join("config/demo.yaml")).unwrap(),
        "the built-in demo config is the packed one"
    );
    std::fs::remove_dir_all(&dist).unwrap();
    std::fs::remove_dir_all(&unpacked).unwrap();
}

/// One Dockerfile instruction with its arguments (continuation lines joined).
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        joined.push(std::mem::take(&mut current));
    }
    joined
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (op, args) = l.trim().split_once(char::is_whitespace).unwrap_or((&l, ""));
            (op.to_ascii_uppercase(), args.trim().to_owned())
        })
        .collect()
}

/// A lint of deploy/Dockerfile's essentials (not hadolint): multi-stage with pinned base tags,
/// the runtime stage runs as a non-root user, copies the binary and the reference config,
/// exposes the proxy and admin ports of that config, and has a HEALTHCHECK on /readyz; the
/// builder copies every file the source embeds; the build context leaves target/ out.
#[test]
fn dockerfile_lint() {
    let text = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let all = instructions(&text);
    let froms: Vec<&String> = all
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, a)| a)
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    for from in &froms {
        let image = from.split_whitespace().next().unwrap();
        let tag = image.split_once(':').map(|(_, t)| t).unwrap_or("");
        let pinned = !tag.is_empty()
            && tag != "latest"
            && tag.chars().next().is_some_and(|c| c.is_ascii_digit())
            && tag
                .split(['-', '.'])
                .take_while(|p| p.parse::<u32>().is_ok())
                .count()
                >= 2;
        assert!(
            pinned || image.contains("@sha256:"),
            "{image}: pin the base image to a version (x.y at least) or a digest"
        );
    }
    let last_from = all.iter().rposition(|(op, _)| op == "FROM").unwrap();
    let runtime = &all[last_from..];
    let user = runtime
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, a)| a.as_str())
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "USER {user} is root");
    let copies: Vec<&str> = runtime
        .iter()
        .filter(|(op, _)| op == "COPY")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(copies
        .iter()
        .any(|c| c.starts_with("--from=") && c.contains("/usr/local/bin/backstop")));
    assert!(
        copies
            .iter()
            .any(|c| c.starts_with("config/backstop.yaml /etc/backstop/backstop.yaml")),
        "the image carries the reference config where CMD reads it: {copies:?}"
    );
    let config = backstop::config::load(&repo().join("config/backstop.yaml")).unwrap();
    let exposed: Vec<u16> = runtime
        .iter()
        .filter(|(op, _)| op == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace().filter_map(|p| p.parse().ok()))
        .collect();
    for port in [config.listen.port(), config.admin_listen.port()] {
        assert!(exposed.contains(&port), "EXPOSE {port}: {exposed:?}");
    }
    let health = runtime
        .iter()
        .find(|(op, _)| op == "HEALTHCHECK")
        .map(|(_, a)| a.as_str())
        .expect("a HEALTHCHECK");
    assert!(
        health.contains("/readyz") && health.contains(&format!("/{}", config.admin_listen.port())),
        "{health}"
    );
    let cmd = runtime
        .iter()
        .find(|(op, _)| op == "CMD")
        .map(|(_, a)| a.as_str())
        .unwrap();
    assert!(cmd.contains("/etc/backstop/backstop.yaml"), "{cmd}");

    // The builder stage copies what include_str! embeds (the demo config).
    let build = &all[..last_from];
    assert!(
        build
            .iter()
            .any(|(op, a)| op == "COPY" && a.starts_with("config/demo.yaml")),
        "src/demo embeds config/demo.yaml: the builder must copy it"
    );
    let ignore = std::fs::read_to_string(repo().join("deploy/Dockerfile.dockerignore")).unwrap();
    let lines: Vec<&str> = ignore.lines().map(str::trim).collect();
    assert!(
        lines.contains(&"*")
            && !lines
                .iter()
                .any(|l| l.contains("target") && l.starts_with('!')),
        "the build context leaves target/ out"
    );
}
