//! Every metric name backstop exports, in one place.
//!
//! Dashboards, generated rules and tests refer to these names; renaming one breaks users, so a
//! name here is a public contract.

/// Requests answered, by route, upstream, method and 3-digit status.
pub const REQUESTS_TOTAL: &str = "backstop_requests_total";
/// End-to-end request duration as seen by backstop, by route and upstream.
pub const REQUEST_DURATION_SECONDS: &str = "backstop_request_duration_seconds";
/// Attempts sent to an upstream endpoint, by result.
pub const UPSTREAM_ATTEMPTS_TOTAL: &str = "backstop_upstream_attempts_total";
/// Constant 1, labelled with the version.
pub const BUILD_INFO: &str = "backstop_build_info";
/// Requests being served right now.
pub const REQUESTS_IN_FLIGHT: &str = "backstop_requests_in_flight";
