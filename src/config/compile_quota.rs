//! Compiles `upstreams.<name>.quota`: the learned part (`mode`, `max_wait`) and the declared
//! egress rate (`rate`, `burst`, `scope`).
//!
//! Defaults live here; config/backstop.yaml documents the same values.

use std::time::Duration;

use serde_saphyr::Spanned;

use super::model::{DeclaredRate, QuotaConfig};
use super::raw::RawQuota;
use super::validate::{duration_or, Issues};

const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(200);
const MAX_MAX_WAIT: Duration = Duration::from_secs(60);
/// `burst` when the config does not say: no extra requests at once, one at a time evenly
/// spaced at the rate. As in route rate limits, `burst` counts requests beyond the first.
const DEFAULT_BURST: u32 = 0;

/// `quota:` of the upstream at `path` (`upstreams.<name>.quota`). `has_redis`: whether the
/// file has a `redis:` section.
pub(crate) fn quota(
    issues: &mut Issues,
    path: &str,
    raw: &Spanned<RawQuota>,
    has_redis: bool,
) -> QuotaConfig {
    let q = &raw.value;
    let queue = match q.mode.as_ref().map(|m| (m, m.value.trim())) {
        None | Some((_, "queue")) => true,
        Some((_, "reject")) => false,
        Some((m, other)) => {
            let message = format!("unknown mode {other:?}: expected queue or reject");
            issues.unknown(
                &format!("{path}.mode"),
                m,
                other,
                message,
                &["queue", "reject"],
            );
            true
        }
    };
    let max_wait = duration_or(
        issues,
        &format!("{path}.max_wait"),
        q.max_wait.as_ref(),
        DEFAULT_MAX_WAIT,
        MAX_MAX_WAIT,
    );
    QuotaConfig {
        queue,
        max_wait,
        declared: declared(issues, path, q, has_redis),
    }
}

/// `rate`, `burst` and `scope`; `burst` and `scope` mean nothing without `rate`.
fn declared(
    issues: &mut Issues,
    path: &str,
    q: &RawQuota,
    has_redis: bool,
) -> Option<DeclaredRate> {
    let Some(text) = &q.rate else {
        if let Some(b) = &q.burst {
            let message =
                "burst needs rate: it is the extra requests at once of a declared rate".into();
            issues.at(&format!("{path}.burst"), b, message);
        }
        if let Some(s) = &q.scope {
            let message = "scope needs rate: it says where a declared rate is shared".into();
            issues.at(&format!("{path}.scope"), s, message);
        }
        return None;
    };
    let rate = super::compile_policy::request_rate(issues, &format!("{path}.rate"), text);
    let burst = q.burst.as_ref().map_or(DEFAULT_BURST, |b| b.value);
    let scope = super::compile_policy::scope(
        issues,
        &format!("{path}.scope"),
        q.scope.as_ref(),
        has_redis,
    );
    Some(DeclaredRate {
        rate: rate?,
        burst,
        scope,
    })
}
