//! The Kubernetes example stays true: its embedded config is valid and its probes, ports and
//! grace period match what backstop does.

use std::path::PathBuf;

fn yaml(file: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(file);
    serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The ConfigMap's backstop.yaml validates (with the token file present, as the Secret mounts it).
#[test]
fn configmap_holds_a_valid_config() {
    let map = yaml("configmap.yaml");
    let text = map["data"]["backstop.yaml"].as_str().unwrap();
    let token = std::env::temp_dir().join(format!("backstop-token-{}", std::process::id()));
    std::fs::write(&token, "t0ken").unwrap();
    let text = text.replace("/etc/backstop-token/token", token.to_str().unwrap());
    let config = backstop::config::load_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.listen.to_string(),
        "127.0.0.1:8080",
        "the app calls the sidecar on loopback"
    );
    assert_eq!(config.admin_listen.port(), 9901);
    assert_eq!(config.admin_token.as_deref(), Some("t0ken"));

    let deployment = yaml("deployment.yaml");
    let spec = &deployment["spec"]["template"]["spec"];
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > config.drain_timeout.as_secs(),
        "the pod is killed only after the drain"
    );
    let sidecar = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "backstop")
        .unwrap();
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(sidecar["ports"][0]["containerPort"], 9901);
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        "9901"
    );
    for file in ["service.yaml", "secret.yaml", "servicemonitor.yaml"] {
        assert!(yaml(file)["kind"].is_string(), "{file}");
    }
}
