//! Compiles `routes[].hedge`: when an attempt is slow, send one more to another endpoint of the
//! same upstream and take the first answer.
//!
//! A hedge is a second delivery by design, so it is refused where a second delivery could
//! charge a card twice: on a route that takes only non-idempotent methods and has no
//! idempotency key the upstream honours. (On other routes the dataplane still never hedges a
//! non-idempotent request without such a key.)

use std::time::Duration;

use serde_saphyr::Spanned;

use super::model::{Hedge, HedgeAfter, Route, Upgrade};
use super::raw::RawHedge;
use super::validate::{self, Issues};
use crate::policy::retry::{is_idempotent, NonIdempotent};

const DEFAULT_MAX_EXTRA: u32 = 1;
/// gRPC caps attempts at 5: the first and four hedges.
const MAX_EXTRA: u32 = 4;
const DEFAULT_BUDGET: f64 = 0.05;

/// `hedge:` on `route`; `keyed`: the route's upstream honours an idempotency key
/// (`idempotency_key:` on the upstream, or the route's `retry.non_idempotent: idempotency-key`).
pub(crate) fn hedge(
    issues: &mut Issues,
    path: &str,
    raw: &Spanned<RawHedge>,
    route: &Route,
    keyed: bool,
) -> Option<Hedge> {
    let r = &raw.value;
    let after = match &r.after {
        None => HedgeAfter::Percentile(0.95),
        Some(text) => after(issues, &format!("{path}.after"), text, route.timeout)?,
    };
    let max_extra = match &r.max_extra {
        None => DEFAULT_MAX_EXTRA,
        Some(n) if (1..=MAX_EXTRA).contains(&n.value) => n.value,
        Some(n) => {
            let message = format!("max_extra {} is out of range 1-{MAX_EXTRA}", n.value);
            issues.at(&format!("{path}.max_extra"), n, message);
            return None;
        }
    };
    let budget = match &r.budget {
        None => DEFAULT_BUDGET,
        Some(b) => validate::percent(issues, &format!("{path}.budget"), b)?,
    };
    let keyed = keyed
        || route
            .retry
            .as_ref()
            .is_some_and(|p| p.non_idempotent == NonIdempotent::IdempotencyKey);
    let only_unsafe = route
        .methods
        .as_ref()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|m| !is_idempotent(m)));
    if only_unsafe && !keyed {
        let message = "hedging sends a second copy of a request: this route takes only \
                       non-idempotent methods and its upstream honours no idempotency key \
                       (declare upstreams.<name>.idempotency_key, or retry.non_idempotent: \
                       idempotency-key), so a hedge could deliver a payment twice";
        issues.at(path, raw, message.into());
        return None;
    }
    if route.upgrade == Some(Upgrade::Websocket) {
        issues.at(path, raw, "a WebSocket tunnel cannot be hedged".into());
        return None;
    }
    Some(Hedge {
        after,
        max_extra,
        budget,
    })
}

/// `after:` a duration below the route's timeout, or a percentile `p50` to `p99.9`.
fn after(
    issues: &mut Issues,
    path: &str,
    text: &Spanned<String>,
    timeout: Duration,
) -> Option<HedgeAfter> {
    let value = text.value.trim();
    if let Some(p) = value.strip_prefix('p') {
        return match p.parse::<f64>() {
            Ok(p) if (50.0..100.0).contains(&p) => Some(HedgeAfter::Percentile(p / 100.0)),
            _ => {
                let message = format!(
                    "bad percentile {value:?}: expected p50 to p99.9 of the route's latency, or a duration"
                );
                issues.at(path, text, message);
                None
            }
        };
    }
    let delay = validate::duration(issues, path, text)?;
    if delay.is_zero() || delay >= timeout {
        let message = format!(
            "after {value} must be more than 0 and less than the route's timeout ({})",
            humantime::format_duration(timeout)
        );
        issues.at(path, text, message);
        return None;
    }
    Some(HedgeAfter::Fixed(delay))
}
