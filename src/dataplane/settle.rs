//! Keeping a client's keep-alive connection usable after an answer that did not read its
//! whole request body.
//!
//! When backstop answers before the body was read (a 429, a `circuit_open` 503, or a 502
//! after the upstream reset mid-body), HTTP/1.1 leaves the unread bytes on the connection. If
//! the server then closes it, a client that already sent its next request on it gets a broken
//! pipe. So, before answering: a small remainder (up to [`DRAIN_LIMIT`] bytes, arriving within
//! [`DRAIN_TIME`]) is read and discarded, and the connection stays open; otherwise the answer
//! carries `Connection: close`, so the client knows not to reuse the connection. HTTP/2
//! streams end on their own and need neither.

use std::time::Duration;

use http::{header, HeaderValue, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::ProxyBody;
use super::client_body::{BodyWatch, ClientBody};
use super::replay::ReplayBody;

/// Most unread request-body bytes drained to keep a connection alive.
pub const DRAIN_LIMIT: usize = 64 * 1024;
/// Longest wait for that remainder.
pub const DRAIN_TIME: Duration = Duration::from_millis(500);

/// What is left of a request body when the answer is ready.
#[derive(Debug)]
pub enum Remainder {
    /// The client's body, untouched by any attempt.
    Client(ClientBody),
    /// The replay copy: its unread part is still with the client.
    Replay(ReplayBody),
    /// Given to an attempt that did not finish reading it.
    Gone,
    /// There was no body.
    None,
}

/// Drains a small remainder of the body, or marks `response` `Connection: close`.
pub async fn keep_alive_safe(
    mut response: Response<ProxyBody>,
    remainder: Remainder,
    watch: &BodyWatch,
    http1: bool,
) -> Response<ProxyBody> {
    if !http1 || watch.ended() || watch.fault().is_some() {
        if watch.fault().is_some() && http1 {
            close(&mut response);
        }
        return response;
    }
    let deadline = Instant::now() + DRAIN_TIME;
    let drained = match remainder {
        Remainder::None => true,
        Remainder::Gone => false,
        Remainder::Client(body) => drain(body, deadline).await,
        Remainder::Replay(body) => drain(body.replay(), deadline).await,
    };
    if !drained {
        close(&mut response);
    }
    response
}

/// [`keep_alive_safe`] for a request answered before any attempt, with its raw body.
pub async fn keep_alive_safe_raw(
    response: Response<ProxyBody>,
    body: Incoming,
    http1: bool,
    client_body_timeout: Duration,
) -> Response<ProxyBody> {
    let (body, watch) = ClientBody::new(body, client_body_timeout);
    keep_alive_safe(response, Remainder::Client(body), &watch, http1).await
}

async fn drain<B>(mut body: B, deadline: Instant) -> bool
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    let mut seen = 0usize;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                seen += frame.data_ref().map_or(0, bytes::Bytes::len);
                if seen > DRAIN_LIMIT {
                    return false;
                }
            }
            Ok(None) => return true,
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

fn close(response: &mut Response<ProxyBody>) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}
