//! What counts as a failure: the `failure_on` list shared by breakers and outlier detection.

use std::time::Duration;

use super::outcome_rules::{Decision, Verdict};

/// How one attempt at an upstream ended, as the policies see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// A response with this status arrived.
    Status(u16),
    /// The connection could not be made.
    ConnectFailure,
    /// No response before the deadline.
    Timeout,
    /// The connection broke or the response was malformed.
    Reset,
    /// A response with this status that a rule of the upstream's `outcome:` judged; the rule's
    /// verdict replaces the status for every policy.
    Judged(u16, Decision),
}

impl CallResult {
    /// The response status, if a response arrived.
    pub fn status(self) -> Option<u16> {
        match self {
            CallResult::Status(s) | CallResult::Judged(s, _) => Some(s),
            _ => None,
        }
    }
}

/// One finished call: its result and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// How it ended.
    pub result: CallResult,
    /// How long it took.
    pub elapsed: Duration,
}

/// The set of results that count as failures. Default: connect failures, timeouts, resets and
/// 5xx; 4xx never counts unless a status is listed explicitly (e.g. 429 for quota storms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureSet {
    /// Connect failures count.
    pub connect_failure: bool,
    /// Timeouts count.
    pub timeout: bool,
    /// Resets and malformed responses count.
    pub reset: bool,
    /// Every 5xx counts.
    pub any_5xx: bool,
    /// These exact statuses count.
    pub statuses: Vec<u16>,
}

impl Default for FailureSet {
    fn default() -> Self {
        Self {
            connect_failure: true,
            timeout: true,
            reset: true,
            any_5xx: true,
            statuses: Vec::new(),
        }
    }
}

impl FailureSet {
    /// The names `failure_on` accepts besides 3-digit statuses.
    pub const NAMES: [&'static str; 4] = ["connect-failure", "timeout", "reset", "5xx"];

    /// Builds the set from `failure_on` items; `Err(item)` names an unknown item.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut set = FailureSet {
            connect_failure: false,
            timeout: false,
            reset: false,
            any_5xx: false,
            statuses: Vec::new(),
        };
        for item in items {
            match item.trim() {
                "connect-failure" => set.connect_failure = true,
                "timeout" => set.timeout = true,
                "reset" => set.reset = true,
                "5xx" => set.any_5xx = true,
                code => match code.parse::<u16>() {
                    Ok(c) if (100..=599).contains(&c) => set.statuses.push(c),
                    _ => return Err(code.to_owned()),
                },
            }
        }
        Ok(set)
    }

    /// Whether `result` is a failure.
    pub fn is_failure(&self, result: CallResult) -> bool {
        match result {
            CallResult::ConnectFailure => self.connect_failure,
            CallResult::Timeout => self.timeout,
            CallResult::Reset => self.reset,
            CallResult::Status(s) => {
                (self.any_5xx && (500..=599).contains(&s)) || self.statuses.contains(&s)
            }
            CallResult::Judged(_, decision) => decision.verdict == Verdict::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_counts_transport_failures_and_5xx_but_not_4xx() {
        let set = FailureSet::default();
        assert!(set.is_failure(CallResult::Status(503)));
        assert!(set.is_failure(CallResult::ConnectFailure));
        assert!(!set.is_failure(CallResult::Status(429)));
        assert!(!set.is_failure(CallResult::Status(200)));
    }

    #[test]
    fn explicit_statuses_and_unknown_items() {
        let set = FailureSet::parse(["timeout", "429"]).unwrap();
        assert!(set.is_failure(CallResult::Status(429)));
        assert!(!set.is_failure(CallResult::Status(503)));
        assert!(!set.is_failure(CallResult::Reset));
        assert_eq!(FailureSet::parse(["5xx", "teapot"]), Err("teapot".into()));
    }

    #[test]
    fn a_rule_s_verdict_overrides_the_status() {
        let set = FailureSet::default();
        let judged = |verdict| {
            CallResult::Judged(
                200,
                Decision {
                    rule: 0,
                    verdict,
                    retryable: false,
                },
            )
        };
        assert!(set.is_failure(judged(Verdict::Failure)));
        assert!(!set.is_failure(judged(Verdict::Success)));
        assert!(!set.is_failure(judged(Verdict::ClientError)));
        let ok_503 = CallResult::Judged(
            503,
            Decision {
                rule: 0,
                verdict: Verdict::Success,
                retryable: false,
            },
        );
        assert!(!set.is_failure(ok_503));
    }
}
