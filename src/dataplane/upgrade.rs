//! HTTP/1.1 Upgrade (WebSocket) pass-through.
//!
//! A request is a WebSocket upgrade when it is HTTP/1.1, its `Connection` lists `upgrade` and
//! its `Upgrade` lists `websocket` ([`requested`]). On a route without `upgrade: websocket` it
//! is refused with 400 `upgrade_not_allowed` before any upstream sees it. On a route with it,
//! the proxy sends it once (no retries), with `Connection: upgrade` and `Upgrade` kept, on a
//! new upstream connection that never returns to the pool. A non-101 answer goes back as a
//! normal response. On a 101 the answer carries a [`Tunnel`] in its extensions; the
//! connection's task (see `connection::serve`) takes it over once hyper has written the 101
//! and handed over the client's socket, and runs it in place of the HTTP connection:
//! - the bytes are copied both ways (`copy_bidirectional`): an end-of-stream from one side is
//!   passed on to the other, and the tunnel ends when both directions have ended or either
//!   side fails, closing both sockets;
//! - no byte in either direction for the upstream's `read_timeout` closes both sides;
//! - the upstream's bulkhead slot (`max_concurrent_requests`) is held for the tunnel's life;
//! - the client connection's own deadlines (`idle_timeout`, `header_read_timeout`) no longer
//!   apply: the HTTP connection ended when the socket became a tunnel;
//! - a drain (shutdown) closes the tunnel at once.
//!
//! Other `Upgrade` protocols (e.g. `h2c`) are not tunnelled: as before, the hop-by-hop headers
//! are removed and the request goes on as a plain one, which a server may answer normally.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, HeaderMap, HeaderValue, Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Whether `req` asks to switch to WebSocket (RFC 6455 section 4.1, RFC 9110 section 7.8).
pub fn requested<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && lists(req.headers(), header::CONNECTION, "upgrade")
        && lists(req.headers(), header::UPGRADE, "websocket")
}

/// Whether a comma-separated header lists `token` (case-insensitive; a protocol's `/version`
/// is ignored).
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().split('/').next().unwrap_or(""))
        .any(|t| t.eq_ignore_ascii_case(token))
}

/// Puts back the two hop-by-hop headers an upgrade needs, after the others were removed.
pub fn keep_upgrade_headers(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides finished.
    Closed,
    /// No byte either way for the idle timeout.
    Idle,
    /// A side failed, or the upgrade never completed.
    Error,
    /// The server is draining.
    Drained,
}

type Splice = Pin<Box<dyn Future<Output = End> + Send>>;

/// A tunnel waiting to run, carried from the proxy to the connection's task in the 101
/// response's extensions (which must be `Clone + Sync`, hence the shared slot).
#[derive(Clone)]
pub struct Tunnel(Arc<Mutex<Option<Splice>>>);

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tunnel")
    }
}

impl Tunnel {
    /// The tunnel between the client's and the upstream's sockets once both upgrades complete;
    /// `hold` (the bulkhead slot, the upstream response) is kept until it ends.
    pub fn new<H: Send + 'static>(
        client: OnUpgrade,
        upstream: OnUpgrade,
        idle_timeout: Duration,
        hold: H,
    ) -> Self {
        let splice = Box::pin(async move {
            let end = splice(client, upstream, idle_timeout).await;
            drop(hold);
            end
        });
        Self(Arc::new(Mutex::new(Some(splice))))
    }

    /// Runs the tunnel until it ends or `drain` turns true.
    pub async fn run(self, mut drain: tokio::sync::watch::Receiver<bool>) -> End {
        let splice = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(splice) = splice else {
            return End::Error;
        };
        tokio::select! {
            end = splice => end,
            _ = crate::shutdown::signalled(&mut drain) => End::Drained,
        }
    }
}

async fn splice(client: OnUpgrade, upstream: OnUpgrade, idle_timeout: Duration) -> End {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return End::Error;
        }
    };
    let clock = Arc::new(Clock {
        epoch: Instant::now(),
        last: AtomicU64::new(0),
    });
    let mut client = Watched {
        io: TokioIo::new(client),
        clock: clock.clone(),
    };
    let mut upstream = Watched {
        io: TokioIo::new(upstream),
        clock: clock.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        let deadline = clock.last() + idle_timeout;
        tokio::select! {
            copied = &mut copy => {
                return match copied {
                    Ok(_) => End::Closed,
                    Err(e) => {
                        tracing::debug!(error = %e, "tunnel ended with an error");
                        End::Error
                    }
                };
            }
            () = tokio::time::sleep_until(deadline) => {
                if clock.last() + idle_timeout <= Instant::now() {
                    return End::Idle;
                }
            }
        }
    }
}

/// When a byte last went through the tunnel.
#[derive(Debug)]
struct Clock {
    epoch: Instant,
    /// Nanos since `epoch`.
    last: AtomicU64,
}

impl Clock {
    fn touch(&self) {
        let nanos = self.epoch.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        self.last.store(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// One side of the tunnel; reads note the time (every byte written was read first).
struct Watched<T> {
    io: T,
    clock: Arc<Clock>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, connection: &str, upgrade: &str) -> Request<()> {
        Request::get("/")
            .version(version)
            .header(header::CONNECTION, connection)
            .header(header::UPGRADE, upgrade)
            .body(())
            .unwrap()
    }

    #[test]
    fn a_websocket_upgrade_is_recognised() {
        assert!(requested(&req(Version::HTTP_11, "Upgrade", "websocket")));
        assert!(requested(&req(
            Version::HTTP_11,
            "keep-alive, UPGRADE",
            "foo/2, WebSocket"
        )));
        assert!(!requested(&req(
            Version::HTTP_11,
            "keep-alive",
            "websocket"
        )));
        assert!(!requested(&req(Version::HTTP_11, "upgrade", "h2c")));
        assert!(!requested(&req(Version::HTTP_10, "upgrade", "websocket")));
    }
}
