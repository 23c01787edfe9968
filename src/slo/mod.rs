//! Service level objectives: SLI counters, live error budgets, Prometheus rules.
//!
//! An SLO covers one or more routes. Every request on those routes is one event, good or bad:
//! - `availability`: bad when the answer is a 5xx or a failure backstop produced itself
//!   (connect failure, timeout, circuit open, overloaded); backstop's own 429 is bad too
//!   unless `exclude_rate_limited: true`, which leaves those requests out entirely. A client
//!   error (4xx) is good: the service did its job.
//! - `latency_below: T`: good when backstop answered (headers sent) within T; T must be a
//!   bucket bound of the duration histogram so the Prometheus rules can use it too.
//!
//! Events are counted in `backstop_slo_events_total{slo,result}` (so rules need no
//! per-route arithmetic) and in an in-memory ring ([`budget`]) that drives the live budget
//! and burn-rate gauges.

pub mod budget;
pub mod calendar;
pub mod live;
pub mod openslo;
pub mod rules;

use std::time::Duration;

use crate::dataplane::rescue::ProxyError;
use crate::policy::outcome_rules::Verdict;

/// What makes an event good.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sli {
    /// Not a 5xx and not a failure of backstop's own.
    Availability {
        /// Leave backstop's 429s out instead of counting them bad.
        exclude_rate_limited: bool,
    },
    /// Answered within this time.
    LatencyBelow(Duration),
}

/// A compiled SLO.
#[derive(Debug, Clone, PartialEq)]
pub struct SloConfig {
    /// Name (the `slo` label).
    pub name: String,
    /// Indices of the routes it covers.
    pub routes: Vec<usize>,
    /// Target share of good events, e.g. 0.999.
    pub objective: f64,
    /// Compliance period: the rolling window, or for a calendar period the longest one (31 or
    /// 92 days).
    pub window: Duration,
    /// What is good.
    pub sli: Sli,
    /// A calendar period (`calendar_month`, `calendar_quarter`) instead of a rolling window.
    pub calendar: Option<calendar::Calendar>,
    /// A burn-rate alert needs at least this many events in its long window
    /// (`alerting.min_events`), so that a few failures at night do not page.
    pub min_events: u64,
}

/// Default of `alerting.min_events`.
pub const DEFAULT_MIN_EVENTS: u64 = 10;

/// Whether an answer is a good event for `sli`; `None` when it does not count at all.
/// `reason` is why backstop answered itself, if it did: an enum, so that renaming a reason's
/// public string cannot silently change SLO accounting. `verdict` is what the upstream's
/// outcome rules made of its answer, if one matched: it replaces the status.
pub fn classify(
    sli: Sli,
    status: u16,
    reason: Option<ProxyError>,
    verdict: Option<Verdict>,
    elapsed: Duration,
) -> Option<bool> {
    // The client's own fault (a broken or stalled body, a client that left) says nothing
    // about the service: it is neither a good nor a bad event.
    if matches!(
        reason,
        Some(
            ProxyError::ClientBodyError | ProxyError::ClientBodyTimeout | ProxyError::ClientClosed
        )
    ) {
        return None;
    }
    match sli {
        Sli::Availability {
            exclude_rate_limited,
        } => {
            if matches!(reason, Some(ProxyError::RateLimited { .. })) {
                return if exclude_rate_limited {
                    None
                } else {
                    Some(false)
                };
            }
            let ours_failed = matches!(
                reason,
                Some(
                    ProxyError::ConnectFailed
                        | ProxyError::Timeout
                        | ProxyError::UpstreamError
                        | ProxyError::CircuitOpen { .. }
                        | ProxyError::CircuitHalfOpen { .. }
                        | ProxyError::Overloaded
                        | ProxyError::AdaptiveConcurrencyLimited
                        | ProxyError::TooManyStreams
                )
            );
            match verdict {
                Some(verdict) if !ours_failed => Some(verdict != Verdict::Failure),
                _ => Some(status < 500 && !ours_failed),
            }
        }
        Sli::LatencyBelow(threshold) => Some(elapsed <= threshold),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_counts_5xx_and_our_failures_as_bad() {
        let sli = Sli::Availability {
            exclude_rate_limited: false,
        };
        let ms = Duration::from_millis(1);
        assert_eq!(classify(sli, 200, None, None, ms), Some(true));
        assert_eq!(
            classify(sli, 404, None, None, ms),
            Some(true),
            "a client error is the client's"
        );
        assert_eq!(classify(sli, 503, None, None, ms), Some(false));
        assert_eq!(
            classify(
                sli,
                503,
                Some(ProxyError::CircuitOpen {
                    retry_after: Duration::ZERO
                }),
                None,
                ms
            ),
            Some(false)
        );
        assert_eq!(
            classify(
                sli,
                429,
                Some(ProxyError::RateLimited {
                    retry_after: Duration::ZERO
                }),
                None,
                ms
            ),
            Some(false)
        );
        let excluding = Sli::Availability {
            exclude_rate_limited: true,
        };
        assert_eq!(
            classify(
                excluding,
                429,
                Some(ProxyError::RateLimited {
                    retry_after: Duration::ZERO
                }),
                None,
                ms
            ),
            None
        );
        assert_eq!(
            classify(excluding, 429, None, None, ms),
            Some(true),
            "the upstream's own 429 is not ours"
        );
    }

    #[test]
    fn an_outcome_rule_s_verdict_replaces_the_status() {
        let sli = Sli::Availability {
            exclude_rate_limited: false,
        };
        let ms = Duration::from_millis(1);
        let failure = Some(Verdict::Failure);
        assert_eq!(classify(sli, 200, None, failure, ms), Some(false));
        assert_eq!(
            classify(sli, 503, None, Some(Verdict::Success), ms),
            Some(true)
        );
        assert_eq!(
            classify(sli, 500, None, Some(Verdict::ClientError), ms),
            Some(true)
        );
        let timeout = Some(ProxyError::Timeout);
        assert_eq!(
            classify(sli, 504, timeout, Some(Verdict::Success), ms),
            Some(false)
        );
    }

    #[test]
    fn latency_is_good_within_the_threshold() {
        let sli = Sli::LatencyBelow(Duration::from_millis(300));
        assert_eq!(
            classify(sli, 200, None, None, Duration::from_millis(300)),
            Some(true)
        );
        assert_eq!(
            classify(sli, 500, None, None, Duration::from_millis(10)),
            Some(true)
        );
        assert_eq!(
            classify(sli, 200, None, None, Duration::from_millis(301)),
            Some(false)
        );
    }
}
