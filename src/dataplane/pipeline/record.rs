//! Stage 8, outcome classification: an attempt's [`Call`] feeds the endpoint's load estimate
//! and attempt metrics, the breaker that admitted it, the adaptive concurrency limit and
//! outlier detection.

use std::time::Duration;

use tokio::time::Instant;

use super::target::Target;
use crate::dataplane::bulkhead::Slot;
use crate::dataplane::load;
use crate::dataplane::upstream::LiveUpstream;
use crate::metrics::AttemptResult;
use crate::policy::classify::{Call, CallResult};
use crate::policy::outcome_rules::Verdict;
use crate::runtime::Snapshot;

/// Counts the attempt everywhere it counts; hands back the bulkhead slot, for the caller to
/// free (or to keep for a tunnel).
pub fn record(snapshot: &Snapshot, target: Target, call: Call) -> Slot {
    let upstream = &snapshot.upstreams[target.upstream];
    account(upstream, target.endpoint, call);
    let now = Instant::now();
    let failure_set = target.permit.as_ref().map(|p| p.failure_on().clone());
    if let Some(permit) = target.permit {
        let probe_passed = permit.is_probe() && !permit.failure_on().is_failure(call.result);
        permit.record(call, now);
        if probe_passed {
            // The breaker just saw the upstream healthy again: so should the balancer.
            load::forgive(&upstream.endpoints, target.endpoint, now);
        }
    }
    if let Some(adaptive) = target.adaptive {
        adaptive.record(call, now);
    }
    if let Some(ejection) = &upstream.ejection {
        let failure = failure_set.unwrap_or_default().is_failure(call.result);
        ejection.record(target.endpoint, failure, now);
    }
    target.slot
}

/// Counts an attempt in the endpoint's load estimate and attempt metrics.
fn account(upstream: &LiveUpstream, endpoint_index: usize, call: Call) {
    let endpoint = &upstream.endpoints[endpoint_index];
    let Call { result, elapsed } = call;
    if result.status().is_some() {
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
        CallResult::Judged(_, d) if d.verdict == Verdict::Failure => AttemptResult::OutcomeFailure,
        CallResult::Judged(_, _) => AttemptResult::Success,
    });
}
