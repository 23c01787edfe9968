//! Stages 3 to 9 for one request: the deadline, then attempts until one answers or the rules
//! say stop. Each attempt passes breaker admission, the bulkhead and endpoint choice
//! ([`target::choose`]), is sent ([`attempt`]), classified ([`record`]), and the
//! [`retry`] stage says whether another one follows.
//!
//! The payment rules live in [`Trail`]: once a non-idempotent request may have been written to
//! an upstream, later attempts stay with that upstream and its priority group, and a failed
//! answer says `x-backstop-outcome: unknown`.

use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::attempt::{self, upstream_request};
use super::exchange::Exchange;
use super::outcome::{Attempt, End, Flags, Why};
use super::source::Source;
use super::target;
use super::{answer, hedge, judge, record, retry};
use crate::dataplane::activity::ListenerLoad;
use crate::dataplane::body::ProxyBody;
use crate::dataplane::pool::Via;
use crate::dataplane::quota::Admit;
use crate::dataplane::rescue::ProxyError;
use crate::policy::classify::{Call, CallResult};
use crate::policy::retry::{self as rules, RequestKind};

/// The attempts of one request so far, as the rules about payments need them.
#[derive(Debug, Default)]
struct Trail {
    /// (upstream, endpoint) pairs already tried.
    tried: Vec<(usize, usize)>,
    /// Once a non-idempotent request was written to an upstream, later attempts stay with that
    /// upstream and its priority group: an idempotency key deduplicates only at the provider
    /// that saw it.
    pin: Option<target::Pin>,
    /// An attempt may have been delivered without an answer (reset or timeout after writing).
    maybe_delivered: bool,
}

impl Trail {
    /// Notes where an attempt that may have reached the upstream went.
    fn attempted(&mut self, kind: RequestKind, call: Call, at: target::Pin) {
        if kind.non_idempotent_method() && !rules::never_sent(call.result) {
            self.pin.get_or_insert(at);
        }
        self.maybe_delivered |= rules::outcome_unknown(call.result);
    }
}

/// Sends the attempts for a request that passed admission and the rate limit.
pub async fn deliver(
    ex: &mut Exchange,
    req: Request<Incoming>,
    load: &ListenerLoad,
) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let snapshot = Arc::clone(&ex.snapshot);
    let route = &snapshot.routes[ex.outcome.route.unwrap_or_default()].config;
    let limits = &snapshot.config.server;
    let source = Source::new(body, route, load, limits, &mut ex.outcome.note);
    deliver_from(ex, parts, source).await
}

/// [`deliver`] with the body's [`Source`] already made (the idempotency stage reads bodies
/// whole first).
pub async fn deliver_from(
    ex: &mut Exchange,
    mut parts: http::request::Parts,
    source: Source,
) -> Response<ProxyBody> {
    let generated = generate_key(ex, &mut parts);
    let mut response = attempts(ex, parts, source).await;
    if let Some(key) = generated {
        response.headers_mut().insert(GENERATED_KEY_HEADER, key);
    }
    response
}

/// Header on the response naming the idempotency key backstop generated for the request.
pub const GENERATED_KEY_HEADER: &str = "x-backstop-idempotency-key";

/// Adds a fresh key (UUID v4) to a non-idempotent request without one, when the route's
/// upstream declares `idempotency_key: { generate: true }`. Added once, before the first
/// attempt, so every attempt carries the same key.
fn generate_key(ex: &Exchange, parts: &mut http::request::Parts) -> Option<HeaderValue> {
    let upstream = &ex.snapshot.upstreams[ex.route().config.upstream];
    let key = upstream.config.idempotency_key.as_ref()?;
    if !key.generate
        || rules::is_idempotent(&parts.method)
        || parts.headers.contains_key(&key.header)
    {
        return None;
    }
    let value = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).ok()?;
    parts.headers.insert(key.header.clone(), value.clone());
    ex.snapshot
        .metrics
        .idempotency_key_generated(&upstream.name);
    Some(value)
}

/// Stages 3 to 9.
async fn attempts(
    ex: &mut Exchange,
    mut parts: http::request::Parts,
    mut source: Source,
) -> Response<ProxyBody> {
    let snapshot = Arc::clone(&ex.snapshot);
    let route_index = ex.outcome.route.unwrap_or_default();
    let live = &snapshot.routes[route_index];
    let route = &live.config;
    let policy = route.retry.as_ref();

    attempt::prepare_headers(&mut parts);
    let http1 = parts.version <= Version::HTTP_11;
    // A request carrying the key header of an upstream that declares `idempotency_key` is
    // deduplicated there: retried like `non_idempotent: idempotency-key` (and pinned to that
    // upstream once written, see `Trail`).
    let keyed = snapshot.upstreams[route.upstream]
        .config
        .idempotency_key
        .as_ref()
        .is_some_and(|k| parts.headers.contains_key(&k.header));
    let kind = match policy {
        _ if rules::is_idempotent(&parts.method) => RequestKind::Idempotent,
        _ if keyed => RequestKind::KeyedNonIdempotent,
        Some(p) => rules::request_kind(&parts.method, &parts.headers, p),
        None => RequestKind::NonIdempotent,
    };
    if let Some(budget) = &live.budget {
        budget.deposit(ex.started);
    }
    if let Some(guard) = &live.burn {
        guard.budget.deposit(ex.started);
    }
    if let Some(hedge) = &live.hedge {
        hedge.deposit(ex.started);
    }

    // Stage 3, the deadline: every attempt and back-off fits in the route's timeout.
    let deadline = ex.deadline();
    let mut trail = Trail::default();
    let mut attempt_number = 0;
    let mut why = None;
    loop {
        attempt_number += 1;
        let now = Instant::now();
        // Stages 4 to 6: breaker admission, bulkhead, endpoint choice.
        let chosen = target::choose(&snapshot, route_index, &trail.tried, trail.pin, now);
        let target = match match chosen {
            Ok(target) => target.claimed().await,
            Err(error) => Err(error),
        } {
            Ok(target) => target,
            Err(error) => {
                let response = answer::refuse(ex, Some(route.upstream), error);
                return conclude(ex, kind, &trail, response, source, http1).await;
            }
        };
        let (upstream_index, endpoint_index) = (target.upstream, target.endpoint);
        let failover = target
            .passed_over
            .filter(|_| upstream_index != route.upstream);
        let upstream = &snapshot.upstreams[upstream_index];
        // Quota pacing: while the partner says its quota is spent, or the declared rate has
        // no slot yet, wait (within max_wait) or answer 429 without sending.
        let mut now = now;
        if let Some(quota) = &upstream.quota {
            let paced = quota
                .pace(now, deadline.saturating_duration_since(now))
                .await;
            if paced.note.is_some() {
                ex.outcome.note = paced.note;
            }
            match paced.admit {
                Admit::Now => {}
                Admit::After(wait) => {
                    tokio::time::sleep(wait).await;
                    now = Instant::now();
                }
                Admit::Refuse(retry_after) => {
                    drop(target);
                    let error = ProxyError::UpstreamQuotaExhausted { retry_after };
                    let response = answer::refuse(ex, Some(upstream_index), error);
                    return conclude(ex, kind, &trail, response, source, http1).await;
                }
            }
        }
        let stayed = trail.pin.is_some() && trail.tried.contains(&(upstream_index, endpoint_index));
        if stayed && (!route.failover.is_empty() || upstream.balancer.groups() > 1) {
            // Another provider or priority group would have taken it if the request could
            // not have been delivered already.
            ex.outcome.note = Some("not_failed_over_maybe_delivered");
        }
        if upstream_index != route.upstream {
            ex.outcome.flags.insert(Flags::FAILED_OVER);
            let from = &snapshot.upstreams[route.upstream].name;
            snapshot.metrics.failover(&route.name, from, &upstream.name);
        }
        ex.outcome.upstream = Some(upstream_index);
        ex.outcome.endpoint = Some(endpoint_index);
        ex.outcome.attempts = attempt_number;
        let remaining = deadline.saturating_duration_since(now);
        let per_try = policy
            .and_then(|p| p.per_try_timeout)
            .map_or(remaining, |t| t.min(remaining));
        let request_parts = if source.replayable() {
            parts.clone()
        } else {
            std::mem::replace(&mut parts, Request::new(()).into_parts().0)
        };
        let Some(request) = source
            .body_for_attempt()
            .and_then(|body| upstream_request(request_parts, body, upstream, endpoint_index))
        else {
            return answer::refuse(ex, Some(upstream_index), ProxyError::BadRequest);
        };

        // Stage 7, the attempt: hedged when the route hedges and the request may go twice.
        let sent_at = Instant::now();
        let own = upstream_index == route.upstream;
        let (target, sent) = match hedge::plan(ex, kind, &source, own, sent_at) {
            Some(plan) => {
                let hedger = hedge::Hedger {
                    snapshot: &snapshot,
                    route: route_index,
                    parts: &parts,
                    source: &source,
                    tried: &trail.tried,
                    keyed: kind == RequestKind::KeyedNonIdempotent,
                    deadline,
                    per_try: policy.and_then(|p| p.per_try_timeout),
                };
                let first = (target, request, why.take());
                let raced = hedge::race(ex, plan, first, per_try, hedger).await;
                for lost in raced.failed {
                    // Failed while another attempt ran: classified like any attempt, unless
                    // the client's side failed it.
                    let call = lost.sent.call;
                    if attempt::client_fault(&source.watch, call).is_some() {
                        continue;
                    }
                    let at = pin_of(&snapshot, &lost.target);
                    drop(record::record(&snapshot, lost.target, call));
                    trail.attempted(kind, call, at);
                    trail.tried.push((at.upstream, at.endpoint));
                }
                why = raced.winner.why;
                (raced.winner.target, raced.winner.sent)
            }
            None => {
                let mut sent =
                    attempt::send(upstream, endpoint_index, request, per_try, Via::Pooled).await;
                if sent.unread && source.can_replay() {
                    // The upstream closed a reused connection without reading the request:
                    // send it again on a new connection. Not a retry: the first copy never
                    // arrived.
                    let again = source.body_for_attempt().and_then(|body| {
                        upstream_request(parts.clone(), body, upstream, endpoint_index)
                    });
                    if let Some(request) = again {
                        ex.outcome.attempted(Attempt {
                            upstream: upstream_index,
                            endpoint: endpoint_index,
                            end: End::Unread,
                            elapsed: sent.call.elapsed,
                            why: why.take(),
                            failover,
                        });
                        why = Some(Why::Resend);
                        let left = per_try.saturating_sub(sent_at.elapsed());
                        sent = attempt::send(upstream, endpoint_index, request, left, Via::Fresh)
                            .await;
                    }
                }
                // Stage 7b: the partner's own rules say what its answer means.
                let left = per_try.saturating_sub(sent_at.elapsed());
                judge::judge(upstream, &mut sent, left).await;
                let answered = sent.call.result.status().is_some();
                if let Some(cell) = live.hedge.as_ref().filter(|_| own && answered) {
                    // `after: p95` learns from unhedged attempts too (it must start somewhere).
                    cell.observe(sent.call.elapsed, Instant::now());
                }
                (target, sent)
            }
        };
        let endpoint_index = target.endpoint;
        ex.outcome.endpoint = Some(endpoint_index);
        ex.outcome.judged = match sent.call.result {
            CallResult::Judged(_, decision) => Some((upstream_index, decision)),
            _ => None,
        };
        if let (Some(quota), Ok(response)) = (&upstream.quota, &sent.response) {
            quota.learn(response.status(), response.headers(), Instant::now());
        }
        let call = sent.call;
        let fault = attempt::client_fault(&source.watch, call);
        ex.outcome.attempted(Attempt {
            upstream: upstream_index,
            endpoint: endpoint_index,
            end: End::of(call.result, fault.is_some()),
            elapsed: call.elapsed,
            why: why.take(),
            failover,
        });
        if let Some(fault) = fault {
            // The client broke, stalled or left: nothing here is the upstream's doing, so
            // the breaker, ejection, retry budget, SLO and unknown counters see nothing.
            drop(target);
            let mut response = answer::refuse(ex, Some(upstream_index), fault);
            if http1 {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return response;
        }

        // Stage 8, outcome classification.
        let at = pin_of(&snapshot, &target);
        drop(record::record(&snapshot, target, call));
        trail.attempted(kind, call, at);

        // Stage 9, the retry decision.
        let decision = if retry::wanted(ex, call) {
            let response = sent.response.as_ref().ok();
            retry::decide(
                ex,
                kind,
                call,
                attempt_number,
                source.can_replay(),
                response,
            )
            .await
        } else {
            Err(None)
        };
        match decision {
            Ok(reason) => {
                trail.tried.push((upstream_index, endpoint_index));
                why = Some(Why::Retry(reason));
                continue;
            }
            Err(note) => ex.outcome.note = note.or(ex.outcome.note),
        }
        let response = match sent.response {
            Ok(response) => response,
            Err(error) => answer::refuse(ex, Some(upstream_index), error),
        };
        return conclude(ex, kind, &trail, response, source, http1).await;
    }
}

/// Where an attempt at `target` went, for the payment rules.
fn pin_of(snapshot: &crate::runtime::Snapshot, target: &target::Target) -> target::Pin {
    let upstream = &snapshot.upstreams[target.upstream];
    target::Pin {
        upstream: target.upstream,
        priority: upstream.config.endpoints[target.endpoint].priority,
        endpoint: target.endpoint,
    }
}

/// The last answer: marked `outcome: unknown` when the payment rules say so, and the client's
/// connection kept usable.
async fn conclude(
    ex: &mut Exchange,
    kind: RequestKind,
    trail: &Trail,
    mut response: Response<ProxyBody>,
    source: Source,
    http1: bool,
) -> Response<ProxyBody> {
    if kind.non_idempotent_method() && trail.maybe_delivered {
        let route = ex.route().config.upstream;
        answer::mark_unknown(ex, trail.pin.map_or(route, |p| p.upstream), &mut response);
    }
    source.settle(response, http1).await
}
