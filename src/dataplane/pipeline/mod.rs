//! The request pipeline: every request goes through the same stages, in one order, written
//! once in [`Pipeline::serve`] and [`deliver::deliver`].
//!
//! | # | stage | module | what it decides |
//! |---|---|---|---|
//! | 0 | observe (start) | [`observe`] | request id, in-flight gauge, the clock |
//! | 1 | admission | [`admit`] | well-formed request, forwarding headers, route match |
//! | 2 | rate limit | [`limit`] | the route's limit for this key; 429 before any work |
//! | 2b | idempotency | [`idempotency`] | a key's first request delivered once; repeats replayed |
//! | 3 | deadline | [`deliver`] | the route's timeout bounds every attempt and back-off |
//! | 4 | breaker admission | [`target`] | the route's or upstream's breaker admits an attempt |
//! | 5 | bulkhead | [`target`] | the upstream's concurrency limit has room |
//! | 6 | endpoint choice | [`target`] | healthy, not ejected, not tried; failover upstreams |
//! | 7 | attempt | [`attempt`] | one request on the pool, per-try timeout |
//! | 7 | hedged attempt | [`hedge`] | a slow attempt gets another endpoint; first answer wins |
//! | 7b | outcome rules | [`judge`] | what the partner's answer means (status, header, JSON) |
//! | 8 | outcome classification | [`record`] | feeds load estimate, breaker, outlier detection |
//! | 9 | retry decision | [`retry`] | safe, replayable, within budget and deadline |
//! | 10 | observe (finish) | [`observe`] | metrics, SLO counts, access log |
//!
//! Stages share one per-request context, the [`Exchange`] (snapshot, clock, [`outcome`]), and
//! answer through [`answer`], where backstop's own refusals become responses. Per-route state
//! lives in [`crate::runtime::LiveRoute`], per-upstream state in
//! [`crate::dataplane::upstream::LiveUpstream`]; both carry over a reload by one rule
//! ([`crate::runtime::live_route::kept`]).
//!
//! Adding a policy touches about five files: its config (`src/config/raw.rs` and the
//! compile step into `src/config/model.rs`), its state machine in `src/policy/` (plain, with
//! an injected clock), one field on `LiveRoute` or `LiveUpstream` for its live state, its stage
//! here (a new file and one line in the order above), and its metric names in
//! `src/metrics/names.rs`.

pub mod admit;
pub mod answer;
pub mod attempt;
pub mod deliver;
pub mod exchange;
pub mod hedge;
pub mod idempotency;
pub mod judge;
pub mod limit;
pub mod observe;
pub mod outcome;
pub mod record;
pub mod retry;
pub mod source;
pub mod target;
pub mod tunnel;

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

pub use exchange::Exchange;
pub use observe::ACCESS_LOG_TARGET;

use super::activity::ListenerLoad;
use super::body::ProxyBody;
use super::upgrade;
use crate::metrics::Metrics;
use crate::runtime::SnapshotHandle;

/// Header set on a response when a non-idempotent request may or may not have been delivered.
pub const OUTCOME_HEADER: &str = "x-backstop-outcome";

/// Serves the requests of one downstream connection. Cloning is one reference count.
#[derive(Debug, Clone)]
pub struct Pipeline(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    snapshots: SnapshotHandle,
    metrics: Metrics,
    peer: admit::Peer,
    /// Counts shared by the listener's connections (the replay buffer budget).
    load: Arc<ListenerLoad>,
}

impl Pipeline {
    /// The pipeline for a connection from `client_ip`.
    pub fn new(
        snapshots: &SnapshotHandle,
        metrics: &Metrics,
        client_ip: IpAddr,
        load: &Arc<ListenerLoad>,
    ) -> Self {
        let header = HeaderValue::from_str(&client_ip.to_string())
            .expect("an IP address is a valid header value");
        Self(Arc::new(Shared {
            snapshots: snapshots.clone(),
            metrics: metrics.clone(),
            peer: admit::Peer {
                ip: client_ip,
                header,
            },
            load: load.clone(),
        }))
    }

    /// Serves one request: the stages in order. Never fails: every failure is an answer.
    pub async fn serve(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let shared = &*self.0;
        let observed = observe::Observed::start(&mut req, &shared.metrics);
        let mut ex = Exchange::new(shared.snapshots.load(), Instant::now());
        let response = self.stages(&mut ex, req, observed.logging()).await;
        observed.finish(&ex, &shared.metrics, shared.peer.ip, response)
    }

    async fn stages(
        &self,
        ex: &mut Exchange,
        mut req: Request<Incoming>,
        logging: bool,
    ) -> Response<ProxyBody> {
        let shared = &*self.0;
        if let Err(error) = admit::admit(ex, &shared.peer, &mut req) {
            return answer::refuse_early(ex, error, req).await;
        }
        let client = shared.peer.header.to_str().unwrap_or("");
        let rate_headers = match limit::check(ex, &req, client, logging).await {
            Ok(headers) => headers,
            Err((error, headers)) => {
                let mut response = answer::refuse_early(ex, error, req).await;
                if let Some(headers) = headers {
                    headers.apply(response.headers_mut());
                }
                return response;
            }
        };
        let mut response = if ex.route().config.upgrade.is_some() && upgrade::requested(&req) {
            tunnel::deliver(ex, req).await
        } else {
            idempotency::deliver(ex, req, &shared.load).await
        };
        if let Some(headers) = rate_headers {
            headers.apply(response.headers_mut());
        }
        response
    }
}
