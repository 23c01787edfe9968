//! Checks on a request's framing before it is routed: one `Host`, and transfer codings
//! backstop can forward faithfully.
//!
//! - HTTP/1.1 needs exactly one `Host` (RFC 9112 section 3.2): none, or two, is a 400
//!   `bad_host`, so that routing and the upstream never disagree on which host was meant.
//! - When the request target carries an authority (absolute form, or HTTP/2's `:authority`),
//!   a `Host` header that names another host is a 400; otherwise `Host` is set to the
//!   authority, so the host that routed is the host the upstream sees.
//! - A `Transfer-Encoding` other than `chunked` (e.g. `gzip, chunked`) is a 501: stripping
//!   it, as a hop-by-hop header, would forward compressed bytes as if they were plain.

use http::{header, HeaderValue, Request, Version};

use super::rescue::ProxyError;

/// Checks `req`, setting `Host` from the URI's authority where there is one.
pub fn check<B>(req: &mut Request<B>) -> Result<(), ProxyError> {
    let codings = req.headers().get_all(header::TRANSFER_ENCODING);
    for value in codings {
        let only_chunked = value.to_str().is_ok_and(|v| {
            v.split(',')
                .map(str::trim)
                .all(|c| c.eq_ignore_ascii_case("chunked"))
        });
        if !only_chunked {
            return Err(ProxyError::UnsupportedTransferEncoding);
        }
    }
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && req.version() == Version::HTTP_11) {
        return Err(ProxyError::BadHost);
    }
    let Some(authority) = req.uri().authority().map(|a| a.as_str().to_owned()) else {
        return Ok(());
    };
    match req.headers().get(header::HOST) {
        Some(host) if !host.as_bytes().eq_ignore_ascii_case(authority.as_bytes()) => {
            Err(ProxyError::BadHost)
        }
        Some(_) => Ok(()),
        None => {
            let value = HeaderValue::from_str(&authority).map_err(|_| ProxyError::BadHost)?;
            req.headers_mut().insert(header::HOST, value);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::get(uri).version(version);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn http11_needs_exactly_one_host() {
        assert_eq!(
            check(&mut req(Version::HTTP_11, "/", &[])),
            Err(ProxyError::BadHost)
        );
        assert_eq!(
            check(&mut req(Version::HTTP_11, "/", &["a", "b"])),
            Err(ProxyError::BadHost)
        );
        assert_eq!(check(&mut req(Version::HTTP_11, "/", &["a"])), Ok(()));
        assert_eq!(check(&mut req(Version::HTTP_10, "/", &[])), Ok(()));
    }

    #[test]
    fn the_authority_that_routes_is_the_host_forwarded() {
        let mut absolute = req(Version::HTTP_11, "http://pay.example/x", &["other.example"]);
        assert_eq!(check(&mut absolute), Err(ProxyError::BadHost));
        let mut same = req(Version::HTTP_11, "http://pay.example/x", &["PAY.example"]);
        assert_eq!(check(&mut same), Ok(()));
        let mut h2 = req(Version::HTTP_2, "http://pay.example/x", &[]);
        assert_eq!(check(&mut h2), Ok(()));
        assert_eq!(h2.headers()[header::HOST], "pay.example");
    }

    #[test]
    fn only_chunked_transfer_coding_passes() {
        let mut gz = req(Version::HTTP_11, "/", &["a"]);
        gz.headers_mut().insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert_eq!(check(&mut gz), Err(ProxyError::UnsupportedTransferEncoding));
        let mut chunked = req(Version::HTTP_11, "/", &["a"]);
        chunked.headers_mut().insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert_eq!(check(&mut chunked), Ok(()));
    }
}
