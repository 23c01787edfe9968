//! The outermost layer: request id, in-flight gauge, metrics and the access log.
//!
//! It wraps everything else so that what it measures is what the client saw, including
//! responses backstop produced itself.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::body::ProxyBody;
use super::forward::{self, REQUEST_ID};
use super::outcome::Outcome;
use crate::metrics::Metrics;

/// tracing target of the access log; filter it with `RUST_LOG=backstop::access=off`.
pub const ACCESS_LOG_TARGET: &str = "backstop::access";

/// Adds [`Observe`] around a service.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    metrics: Metrics,
}

impl ObserveLayer {
    /// A layer that records into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Metrics,
}

impl<S> Service<Request<Incoming>> for Observe<S>
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let start = Instant::now();
        let request_id = forward::ensure_request_id(req.headers_mut());
        let method = req.method().clone();
        let logging = tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO);
        let path = logging.then(|| req.uri().path().to_owned());
        let metrics = self.metrics.clone();
        let in_flight = InFlight::start(&metrics);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let Ok(mut response) = fut.await;
            let elapsed = start.elapsed();
            let outcome = response.extensions_mut().remove::<Outcome>();
            let (route, upstream) = outcome
                .as_ref()
                .map_or(("", ""), |o| (o.route_name(), o.upstream_name()));
            let status = response.status().as_u16();
            if let Some(o) = &outcome {
                if let Some(route) = o.route {
                    o.snapshot.slos.record(route, status, o.reason, elapsed);
                }
            }
            match outcome.as_ref().and_then(|o| o.route_metrics()) {
                Some(handles) => handles.observe(&method, status, elapsed),
                None => {
                    metrics
                        .requests_handle(route, upstream, &method, status)
                        .inc();
                    metrics
                        .duration_handle(route, upstream)
                        .observe(elapsed.as_secs_f64());
                }
            }
            if let Some(path) = path {
                tracing::info!(
                    target: ACCESS_LOG_TARGET,
                    request_id = request_id.to_str().unwrap_or(""),
                    method = %method,
                    path,
                    route,
                    upstream,
                    endpoint = outcome.as_ref().map_or("", |o| o.endpoint_address()),
                    status,
                    duration_ms = elapsed.as_secs_f64() * 1000.0,
                    attempts = outcome.as_ref().map_or(0, |o| o.attempts),
                    reason = outcome.as_ref().and_then(|o| o.reason).map_or("", |r| r.reason()),
                    note = outcome.as_ref().and_then(|o| o.note).unwrap_or(""),
                    "request"
                );
            }
            response.headers_mut().insert(REQUEST_ID, request_id);
            drop(in_flight);
            Ok(response)
        })
    }
}

/// Counts a request in the in-flight gauge until dropped, even if the client goes away.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn start(metrics: &Metrics) -> Self {
        metrics.in_flight().inc();
        Self(metrics.in_flight().clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
