//! Compiles `routes[].idempotency` and `upstreams.<name>.idempotency_key`.
//!
//! Defaults live here; config/backstop.yaml documents the same values.

use std::time::Duration;

use http::HeaderName;
use serde_saphyr::Spanned;

use super::model::{FingerprintParts, GeneratedKey, Idempotency, IdempotencyStore};
use super::raw::{RawIdempotency, RawIdempotencyKey};
use super::validate::{duration_or, Issues, Text};

const DEFAULT_HEADER: &str = "idempotency-key";
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_MAX_RESPONSE: usize = 64 * 1024;
const DEFAULT_MAX_REQUEST: usize = 1024 * 1024;
/// Stored per key: beyond this a record is not a receipt but a cache.
const MAX_SIZE: usize = 16 * 1024 * 1024;
const DEFAULT_MAX_KEYS: usize = 100_000;

/// `idempotency:` on a route. `has_redis`: whether the file has a `redis:` section.
pub(crate) fn idempotency(
    issues: &mut Issues,
    path: &str,
    raw: &Spanned<RawIdempotency>,
    has_redis: bool,
) -> Option<Idempotency> {
    let r = &raw.value;
    let header = header(issues, &format!("{path}.header"), r.header.as_ref());
    let store = match r.store.as_ref().map(|s| (s, s.value.trim())) {
        None | Some((_, "local")) => IdempotencyStore::Local,
        Some((s, "redis")) => {
            if !has_redis {
                issues.at(
                    &format!("{path}.store"),
                    s,
                    "store: redis needs a top-level redis: section".into(),
                );
            }
            IdempotencyStore::Redis
        }
        Some((s, other)) => {
            let message = format!("unknown store {other:?}: expected local or redis");
            issues.unknown(
                &format!("{path}.store"),
                s,
                other,
                message,
                &["local", "redis"],
            );
            IdempotencyStore::Local
        }
    };
    let ttl = duration_or(
        issues,
        &format!("{path}.ttl"),
        r.ttl.as_ref(),
        DEFAULT_TTL,
        MAX_TTL,
    );
    let max_response_bytes = size(
        issues,
        &format!("{path}.max_response_bytes"),
        r.max_response_bytes.as_ref(),
        DEFAULT_MAX_RESPONSE,
    );
    let max_request_bytes = size(
        issues,
        &format!("{path}.max_request_bytes"),
        r.max_request_bytes.as_ref(),
        DEFAULT_MAX_REQUEST,
    );
    let fingerprint = match &r.fingerprint {
        None => FingerprintParts {
            method: true,
            path: true,
            body: true,
        },
        Some(list) => {
            let mut parts = FingerprintParts {
                method: false,
                path: false,
                body: false,
            };
            for (i, item) in list.iter().enumerate() {
                match item.value.trim() {
                    "method" => parts.method = true,
                    "path" => parts.path = true,
                    "body" => parts.body = true,
                    other => {
                        let message = format!(
                            "unknown fingerprint part {other:?}: expected method, path or body"
                        );
                        issues.unknown(
                            &format!("{path}.fingerprint[{i}]"),
                            item,
                            other,
                            message,
                            &["method", "path", "body"],
                        );
                    }
                }
            }
            parts
        }
    };
    let forward_on_error = match r.on_error.as_ref().map(|s| (s, s.value.trim())) {
        None | Some((_, "refuse")) => false,
        Some((_, "forward")) => true,
        Some((s, other)) => {
            let message = format!("unknown on_error {other:?}: expected forward or refuse");
            issues.unknown(
                &format!("{path}.on_error"),
                s,
                other,
                message,
                &["forward", "refuse"],
            );
            false
        }
    };
    let max_keys = match &r.max_keys {
        Some(m) if m.value == 0 => {
            issues.at(&format!("{path}.max_keys"), m, "must be at least 1".into());
            DEFAULT_MAX_KEYS
        }
        Some(m) => m.value as usize,
        None => DEFAULT_MAX_KEYS,
    };
    Some(Idempotency {
        header,
        store,
        ttl,
        max_response_bytes,
        max_request_bytes,
        fingerprint,
        forward_on_error,
        max_keys,
    })
}

/// `idempotency_key:` on an upstream.
pub(crate) fn generated_key(
    issues: &mut Issues,
    path: &str,
    raw: &Spanned<RawIdempotencyKey>,
) -> GeneratedKey {
    GeneratedKey {
        header: header(issues, &format!("{path}.header"), raw.value.header.as_ref()),
        generate: raw.value.generate.unwrap_or(false),
    }
}

fn header(issues: &mut Issues, path: &str, raw: Option<&Text>) -> HeaderName {
    let Some(h) = raw else {
        return HeaderName::from_static(DEFAULT_HEADER);
    };
    HeaderName::from_bytes(h.value.trim().as_bytes()).unwrap_or_else(|_| {
        issues.at(path, h, format!("invalid header name {:?}", h.value));
        HeaderName::from_static(DEFAULT_HEADER)
    })
}

/// A byte size: `65536`, `64KiB`, `1MiB` (also `KB`/`MB`, read as binary units), above zero
/// and at most 16 MiB.
fn size(issues: &mut Issues, path: &str, raw: Option<&Text>, default: usize) -> usize {
    let Some(text) = raw else { return default };
    match parse_size(&text.value) {
        Some(0) => {
            issues.at(path, text, "must be greater than zero".into());
            default
        }
        Some(n) if n > MAX_SIZE => {
            issues.at(
                path,
                text,
                format!("{} is more than the maximum 16MiB", text.value),
            );
            default
        }
        Some(n) => n,
        None => {
            let message = format!(
                "invalid size {:?}: use bytes or a number with KiB or MiB, e.g. 64KiB",
                text.value
            );
            issues.at(path, text, message);
            default
        }
    }
}

fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: usize = number.parse().ok()?;
    let unit = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "k" | "K" => 1024,
        "MiB" | "MB" | "M" => 1024 * 1024,
        _ => return None,
    };
    number.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("65536"), Some(65536));
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size(" 1MiB "), Some(1 << 20));
        assert_eq!(parse_size("1GiB"), None);
        assert_eq!(parse_size("KiB"), None);
    }
}
