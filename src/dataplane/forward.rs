//! Header rewriting between the client and the upstream, in both directions.
//!
//! Hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection and must not cross the
//! proxy; `x-forwarded-for`/`x-forwarded-proto` tell the upstream who called; `x-request-id`
//! ties the access log, the upstream's logs and the client's view of one request together.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Header carrying the request id.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
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

/// Removes hop-by-hop headers, including those the `Connection` header names. `TE: trailers`
/// is kept on requests because gRPC needs it end to end.
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

/// Adds the client (an IP address as a header value) to `x-forwarded-for` and sets
/// `x-forwarded-proto` when absent.
pub fn add_forwarded(headers: &mut HeaderMap, client: &HeaderValue) {
    let appended = headers.get(X_FORWARDED_FOR).map(|previous| {
        let mut joined = Vec::with_capacity(previous.len() + 2 + client.len());
        joined.extend_from_slice(previous.as_bytes());
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(client.as_bytes());
        HeaderValue::from_bytes(&joined)
    });
    match appended {
        Some(Ok(value)) => headers.insert(X_FORWARDED_FOR, value),
        // An unusable previous value is replaced rather than forwarded.
        Some(Err(_)) | None => headers.insert(X_FORWARDED_FOR, client.clone()),
    };
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
}

/// The request's id, generating one when absent or unusable.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(REQUEST_ID) {
        if !id.is_empty() && id.len() <= 200 {
            return id.clone();
        }
    }
    let mut buf = uuid::Uuid::encode_buffer();
    let generated = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    let value = HeaderValue::from_str(generated).expect("a uuid is a valid header value");
    headers.insert(REQUEST_ID, value.clone());
    value
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
    fn appends_to_forwarded_for() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        add_forwarded(&mut h, &HeaderValue::from_static("127.0.0.1"));
        assert_eq!(h.get(X_FORWARDED_FOR).unwrap(), "10.0.0.1, 127.0.0.1");
        assert_eq!(h.get(X_FORWARDED_PROTO).unwrap(), "http");
    }
}
