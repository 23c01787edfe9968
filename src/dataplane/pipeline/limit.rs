//! Stage 2, rate limit: the route's limit for this request's key, before any work upstream.

use http::Request;
use hyper::body::Incoming;

use super::exchange::Exchange;
use crate::dataplane::ratelimit::{Decision, RateHeaders};
use crate::dataplane::rescue::ProxyError;

/// What the limit said: admitted (with the RateLimit headers for the answer, if the route has
/// a limit) or refused (with the headers for the 429).
pub type Limited = Result<Option<RateHeaders>, (ProxyError, Option<RateHeaders>)>;

/// Asks the route's limiter, if it has one. With the access log on, the key's short hash is
/// kept for it.
pub async fn check(
    ex: &mut Exchange,
    req: &Request<Incoming>,
    client: &str,
    logging: bool,
) -> Limited {
    let Some(limiter) = &ex.route().limiter else {
        return Ok(None);
    };
    let key = logging
        .then(|| limiter.key_hash(req.headers(), client))
        .flatten();
    let decision = limiter.decide(req.headers(), client).await;
    ex.outcome.rate_key = key;
    match decision {
        Decision::Admit(headers, note) => {
            ex.outcome.note = note;
            Ok(Some(headers))
        }
        Decision::Reject(headers, retry_after) => {
            Err((ProxyError::RateLimited { retry_after }, Some(headers)))
        }
        Decision::MissingKey => Err((ProxyError::RateLimitKeyMissing, None)),
    }
}
