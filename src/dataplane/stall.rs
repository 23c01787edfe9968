//! A "nothing arrived for this long" deadline for bodies: it restarts whenever a piece of the
//! body arrives. Used by the client's request body (`server.client_body_timeout`) and the
//! upstream's response body (`read_timeout`). The timer is armed only when the body is
//! waiting, and reset rather than reallocated after progress.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// See the module docs.
#[derive(Debug)]
pub struct Stall {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    rearm: bool,
}

impl Stall {
    /// A deadline of `timeout` between two pieces.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            sleep: None,
            rearm: true,
        }
    }

    /// A piece arrived: the next wait starts a fresh `timeout`.
    pub fn progressed(&mut self) {
        self.rearm = true;
    }

    /// Called when the body is waiting: ready once `timeout` passed since the last progress.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = Instant::now() + self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if std::mem::take(&mut self.rearm) {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }
}
