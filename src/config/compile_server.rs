//! The `server:` block: deadlines and limits of the proxy listener.
//!
//! Every client connection costs a file descriptor, memory for its buffers and a task; these
//! limits make sure a slow or hostile client can only spend a bounded share of them. Defaults
//! follow what nginx and Envoy ship (30s to send headers, 60s idle, 64 KiB of headers).

use std::net::IpAddr;
use std::time::Duration;

use super::model::{AccessLog, Cidr, ServerLimits};
use super::raw::{RawAccessLog, RawServer};
use super::validate::{duration_or, percent_or_zero, Issues};

/// The largest request head backstop accepts at all, whatever the config says.
const MAX_HEADERS_CEILING: u32 = 1024 * 1024;
/// Smallest request head limit: a few ordinary headers must fit.
const MIN_HEADERS_BYTES: u32 = 1024;

/// Compiles `access_log:`; a missing block logs every request.
pub(crate) fn access_log(issues: &mut Issues, raw: Option<&RawAccessLog>) -> AccessLog {
    let defaults = AccessLog::default();
    let sample = raw
        .and_then(|r| r.sample.as_ref())
        .and_then(|s| percent_or_zero(issues, "access_log.sample", s))
        .unwrap_or(defaults.sample);
    AccessLog { sample }
}

/// Compiles `server:`; a missing block means every default.
pub(crate) fn server(issues: &mut Issues, raw: Option<&RawServer>) -> ServerLimits {
    let defaults = ServerLimits::default();
    let Some(raw) = raw else { return defaults };
    let hour = Duration::from_secs(3600);
    let header_read_timeout = duration_or(
        issues,
        "server.header_read_timeout",
        raw.header_read_timeout.as_ref(),
        defaults.header_read_timeout,
        Duration::from_secs(300),
    );
    let idle_timeout = duration_or(
        issues,
        "server.idle_timeout",
        raw.idle_timeout.as_ref(),
        defaults.idle_timeout,
        hour,
    );
    let client_body_timeout = duration_or(
        issues,
        "server.client_body_timeout",
        raw.client_body_timeout.as_ref(),
        defaults.client_body_timeout,
        hour,
    );
    let max_connections = raw.max_connections.as_ref().and_then(|m| {
        let text = m.value.trim();
        if text == "auto" {
            return None;
        }
        match text.parse::<usize>() {
            Ok(n) if (1..=10_000_000).contains(&n) => Some(n),
            _ => {
                issues.at(
                    "server.max_connections",
                    m,
                    format!("invalid connection limit {text:?}: expected `auto` or 1 to 10000000"),
                );
                None
            }
        }
    });
    let max_request_headers_bytes =
        raw.max_request_headers_bytes
            .as_ref()
            .map_or(defaults.max_request_headers_bytes, |m| {
                if !(MIN_HEADERS_BYTES..=MAX_HEADERS_CEILING).contains(&m.value) {
                    issues.at(
                        "server.max_request_headers_bytes",
                        m,
                        format!(
                        "{} is out of range: expected {MIN_HEADERS_BYTES} to {MAX_HEADERS_CEILING}",
                        m.value
                    ),
                    );
                }
                m.value.clamp(MIN_HEADERS_BYTES, MAX_HEADERS_CEILING) as usize
            });
    let max_concurrent_streams =
        raw.max_concurrent_streams
            .as_ref()
            .map_or(defaults.max_concurrent_streams, |m| {
                if m.value == 0 || m.value > 100_000 {
                    issues.at(
                        "server.max_concurrent_streams",
                        m,
                        format!("{} is out of range: expected 1 to 100000", m.value),
                    );
                }
                m.value.clamp(1, 100_000)
            });
    let max_buffered_bytes = raw
        .max_buffered_bytes
        .as_ref()
        .map_or(defaults.max_buffered_bytes, |m| m.value);
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, text)| {
            let parsed = cidr(&text.value);
            if parsed.is_none() {
                issues.at(
                    &format!("server.trusted_proxies[{i}]"),
                    text,
                    format!(
                        "invalid network {:?}: expected an address or a CIDR, e.g. 10.0.0.0/8",
                        text.value
                    ),
                );
            }
            parsed
        })
        .collect();
    ServerLimits {
        header_read_timeout,
        idle_timeout,
        client_body_timeout,
        max_connections,
        max_request_headers_bytes,
        max_concurrent_streams,
        max_buffered_bytes,
        trusted_proxies,
    }
}

/// Parses `10.0.0.0/8`, `::1/128` or a bare address (a /32 or /128).
pub(crate) fn cidr(text: &str) -> Option<Cidr> {
    let text = text.trim();
    let (addr, prefix) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix.parse::<u8>().ok()?)),
        None => (text, None),
    };
    let addr: IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    (prefix <= max).then_some(Cidr { addr, prefix })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_match() {
        let net = cidr("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = cidr("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(cidr("::1/128").unwrap().contains("::1".parse().unwrap()));
        assert!(cidr("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert_eq!(cidr("10.0.0.0/33"), None);
        assert_eq!(cidr("nope/8"), None);
    }
}
