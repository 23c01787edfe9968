//! The HTTP/2 side of the pool (`protocol: http2`): a few multiplexed connections per endpoint
//! on `hyper::client::conn::http2`, shared by concurrent requests.
//!
//! - Over TLS the connection offers ALPN `h2` only, and fails as [`SendError::Connect`] if
//!   the server does not pick it; without TLS it is h2c with prior knowledge.
//! - A request takes a stream on the first open connection with room: fewer streams of ours
//!   than the server's `SETTINGS_MAX_CONCURRENT_STREAMS` (as hyper last saw it; hyper's
//!   `SendRequest` is always "ready", so the pool counts streams itself). When none has room,
//!   one new connection is opened, and every request that finds no room meanwhile waits for
//!   that same connection instead of opening its own: a burst on a cold pool makes one
//!   connection, not one per request. A failed connect fails every waiter at once.
//! - Exact "never sent" signal: a request hyper hands back unsent (its connection had closed)
//!   goes out on another connection; a stream the server refused (`RST_STREAM` with
//!   `REFUSED_STREAM`) or that a `GOAWAY` says the server never processed (stream id above
//!   its last-stream-id, or the request met the GOAWAY before getting a stream) is
//!   [`SendError::NotProcessed`], and that connection takes no new streams, so the proxy's
//!   one re-send ([`Via::Fresh`]) goes to another connection (the one being opened, shared,
//!   rather than one new connection per re-sent request). Anything else after the request was
//!   handed to hyper is [`SendError::Failed`].
//! - A connection that received a GOAWAY or failed is no longer used; one with no stream of
//!   ours for `idle_timeout` is closed by its driver task; at most `max_idle_connections`
//!   connections without streams are kept per endpoint.
//! - Keep-alive pings every [`PING_INTERVAL`], also while idle; no answer within
//!   [`PING_TIMEOUT`] closes the connection, so a dead peer (no FIN, no RST: a crashed host,
//!   a dropped NAT entry) is noticed without waiting for a request to hang on it.
//! - Response bodies stall out after `read_timeout` as for HTTP/1.1; the stream is reset
//!   (`CANCEL`) when its body is dropped, the connection stays.
//! - [`Via::Upgrade`] is refused: upgrades are HTTP/1.1 only (config validation already
//!   refuses `upgrade:` on routes to an HTTP/2 upstream).

use std::future::poll_fn;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, Request, Response, Uri, Version};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::{lock, tcp_connect, tls_connect, Lease, Pool, PooledBody, SendError, Target, Via};
use crate::dataplane::request_body::RequestBody;
use crate::dataplane::stall::Stall;

/// Time between keep-alive pings. 30s: well under the idle timeouts of NATs, load balancers
/// and firewalls (typically 60-350s), so they keep the flow, and one 17-byte frame each way
/// per connection per 30s costs nothing.
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// A ping not answered within this closes the connection. 10s: a live server answers a PING
/// at once (it is not queued behind streams), so 10s means the peer or the path is gone, and
/// a dead connection is dropped within 40s at most.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How many connections a request handed back unsent (its connection had just closed) is
/// tried on.
const UNSENT_TRIES: usize = 3;
/// Rounds of "wait for the connection being opened, find it full" before a request takes a
/// stream on a full connection anyway (hyper then queues it until the server has room).
const WAIT_ROUNDS: usize = 8;
/// The stream count of a connection its driver is closing: no new stream may start on it.
const CLOSING: usize = usize::MAX;

/// The HTTP/2 connections of one endpoint.
#[derive(Debug, Default)]
pub(super) struct Endpoint {
    conns: Mutex<Vec<Arc<Conn>>>,
    /// The connection being opened for requests that found no room, if one is.
    connecting: Mutex<Option<Connecting>>,
    /// The server's stream limit as last seen on any of its connections (0: not yet); a new
    /// connection starts with it until the server's SETTINGS arrive, instead of hyper's 100.
    server_limit: Arc<AtomicUsize>,
}

/// Where the result of the connect in progress will appear.
type Connecting = watch::Receiver<Option<Result<Arc<Conn>, String>>>;

impl Endpoint {
    /// Open connections with no stream of ours.
    pub(super) fn idle_count(&self) -> usize {
        lock(&self.conns)
            .iter()
            .filter(|c| c.usable() && c.shared.streams.load(Ordering::Acquire) == 0)
            .count()
    }
}

/// One HTTP/2 connection.
#[derive(Debug)]
pub(super) struct Conn {
    sender: http2::SendRequest<RequestBody>,
    shared: Arc<Shared>,
}

/// What a connection's users and its driver task share.
#[derive(Debug)]
struct Shared {
    /// Our streams open on it, or [`CLOSING`].
    streams: AtomicUsize,
    /// The server's stream limit as hyper last saw it.
    max_streams: AtomicUsize,
    /// The connection ended, or a GOAWAY arrived: no new stream goes on it.
    closed: AtomicBool,
    /// When the last stream ended.
    idle_since: Mutex<Instant>,
    /// Wakes the driver when the connection becomes idle.
    idle: Notify,
}

impl Conn {
    fn usable(&self) -> bool {
        !self.shared.closed.load(Ordering::Acquire)
            && !self.sender.is_closed()
            && self.shared.streams.load(Ordering::Acquire) != CLOSING
    }

    /// Takes a stream slot; with `within_limit`, only if the server's limit leaves room.
    fn try_take(&self, within_limit: bool) -> bool {
        if !self.usable() {
            return false;
        }
        let max = self.shared.max_streams.load(Ordering::Acquire);
        self.shared
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n != CLOSING && (!within_limit || n < max)).then_some(n + 1)
            })
            .is_ok()
    }
}

/// A stream slot on a connection, held by the request and then by its response body.
#[derive(Debug)]
pub(super) struct Stream {
    conn: Option<Arc<Conn>>,
    target: Weak<Target>,
    max_idle: usize,
}

impl Stream {
    pub(super) fn target(&self) -> Option<Arc<Target>> {
        self.target.upgrade()
    }

    /// Gives the slot back (once). The last stream to end starts the idle clock and, beyond
    /// `max_idle` idle connections on the endpoint, takes its connection out of the pool.
    pub(super) fn release(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if conn.shared.streams.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        *lock(&conn.shared.idle_since) = Instant::now();
        conn.shared.idle.notify_one();
        let Some(target) = self.target.upgrade() else {
            return;
        };
        let mut conns = lock(&target.h2.conns);
        let idle = conns
            .iter()
            .filter(|c| c.shared.streams.load(Ordering::Acquire) == 0)
            .count();
        if idle > self.max_idle {
            // Dropping the pool's handle: once no request holds it, hyper closes it.
            conns.retain(|c| !Arc::ptr_eq(c, &conn));
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.release();
    }
}

/// Sends `request` to `target` over HTTP/2.
pub(super) async fn send(
    pool: &Pool,
    target: &Arc<Target>,
    request: Request<RequestBody>,
    via: Via,
) -> Result<Response<PooledBody>, SendError> {
    if via == Via::Upgrade {
        return Err(SendError::Connect(format!(
            "{}: an upgrade needs HTTP/1.1, and this upstream has protocol: http2",
            target.address
        )));
    }
    // Via::Fresh (the proxy sends a request again after NotProcessed) needs no connection of
    // its own here: the connection that refused or dropped the request was retired by
    // `classify`, so the checkout takes another one, or the one being opened, instead of
    // every re-sent request opening its own (a GOAWAY can hand back a hundred at once).
    let mut request = into_h2(request, target, pool.tls.is_some());
    for _ in 0..UNSENT_TRIES {
        let stream = checkout(pool, target).await?;
        let Some(conn) = stream.conn.clone() else {
            continue;
        };
        let mut sender = conn.sender.clone();
        match sender.try_send_request(request).await {
            Ok(response) => {
                let stall = Stall::new(pool.settings.read_timeout);
                return Ok(response.map(|body| PooledBody {
                    body,
                    lease: Lease::Http2(stream),
                    stall,
                }));
            }
            Err(mut e) => match e.take_message() {
                // Handed back before hyper gave it to the connection: never sent.
                Some(unsent) => {
                    conn.shared.closed.store(true, Ordering::Release);
                    request = unsent;
                }
                None => return Err(classify(&conn, e.into_error())),
            },
        }
    }
    Err(SendError::Connect(format!(
        "{}: HTTP/2 connections kept closing before the request could be sent",
        target.address
    )))
}

/// Whether the server provably did not process the request. A connection that refused a
/// stream or said GOAWAY takes no new streams: the ones on it finish, then it closes.
fn classify(conn: &Conn, error: hyper::Error) -> SendError {
    let h2 = std::error::Error::source(&error).and_then(|s| s.downcast_ref::<h2::Error>());
    match h2 {
        Some(e) if e.is_remote() && e.is_go_away() => {
            conn.shared.closed.store(true, Ordering::Release);
            SendError::NotProcessed(format!(
                "the upstream's GOAWAY says it did not process the request: {error}"
            ))
        }
        Some(e)
            if e.is_remote() && e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM) =>
        {
            conn.shared.closed.store(true, Ordering::Release);
            SendError::NotProcessed(format!("the upstream refused the stream: {error}"))
        }
        _ => SendError::Failed(error),
    }
}

/// HTTP/2 carries the target as `:scheme` and `:authority`: the URI becomes absolute, with
/// the `Host` header (or the endpoint address) as authority, and `Host` is dropped (RFC 9113
/// 8.3.1).
fn into_h2(
    mut request: Request<RequestBody>,
    target: &Target,
    https: bool,
) -> Request<RequestBody> {
    let authority = request
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| Authority::try_from(target.address.as_str()).ok());
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut uri = Uri::builder()
        .scheme(if https { Scheme::HTTPS } else { Scheme::HTTP })
        .path_and_query(path);
    if let Some(authority) = authority {
        uri = uri.authority(authority);
    }
    if let Ok(uri) = uri.build() {
        *request.uri_mut() = uri;
    }
    *request.version_mut() = Version::HTTP_2;
    request
}

fn lease(conn: Arc<Conn>, pool: &Pool, target: &Arc<Target>) -> Stream {
    Stream {
        conn: Some(conn),
        target: Arc::downgrade(target),
        max_idle: pool.settings.max_idle,
    }
}

/// A stream on an open connection with room, or on the connection being opened.
async fn checkout(pool: &Pool, target: &Arc<Target>) -> Result<Stream, SendError> {
    for round in 1..=WAIT_ROUNDS {
        if let Some(conn) = with_room(pool, target) {
            return Ok(lease(conn, pool, target));
        }
        let mut connecting = join_or_start_connect(pool, target);
        let opened = loop {
            if let Some(result) = connecting.borrow_and_update().clone() {
                break result;
            }
            if connecting.changed().await.is_err() {
                // The connect task ended without a word (runtime shutting down): let the next
                // request start its own instead of joining a dead one.
                lock(&target.h2.connecting).take_if(|c| c.same_channel(&connecting));
                break Err(format!("{}: connect abandoned", target.address));
            }
        };
        let conn = opened.map_err(SendError::Connect)?;
        if conn.try_take(round < WAIT_ROUNDS) {
            return Ok(lease(conn, pool, target));
        }
    }
    Err(SendError::Connect(format!(
        "{}: no HTTP/2 connection could take the request",
        target.address
    )))
}

/// The first usable connection with room, its slot taken; drops unusable ones on the way.
fn with_room(pool: &Pool, target: &Target) -> Option<Arc<Conn>> {
    let now = Instant::now();
    let idle_timeout = pool.settings.idle_timeout;
    let mut conns = lock(&target.h2.conns);
    conns.retain(|c| {
        c.usable()
            && (c.shared.streams.load(Ordering::Acquire) > 0
                || now.duration_since(*lock(&c.shared.idle_since)) < idle_timeout)
    });
    conns.iter().find(|c| c.try_take(true)).cloned()
}

/// The connect in progress for `target`, or a new one started in its own task (so a request
/// that gives up does not abandon the others waiting for it).
fn join_or_start_connect(pool: &Pool, target: &Arc<Target>) -> Connecting {
    let mut slot = lock(&target.h2.connecting);
    if let Some(connecting) = &*slot {
        return connecting.clone();
    }
    let (tx, rx) = watch::channel(None);
    *slot = Some(rx.clone());
    let connector = Connector::of(pool, target);
    let target = target.clone();
    tokio::spawn(async move {
        let result = connector.connect(&target).await;
        if let Ok(conn) = &result {
            lock(&target.h2.conns).push(conn.clone());
        }
        *lock(&target.h2.connecting) = None;
        let _ = tx.send(Some(result.map_err(|e| match e {
            SendError::Connect(m) | SendError::NotProcessed(m) => m,
            SendError::Failed(e) => e.to_string(),
        })));
    });
    rx
}

/// What opening a connection needs, owned, so it can run in its own task.
struct Connector {
    tls: Option<tokio_rustls::TlsConnector>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    server_limit: Arc<AtomicUsize>,
}

impl Connector {
    fn of(pool: &Pool, target: &Target) -> Self {
        Self {
            tls: pool.tls.clone(),
            connect_timeout: pool.settings.connect_timeout,
            idle_timeout: pool.settings.idle_timeout,
            server_limit: target.h2.server_limit.clone(),
        }
    }

    /// TCP, TLS with ALPN `h2` if configured, and the HTTP/2 preface, within the connect
    /// timeout.
    async fn connect(&self, target: &Target) -> Result<Arc<Conn>, SendError> {
        let deadline = Instant::now() + self.connect_timeout;
        let tcp = tcp_connect(target, deadline).await?;
        match &self.tls {
            None => self.handshake(target, TokioIo::new(tcp), deadline).await,
            Some(tls) => {
                let stream = tls_connect(tls, target, tcp, deadline).await?;
                if stream.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
                    return Err(SendError::Connect(no_h2(target)));
                }
                self.handshake(target, TokioIo::new(stream), deadline).await
            }
        }
    }

    async fn handshake<T>(
        &self,
        target: &Target,
        io: T,
        deadline: Instant,
    ) -> Result<Arc<Conn>, SendError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true);
        let known = self.server_limit.load(Ordering::Acquire);
        if known > 0 {
            builder.initial_max_send_streams(known);
        }
        let (sender, connection) = tokio::time::timeout_at(deadline, builder.handshake(io))
            .await
            .map_err(|_| {
                SendError::Connect(format!("{}: HTTP/2 handshake timed out", target.address))
            })?
            .map_err(|e| SendError::Connect(format!("{}: HTTP/2: {e}", target.address)))?;
        let shared = Arc::new(Shared {
            streams: AtomicUsize::new(0),
            max_streams: AtomicUsize::new(connection.current_max_send_streams()),
            closed: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            idle: Notify::new(),
        });
        tokio::spawn(drive(
            connection,
            Watched {
                shared: shared.clone(),
                server_limit: self.server_limit.clone(),
            },
            self.idle_timeout,
            target.address.clone(),
        ));
        Ok(Arc::new(Conn { sender, shared }))
    }
}

/// The message for a TLS server that did not agree to HTTP/2.
fn no_h2(target: &Target) -> String {
    let message = format!(
        "{}: the TLS server did not select HTTP/2 (ALPN h2); it may only speak HTTP/1.1: \
         use protocol: http1 for this upstream",
        target.address
    );
    if !target.warned_no_h2.swap(true, Ordering::AcqRel) {
        tracing::warn!(endpoint = %target.address, "{message}");
    }
    message
}

/// What a connection's driver keeps current.
struct Watched {
    shared: Arc<Shared>,
    server_limit: Arc<AtomicUsize>,
}

/// Runs one connection: hyper's dispatch, the server's stream limit kept current, and the
/// idle deadline. Ends when the connection ends or idled out; the socket closes once no
/// stream is left on it.
async fn drive<T>(
    connection: http2::Connection<T, RequestBody, TokioExecutor>,
    watched: Watched,
    idle_timeout: Duration,
    address: String,
) where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let Watched {
        shared,
        server_limit,
    } = watched;
    let mut connection = Box::pin(connection);
    loop {
        let idle_deadline = (shared.streams.load(Ordering::Acquire) == 0)
            .then(|| *lock(&shared.idle_since) + idle_timeout);
        let became_idle = shared.idle.notified();
        let run = poll_fn(|cx| {
            let polled = connection.as_mut().poll(cx);
            let max = connection.current_max_send_streams();
            shared.max_streams.store(max, Ordering::Release);
            server_limit.store(max, Ordering::Release);
            polled
        });
        tokio::select! {
            ended = run => {
                if let Err(e) = ended {
                    tracing::debug!(endpoint = %address, error = %e, "upstream HTTP/2 connection failed");
                }
                break;
            }
            () = became_idle => {}
            () = sleep_until_some(idle_deadline) => {
                // Close only if still idle: no stream may start while the count says CLOSING.
                if shared
                    .streams
                    .compare_exchange(0, CLOSING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    if lock(&shared.idle_since).elapsed() >= idle_timeout {
                        break;
                    }
                    shared.streams.store(0, Ordering::Release);
                }
            }
        }
    }
    shared.closed.store(true, Ordering::Release);
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
