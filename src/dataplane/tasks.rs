//! Background tasks owned by a snapshot: aborted when the snapshot (and so this) is dropped.

use tokio::task::JoinHandle;

/// Aborts its tasks when dropped.
#[derive(Debug, Default)]
pub struct Tasks(pub Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
