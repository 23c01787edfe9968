//! A request body that can be sent again.
//!
//! Retrying or failing over a request with a body needs the body twice. Buffering every body
//! whole would cost memory and latency, so the body streams to the first attempt as usual and
//! is kept on the side, up to `limit` bytes, as it goes. A later attempt replays the kept bytes
//! and then continues from the client's stream.
//!
//! - A body that no attempt has read yet (the connection failed before sending) is always
//!   replayable, whatever its size: nothing was consumed.
//! - A body larger than `limit` that was read past the limit cannot be replayed; the request is
//!   then not retried after sending (documented in the config reference).
//!
//! Attempts are sequential, but a failed attempt's connection may still be reading its copy
//! when the next attempt starts; each copy carries a generation and only the newest may read
//! from the client's stream, so bytes are never split between two attempts.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::client_body::{ClientBody, ClientBodyError};

/// Why a copy of the body stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The client's body failed.
    #[error(transparent)]
    Client(#[from] ClientBodyError),
    /// A newer attempt took over the body.
    #[error("a newer attempt took over the request body")]
    Superseded,
}

#[derive(Debug)]
struct Shared {
    inner: ClientBody,
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    overflowed: bool,
    failed: bool,
    ended: bool,
    trailers: Option<HeaderMap>,
    generation: u64,
    hint: SizeHint,
}

/// One attempt's copy of the request body.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    generation: u64,
    pos: usize,
    trailers_sent: bool,
}

impl ReplayBody {
    /// Wraps the client's body, keeping up to `limit` bytes for replay.
    pub fn new(inner: ClientBody, limit: usize) -> Self {
        let hint = inner.size_hint();
        let shared = Shared {
            inner,
            chunks: Vec::new(),
            len: 0,
            limit,
            overflowed: false,
            failed: false,
            ended: false,
            trailers: None,
            generation: 0,
            hint,
        };
        Self {
            shared: Arc::new(Mutex::new(shared)),
            generation: 0,
            pos: 0,
            trailers_sent: false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The whole body, when the client sent all of it and all of it was kept (without
    /// trailers), as one buffer; a hedge sends this copy so that the attempt it races keeps
    /// reading its own (a [`replay`](Self::replay) would supersede it).
    pub fn whole(&self) -> Option<Bytes> {
        let s = self.lock();
        // A body of known length is whole once that many bytes are kept, even before anyone
        // polled its end.
        let complete = s.ended || s.hint.exact() == Some(s.len as u64);
        if !complete || s.overflowed || s.failed || s.trailers.is_some() {
            return None;
        }
        let mut whole = bytes::BytesMut::with_capacity(s.len);
        for chunk in &s.chunks {
            whole.extend_from_slice(chunk);
        }
        Some(whole.freeze())
    }

    /// Whether another attempt can be sent with the whole body.
    pub fn can_replay(&self) -> bool {
        let s = self.lock();
        !s.overflowed && !s.failed
    }

    /// A fresh copy for the next attempt; older copies stop reading.
    pub fn replay(&self) -> ReplayBody {
        let generation = {
            let mut s = self.lock();
            s.generation += 1;
            s.generation
        };
        ReplayBody {
            shared: self.shared.clone(),
            generation,
            pos: 0,
            trailers_sent: false,
        }
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = ReplayError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReplayError>>> {
        let this = &mut *self;
        let mut s = this.shared.lock().unwrap_or_else(|e| e.into_inner());
        if s.generation != this.generation {
            return Poll::Ready(Some(Err(ReplayError::Superseded)));
        }
        if this.pos < s.chunks.len() {
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(s.chunks[this.pos - 1].clone()))));
        }
        if s.ended {
            if this.trailers_sent {
                return Poll::Ready(None);
            }
            this.trailers_sent = true;
            return Poll::Ready(s.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        let frame = match Pin::new(&mut s.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        match frame {
            None => {
                s.ended = true;
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                s.failed = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if !s.overflowed && s.len + data.len() <= s.limit {
                        s.len += data.len();
                        s.chunks.push(data.clone());
                        this.pos = s.chunks.len();
                    } else if !s.overflowed {
                        s.overflowed = true;
                        s.chunks = Vec::new();
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    s.trailers = Some(trailers.clone());
                    s.ended = true;
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.lock();
        s.generation == self.generation
            && s.ended
            && self.pos >= s.chunks.len()
            && (self.trailers_sent || s.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.lock().hint
    }
}
