//! Our own upstream connection pool: HTTP/1.1 connections per endpoint, on
//! `hyper::client::conn::http1`, or, for `protocol: http2` upstreams, a few multiplexed
//! HTTP/2 connections per endpoint (see [`multiplexed`]).
//!
//! Why not hyper-util's pooled client: retries need to know exactly whether a request was
//! written, and a pool must never hand out a connection the upstream already closed. Here:
//! - An idle connection is checked before reuse: closed by hyper, not ready, or idle longer
//!   than `idle_timeout` means it is dropped and the next one is tried. Then, right before the
//!   request's first byte is written, the socket is peeked at (nothing consumed): an EOF or
//!   stray bytes (the upstream half-closed it, or a TLS close_notify arrived) and nothing is
//!   written: the request fails as [`SendError::NotProcessed`] and the proxy sends it again on
//!   a new connection. One peek per reuse, as late as possible.
//! - A request that hyper hands back unsent (the connection turned out closed before a byte
//!   of it was written) is sent again on another connection: it was provably never delivered,
//!   whatever its method.
//! - A connection goes back to the pool only after its response body was read to the end; a
//!   body dropped early closes it, so a connection is never reused mid-response.
//! - A response body that stalls for `read_timeout` between two pieces is cut
//!   ([`PoolError::ReadTimeout`] from the body), and its connection is closed.
//!
//! At most `max_idle_connections` idle connections are kept per endpoint (newest reused
//! first, so surplus ones age out).
//!
//! An HTTP/1.1 upgrade ([`Via::Upgrade`]) goes out on a new connection driven with hyper's
//! upgrade support: after a 101 its socket belongs to the tunnel (`hyper::upgrade::on`), and
//! it never returns to the pool, whatever the answer.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::request_body::RequestBody;
use super::stall::Stall;
use crate::config::UpstreamProtocol;

mod multiplexed;

/// How sending one request failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (TCP or TLS) in time: nothing was sent.
    #[error("connect: {0}")]
    Connect(String),
    /// A reused connection the upstream had closed: it was found closed just before the
    /// request's first byte was written, or it was reset before any byte of an answer came
    /// back (a server that closes with unread data resets the connection: RFC 1122
    /// 4.2.2.13), so the upstream application never read the request. Safe to send again on
    /// a fresh connection, whatever the method.
    #[error("reused connection was closed by the upstream before it read the request: {0}")]
    NotProcessed(String),
    /// The connection failed after the request may have been written.
    #[error("{0}")]
    Failed(hyper::Error),
}

/// Which connection a request goes out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A usable idle connection if there is one, else a new one.
    Pooled,
    /// A new connection, pooled after its response like any other.
    Fresh,
    /// A new connection that can switch protocols (HTTP/1.1 `Upgrade`); never pooled.
    Upgrade,
}

/// Errors of a response body read through the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The upstream's body broke off.
    #[error(transparent)]
    Upstream(#[from] hyper::Error),
    /// No piece of the body arrived for `read_timeout`.
    #[error("the upstream's response body stalled for longer than read_timeout")]
    ReadTimeout,
}

/// Where one endpoint is and how to reach it.
#[derive(Debug)]
pub struct Target {
    /// `host:port` as configured.
    pub address: String,
    host: String,
    port: u16,
    server_name: Option<ServerName<'static>>,
    idle: Mutex<Vec<Idle>>,
    /// The HTTP/2 connections (`protocol: http2` only).
    h2: multiplexed::Endpoint,
    /// The "server did not select h2" warning was logged (once per endpoint and config).
    warned_no_h2: AtomicBool,
    read_timeouts: prometheus::IntCounter,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<RequestBody>,
    io: Arc<IoState>,
    since: Instant,
}

/// What the pool and a connection's socket wrapper share.
#[derive(Debug)]
struct IoState {
    socket: TcpStream,
    /// Bytes read from the upstream so far.
    read: AtomicU64,
    /// Set before a request goes out on a reused connection: the first write checks that
    /// the upstream has not closed the connection meanwhile.
    check_before_write: AtomicBool,
    /// The first write found the connection closed and wrote nothing.
    refused: AtomicBool,
}

/// Settings shared by every endpoint of one upstream.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// TCP (+ TLS) connect deadline.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Most idle connections kept per endpoint.
    pub max_idle: usize,
    /// Longest wait for the next piece of a response body.
    pub read_timeout: Duration,
}

/// The pool of one upstream.
pub struct Pool {
    settings: PoolSettings,
    /// HTTP/1.1 (default) or HTTP/2 to the endpoints.
    protocol: UpstreamProtocol,
    tls: Option<TlsConnector>,
    targets: Vec<Arc<Target>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("settings", &self.settings)
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .field("targets", &self.targets)
            .finish()
    }
}

impl Pool {
    /// A pool for `addresses` (`host:port` each), over TLS when `tls` is given; `sni`
    /// overrides the name sent and verified.
    pub fn new(
        upstream: &str,
        addresses: &[String],
        settings: PoolSettings,
        tls: Option<(Arc<rustls::ClientConfig>, Option<String>)>,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        let sni = tls.as_ref().and_then(|(_, sni)| sni.clone());
        let targets = addresses
            .iter()
            .map(|address| {
                let (host, port) = crate::config::split_host_port(address)
                    .unwrap_or_else(|| (address.clone(), 80));
                let name = sni.clone().unwrap_or_else(|| host.clone());
                Arc::new(Target {
                    address: address.clone(),
                    server_name: ServerName::try_from(name).ok(),
                    host,
                    port,
                    idle: Mutex::new(Vec::new()),
                    h2: multiplexed::Endpoint::default(),
                    warned_no_h2: AtomicBool::new(false),
                    read_timeouts: metrics.read_timeout_handle(upstream, address),
                })
            })
            .collect();
        Self {
            settings,
            protocol: UpstreamProtocol::Http1,
            tls: tls.map(|(config, _)| TlsConnector::from(config)),
            targets,
        }
    }

    /// The pool speaking `protocol` to its endpoints (HTTP/1.1 unless told). For HTTP/2 over
    /// TLS, the TLS config must offer ALPN `h2` (the upstream's client config does).
    pub fn with_protocol(mut self, protocol: UpstreamProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Index of the endpoint whose address is `authority`, for callers that address by URI.
    pub fn endpoint_of(&self, authority: &str) -> Option<usize> {
        self.targets.iter().position(|t| t.address == authority)
    }

    /// Sends `request` to the endpoint its URI names (health checks address endpoints by URI).
    pub async fn request(
        &self,
        mut request: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let authority = request.uri().authority().map(|a| a.as_str().to_owned());
        let endpoint = authority
            .as_deref()
            .and_then(|a| self.endpoint_of(a))
            .ok_or_else(|| SendError::Connect(format!("no endpoint {authority:?}")))?;
        if let Some(path) = request.uri().path_and_query().cloned() {
            *request.uri_mut() = http::Uri::from(path);
        }
        if !request.headers().contains_key(http::header::HOST) {
            if let Ok(host) = http::HeaderValue::from_str(&self.targets[endpoint].address) {
                request.headers_mut().insert(http::header::HOST, host);
            }
        }
        self.send(endpoint, request, false).await
    }

    /// Idle connections kept for `endpoint` right now (for HTTP/2: open connections with no
    /// request on them).
    pub fn idle_count(&self, endpoint: usize) -> usize {
        self.targets
            .get(endpoint)
            .map_or(0, |t| match self.protocol {
                UpstreamProtocol::Http1 => lock(&t.idle).len(),
                UpstreamProtocol::Http2 => t.h2.idle_count(),
            })
    }

    /// Sends `request` to `endpoint`, on a new connection when `fresh`. A reused connection
    /// that hyper finds closed before writing is replaced transparently; one the upstream
    /// closed under the request without reading it is [`SendError::NotProcessed`].
    pub async fn send(
        &self,
        endpoint: usize,
        request: Request<RequestBody>,
        fresh: bool,
    ) -> Result<Response<PooledBody>, SendError> {
        let via = if fresh { Via::Fresh } else { Via::Pooled };
        self.send_via(endpoint, request, via).await
    }

    /// [`Pool::send`] on the connection `via` says. With [`Via::Upgrade`], a 101 answer
    /// carries the upgrade in its extensions (`hyper::upgrade::on(&mut response)`); an
    /// HTTP/2 upstream refuses upgrades ([`SendError::Connect`]).
    pub async fn send_via(
        &self,
        endpoint: usize,
        mut request: Request<RequestBody>,
        via: Via,
    ) -> Result<Response<PooledBody>, SendError> {
        let target = self
            .targets
            .get(endpoint)
            .ok_or_else(|| SendError::Connect(format!("no endpoint {endpoint}")))?;
        if self.protocol == UpstreamProtocol::Http2 {
            return multiplexed::send(self, target, request, via).await;
        }
        loop {
            let idle = match via {
                Via::Pooled => self.checkout(target),
                Via::Fresh | Via::Upgrade => None,
            };
            let (mut conn, reused) = match idle {
                Some(idle) => (idle, true),
                None => (self.connect(target, via == Via::Upgrade).await?, false),
            };
            let read_before = conn.io.read.load(Ordering::Acquire);
            conn.io.check_before_write.store(reused, Ordering::Release);
            match conn.sender.try_send_request(request).await {
                Ok(response) => {
                    conn.io.check_before_write.store(false, Ordering::Release);
                    let lease = Lease::Http1(Returner {
                        // An upgrade connection has nowhere to return to.
                        target: match via {
                            Via::Upgrade => Weak::new(),
                            Via::Pooled | Via::Fresh => Arc::downgrade(target),
                        },
                        conn: Some(conn),
                        max_idle: self.settings.max_idle,
                    });
                    return Ok(response.map(|body| PooledBody {
                        body,
                        lease,
                        stall: Stall::new(self.settings.read_timeout),
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: try again, on a connection we have not tried yet.
                    Some(unsent) if reused => request = unsent,
                    Some(_) => {
                        return Err(SendError::Connect(format!(
                            "new connection closed before the request: {}",
                            e.error()
                        )))
                    }
                    None => {
                        let error = e.into_error();
                        let io = &conn.io;
                        let unanswered = io.read.load(Ordering::Acquire) == read_before;
                        if reused
                            && (io.refused.load(Ordering::Acquire)
                                || (unanswered && reset_by_peer(&error)))
                        {
                            return Err(SendError::NotProcessed(error.to_string()));
                        }
                        return Err(SendError::Failed(error));
                    }
                },
            }
        }
    }

    /// The newest idle connection that is still usable; stale ones are dropped on the way.
    fn checkout(&self, target: &Target) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = lock(&target.idle);
        while let Some(conn) = idle.pop() {
            if now.duration_since(conn.since) >= self.settings.idle_timeout
                || conn.sender.is_closed()
                || !conn.sender.is_ready()
            {
                continue;
            }
            return Some(Conn {
                sender: conn.sender,
                io: conn.io,
            });
        }
        None
    }

    /// A new connection to `target`; with `upgrades`, its hyper connection can hand its socket
    /// over after a 101.
    async fn connect(&self, target: &Target, upgrades: bool) -> Result<Conn, SendError> {
        let deadline = Instant::now() + self.settings.connect_timeout;
        let tcp = tcp_connect(target, deadline).await?;
        let state = Arc::new(IoState {
            socket: tcp,
            read: AtomicU64::new(0),
            check_before_write: AtomicBool::new(false),
            refused: AtomicBool::new(false),
        });
        let io = SharedTcp(state.clone());
        let builder = http1::Builder::new();
        let sender = match &self.tls {
            None => {
                let (sender, conn) = builder
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(|e| SendError::Connect(e.to_string()))?;
                drive(conn, upgrades);
                sender
            }
            Some(tls) => {
                let stream = tls_connect(tls, target, io, deadline).await?;
                let (sender, conn) = builder
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| SendError::Connect(e.to_string()))?;
                drive(conn, upgrades);
                sender
            }
        };
        Ok(Conn { sender, io: state })
    }
}

/// A TCP connection to `target` (trying each resolved address) by `deadline`, with Nagle off.
async fn tcp_connect(target: &Target, deadline: Instant) -> Result<TcpStream, SendError> {
    let connect = async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| SendError::Connect(format!("resolve {}: {e}", target.address)))?
            .collect();
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = Some(e),
            }
        }
        Err(SendError::Connect(match last {
            Some(e) => format!("{}: {e}", target.address),
            None => format!("{}: no address", target.address),
        }))
    };
    let tcp = tokio::time::timeout_at(deadline, connect)
        .await
        .map_err(|_| SendError::Connect(format!("{}: timed out", target.address)))??;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The TLS handshake with `target` over `io`, by `deadline`.
async fn tls_connect<IO>(
    tls: &TlsConnector,
    target: &Target,
    io: IO,
    deadline: Instant,
) -> Result<tokio_rustls::client::TlsStream<IO>, SendError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let name = target.server_name.clone().ok_or_else(|| {
        SendError::Connect(format!("{}: invalid TLS server name", target.address))
    })?;
    tokio::time::timeout_at(deadline, tls.connect(name, io))
        .await
        .map_err(|_| SendError::Connect(format!("{}: TLS handshake timed out", target.address)))?
        .map_err(|e| SendError::Connect(format!("{}: TLS: {e}", target.address)))
}

/// Runs a client connection in its own task, able to hand its socket to an upgrade if asked.
fn drive<T>(conn: http1::Connection<T, RequestBody>, upgrades: bool)
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if upgrades {
        tokio::spawn(conn.with_upgrades());
    } else {
        tokio::spawn(conn);
    }
}

/// Whether the connection was reset (or the write hit a reset): the peer's socket closed with
/// our bytes unread.
fn reset_by_peer(error: &hyper::Error) -> bool {
    matches!(
        super::io_error::io_error_kind(error),
        Some(io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)
    )
}

/// Whether nothing is waiting to be read on an idle connection: no EOF, no stray bytes.
fn quiet(socket: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    // The socket is non-blocking (tokio); a peek takes nothing off it.
    match socket2::SockRef::from(socket).peek(&mut byte) {
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        Ok(_) => false,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct Conn {
    sender: http1::SendRequest<RequestBody>,
    io: Arc<IoState>,
}

/// Puts a connection back into its endpoint's idle list once its response was read whole.
#[derive(Debug)]
struct Returner {
    target: Weak<Target>,
    conn: Option<Conn>,
    max_idle: usize,
}

impl Returner {
    fn give_back(&mut self) {
        let (Some(conn), Some(target)) = (self.conn.take(), self.target.upgrade()) else {
            return;
        };
        let mut idle = lock(&target.idle);
        if idle.len() >= self.max_idle {
            idle.remove(0);
        }
        idle.push(Idle {
            sender: conn.sender,
            io: conn.io,
            since: Instant::now(),
        });
    }
}

/// What a response body holds of its connection.
#[derive(Debug)]
enum Lease {
    /// The whole HTTP/1.1 connection, returned at the end of the body.
    Http1(Returner),
    /// One stream of an HTTP/2 connection, released at the end of the body or when dropped.
    Http2(multiplexed::Stream),
}

impl Lease {
    /// The body was read to its end.
    fn finished(&mut self) {
        match self {
            Lease::Http1(returner) => returner.give_back(),
            Lease::Http2(stream) => stream.release(),
        }
    }

    /// The body broke off or stalled: an HTTP/1.1 connection is closed (it is mid-response);
    /// an HTTP/2 stream is reset when the body is dropped, its connection stays.
    fn broken(&mut self) {
        match self {
            Lease::Http1(returner) => returner.conn = None,
            Lease::Http2(stream) => stream.release(),
        }
    }

    fn target(&self) -> Option<Arc<Target>> {
        match self {
            Lease::Http1(returner) => returner.target.upgrade(),
            Lease::Http2(stream) => stream.target(),
        }
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body. At its end the connection returns to the pool (HTTP/2: its
    /// stream is released); dropped early, or stalled past `read_timeout`, an HTTP/1.1
    /// connection is closed and an HTTP/2 stream reset.
    #[derive(Debug)]
    pub struct PooledBody {
        #[pin]
        body: Incoming,
        lease: Lease,
        stall: Stall,
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = PoolError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, PoolError>>> {
        let mut this = self.project();
        match this.body.as_mut().poll_frame(cx) {
            Poll::Ready(None) => {
                this.lease.finished();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.stall.progressed();
                // hyper may stop polling once the body says it ended: return the connection
                // as soon as the last byte is in.
                if this.body.is_end_stream() {
                    this.lease.finished();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.lease.broken();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                ready!(this.stall.poll_expired(cx));
                this.lease.broken();
                if let Some(target) = this.lease.target() {
                    target.read_timeouts.inc();
                }
                Poll::Ready(Some(Err(PoolError::ReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A TCP stream shared between hyper (which reads and writes it) and the pool (which peeks at
/// it before reuse and counts what was read).
#[derive(Debug)]
struct SharedTcp(Arc<IoState>);

impl SharedTcp {
    /// On the first write of a request on a reused connection: refuses (writing nothing) if
    /// the upstream closed the connection since the pool checked it.
    fn refuse_if_closed(&self) -> Option<io::Error> {
        let state = &self.0;
        if !state.check_before_write.swap(false, Ordering::AcqRel) || quiet(&state.socket) {
            return None;
        }
        state.refused.store(true, Ordering::Release);
        Some(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the upstream closed the connection before the request was written",
        ))
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let socket = &self.0.socket;
        loop {
            ready!(socket.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match socket.try_read(unfilled) {
                Ok(n) => {
                    buf.advance(n);
                    self.0.read.fetch_add(n as u64, Ordering::AcqRel);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(refused) = self.refuse_if_closed() {
            return Poll::Ready(Err(refused));
        }
        let socket = &self.0.socket;
        loop {
            ready!(socket.poll_write_ready(cx))?;
            match socket.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&self.0.socket).shutdown(std::net::Shutdown::Write))
    }
}
