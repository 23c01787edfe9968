//! Active health checks: one task per endpoint that GETs the check path on an interval.
//!
//! Results feed [`Health`]; when it flips, the endpoint's `healthy` flag (read by endpoint
//! choice), the `backstop_endpoint_healthy` gauge and one log line follow. Every passing check
//! also lowers the endpoint's latency estimate to the median of its healthy peers when it is
//! higher ([`super::load::forgive`]), so a penalty from a slow answer or a timeout lasts at most
//! one interval while the endpoint answers its checks. The tasks live as long as the live
//! upstream: dropping it aborts them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::tasks::Tasks;
use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::Full;

use super::request_body::RequestBody;
use super::upstream::LiveUpstream;
use crate::config::HealthCheck;
use crate::metrics::Metrics;
use crate::policy::health::Health;

/// Starts one checker per endpoint of `upstream`. Needs a tokio runtime.
pub fn start(upstream: &Arc<LiveUpstream>, check: &HealthCheck, metrics: &Metrics) -> Tasks {
    let tasks = (0..upstream.endpoints.len())
        .map(|e| {
            let (upstream, check) = (Arc::downgrade(upstream), check.clone());
            let address = upstream.upgrade().map(|u| u.endpoints[e].address.clone()).unwrap_or_default();
            let name = upstream.upgrade().map(|u| u.name.clone()).unwrap_or_default();
            let (gauge, [ok_count, fail_count]) = metrics.health(&name, &address);
            gauge.set(1);
            tokio::spawn(async move {
                let mut health = Health::new(check.healthy_threshold, check.unhealthy_threshold);
                let mut tick = tokio::time::interval(check.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(upstream) = upstream.upgrade() else { return };
                    let ok = probe(&upstream, e, &check).await;
                    if ok {
                        ok_count.inc();
                        // A passing check forgives a latency penalty (see `load`), so an
                        // endpoint that timed out once is tried again within one interval.
                        super::load::forgive(&upstream.endpoints, e, tokio::time::Instant::now());
                    } else {
                        fail_count.inc();
                    }
                    if let Some(healthy) = health.record(ok) {
                        upstream.endpoints[e].healthy.store(healthy, Ordering::Relaxed);
                        gauge.set(i64::from(healthy));
                        let state = if healthy { "healthy" } else { "unhealthy" };
                        tracing::warn!(upstream = %upstream.name, endpoint = %address, state, "endpoint health changed");
                    }
                }
            })
        })
        .collect();
    Tasks(tasks)
}

async fn probe(upstream: &LiveUpstream, endpoint: usize, check: &HealthCheck) -> bool {
    let ep = &upstream.endpoints[endpoint];
    let uri = Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(ep.authority.clone())
        .path_and_query(check.path.clone())
        .build();
    let Ok(uri) = uri else { return false };
    let mut request = Request::get(uri);
    if let Some(host) = &upstream.host_header {
        request = request.header(header::HOST, host.clone());
    }
    let Ok(request) = request
        .header(header::USER_AGENT, "backstop-health-check")
        .body(RequestBody::Local {
            body: Full::new(Bytes::new()),
        })
    else {
        return false;
    };
    match tokio::time::timeout(check.timeout, upstream.client.request(request)).await {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            check
                .expect_status
                .iter()
                .any(|(lo, hi)| (*lo..=*hi).contains(&status))
        }
        _ => false,
    }
}
