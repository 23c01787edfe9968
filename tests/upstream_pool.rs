//! The upstream connection pool against raw-socket backends that misbehave at the connection
//! level: closing keep-alive connections right after answering, stalling mid-body. Deliveries
//! and connections are counted at the backend.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy)]
enum Mode {
    /// Answer 200 "ok" and close the connection at once, without `Connection: close`.
    CloseAfterAnswer,
    /// The same, but the close comes a little later, after the proxy may have reused it.
    CloseSoonAfterAnswer(Duration),
    /// Answer with keep-alive, headers and half the body, then stall for good.
    StallMidBody,
    /// Answer with keep-alive, an 8 MiB body (more than socket buffers hold).
    KeepAliveBig,
}

/// A raw HTTP/1.1 backend counting requests read whole and connections accepted.
#[derive(Clone)]
struct RawBackend {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl RawBackend {
    async fn start(mode: Mode) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = RawBackend {
            addr: listener.local_addr().unwrap(),
            requests: Arc::default(),
            connections: Arc::default(),
            closed: Arc::default(),
        };
        let b = backend.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                b.connections.fetch_add(1, Ordering::SeqCst);
                let b = b.clone();
                tokio::spawn(async move { b.serve(stream, mode).await });
            }
        });
        backend
    }

    async fn serve(&self, mut stream: TcpStream, mode: Mode) {
        let mut buf = Vec::new();
        loop {
            if read_message(&mut stream, &mut buf).await.is_none() {
                self.closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            self.requests.fetch_add(1, Ordering::SeqCst);
            match mode {
                Mode::CloseAfterAnswer => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    return;
                }
                Mode::CloseSoonAfterAnswer(delay) => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    // Simulated scheduling delay of a loaded server between its write and its
                    // close: the next request may arrive in between and is never read.
                    tokio::time::sleep_until(tokio::time::Instant::now() + delay).await;
                    return;
                }
                Mode::StallMidBody => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf.")
                        .await;
                    let mut sink = [0u8; 64];
                    // Stall until the proxy gives up and closes.
                    while let Ok(n) = stream.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                    self.closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Mode::KeepAliveBig => {
                    let body = vec![b'x'; 8 << 20];
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                    if stream.write_all(head.as_bytes()).await.is_err()
                        || stream.write_all(&body).await.is_err()
                    {
                        self.closed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
        }
    }
}

fn raw_config(backend: &RawBackend, upstream_extra: &str, route_extra: &str) -> String {
    format!(
        "upstreams:\n  svc:\n    endpoints:\n      - address: {}\n{upstream_extra}routes:\n  - name: all\n    upstream: svc\n{route_extra}",
        backend.addr
    )
}

/// An upstream that closes every keep-alive connection right after answering (no
/// `Connection: close`): POSTs without a key are delivered exactly once each, none fails and
/// none is marked "outcome unknown".
#[tokio::test]
async fn a_connection_the_upstream_closed_is_never_reused() {
    posts_survive_an_upstream_that_closes_after_answering(Mode::CloseAfterAnswer).await;
}

/// The same when the close comes a few milliseconds after the answer, as from a loaded
/// server: a POST written into that window is reset unread, and is sent again on a new
/// connection, still exactly once.
#[tokio::test]
async fn a_connection_closed_under_a_request_it_never_read_is_retried_fresh() {
    let delay = Duration::from_millis(5);
    posts_survive_an_upstream_that_closes_after_answering(Mode::CloseSoonAfterAnswer(delay)).await;
}

async fn posts_survive_an_upstream_that_closes_after_answering(mode: Mode) {
    let backend = RawBackend::start(mode).await;
    let app = proxy(&raw_config(&backend, "", "")).await;
    let url = format!("http://{}/pay", app.proxy_addr());
    let client = client();
    let mut failures = Vec::new();
    let mut sent = 0;
    // Waves of concurrent POSTs: a connection freed by one answer is wanted at once by the
    // next request, before the upstream's FIN has been noticed by its connection task.
    for round in 0..40 {
        let mut batch = Vec::new();
        for i in 0..25 {
            let req = Request::post(&url)
                .body(Full::new(Bytes::from(format!("payment {round}-{i}"))))
                .unwrap();
            batch.push(client.request(req));
            sent += 1;
        }
        for resp in futures_util::future::join_all(batch).await {
            let resp = resp.expect("the proxy answered");
            if resp.status() != StatusCode::OK || resp.headers().contains_key("x-backstop-outcome")
            {
                failures.push((resp.status(), resp.headers().clone()));
            }
            resp.into_body().collect().await.unwrap();
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(
        backend.requests.load(Ordering::SeqCst),
        sent,
        "each POST delivered exactly once"
    );
}

/// Headers followed by a body that stalls: the body is cut after `read_timeout`, the upstream
/// connection is closed, and the stall is counted.
#[tokio::test]
async fn a_stalled_response_body_is_cut_at_the_read_timeout() {
    let backend = RawBackend::start(Mode::StallMidBody).await;
    let app = proxy(&raw_config(&backend, "    read_timeout: 300ms\n", "")).await;
    let resp = client()
        .request(
            Request::get(format!("http://{}/", app.proxy_addr()))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the stalled body was cut");
    assert!(body.is_err(), "a cut body must not look complete");
    eventually(Duration::from_secs(5), || async {
        backend.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            &format!(
                "backstop_upstream_read_timeouts_total{{endpoint=\"{}\",upstream=\"svc\"}}",
                backend.addr
            )
        ),
        Some(1.0),
        "{m}"
    );
}

/// A response the client abandoned mid-body leaves its connection out of the pool; complete
/// responses leave theirs in it, up to max_idle_connections.
#[tokio::test]
async fn only_fully_read_connections_go_back_to_the_pool() {
    let backend = RawBackend::start(Mode::KeepAliveBig).await;
    let app = proxy(&raw_config(&backend, "    max_idle_connections: 2\n", "")).await;
    let url = format!("http://{}/", app.proxy_addr());
    // Sequential complete responses reuse one connection.
    for _ in 0..5 {
        assert_eq!(get(url.clone()).await.status, StatusCode::OK);
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
    // A client that reads the head and walks away.
    let mut raw = TcpStream::connect(app.proxy_addr()).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 64];
    let _ = raw.read(&mut first).await.unwrap();
    drop(raw);
    eventually(Duration::from_secs(5), || async {
        backend.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(get(url.clone()).await.status, StatusCode::OK);
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        2,
        "the abandoned connection was not reused"
    );
    // Ten at once: at most two stay idle.
    let all: Vec<_> = (0..10).map(|_| get(url.clone())).collect();
    for a in futures_util::future::join_all(all).await {
        assert_eq!(a.status, StatusCode::OK);
    }
    let pool = &app.snapshots().load().upstreams[0].client;
    assert!(pool.idle_count(0) <= 2, "{} idle", pool.idle_count(0));
}

/// The upstream answered and closed its side, the FIN is in our kernel, but the connection's
/// task has not run yet to notice: the pool must not lose the request. (The pool peeks at the
/// socket before reuse; hyper also finds the EOF before writing and hands the request back,
/// which the pool then sends on a new connection.)
///
/// A current-thread runtime makes it deterministic: the test blocks its only thread until the
/// backend has closed, so no task runs between the close and the next checkout.
#[tokio::test(flavor = "current_thread")]
async fn a_closed_idle_connection_is_detected_before_reuse() {
    use backstop::dataplane::pool::{Pool, PoolSettings};
    use backstop::dataplane::request_body::RequestBody;
    use std::io::{Read, Write};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            if got.is_empty() {
                continue;
            }
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            drop(stream);
            let _ = closed_tx.send(());
        }
    });
    let metrics = backstop::metrics::Metrics::new();
    let settings = PoolSettings {
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(60),
        max_idle: 8,
        read_timeout: Duration::from_secs(5),
    };
    let pool = Pool::new("svc", &[addr.to_string()], settings, None, &metrics);
    let request = || {
        Request::post("/pay")
            .header("host", addr.to_string())
            .body(RequestBody::Local {
                body: Full::new(Bytes::from_static(b"{}")),
            })
            .unwrap()
    };
    for i in 0..5 {
        let response = pool
            .send(0, request(), false)
            .await
            .expect("first use of a connection");
        response.into_body().collect().await.unwrap();
        assert_eq!(
            pool.idle_count(0),
            1,
            "round {i}: the connection went back to the pool"
        );
        // Block the runtime's only thread until the backend has closed: the connection's own
        // task cannot run in between.
        closed_rx.recv().unwrap();
        let response = pool
            .send(0, request(), false)
            .await
            .unwrap_or_else(|e| panic!("round {i}: a closed connection was reused: {e}"));
        response.into_body().collect().await.unwrap();
        closed_rx.recv().unwrap();
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        10,
        "each request delivered once"
    );
}
