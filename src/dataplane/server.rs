//! The downstream listener: accept, serve HTTP/1.1 and h2c on each connection, drain on
//! shutdown.
//!
//! On shutdown the listener is closed first (new connections are refused), then every open
//! connection is told to finish: in-flight requests complete, idle keep-alive connections
//! close. Whatever is still running after the drain timeout is cut.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::stack;
use crate::metrics::Metrics;
use crate::runtime::SnapshotHandle;

/// Serves proxy traffic on `listener` until `shutdown` turns true, then drains.
pub async fn serve(
    listener: TcpListener,
    snapshots: SnapshotHandle,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Usually EMFILE; back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        let backoff = Duration::from_millis(50);
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(stack::build(&snapshots, &metrics, remote.ip()));
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(client = %remote, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = crate::shutdown::signalled(&mut shutdown) => break,
        }
    }
    drop(listener);
    let drain = snapshots.load().config.drain_timeout;
    tracing::info!(drain_timeout = ?drain, "listener closed; draining in-flight requests");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(drain_timeout = ?drain, "drain timeout reached; closing remaining connections");
    }
}
