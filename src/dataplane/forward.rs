//! Header rewriting between the client and the upstream, in both directions.
//!
//! Hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection and must not cross the
//! proxy; `x-forwarded-for`/`-proto`/`-host` and `x-real-ip` tell the upstream who called;
//! `x-request-id` ties the access log, the upstream's logs and the client's view of one
//! request together.
//!
//! Forwarding headers are believed only from `server.trusted_proxies`: from any other peer they
//! are replaced with what backstop saw, so a client cannot pass itself off as someone else.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Uri;

use crate::config::Cidr;

/// Header carrying the request id.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest request id kept from a client; longer ones are replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers that `Connection` can never remove: backstop sets or vouches for them, and tracing
/// depends on them. A client naming them there is trying to strip them.
const NEVER_HOP_BY_HOP: [HeaderName; 8] = [
    header::HOST,
    REQUEST_ID,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_REAL_IP,
    TRACEPARENT,
    TRACESTATE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names (except the
/// [`NEVER_HOP_BY_HOP`] ones). `TE: trailers` is kept on requests because gRPC needs it end to
/// end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) headers is cheaper than eight hash lookups when, as usual,
    // none of them is present.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !NEVER_HOP_BY_HOP.contains(name))
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    let te_trailers_only = headers
        .get(header::TE)
        .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers_only {
        headers.remove(header::TE);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == header::TE
}

/// Whether the peer `client` is one of `trusted_proxies`; nothing to check when the list is
/// empty, the default.
pub fn is_trusted(trusted_proxies: &[Cidr], client: IpAddr) -> bool {
    trusted_proxies.iter().any(|cidr| cidr.contains(client))
}

/// Sets the forwarding headers for a request from the peer `client` (an IP address as a header
/// value) to `uri` with `headers`.
///
/// From a `trusted` peer (a proxy in `server.trusted_proxies`) `x-forwarded-for` gets `client`
/// appended and `x-forwarded-proto`, `x-forwarded-host` and `x-real-ip` are kept, or set as
/// below when absent. From any other peer all four are replaced: `x-forwarded-for` and
/// `x-real-ip` = `client`, `x-forwarded-proto: http` (the listener is plain HTTP),
/// `x-forwarded-host` = the request's `Host` (or HTTP/2 authority).
pub fn add_forwarded(headers: &mut HeaderMap, uri: &Uri, client: &HeaderValue, trusted: bool) {
    let host = headers.get(header::HOST).cloned().or_else(|| {
        uri.authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if !trusted {
        headers.insert(X_FORWARDED_FOR, client.clone());
        headers.insert(X_REAL_IP, client.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        match host {
            Some(host) => headers.insert(X_FORWARDED_HOST, host),
            None => headers.remove(X_FORWARDED_HOST),
        };
        return;
    }
    let mut joined = Vec::new();
    for previous in headers.get_all(X_FORWARDED_FOR) {
        joined.extend_from_slice(previous.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(client.as_bytes());
    match HeaderValue::from_bytes(&joined) {
        Ok(value) => headers.insert(X_FORWARDED_FOR, value),
        // An unusable previous value is replaced rather than forwarded.
        Err(_) => headers.insert(X_FORWARDED_FOR, client.clone()),
    };
    if !headers.contains_key(X_REAL_IP) {
        headers.insert(X_REAL_IP, client.clone());
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(host) = host {
        if !headers.contains_key(X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
}

/// The request's id: the client's when it sent exactly one that is printable ASCII without
/// spaces (0x21 to 0x7E) and at most [`MAX_REQUEST_ID_LEN`] bytes, else a new UUID v4, which
/// then replaces whatever the client sent.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    let mut ids = headers.get_all(REQUEST_ID).iter();
    if let (Some(id), None) = (ids.next(), ids.next()) {
        if is_usable_id(id) {
            return id.clone();
        }
    }
    let mut buf = uuid::Uuid::encode_buffer();
    let generated = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    let value = HeaderValue::from_str(generated).expect("a uuid is a valid header value");
    headers.insert(REQUEST_ID, value.clone());
    value
}

fn is_usable_id(id: &HeaderValue) -> bool {
    let id = id.as_bytes();
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len()) && id.iter().all(|b| (0x21..=0x7E).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn connection_cannot_name_headers_backstop_vouches_for() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-request-id, X-Forwarded-For, host, traceparent"),
        );
        for name in ["x-request-id", "x-forwarded-for", "host", "traceparent"] {
            h.insert(name, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 4, "{h:?}");
    }

    #[test]
    fn a_trusted_peer_is_appended_to() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let uri = Uri::from_static("http://h.test/");
        add_forwarded(&mut h, &uri, &HeaderValue::from_static("127.0.0.1"), true);
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_REAL_IP], "127.0.0.1");
        assert_eq!(h[X_FORWARDED_HOST], "h.test");
    }

    #[test]
    fn an_untrusted_peer_is_replaced() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.insert(X_REAL_IP, HeaderValue::from_static("10.0.0.1"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("evil.test"));
        h.insert(header::HOST, HeaderValue::from_static("h.test:8080"));
        let uri = Uri::from_static("/");
        add_forwarded(&mut h, &uri, &HeaderValue::from_static("::1"), false);
        assert_eq!(h[X_FORWARDED_FOR], "::1");
        assert_eq!(h[X_REAL_IP], "::1");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "h.test:8080");
    }

    #[test]
    fn trust_follows_the_cidrs() {
        let cidrs = [Cidr {
            addr: "10.0.0.0".parse().unwrap(),
            prefix: 8,
        }];
        assert!(is_trusted(&cidrs, "10.1.2.3".parse().unwrap()));
        assert!(!is_trusted(&cidrs, "11.1.2.3".parse().unwrap()));
        assert!(!is_trusted(&[], "10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn request_ids_must_be_printable_ascii_up_to_128_bytes() {
        let id = |v: &[u8]| is_usable_id(&HeaderValue::from_bytes(v).unwrap());
        assert!(id(b"abc-123"));
        assert!(id("x".repeat(128).as_bytes()));
        assert!(!id("x".repeat(129).as_bytes()));
        assert!(!id(b""));
        assert!(!id(b"a b"));
        assert!(!id(b"caf\xc3\xa9"));
    }
}
