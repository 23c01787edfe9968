//! Stage 1, admission: a well-formed request, forwarding headers, a route, and the route's own
//! rules about the request's shape.
//!
//! Runs before any policy: what it refuses never counts against a breaker, a rate limit or a
//! retry budget.

use std::net::IpAddr;

use http::{HeaderValue, Request};
use hyper::body::Incoming;

use super::exchange::Exchange;
use crate::dataplane::rescue::ProxyError;
use crate::dataplane::{forward, path, request_checks, router, upgrade};

/// The client as the forwarding stage needs it.
#[derive(Debug)]
pub struct Peer {
    /// The client's address.
    pub ip: IpAddr,
    /// The same as an `x-forwarded-for` entry, formatted once per connection.
    pub header: HeaderValue,
}

/// Checks the request and matches its route (recorded in `ex.outcome.route`).
pub fn admit(
    ex: &mut Exchange,
    peer: &Peer,
    req: &mut Request<Incoming>,
) -> Result<(), ProxyError> {
    request_checks::check(req)?;
    path::normalize_uri(req.uri_mut()).map_err(|_| ProxyError::BadPath)?;
    // Before routing and rate limiting, so neither sees a forged x-forwarded-for.
    let trusted = forward::is_trusted(&ex.snapshot.config.server.trusted_proxies, peer.ip);
    let mut headers = std::mem::take(req.headers_mut());
    forward::add_forwarded(&mut headers, req.uri(), &peer.header, trusted);
    *req.headers_mut() = headers;
    let index = router::find(&ex.snapshot.config.routes, req).ok_or(ProxyError::NoRoute)?;
    ex.outcome.route = Some(index);
    let route = &ex.route().config;
    if !route.allow_encoded_slashes && path::has_encoded_slash(req.uri().path()) {
        return Err(ProxyError::BadPath);
    }
    if route.upgrade.is_none() && upgrade::requested(req) {
        return Err(ProxyError::UpgradeNotAllowed);
    }
    Ok(())
}
