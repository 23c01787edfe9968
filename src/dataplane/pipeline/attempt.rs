//! Stage 7, the attempt: one request to one endpoint through the upstream's pool, bounded by
//! its per-try timeout, and how it ended as a [`Call`].

use std::time::Duration;

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use tokio::time::Instant;

use crate::dataplane::body::ProxyBody;
use crate::dataplane::client_body::{BodyFault, BodyWatch};
use crate::dataplane::forward;
use crate::dataplane::pool::{SendError, Via};
use crate::dataplane::request_body::RequestBody;
use crate::dataplane::rescue::ProxyError;
use crate::dataplane::upgrade;
use crate::dataplane::upstream::LiveUpstream;
use crate::policy::classify::{Call, CallResult};

/// How one attempt ended.
#[derive(Debug)]
pub struct Sent {
    /// Its result and duration, for the policies.
    pub call: Call,
    /// The upstream's response, or why there is none.
    pub response: Result<Response<ProxyBody>, ProxyError>,
    /// The upstream provably did not read the request (see [`SendError::NotProcessed`]).
    pub unread: bool,
}

/// The request for `endpoint` of `upstream`, in origin form (`/path?query`) with a `Host`;
/// `None` if the endpoint does not exist.
pub fn upstream_request(
    mut parts: Parts,
    body: RequestBody,
    upstream: &LiveUpstream,
    endpoint: usize,
) -> Option<Request<RequestBody>> {
    let target = upstream.endpoints.get(endpoint)?;
    if let Some(host) = &upstream.host_header {
        parts.headers.insert(header::HOST, host.clone());
    } else if !parts.headers.contains_key(header::HOST) {
        let host = HeaderValue::from_str(target.authority.as_str()).ok()?;
        parts.headers.insert(header::HOST, host);
    }
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::from(path);
    parts.version = Version::HTTP_11;
    Some(Request::from_parts(parts, body))
}

/// Rewrites the client's headers once for all attempts.
pub fn prepare_headers(parts: &mut Parts) {
    if !parts.headers.contains_key(header::HOST) {
        // HTTP/2 carries the host in the URI; HTTP/1.1 upstreams need the header.
        if let Some(value) = parts.uri.authority().and_then(|a| a.as_str().parse().ok()) {
            parts.headers.insert(header::HOST, value);
        }
    }
    // The forwarding headers were set at admission, before routing.
    forward::strip_hop_by_hop(&mut parts.headers);
}

/// Sends one attempt and classifies how it ended. A 101 to an upgrade keeps its `Upgrade`
/// header.
pub async fn send(
    upstream: &LiveUpstream,
    endpoint_index: usize,
    request: Request<RequestBody>,
    timeout: Duration,
    via: Via,
) -> Sent {
    let endpoint = &upstream.endpoints[endpoint_index];
    let started = Instant::now();
    let in_flight = endpoint.load.start();
    let sent = upstream.client.send_via(endpoint_index, request, via);
    let mut unread = false;
    let (result, response) = match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(mut response)) => {
            let switched =
                via == Via::Upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS;
            let protocol = switched
                .then(|| response.headers().get(header::UPGRADE).cloned())
                .flatten();
            forward::strip_hop_by_hop(response.headers_mut());
            if let Some(protocol) = protocol {
                upgrade::keep_upgrade_headers(response.headers_mut(), protocol);
            }
            let status = response.status().as_u16();
            (
                CallResult::Status(status),
                Ok(response.map(|body| ProxyBody::Upstream { body })),
            )
        }
        Ok(Err(SendError::Connect(e))) => {
            tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.address, error = %e, "connect failed");
            (CallResult::ConnectFailure, Err(ProxyError::ConnectFailed))
        }
        Ok(Err(SendError::NotProcessed(e))) => {
            tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.address, error = %e, "reused connection closed before the request was read");
            unread = true;
            (CallResult::ConnectFailure, Err(ProxyError::ConnectFailed))
        }
        Ok(Err(SendError::Failed(e))) => {
            tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.address, error = %error_chain(&e), "upstream error");
            (CallResult::Reset, Err(ProxyError::UpstreamError))
        }
        Err(_elapsed) => (CallResult::Timeout, Err(ProxyError::Timeout)),
    };
    drop(in_flight);
    let elapsed = started.elapsed();
    Sent {
        call: Call { result, elapsed },
        response,
        unread,
    }
}

/// The client's fault behind a failed attempt, if it was one: its body broke, it left, or the
/// attempt timed out while waiting for the client's next bytes. Such an attempt feeds no
/// policy: nothing in it is the upstream's doing.
pub fn client_fault(watch: &BodyWatch, call: Call) -> Option<ProxyError> {
    if call.result.status().is_some() {
        return None;
    }
    let fault = watch.fault().or_else(|| {
        (call.result == CallResult::Timeout && watch.waiting_on_client())
            .then_some(BodyFault::Stalled)
    })?;
    Some(match fault {
        BodyFault::Malformed => ProxyError::ClientBodyError,
        BodyFault::Gone => ProxyError::ClientClosed,
        BodyFault::Stalled => ProxyError::ClientBodyTimeout,
    })
}

/// The error and its causes on one line, for logs.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
