//! The response body type: either streamed from the upstream or produced by backstop.
//!
//! An enum instead of a boxed body keeps the pass-through path free of an allocation per
//! response.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use super::pool::{PoolError, PooledBody};

pin_project_lite::pin_project! {
    /// A response body. `Upstream` streams the upstream's body; `Local` holds a whole body.
    #[allow(missing_docs)]
    #[project = ProxyBodyProj]
    #[derive(Debug)]
    pub enum ProxyBody {
        /// Streamed from the upstream, frame by frame.
        Upstream { #[pin] body: PooledBody },
        /// Produced by backstop (errors, admin).
        Local { #[pin] body: Full<Bytes> },
        /// Bytes already read from a body, then the rest of it (the idempotency stage reads
        /// a response up to its storage limit before answering).
        Prefixed { prefix: Option<Bytes>, rest: Pin<Box<ProxyBody>> },
    }
}

impl ProxyBody {
    /// A body backstop produced itself.
    pub fn local(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Local {
            body: Full::new(bytes.into()),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = PoolError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, PoolError>>> {
        match self.project() {
            ProxyBodyProj::Upstream { body } => body.poll_frame(cx),
            ProxyBodyProj::Local { body } => body.poll_frame(cx).map_err(|never| match never {}),
            ProxyBodyProj::Prefixed { prefix, rest } => match prefix.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => rest.as_mut().poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body } => body.is_end_stream(),
            ProxyBody::Local { body } => body.is_end_stream(),
            ProxyBody::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body } => body.size_hint(),
            ProxyBody::Local { body } => body.size_hint(),
            ProxyBody::Prefixed { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + extra);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
        }
    }
}

/// How [`read_prefix`] ended.
#[derive(Debug)]
pub enum Prefix {
    /// The whole body, at most the limit.
    Whole(Bytes),
    /// Longer than the limit: the same body, the bytes read so far first.
    Longer(ProxyBody),
}

/// Why [`read_prefix`] got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixError {
    /// The body broke.
    Broken,
    /// The deadline passed first.
    TimedOut,
}

/// Reads `body` whole if it is at most `limit` bytes, by `deadline`; a longer body is handed
/// back intact to stream on. Non-data frames (trailers) are dropped. Used where backstop must
/// see a small answer whole (outcome rules, the idempotency store).
pub async fn read_prefix(
    body: ProxyBody,
    limit: usize,
    deadline: tokio::time::Instant,
) -> Result<Prefix, PrefixError> {
    use http_body_util::BodyExt;
    let mut body = Box::pin(body);
    let mut buf = bytes::BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(None) => return Ok(Prefix::Whole(buf.freeze())),
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(_))) => return Err(PrefixError::Broken),
            Err(_) => return Err(PrefixError::TimedOut),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        if buf.len() > limit {
            return Ok(Prefix::Longer(ProxyBody::Prefixed {
                prefix: Some(buf.freeze()),
                rest: body,
            }));
        }
    }
}
