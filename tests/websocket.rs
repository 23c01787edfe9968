//! HTTP/1.1 Upgrade (WebSocket) pass-through: a route with `upgrade: websocket` tunnels the
//! connection to the upstream after its 101; any other route refuses the upgrade with 400
//! `upgrade_not_allowed`. The tunnel holds a bulkhead slot for its whole life and closes after
//! the upstream's `read_timeout` without a byte either way; the client connection's own
//! `idle_timeout` no longer applies once the connection is a tunnel.
//!
//! The upstream here is a raw socket server: it answers an upgrade with 101, says "hello", and
//! then echoes every byte; it counts the requests and tunnels it saw, so the tests count at
//! the backend.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WITHIN: Duration = Duration::from_secs(10);
const HELLO: &[u8] = b"hello from upstream";

/// A raw HTTP/1.1 upstream that accepts WebSocket upgrades and echoes inside the tunnel.
#[derive(Clone)]
struct WsUpstream {
    addr: SocketAddr,
    /// Request heads received, lower-cased.
    heads: Arc<Mutex<Vec<String>>>,
    /// Tunnels opened (101 sent) and closed (EOF or error from the peer).
    opened: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl WsUpstream {
    async fn start() -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = WsUpstream {
            addr: listener.local_addr().unwrap(),
            heads: Arc::default(),
            opened: Arc::default(),
            closed: Arc::default(),
        };
        let u = upstream.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(u.clone().serve(stream));
            }
        });
        upstream
    }

    async fn serve(self, mut stream: TcpStream) {
        let Some((head, rest)) = read_head(&mut stream).await else {
            return;
        };
        let head = head.to_ascii_lowercase();
        self.heads.lock().unwrap().push(head.clone());
        if head.starts_with("get /deny") {
            let _ = stream
                .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 6\r\nconnection: close\r\n\r\ndenied")
                .await;
            return;
        }
        if !head.contains("\r\nupgrade: websocket") {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nplain",
                )
                .await;
            return;
        }
        let switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        if stream.write_all(switched).await.is_err() || stream.write_all(HELLO).await.is_err() {
            return;
        }
        self.opened.fetch_add(1, Ordering::SeqCst);
        let mut buf = rest;
        loop {
            if !buf.is_empty() && stream.write_all(&buf).await.is_err() {
                break;
            }
            buf.resize(16 * 1024, 0);
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.truncate(n),
            }
        }
        self.closed.fetch_add(1, Ordering::SeqCst);
    }

    fn requests(&self) -> usize {
        self.heads.lock().unwrap().len()
    }

    fn last_head(&self) -> String {
        self.heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

/// Reads up to the end of an HTTP head: (head, bytes read after it).
async fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = tokio::time::timeout(WITHIN, stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A client connection after its upgrade request was answered.
struct Client {
    stream: TcpStream,
    /// The response head, lower-cased.
    head: String,
    /// Bytes that arrived after the head and were not consumed yet.
    pending: Vec<u8>,
}

impl Client {
    /// Opens a connection to `app` and sends a WebSocket upgrade request for `path`.
    async fn upgrade(app: &backstop::App, path: &str) -> Client {
        let mut stream = TcpStream::connect(app.proxy_addr()).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: chat.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let (head, pending) = read_head(&mut stream).await.expect("a response head");
        Client {
            stream,
            head: head.to_ascii_lowercase(),
            pending,
        }
    }

    fn status(&self) -> u16 {
        self.head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    fn has_header(&self, line: &str) -> bool {
        self.head.contains(&format!("\r\n{line}\r\n"))
    }

    /// Reads exactly `n` bytes (within [`WITHIN`]).
    async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut out: Vec<u8> = self.pending.drain(..self.pending.len().min(n)).collect();
        let mut chunk = vec![0u8; 64 * 1024];
        while out.len() < n {
            let got = tokio::time::timeout(WITHIN, self.stream.read(&mut chunk))
                .await
                .expect("tunnel data in time")
                .expect("tunnel read");
            assert!(got > 0, "tunnel closed after {} of {n} bytes", out.len());
            out.extend_from_slice(&chunk[..got]);
        }
        self.pending = out.split_off(n);
        out
    }

    /// Sends `data` and expects it echoed back.
    async fn echo(&mut self, data: &[u8]) {
        let (mut read, mut write) = self.stream.split();
        let writer = async {
            write.write_all(data).await.unwrap();
        };
        let reader = async {
            let mut out: Vec<u8> = std::mem::take(&mut self.pending);
            let mut chunk = vec![0u8; 64 * 1024];
            while out.len() < data.len() {
                let got = tokio::time::timeout(WITHIN, read.read(&mut chunk))
                    .await
                    .expect("echo in time")
                    .expect("tunnel read");
                assert!(got > 0, "tunnel closed during the echo");
                out.extend_from_slice(&chunk[..got]);
            }
            out
        };
        let ((), out) = tokio::join!(writer, reader);
        assert!(out == data, "echo differs ({} bytes back)", out.len());
    }

    /// Whether the proxy closed the connection within `within` (EOF or reset).
    async fn closed_within(&mut self, within: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        tokio::time::timeout(within, async {
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }
}

fn config(upstream: &WsUpstream, upstream_extra: &str, server: &str, route_extra: &str) -> String {
    format!(
        "server:\n  header_read_timeout: 5s\n{server}upstreams:\n  chat:\n{upstream_extra}    endpoints:\n      - address: {}\nroutes:\n  - name: chat\n    upstream: chat\n{route_extra}",
        upstream.addr
    )
}

async fn in_flight(app: &backstop::App) -> Option<f64> {
    sample(
        &metrics(app).await,
        "backstop_upstream_in_flight{upstream=\"chat\"}",
    )
}

#[tokio::test]
async fn a_websocket_upgrade_is_tunnelled_both_ways() {
    let upstream = WsUpstream::start().await;
    let app = proxy(&config(&upstream, "", "", "    upgrade: websocket\n")).await;
    let mut client = Client::upgrade(&app, "/chat").await;
    assert_eq!(client.status(), 101, "{}", client.head);
    assert!(client.has_header("upgrade: websocket"), "{}", client.head);
    assert!(client.has_header("connection: upgrade"), "{}", client.head);
    assert!(
        client.has_header("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{}",
        client.head
    );
    // The upstream saw the upgrade as the client sent it.
    let head = upstream.last_head();
    assert!(head.starts_with("get /chat http/1.1"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(
        head.contains("\r\nsec-websocket-key: dghlihnhbxbszsbub25jzq==\r\n"),
        "{head}"
    );
    assert_eq!(upstream.requests(), 1);
    // Upstream to client, then client to upstream and back, small and large.
    assert_eq!(client.read_exact(HELLO.len()).await, HELLO);
    client.echo(b"ping").await;
    let big: Vec<u8> = (0..512 * 1024).map(|i| (i % 251) as u8).collect();
    client.echo(&big).await;
    assert_eq!(upstream.opened.load(Ordering::SeqCst), 1);
    assert_eq!(
        in_flight(&app).await,
        Some(1.0),
        "the tunnel holds its slot"
    );
    // The client leaves: the upstream's side closes too, and the slot is freed.
    drop(client);
    eventually(WITHIN, || async {
        upstream.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    eventually(WITHIN, || async { in_flight(&app).await == Some(0.0) }).await;
}

#[tokio::test]
async fn an_upgrade_on_a_route_without_websocket_is_refused_before_the_upstream() {
    let upstream = WsUpstream::start().await;
    let app = proxy(&config(&upstream, "", "", "")).await;
    let client = Client::upgrade(&app, "/chat").await;
    assert_eq!(client.status(), 400, "{}", client.head);
    assert!(
        client.has_header("x-backstop-reason: upgrade_not_allowed"),
        "{}",
        client.head
    );
    assert_eq!(upstream.requests(), 0, "the upgrade reached the upstream");
    // The route itself works: plain requests get through.
    let plain = get(format!("http://{}/chat", app.proxy_addr())).await;
    assert_eq!(plain.status, 200);
    assert_eq!(&plain.body[..], b"plain");
    assert_eq!(upstream.requests(), 1);
    assert!(!upstream.last_head().contains("upgrade"));
}

#[tokio::test]
async fn a_refused_upgrade_passes_through_as_a_normal_response() {
    let upstream = WsUpstream::start().await;
    let app = proxy(&config(&upstream, "", "", "    upgrade: websocket\n")).await;
    let mut client = Client::upgrade(&app, "/deny").await;
    assert_eq!(client.status(), 403, "{}", client.head);
    assert_eq!(client.read_exact(6).await, b"denied");
    assert_eq!(upstream.requests(), 1);
    assert_eq!(upstream.opened.load(Ordering::SeqCst), 0);
    eventually(WITHIN, || async { in_flight(&app).await == Some(0.0) }).await;
}

#[tokio::test]
async fn the_bulkhead_counts_an_open_tunnel() {
    let upstream = WsUpstream::start().await;
    let app = proxy(&config(
        &upstream,
        "    max_concurrent_requests: 1\n",
        "",
        "    upgrade: websocket\n",
    ))
    .await;
    let mut first = Client::upgrade(&app, "/chat").await;
    assert_eq!(first.status(), 101, "{}", first.head);
    assert_eq!(first.read_exact(HELLO.len()).await, HELLO);
    first.echo(b"one").await;

    let second = Client::upgrade(&app, "/chat").await;
    assert_eq!(second.status(), 503, "{}", second.head);
    assert!(
        second.has_header("x-backstop-reason: upstream_overloaded"),
        "{}",
        second.head
    );
    assert_eq!(
        upstream.requests(),
        1,
        "the refused upgrade reached the upstream"
    );
    // Plain requests are refused as well while the tunnel is open.
    let plain = get(format!("http://{}/chat", app.proxy_addr())).await;
    assert_eq!(plain.status, 503);

    first.echo(b"still open").await;
    drop(first);
    eventually(WITHIN, || async { in_flight(&app).await == Some(0.0) }).await;
    let mut third = Client::upgrade(&app, "/chat").await;
    assert_eq!(third.status(), 101, "{}", third.head);
    assert_eq!(third.read_exact(HELLO.len()).await, HELLO);
    third.echo(b"three").await;
    assert_eq!(upstream.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_the_upstreams_read_timeout() {
    let upstream = WsUpstream::start().await;
    let app = proxy(&config(
        &upstream,
        "    read_timeout: 300ms\n",
        "",
        "    upgrade: websocket\n",
    ))
    .await;
    let mut client = Client::upgrade(&app, "/chat").await;
    assert_eq!(client.status(), 101, "{}", client.head);
    assert_eq!(client.read_exact(HELLO.len()).await, HELLO);
    client.echo(b"before").await;
    let quiet_since = tokio::time::Instant::now();
    assert!(
        client.closed_within(WITHIN).await,
        "an idle tunnel stayed open"
    );
    assert!(
        quiet_since.elapsed() >= Duration::from_millis(250),
        "closed after only {:?}",
        quiet_since.elapsed()
    );
    eventually(WITHIN, || async {
        upstream.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    eventually(WITHIN, || async { in_flight(&app).await == Some(0.0) }).await;
}

#[tokio::test]
async fn a_tunnel_outlives_the_client_connections_idle_timeout() {
    let upstream = WsUpstream::start().await;
    let app = proxy(&config(
        &upstream,
        "    read_timeout: 10s\n",
        "  idle_timeout: 200ms\n",
        "    upgrade: websocket\n",
    ))
    .await;
    let mut client = Client::upgrade(&app, "/chat").await;
    assert_eq!(client.status(), 101, "{}", client.head);
    assert_eq!(client.read_exact(HELLO.len()).await, HELLO);
    // Quiet for three times the connection's idle_timeout: the tunnel must stay.
    assert!(
        !client.closed_within(Duration::from_millis(600)).await,
        "the connection's idle timeout closed the tunnel"
    );
    client.echo(b"still here").await;
    assert_eq!(upstream.closed.load(Ordering::SeqCst), 0);
}

#[test]
fn upgrade_accepts_only_websocket() {
    let yaml = "listen: 127.0.0.1:0\nupstreams:\n  chat:\n    endpoints:\n      - address: 127.0.0.1:1\nroutes:\n  - name: chat\n    upstream: chat\n    upgrade: h2c\n";
    let error = backstop::config::load_str(yaml).expect_err("h2c is not accepted");
    let issues = error.issues();
    assert!(
        issues.iter().any(|i| i.starts_with("routes[0].upgrade: ")),
        "{issues:#?}"
    );
    let ok = yaml.replace("h2c", "websocket");
    let config = backstop::config::load_str(&ok).expect("websocket is accepted");
    assert!(config.routes[0].upgrade.is_some());
}

#[tokio::test]
async fn a_drain_closes_open_tunnels_at_once() {
    let upstream = WsUpstream::start().await;
    let yaml = format!(
        "drain_timeout: 30s\n{}",
        config(&upstream, "", "", "    upgrade: websocket\n")
    );
    let app = proxy(&yaml).await;
    let mut client = Client::upgrade(&app, "/chat").await;
    assert_eq!(client.status(), 101, "{}", client.head);
    assert_eq!(client.read_exact(HELLO.len()).await, HELLO);
    client.echo(b"before the drain").await;
    // Within a fraction of drain_timeout: the tunnel does not hold the shutdown.
    let report = tokio::time::timeout(Duration::from_secs(5), app.shutdown())
        .await
        .expect("the drain waited on an open tunnel");
    assert_eq!(report.cut, 0);
    assert!(client.closed_within(WITHIN).await, "the tunnel survived");
    eventually(WITHIN, || async {
        upstream.closed.load(Ordering::SeqCst) == 1
    })
    .await;
}
