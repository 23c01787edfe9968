//! Stages 4 to 6, breaker admission, bulkhead (the fixed `max_concurrent_requests` and the
//! adaptive limit) and endpoint choice: where the next attempt goes: which upstream (the route's, else its failover list) and which
//! endpoint, past the breaker and the bulkhead.
//!
//! An upstream can take an attempt when its breaker admits it, its bulkhead has room, and it
//! has an available endpoint: healthy, not ejected, and not already tried by this request. The
//! route's upstream is asked first, then each `failover` upstream in order. When none can, the
//! answer is the first refusal (circuit open beats overloaded) so the client learns why.

use std::sync::Arc;

use tokio::time::Instant;

use crate::dataplane::adaptive_cell::AdaptivePermit;
use crate::dataplane::breaker_cell::{BreakerCell, Permit};
use crate::dataplane::bulkhead::Slot;
use crate::dataplane::rescue::ProxyError;
use crate::dataplane::upstream::LiveUpstream;
use crate::runtime::Snapshot;

/// A chosen endpoint with the permits that admit the attempt.
#[derive(Debug)]
pub struct Target {
    /// Index into the snapshot's upstreams.
    pub upstream: usize,
    /// Index into that upstream's endpoints.
    pub endpoint: usize,
    /// The breaker's permit, when the upstream has a breaker.
    pub permit: Option<Permit>,
    /// The bulkhead slot; held until the response headers arrive (by a WebSocket tunnel, until
    /// it closes).
    pub slot: Slot,
    /// The place under the upstream's adaptive concurrency limit, when it has one.
    pub adaptive: Option<AdaptivePermit>,
    /// Why the route's own upstream did not take the attempt, when another one does: a
    /// refusal's reason (`circuit_open`, `overloaded`...) or `no_available_endpoint`.
    pub passed_over: Option<&'static str>,
}

impl Target {
    /// A shared breaker's half-open probe claims its fleet slot (one Redis round trip); any
    /// other target passes as it is. A refusal hands back every permit it holds.
    pub async fn claimed(mut self) -> Result<Target, ProxyError> {
        if let Some(permit) = self.permit.take() {
            self.permit = Some(BreakerCell::claim(permit).await?);
        }
        Ok(self)
    }
}

/// Where a request that may have been delivered must stay: the upstream (provider) and
/// priority group that saw it. Only attempts that provably were never written may move on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    /// Index of the upstream.
    pub upstream: usize,
    /// Its priority group.
    pub priority: u32,
    /// The endpoint that saw it, used again when no other endpoint of the group is available.
    pub endpoint: usize,
}

/// Chooses the target for the next attempt of a request on `route`, avoiding `tried`
/// (upstream, endpoint) pairs; with a `pin`, only within the pinned upstream and group.
pub fn choose(
    snapshot: &Snapshot,
    route: usize,
    tried: &[(usize, usize)],
    pin: Option<Pin>,
    now: Instant,
) -> Result<Target, ProxyError> {
    if let Some(pin) = pin {
        let upstream = &snapshot.upstreams[pin.upstream];
        let in_group = |e: usize| upstream.config.endpoints[e].priority == pin.priority;
        let endpoint = pick(upstream, pin.upstream, tried, &in_group, now).unwrap_or(pin.endpoint);
        return enter(snapshot, route, pin.upstream, endpoint, now);
    }
    let config = &snapshot.routes[route].config;
    let candidates = std::iter::once(config.upstream).chain(config.failover.iter().copied());
    let mut refusal = None;
    let mut fallback = None;
    let mut passed_over = None;
    for u in candidates {
        let Some(endpoint) = pick(&snapshot.upstreams[u], u, tried, &|_| true, now) else {
            fallback.get_or_insert(u);
            passed_over.get_or_insert("no_available_endpoint");
            continue;
        };
        match enter(snapshot, route, u, endpoint, now) {
            Ok(target) => {
                return Ok(Target {
                    passed_over,
                    ..target
                })
            }
            Err(error) => {
                passed_over.get_or_insert(error.reason());
                refusal.get_or_insert(error);
            }
        }
    }
    if let Some(error) = refusal {
        return Err(error);
    }
    // No available endpoint anywhere (all down, ejected or tried): rather than fail, send to
    // the first upstream without one by its schedule, still through its breaker and bulkhead.
    let u = fallback.unwrap_or(config.upstream);
    enter(
        snapshot,
        route,
        u,
        snapshot.upstreams[u].balancer.pick(),
        now,
    )
}

/// A target for a hedge: another endpoint of the route's own upstream than those `tried`, in
/// priority group `priority` (healthy, not ejected), past its breaker and bulkhead; `None`
/// when there is none.
pub fn another(
    snapshot: &Snapshot,
    route: usize,
    tried: &[(usize, usize)],
    priority: u32,
    now: Instant,
) -> Option<Target> {
    let u = snapshot.routes[route].config.upstream;
    let upstream = &snapshot.upstreams[u];
    let in_group = |e: usize| upstream.config.endpoints[e].priority == priority;
    let endpoint = pick(upstream, u, tried, &in_group, now)?;
    enter(snapshot, route, u, endpoint, now).ok()
}

/// Passes the breaker and the bulkhead of upstream `u` for an attempt at `endpoint`. The
/// route-level breaker, if any, guards the route's own upstream; failover upstreams (never
/// the route's own, by validation) use their upstream-level breaker.
fn enter(
    snapshot: &Snapshot,
    route: usize,
    u: usize,
    endpoint: usize,
    now: Instant,
) -> Result<Target, ProxyError> {
    let upstream = &snapshot.upstreams[u];
    let live = &snapshot.routes[route];
    let breaker: Option<&Arc<BreakerCell>> = if u == live.config.upstream {
        live.breaker.as_ref().or(upstream.breaker.as_ref())
    } else {
        upstream.breaker.as_ref()
    };
    let permit = breaker.map(|b| b.check(now)).transpose()?;
    // A probe admitted above is handed back by the permit's Drop if the bulkhead refuses.
    let slot = upstream
        .bulkhead
        .try_enter()
        .ok_or(ProxyError::Overloaded)?;
    let adaptive = match &upstream.adaptive {
        Some(cell) => Some(
            cell.try_acquire()
                .ok_or(ProxyError::AdaptiveConcurrencyLimited)?,
        ),
        None => None,
    };
    Ok(Target {
        upstream: u,
        endpoint,
        permit,
        slot,
        adaptive,
        passed_over: None,
    })
}

fn pick(
    upstream: &LiveUpstream,
    u: usize,
    tried: &[(usize, usize)],
    allowed: &dyn Fn(usize) -> bool,
    now: Instant,
) -> Option<usize> {
    let available = |e: usize| {
        allowed(e)
            && upstream.endpoints[e].is_healthy()
            && upstream
                .ejection
                .as_ref()
                .is_none_or(|x| x.is_available(e, now))
            && !tried.contains(&(u, e))
    };
    let mode = upstream.balancer.mode();
    let cost = |e: usize| upstream.endpoints[e].load.cost(mode);
    upstream
        .balancer
        .pick_available(available, cost)
        .map(|(e, _)| e)
}
