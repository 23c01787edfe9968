//! The innermost service: match a route, pick an endpoint, forward, classify the result.
//!
//! It never fails as a service (`Error = Infallible`): every failure becomes a response through
//! [`ProxyError::to_response`], and the [`Outcome`] it attaches tells the outer layers what
//! happened.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use http::{header, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use tower::Service;

use super::body::ProxyBody;
use super::forward;
use super::outcome::Outcome;
use super::rescue::ProxyError;
use super::router;
use crate::metrics::AttemptResult;
use crate::runtime::SnapshotHandle;

/// Forwards requests of one downstream connection.
#[derive(Debug, Clone)]
pub struct Proxy {
    snapshots: SnapshotHandle,
    /// The client's address as an `x-forwarded-for` entry, formatted once per connection.
    client: HeaderValue,
}

impl Proxy {
    /// A proxy for a connection from `client_ip`.
    pub fn new(snapshots: SnapshotHandle, client_ip: IpAddr) -> Self {
        let client = HeaderValue::from_str(&client_ip.to_string())
            .expect("an IP address is a valid header value");
        Self { snapshots, client }
    }

    async fn forward(self, req: Request<Incoming>) -> Response<ProxyBody> {
        let snapshot = self.snapshots.load();
        let mut outcome = Outcome::new(snapshot.clone());
        let Some(route_index) = router::find(&snapshot.config.routes, &req) else {
            return finish(
                ProxyError::NoRoute.to_response(None, None),
                outcome,
                Some(ProxyError::NoRoute),
            );
        };
        outcome.route = Some(route_index);
        let route = &snapshot.config.routes[route_index];
        let upstream = &snapshot.upstreams[route.upstream];
        let endpoint_index = upstream.balancer.pick();
        let endpoint = &upstream.endpoints[endpoint_index];
        outcome.endpoint = Some(endpoint_index);

        let (mut parts, body) = req.into_parts();
        if !parts.headers.contains_key(header::HOST) {
            // HTTP/2 carries the host in the URI; HTTP/1.1 upstreams need the header.
            if let Some(value) = parts.uri.authority().and_then(|a| a.as_str().parse().ok()) {
                parts.headers.insert(header::HOST, value);
            }
        }
        if let Some(host) = &upstream.host_header {
            parts.headers.insert(header::HOST, host.clone());
        }
        forward::strip_hop_by_hop(&mut parts.headers);
        forward::add_forwarded(&mut parts.headers, &self.client);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri = Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(endpoint.authority.clone())
            .path_and_query(path)
            .build();
        let Ok(uri) = uri else {
            let error = ProxyError::BadRequest;
            return finish(
                error.to_response(Some(&route.name), Some(&upstream.name)),
                outcome,
                Some(error),
            );
        };
        parts.uri = uri;
        parts.version = Version::HTTP_11;

        outcome.attempts = 1;
        let sent = upstream.client.request(Request::from_parts(parts, body));
        let (result, response) = match tokio::time::timeout(route.timeout, sent).await {
            Ok(Ok(mut response)) => {
                forward::strip_hop_by_hop(response.headers_mut());
                let result = if response.status().is_server_error() {
                    AttemptResult::Status5xx
                } else {
                    AttemptResult::Success
                };
                (
                    result,
                    Ok(response.map(|body| ProxyBody::Upstream { body })),
                )
            }
            Ok(Err(e)) if e.is_connect() => {
                tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.address, error = %error_chain(&e), "connect failed");
                (
                    AttemptResult::ConnectFailure,
                    Err(ProxyError::ConnectFailed),
                )
            }
            Ok(Err(e)) => {
                tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.address, error = %error_chain(&e), "upstream error");
                (AttemptResult::Error, Err(ProxyError::UpstreamError))
            }
            Err(_elapsed) => (AttemptResult::Timeout, Err(ProxyError::Timeout)),
        };
        endpoint.metrics.attempt(result);
        match response {
            Ok(response) => finish(response, outcome, None),
            Err(error) => finish(
                error.to_response(Some(&route.name), Some(&upstream.name)),
                outcome,
                Some(error),
            ),
        }
    }
}

impl Service<Request<Incoming>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req).await) })
    }
}

fn finish(
    mut response: Response<ProxyBody>,
    mut outcome: Outcome,
    error: Option<ProxyError>,
) -> Response<ProxyBody> {
    outcome.reason = error.map(ProxyError::reason);
    response.extensions_mut().insert(outcome);
    response
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
