//! `protocol: http2` upstreams: h2c and TLS with ALPN `h2` against real HTTP/2 servers on
//! loopback that count what they accept, plus a hand-written HTTP/2 server (frames on a raw
//! socket) that refuses a stream or sends GOAWAY exactly when a test needs it.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{eventually, get, proxy, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What an HTTP/2 test server saw.
#[derive(Default)]
struct Seen {
    /// TCP connections accepted.
    accepted: AtomicUsize,
    /// Connections that ended.
    closed: AtomicUsize,
    /// Requests the application handled, with their HTTP version, method and body.
    requests: Mutex<Vec<(Version, String, Bytes)>>,
    /// Requests that arrived so far, and a wake-up when that changes.
    arrived: AtomicUsize,
    changed: Notify,
    /// Each request waits until this many arrived (proves they were concurrent), for at
    /// most 5s.
    hold_until: AtomicUsize,
}

impl Seen {
    fn requests(&self) -> Vec<(Version, String, Bytes)> {
        self.requests.lock().unwrap().clone()
    }
}

/// SETTINGS_MAX_CONCURRENT_STREAMS of the servers unless a test says otherwise.
const PLAIN: u32 = 200;

type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

async fn handle(
    seen: Arc<Seen>,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.requests
        .lock()
        .unwrap()
        .push((parts.version, parts.method.to_string(), body.clone()));
    seen.arrived.fetch_add(1, Ordering::SeqCst);
    seen.changed.notify_waiters();
    // The server's own behaviour (wait for company), bounded; not a wait in the test.
    let enough = || seen.arrived.load(Ordering::SeqCst) >= seen.hold_until.load(Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while !enough() {
            let changed = seen.changed.notified();
            if enough() {
                break;
            }
            changed.await;
        }
    })
    .await;
    let text = format!(
        "{:?} {} {} authority={}",
        parts.version,
        parts.method,
        String::from_utf8_lossy(&body),
        parts.uri.authority().map_or("", |a| a.as_str())
    );
    if parts.uri.path() == "/stall" {
        // One piece of the body, then nothing: the server's behaviour, not a test wait.
        let piece = Ok(hyper::body::Frame::data(Bytes::from_static(b"partial")));
        let frames = futures_util::StreamExt::chain(
            futures_util::stream::iter([piece]),
            futures_util::stream::pending(),
        );
        return Ok(Response::new(
            http_body_util::StreamBody::new(frames).boxed_unsync(),
        ));
    }
    Ok(Response::new(Full::new(Bytes::from(text)).boxed_unsync()))
}

/// Serves one accepted connection as HTTP/2 and counts its end.
async fn serve_h2<IO>(io: IO, seen: Arc<Seen>, max_streams: u32)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let s = seen.clone();
    let svc = service_fn(move |req| handle(s.clone(), req));
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(max_streams)
        .serve_connection(TokioIo::new(io), svc)
        .await;
    seen.closed.fetch_add(1, Ordering::SeqCst);
}

/// An h2c (prior knowledge) server on loopback.
async fn h2c_server(max_streams: u32) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            s.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_h2(stream, s.clone(), max_streams));
        }
    });
    (addr, seen)
}

/// A TLS server with a certificate for `name`; with `h2`, it offers ALPN h2 and speaks
/// HTTP/2, else it knows no ALPN and speaks HTTP/1.1 only. Returns the CA file to trust.
async fn tls_server(name: &str, h2: bool) -> (SocketAddr, Arc<Seen>, std::path::PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let ca = std::env::temp_dir().join(format!(
        "backstop-h2-ca-{}-{}.pem",
        std::process::id(),
        if h2 { "h2" } else { "h1" }
    ));
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    if h2 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            s.accepted.fetch_add(1, Ordering::SeqCst);
            let (acceptor, s) = (acceptor.clone(), s.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                if h2 {
                    serve_h2(tls, s, PLAIN).await;
                } else {
                    let svc = service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                }
            });
        }
    });
    (addr, seen, ca)
}

fn config(addr: SocketAddr, extra: &str) -> String {
    format!(
        "upstreams:\n  svc:\n    protocol: http2\n    endpoints: [{{ address: \"{addr}\" }}]\n{extra}routes:\n  - {{ name: all, upstream: svc }}\n"
    )
}

fn post(url: String, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(url)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// h2c with prior knowledge: a GET and a POST with a body arrive as HTTP/2 with the client's
/// host as `:authority`, on one connection.
#[tokio::test]
async fn h2c_upstream_serves_get_and_post() {
    let (addr, seen) = h2c_server(PLAIN).await;
    let app = proxy(&config(addr, "")).await;
    let url = format!("http://{}/things", app.proxy_addr());
    let answer = get(url.clone()).await;
    assert_eq!(answer.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    assert!(text.starts_with("HTTP/2.0 GET"), "{text}");
    assert!(
        text.ends_with(&format!("authority={}", app.proxy_addr())),
        "the client's Host became :authority: {text}"
    );
    let answer = send(post(url, "hello body")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        String::from_utf8_lossy(&answer.body)
            .split(" authority")
            .next(),
        Some("HTTP/2.0 POST hello body")
    );
    let requests = seen.requests();
    assert_eq!(requests.len(), 2, "each request delivered once");
    assert!(requests.iter().all(|(v, _, _)| *v == Version::HTTP_2));
    assert_eq!(requests[1].2, Bytes::from_static(b"hello body"));
    assert_eq!(
        seen.accepted.load(Ordering::SeqCst),
        1,
        "one connection, reused"
    );
}

/// Many concurrent requests share one connection: the server holds each until all 30 are in
/// flight at once, so they were multiplexed, and it accepted a single TCP connection.
#[tokio::test]
async fn concurrent_requests_share_one_connection() {
    let (addr, seen) = h2c_server(PLAIN).await;
    seen.hold_until.store(30, Ordering::SeqCst);
    let app = proxy(&config(addr, "")).await;
    let url = format!("http://{}/", app.proxy_addr());
    let calls: Vec<_> = (0..30).map(|_| tokio::spawn(get(url.clone()))).collect();
    for call in calls {
        assert_eq!(call.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(seen.requests().len(), 30);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
}

/// A server that allows 5 streams per connection: 20 concurrent requests spread over
/// exactly 4 connections (the limit is learned from the first connection), all delivered once.
#[tokio::test]
async fn a_full_connection_makes_the_pool_open_another() {
    let (addr, seen) = h2c_server(5).await;
    let app = proxy(&config(addr, "")).await;
    let url = format!("http://{}/", app.proxy_addr());
    // Two requests in a row: the second one's dispatch sees the server's SETTINGS.
    assert_eq!(get(url.clone()).await.status, StatusCode::OK);
    assert_eq!(get(url.clone()).await.status, StatusCode::OK);
    // Now each request is held until all 20 more arrived.
    seen.hold_until.store(22, Ordering::SeqCst);
    let calls: Vec<_> = (0..20).map(|_| tokio::spawn(get(url.clone()))).collect();
    for call in calls {
        assert_eq!(call.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(seen.requests().len(), 22, "every request delivered once");
    let accepted = seen.accepted.load(Ordering::SeqCst);
    assert_eq!(
        accepted, 4,
        "20 concurrent requests at 5 streams per connection"
    );
}

/// `idle_timeout` closes a connection that carried no stream for that long; the next request
/// opens a new one.
#[tokio::test]
async fn an_idle_connection_is_closed_after_idle_timeout() {
    let (addr, seen) = h2c_server(PLAIN).await;
    let app = proxy(&config(addr, "    idle_timeout: 200ms\n")).await;
    let url = format!("http://{}/", app.proxy_addr());
    assert_eq!(get(url.clone()).await.status, StatusCode::OK);
    eventually(Duration::from_secs(5), || async {
        seen.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(get(url).await.status, StatusCode::OK);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
}

/// With `max_idle_connections: 0` a connection closes as soon as its last stream ended.
#[tokio::test]
async fn max_idle_connections_zero_closes_after_each_use() {
    let (addr, seen) = h2c_server(PLAIN).await;
    let app = proxy(&config(addr, "    max_idle_connections: 0\n")).await;
    let url = format!("http://{}/", app.proxy_addr());
    for round in 1..=2 {
        assert_eq!(get(url.clone()).await.status, StatusCode::OK);
        eventually(Duration::from_secs(5), || async {
            seen.closed.load(Ordering::SeqCst) == round
        })
        .await;
    }
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
}

/// A response body that stalls past `read_timeout` is cut and counted; only its stream is
/// reset: the next request goes over the same connection.
#[tokio::test]
async fn a_stalled_body_is_cut_and_the_connection_stays() {
    let (addr, seen) = h2c_server(PLAIN).await;
    let app = proxy(&config(addr, "    read_timeout: 300ms\n")).await;
    let url = format!("http://{}/stall", app.proxy_addr());
    let started = tokio::time::Instant::now();
    let response = support::client()
        .request(Request::get(url).body(Full::default()).unwrap())
        .await
        .expect("headers arrive");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.into_body().collect().await.is_err(),
        "the body was cut"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let metrics = support::metrics(&app).await;
    let series =
        format!("backstop_upstream_read_timeouts_total{{endpoint=\"{addr}\",upstream=\"svc\"}}");
    assert_eq!(support::sample(&metrics, &series), Some(1.0), "{metrics}");
    assert_eq!(
        get(format!("http://{}/", app.proxy_addr())).await.status,
        StatusCode::OK
    );
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(seen.closed.load(Ordering::SeqCst), 0);
}

/// Active health checks go over HTTP/2 too.
#[tokio::test]
async fn health_checks_speak_http2() {
    let (addr, seen) = h2c_server(PLAIN).await;
    let check = "    health_check: { path: /health, interval: 50ms, timeout: 1s }\n";
    let _app = proxy(&config(addr, check)).await;
    eventually(Duration::from_secs(5), || async {
        seen.requests().len() >= 2
    })
    .await;
    assert!(seen
        .requests()
        .iter()
        .all(|(v, m, _)| *v == Version::HTTP_2 && m == "GET"));
    assert_eq!(
        seen.accepted.load(Ordering::SeqCst),
        1,
        "checks share the connection"
    );
}

/// A TLS server that accepts TCP but never answers the handshake: the connect timeout
/// bounds the wait, 502.
#[tokio::test]
async fn connect_timeout_bounds_a_silent_tls_handshake() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    let extra = "    connect_timeout: 200ms\n    tls: { sni: api.h2.test }\n";
    let app = proxy(&config(addr, extra)).await;
    let started = tokio::time::Instant::now();
    let answer = get(format!("http://{}/", app.proxy_addr())).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(accepted.load(Ordering::SeqCst) >= 1);
}

/// Over TLS the proxy offers ALPN h2 and the server speaks HTTP/2 to it.
#[tokio::test]
async fn tls_upstream_negotiates_h2_with_alpn() {
    let (addr, seen, ca) = tls_server("api.h2.test", true).await;
    let tls = format!(
        "    tls: {{ sni: api.h2.test, ca_file: \"{}\" }}\n",
        ca.display()
    );
    let app = proxy(&config(addr, &tls)).await;
    let url = format!("http://{}/", app.proxy_addr());
    let answer = send(post(url.clone(), "over tls")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&answer.body).starts_with("HTTP/2.0 POST over tls"));
    assert_eq!(get(url).await.status, StatusCode::OK);
    let requests = seen.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|(v, _, _)| *v == Version::HTTP_2));
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
}

/// A log sink for one test: tracing output of this thread (the test runtime is
/// single-threaded, so the proxy's tasks log here too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A TLS server that only speaks HTTP/1.1 (no ALPN) behind `protocol: http2`: 502, nothing
/// is sent to it, and the log says why.
#[tokio::test]
async fn an_http1_only_tls_server_is_a_clear_connect_failure() {
    let logs = Logs::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (addr, seen, ca) = tls_server("api.h1.test", false).await;
    let tls = format!(
        "    tls: {{ sni: api.h1.test, ca_file: \"{}\" }}\n",
        ca.display()
    );
    let app = proxy(&config(addr, &tls)).await;
    let answer = get(format!("http://{}/", app.proxy_addr())).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(
        seen.accepted.load(Ordering::SeqCst) >= 1,
        "the proxy connected"
    );
    assert!(
        seen.requests().is_empty(),
        "no request went to the HTTP/1.1 server"
    );
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        logged.contains("did not select HTTP/2 (ALPN h2)") && logged.contains(&addr.to_string()),
        "log: {logged}"
    );
}

/// The proxy refuses `upgrade: websocket` on a route to an HTTP/2 upstream, and an unknown
/// protocol, at config load.
#[test]
fn config_refuses_upgrades_to_http2_and_unknown_protocols() {
    let yaml = "upstreams:\n  svc:\n    protocol: http2\n    endpoints: [{ address: \"127.0.0.1:1\" }]\nroutes:\n  - { name: ws, upstream: svc, upgrade: websocket }\n";
    let error = backstop::config::load_str(yaml).unwrap_err().to_string();
    assert!(
        error.contains("routes[0].upgrade") && error.contains("protocol: http2"),
        "{error}"
    );
    let yaml = "upstreams:\n  svc:\n    protocol: h3\n    endpoints: [{ address: \"127.0.0.1:1\" }]\nroutes:\n  - { name: r, upstream: svc }\n";
    let error = backstop::config::load_str(yaml).unwrap_err().to_string();
    assert!(
        error.contains("upstreams.svc.protocol") && error.contains("http1 or http2"),
        "{error}"
    );
    let yaml = "upstreams:\n  svc:\n    protocol: http2\n    endpoints: [{ address: \"127.0.0.1:1\" }]\nroutes:\n  - { name: r, upstream: svc }\n";
    assert!(backstop::config::load_str(yaml).is_ok());
}

// ---- A hand-written HTTP/2 server: frames on a raw socket, for exact refusals and GOAWAYs.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const REFUSED_STREAM: u32 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// What the raw server does on its first connection.
#[derive(Clone, Copy, PartialEq)]
enum Trick {
    /// Resets the first stream with REFUSED_STREAM.
    RefuseFirst,
    /// Holds complete requests until this many arrived, answers the one with the lowest
    /// stream id, then sends GOAWAY with that id as the last stream and closes: the others
    /// were never processed.
    GoAwayAfter(usize),
}

/// What the raw server saw.
#[derive(Default)]
struct Raw {
    accepted: AtomicUsize,
    refused: AtomicUsize,
    /// Bodies of the requests it answered (processed), in order.
    processed: Mutex<Vec<Bytes>>,
}

async fn raw_server(trick: Trick) -> (SocketAddr, Arc<Raw>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let raw = Arc::new(Raw::default());
    let r = raw.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let first = r.accepted.fetch_add(1, Ordering::SeqCst) == 0;
            let r = r.clone();
            tokio::spawn(async move {
                let _ = raw_connection(stream, r, first.then_some(trick)).await;
            });
        }
    });
    (addr, raw)
}

/// One connection of the raw server; answers every complete request with 200 and its body.
async fn raw_connection(
    mut stream: TcpStream,
    raw: Arc<Raw>,
    trick: Option<Trick>,
) -> std::io::Result<()> {
    let mut preface = [0u8; 24];
    stream.read_exact(&mut preface).await?;
    assert_eq!(&preface, PREFACE);
    stream.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
    let mut bodies: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut held: Vec<u32> = Vec::new();
    let mut refused_one = false;
    loop {
        let mut head = [0u8; 9];
        stream.read_exact(&mut head).await?;
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await?;
        let complete = match kind {
            SETTINGS if flags & 1 == 0 => {
                stream.write_all(&frame(SETTINGS, 1, 0, &[])).await?;
                None
            }
            PING if flags & 1 == 0 => {
                stream.write_all(&frame(PING, 1, 0, &payload)).await?;
                None
            }
            HEADERS => {
                assert!(flags & END_HEADERS != 0, "no CONTINUATION support");
                let _ = (PADDED, PRIORITY);
                if trick == Some(Trick::RefuseFirst) && !refused_one {
                    refused_one = true;
                    raw.refused.fetch_add(1, Ordering::SeqCst);
                    let code = REFUSED_STREAM.to_be_bytes();
                    stream.write_all(&frame(RST_STREAM, 0, id, &code)).await?;
                    continue;
                }
                bodies.insert(id, Vec::new());
                (flags & END_STREAM != 0).then_some(id)
            }
            DATA => {
                let Some(body) = bodies.get_mut(&id) else {
                    continue; // a refused stream's body
                };
                let data = if flags & PADDED != 0 {
                    let pad = usize::from(payload[0]);
                    &payload[1..payload.len() - pad]
                } else {
                    &payload[..]
                };
                body.extend_from_slice(data);
                (flags & END_STREAM != 0).then_some(id)
            }
            _ => None,
        };
        let Some(id) = complete else {
            continue;
        };
        if let Some(Trick::GoAwayAfter(n)) = trick {
            held.push(id);
            if held.len() < n {
                continue;
            }
            let first = held.iter().copied().min().unwrap_or(id);
            answer(&mut stream, &raw, first, bodies.remove(&first)).await?;
            let mut goaway = first.to_be_bytes().to_vec();
            goaway.extend_from_slice(&0u32.to_be_bytes());
            stream.write_all(&frame(GOAWAY, 0, 0, &goaway)).await?;
            stream.shutdown().await?;
            return Ok(());
        }
        answer(&mut stream, &raw, id, bodies.remove(&id)).await?;
    }
}

/// 200 (`:status 200` is HPACK static index 8) with the request's body echoed.
async fn answer(
    stream: &mut TcpStream,
    raw: &Raw,
    id: u32,
    body: Option<Vec<u8>>,
) -> std::io::Result<()> {
    let body = Bytes::from(body.unwrap_or_default());
    raw.processed.lock().unwrap().push(body.clone());
    stream
        .write_all(&frame(HEADERS, END_HEADERS, id, &[0x88]))
        .await?;
    stream.write_all(&frame(DATA, END_STREAM, id, &body)).await
}

/// A stream refused with REFUSED_STREAM was not processed: the proxy sends the POST again on
/// a new connection; the server processed it exactly once and the client got its answer.
#[tokio::test]
async fn a_refused_stream_is_sent_again_and_delivered_once() {
    let (addr, raw) = raw_server(Trick::RefuseFirst).await;
    let app = proxy(&config(addr, "")).await;
    let answer = send(post(format!("http://{}/", app.proxy_addr()), "pay 10")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, Bytes::from_static(b"pay 10"));
    assert_eq!(
        raw.refused.load(Ordering::SeqCst),
        1,
        "the server refused once"
    );
    assert_eq!(
        *raw.processed.lock().unwrap(),
        vec![Bytes::from_static(b"pay 10")],
        "processed exactly once"
    );
    assert_eq!(
        raw.accepted.load(Ordering::SeqCst),
        2,
        "sent again on a new connection"
    );
}

/// GOAWAY: five POSTs share a connection; the server processes one, says GOAWAY with it as
/// its last stream and closes. The other four are sent again, together on one new connection;
/// later requests work; no POST is processed twice.
#[tokio::test]
async fn goaway_requests_are_sent_again_and_none_twice() {
    let (addr, raw) = raw_server(Trick::GoAwayAfter(5)).await;
    let app = proxy(&config(addr, "")).await;
    let url = format!("http://{}/", app.proxy_addr());
    let bodies = ["one", "two", "three", "four", "five"];
    let calls: Vec<_> = bodies
        .iter()
        .map(|b| tokio::spawn(send(post(url.clone(), b))))
        .collect();
    for (call, body) in calls.into_iter().zip(bodies) {
        let answer = call.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{body}");
        assert_eq!(String::from_utf8_lossy(&answer.body), body);
    }
    assert_eq!(
        raw.accepted.load(Ordering::SeqCst),
        2,
        "the four re-sent requests shared one new connection"
    );
    for body in ["six", "seven"] {
        let answer = send(post(url.clone(), body)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(String::from_utf8_lossy(&answer.body), body);
    }
    let processed = raw.processed.lock().unwrap().clone();
    let mut unique = processed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        processed.len(),
        "no POST twice: {processed:?}"
    );
    assert_eq!(processed.len(), 7, "{processed:?}");
}
