//! The innermost service: match a route, then send attempts until one answers or the rules say
//! stop.
//!
//! Each attempt goes to a [`target::choose`]n upstream and endpoint. After it, the outcome feeds
//! the breaker and outlier detection, and [`retry::decide`] says whether another attempt is
//! safe and useful; the retry budget, the total deadline and the replayability of the body can
//! still refuse it. The service never fails (`Error = Infallible`): every failure becomes a
//! response through [`ProxyError::to_response`], and the [`Outcome`] it attaches tells the
//! outer layers what happened.
//!
//! A WebSocket upgrade is refused on routes without `upgrade: websocket`; on the others it is
//! sent once by [`Proxy::deliver_upgrade`], and a 101 becomes a tunnel (see [`upgrade`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::Service;

use super::activity::ListenerLoad;
use super::body::ProxyBody;
use super::client_body::{BodyFault, BodyWatch, ClientBody};
use super::forward;
use super::outcome::Outcome;
use super::path;
use super::pool::{SendError, Via};
use super::ratelimit::Decision;
use super::replay::ReplayBody;
use super::request_body::RequestBody;
use super::request_checks;
use super::rescue::ProxyError;
use super::router;
use super::settle;
use super::target::{self, Target};
use super::upgrade;
use super::upstream::LiveUpstream;
use crate::metrics::AttemptResult;
use crate::policy::classify::{Call, CallResult};
use crate::policy::retry::{self, RequestKind, Stop};
use crate::runtime::{Snapshot, SnapshotHandle};

/// Header set on a response when a non-idempotent request may or may not have been delivered.
pub const OUTCOME_HEADER: &str = "x-backstop-outcome";

/// No attempt starts with less time than this left before the deadline.
const MIN_ATTEMPT: Duration = Duration::from_millis(10);

/// Forwards requests of one downstream connection.
#[derive(Debug, Clone)]
pub struct Proxy {
    snapshots: SnapshotHandle,
    /// The client's address.
    client_ip: IpAddr,
    /// The client's address as an `x-forwarded-for` entry, formatted once per connection.
    client: HeaderValue,
    /// Counts shared by the listener's connections (the replay buffer budget).
    load: Arc<ListenerLoad>,
}

/// Where the request body for each attempt comes from.
enum Source {
    /// Sent once, as is.
    Once(Option<ClientBody>),
    /// Kept for replay.
    Replay(ReplayBody),
    /// The client sent no body: every attempt gets an empty one, nothing to keep.
    Empty,
}

impl Source {
    fn next(&mut self) -> Option<RequestBody> {
        match self {
            Source::Once(body) => body.take().map(|body| RequestBody::Direct { body }),
            Source::Replay(body) => Some(RequestBody::Replay {
                body: body.replay(),
            }),
            Source::Empty => Some(RequestBody::Local {
                body: http_body_util::Full::new(bytes::Bytes::new()),
            }),
        }
    }

    fn can_replay(&self) -> bool {
        match self {
            Source::Once(body) => body.is_some(),
            Source::Replay(body) => body.can_replay(),
            Source::Empty => true,
        }
    }

    /// What is left of the client's body, if backstop still holds it, for draining.
    fn remainder(self) -> settle::Remainder {
        match self {
            Source::Once(Some(body)) => settle::Remainder::Client(body),
            Source::Replay(body) => settle::Remainder::Replay(body),
            Source::Once(None) => settle::Remainder::Gone,
            Source::Empty => settle::Remainder::None,
        }
    }
}

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

impl Proxy {
    /// A proxy for a connection from `client_ip`.
    pub fn new(snapshots: SnapshotHandle, client_ip: IpAddr, load: Arc<ListenerLoad>) -> Self {
        let client = HeaderValue::from_str(&client_ip.to_string())
            .expect("an IP address is a valid header value");
        Self {
            snapshots,
            client_ip,
            client,
            load,
        }
    }

    async fn forward(self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let snapshot = self.snapshots.load();
        let mut outcome = Outcome::new(snapshot.clone());
        if let Err(error) = request_checks::check(&mut req) {
            let response = finish(error.to_response(None, None), outcome, Some(error));
            return self.answer_early(response, req, &snapshot).await;
        }
        if path::normalize_uri(req.uri_mut()).is_err() {
            let error = ProxyError::BadPath;
            let response = finish(error.to_response(None, None), outcome, Some(error));
            return self.answer_early(response, req, &snapshot).await;
        }
        // Before routing and rate limiting, so neither sees a forged x-forwarded-for.
        let trusted = forward::is_trusted(&snapshot.config.server.trusted_proxies, self.client_ip);
        let (mut parts, body) = req.into_parts();
        forward::add_forwarded(&mut parts.headers, &parts.uri, &self.client, trusted);
        let req = Request::from_parts(parts, body);
        let Some(route_index) = router::find(&snapshot.config.routes, &req) else {
            let error = ProxyError::NoRoute;
            let response = finish(error.to_response(None, None), outcome, Some(error));
            return self.answer_early(response, req, &snapshot).await;
        };
        outcome.route = Some(route_index);
        let route = &snapshot.config.routes[route_index];
        if !route.allow_encoded_slashes && path::has_encoded_slash(req.uri().path()) {
            let error = ProxyError::BadPath;
            let response = self.fail(&snapshot, route_index, route.upstream, error, outcome);
            return self.answer_early(response, req, &snapshot).await;
        }
        if route.upgrade.is_none() && upgrade::requested(&req) {
            let error = ProxyError::UpgradeNotAllowed;
            let response = self.fail(&snapshot, route_index, route.upstream, error, outcome);
            return self.answer_early(response, req, &snapshot).await;
        }
        let Some(limiter) = &snapshot.route_limiters[route_index] else {
            return self
                .deliver(req, &snapshot, route_index, outcome, started)
                .await;
        };
        let client = self.client.to_str().unwrap_or("");
        let upstream = snapshot.config.routes[route_index].upstream;
        match limiter.decide(req.headers(), client).await {
            Decision::Admit(headers, note) => {
                outcome.note = note;
                let mut response = self
                    .deliver(req, &snapshot, route_index, outcome, started)
                    .await;
                headers.apply(response.headers_mut());
                response
            }
            Decision::Reject(headers, retry_after) => {
                let error = ProxyError::RateLimited { retry_after };
                let mut response = self.fail(&snapshot, route_index, upstream, error, outcome);
                headers.apply(response.headers_mut());
                self.answer_early(response, req, &snapshot).await
            }
            Decision::MissingKey => {
                let error = ProxyError::RateLimitKeyMissing;
                let response = self.fail(&snapshot, route_index, upstream, error, outcome);
                self.answer_early(response, req, &snapshot).await
            }
        }
    }

    /// An answer given before any attempt: keeps the client's connection usable despite the
    /// unread body (see [`settle`]).
    async fn answer_early(
        &self,
        response: Response<ProxyBody>,
        req: Request<Incoming>,
        snapshot: &Snapshot,
    ) -> Response<ProxyBody> {
        let http1 = req.version() <= Version::HTTP_11;
        let timeout = snapshot.config.server.client_body_timeout;
        settle::keep_alive_safe_raw(response, req.into_body(), http1, timeout).await
    }

    /// Sends attempts for a request that matched `route_index` and passed its rate limit.
    async fn deliver(
        &self,
        req: Request<Incoming>,
        snapshot: &Arc<Snapshot>,
        route_index: usize,
        mut outcome: Outcome,
        started: Instant,
    ) -> Response<ProxyBody> {
        let route = &snapshot.config.routes[route_index];
        if route.upgrade.is_some() && upgrade::requested(&req) {
            return self
                .deliver_upgrade(req, snapshot, route_index, outcome, started)
                .await;
        }
        let policy = route.retry.as_ref();
        let limits = &snapshot.config.server;

        let (mut parts, body) = req.into_parts();
        self.prepare_headers(&mut parts);
        let http1 = parts.version <= Version::HTTP_11;
        let kind = match policy {
            Some(p) => retry::request_kind(&parts.method, &parts.headers, p),
            None if retry::is_idempotent(&parts.method) => RequestKind::Idempotent,
            None => RequestKind::NonIdempotent,
        };
        let (body, watch) = ClientBody::new(body, limits.client_body_timeout);
        // Small bodies are always kept, so that a request an upstream provably never read (it
        // reset a reused connection first) can be sent again on a fresh one.
        let known = http_body::Body::size_hint(&body).exact();
        let small = known.is_some_and(|n| n <= settle::DRAIN_LIMIT as u64);
        let replayable =
            small || policy.is_some_and(|p| p.attempts > 1) || !route.failover.is_empty();
        let mut _reserved = None;
        let mut source = if replayable && watch.ended() {
            Source::Empty
        } else if replayable {
            let limit = policy.map_or(settle::DRAIN_LIMIT, |p| p.max_buffered_body);
            // A body of known length holds only what it can fill.
            let reserve = known.map_or(limit, |n| usize::try_from(n).unwrap_or(limit).min(limit));
            match self.load.reserve_buffer(reserve, limits.max_buffered_bytes) {
                Some(reservation) => {
                    _reserved = Some(reservation);
                    Source::Replay(ReplayBody::new(body, limit))
                }
                None => {
                    outcome.note = Some("not_buffered_memory_limit");
                    Source::Once(Some(body))
                }
            }
        } else {
            Source::Once(Some(body))
        };
        if let Some(budget) = &snapshot.route_budgets[route_index] {
            budget.deposit(started);
        }

        let deadline = started + route.timeout;
        let mut trail = Trail::default();
        let mut attempt_number = 0;
        loop {
            attempt_number += 1;
            let now = Instant::now();
            let target = match target::choose(snapshot, route_index, &trail.tried, trail.pin, now) {
                Ok(target) => target,
                Err(error) => {
                    let response = self.fail(snapshot, route_index, route.upstream, error, outcome);
                    let response = self.mark_unknown(snapshot, route_index, kind, &trail, response);
                    return settle::keep_alive_safe(response, source.remainder(), &watch, http1)
                        .await;
                }
            };
            let (upstream_index, endpoint_index) = (target.upstream, target.endpoint);
            if trail.pin.is_some() && trail.tried.contains(&(upstream_index, endpoint_index)) {
                let upstream = &snapshot.upstreams[upstream_index];
                if !route.failover.is_empty() || upstream.balancer.groups() > 1 {
                    // Another provider or priority group would have taken it if the request
                    // could not have been delivered already.
                    outcome.note = Some("not_failed_over_maybe_delivered");
                }
            }
            if upstream_index != route.upstream {
                let from = &snapshot.upstreams[route.upstream].name;
                snapshot.metrics.failover(
                    &route.name,
                    from,
                    &snapshot.upstreams[upstream_index].name,
                );
            }
            outcome.upstream = Some(upstream_index);
            outcome.endpoint = Some(endpoint_index);
            outcome.attempts = attempt_number;
            let upstream = &snapshot.upstreams[upstream_index];
            let remaining = deadline.saturating_duration_since(now);
            let per_try = policy
                .and_then(|p| p.per_try_timeout)
                .map_or(remaining, |t| t.min(remaining));
            let last_attempt = !replayable;
            let request_parts = if last_attempt {
                std::mem::replace(&mut parts, Request::new(()).into_parts().0)
            } else {
                parts.clone()
            };
            let Some(request) = source
                .next()
                .and_then(|body| upstream_request(request_parts, body, upstream, endpoint_index))
            else {
                return self.fail(
                    snapshot,
                    route_index,
                    upstream_index,
                    ProxyError::BadRequest,
                    outcome,
                );
            };
            let sent_at = Instant::now();
            let (mut call, mut response, unread) =
                send(upstream, endpoint_index, request, per_try, Via::Pooled).await;
            if unread && source.can_replay() {
                // The upstream closed a reused connection without reading the request: send
                // it again on a new connection. Not a retry: the first copy never arrived.
                let again = source.next().and_then(|body| {
                    upstream_request(parts.clone(), body, upstream, endpoint_index)
                });
                if let Some(request) = again {
                    let left = per_try.saturating_sub(sent_at.elapsed());
                    (call, response, _) =
                        send(upstream, endpoint_index, request, left, Via::Fresh).await;
                }
            }
            if let Some(fault) = client_fault(&watch, call) {
                // The client broke, stalled or left: nothing here is the upstream's doing, so
                // the breaker, ejection, retry budget, SLO and unknown counters see nothing.
                drop(target);
                let mut response = self.fail(snapshot, route_index, upstream_index, fault, outcome);
                if http1 {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                return response;
            }
            let priority = upstream.config.endpoints[endpoint_index].priority;
            account(upstream, endpoint_index, call);
            drop(record(snapshot, target, call));
            if kind.non_idempotent_method() && !retry::never_sent(call.result) {
                trail.pin.get_or_insert(target::Pin {
                    upstream: upstream_index,
                    priority,
                    endpoint: endpoint_index,
                });
            }
            trail.maybe_delivered |= retry::outcome_unknown(call.result);

            // Most answers match no retry condition: decide that without the async machinery.
            let retryable = policy.is_some_and(|p| p.on.matches(call.result).is_some());
            let hint = if retryable {
                response.as_ref().ok().and_then(retry_after)
            } else {
                None
            };
            let decision = if !retryable {
                Err(None)
            } else {
                self.retry_decision(
                    snapshot,
                    route_index,
                    kind,
                    call,
                    attempt_number,
                    &source,
                    deadline,
                    hint,
                )
                .await
            };
            let note = match decision {
                Ok(()) => {
                    trail.tried.push((upstream_index, endpoint_index));
                    continue;
                }
                Err(note) => note,
            };
            outcome.note = note.or(outcome.note);
            let response = match response {
                Ok(response) => finish(response, outcome, None),
                Err(error) => self.fail(snapshot, route_index, upstream_index, error, outcome),
            };
            let response = self.mark_unknown(snapshot, route_index, kind, &trail, response);
            return settle::keep_alive_safe(response, source.remainder(), &watch, http1).await;
        }
    }

    /// A WebSocket upgrade on a route that allows it: one attempt, no retry, on a new upstream
    /// connection. A 101 answer carries the [`upgrade::Tunnel`] that will hold the bulkhead
    /// slot; any other answer goes back as it is.
    async fn deliver_upgrade(
        &self,
        mut req: Request<Incoming>,
        snapshot: &Arc<Snapshot>,
        route_index: usize,
        mut outcome: Outcome,
        started: Instant,
    ) -> Response<ProxyBody> {
        let route = &snapshot.config.routes[route_index];
        let on_client = hyper::upgrade::on(&mut req);
        let protocol = req.headers().get(header::UPGRADE).cloned();
        let (mut parts, body) = req.into_parts();
        self.prepare_headers(&mut parts);
        if let Some(protocol) = protocol {
            upgrade::keep_upgrade_headers(&mut parts.headers, protocol);
        }
        let (body, watch) = ClientBody::new(body, snapshot.config.server.client_body_timeout);
        let target = match target::choose(snapshot, route_index, &[], None, Instant::now()) {
            Ok(target) => target,
            Err(error) => {
                let response = self.fail(snapshot, route_index, route.upstream, error, outcome);
                let rest = settle::Remainder::Client(body);
                return settle::keep_alive_safe(response, rest, &watch, true).await;
            }
        };
        let (upstream_index, endpoint_index) = (target.upstream, target.endpoint);
        outcome.upstream = Some(upstream_index);
        outcome.endpoint = Some(endpoint_index);
        outcome.attempts = 1;
        let upstream = &snapshot.upstreams[upstream_index];
        let body = RequestBody::Direct { body };
        let Some(request) = upstream_request(parts, body, upstream, endpoint_index) else {
            let error = ProxyError::BadRequest;
            return self.fail(snapshot, route_index, upstream_index, error, outcome);
        };
        let timeout = (started + route.timeout).saturating_duration_since(Instant::now());
        let (call, response, _) =
            send(upstream, endpoint_index, request, timeout, Via::Upgrade).await;
        if let Some(fault) = client_fault(&watch, call) {
            drop(target);
            let mut response = self.fail(snapshot, route_index, upstream_index, fault, outcome);
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        account(upstream, endpoint_index, call);
        let slot = record(snapshot, target, call);
        let response = match response {
            Ok(response) if response.status() == StatusCode::SWITCHING_PROTOCOLS => response,
            Ok(response) => {
                drop(slot);
                let response = finish(response, outcome, None);
                let rest = settle::Remainder::Gone;
                return settle::keep_alive_safe(response, rest, &watch, true).await;
            }
            Err(error) => {
                drop(slot);
                let response = self.fail(snapshot, route_index, upstream_index, error, outcome);
                let rest = settle::Remainder::Gone;
                return settle::keep_alive_safe(response, rest, &watch, true).await;
            }
        };
        if !response.headers().contains_key(header::UPGRADE) {
            // A 101 must name the protocol it switched to (RFC 9110 section 15.2.2).
            tracing::debug!(upstream = %upstream.name, "101 without an Upgrade header");
            let error = ProxyError::UpstreamError;
            let mut response = self.fail(snapshot, route_index, upstream_index, error, outcome);
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        let mut response = response;
        let on_upstream = hyper::upgrade::on(&mut response);
        let (parts, upstream_body) = response.into_parts();
        let mut response = Response::from_parts(parts, ProxyBody::local(bytes::Bytes::new()));
        let idle_timeout = upstream.config.read_timeout;
        let tunnel =
            upgrade::Tunnel::new(on_client, on_upstream, idle_timeout, (slot, upstream_body));
        response.extensions_mut().insert(tunnel);
        finish(response, outcome, None)
    }

    /// A failed answer to a non-idempotent request that any attempt may have delivered says
    /// so: `x-backstop-outcome: unknown`, and the metric counts it.
    fn mark_unknown(
        &self,
        snapshot: &Snapshot,
        route_index: usize,
        kind: RequestKind,
        trail: &Trail,
        mut response: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        if !kind.non_idempotent_method()
            || !trail.maybe_delivered
            || !response.status().is_server_error()
        {
            return response;
        }
        response
            .headers_mut()
            .insert(OUTCOME_HEADER, HeaderValue::from_static("unknown"));
        let route = &snapshot.config.routes[route_index];
        let upstream = trail.pin.map_or(route.upstream, |p| p.upstream);
        snapshot
            .metrics
            .outcome_unknown(&route.name, &snapshot.upstreams[upstream].name);
        response
    }

    /// Decides whether to send another attempt and, if so, waits out the back-off. `Err` means
    /// answer with what we have, with a note for the access log when a rule refused a retry.
    #[allow(clippy::too_many_arguments)]
    async fn retry_decision(
        &self,
        snapshot: &Snapshot,
        route_index: usize,
        kind: RequestKind,
        call: Call,
        attempt: u32,
        source: &Source,
        deadline: Instant,
        retry_after: Option<Duration>,
    ) -> Result<(), Option<&'static str>> {
        let route = &snapshot.config.routes[route_index];
        let policy = route.retry.as_ref().ok_or(None)?;
        let reason = match retry::decide(policy, kind, call.result, attempt) {
            Ok(reason) => reason,
            Err(Stop::MaybeDelivered) => return Err(Some("not_retried_maybe_delivered")),
            Err(Stop::Exhausted) => return Err(Some("retries_exhausted")),
            Err(_) => return Err(None),
        };
        if !source.can_replay() {
            return Err(Some("not_retried_body_too_large"));
        }
        let budget = snapshot.route_budgets[route_index].as_ref().ok_or(None)?;
        if !budget.withdraw(Instant::now()) {
            snapshot.metrics.budget_exhausted(&route.name);
            return Err(Some("retry_budget_exhausted"));
        }
        let backoff = retry::backoff(policy, attempt, retry_after, rand::random());
        if Instant::now() + backoff + MIN_ATTEMPT > deadline {
            return Err(Some("no_time_left_for_retry"));
        }
        snapshot.metrics.retry(&route.name, reason);
        tokio::time::sleep(backoff).await;
        Ok(())
    }

    fn fail(
        &self,
        snapshot: &Snapshot,
        route: usize,
        upstream: usize,
        error: ProxyError,
        mut outcome: Outcome,
    ) -> Response<ProxyBody> {
        let route_name = &snapshot.config.routes[route].name;
        let upstream_name = &snapshot.upstreams[upstream].name;
        outcome.upstream.get_or_insert(upstream);
        finish(
            error.to_response(Some(route_name), Some(upstream_name)),
            outcome,
            Some(error),
        )
    }

    /// Rewrites the client's headers once for all attempts.
    fn prepare_headers(&self, parts: &mut Parts) {
        if !parts.headers.contains_key(header::HOST) {
            // HTTP/2 carries the host in the URI; HTTP/1.1 upstreams need the header.
            if let Some(value) = parts.uri.authority().and_then(|a| a.as_str().parse().ok()) {
                parts.headers.insert(header::HOST, value);
            }
        }
        // The forwarding headers were set in `forward`, before routing.
        forward::strip_hop_by_hop(&mut parts.headers);
    }
}

/// The request for `endpoint` of `upstream`, in origin form (`/path?query`) with a `Host`;
/// `None` if the endpoint does not exist.
fn upstream_request(
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

/// Sends one attempt and classifies how it ended; the flag says the upstream provably did
/// not read the request (see [`SendError::NotProcessed`]). [`account`] then counts it,
/// unless the client was at fault. A 101 to an upgrade keeps its `Upgrade` header.
async fn send(
    upstream: &LiveUpstream,
    endpoint_index: usize,
    request: Request<RequestBody>,
    timeout: Duration,
    via: Via,
) -> (Call, Result<Response<ProxyBody>, ProxyError>, bool) {
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
    (Call { result, elapsed }, response, unread)
}

/// Counts an attempt in the endpoint's load estimate and metrics.
fn account(upstream: &LiveUpstream, endpoint_index: usize, call: Call) {
    let endpoint = &upstream.endpoints[endpoint_index];
    let Call { result, elapsed } = call;
    if let CallResult::Status(_) = result {
        endpoint.load.observe(elapsed);
    } else {
        // A failure is as bad as the slowest answer: make the endpoint expensive for a while.
        endpoint.load.observe(elapsed.max(Duration::from_secs(1)));
    }
    endpoint.metrics.attempt(match result {
        CallResult::Status(s) if s >= 500 => AttemptResult::Status5xx,
        CallResult::Status(_) => AttemptResult::Success,
        CallResult::ConnectFailure => AttemptResult::ConnectFailure,
        CallResult::Timeout => AttemptResult::Timeout,
        CallResult::Reset => AttemptResult::Error,
    });
}

/// The client's fault behind a failed attempt, if it was one: its body broke, it left, or the
/// attempt timed out while waiting for the client's next bytes.
fn client_fault(watch: &BodyWatch, call: Call) -> Option<ProxyError> {
    if matches!(call.result, CallResult::Status(_)) {
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

/// Feeds an attempt's outcome to the breaker and outlier detection; hands back the bulkhead
/// slot, for the caller to free (or to keep for a tunnel).
fn record(snapshot: &Snapshot, target: Target, call: Call) -> super::bulkhead::Slot {
    let now = Instant::now();
    let upstream = &snapshot.upstreams[target.upstream];
    let failure_set = target.permit.as_ref().map(|p| p.failure_on().clone());
    if let Some(permit) = target.permit {
        let probe_passed = permit.is_probe() && !permit.failure_on().is_failure(call.result);
        permit.record(call, now);
        if probe_passed {
            // The breaker just saw the upstream healthy again: so should the balancer.
            super::load::forgive(&upstream.endpoints, target.endpoint, now);
        }
    }
    if let Some(ejection) = &upstream.ejection {
        let failure = failure_set.unwrap_or_default().is_failure(call.result);
        ejection.record(target.endpoint, failure, now);
    }
    target.slot
}

/// The upstream's Retry-After in seconds, if it sent one.
fn retry_after(response: &Response<ProxyBody>) -> Option<Duration> {
    let secs: u64 = response
        .headers()
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
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
    outcome.reason = error;
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
