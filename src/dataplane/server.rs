//! The downstream listener: accept under a connection limit, serve each connection
//! ([`connection::serve`]), drain on shutdown.
//!
//! At most `server.max_connections` client connections are open at once; at the limit the
//! listener stops accepting (new clients wait in the kernel's backlog) instead of running out
//! of file descriptors, which would also starve upstream connections and the admin listener.
//! Accept errors (EMFILE, ENFILE, ENOBUFS) back off instead of spinning.
//!
//! On shutdown the listener is closed first (new connections are refused), then every open
//! connection is told to finish: in-flight requests complete, idle keep-alive connections
//! close. Requests still running after the drain timeout are cut, and [`serve`] reports how
//! many, so the process can exit with a code that says so.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::activity::ListenerLoad;
use super::connection::{self, Listener};
use crate::metrics::server::ServerMetrics;
use crate::metrics::Metrics;
use crate::runtime::SnapshotHandle;

/// File descriptors kept for upstream connections per client connection (one each at most,
/// with HTTP/1.1 upstreams), besides the fixed reserve.
const FDS_PER_CONNECTION: usize = 2;
/// File descriptors kept for the admin listener, Redis, config files, logs and health checks.
const FD_RESERVE: usize = 128;
/// First pause after a failed accept; doubles up to [`MAX_ACCEPT_BACKOFF`].
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How the drain went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Requests still in flight when the drain timeout cut them.
    pub cut: usize,
}

/// What every accept loop of the proxy listener shares, whatever runtime it runs on: the
/// connection limit, the listener-wide load counts, the metrics.
#[derive(Debug, Clone)]
pub struct Accepting {
    shared: Listener,
    slots: Arc<Semaphore>,
    limit: usize,
    server_metrics: ServerMetrics,
}

impl Accepting {
    /// The shared state for the proxy listener of `snapshots`' config.
    pub fn new(snapshots: SnapshotHandle, metrics: Metrics) -> Self {
        let server_metrics = ServerMetrics::new(&metrics);
        let limit = snapshots
            .load()
            .config
            .server
            .max_connections
            .unwrap_or_else(derived_max_connections);
        server_metrics.limit.set(limit as i64);
        Self {
            shared: Listener {
                snapshots,
                metrics,
                load: Arc::new(ListenerLoad::default()),
            },
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            server_metrics,
        }
    }
}

/// Serves proxy traffic on `listener` until `shutdown` turns true, then drains. Several accept
/// loops (one per worker runtime, each with its own `SO_REUSEPORT` socket) may share one
/// [`Accepting`]: the connection limit and the load counts are the listener's, not the loop's.
pub async fn serve(
    listener: TcpListener,
    accepting: Accepting,
    mut shutdown: watch::Receiver<bool>,
) -> DrainReport {
    let Accepting {
        shared,
        slots,
        limit,
        server_metrics,
    } = accepting;
    let snapshots = shared.snapshots.clone();
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF;
    let mut saturated = false;
    loop {
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                saturated = false;
                slot
            }
            Err(_) => {
                if !saturated {
                    saturated = true;
                    server_metrics.saturated.inc();
                    tracing::warn!(
                        max_connections = limit,
                        "connection limit reached; new clients wait until a connection closes"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    _ = crate::shutdown::signalled(&mut shutdown) => break,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(conn) => {
                        backoff = ACCEPT_BACKOFF;
                        conn
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, pause = ?backoff, "accept failed; pausing");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let drain = drain_rx.clone();
                let server_metrics = server_metrics.clone();
                connections.spawn(async move {
                    server_metrics.open.inc();
                    let closed = connection::serve(stream, remote, shared, drain).await;
                    server_metrics.open.dec();
                    server_metrics.closed(closed.as_str());
                    drop(slot);
                });
            }
            _ = crate::shutdown::signalled(&mut shutdown) => break,
        }
    }
    drop(listener);
    let drain = snapshots.load().config.drain_timeout;
    tracing::info!(drain_timeout = ?drain, "listener closed; draining in-flight requests");
    let _ = drain_tx.send(true);
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    // Only a loop whose drain timed out cut anything; the in-flight count is the listener's
    // (all loops), so a loop that drained its own connections in time reports none.
    let report = DrainReport {
        cut: if drained.is_err() {
            shared.load.in_flight.load(Ordering::Relaxed)
        } else {
            0
        },
    };
    if drained.is_err() {
        tracing::warn!(drain_timeout = ?drain, cut = report.cut, open_connections = connections.len(), "drain timeout reached; cutting the requests still in flight");
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    report
}

/// `max_connections: auto`: what the file-descriptor limit allows, keeping room for one
/// upstream connection per client connection and a fixed reserve. Raises the soft limit to
/// the hard one first, as nginx's `worker_rlimit_nofile` and Go's runtime do.
pub fn derived_max_connections() -> usize {
    let fds = raise_fd_limit();
    (fds.saturating_sub(FD_RESERVE) / FDS_PER_CONNECTION).clamp(16, 1_000_000)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force.
fn raise_fd_limit() -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft))
        .unwrap_or(1024);
    usize::try_from(limit).unwrap_or(usize::MAX)
}
