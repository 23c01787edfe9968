//! Stage 7b, judging an answer by the upstream's outcome rules (`upstreams.<name>.outcome`).
//!
//! Runs after the attempt and before classification, only for upstreams that declare rules.
//! The status and headers are matched first; the body is read only when the first rule that
//! could match has a `json:` condition, and then at most [`PEEK_LIMIT`] bytes of it: a larger
//! body, or one that is not JSON, is handed on untouched (the bytes already read first) and no
//! `json:` condition matches it. Everything else streams as before.
//!
//! A rule's verdict becomes the attempt's [`CallResult::Judged`], which the breaker, outlier
//! detection, adaptive limit, retry stage and SLOs read instead of the status.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Response};
use tokio::time::Instant;

use super::attempt::Sent;
use crate::dataplane::body::{read_prefix, Prefix, PrefixError, ProxyBody};
use crate::dataplane::rescue::ProxyError;
use crate::dataplane::upstream::LiveUpstream;
use crate::policy::classify::CallResult;
use crate::policy::outcome_rules::{Decision, HeadJudgement, PEEK_LIMIT};

/// Applies the upstream's rules to `sent`; returns the deciding rule, if one matched. `left`
/// bounds the body read (the rest of the attempt's time).
pub async fn judge(upstream: &LiveUpstream, sent: &mut Sent, left: Duration) -> Option<Decision> {
    let rules = upstream.config.outcome.as_ref()?;
    let response = sent.response.as_mut().ok()?;
    let status = response.status().as_u16();
    let decision = match rules.judge_head(status, response.headers()) {
        HeadJudgement::Decided(decision) => decision,
        HeadJudgement::NeedsBody => {
            let started = Instant::now();
            let peeked = peek(response, left).await;
            sent.call.elapsed += started.elapsed();
            match peeked {
                Ok(json) => rules.judge(status, response.headers(), json.as_ref()),
                Err(error) => {
                    // The upstream answered but its body broke or stalled: like a reset.
                    sent.call.result = match error {
                        ProxyError::Timeout => CallResult::Timeout,
                        _ => CallResult::Reset,
                    };
                    sent.response = Err(error);
                    return None;
                }
            }
        }
    }?;
    sent.call.result = CallResult::Judged(status, decision);
    if let Some(counter) = upstream.outcome_counters.get(decision.rule) {
        counter.inc();
    }
    Some(decision)
}

/// Reads a small JSON body and parses it; puts the bytes back into `response` whatever
/// happens. `Ok(None)`: no JSON to look at (not JSON, too large, or not parseable).
async fn peek(
    response: &mut Response<ProxyBody>,
    left: Duration,
) -> Result<Option<serde_json::Value>, ProxyError> {
    if !worth_reading(response.headers()) {
        return Ok(None);
    }
    let body = std::mem::replace(response.body_mut(), ProxyBody::local(Bytes::new()));
    match read_prefix(body, PEEK_LIMIT, Instant::now() + left).await {
        Ok(Prefix::Whole(bytes)) => {
            let json = serde_json::from_slice(&bytes).ok();
            *response.body_mut() = ProxyBody::local(bytes);
            Ok(json)
        }
        Ok(Prefix::Longer(body)) => {
            // Too large to judge: hand it on as it came.
            *response.body_mut() = body;
            Ok(None)
        }
        Err(PrefixError::Broken) => Err(ProxyError::UpstreamError),
        Err(PrefixError::TimedOut) => Err(ProxyError::Timeout),
    }
}

/// Whether the body may be JSON of at most [`PEEK_LIMIT`] bytes, worth reading whole: a JSON
/// content type that is not a stream (NDJSON, `stream+json`, server-sent events), or none with
/// a declared length; not compressed; no larger declared length. A stream or an unknown body
/// without a length could hold the answer back until the attempt times out.
fn worth_reading(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
    };
    let length = text(header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<usize>().ok());
    let encoded =
        text(header::CONTENT_ENCODING).is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
    let json = match text(header::CONTENT_TYPE).map(str::to_ascii_lowercase) {
        Some(t) => t.contains("json") && !t.contains("ndjson") && !t.contains("stream"),
        None => length.is_some(),
    };
    json && !encoded && length.is_none_or(|n| n <= PEEK_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_small_plain_json_is_read() {
        assert!(worth_reading(&headers(&[(
            "content-type",
            "application/json"
        )])));
        assert!(worth_reading(&headers(&[
            ("content-type", "application/problem+json"),
            ("content-length", "40")
        ])));
        assert!(
            worth_reading(&headers(&[("content-length", "40")])),
            "no type, known length"
        );
        assert!(
            !worth_reading(&headers(&[])),
            "no type, no length: may be a stream"
        );
        assert!(!worth_reading(&headers(&[(
            "content-type",
            "application/x-ndjson"
        )])));
        assert!(!worth_reading(&headers(&[(
            "content-type",
            "application/stream+json"
        )])));
        assert!(!worth_reading(&headers(&[
            ("content-type", "text/html"),
            ("content-length", "40")
        ])));
        assert!(!worth_reading(&headers(&[
            ("content-type", "application/json"),
            ("content-encoding", "gzip")
        ])));
        assert!(!worth_reading(&headers(&[
            ("content-type", "application/json"),
            ("content-length", "20000")
        ])));
    }
}
