//! The per-core worker model: several accept loops on one listening socket, each on its own
//! thread and current-thread runtime (see [`super::Workers::PerCore`]).
//!
//! Every loop accepts from the same socket (one file description, `dup`ed per loop), so a
//! connection goes to whichever worker is waiting for one: an idle worker takes the next
//! client and a busy or stalled one takes none, and a connection, its requests and its
//! upstream calls then stay on one thread. The loops share one [`server::Accepting`]
//! (connection limit, load counts) and one snapshot handle, so limits and policies are per
//! process, not per thread.
//!
//! Why not one `SO_REUSEPORT` socket per worker: the kernel then hashes each connection to a
//! socket whether its worker is free or not, and any other process of the same user can bind
//! the same port and silently take a share of the traffic. Our own test caught that: two
//! backstop processes asking for port 0 were given the same port and split each other's
//! clients. A sidecar that shares its port with a stale copy of itself is a production
//! incident, so the socket stays exclusive.

use std::net::TcpListener as StdListener;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::dataplane::server::{self, DrainReport};

/// The listening socket for `n` accept loops: the first for the caller's runtime, the others
/// as std sockets for [`spawn`].
pub fn share(listener: TcpListener, n: usize) -> std::io::Result<(TcpListener, Vec<StdListener>)> {
    let std = listener.into_std()?;
    let others = (1..n)
        .map(|_| std.try_clone())
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok((TcpListener::from_std(std)?, others))
}

/// Runs one accept loop on a new thread with its own current-thread runtime; the receiver
/// gets its drain report.
pub fn spawn(
    index: usize,
    listener: StdListener,
    accepting: server::Accepting,
    stop: watch::Receiver<bool>,
) -> oneshot::Receiver<DrainReport> {
    let (tx, rx) = oneshot::channel();
    let started = std::thread::Builder::new()
        .name(format!("backstop-worker-{index}"))
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let report = match runtime {
                Ok(runtime) => runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => server::serve(listener, accepting, stop).await,
                        Err(e) => {
                            tracing::error!(worker = index, error = %e, "worker cannot use its socket");
                            DrainReport::default()
                        }
                    }
                }),
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "worker cannot start its runtime");
                    DrainReport::default()
                }
            };
            let _ = tx.send(report);
        });
    if let Err(e) = started {
        tracing::error!(worker = index, error = %e, "cannot start a worker thread");
    }
    rx
}

/// Waits for every accept loop to drain. Each reports the listener-wide in-flight count when
/// its drain ended, so the process's figure is the largest, not the sum.
pub async fn join(
    first: impl std::future::Future<Output = DrainReport>,
    others: Vec<oneshot::Receiver<DrainReport>>,
) -> DrainReport {
    let mut report = first.await;
    for other in others {
        if let Ok(r) = other.await {
            report.cut = report.cut.max(r.cut);
        }
    }
    report
}
