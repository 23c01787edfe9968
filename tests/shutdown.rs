//! Graceful shutdown: in-flight requests finish, new connections are refused, readiness drops.

mod support;

use std::time::Duration;

use support::{eventually, get, proxy, simple_config, try_get, Backend, Behaviour};

/// A slow request that is in flight when shutdown starts still gets its 200; afterwards the
/// listener refuses connections.
#[tokio::test]
async fn shutdown_finishes_in_flight_requests_then_refuses() {
    let backend = Backend::start(Behaviour::Delay(Duration::from_millis(500))).await;
    let app = proxy(&simple_config(&[&backend], "")).await;
    let addr = app.proxy_addr();
    let in_flight = tokio::spawn(get(format!("http://{addr}/slow")));
    eventually(Duration::from_secs(5), || async { backend.hits() == 1 }).await;
    app.shutdown().await;
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200, "the in-flight request completed");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "new connections are refused"
    );
}

/// The real binary: SIGTERM while a request is in flight; readiness turns 503 and new
/// connections are refused during the drain, the request completes, and the process exits 0.
#[tokio::test]
async fn binary_drains_on_sigterm_and_exits_zero() {
    let backend = Backend::start(Behaviour::Delay(Duration::from_millis(800))).await;
    let dir = std::env::temp_dir().join(format!("backstop-shutdown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\ndrain_timeout: 10s\n{}",
        simple_config(&[&backend], "")
    );
    std::fs::write(&file, yaml).unwrap();
    let mut bin = support::Binary::start(&file).await;
    let (proxy, admin) = (bin.proxy.clone(), bin.admin.clone());
    let in_flight = tokio::spawn(get(format!("http://{proxy}/slow")));
    eventually(Duration::from_secs(5), || async { backend.hits() == 1 }).await;
    bin.signal("-TERM");
    eventually(Duration::from_secs(5), || {
        let admin = admin.clone();
        async move { get(format!("http://{admin}/readyz")).await.status == 503 }
    })
    .await;
    eventually(Duration::from_secs(5), || {
        let proxy = proxy.clone();
        async move { tokio::net::TcpStream::connect(proxy).await.is_err() }
    })
    .await;
    assert!(
        !in_flight.is_finished(),
        "new connections were refused while the slow request was still in flight"
    );
    assert_eq!(in_flight.await.unwrap().status, 200);
    let exit = tokio::time::timeout(Duration::from_secs(10), bin.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

/// A request that outlasts `drain_timeout` is cut: the process says how many it cut and exits
/// with code 3, not 0.
#[tokio::test]
async fn a_drain_that_cuts_requests_exits_3_and_says_how_many() {
    let backend = Backend::start(Behaviour::Silent).await;
    let dir = std::env::temp_dir().join(format!("backstop-drain-cut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\ndrain_timeout: 300ms\n{}",
        simple_config(&[&backend], "    timeout: 30s\n")
    );
    std::fs::write(&file, yaml).unwrap();
    let mut bin = support::Binary::start(&file).await;
    let proxy = bin.proxy.clone();
    let stuck = tokio::spawn(try_get(format!("http://{proxy}/stuck")));
    eventually(Duration::from_secs(5), || async { backend.hits() == 1 }).await;
    bin.signal("-TERM");
    let exit = tokio::time::timeout(Duration::from_secs(10), bin.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(3), "exit status {exit:?}");
    assert!(
        stuck.await.unwrap().is_none(),
        "the cut request got no answer"
    );
    eventually(Duration::from_secs(5), || async {
        bin.logged(|l| l["cut"] == 1 && l["level"] == "ERROR")
    })
    .await;
}
