//! `backstop validate -c FILE --against http://ADMIN`: the file against the config a running
//! backstop serves (`GET /admin/config`), on loopback.

use std::process::Command;

use backstop::metrics::Metrics;
use backstop::App;

const RUNNING: &str = "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nupstreams:\n  pg:\n    endpoints: [{ address: \"127.0.0.1:9\" }]\nroutes:\n  - name: pay\n    upstream: pg\n    timeout: 5s\n";

fn against(text: &str, admin: std::net::SocketAddr) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("backstop-against-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{:x}.yaml", text.len() * 31 + text.lines().count()));
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["validate", "-c"])
        .arg(&file)
        .args(["--against", &format!("http://{admin}")])
        .env_remove("BACKSTOP_ADMIN_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diffs_a_file_against_the_running_config() {
    let config = backstop::config::load_str(RUNNING).unwrap();
    let app = App::start(config, Metrics::new()).await.unwrap();
    let admin = app.admin_addr();

    let same = tokio::task::spawn_blocking(move || against(RUNNING, admin))
        .await
        .unwrap();
    assert_eq!(same.0, Some(0), "{}", same.1);
    assert!(same.1.starts_with("no changes"), "{}", same.1);

    let changed = RUNNING.replace("timeout: 5s", "timeout: 3s");
    let (code, text) = tokio::task::spawn_blocking(move || against(&changed, admin))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        text.trim(),
        "routes[pay].timeout_ms: 5000 -> 3000",
        "{text}"
    );

    let moved = RUNNING.replacen("listen: 127.0.0.1:0", "listen: 127.0.0.1:1", 1);
    let (code, text) = tokio::task::spawn_blocking(move || against(&moved, admin))
        .await
        .unwrap();
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("listen: 127.0.0.1:0 -> 127.0.0.1:1 (needs a restart)"),
        "{text}"
    );
    app.shutdown().await;
}
