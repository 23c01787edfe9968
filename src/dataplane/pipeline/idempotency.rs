//! Stage 2b, idempotency keys (`routes[].idempotency`): a request with a key is delivered at
//! most once per key; repeats get the first one's stored response.
//!
//! Requests without the key header, and safe methods (GET, HEAD, OPTIONS, TRACE), pass
//! through untouched. For the others:
//! 1. The body is read whole, up to `max_request_bytes` (larger: 413
//!    `idempotency_body_too_large`), and the request's fingerprint (SHA-256 of the method, path
//!    and query, and body, as configured) taken.
//! 2. The store claims the key atomically ([`Store::claim`]) for a lease of the route's timeout
//!    plus [`LEASE_MARGIN`], or returns the existing record; a repeat is answered by
//!    [`policy::repeat`] without being delivered.
//! 3. The claimed request is delivered ([`deliver::deliver_from`]). Its ending decides the
//!    record ([`policy::conclude`]): a final response is read up to `max_response_bytes`
//!    and stored before the client gets it (a larger one is answered in full but recorded as
//!    not stored); no attempt sent: released; maybe acted on: unknown.
//! 4. If the request is abandoned mid-flight (the client went away and the pipeline future was
//!    dropped), [`Pending`]'s drop records the outcome as unknown.
//!
//! A store failure counts `store_error` and applies the route's `on_error`: `forward` delivers
//! the request unrecorded, `refuse` answers 503 `idempotency_store_unavailable`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::answer;
use super::deliver;
use super::exchange::Exchange;
use super::outcome::{End, TRAIL_LEN};
use super::source::Source;
use crate::config::{FingerprintParts, Idempotency};
use crate::dataplane::activity::ListenerLoad;
use crate::dataplane::body::{read_prefix, Prefix, ProxyBody};
use crate::dataplane::client_body::{BodyFault, ClientBody};
use crate::dataplane::idempotency::{
    Claim, Entry, Fingerprint, Store, StoredResponse, Ticket, STORED_HEADERS,
};
use crate::dataplane::rescue::ProxyError;
use crate::dataplane::settle;
use crate::policy::idempotency::{self as policy, Conclusion, Recorded, Repeat, Sent};

/// Added to the route's timeout for the lease of an in-progress record: time to read and store
/// the response after its head arrived. A claim older than its lease expires, so a replica
/// that crashed mid-request does not block its key forever.
pub const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// Header on a replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Longest idempotency key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// Retry-After on 409 `idempotency_in_progress`.
const IN_PROGRESS_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Stages 2b to 9: the idempotency layer around delivery.
pub async fn deliver(
    ex: &mut Exchange,
    req: Request<Incoming>,
    load: &ListenerLoad,
) -> Response<ProxyBody> {
    let snapshot = Arc::clone(&ex.snapshot);
    let live = &snapshot.routes[ex.outcome.route.unwrap_or_default()];
    let (Some(config), Some(store)) = (&live.config.idempotency, &live.idempotency) else {
        return deliver::deliver(ex, req, load).await;
    };
    if safe(req.method()) {
        return deliver::deliver(ex, req, load).await;
    }
    let Some(key) = req.headers().get(&config.header) else {
        return deliver::deliver(ex, req, load).await;
    };
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return answer::refuse_early(ex, ProxyError::IdempotencyKeyInvalid, req).await;
    }
    let key: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let route = live.config.name.as_str();
    let metrics = &snapshot.metrics;
    let upstream = live.config.upstream;
    let honours = snapshot.upstreams[upstream].config.honours_idempotency_key;

    // 1. The body, whole, and the fingerprint.
    let (parts, body, reserved) = match read_body(ex, req, config, load).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let (body, watch) = body;
    let fingerprint = fingerprint(config.fingerprint, &parts, &body);
    let source = Source::read(body, watch, reserved);

    // 2. The claim.
    let lease = live.config.timeout + LEASE_MARGIN;
    let claimed_at = Instant::now();
    let ticket = match store.claim(key, fingerprint, lease, honours).await {
        Ok(Claim::Claimed(ticket)) => ticket,
        Ok(Claim::Existing(entry)) => return answer_repeat(ex, entry, &fingerprint, upstream),
        Err(error) => {
            metrics.idempotency(route, "store_error");
            tracing::warn!(route, error = %error, forward = config.forward_on_error, "idempotency store failed; applying on_error");
            if config.forward_on_error {
                return deliver::deliver_from(ex, parts, source).await;
            }
            return answer::refuse(ex, Some(upstream), ProxyError::IdempotencyStoreUnavailable);
        }
    };

    // 3. Delivery, then the record.
    let mut pending = Pending {
        store: store.clone(),
        ticket: Some(ticket),
        fingerprint,
        ttl: config.ttl,
    };
    let response = deliver::deliver_from(ex, parts, source).await;
    let mut attempts: Vec<Sent> = ex.outcome.recorded().iter().map(|a| sent(a.end)).collect();
    if attempts.len() >= TRAIL_LEN {
        // Attempts past the trail are not recorded: assume the worst.
        attempts.push(Sent::Maybe);
    }
    let answered = ex
        .outcome
        .reason
        .is_none()
        .then(|| response.status().as_u16());
    match policy::conclude(attempts, answered) {
        Conclusion::Release => {
            pending.release().await;
            metrics.idempotency(route, "released");
            response
        }
        Conclusion::Unknown => {
            pending.finish(Entry::Unknown { fingerprint }).await;
            metrics.idempotency(route, "unknown");
            response
        }
        Conclusion::Store => {
            let deadline = claimed_at + lease.saturating_sub(Duration::from_secs(1));
            store_response(ex, response, pending, config, deadline, route).await
        }
    }
}

/// Safe methods are never recorded.
fn safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

fn sent(end: End) -> Sent {
    match end {
        End::None | End::ConnectFailure | End::Unread => Sent::Not,
        End::Timeout | End::Reset | End::ClientFault | End::Cancelled => Sent::Maybe,
        End::Status(s) => Sent::Answered(s),
    }
}

type Read = (
    http::request::Parts,
    (Bytes, Arc<crate::dataplane::client_body::BodyWatch>),
    Option<crate::dataplane::activity::BufferReservation>,
);

/// Reads the request body whole, within `max_request_bytes` and the listener's buffer budget.
async fn read_body(
    ex: &mut Exchange,
    req: Request<Incoming>,
    config: &Idempotency,
    load: &ListenerLoad,
) -> Result<Read, Response<ProxyBody>> {
    let max = config.max_request_bytes;
    let known = http_body::Body::size_hint(req.body()).exact();
    if known.is_some_and(|n| n > max as u64) {
        return Err(answer::refuse_early(ex, ProxyError::IdempotencyBodyTooLarge, req).await);
    }
    let limits = &ex.snapshot.config.server;
    let timeout = limits.client_body_timeout;
    let reserve = known.map_or(max, |n| n as usize);
    let reserved = if reserve == 0 {
        None
    } else {
        match load.reserve_buffer(reserve, limits.max_buffered_bytes) {
            Some(r) => Some(r),
            None => {
                ex.outcome.note = Some("not_buffered_memory_limit");
                return Err(answer::refuse_early(ex, ProxyError::Overloaded, req).await);
            }
        }
    };
    let (parts, body) = req.into_parts();
    let http1 = parts.version <= Version::HTTP_11;
    let (mut body, watch) = ClientBody::new(body, timeout);
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                // Trailers are not kept: a request on an idempotent route is sent without them.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if buf.len() + data.len() > max {
                    let response = answer::refuse(
                        ex,
                        Some(ex.route().config.upstream),
                        ProxyError::IdempotencyBodyTooLarge,
                    );
                    let remainder = settle::Remainder::Client(body);
                    return Err(settle::keep_alive_safe(response, remainder, &watch, http1).await);
                }
                buf.extend_from_slice(&data);
            }
            Some(Err(_)) => {
                let error = match watch.fault() {
                    Some(BodyFault::Stalled) => ProxyError::ClientBodyTimeout,
                    Some(BodyFault::Gone) => ProxyError::ClientClosed,
                    _ => ProxyError::ClientBodyError,
                };
                let upstream = ex.route().config.upstream;
                let response = answer::refuse(ex, Some(upstream), error);
                let remainder = settle::Remainder::Gone;
                return Err(settle::keep_alive_safe(response, remainder, &watch, http1).await);
            }
        }
    }
    Ok((parts, (buf.freeze(), watch), reserved))
}

/// SHA-256 over the configured parts, each followed by a zero byte.
fn fingerprint(parts: FingerprintParts, head: &http::request::Parts, body: &[u8]) -> Fingerprint {
    let mut h = Sha256::new();
    if parts.method {
        h.update(head.method.as_str());
    }
    h.update([0]);
    if parts.path {
        h.update(head.uri.path_and_query().map_or("/", |p| p.as_str()));
    }
    h.update([0]);
    if parts.body {
        h.update(body);
    }
    h.finalize().into()
}

/// The answer to a repeat of a recorded key; never delivered.
fn answer_repeat(
    ex: &mut Exchange,
    entry: Entry,
    fingerprint: &Fingerprint,
    upstream: usize,
) -> Response<ProxyBody> {
    let snapshot = Arc::clone(&ex.snapshot);
    let route = ex.route_name().to_owned();
    let recorded = match &entry {
        Entry::InProgress { .. } => Recorded::InProgress,
        Entry::Done { .. } => Recorded::Done,
        Entry::Unknown { .. } => Recorded::Unknown,
        Entry::NotStored { .. } => Recorded::NotStored,
    };
    let (result, error) = match policy::repeat(recorded, entry.fingerprint() == fingerprint) {
        Repeat::Reused => ("conflict", ProxyError::IdempotencyKeyReused),
        Repeat::InProgress => (
            "in_progress",
            ProxyError::IdempotencyInProgress {
                retry_after: IN_PROGRESS_RETRY_AFTER,
            },
        ),
        Repeat::Unknown => ("refused_unknown", ProxyError::IdempotencyOutcomeUnknown),
        Repeat::NotStored => ("refused_unknown", ProxyError::IdempotencyResponseNotStored),
        Repeat::Replay => {
            snapshot.metrics.idempotency(&route, "replayed");
            if let Entry::Done { response, .. } = entry {
                return replay(response);
            }
            // policy::repeat answers Replay only for Done.
            return answer::refuse(ex, Some(upstream), ProxyError::IdempotencyOutcomeUnknown);
        }
    };
    snapshot.metrics.idempotency(&route, result);
    answer::refuse(ex, Some(upstream), error)
}

/// A stored response, marked `idempotent-replayed: true`.
fn replay(stored: StoredResponse) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::local(stored.body));
    *response.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    for (name, value) in stored.headers {
        headers.append(name, value);
    }
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

/// Reads the final response up to `max_response_bytes`, records it, and gives it to the client.
async fn store_response(
    ex: &mut Exchange,
    response: Response<ProxyBody>,
    mut pending: Pending,
    config: &Idempotency,
    deadline: Instant,
    route: &str,
) -> Response<ProxyBody> {
    let metrics = ex.snapshot.metrics.clone();
    let (head, body) = response.into_parts();
    let status = head.status.as_u16();
    let fingerprint = pending.fingerprint;
    let body = match read_prefix(body, config.max_response_bytes, deadline).await {
        Ok(Prefix::Whole(body)) => body,
        Ok(Prefix::Longer(body)) => {
            // Too large to keep: the client gets it all, a repeat gets 409.
            pending
                .finish(Entry::NotStored {
                    fingerprint,
                    status,
                })
                .await;
            metrics.idempotency(route, "not_stored");
            return Response::from_parts(head, body);
        }
        Err(_) => {
            // The upstream acted (it answered) but its response broke or stalled.
            pending.finish(Entry::Unknown { fingerprint }).await;
            metrics.idempotency(route, "unknown");
            let upstream = ex.outcome.upstream.unwrap_or(ex.route().config.upstream);
            let mut response = answer::refuse(ex, Some(upstream), ProxyError::UpstreamError);
            answer::mark_unknown(ex, upstream, &mut response);
            return response;
        }
    };
    let headers = head
        .headers
        .iter()
        .filter(|(name, _)| STORED_HEADERS.contains(&name.as_str()))
        // A copy: a parsed header value shares hyper's read buffer, which a record kept for
        // 24h would pin (about 8 KiB per key instead of the value's few bytes).
        .filter_map(|(n, v)| Some((n.clone(), HeaderValue::from_bytes(v.as_bytes()).ok()?)))
        .collect::<Vec<(HeaderName, HeaderValue)>>();
    pending
        .finish(Entry::Done {
            fingerprint,
            response: StoredResponse {
                status,
                headers,
                body: body.clone(),
            },
        })
        .await;
    metrics.idempotency(route, "stored");
    Response::from_parts(head, ProxyBody::local(body))
}

/// A claim not yet finished. Dropped while holding it (the request was abandoned mid-flight),
/// it records the outcome as unknown: the request may have been delivered.
struct Pending {
    store: Arc<Store>,
    ticket: Option<Ticket>,
    fingerprint: Fingerprint,
    ttl: Duration,
}

impl Pending {
    async fn finish(&mut self, entry: Entry) {
        if let Some(ticket) = &self.ticket {
            if let Err(e) = self.store.finish(ticket, entry, self.ttl).await {
                tracing::warn!(error = %e, "could not record an idempotent request's outcome; its in-progress record expires with its lease");
            }
        }
        self.ticket = None;
    }

    async fn release(&mut self) {
        if let Some(ticket) = &self.ticket {
            if let Err(e) = self.store.release(ticket).await {
                tracing::warn!(error = %e, "could not release an idempotency key; it is in progress until its lease expires");
            }
        }
        self.ticket = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            let entry = Entry::Unknown {
                fingerprint: self.fingerprint,
            };
            self.store.finish_detached(ticket, entry, self.ttl);
        }
    }
}
