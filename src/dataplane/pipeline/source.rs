//! Where each attempt's request body comes from: the client's body sent once as it streams,
//! or a replay copy kept so that a retry, a failover or a re-send after an unread reset can
//! send it again.
//!
//! Small bodies (up to [`settle::DRAIN_LIMIT`]) are always kept, so that a request an upstream
//! provably never read can be sent again on a fresh connection. Larger ones are kept only on
//! routes that may need a second attempt, within `max_buffered_body` and the listener-wide
//! `server.max_buffered_bytes`.

use std::sync::Arc;

use hyper::body::Incoming;

use crate::config::Route;
use crate::dataplane::activity::{BufferReservation, ListenerLoad};
use crate::dataplane::client_body::{BodyWatch, ClientBody};
use crate::dataplane::replay::ReplayBody;
use crate::dataplane::request_body::RequestBody;
use crate::dataplane::settle;

/// The request body for the attempts of one request.
#[derive(Debug)]
pub struct Source {
    kind: Kind,
    /// Watches the client's side of the body (faults, stalls, end).
    pub watch: Arc<BodyWatch>,
    /// The share of the listener's replay memory this body holds, until the request ends.
    _reserved: Option<BufferReservation>,
}

#[derive(Debug)]
enum Kind {
    /// Sent once, as is.
    Once(Option<ClientBody>),
    /// Kept for replay.
    Replay(ReplayBody),
    /// The client sent no body: every attempt gets an empty one, nothing to keep.
    Empty,
    /// Read whole before the first attempt (the idempotency stage fingerprints it).
    Read(bytes::Bytes),
}

impl Source {
    /// The source for a request on `route`; `note` is set when memory limits kept a body from
    /// being buffered.
    pub fn new(
        body: Incoming,
        route: &Route,
        load: &ListenerLoad,
        limits: &crate::config::ServerLimits,
        note: &mut Option<&'static str>,
    ) -> Self {
        let policy = route.retry.as_ref();
        let (body, watch) = ClientBody::new(body, limits.client_body_timeout);
        let known = http_body::Body::size_hint(&body).exact();
        let small = known.is_some_and(|n| n <= settle::DRAIN_LIMIT as u64);
        let replayable = small
            || policy.is_some_and(|p| p.attempts > 1)
            || !route.failover.is_empty()
            || route.hedge.is_some();
        let mut reserved = None;
        let kind = if replayable && watch.ended() {
            Kind::Empty
        } else if replayable {
            let limit = policy.map_or(settle::DRAIN_LIMIT, |p| p.max_buffered_body);
            // A body of known length holds only what it can fill.
            let reserve = known.map_or(limit, |n| usize::try_from(n).unwrap_or(limit).min(limit));
            match load.reserve_buffer(reserve, limits.max_buffered_bytes) {
                Some(reservation) => {
                    reserved = Some(reservation);
                    Kind::Replay(ReplayBody::new(body, limit))
                }
                None => {
                    *note = Some("not_buffered_memory_limit");
                    Kind::Once(Some(body))
                }
            }
        } else {
            Kind::Once(Some(body))
        };
        Self {
            kind,
            watch,
            _reserved: reserved,
        }
    }

    /// A body already read whole: every attempt gets a copy. `reserved` is its share of the
    /// listener's buffer memory.
    pub fn read(
        body: bytes::Bytes,
        watch: Arc<BodyWatch>,
        reserved: Option<BufferReservation>,
    ) -> Self {
        Self {
            kind: Kind::Read(body),
            watch,
            _reserved: reserved,
        }
    }

    /// Whether more than one attempt can ever be sent (else the request's parts need not be
    /// kept either).
    pub fn replayable(&self) -> bool {
        !matches!(self.kind, Kind::Once(_))
    }

    /// The body for the next attempt; `None` once a body sent as is was used.
    pub fn body_for_attempt(&mut self) -> Option<RequestBody> {
        match &mut self.kind {
            Kind::Once(body) => body.take().map(|body| RequestBody::Direct { body }),
            Kind::Replay(body) => Some(RequestBody::Replay {
                body: body.replay(),
            }),
            Kind::Empty => Some(RequestBody::Local {
                body: http_body_util::Full::new(bytes::Bytes::new()),
            }),
            Kind::Read(body) => Some(RequestBody::Local {
                body: http_body_util::Full::new(body.clone()),
            }),
        }
    }

    /// A body for an attempt that runs beside another (a hedge): only a body the client sent
    /// whole and backstop holds whole, as an independent copy; `None` otherwise (the body is
    /// still streaming, too large to keep, or has trailers), and then there is no hedge.
    pub fn body_for_hedge(&self) -> Option<RequestBody> {
        let whole = match &self.kind {
            Kind::Once(_) => return None,
            Kind::Replay(body) => body.whole()?,
            Kind::Empty => bytes::Bytes::new(),
            Kind::Read(body) => body.clone(),
        };
        Some(RequestBody::Local {
            body: http_body_util::Full::new(whole),
        })
    }

    /// Whether another attempt can get the whole body.
    pub fn can_replay(&self) -> bool {
        match &self.kind {
            Kind::Once(body) => body.is_some(),
            Kind::Replay(body) => body.can_replay(),
            Kind::Empty | Kind::Read(_) => true,
        }
    }

    /// Drains what is left of the client's body if backstop still holds it, or marks the
    /// response `Connection: close` (see [`settle`]).
    pub async fn settle(
        self,
        response: http::Response<crate::dataplane::body::ProxyBody>,
        http1: bool,
    ) -> http::Response<crate::dataplane::body::ProxyBody> {
        let remainder = match self.kind {
            Kind::Once(Some(body)) => settle::Remainder::Client(body),
            Kind::Replay(body) => settle::Remainder::Replay(body),
            Kind::Once(None) => settle::Remainder::Gone,
            Kind::Empty | Kind::Read(_) => settle::Remainder::None,
        };
        settle::keep_alive_safe(response, remainder, &self.watch, http1).await
    }
}
