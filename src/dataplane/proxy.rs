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
use std::time::Duration;

use tokio::time::Instant;

use super::breaker_cell::Gate;
use super::upstream::LiveUpstream;
use crate::metrics::AttemptResult;
use crate::policy::classify::{Call, CallResult, FailureSet};
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
        let fail = |error: ProxyError, outcome: Outcome| {
            finish(
                error.to_response(Some(&route.name), Some(&upstream.name)),
                outcome,
                Some(error),
            )
        };

        // Gates, cheapest refusal first: breaker (route-level, else upstream-level), bulkhead.
        let breaker = snapshot.route_breakers[route_index]
            .as_ref()
            .or(upstream.breaker.as_ref());
        let permit = match breaker.map(|b| b.admit(Instant::now())) {
            Some(Gate::Reject { retry_after }) => {
                return fail(ProxyError::CircuitOpen { retry_after }, outcome)
            }
            Some(Gate::Pass(permit)) => Some(permit),
            None => None,
        };
        let Some(_slot) = upstream.bulkhead.try_enter() else {
            return fail(ProxyError::Overloaded, outcome);
        };

        let endpoint_index = match &upstream.ejection {
            Some(ejection) => {
                let now = Instant::now();
                upstream
                    .balancer
                    .pick_available(|i| ejection.is_available(i, now))
            }
            None => upstream.balancer.pick(),
        };
        outcome.endpoint = Some(endpoint_index);
        let Some(request) = self.upstream_request(req, upstream, endpoint_index) else {
            return fail(ProxyError::BadRequest, outcome);
        };

        outcome.attempts = 1;
        let (call, response) = attempt(upstream, endpoint_index, request, route.timeout).await;
        let now = Instant::now();
        if let Some(permit) = permit {
            permit.record(call, now);
        }
        if let Some(ejection) = &upstream.ejection {
            let failure = upstream.breaker.as_ref().map_or_else(
                || FailureSet::default().is_failure(call.result),
                |b| b.failure_on().is_failure(call.result),
            );
            ejection.record(endpoint_index, failure, now);
        }
        match response {
            Ok(response) => finish(response, outcome, None),
            Err(error) => fail(error, outcome),
        }
    }

    /// Rewrites the client's request for `endpoint` of `upstream`; `None` if its URI cannot be
    /// rebuilt.
    fn upstream_request(
        &self,
        req: Request<Incoming>,
        upstream: &LiveUpstream,
        endpoint: usize,
    ) -> Option<Request<Incoming>> {
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
        parts.uri = Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.endpoints.get(endpoint)?.authority.clone())
            .path_and_query(path)
            .build()
            .ok()?;
        parts.version = Version::HTTP_11;
        Some(Request::from_parts(parts, body))
    }
}

/// Sends one attempt and classifies how it ended, counting it in the endpoint's metrics.
async fn attempt(
    upstream: &LiveUpstream,
    endpoint_index: usize,
    request: Request<Incoming>,
    timeout: Duration,
) -> (Call, Result<Response<ProxyBody>, ProxyError>) {
    let endpoint = &upstream.endpoints[endpoint_index];
    let started = Instant::now();
    let sent = upstream.client.request(request);
    let (result, response) = match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(mut response)) => {
            forward::strip_hop_by_hop(response.headers_mut());
            let status = response.status().as_u16();
            (
                CallResult::Status(status),
                Ok(response.map(|body| ProxyBody::Upstream { body })),
            )
        }
        Ok(Err(e)) if e.is_connect() => {
            tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.address, error = %error_chain(&e), "connect failed");
            (CallResult::ConnectFailure, Err(ProxyError::ConnectFailed))
        }
        Ok(Err(e)) => {
            tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.address, error = %error_chain(&e), "upstream error");
            (CallResult::Reset, Err(ProxyError::UpstreamError))
        }
        Err(_elapsed) => (CallResult::Timeout, Err(ProxyError::Timeout)),
    };
    endpoint.metrics.attempt(match result {
        CallResult::Status(s) if s >= 500 => AttemptResult::Status5xx,
        CallResult::Status(_) => AttemptResult::Success,
        CallResult::ConnectFailure => AttemptResult::ConnectFailure,
        CallResult::Timeout => AttemptResult::Timeout,
        CallResult::Reset => AttemptResult::Error,
    });
    let call = Call {
        result,
        elapsed: started.elapsed(),
    };
    (call, response)
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
