//! Retries that are safe by construction.
//!
//! # The rules
//! - Idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) are retried on the conditions
//!   in `on`.
//! - A non-idempotent request (POST, PATCH, others) is retried only when it provably never
//!   reached the upstream: the connection could not be made, so no byte was sent. The one
//!   exception is `non_idempotent: idempotency-key` with the key header present: the upstream
//!   deduplicates, so every condition in `on` applies (and the same key goes with every
//!   attempt, since the headers are replayed unchanged). With `never` it is not retried at all.
//! - When a non-idempotent request failed after its bytes were sent (reset, timeout) and is not
//!   retried, its outcome is *unknown*: the upstream may or may not have acted on it. The
//!   dataplane says so (`x-backstop-outcome: unknown`) so the caller reconciles instead of
//!   assuming failure and charging twice.
//!
//! Plain decisions, no I/O: the dataplane sends, waits, and asks again.

use std::time::Duration;

use http::{HeaderMap, HeaderName, Method};

use super::classify::CallResult;
use super::outcome_rules::Verdict;

/// What `on:` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Connect failures (never sent).
    pub connect_failure: bool,
    /// HTTP/2 refused streams (never processed). Upstream connections are HTTP/1.1 today, so
    /// this never fires; accepted for configs that name it.
    pub refused_stream: bool,
    /// Connection reset or malformed response after sending.
    pub reset: bool,
    /// No response within the per-try timeout.
    pub timeout: bool,
    /// Any 5xx response.
    pub any_5xx: bool,
    /// These exact statuses.
    pub statuses: Vec<u16>,
}

impl RetryOn {
    /// Names `on` accepts besides 3-digit statuses.
    pub const NAMES: [&'static str; 5] = [
        "connect-failure",
        "refused-stream",
        "reset",
        "timeout",
        "5xx",
    ];

    /// Parses the `on` list; `Err(item)` names the unknown item.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut on = RetryOn::default();
        for item in items {
            match item.trim() {
                "connect-failure" => on.connect_failure = true,
                "refused-stream" => on.refused_stream = true,
                "reset" => on.reset = true,
                "timeout" => on.timeout = true,
                "5xx" => on.any_5xx = true,
                code => match code.parse::<u16>() {
                    Ok(c) if (100..=599).contains(&c) => on.statuses.push(c),
                    _ => return Err(code.to_owned()),
                },
            }
        }
        Ok(on)
    }

    /// The `on` item that `result` matches, if any: also the `reason` label of retries.
    pub fn matches(&self, result: CallResult) -> Option<&'static str> {
        match result {
            CallResult::ConnectFailure if self.connect_failure => Some("connect-failure"),
            CallResult::Reset if self.reset => Some("reset"),
            CallResult::Timeout if self.timeout => Some("timeout"),
            CallResult::Status(s) if self.statuses.contains(&s) => Some(status_reason(s)),
            CallResult::Status(s) if self.any_5xx && (500..=599).contains(&s) => Some("5xx"),
            // The upstream's own rule says whether its answer may be retried.
            CallResult::Judged(_, d) if d.retryable && d.verdict == Verdict::Failure => {
                Some("outcome_rule")
            }
            _ => None,
        }
    }
}

/// A static label for common retried statuses; others fold into their class.
fn status_reason(status: u16) -> &'static str {
    match status {
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s >= 500 => "5xx",
        _ => "4xx",
    }
}

/// What to do with non-idempotent requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonIdempotent {
    /// Retry only when provably never sent (default).
    UnsentOnly,
    /// Retry like idempotent requests when the idempotency key header is present; else as
    /// `UnsentOnly`.
    IdempotencyKey,
    /// Never retry.
    Never,
}

/// A compiled `retry:` block.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (1 = no retries).
    pub attempts: u32,
    /// Deadline of each attempt (never past the route's total timeout).
    pub per_try_timeout: Option<Duration>,
    /// Conditions that trigger a retry.
    pub on: RetryOn,
    /// Back-off base.
    pub backoff_base: Duration,
    /// Back-off cap (also caps an honoured Retry-After).
    pub backoff_max: Duration,
    /// Retries may not exceed this share of requests over the budget window.
    pub budget_ratio: f64,
    /// Retries always allowed per second, whatever the traffic.
    pub budget_min_per_second: u32,
    /// Non-idempotent handling.
    pub non_idempotent: NonIdempotent,
    /// Header carrying the idempotency key.
    pub idempotency_header: HeaderName,
    /// Request bodies up to this size are kept for replay.
    pub max_buffered_body: usize,
    /// A smaller retry budget while the route's SLOs burn fast.
    pub when_burning: Option<WhenBurning>,
}

/// `retry.when_burning`: while any SLO of the route burns its error budget faster than
/// `burn_rate` over `window`, retries draw from a budget of `budget_ratio` (with no per-second
/// floor), so retries do not amplify an outage the SLO already counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WhenBurning {
    /// The burn rate above which retries are cut (14.4: the page-alert rate).
    pub burn_rate: f64,
    /// The window it is measured over: one of 5m, 30m, 1h, 6h.
    pub window: Duration,
    /// The retry budget ratio meanwhile (0: no retries).
    pub budget_ratio: f64,
}

/// How safe a request is to send twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Idempotent by method.
    Idempotent,
    /// Non-idempotent, but the upstream deduplicates by key.
    KeyedNonIdempotent,
    /// Non-idempotent.
    NonIdempotent,
}

impl RequestKind {
    /// Whether the method alone makes it non-idempotent (for outcome-unknown marking).
    pub fn non_idempotent_method(self) -> bool {
        !matches!(self, RequestKind::Idempotent)
    }
}

/// Whether the method is idempotent (RFC 9110 section 9.2.2): safe to send twice.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Classifies a request under `policy`.
pub fn request_kind(method: &Method, headers: &HeaderMap, policy: &RetryPolicy) -> RequestKind {
    if is_idempotent(method) {
        RequestKind::Idempotent
    } else if policy.non_idempotent == NonIdempotent::IdempotencyKey
        && headers.contains_key(&policy.idempotency_header)
    {
        RequestKind::KeyedNonIdempotent
    } else {
        RequestKind::NonIdempotent
    }
}

/// Why no further attempt is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The result is not in `on` (including every success).
    NotRetryable,
    /// Every configured attempt was used.
    Exhausted,
    /// Non-idempotent and it may have reached the upstream.
    MaybeDelivered,
    /// Non-idempotent with `non_idempotent: never`.
    NeverRetried,
}

/// The retry decision after attempt number `attempt` (1-based) ended with `result`.
pub fn decide(
    policy: &RetryPolicy,
    kind: RequestKind,
    result: CallResult,
    attempt: u32,
) -> Result<&'static str, Stop> {
    let reason = policy.on.matches(result).ok_or(Stop::NotRetryable)?;
    if attempt >= policy.attempts {
        return Err(Stop::Exhausted);
    }
    match kind {
        RequestKind::Idempotent | RequestKind::KeyedNonIdempotent => Ok(reason),
        RequestKind::NonIdempotent if policy.non_idempotent == NonIdempotent::Never => {
            Err(Stop::NeverRetried)
        }
        RequestKind::NonIdempotent if never_sent(result) => Ok(reason),
        RequestKind::NonIdempotent => Err(Stop::MaybeDelivered),
    }
}

/// True when the request provably never reached the upstream.
pub fn never_sent(result: CallResult) -> bool {
    matches!(result, CallResult::ConnectFailure)
}

/// True when the upstream may have acted on a request although no response came back.
pub fn outcome_unknown(result: CallResult) -> bool {
    matches!(result, CallResult::Reset | CallResult::Timeout)
}

/// Exponential back-off with full jitter before retry number `retry` (1-based):
/// uniform in [0, min(max, base x 2^(retry-1))]. An upstream's Retry-After is honoured up to
/// `max`. `unit` is a uniform random number in [0, 1).
pub fn backoff(
    policy: &RetryPolicy,
    retry: u32,
    retry_after: Option<Duration>,
    unit: f64,
) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(policy.backoff_max);
    }
    let ceiling = policy
        .backoff_base
        .saturating_mul(1u32 << (retry.saturating_sub(1)).min(20))
        .min(policy.backoff_max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy(non_idempotent: NonIdempotent) -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            per_try_timeout: None,
            on: RetryOn::parse(["connect-failure", "reset", "timeout", "502", "503"]).unwrap(),
            when_burning: None,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
            budget_ratio: 0.2,
            budget_min_per_second: 5,
            non_idempotent,
            idempotency_header: HeaderName::from_static("idempotency-key"),
            max_buffered_body: 65536,
        }
    }

    #[test]
    fn idempotent_requests_retry_on_listed_conditions_until_exhausted() {
        let p = policy(NonIdempotent::UnsentOnly);
        let get = request_kind(&Method::GET, &HeaderMap::new(), &p);
        assert_eq!(decide(&p, get, CallResult::Status(503), 1), Ok("503"));
        assert_eq!(decide(&p, get, CallResult::Reset, 2), Ok("reset"));
        assert_eq!(
            decide(&p, get, CallResult::Status(503), 3),
            Err(Stop::Exhausted)
        );
        assert_eq!(
            decide(&p, get, CallResult::Status(500), 1),
            Err(Stop::NotRetryable)
        );
        assert_eq!(
            decide(&p, get, CallResult::Status(200), 1),
            Err(Stop::NotRetryable)
        );
    }

    #[test]
    fn post_is_retried_only_when_never_sent() {
        let p = policy(NonIdempotent::UnsentOnly);
        let post = request_kind(&Method::POST, &HeaderMap::new(), &p);
        assert_eq!(post, RequestKind::NonIdempotent);
        assert_eq!(
            decide(&p, post, CallResult::ConnectFailure, 1),
            Ok("connect-failure")
        );
        assert_eq!(
            decide(&p, post, CallResult::Status(503), 1),
            Err(Stop::MaybeDelivered)
        );
        assert_eq!(
            decide(&p, post, CallResult::Reset, 1),
            Err(Stop::MaybeDelivered)
        );
        assert_eq!(
            decide(&p, post, CallResult::Timeout, 1),
            Err(Stop::MaybeDelivered)
        );
    }

    #[test]
    fn idempotency_key_makes_post_retryable_only_with_the_header() {
        let p = policy(NonIdempotent::IdempotencyKey);
        let mut headers = HeaderMap::new();
        assert_eq!(
            request_kind(&Method::POST, &headers, &p),
            RequestKind::NonIdempotent
        );
        headers.insert("idempotency-key", HeaderValue::from_static("k1"));
        let keyed = request_kind(&Method::POST, &headers, &p);
        assert_eq!(keyed, RequestKind::KeyedNonIdempotent);
        assert_eq!(decide(&p, keyed, CallResult::Reset, 1), Ok("reset"));
        let unkeyed_patch = request_kind(&Method::PATCH, &HeaderMap::new(), &p);
        assert_eq!(
            decide(&p, unkeyed_patch, CallResult::Status(503), 1),
            Err(Stop::MaybeDelivered)
        );
    }

    #[test]
    fn never_means_never() {
        let p = policy(NonIdempotent::Never);
        let post = request_kind(&Method::POST, &HeaderMap::new(), &p);
        assert_eq!(
            decide(&p, post, CallResult::ConnectFailure, 1),
            Err(Stop::NeverRetried)
        );
        let get = request_kind(&Method::GET, &HeaderMap::new(), &p);
        assert_eq!(
            decide(&p, get, CallResult::ConnectFailure, 1),
            Ok("connect-failure")
        );
    }

    #[test]
    fn backoff_is_full_jitter_capped_and_honours_retry_after() {
        let p = policy(NonIdempotent::UnsentOnly);
        assert_eq!(
            backoff(&p, 1, None, 0.999_999),
            Duration::from_millis(25).mul_f64(0.999_999)
        );
        assert_eq!(backoff(&p, 3, None, 0.5), Duration::from_millis(50));
        assert_eq!(backoff(&p, 30, None, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(&p, 1, None, 0.0), Duration::ZERO);
        assert_eq!(
            backoff(&p, 1, Some(Duration::from_millis(300)), 0.1),
            Duration::from_millis(300)
        );
        assert_eq!(
            backoff(&p, 1, Some(Duration::from_secs(30)), 0.1),
            Duration::from_secs(1)
        );
    }
}
