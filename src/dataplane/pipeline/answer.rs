//! How the stages answer: backstop's own refusals (through [`ProxyError::to_response`], the
//! one place errors become responses), the `outcome: unknown` mark, and keeping the client's
//! connection usable after an answer given before its body was read.

use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;

use super::exchange::Exchange;
use super::outcome::Flags;
use super::OUTCOME_HEADER;
use crate::dataplane::body::ProxyBody;
use crate::dataplane::rescue::ProxyError;
use crate::dataplane::settle;

/// Backstop's own answer for `error`, naming the route and `upstream` when known; records the
/// reason in the outcome.
pub fn refuse(
    ex: &mut Exchange,
    upstream: Option<usize>,
    error: ProxyError,
) -> Response<ProxyBody> {
    ex.outcome.reason = Some(error);
    ex.outcome.flags.insert(Flags::of_error(error));
    if let Some(u) = upstream {
        ex.outcome.upstream.get_or_insert(u);
    }
    let route = ex.outcome.route.map(|_| ex.route_name());
    let upstream = upstream
        .and_then(|u| ex.snapshot.upstreams.get(u))
        .map(|u| u.name.as_str());
    error.to_response(route, upstream)
}

/// [`refuse`] before any attempt: the route's upstream is named, and the unread body is
/// drained or the connection marked to close (see [`settle`]).
pub async fn refuse_early(
    ex: &mut Exchange,
    error: ProxyError,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let upstream = ex.outcome.route.map(|_| ex.route().config.upstream);
    let response = refuse(ex, upstream, error);
    let http1 = req.version() <= Version::HTTP_11;
    let timeout = ex.snapshot.config.server.client_body_timeout;
    settle::keep_alive_safe_raw(response, req.into_body(), http1, timeout).await
}

/// A failed answer to a non-idempotent request that an attempt may have delivered says so:
/// `x-backstop-outcome: unknown`, and the metric counts it against `upstream` (the one the
/// request is pinned to).
pub fn mark_unknown(ex: &mut Exchange, upstream: usize, response: &mut Response<ProxyBody>) {
    if !response.status().is_server_error() {
        return;
    }
    ex.outcome.flags.insert(Flags::OUTCOME_UNKNOWN);
    response
        .headers_mut()
        .insert(OUTCOME_HEADER, HeaderValue::from_static("unknown"));
    ex.snapshot
        .metrics
        .outcome_unknown(ex.route_name(), &ex.snapshot.upstreams[upstream].name);
}
