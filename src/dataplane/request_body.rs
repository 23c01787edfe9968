//! The body type sent upstream: the client's body as is, or a replayable copy.
//!
//! Routes without retries or failover send the client's body untouched (no lock, no copy);
//! the others wrap it in a [`ReplayBody`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use super::client_body::ClientBody;
use super::replay::ReplayBody;

/// Errors of either kind of body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project_lite::pin_project! {
    /// A request body for one attempt. `Direct` is the client's body; `Replay` a copy of it;
    /// `Local` one backstop made (health checks).
    #[allow(missing_docs)]
    #[project = RequestBodyProj]
    #[derive(Debug)]
    pub enum RequestBody {
        Direct { #[pin] body: ClientBody },
        Replay { #[pin] body: ReplayBody },
        Local { #[pin] body: Full<Bytes> },
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            RequestBodyProj::Direct { body } => body.poll_frame(cx).map_err(Into::into),
            RequestBodyProj::Replay { body } => body.poll_frame(cx).map_err(Into::into),
            RequestBodyProj::Local { body } => body.poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Direct { body } => body.is_end_stream(),
            RequestBody::Replay { body } => body.is_end_stream(),
            RequestBody::Local { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Direct { body } => body.size_hint(),
            RequestBody::Replay { body } => body.size_hint(),
            RequestBody::Local { body } => body.size_hint(),
        }
    }
}
