//! Connections from clients that misbehave on purpose: silent, stuck mid-preface, idle, huge
//! headers, too many of them, and HTTP/2 streams opened and cancelled in a loop. Every
//! connection has a deadline, and what one client holds is bounded.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WITHIN: Duration = Duration::from_secs(10);

fn config(backend: &Backend, server: &str) -> String {
    format!("server:\n{server}{}", simple_config(&[backend], ""))
}

/// Reads until the peer closes; true if it did within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_connection_that_never_sends_a_byte_is_closed_at_the_header_timeout() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&config(&backend, "  header_read_timeout: 300ms\n")).await;
    let mut silent = TcpStream::connect(app.proxy_addr()).await.unwrap();
    assert!(
        closed_within(&mut silent, WITHIN).await,
        "silent connection still open"
    );
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            "backstop_connections_closed_total{reason=\"header_timeout\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn an_http2_preface_cut_in_the_middle_is_closed_at_the_header_timeout() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&config(&backend, "  header_read_timeout: 300ms\n")).await;
    let mut stuck = TcpStream::connect(app.proxy_addr()).await.unwrap();
    stuck.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(
        closed_within(&mut stuck, WITHIN).await,
        "half a preface kept the connection"
    );
    // A whole preface and nothing else: the first request never comes.
    let mut quiet = TcpStream::connect(app.proxy_addr()).await.unwrap();
    quiet
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(
        closed_within(&mut quiet, WITHIN).await,
        "preface without a request kept the connection"
    );
}

#[tokio::test]
async fn a_slow_request_head_is_cut_but_a_prompt_one_is_served() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&config(&backend, "  header_read_timeout: 400ms\n")).await;
    let mut slow = TcpStream::connect(app.proxy_addr()).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, WITHIN).await,
        "slowloris head kept the connection"
    );
    let answer = get(format!("http://{}/", app.proxy_addr())).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn idle_keep_alive_connections_close_at_the_idle_timeout_not_the_header_timeout() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&config(
        &backend,
        "  header_read_timeout: 5s\n  idle_timeout: 300ms\n",
    ))
    .await;
    let mut conn = TcpStream::connect(app.proxy_addr()).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    assert!(
        closed_within(&mut conn, WITHIN).await,
        "idle HTTP/1.1 connection kept"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed by the header timeout, not the idle timeout"
    );
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn idle_http2_connections_get_a_goaway_at_the_idle_timeout() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&config(&backend, "  idle_timeout: 300ms\n")).await;
    let tcp = TcpStream::connect(app.proxy_addr()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get(format!("http://{}/", app.proxy_addr()))
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    tokio::time::timeout(WITHIN, conn)
        .await
        .expect("idle HTTP/2 connection closed")
        .unwrap()
        .ok();
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            "backstop_connections_closed_total{reason=\"idle_timeout\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn request_heads_beyond_the_limit_get_431() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&config(&backend, "  max_request_headers_bytes: 16384\n")).await;
    let url = format!("http://{}/", app.proxy_addr());
    let big = "x".repeat(4000);
    let mut req = Request::get(&url);
    for i in 0..8 {
        req = req.header(format!("x-big-{i}"), &big);
    }
    let answer = send(req.body(Full::default()).unwrap()).await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let ok = Request::get(&url).header("x-fits", "x".repeat(8000));
    assert_eq!(
        send(ok.body(Full::default()).unwrap()).await.status,
        StatusCode::OK
    );
    assert_eq!(
        backend.hits(),
        1,
        "the oversized request never went upstream"
    );
}

#[tokio::test]
async fn default_head_limit_refuses_hundreds_of_kilobytes_of_headers() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&simple_config(&[&backend], "")).await;
    let mut req = Request::get(format!("http://{}/", app.proxy_addr()));
    let big = "y".repeat(8000);
    for i in 0..48 {
        req = req.header(format!("x-big-{i}"), &big);
    }
    let answer = send(req.body(Full::default()).unwrap()).await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn at_the_connection_limit_new_clients_wait_and_admin_stays_reachable() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&config(
        &backend,
        "  max_connections: 4\n  header_read_timeout: 1s\n",
    ))
    .await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(app.proxy_addr()).await.unwrap());
    }
    // The listener is full: admin health still answers at once.
    let health = tokio::time::timeout(
        Duration::from_secs(2),
        get(format!("http://{}/healthz", app.admin_addr())),
    )
    .await
    .expect("healthz answers while the proxy listener is saturated");
    assert_eq!(health.status, StatusCode::OK);
    // A real client is served once the silent ones are cut by their deadline.
    let answer = tokio::time::timeout(WITHIN, get(format!("http://{}/", app.proxy_addr())))
        .await
        .expect("served after the silent connections were cut");
    assert_eq!(answer.status, StatusCode::OK);
    let m = metrics(&app).await;
    assert_eq!(sample(&m, "backstop_connections_limit"), Some(4.0));
    assert!(sample(&m, "backstop_connections_saturated_total").unwrap_or(0.0) >= 1.0);
}

#[tokio::test]
async fn cancelling_http2_streams_in_a_loop_earns_a_goaway() {
    let backend = Backend::start(Behaviour::Delay(Duration::from_secs(5))).await;
    let app = proxy(&simple_config(&[&backend], "")).await;
    let tcp = TcpStream::connect(app.proxy_addr()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let mut conn = tokio::spawn(conn);
    let url = format!("http://{}/", app.proxy_addr());
    let mut rounds = 0;
    let closed = loop {
        rounds += 1;
        assert!(
            rounds <= 20,
            "no GOAWAY after {rounds} rounds of 50 cancelled streams"
        );
        let mut pending = Vec::new();
        for _ in 0..50 {
            if send.ready().await.is_err() {
                break;
            }
            let req = Request::get(&url).body(Full::<Bytes>::default()).unwrap();
            pending.push(send.send_request(req));
        }
        // The attack itself, not a wait for a condition: hold the streams open for 30 ms (as
        // in the reported rapid-reset run), then cancel them all (RST_STREAM CANCEL).
        let wait = tokio::time::sleep(Duration::from_millis(30));
        tokio::pin!(wait);
        tokio::select! {
            _ = &mut wait => {}
            _ = &mut conn => break true,
        }
        drop(pending);
        if send.is_closed() {
            break true;
        }
    };
    assert!(closed);
    assert!(rounds <= 5, "took {rounds} rounds");
    eventually(WITHIN, || async {
        sample(
            &metrics(&app).await,
            "backstop_connections_closed_total{reason=\"premature_resets\"}",
        ) == Some(1.0)
    })
    .await;
    assert!(
        backend.hits() <= 250,
        "backend saw {} requests",
        backend.hits()
    );
}

#[tokio::test]
async fn http2_streams_are_capped_across_connections() {
    let backend = Backend::start(Behaviour::Delay(Duration::from_millis(500))).await;
    let app = proxy(&config(&backend, "  max_concurrent_streams: 6\n")).await;
    let url = format!("http://{}/", app.proxy_addr());
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let tcp = TcpStream::connect(app.proxy_addr()).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        for _ in 0..6 {
            let mut send = send.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                send.ready().await.unwrap();
                let req = Request::get(url).body(Full::<Bytes>::default()).unwrap();
                let resp = send.send_request(req).await.unwrap();
                let status = resp.status();
                let reason = resp
                    .headers()
                    .get("x-backstop-reason")
                    .map(|v| v.to_str().unwrap().to_owned());
                (status, reason)
            }));
        }
    }
    let mut refused = 0;
    for t in tasks {
        let (status, reason) = t.await.unwrap();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(reason.as_deref(), Some("too_many_streams"));
            refused += 1;
        } else {
            assert_eq!(status, StatusCode::OK);
        }
    }
    assert_eq!(refused + backend.hits(), 18);
    assert!(
        backend.hits() <= 6,
        "at most 6 streams at once, backend saw {} requests",
        backend.hits()
    );
}

#[tokio::test]
async fn a_silent_admin_connection_is_closed_too() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&config(&backend, "  header_read_timeout: 300ms\n")).await;
    let mut silent = TcpStream::connect(app.admin_addr()).await.unwrap();
    assert!(
        closed_within(&mut silent, WITHIN).await,
        "silent admin connection kept"
    );
    let health = get(format!("http://{}/healthz", app.admin_addr())).await;
    assert_eq!(health.status, StatusCode::OK);
}

/// The real binary with a 64-descriptor limit and 100 silent clients (more than the limit
/// allows, fewer than the kernel accept backlog holds): the derived connection
/// limit keeps descriptors for the admin listener, so /healthz still answers.
#[tokio::test]
async fn with_few_file_descriptors_silent_clients_cannot_starve_the_admin_listener() {
    use tokio::io::AsyncBufReadExt;
    let backend = Backend::start(Behaviour::Echo).await;
    let dir = std::env::temp_dir().join(format!("backstop-fds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n{}",
        simple_config(&[&backend], "")
    );
    std::fs::write(&file, yaml).unwrap();
    let command = format!(
        "ulimit -n 64 && exec '{}' run -c '{}' --log-format json",
        env!("CARGO_BIN_EXE_backstop"),
        file.display()
    );
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &command])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (proxy, admin) = loop {
        let line = tokio::time::timeout(WITHIN, lines.next_line())
            .await
            .expect("backstop logged its addresses")
            .unwrap()
            .expect("backstop is running");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "backstop is serving" {
            break (
                v["proxy"].as_str().unwrap().to_owned(),
                v["admin"].as_str().unwrap().to_owned(),
            );
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(&proxy).await.unwrap());
    }
    for _ in 0..5 {
        let health = tokio::time::timeout(
            Duration::from_secs(2),
            get(format!("http://{admin}/healthz")),
        )
        .await
        .expect("healthz answers while silent clients hold the proxy listener");
        assert_eq!(health.status, StatusCode::OK);
    }
    let m = get(format!("http://{admin}/metrics")).await;
    let m = String::from_utf8_lossy(&m.body).into_owned();
    assert_eq!(sample(&m, "backstop_connections_limit"), Some(16.0), "{m}");
    drop(silent);
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
