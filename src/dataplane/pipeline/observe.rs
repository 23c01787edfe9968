//! The first and the last stage: request id, in-flight gauge, then metrics, SLO counts and the
//! access log.
//!
//! It brackets every other stage so that what it measures is what the client saw, including
//! the answers backstop gave itself.

use std::net::IpAddr;

use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use super::exchange::Exchange;
use super::outcome::render_trail;
use crate::dataplane::body::ProxyBody;
use crate::dataplane::forward::{self, REQUEST_ID};
use crate::metrics::Metrics;

/// tracing target of the access log; filter it with `RUST_LOG=backstop::access=off`.
pub const ACCESS_LOG_TARGET: &str = "backstop::access";

/// What the observe stage notes before the other stages run.
#[derive(Debug)]
pub struct Observed {
    request_id: HeaderValue,
    method: Method,
    /// The path as the client sent it, kept only when the access log is on.
    path: Option<String>,
    in_flight: InFlight,
}

impl Observed {
    /// Notes the request: ensures it has a request id, counts it in flight.
    pub fn start(req: &mut Request<Incoming>, metrics: &Metrics) -> Self {
        let request_id = forward::ensure_request_id(req.headers_mut());
        let logging = tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO);
        Self {
            request_id,
            method: req.method().clone(),
            path: logging.then(|| req.uri().path().to_owned()),
            in_flight: InFlight::start(metrics),
        }
    }

    /// Whether this request may get an access log line.
    pub fn logging(&self) -> bool {
        self.path.is_some()
    }

    /// Counts the answer in the metrics and SLOs, writes the access log line, and returns the
    /// response with its request id.
    pub fn finish(
        self,
        ex: &Exchange,
        metrics: &Metrics,
        client: IpAddr,
        mut response: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let elapsed = ex.started.elapsed();
        let outcome = &ex.outcome;
        let status = response.status().as_u16();
        if let Some(route) = outcome.route {
            // A rule's verdict counts only when the answer is the upstream's.
            let verdict = outcome
                .judged
                .filter(|_| outcome.reason.is_none())
                .map(|(_, d)| d.verdict);
            ex.snapshot
                .slos
                .record(route, status, outcome.reason, verdict, elapsed);
        }
        if let Some(reason) = outcome.reason.filter(|r| r.is_refusal()) {
            metrics
                .refused_handle(ex.route_name(), reason.reason())
                .inc();
        }
        let attempted = outcome.attempts > 0;
        match ex.route_metrics() {
            Some(handles) => {
                handles.observe(&self.method, status, elapsed);
                if attempted {
                    handles.observe_upstream(outcome.upstream_time);
                }
            }
            None => {
                let (route, upstream) = (ex.route_name(), ex.upstream_name());
                metrics
                    .requests_handle(route, upstream, &self.method, status)
                    .inc();
                metrics
                    .duration_handle(route, upstream)
                    .observe(elapsed.as_secs_f64());
                if attempted {
                    metrics
                        .upstream_duration_handle(route, upstream)
                        .observe(outcome.upstream_time.as_secs_f64());
                }
            }
        }
        if let Some(path) = self.path.filter(|_| sampled(ex, status)) {
            let trail = render_trail(outcome, |a| ex.names(a.upstream, a.endpoint));
            let rate_key = outcome.rate_key.map(|h| format!("{h:08x}"));
            let rule = outcome
                .judged
                .filter(|_| outcome.reason.is_none())
                .and_then(|(u, d)| {
                    ex.snapshot
                        .upstreams
                        .get(u)?
                        .config
                        .outcome
                        .as_ref()?
                        .rules
                        .get(d.rule)
                })
                .map_or("", |r| r.name.as_str());
            tracing::info!(
                target: ACCESS_LOG_TARGET,
                request_id = self.request_id.to_str().unwrap_or(""),
                client = %client,
                method = %self.method,
                path,
                route = ex.route_name(),
                upstream = ex.upstream_name(),
                endpoint = ex.endpoint_address(),
                status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                upstream_ms = outcome.upstream_time.as_secs_f64() * 1000.0,
                attempts = outcome.attempts,
                flags = %outcome.flags.render(),
                trail,
                rate_key = rate_key.as_deref().unwrap_or(""),
                outcome_rule = rule,
                reason = outcome.reason.map_or("", |r| r.reason()),
                note = outcome.note.unwrap_or(""),
                "request"
            );
        }
        response.headers_mut().insert(REQUEST_ID, self.request_id);
        drop(self.in_flight);
        response
    }
}

/// Whether the request gets a line: always when it failed or backstop stepped in (a 5xx, an
/// answer of its own, any flag), else with the configured `access_log.sample` chance.
fn sampled(ex: &Exchange, status: u16) -> bool {
    let outcome = &ex.outcome;
    let eventful = status >= 500 || outcome.reason.is_some() || !outcome.flags.is_empty();
    let share = ex.snapshot.config.access_log.sample;
    eventful || share >= 1.0 || (share > 0.0 && rand::random::<f64>() < share)
}

/// Counts a request in the in-flight gauge until dropped, even if the client goes away.
#[derive(Debug)]
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
