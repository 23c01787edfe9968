//! A running backstop: listeners bound, servers spawned, a handle to stop them.
//!
//! Tests start an [`App`] in-process with `127.0.0.1:0` listeners and read the bound addresses
//! back; `main` does the same with the configured addresses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::dataplane::client::ClientError;
use crate::dataplane::server;
use crate::metrics::Metrics;
use crate::runtime::reload::Reloader;
use crate::runtime::{Snapshot, SnapshotHandle};

mod workers;

/// Why backstop could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address could not be bound.
    #[error("cannot listen on {address} ({what}): {source}")]
    Bind {
        /// "proxy" or "admin".
        what: &'static str,
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// An upstream client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// How the proxy listener's connections are spread over threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workers {
    /// One accept loop on the runtime [`App`] is started on (tokio's work-stealing
    /// multi-thread runtime, or a current-thread one).
    #[default]
    Shared,
    /// This many accept loops on the one listening socket, each on its own current-thread
    /// runtime and thread: a connection lives on one thread from accept to close. The first
    /// loop runs on the caller's runtime.
    PerCore(usize),
}

/// A running proxy and admin listener.
#[derive(Debug)]
pub struct App {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    snapshots: SnapshotHandle,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    admin_shutdown: watch::Sender<bool>,
    proxy_task: JoinHandle<server::DrainReport>,
    admin_task: JoinHandle<()>,
}

impl App {
    /// Binds the listeners of `config` and starts serving; the config cannot be reloaded.
    pub async fn start(config: Config, metrics: Metrics) -> Result<App, StartError> {
        Self::start_inner(config, metrics, None, Workers::Shared).await
    }

    /// Like [`App::start`], and reloads `path` on change, on SIGHUP and on `POST /admin/reload`.
    pub async fn start_watching(
        config: Config,
        metrics: Metrics,
        path: &std::path::Path,
    ) -> Result<App, StartError> {
        Self::start_inner(config, metrics, Some(path), Workers::Shared).await
    }

    /// Like [`App::start_watching`], with the proxy's connections spread as `workers` says.
    pub async fn start_with_workers(
        config: Config,
        metrics: Metrics,
        path: &std::path::Path,
        workers: Workers,
    ) -> Result<App, StartError> {
        Self::start_inner(config, metrics, Some(path), workers).await
    }

    async fn start_inner(
        config: Config,
        metrics: Metrics,
        path: Option<&std::path::Path>,
        workers: Workers,
    ) -> Result<App, StartError> {
        let snapshots = SnapshotHandle::new(Snapshot::build(config, 1, &metrics, None)?);
        let config = &snapshots.load().config;
        let proxy = bind("proxy", config.listen).await?;
        let (proxy, more) = match workers {
            Workers::PerCore(n) if n > 1 => workers::share(proxy, n)
                .map_err(|source| bind_error("proxy", config.listen, source))?,
            _ => (proxy, Vec::new()),
        };
        let admin = bind("admin", config.admin_listen).await?;
        let proxy_addr = local_addr("proxy", &proxy)?;
        let admin_addr = local_addr("admin", &admin)?;
        let (shutdown, stop) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(false));
        let accepting = server::Accepting::new(snapshots.clone(), metrics.clone());
        let others: Vec<_> = more
            .into_iter()
            .enumerate()
            .map(|(i, listener)| workers::spawn(i + 1, listener, accepting.clone(), stop.clone()))
            .collect();
        let first = server::serve(proxy, accepting, stop.clone());
        let proxy_task = tokio::spawn(workers::join(first, others));
        let admin_state = AdminState {
            metrics: metrics.clone(),
            ready: ready.clone(),
            snapshots: snapshots.clone(),
            sampler: crate::admin::status::Sampler::start(snapshots.clone()),
            reloader: path.map(|p| {
                let reloader = Reloader::new(p, snapshots.clone(), &metrics);
                reloader.watch();
                reloader
            }),
        };
        // The admin listener has its own stop signal: it keeps answering (readyz: 503) while
        // the proxy drains, and closes after.
        let (admin_shutdown, admin_stop) = watch::channel(false);
        let admin_task = tokio::spawn(admin::serve(admin, admin_state, admin_stop));
        ready.store(true, Ordering::Release);
        tracing::info!(proxy = %proxy_addr, admin = %admin_addr, "backstop is serving");
        Ok(App {
            proxy_addr,
            admin_addr,
            snapshots,
            metrics,
            ready,
            shutdown,
            admin_shutdown,
            proxy_task,
            admin_task,
        })
    }

    /// Where the proxy listens.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// Where the admin endpoints listen.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The live snapshot handle.
    pub fn snapshots(&self) -> &SnapshotHandle {
        &self.snapshots
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stops accepting, marks the process not ready, and lets in-flight requests finish up to
    /// the drain timeout. Returns when the proxy has drained and the admin listener is closed,
    /// with how many requests the drain timeout cut.
    pub async fn shutdown(self) -> server::DrainReport {
        self.ready.store(false, Ordering::Release);
        let _ = self.shutdown.send(true);
        let report = self.proxy_task.await.unwrap_or_default();
        let _ = self.admin_shutdown.send(true);
        let _ = self.admin_task.await;
        if report.cut > 0 {
            tracing::error!(
                cut = report.cut,
                "backstop stopped; the drain timeout cut requests in flight"
            );
        } else {
            tracing::info!("backstop stopped");
        }
        report
    }
}

async fn bind(what: &'static str, address: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| bind_error(what, address, source))
}

fn bind_error(what: &'static str, address: SocketAddr, source: std::io::Error) -> StartError {
    StartError::Bind {
        what,
        address,
        source,
    }
}

fn local_addr(what: &'static str, listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        what,
        address: "0.0.0.0:0".parse().expect("valid"),
        source,
    })
}
