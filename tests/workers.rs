//! `run --worker-model per-core`: several accept loops on one listening socket, each on its
//! own current-thread runtime, sharing one connection limit.

mod support;

use std::time::Duration;

use support::{eventually, get, read_message, sample, simple_config, Backend, Behaviour};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn config_file(name: &str, server: &str, backend: &Backend) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("backstop-workers-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\ndrain_timeout: 5s\n{server}{}",
        simple_config(&[backend], "")
    );
    std::fs::write(&file, yaml).unwrap();
    file
}

/// One request on a new connection; the status line's code.
async fn one_request(proxy: &str) -> Option<String> {
    let mut stream = TcpStream::connect(proxy).await.ok()?;
    stream
        .write_all(b"GET /w HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    let head = read_message(&mut stream, &mut buf).await?;
    head.split(' ').nth(1).map(str::to_owned)
}

/// Every connection is served, the backend sees each request once, and SIGTERM drains every
/// worker and exits 0.
#[tokio::test]
async fn per_core_workers_serve_every_connection_and_drain() {
    let backend = Backend::start(Behaviour::Echo).await;
    let file = config_file("serve", "", &backend);
    let mut bin =
        support::Binary::start_with(&file, &["--workers", "2", "--worker-model", "per-core"]).await;
    let proxy = bin.proxy.clone();
    let answers = tokio::time::timeout(Duration::from_secs(20), async {
        let mut answers = Vec::new();
        for _ in 0..200 {
            answers.push(one_request(&proxy).await);
        }
        answers
    })
    .await
    .expect("every connection was answered");
    let ok = answers
        .iter()
        .filter(|a| a.as_deref() == Some("200"))
        .count();
    assert_eq!(ok, 200, "answers: {answers:?}");
    assert_eq!(backend.hits(), 200);
    bin.signal("-TERM");
    let exit = tokio::time::timeout(Duration::from_secs(10), bin.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

/// `server.max_connections` is the process's limit, not each worker's: with a limit of 4 and
/// two workers, four open connections saturate the listener.
#[tokio::test]
async fn per_core_workers_share_one_connection_limit() {
    let backend = Backend::start(Behaviour::Echo).await;
    let file = config_file("limit", "server:\n  max_connections: 4\n", &backend);
    let bin =
        support::Binary::start_with(&file, &["--workers", "2", "--worker-model", "per-core"]).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(&bin.proxy).await.unwrap();
        stream
            .write_all(b"GET /w HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let head = read_message(&mut stream, &mut buf).await.unwrap();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        open.push(stream);
    }
    let admin = bin.admin.clone();
    eventually(Duration::from_secs(5), || {
        let admin = admin.clone();
        async move {
            let text = get(format!("http://{admin}/metrics")).await.body;
            let text = String::from_utf8_lossy(&text).into_owned();
            sample(&text, "backstop_connections_open") == Some(4.0)
                && sample(&text, "backstop_connections_saturated_total").unwrap_or(0.0) >= 1.0
        }
    })
    .await;
    drop(open);
}
