//! Stage 9, the retry decision: whether another attempt is safe ([`retry::decide`]: the
//! request kind, the result, the attempt count), possible (the body can be replayed), paid for
//! (the route's retry budget) and in time (back-off plus a minimal attempt before the
//! deadline). Then it waits out the back-off.

use std::time::Duration;

use http::{header, Response};
use tokio::time::Instant;

use super::exchange::Exchange;
use crate::dataplane::body::ProxyBody;
use crate::policy::classify::Call;
use crate::policy::retry::{self, RequestKind, Stop};

/// No attempt starts with less time than this left before the deadline.
const MIN_ATTEMPT: Duration = Duration::from_millis(10);

/// Whether the route retries this result at all; most answers match no retry condition, so
/// this is decided before any of the rest.
pub fn wanted(ex: &Exchange, call: Call) -> bool {
    ex.route()
        .config
        .retry
        .as_ref()
        .is_some_and(|p| p.on.matches(call.result).is_some())
}

/// Decides whether to send another attempt and, if so, waits out the back-off; `Ok` names the
/// retry condition that matched. `Err` means answer with what we have, with a note for the
/// access log when a rule refused a retry.
pub async fn decide(
    ex: &Exchange,
    kind: RequestKind,
    call: Call,
    attempt: u32,
    can_replay: bool,
    response: Option<&Response<ProxyBody>>,
) -> Result<&'static str, Option<&'static str>> {
    let route = ex.route();
    let policy = route.config.retry.as_ref().ok_or(None)?;
    let reason = match retry::decide(policy, kind, call.result, attempt) {
        Ok(reason) => reason,
        Err(Stop::MaybeDelivered) => return Err(Some("not_retried_maybe_delivered")),
        Err(Stop::Exhausted) => return Err(Some("retries_exhausted")),
        Err(_) => return Err(None),
    };
    if !can_replay {
        return Err(Some("not_retried_body_too_large"));
    }
    let now = Instant::now();
    let index = ex.outcome.route.unwrap_or_default();
    let burning = route
        .burn
        .as_ref()
        .filter(|g| g.check(&ex.snapshot.slos, index, now));
    if let Some(guard) = burning {
        // The SLO burns fast: retries draw from the smaller `when_burning` budget.
        if !guard.budget.withdraw(now) {
            return Err(Some("retry_cut_slo_burning"));
        }
    } else {
        let budget = route.budget.as_ref().ok_or(None)?;
        if !budget.withdraw(now) {
            ex.snapshot.metrics.budget_exhausted(&route.config.name);
            return Err(Some("retry_budget_exhausted"));
        }
    }
    let hint = response.and_then(retry_after);
    let backoff = retry::backoff(policy, attempt, hint, rand::random());
    if Instant::now() + backoff + MIN_ATTEMPT > ex.deadline() {
        return Err(Some("no_time_left_for_retry"));
    }
    ex.snapshot.metrics.retry(&route.config.name, reason);
    tokio::time::sleep(backoff).await;
    Ok(reason)
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
