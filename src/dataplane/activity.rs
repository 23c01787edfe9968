//! What one client connection is doing, for its deadlines.
//!
//! A connection is in one of three phases, and each has its own deadline (see
//! [`Activity::deadline`]):
//! - waiting for its first request (the TLS-less preface or request line included):
//!   `header_read_timeout` from accept;
//! - idle between requests: `idle_timeout` from the end of the last response, or, once the
//!   next request's first byte arrived (HTTP/1), `header_read_timeout` from that byte;
//! - serving requests: no connection deadline (the route timeout, `read_timeout` and
//!   `client_body_timeout` bound each request).
//!
//! Three pieces feed it: [`ClientIo`] notes when bytes arrive on an idle connection, the
//! [`Tracked`] service counts requests in and out (a response counts until its body has been
//! sent), and [`RequestGuard`] counts requests the client cancelled before an answer (an HTTP/2
//! reset), which past a bound earn the connection a GOAWAY.
//!
//! A response that switches protocols (101) carries an [`Tunnel`]; [`Tracked`] parks
//! it here for the connection's task, which runs it after the HTTP connection handed over its
//! socket. None of the deadlines above apply to a tunnel (see [`super::upgrade`]).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::Service;

use super::body::ProxyBody;
use super::pipeline::Pipeline;
use super::rescue::ProxyError;
use super::upgrade::Tunnel;

/// Cancelled requests a connection may have before a GOAWAY, if they are also at least half
/// of its requests (Envoy's premature-reset rule, CVE-2023-44487).
pub const MAX_PREMATURE_RESETS: u32 = 100;

/// Counts shared by every connection of one listener.
#[derive(Debug, Default)]
pub struct ListenerLoad {
    /// Requests being served on any connection.
    pub in_flight: AtomicUsize,
    /// HTTP/2 streams open on any connection.
    pub h2_streams: AtomicUsize,
    /// Bytes reserved for replay buffers by requests in flight.
    pub buffered: Arc<AtomicUsize>,
}

/// Bytes of replay buffer held by one request; given back when dropped.
#[derive(Debug)]
pub struct BufferReservation {
    bytes: usize,
    pool: Arc<AtomicUsize>,
}

impl Drop for BufferReservation {
    fn drop(&mut self) {
        self.pool.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl ListenerLoad {
    /// Reserves `bytes` of replay buffer if the listener's total stays within `max`
    /// (`server.max_buffered_bytes`); `None` means send the request unbuffered.
    pub fn reserve_buffer(&self, bytes: usize, max: u64) -> Option<BufferReservation> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        self.buffered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|total| *total <= max)
            })
            .ok()?;
        Some(BufferReservation {
            bytes,
            pool: self.buffered.clone(),
        })
    }
}

/// The state of one connection; see the module docs.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    http2: bool,
    in_flight: AtomicU32,
    started: AtomicU64,
    /// Nanos since `epoch` when the connection last became idle.
    idle_since: AtomicU64,
    /// Nanos since `epoch` (+1, so 0 means none) of the first byte read while idle.
    head_started: AtomicU64,
    premature_resets: AtomicU32,
    /// Woken when the connection should be told to go away.
    pub go_away: Notify,
    /// The watchdog's word to the connection task: see [`Verdict`].
    pub close: Notify,
    verdict: AtomicU8,
    listener: Arc<ListenerLoad>,
    max_streams: usize,
    /// The tunnel this connection becomes after a 101, if it answered one.
    tunnel: std::sync::Mutex<Option<Tunnel>>,
}

const CUT: u8 = 0x80;

/// What the connection watchdog tells the connection task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Verdict {
    /// Close gracefully: no complete request head in time.
    HeaderTimeout = 1,
    /// Close gracefully: idle for longer than `idle_timeout`.
    IdleTimeout = 2,
    /// Close gracefully (GOAWAY): too many cancelled streams.
    PrematureResets = 3,
    /// Close gracefully: the listener drains; requests in flight finish.
    Drain = 4,
    /// The grace after a close is over and nothing is in flight: drop the connection.
    Cut = CUT,
}

/// Why a connection's deadline ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No complete request head in time.
    HeaderTimeout,
    /// Idle for longer than `idle_timeout`.
    IdleTimeout,
}

impl Expired {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Expired::HeaderTimeout => "header_timeout",
            Expired::IdleTimeout => "idle_timeout",
        }
    }
}

impl Activity {
    /// A connection accepted now.
    pub fn new(http2: bool, listener: Arc<ListenerLoad>, max_streams: usize) -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            http2,
            in_flight: AtomicU32::new(0),
            started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            premature_resets: AtomicU32::new(0),
            go_away: Notify::new(),
            close: Notify::new(),
            verdict: AtomicU8::new(0),
            listener,
            max_streams,
            tunnel: std::sync::Mutex::new(None),
        })
    }

    /// The tunnel a 101 answer on this connection left, to run once hyper lets go of the
    /// socket.
    pub fn take_tunnel(&self) -> Option<Tunnel> {
        self.tunnel.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn now(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }

    fn at(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }

    /// Notes bytes read from the client.
    fn on_read(&self) {
        if self.http2 || self.in_flight.load(Ordering::Relaxed) > 0 {
            return;
        }
        if self.head_started.load(Ordering::Relaxed) == 0 {
            self.head_started.store(self.now() + 1, Ordering::Relaxed);
        }
    }

    /// When the connection must close if nothing changes, or `None` while requests are served.
    /// `Err` when that moment has passed.
    pub fn deadline(
        &self,
        header_read_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<Option<Instant>, Expired> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Ok(None);
        }
        let (from, after, why) = if self.started.load(Ordering::Relaxed) == 0 {
            (0, header_read_timeout, Expired::HeaderTimeout)
        } else {
            match self.head_started.load(Ordering::Relaxed) {
                0 => (
                    self.idle_since.load(Ordering::Relaxed),
                    idle_timeout,
                    Expired::IdleTimeout,
                ),
                started => (started - 1, header_read_timeout, Expired::HeaderTimeout),
            }
        };
        let deadline = self.at(from) + after;
        if Instant::now() >= deadline {
            Err(why)
        } else {
            Ok(Some(deadline))
        }
    }

    /// Tells the connection task to act on `verdict`; the first verdict is kept, except that
    /// [`Verdict::Cut`] always wins.
    pub fn decide(&self, verdict: Verdict) {
        let code = verdict as u8;
        if verdict == Verdict::Cut {
            self.verdict.fetch_or(CUT, Ordering::AcqRel);
        } else {
            let _ = self
                .verdict
                .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        }
        self.close.notify_one();
    }

    /// The watchdog's verdict so far, and whether it says to cut the connection now.
    pub fn verdict(&self) -> (Option<Verdict>, bool) {
        let v = self.verdict.load(Ordering::Acquire);
        let reason = match v & !CUT {
            1 => Some(Verdict::HeaderTimeout),
            2 => Some(Verdict::IdleTimeout),
            3 => Some(Verdict::PrematureResets),
            4 => Some(Verdict::Drain),
            _ => None,
        };
        (reason, v & CUT != 0)
    }

    /// Requests being served on this connection.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// Counts one request from its head to the end of its response body.
#[derive(Debug)]
pub struct RequestGuard {
    activity: Arc<Activity>,
    answered: bool,
}

impl RequestGuard {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.head_started.store(0, Ordering::Relaxed);
        activity.listener.in_flight.fetch_add(1, Ordering::Relaxed);
        if activity.http2 {
            activity.listener.h2_streams.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            activity: activity.clone(),
            answered: false,
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.activity;
        a.listener.in_flight.fetch_sub(1, Ordering::Relaxed);
        if a.http2 {
            a.listener.h2_streams.fetch_sub(1, Ordering::Relaxed);
        }
        if !self.answered {
            let resets = a.premature_resets.fetch_add(1, Ordering::Relaxed) + 1;
            let started = a.started.load(Ordering::Relaxed);
            if resets >= MAX_PREMATURE_RESETS && u64::from(resets) * 2 >= started {
                a.go_away.notify_one();
            }
        }
        a.idle_since.store(a.now(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The client's socket, with the bytes read while sniffing the protocol put back in front.
#[derive(Debug)]
pub struct ClientIo<T> {
    prefix: Bytes,
    inner: T,
    activity: Arc<Activity>,
}

impl<T> ClientIo<T> {
    /// Wraps `inner`; `prefix` is what was already read from it.
    pub fn new(prefix: Bytes, inner: T, activity: Arc<Activity>) -> Self {
        Self {
            prefix,
            inner,
            activity,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.on_read();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connection's service: the [`Pipeline`] for each request, counted (see
/// [`RequestGuard`]), with HTTP/2 streams beyond the listener-wide cap refused. One boxed
/// future per request, this one.
#[derive(Debug, Clone)]
pub struct Tracked {
    pipeline: Pipeline,
    activity: Arc<Activity>,
}

impl Tracked {
    /// Tracks `pipeline`'s requests in `activity`.
    pub fn new(pipeline: Pipeline, activity: Arc<Activity>) -> Self {
        Self { pipeline, activity }
    }
}

impl Service<Request<Incoming>> for Tracked {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<TrackedBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let mut guard = RequestGuard::start(&self.activity);
        let a = &self.activity;
        if a.http2 && a.listener.h2_streams.load(Ordering::Relaxed) > a.max_streams {
            guard.answered = true;
            let response = ProxyError::TooManyStreams.to_response(None, None);
            return Box::pin(std::future::ready(Ok(
                response.map(|body| TrackedBody { body, guard })
            )));
        }
        let pipeline = self.pipeline.clone();
        let activity = self.activity.clone();
        Box::pin(async move {
            let mut response = pipeline.serve(req).await;
            if let Some(tunnel) = response.extensions_mut().remove::<Tunnel>() {
                *activity.tunnel.lock().unwrap_or_else(|e| e.into_inner()) = Some(tunnel);
            }
            guard.answered = true;
            Ok(response.map(|body| TrackedBody { body, guard }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted until it is sent (or dropped).
    #[derive(Debug)]
    pub struct TrackedBody {
        #[pin]
        body: ProxyBody,
        guard: RequestGuard,
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = super::pool::PoolError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(http2: bool) -> Arc<Activity> {
        Activity::new(http2, Arc::default(), 10)
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_has_the_header_deadline_then_the_idle_one() {
        let a = activity(false);
        let hdr = Duration::from_secs(30);
        let idle = Duration::from_secs(60);
        let first = a.deadline(hdr, idle).unwrap().unwrap();
        assert_eq!(first - a.epoch, hdr);
        let guard = RequestGuard::start(&a);
        assert_eq!(a.deadline(hdr, idle), Ok(None), "serving: no deadline");
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(guard);
        let next = a.deadline(hdr, idle).unwrap().unwrap();
        assert_eq!(next - Instant::now(), idle);
        tokio::time::advance(Duration::from_secs(10)).await;
        a.on_read();
        let head = a.deadline(hdr, idle).unwrap().unwrap();
        assert_eq!(
            head - Instant::now(),
            hdr,
            "a started head gets header_read_timeout"
        );
        tokio::time::advance(hdr).await;
        assert_eq!(a.deadline(hdr, idle), Err(Expired::HeaderTimeout));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_expire() {
        let a = activity(true);
        drop(RequestGuard::start(&a));
        a.on_read(); // an HTTP/2 PING does not restart the clock
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            a.deadline(Duration::from_secs(30), Duration::from_secs(60)),
            Err(Expired::IdleTimeout)
        );
    }

    #[tokio::test]
    async fn many_cancelled_requests_ask_for_a_goaway() {
        let a = activity(true);
        let signalled = a.go_away.notified();
        tokio::pin!(signalled);
        for _ in 0..MAX_PREMATURE_RESETS - 1 {
            drop(RequestGuard::start(&a));
        }
        assert!(futures_util::poll!(signalled.as_mut()).is_pending());
        drop(RequestGuard::start(&a));
        assert!(futures_util::poll!(signalled.as_mut()).is_ready());
        assert_eq!(a.listener.in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn answered_requests_are_not_resets() {
        let a = activity(true);
        for _ in 0..2 * MAX_PREMATURE_RESETS {
            let mut g = RequestGuard::start(&a);
            g.answered = true;
        }
        assert_eq!(a.premature_resets.load(Ordering::Relaxed), 0);
    }
}
