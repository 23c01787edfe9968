//! Route matching: the first route whose every condition holds wins.
//!
//! Path prefixes are segment-aware: `/v1/payments` matches `/v1/payments` and
//! `/v1/payments/42` but not `/v1/paymentsfoo`, so a route never captures a sibling resource by
//! accident. A prefix ending in `/` matches anything below it.

use http::{header, Request};

use crate::config::{HostMatch, Route};

/// Index of the first route in `routes` that matches `req`.
pub fn find<B>(routes: &[Route], req: &Request<B>) -> Option<usize> {
    let host = request_host(req);
    routes.iter().position(|r| matches(r, host.as_deref(), req))
}

fn matches<B>(route: &Route, host: Option<&str>, req: &Request<B>) -> bool {
    if let Some(methods) = &route.methods {
        if !methods.contains(req.method()) {
            return false;
        }
    }
    if !path_matches(&route.path_prefix, req.uri().path()) {
        return false;
    }
    if let Some(expected) = &route.host {
        let Some(host) = host else { return false };
        let ok = match expected {
            HostMatch::Exact(h) => host == h,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        };
        if !ok {
            return false;
        }
    }
    route
        .headers
        .iter()
        .all(|(name, value)| req.headers().get(name) == Some(value))
}

fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" || prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The request's host, lower-case and without port: from the URI (HTTP/2) or the Host header.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.uri().host() {
        Some(h) => h,
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    let without_port = match raw.rsplit_once(':') {
        Some((h, port))
            if !h.ends_with(']')
                && port.chars().all(|c| c.is_ascii_digit())
                && !h.contains(':') =>
        {
            h
        }
        Some((h, _)) if h.ends_with(']') => h,
        _ => raw,
    };
    Some(without_port.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_segment_aware() {
        assert!(path_matches("/v1/payments", "/v1/payments"));
        assert!(path_matches("/v1/payments", "/v1/payments/42"));
        assert!(!path_matches("/v1/payments", "/v1/paymentsfoo"));
        assert!(path_matches("/v1/", "/v1/x"));
        assert!(path_matches("/", "/anything"));
    }

    #[test]
    fn host_is_lowercased_without_port() {
        let req = Request::builder()
            .uri("/")
            .header("host", "Pay.Internal:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("pay.internal"));
        let req = Request::builder().uri("http://[::1]:80/").body(()).unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("[::1]"));
    }
}
