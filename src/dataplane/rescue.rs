//! Every response backstop produces itself, mapped from its reason in one place.
//!
//! Callers and dashboards key on the `reason` string (`x-backstop-reason` header and the JSON
//! `error` field), so each reason is a public name. Internals go to the log, not to the client.

use http::{header, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;

/// The JSON body of every answer backstop gives itself: a typed struct written straight to
/// bytes, no intermediate map.
#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: &'a str,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
}

/// Header naming why backstop answered instead of the upstream.
pub const REASON_HEADER: &str = "x-backstop-reason";

/// Why backstop answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// No route matched.
    #[error("no route matches this request")]
    NoRoute,
    /// The TCP or TLS connection to the upstream could not be made in time.
    #[error("could not connect to the upstream")]
    ConnectFailed,
    /// The upstream did not answer before the route's timeout.
    #[error("the upstream did not answer in time")]
    Timeout,
    /// The connection broke or the upstream's response was malformed.
    #[error("the upstream connection failed or its response was malformed")]
    UpstreamError,
    /// The request cannot be forwarded as it is.
    #[error("the request is malformed")]
    BadRequest,
    /// The circuit breaker is open: the upstream is failing and gets room to recover.
    #[error("the circuit breaker for this upstream is open")]
    CircuitOpen {
        /// Until the next probe.
        retry_after: std::time::Duration,
    },
    /// The circuit breaker is half-open and every probe slot is taken: the upstream is being
    /// probed and gets no other traffic until the probes decide.
    #[error("the circuit breaker for this upstream is half-open: probing, try again shortly")]
    CircuitHalfOpen {
        /// Until the probes are expected to have decided.
        retry_after: std::time::Duration,
    },
    /// max_concurrent_requests is reached.
    #[error("too many requests in flight to this upstream")]
    Overloaded,
    /// The upstream's adaptive concurrency limit is reached: its latency or failures say it
    /// is at capacity.
    #[error("the upstream is at the concurrency its latency allows; try again shortly")]
    AdaptiveConcurrencyLimited,
    /// The upstream said its own quota is spent (Retry-After, RateLimit, X-RateLimit-*), or
    /// its declared rate (`quota.rate`) has no slot soon enough: backstop does not send.
    #[error("the partner's quota is spent or its declared rate is reached; see Retry-After")]
    UpstreamQuotaExhausted {
        /// Until the partner's quota is back.
        retry_after: std::time::Duration,
    },
    /// The route's rate limit is exhausted for this key.
    #[error("rate limit exceeded; see the RateLimit and Retry-After headers")]
    RateLimited {
        /// Until the next request is allowed.
        retry_after: std::time::Duration,
    },
    /// The rate limit key header is missing and `on_missing_key: reject`.
    #[error("the header this route's rate limit is keyed on is missing")]
    RateLimitKeyMissing,
    /// The listener-wide cap on concurrent HTTP/2 streams is reached.
    #[error("too many concurrent HTTP/2 streams on this listener; retry shortly")]
    TooManyStreams,
    /// The client's request body broke off or was malformed.
    #[error("the request body ended early or was malformed")]
    ClientBodyError,
    /// The client stopped sending its request body for longer than `client_body_timeout`.
    #[error("the request body stalled for longer than the server's client_body_timeout")]
    ClientBodyTimeout,
    /// The client went away before the answer (logged as 499, never sent).
    #[error("the client closed the connection before the answer")]
    ClientClosed,
    /// Missing, duplicate or conflicting `Host`.
    #[error("the request needs exactly one Host header that agrees with its URI")]
    BadHost,
    /// The path is not acceptable (encoded slash, backslash or `;` in a dot segment, or a
    /// path that climbs above the root).
    #[error("the request path is not acceptable")]
    BadPath,
    /// A `Transfer-Encoding` other than `chunked`.
    #[error("this transfer-encoding is not supported")]
    UnsupportedTransferEncoding,
    /// A WebSocket upgrade on a route without `upgrade: websocket`.
    #[error("this route does not allow connection upgrades (WebSocket)")]
    UpgradeNotAllowed,
    /// A request with this idempotency key is still in flight.
    #[error("a request with this idempotency key is in progress; retry after it completes")]
    IdempotencyInProgress {
        /// A hint for when to ask again.
        retry_after: std::time::Duration,
    },
    /// The idempotency key was used before for a different request.
    #[error("this idempotency key was used for a different request")]
    IdempotencyKeyReused,
    /// The first request with this key may or may not have been acted on.
    #[error("the outcome of the first request with this idempotency key is unknown; reconcile before retrying with a new key")]
    IdempotencyOutcomeUnknown,
    /// The first request with this key completed, but its response was too large to store.
    #[error(
        "the first request with this idempotency key completed but its response was not stored"
    )]
    IdempotencyResponseNotStored,
    /// The idempotency store failed and the route says `on_error: refuse`.
    #[error("the idempotency store is unavailable")]
    IdempotencyStoreUnavailable,
    /// The request body is larger than the route's `idempotency.max_request_bytes`.
    #[error("the request body is too large to fingerprint for its idempotency key")]
    IdempotencyBodyTooLarge,
    /// The idempotency key header is empty or longer than 255 bytes.
    #[error("the idempotency key must be 1 to 255 bytes")]
    IdempotencyKeyInvalid,
}

impl ProxyError {
    /// Whether backstop refused the request by policy (a breaker, a concurrency limit, a
    /// rate limit) rather than failing at or because of the upstream.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            ProxyError::CircuitOpen { .. }
                | ProxyError::CircuitHalfOpen { .. }
                | ProxyError::Overloaded
                | ProxyError::AdaptiveConcurrencyLimited
                | ProxyError::RateLimited { .. }
                | ProxyError::UpstreamQuotaExhausted { .. }
        )
    }

    /// The public reason name.
    pub fn reason(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::ConnectFailed => "upstream_connect_failed",
            ProxyError::Timeout => "upstream_timeout",
            ProxyError::UpstreamError => "upstream_error",
            ProxyError::BadRequest => "bad_request",
            ProxyError::CircuitOpen { .. } => "circuit_open",
            ProxyError::CircuitHalfOpen { .. } => "circuit_half_open",
            ProxyError::Overloaded => "upstream_overloaded",
            ProxyError::AdaptiveConcurrencyLimited => "adaptive_concurrency_limited",
            ProxyError::UpstreamQuotaExhausted { .. } => "upstream_quota_exhausted",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::RateLimitKeyMissing => "rate_limit_key_missing",
            ProxyError::TooManyStreams => "too_many_streams",
            ProxyError::ClientBodyError => "client_body_error",
            ProxyError::ClientBodyTimeout => "client_body_timeout",
            ProxyError::ClientClosed => "client_closed",
            ProxyError::BadHost => "bad_host",
            ProxyError::BadPath => "bad_path",
            ProxyError::UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            ProxyError::UpgradeNotAllowed => "upgrade_not_allowed",
            ProxyError::IdempotencyInProgress { .. } => "idempotency_in_progress",
            ProxyError::IdempotencyKeyReused => "idempotency_key_reused",
            ProxyError::IdempotencyOutcomeUnknown => "idempotency_outcome_unknown",
            ProxyError::IdempotencyResponseNotStored => "idempotency_response_not_stored",
            ProxyError::IdempotencyStoreUnavailable => "idempotency_store_unavailable",
            ProxyError::IdempotencyBodyTooLarge => "idempotency_body_too_large",
            ProxyError::IdempotencyKeyInvalid => "idempotency_key_invalid",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::ConnectFailed | ProxyError::UpstreamError => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest
            | ProxyError::RateLimitKeyMissing
            | ProxyError::ClientBodyError
            | ProxyError::BadHost
            | ProxyError::BadPath
            | ProxyError::UpgradeNotAllowed
            | ProxyError::IdempotencyKeyInvalid => StatusCode::BAD_REQUEST,
            ProxyError::IdempotencyInProgress { .. }
            | ProxyError::IdempotencyOutcomeUnknown
            | ProxyError::IdempotencyResponseNotStored => StatusCode::CONFLICT,
            ProxyError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ProxyError::IdempotencyStoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::IdempotencyBodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientClosed => {
                StatusCode::from_u16(499).expect("499 is a valid status code")
            }
            ProxyError::UnsupportedTransferEncoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::TooManyStreams => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited { .. } | ProxyError::UpstreamQuotaExhausted { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::CircuitOpen { .. }
            | ProxyError::CircuitHalfOpen { .. }
            | ProxyError::Overloaded
            | ProxyError::AdaptiveConcurrencyLimited => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON response for this error.
    pub fn to_response(self, route: Option<&str>, upstream: Option<&str>) -> Response<ProxyBody> {
        let message = self.to_string();
        let body = ErrorBody {
            error: self.reason(),
            message: &message,
            route,
            upstream,
        };
        // Serialising four strings cannot fail; the fallback keeps the answer well-formed.
        let body = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = Response::new(ProxyBody::local(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(REASON_HEADER, HeaderValue::from_static(self.reason()));
        if let ProxyError::CircuitOpen { retry_after }
        | ProxyError::CircuitHalfOpen { retry_after }
        | ProxyError::RateLimited { retry_after }
        | ProxyError::IdempotencyInProgress { retry_after }
        | ProxyError::UpstreamQuotaExhausted { retry_after } = self
        {
            // Whole seconds, rounded up, at least 1: "0" would invite an immediate retry.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}
