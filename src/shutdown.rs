//! The shutdown signal every long-running task listens to: a `watch` channel that turns true.

use tokio::sync::watch;

/// Resolves once `stop` turns true, or when its sender is gone (nobody can stop us then, so
/// stopping is the safe reading).
pub async fn signalled(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
