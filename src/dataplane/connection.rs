//! Serves one client connection: protocol sniffing under a deadline, HTTP/1.1 or h2c, and the
//! connection's deadlines.
//!
//! The protocol is told from the first bytes (the HTTP/2 prior-knowledge preface, or anything
//! else for HTTP/1.1), read under `header_read_timeout`, so a client that connects and never
//! sends a byte, or stops in the middle of the preface, is cut like a slow request head. After
//! that a watchdog applies [`Activity::deadline`] (first request, idle keep-alive, slow next
//! head) and turns a flood of cancelled HTTP/2 streams into a GOAWAY. Deadlines close the
//! connection gracefully (HTTP/2 GOAWAY), and for good after a short grace.
//!
//! An HTTP/1.1 connection that switched protocols (a WebSocket 101) ends as an HTTP connection
//! there; its task then runs the tunnel (see [`super::upgrade`]), which has its own idle timeout and
//! ends at drain, so no HTTP deadline cuts it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::activity::{Activity, ClientIo, Expired, ListenerLoad, Tracked, Verdict};
use super::pipeline::Pipeline;
use super::upgrade::End;
use crate::config::ServerLimits;
use crate::metrics::Metrics;
use crate::runtime::SnapshotHandle;

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long a connection told to close may take to finish what it is writing.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Per-connection HTTP/2 stream limit advertised in SETTINGS, when the listener-wide cap is
/// larger.
const STREAMS_PER_CONNECTION: u32 = 100;

/// The `server:` limits one connection uses, copied when it is accepted.
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_concurrent_streams: u32,
    max_request_headers_bytes: usize,
}

impl ConnLimits {
    fn of(server: &ServerLimits) -> Self {
        Self {
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            max_concurrent_streams: server.max_concurrent_streams,
            max_request_headers_bytes: server.max_request_headers_bytes,
        }
    }
}

/// Everything a connection needs from its listener.
#[derive(Debug, Clone)]
pub struct Listener {
    /// The live config.
    pub snapshots: SnapshotHandle,
    /// The registry.
    pub metrics: Metrics,
    /// Counts across connections.
    pub load: Arc<ListenerLoad>,
}

/// How a connection ended, for the `backstop_connections_closed_total` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The client closed it, or it ended normally.
    Normal,
    /// A deadline ended it.
    Deadline(Expired),
    /// Too many cancelled streams.
    PrematureResets,
    /// The client sent something that is not HTTP, or the connection broke.
    Error,
}

impl Closed {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::Normal => "normal",
            Closed::Deadline(e) => e.as_str(),
            Closed::PrematureResets => "premature_resets",
            Closed::Error => "error",
        }
    }
}

/// Serves `stream` until it closes, a deadline passes, or `drain` turns true (then in-flight
/// requests finish and the connection closes).
pub async fn serve(
    stream: TcpStream,
    remote: SocketAddr,
    listener: Listener,
    mut drain: watch::Receiver<bool>,
) -> Closed {
    let limits = ConnLimits::of(&listener.snapshots.load().config.server);
    let accepted = Instant::now();
    let mut stream = stream;
    let sniffed = tokio::select! {
        sniffed = tokio::time::timeout(limits.header_read_timeout, sniff(&mut stream)) => sniffed,
        _ = crate::shutdown::signalled(&mut drain) => return Closed::Normal,
    };
    let (prefix, http2) = match sniffed {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return Closed::Normal,
        Ok(Err(_)) => return Closed::Error,
        Err(_) => return Closed::Deadline(Expired::HeaderTimeout),
    };
    let max_streams = limits.max_concurrent_streams as usize;
    let activity = Activity::new(http2, listener.load.clone(), max_streams);
    let io = TokioIo::new(ClientIo::new(prefix, stream, activity.clone()));
    let service = TowerToHyperService::new(Tracked::new(
        Pipeline::new(
            &listener.snapshots,
            &listener.metrics,
            remote.ip(),
            &listener.load,
        ),
        activity.clone(),
    ));
    // Time spent sniffing counts against the first request's head.
    let limits = ConnLimits {
        header_read_timeout: limits
            .header_read_timeout
            .saturating_sub(accepted.elapsed()),
        ..limits
    };
    if http2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams.min(STREAMS_PER_CONNECTION))
            .max_header_list_size(limits.max_request_headers_bytes as u32)
            .keep_alive_interval(limits.idle_timeout / 2)
            .keep_alive_timeout(limits.header_read_timeout.min(Duration::from_secs(20)));
        let conn = builder.serve_connection(io, service);
        watch_over(conn, |c| c.graceful_shutdown(), &activity, &limits, drain).await
    } else {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // The watchdog applies header_read_timeout; hyper's own would also cut idle
            // keep-alive connections at that time, before idle_timeout.
            .header_read_timeout(None)
            .max_buf_size(limits.max_request_headers_bytes.max(8192))
            .keep_alive(true);
        let conn = builder.serve_connection(io, service).with_upgrades();
        let tunnel_drain = drain.clone();
        let closed = watch_over(conn, |c| c.graceful_shutdown(), &activity, &limits, drain).await;
        match activity.take_tunnel() {
            None => closed,
            Some(tunnel) => match tunnel.run(tunnel_drain).await {
                End::Closed | End::Drained => Closed::Normal,
                End::Idle => Closed::Deadline(Expired::IdleTimeout),
                End::Error => Closed::Error,
            },
        }
    }
}

/// Reads until the protocol is known: `Some((bytes read, is_http2))`, `None` on a clean close.
async fn sniff(stream: &mut TcpStream) -> std::io::Result<Option<(Bytes, bool)>> {
    let mut buf = [0u8; 24];
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(None);
        }
        len += n;
        if buf[..len] != H2_PREFACE[..len] {
            return Ok(Some((Bytes::copy_from_slice(&buf[..len]), false)));
        }
        if len == H2_PREFACE.len() {
            return Ok(Some((Bytes::copy_from_slice(&buf[..len]), true)));
        }
    }
}

/// Drives `conn`; a watchdog task applies the deadlines, the GOAWAY rule and the drain, and
/// tells this task what to do through one [`Notify`](tokio::sync::Notify), so the connection's
/// own polling (on every read and write) stays two branches.
async fn watch_over<C, F>(
    conn: C,
    shut_down: F,
    activity: &Arc<Activity>,
    limits: &ConnLimits,
    drain: watch::Receiver<bool>,
) -> Closed
where
    C: std::future::Future<Output = Result<(), hyper::Error>>,
    F: Fn(std::pin::Pin<&mut C>),
{
    let watchdog = tokio::spawn(watchdog(activity.clone(), *limits, drain));
    let _stop_watchdog = AbortOnDrop(watchdog.abort_handle());
    tokio::pin!(conn);
    let mut closing: Option<Closed> = None;
    let mut shut = false;
    loop {
        tokio::select! {
            biased;
            ended = conn.as_mut() => {
                return match (closing, ended) {
                    (Some(why), _) => why,
                    (None, Ok(())) => Closed::Normal,
                    (None, Err(e)) => {
                        tracing::debug!(error = %e, "client connection ended with an error");
                        Closed::Error
                    }
                };
            }
            () = activity.close.notified() => {
                let (verdict, cut) = activity.verdict();
                if cut {
                    return closing.unwrap_or(Closed::Normal);
                }
                closing = closing.or(match verdict {
                    Some(Verdict::HeaderTimeout) => Some(Closed::Deadline(Expired::HeaderTimeout)),
                    Some(Verdict::IdleTimeout) => Some(Closed::Deadline(Expired::IdleTimeout)),
                    Some(Verdict::PrematureResets) => Some(Closed::PrematureResets),
                    _ => None,
                });
                if !shut && verdict.is_some() {
                    shut = true;
                    shut_down(conn.as_mut());
                }
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches one connection's [`Activity`]: first-request, idle and slow-head deadlines,
/// cancelled-stream floods and the listener's drain. After a deadline or a flood it gives the
/// connection [`CLOSE_GRACE`] to finish, then cuts it once nothing is in flight.
///
/// No request tells it when the connection goes idle: it never sleeps longer than
/// min(idle_timeout, header_read_timeout), so it always looks again before a deadline that
/// started meanwhile can pass, and then sleeps until that deadline exactly.
async fn watchdog(activity: Arc<Activity>, limits: ConnLimits, mut drain: watch::Receiver<bool>) {
    let far = || Instant::now() + limits.idle_timeout.min(limits.header_read_timeout);
    let next = |a: &Activity| a.deadline(limits.header_read_timeout, limits.idle_timeout);
    let wake = tokio::time::sleep_until(match next(&activity) {
        Ok(Some(at)) => at.min(far()),
        _ => Instant::now(),
    });
    tokio::pin!(wake);
    loop {
        tokio::select! {
            () = &mut wake => match next(&activity) {
                Ok(Some(at)) => wake.as_mut().reset(at.min(far())),
                Ok(None) => wake.as_mut().reset(far()),
                Err(expired) => {
                    activity.decide(match expired {
                        Expired::HeaderTimeout => Verdict::HeaderTimeout,
                        Expired::IdleTimeout => Verdict::IdleTimeout,
                    });
                    break;
                }
            },
            () = activity.go_away.notified() => {
                tracing::warn!("too many cancelled HTTP/2 streams on one connection; sending GOAWAY");
                activity.decide(Verdict::PrematureResets);
                break;
            }
            () = crate::shutdown::signalled(&mut drain) => {
                // Requests in flight finish; the listener's drain timeout bounds them.
                activity.decide(Verdict::Drain);
                return;
            }
        }
    }
    loop {
        tokio::time::sleep(CLOSE_GRACE).await;
        if activity.in_flight() == 0 {
            activity.decide(Verdict::Cut);
            return;
        }
    }
}
