//! Every metric name backstop exports, in one place.
//!
//! Dashboards, generated rules and tests refer to these names; renaming one breaks users, so a
//! name here is a public contract.

/// Requests answered, by route, upstream, method and 3-digit status.
pub const REQUESTS_TOTAL: &str = "backstop_requests_total";
/// End-to-end request duration as seen by backstop, by route and upstream.
pub const REQUEST_DURATION_SECONDS: &str = "backstop_request_duration_seconds";
/// Time requests spent waiting on upstreams (all attempts), per route and upstream.
pub const UPSTREAM_DURATION_SECONDS: &str = "backstop_upstream_duration_seconds";
/// Attempts sent to an upstream endpoint, by result.
pub const UPSTREAM_ATTEMPTS_TOTAL: &str = "backstop_upstream_attempts_total";
/// Hedged attempts per route, by result (sent, won, budget_exhausted, slo_burning,
/// no_endpoint).
pub const HEDGES_TOTAL: &str = "backstop_hedges_total";
/// Upstream answers an outcome rule judged, by rule and verdict.
pub const OUTCOME_RULE_TOTAL: &str = "backstop_outcome_rule_total";
/// Constant 1, labelled with the version.
pub const BUILD_INFO: &str = "backstop_build_info";
/// Requests being served right now.
pub const REQUESTS_IN_FLIGHT: &str = "backstop_requests_in_flight";
/// One-hot breaker state by upstream, route ("" for upstream-level) and state.
pub const CIRCUIT_STATE: &str = "backstop_circuit_state";
/// Breaker transitions by upstream, route, from and to.
pub const CIRCUIT_TRANSITIONS_TOTAL: &str = "backstop_circuit_transitions_total";
/// Breaker transitions by upstream, route, from, to and reason (a bounded snake_case set:
/// consecutive_failures, failure_rate, slow_call_rate, probe_failed, probe_slow, probes_passed,
/// open_period_elapsed, forced_open, forced_closed, reset, peer_opened, peer_closed). A separate family because
/// `backstop_circuit_transitions_total` keeps its label set.
pub const CIRCUIT_TRANSITION_REASONS_TOTAL: &str = "backstop_circuit_transition_reasons_total";
/// Unix time a breaker last opened from closed (the start of its latest open episode); 0 if it
/// never opened since the process started.
pub const CIRCUIT_OPENED_AT: &str = "backstop_circuit_opened_at_timestamp_seconds";
/// Requests a breaker rejected (enforce) or would have rejected (shadow).
pub const CIRCUIT_REJECTED_TOTAL: &str = "backstop_circuit_rejected_total";
/// Shared breakers (`shared: redis`): 1 while the breaker's last exchange with Redis (publish,
/// poll, probe claim) succeeded; 0 while it decides alone.
pub const CIRCUIT_SHARED_CONNECTED: &str = "backstop_circuit_shared_connected";
/// Shared breakers: exchanges with Redis that failed, after which the breaker went on with its
/// local state (a local open unpublished, a poll missed, a probe admitted by the local count).
pub const CIRCUIT_SHARED_FALLBACK_TOTAL: &str = "backstop_circuit_shared_fallback_total";
/// 1 while an endpoint is ejected by outlier detection.
pub const ENDPOINT_EJECTED: &str = "backstop_endpoint_ejected";
/// Ejections per endpoint.
pub const ENDPOINT_EJECTIONS_TOTAL: &str = "backstop_endpoint_ejections_total";
/// Requests in flight to an upstream.
pub const UPSTREAM_IN_FLIGHT: &str = "backstop_upstream_in_flight";
/// Requests rejected by an upstream's max_concurrent_requests.
pub const OVERLOAD_REJECTED_TOTAL: &str = "backstop_overload_rejected_total";
/// The adaptive concurrency limit of an upstream.
pub const ADAPTIVE_LIMIT: &str = "backstop_adaptive_concurrency_limit";
/// Requests in flight under an upstream's adaptive concurrency limit.
pub const ADAPTIVE_IN_FLIGHT: &str = "backstop_adaptive_concurrency_in_flight";
/// Requests the adaptive concurrency limit rejected (enforce) or would have (shadow).
pub const ADAPTIVE_REJECTIONS_TOTAL: &str = "backstop_adaptive_concurrency_rejections_total";
/// Requests backstop refused itself (circuit open, overloaded, rate limited...), by route and
/// reason: an upstream's own breaker and limits are counted per upstream elsewhere; this says
/// which route's requests they were.
pub const REFUSED_TOTAL: &str = "backstop_refused_total";
/// 1 while a route's retries are cut because its SLOs burn fast (`retry.when_burning`).
pub const RETRY_BURNING: &str = "backstop_retry_burning";
/// Switches of `retry.when_burning`, by route and the state switched to.
pub const RETRY_BURN_SWITCHES_TOTAL: &str = "backstop_retry_burn_switches_total";
/// The quota the partner last said it has left (-1 before it said).
pub const UPSTREAM_QUOTA_REMAINING: &str = "backstop_upstream_quota_remaining";
/// Seconds until the partner's quota resets, as it last said.
pub const UPSTREAM_QUOTA_RESET_SECONDS: &str = "backstop_upstream_quota_reset_seconds";
/// Attempts held back by the partner's quota (`queued`, `shed` with a local 429) or by the
/// declared rate (`declared_queued`, `declared_shed`, `declared_backend_error`).
pub const UPSTREAM_QUOTA_TOTAL: &str = "backstop_upstream_quota_total";
/// Retries by route and the condition that triggered them.
pub const RETRIES_TOTAL: &str = "backstop_retries_total";
/// Retries refused by the route's retry budget.
pub const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "backstop_retry_budget_exhausted_total";
/// Non-idempotent requests that failed after being sent and were not retried.
pub const OUTCOME_UNKNOWN_TOTAL: &str = "backstop_outcome_unknown_total";
/// Attempts sent to a failover upstream instead of the route's own.
pub const FAILOVER_TOTAL: &str = "backstop_failover_total";
/// 1 while active health checks consider the endpoint healthy.
pub const ENDPOINT_HEALTHY: &str = "backstop_endpoint_healthy";
/// Active health checks by result (success, failure).
pub const HEALTH_CHECKS_TOTAL: &str = "backstop_health_checks_total";
/// Requests a rate limit rejected (enforce) or would have rejected (shadow).
pub const RATE_LIMITED_TOTAL: &str = "backstop_rate_limited_total";
/// Live keys of a route's local rate limit.
pub const RATE_LIMIT_KEYS: &str = "backstop_rate_limit_keys";
/// Global rate limit decisions Redis could not make in time.
pub const RATE_LIMIT_BACKEND_ERRORS_TOTAL: &str = "backstop_rate_limit_backend_errors_total";
/// Global rate limit decisions that applied `on_error` at once, without asking Redis, while
/// Redis was known to be down (or not yet connected).
pub const REDIS_FAST_FAIL_TOTAL: &str = "backstop_redis_fast_fail_total";
/// 1 while Redis answers global rate limit decisions; 0 while not connected or failing fast.
pub const REDIS_AVAILABLE: &str = "backstop_redis_available";
/// Keys a route's local rate limit evicted to make room for new ones at `max_keys`.
pub const RATE_LIMIT_EVICTIONS_TOTAL: &str = "backstop_rate_limit_evictions_total";
/// SLI events per SLO, result good or bad.
pub const SLO_EVENTS_TOTAL: &str = "backstop_slo_events_total";
/// The SLO's objective as a ratio (0.999).
pub const SLO_OBJECTIVE: &str = "backstop_slo_objective";
/// Share of the error budget left, since process start up to the window (may go negative).
pub const SLO_ERROR_BUDGET_REMAINING: &str = "backstop_slo_error_budget_remaining";
/// Burn rate over 5m, 30m, 1h and 6h, as seen by this process.
pub const SLO_BURN_RATE: &str = "backstop_slo_burn_rate";
/// Config reloads by result (accepted, rejected).
pub const CONFIG_RELOADS_TOTAL: &str = "backstop_config_reloads_total";
/// Generation of the running config: 1 at startup, +1 per accepted reload.
pub const CONFIG_GENERATION: &str = "backstop_config_generation";
/// Unix time of the last successful load.
pub const CONFIG_LAST_RELOAD_SUCCESS: &str =
    "backstop_config_last_reload_success_timestamp_seconds";
/// Constant 1, labelled with the SHA-256 of the running config file.
pub const CONFIG_HASH: &str = "backstop_config_hash";
/// Client connections open on the proxy listener.
pub const CONNECTIONS_OPEN: &str = "backstop_connections_open";
/// The proxy listener's connection limit (`server.max_connections`, or derived).
pub const CONNECTIONS_LIMIT: &str = "backstop_connections_limit";
/// Client connections closed, by reason (normal, header_timeout, idle_timeout,
/// premature_resets, error).
pub const CONNECTIONS_CLOSED_TOTAL: &str = "backstop_connections_closed_total";
/// Times the proxy listener reached its connection limit and stopped accepting.
pub const CONNECTIONS_SATURATED_TOTAL: &str = "backstop_connections_saturated_total";
/// Upstream response bodies cut because no data arrived for `read_timeout`, per endpoint.
pub const UPSTREAM_READ_TIMEOUTS_TOTAL: &str = "backstop_upstream_read_timeouts_total";
/// Requests with an idempotency key by what the idempotency layer did (stored, replayed,
/// in_progress, conflict, unknown, store_error, released, not_stored, refused_unknown,
/// forwarded_again).
pub const IDEMPOTENCY_TOTAL: &str = "backstop_idempotency_total";
/// Keys a route's local idempotency store evicted at max_keys before their ttl.
pub const IDEMPOTENCY_EVICTIONS_TOTAL: &str = "backstop_idempotency_evictions_total";
/// Keys backstop generated for non-idempotent requests to an upstream (`idempotency_key`).
pub const IDEMPOTENCY_KEYS_GENERATED_TOTAL: &str = "backstop_idempotency_keys_generated_total";
