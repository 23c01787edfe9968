//! Hot reload: the same parse, validate and compile path as startup, then one atomic swap.
//!
//! Triggers: the config file changing on disk (the directory is watched, because editors and
//! Kubernetes ConfigMaps replace files by rename; events are debounced), SIGHUP, and
//! `POST /admin/reload`. A config with any problem is refused whole: the running one stays in
//! force, the problems are logged exactly as `backstop validate` prints them, and
//! `backstop_config_reloads_total{result="rejected"}` counts it. Listener addresses cannot
//! change without a restart; such a config is refused with the reason. Requests in flight
//! finish on the snapshot they started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{Gauge, IntCounter, IntGauge, IntGaugeVec};
use tokio::sync::Mutex;

use super::{Snapshot, SnapshotHandle};
use crate::config::{self, ConfigError};
use crate::dataplane::client::ClientError;
use crate::metrics::Metrics;

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file has problems.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// A setting that needs a restart changed.
    #[error("{}", .0.join("\n"))]
    NeedsRestart(Vec<String>),
    /// An upstream client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl ReloadError {
    /// Every problem, one per line.
    pub fn issues(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(e) => e.issues(),
            ReloadError::NeedsRestart(lines) => lines.clone(),
            ReloadError::Client(e) => vec![e.to_string()],
        }
    }
}

/// Reloads the config file into the live snapshot.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    snapshots: SnapshotHandle,
    metrics: Metrics,
    lock: Mutex<()>,
    accepted: IntCounter,
    rejected: IntCounter,
    generation: IntGauge,
    last_success: Gauge,
    hash: IntGaugeVec,
}

impl Reloader {
    /// A reloader for the config at `path`, already running `snapshots`.
    pub fn new(path: &Path, snapshots: SnapshotHandle, metrics: &Metrics) -> Arc<Self> {
        let (accepted, rejected, generation, last_success, hash) = metrics.config_families();
        let current = snapshots.load();
        generation.set(current.generation as i64);
        last_success.set(now_seconds());
        hash.with_label_values(&[&current.config.sha256]).set(1);
        Arc::new(Self {
            path: path.to_owned(),
            snapshots,
            metrics: metrics.clone(),
            lock: Mutex::new(()),
            accepted,
            rejected,
            generation,
            last_success,
            hash,
        })
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the file again and swaps it in; returns the new generation. `trigger` is logged.
    pub async fn reload(&self, trigger: &str) -> Result<u64, ReloadError> {
        let _one_at_a_time = self.lock.lock().await;
        match self.try_reload() {
            Ok(generation) => {
                self.accepted.inc();
                tracing::info!(trigger, generation, path = %self.path.display(), "config reloaded");
                Ok(generation)
            }
            Err(error) => {
                self.rejected.inc();
                for line in error.issues() {
                    tracing::error!(trigger, path = %self.path.display(), "config reload rejected: {line}");
                }
                Err(error)
            }
        }
    }

    fn try_reload(&self) -> Result<u64, ReloadError> {
        let next = config::load(&self.path)?;
        let current = self.snapshots.load();
        let mut restart = Vec::new();
        if next.listen != current.config.listen {
            restart.push(format!(
                "listen: changed from {} to {}; restart backstop to apply it",
                current.config.listen, next.listen
            ));
        }
        if next.admin_listen != current.config.admin_listen {
            restart.push(format!(
                "admin.listen: changed from {} to {}; restart backstop to apply it",
                current.config.admin_listen, next.admin_listen
            ));
        }
        if !restart.is_empty() {
            return Err(ReloadError::NeedsRestart(restart));
        }
        if next.sha256 == current.config.sha256 {
            return Ok(current.generation);
        }
        let generation = current.generation + 1;
        let old_hash = current.config.sha256.clone();
        let snapshot = Snapshot::build(next, generation, &self.metrics, Some(&current))?;
        let new_hash = snapshot.config.sha256.clone();
        self.snapshots.store(snapshot);
        let _ = self.hash.remove_label_values(&[&old_hash]);
        self.hash.with_label_values(&[&new_hash]).set(1);
        self.generation.set(generation as i64);
        self.last_success.set(now_seconds());
        Ok(generation)
    }

    /// Reloads on SIGHUP and when the file changes on disk, until the process ends.
    pub fn watch(self: &Arc<Self>) {
        let on_hup = self.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                tracing::warn!("cannot listen for SIGHUP; reload with POST /admin/reload or by editing the file");
                return;
            };
            while hup.recv().await.is_some() {
                let _ = on_hup.reload("SIGHUP").await;
            }
        });
        if let Err(e) = self.watch_file() {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot watch the config file; reload with SIGHUP or POST /admin/reload");
        }
    }

    fn watch_file(self: &Arc<Self>) -> notify::Result<()> {
        use notify::{RecursiveMode, Watcher};
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = tx.send(());
                }
            })?;
        // Watch the directory: an editor or a ConfigMap update replaces the file by rename,
        // which a watch on the file itself would lose.
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let _watcher = watcher;
            while rx.recv().await.is_some() {
                // Debounce: a save is often several events (truncate, write, rename).
                tokio::time::sleep_until(tokio::time::Instant::now() + DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
                let Some(this) = this.upgrade() else { return };
                let Ok(bytes) = tokio::fs::read(&this.path).await else {
                    continue;
                };
                let hash = config::sha256_hex(&bytes);
                if hash != this.snapshots.load().config.sha256 {
                    let _ = this.reload("file changed").await;
                }
            }
        });
        Ok(())
    }
}

/// How long a burst of file events is given to settle before reloading.
const DEBOUNCE: Duration = Duration::from_millis(200);

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
