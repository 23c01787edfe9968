//! Hot reload: the same parse, validate and compile path as startup, then one atomic swap.
//!
//! Triggers: the config file changing on disk (the directory is watched, because editors and
//! Kubernetes ConfigMaps replace files by rename; events are debounced), SIGHUP, and
//! `POST /admin/reload`. A config with any problem is refused whole: the running one stays in
//! force, the problems are logged exactly as `backstop validate` prints them, and
//! `backstop_config_reloads_total{result="rejected"}` counts it. Listener addresses cannot
//! change without a restart; such a config is refused with the reason. Requests in flight
//! finish on the snapshot they started with.
//!
//! The watcher acts on content, not on events: it hashes the file and reloads only when the
//! hash differs from both the running config and the last content it already tried, so an
//! invalid file is rejected (and logged, and counted) once per distinct content, not at every
//! event. It ignores access events (opening and reading the file, which it does itself), so it
//! never wakes itself up: an unchanged file is not read again. SIGHUP and `POST /admin/reload`
//! are explicit and always reload and report.

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
    /// Hash of the last file content the watcher acted on (accepted or rejected).
    last_seen: std::sync::Mutex<Option<String>>,
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
            last_seen: std::sync::Mutex::new(None),
        })
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the file again and swaps it in; returns the new generation. `trigger` is logged.
    pub async fn reload(&self, trigger: &str) -> Result<u64, ReloadError> {
        let _one_at_a_time = self.lock.lock().await;
        let result = self.try_reload();
        self.report(trigger, result)
    }

    /// The watcher's reload: only when the file's content is new (see the module docs).
    /// Returns `None` when the content was already running or already tried.
    async fn reload_if_changed(&self) -> Option<Result<u64, ReloadError>> {
        let _one_at_a_time = self.lock.lock().await;
        // A ConfigMap swap can leave the path missing for a moment; the next event retries.
        let bytes = tokio::fs::read(&self.path).await.ok()?;
        let hash = config::sha256_hex(&bytes);
        {
            let mut last = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
            let running = self.snapshots.load().config.sha256 == hash;
            if running || last.as_deref() == Some(hash.as_str()) {
                *last = Some(hash);
                return None;
            }
            *last = Some(hash);
        }
        let result = self.try_reload_bytes(bytes);
        Some(self.report("file changed", result))
    }

    fn report(&self, trigger: &str, result: Result<u64, ReloadError>) -> Result<u64, ReloadError> {
        match result {
            Ok(generation) => {
                self.accepted.inc();
                tracing::info!(trigger, generation, path = %self.path.display(), "config reloaded");
                for warning in &self.snapshots.load().config.warnings {
                    tracing::warn!(trigger, path = %self.path.display(), "{warning}");
                }
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
        let bytes = std::fs::read(&self.path).map_err(|source| ConfigError::Io {
            path: self.path.display().to_string(),
            source,
        })?;
        self.try_reload_bytes(bytes)
    }

    fn try_reload_bytes(&self, bytes: Vec<u8>) -> Result<u64, ReloadError> {
        let text = String::from_utf8(bytes).map_err(|e| ConfigError::Io {
            path: self.path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
        })?;
        let next = config::load_str(&text)?;
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
                if event.is_ok_and(|e| changes_content(&e.kind)) {
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
                let _ = this.reload_if_changed().await;
            }
        });
        Ok(())
    }
}

/// Whether a file event can change what the file holds. Opening, reading and closing a file
/// without writing cannot; the watcher's own reads produce exactly those.
fn changes_content(kind: &notify::EventKind) -> bool {
    !matches!(
        kind,
        notify::EventKind::Access(
            notify::event::AccessKind::Open(_)
                | notify::event::AccessKind::Read
                | notify::event::AccessKind::Close(notify::event::AccessMode::Read)
                | notify::event::AccessKind::Close(notify::event::AccessMode::Execute)
        )
    )
}

/// How long a burst of file events is given to settle before reloading.
const DEBOUNCE: Duration = Duration::from_millis(200);

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
    use notify::EventKind;

    #[test]
    fn reads_do_not_count_as_changes() {
        assert!(!super::changes_content(&EventKind::Access(
            AccessKind::Open(AccessMode::Any)
        )));
        assert!(!super::changes_content(&EventKind::Access(
            AccessKind::Close(AccessMode::Read)
        )));
        assert!(super::changes_content(&EventKind::Access(
            AccessKind::Close(AccessMode::Write)
        )));
        assert!(super::changes_content(&EventKind::Modify(
            ModifyKind::Name(RenameMode::To)
        )));
        assert!(super::changes_content(&EventKind::Create(CreateKind::File)));
        assert!(super::changes_content(&EventKind::Any));
    }
}
