//! Correct under faults, as a payment team tries it: a maybe-delivered payment never moves to
//! another provider, "outcome unknown" survives later plain failures, a client's own fault is
//! never blamed on the partner, keep-alive connections survive early answers, and replay
//! buffering is bounded across requests. Deliveries are counted at the backend.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn keyed_post(url: &str, key: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(b"{\"amount\":100}")))
        .unwrap()
}

const KEYED_RETRY: &str = "    retry:\n      attempts: 3\n      on: [connect-failure, reset, 502, 503]\n      non_idempotent: idempotency-key\n      backoff: { base: 1ms, max: 2ms }\n      budget: { min_per_second: 100 }\n";

/// A keyed POST reset after the primary read it must not go to the failover provider.
#[tokio::test]
async fn a_maybe_delivered_payment_never_moves_to_another_provider() {
    let primary = Backend::start(Behaviour::Reset).await;
    let secondary = Backend::start(Behaviour::Echo).await;
    let yaml = format!(
        "upstreams:\n  pg-a:\n    endpoints: [{{ address: \"{}\" }}]\n  pg-b:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - name: pay\n    upstream: pg-a\n    failover: [pg-b]\n{KEYED_RETRY}",
        primary.addr, secondary.addr
    );
    let app = proxy(&yaml).await;
    let answer = send(keyed_post(
        &format!("http://{}/pay", app.proxy_addr()),
        "k-1",
    ))
    .await;
    assert_eq!(secondary.hits(), 0, "the second provider saw the key");
    assert!(primary.hits() >= 1);
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.header("x-backstop-outcome"), "unknown");
    // A request that was never written still fails over.
    let down = closed_port().await;
    let yaml = format!(
        "upstreams:\n  pg-a:\n    endpoints: [{{ address: \"{down}\" }}]\n  pg-b:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - name: pay\n    upstream: pg-a\n    failover: [pg-b]\n{KEYED_RETRY}",
        secondary.addr
    );
    let app = proxy(&yaml).await;
    let answer = send(keyed_post(
        &format!("http://{}/pay", app.proxy_addr()),
        "k-2",
    ))
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(secondary.hits(), 1);
}

/// Nor to a lower-priority group of the same upstream.
#[tokio::test]
async fn a_maybe_delivered_payment_never_moves_to_another_priority_group() {
    let primary = Backend::start(Behaviour::Reset).await;
    let standby = Backend::start(Behaviour::Echo).await;
    let yaml = format!(
        "upstreams:\n  pg:\n    endpoints:\n      - {{ address: \"{}\", priority: 0 }}\n      - {{ address: \"{}\", priority: 1 }}\nroutes:\n  - name: pay\n    upstream: pg\n{KEYED_RETRY}",
        primary.addr, standby.addr
    );
    let app = proxy(&yaml).await;
    let answer = send(keyed_post(
        &format!("http://{}/pay", app.proxy_addr()),
        "k-3",
    ))
    .await;
    assert_eq!(
        standby.hits(),
        0,
        "the standby group saw a maybe-delivered payment"
    );
    assert_eq!(
        primary.hits(),
        3,
        "retried on the same provider, with its key"
    );
    assert_eq!(answer.header("x-backstop-outcome"), "unknown");
}

/// Reset (maybe delivered) then a plain 503: the answer still says unknown.
#[tokio::test]
async fn outcome_unknown_survives_a_later_plain_failure() {
    let backend = Backend::start(Behaviour::Status(503)).await;
    backend.script(vec![Behaviour::Reset]);
    let app = proxy(&simple_config(&[&backend], KEYED_RETRY)).await;
    let answer = send(keyed_post(
        &format!("http://{}/pay", app.proxy_addr()),
        "k-4",
    ))
    .await;
    assert_eq!(backend.hits(), 3);
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.header("x-backstop-outcome"), "unknown");
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            "backstop_outcome_unknown_total{route=\"all\",upstream=\"svc\"}"
        ),
        Some(1.0)
    );
    // A plain 503 with nothing ambiguous before it is not unknown.
    let app = proxy(&simple_config(&[&backend], KEYED_RETRY)).await;
    let answer = send(keyed_post(
        &format!("http://{}/pay", app.proxy_addr()),
        "k-5",
    ))
    .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.header("x-backstop-outcome"), "");
}

/// Opens a raw connection and sends a POST head announcing `length` bytes, then `body`.
async fn raw_post(addr: std::net::SocketAddr, head_extra: &str, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /pay HTTP/1.1\r\nhost: a\r\n{head_extra}\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s
}

async fn read_status(s: &mut TcpStream) -> Option<u16> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf[len..]))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        len += n;
        let text = String::from_utf8_lossy(&buf[..len]);
        if text.contains("\r\n\r\n") {
            return text.get(9..12)?.parse().ok();
        }
    }
}

const CLIENT_FAULT_CONFIG: &str = "    circuit_breaker: { consecutive_failures: 2, open_for: 30s }\n    outlier_detection: { consecutive_failures: 2 }\n";

fn client_fault_app_config(backend: &Backend) -> String {
    format!(
        "server:\n  client_body_timeout: 300ms\nupstreams:\n  svc:\n    endpoints: [{{ address: \"{}\" }}]\n{CLIENT_FAULT_CONFIG}routes:\n  - name: pay\n    upstream: svc\nslos:\n  - name: pay\n    routes: [pay]\n    objective: 99%\n    sli: availability\n",
        backend.addr
    )
}

/// Clients that abort mid-body, send a malformed chunk or stall: 400/408 (or 499 in the log),
/// and the breaker, the SLO and the unknown counter see nothing.
#[tokio::test]
async fn client_body_faults_are_not_upstream_failures() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&client_fault_app_config(&backend)).await;
    for _ in 0..3 {
        // Malformed chunk.
        let mut s = raw_post(
            app.proxy_addr(),
            "transfer-encoding: chunked\r\n",
            b"5\r\nhello\r\nZZ\r\n",
        )
        .await;
        assert_eq!(read_status(&mut s).await, Some(400));
        // Stalls mid-body.
        let mut s = raw_post(app.proxy_addr(), "content-length: 100\r\n", b"partial").await;
        assert_eq!(read_status(&mut s).await, Some(408));
        // Aborts mid-body.
        let s = raw_post(app.proxy_addr(), "content-length: 100\r\n", b"partial").await;
        drop(s);
    }
    eventually(Duration::from_secs(5), || async {
        sample(
            &metrics(&app).await,
            "backstop_requests_total{method=\"POST\",route=\"pay\",status=\"499\",upstream=\"svc\"}",
        ) == Some(3.0)
    })
    .await;
    // The breaker stayed closed: a normal request goes through.
    let ok = send(keyed_post(&format!("http://{}/pay", app.proxy_addr()), "k")).await;
    assert_eq!(ok.status, StatusCode::OK);
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            "backstop_circuit_state{route=\"\",state=\"closed\",upstream=\"svc\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        sample(&m, "backstop_slo_events_total{result=\"bad\",slo=\"pay\"}").unwrap_or(0.0) == 0.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "backstop_outcome_unknown_total{route=\"pay\",upstream=\"svc\"}"
        )
        .unwrap_or(0.0)
            == 0.0
    );
    assert_eq!(
        sample(&m, &format!("backstop_upstream_attempts_total{{endpoint=\"{}\",result=\"error\",upstream=\"svc\"}}", backend.addr)),
        Some(0.0),
        "client faults are not attempt errors"
    );
    assert!(
        sample(
            &m,
            &format!(
                "backstop_endpoint_ejected{{endpoint=\"{}\",upstream=\"svc\"}}",
                backend.addr
            )
        )
        .unwrap_or(0.0)
            == 0.0
    );
}

/// After an early local answer to a POST with a body (429 here), the next request on the
/// same keep-alive connection is served.
#[tokio::test]
async fn keep_alive_survives_an_early_answer_to_a_post_with_a_body() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&simple_config(
        &[&backend],
        "    rate_limit: { rate: 1/m, burst: 0 }\n",
    ))
    .await;
    let mut s = TcpStream::connect(app.proxy_addr()).await.unwrap();
    let body = vec![b'x'; 20_000];
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let head = format!(
            "POST /pay HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        let status = read_response(&mut s).await;
        statuses.push(status);
    }
    assert_eq!(statuses, vec![Some(200), Some(429), Some(429)]);
}

/// Reads one whole response (content-length framed); its status, or None if the connection
/// broke.
async fn read_response(s: &mut TcpStream) -> Option<u16> {
    let head = tokio::time::timeout(Duration::from_secs(10), read_message(s, &mut Vec::new()))
        .await
        .ok()??;
    head.get(9..12)?.parse().ok()
}

/// A big unread body cannot be drained: the early answer says `Connection: close`.
#[tokio::test]
async fn an_undrainable_body_gets_connection_close() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&simple_config(
        &[&backend],
        "    rate_limit: { rate: 1/m, burst: 0 }\n",
    ))
    .await;
    assert_eq!(
        get(format!("http://{}/", app.proxy_addr())).await.status,
        200
    );
    let mut s = TcpStream::connect(app.proxy_addr()).await.unwrap();
    s.write_all(b"POST /pay HTTP/1.1\r\nhost: a\r\ncontent-length: 10000000\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 429"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
}

/// Replay buffers are bounded across requests: while one request holds the budget, another
/// is sent unbuffered, so its 503 is not retried.
#[tokio::test]
async fn replay_buffers_are_bounded_across_requests() {
    let backend = Backend::start(Behaviour::Status(503)).await;
    let yaml = format!(
        "server:\n  max_buffered_bytes: 100000\n{}",
        simple_config(
            &[&backend],
            "    retry:\n      attempts: 2\n      on: [503]\n      max_buffered_body: 80000\n      backoff: { base: 1ms, max: 2ms }\n      budget: { min_per_second: 100 }\n"
        )
    );
    let app = proxy(&yaml).await;
    // The first upload holds 80 000 bytes of budget while its body trickles in.
    let mut slow = raw_post(app.proxy_addr(), "content-length: 90000\r\n", b"start").await;
    eventually(Duration::from_secs(5), || async { backend.hits() == 1 }).await;
    // A second PUT fits no buffer: sent once, its 503 not retried.
    let put = Request::put(format!("http://{}/pay", app.proxy_addr()))
        .body(Full::new(Bytes::from(vec![b'y'; 30_000])))
        .unwrap();
    let answer = send(put).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend.hits(), 2, "the unbuffered request was not retried");
    slow.write_all(&vec![b'z'; 89_995]).await.unwrap();
    let _ = read_status(&mut slow).await;
    // With the budget free again, a request is buffered and retried.
    let put = Request::put(format!("http://{}/pay", app.proxy_addr()))
        .body(Full::new(Bytes::from(vec![b'y'; 30_000])))
        .unwrap();
    let before = backend.hits();
    send(put).await;
    assert_eq!(backend.hits() - before, 2);
}

/// Two Host headers, no Host on HTTP/1.1, or a Host that disagrees with the absolute URI:
/// 400, never forwarded. A transfer coding other than chunked: 501.
#[tokio::test]
async fn one_host_and_only_chunked() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&simple_config(&[&backend], "")).await;
    let cases: [(&[u8], u16); 4] = [
        (b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (
            b"GET http://a.example/ HTTP/1.1\r\nhost: b.example\r\n\r\n",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
    ];
    for (raw, expected) in cases {
        let mut s = TcpStream::connect(app.proxy_addr()).await.unwrap();
        s.write_all(raw).await.unwrap();
        assert_eq!(
            read_status(&mut s).await,
            Some(expected),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(backend.hits(), 0);
    // Absolute form with an agreeing Host is forwarded with that host.
    let mut s = TcpStream::connect(app.proxy_addr()).await.unwrap();
    s.write_all(b"GET http://a.example/x HTTP/1.1\r\nhost: a.example\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_status(&mut s).await, Some(200));
    assert_eq!(backend.last_headers()["host"], "a.example");
}

/// The upstream resets after reading only the head of a large POST: the 502 tells the client
/// not to reuse the connection (its unsent body is still in flight), and a well-behaved client
/// that follows `Connection: close` then gets served on a new connection.
#[tokio::test]
async fn an_upstream_reset_mid_body_closes_the_client_connection_cleanly() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1024];
                let _ = s.read(&mut buf).await;
                // Reset without reading the body.
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                drop(s);
            });
        }
    });
    let yaml = format!(
        "upstreams:\n  svc:\n    endpoints: [{{ address: \"{upstream}\" }}]\nroutes:\n  - name: pay\n    upstream: svc\n"
    );
    let app = proxy(&yaml).await;
    let mut s = TcpStream::connect(app.proxy_addr()).await.unwrap();
    let body = vec![b'x'; 4 << 20];
    let head = format!(
        "POST /pay HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let writer = tokio::spawn(async move {
        let _ = s.write_all(&body).await;
        s
    });
    let mut s = writer.await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 502"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
}
