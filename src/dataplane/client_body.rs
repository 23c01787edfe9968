//! The client's request body, watched: did it end, break, or stall?
//!
//! A request can fail because of the client (it aborts mid-body, sends a malformed chunk, or
//! stops sending), and such a failure must never be blamed on the upstream: no breaker,
//! ejection, retry budget, SLO or "outcome unknown" may count it. The body is therefore read
//! through [`ClientBody`], which notes in a [`BodyWatch`] shared with the proxy whether the
//! body ended, how it failed, and whether the upstream attempt is waiting on the client right
//! now. It also enforces `server.client_body_timeout`: no piece of the body for that long ends
//! it with [`BodyFault::Stalled`] (the client gets 408).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::stall::Stall;

/// How the client's body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// Malformed (a bad chunk, more bytes than announced).
    Malformed,
    /// The client closed its connection before the body ended.
    Gone,
    /// No data for `client_body_timeout`.
    Stalled,
}

/// Why a client body stopped, as an error.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// The client's stream failed.
    #[error("client body: {0}")]
    Client(#[from] hyper::Error),
    /// The client stopped sending.
    #[error("client body stalled for longer than client_body_timeout")]
    Stalled,
}

/// What the proxy learns about a body it handed to an upstream attempt.
#[derive(Debug, Default)]
pub struct BodyWatch {
    fault: AtomicU8,
    ended: AtomicBool,
    waiting: AtomicBool,
}

impl BodyWatch {
    /// The client's fault, if its body failed.
    pub fn fault(&self) -> Option<BodyFault> {
        match self.fault.load(Ordering::Acquire) {
            1 => Some(BodyFault::Malformed),
            2 => Some(BodyFault::Gone),
            3 => Some(BodyFault::Stalled),
            _ => None,
        }
    }

    /// Whether the whole body was read from the client.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Whether the reader is waiting for the client's next bytes right now.
    pub fn waiting_on_client(&self) -> bool {
        self.waiting.load(Ordering::Acquire) && !self.ended()
    }

    fn set_fault(&self, fault: BodyFault) {
        let code = match fault {
            BodyFault::Malformed => 1,
            BodyFault::Gone => 2,
            BodyFault::Stalled => 3,
        };
        self.fault.store(code, Ordering::Release);
    }
}

/// Whether a body error means the client went away (closed or reset its connection) rather
/// than sent something malformed.
fn client_left(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        return true;
    }
    use std::io::ErrorKind::*;
    matches!(
        super::io_error::io_error_kind(e),
        Some(UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe)
    )
}

pin_project_lite::pin_project! {
    /// The client's body with its watch and its stall deadline.
    #[derive(Debug)]
    pub struct ClientBody {
        #[pin]
        inner: Incoming,
        watch: Arc<BodyWatch>,
        stall: Stall,
    }
}

impl ClientBody {
    /// Watches `inner`; `timeout` is the longest pause allowed between two pieces.
    pub fn new(inner: Incoming, timeout: Duration) -> (Self, Arc<BodyWatch>) {
        let watch = Arc::new(BodyWatch::default());
        if inner.is_end_stream() {
            watch.ended.store(true, Ordering::Release);
        }
        let body = Self {
            inner,
            watch: watch.clone(),
            stall: Stall::new(timeout),
        };
        (body, watch)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(None) => {
                this.watch.waiting.store(false, Ordering::Release);
                this.watch.ended.store(true, Ordering::Release);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.stall.progressed();
                this.watch.waiting.store(false, Ordering::Release);
                if this.inner.is_end_stream() {
                    this.watch.ended.store(true, Ordering::Release);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.watch.waiting.store(false, Ordering::Release);
                let fault = if client_left(&e) {
                    BodyFault::Gone
                } else {
                    BodyFault::Malformed
                };
                this.watch.set_fault(fault);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                this.watch.waiting.store(true, Ordering::Release);
                ready!(this.stall.poll_expired(cx));
                this.watch.set_fault(BodyFault::Stalled);
                Poll::Ready(Some(Err(ClientBodyError::Stalled)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
