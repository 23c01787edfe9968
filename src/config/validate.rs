//! Checks on single values, shared by every part of the compile pass.
//!
//! [`Issues`] collects problems instead of returning at the first one: an SRE fixing a config
//! under pressure wants the whole list in one run of `backstop validate`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::error::{ConfigIssue, Position};

/// Every problem found so far.
#[derive(Debug, Default)]
pub(crate) struct Issues(pub(crate) Vec<ConfigIssue>);

impl Issues {
    /// Records a problem at `path` for a value read at `position`.
    pub(crate) fn add(&mut self, path: &str, position: Option<Position>, message: String) {
        self.0.push(ConfigIssue {
            path: path.to_owned(),
            message,
            position,
            hint: None,
        });
    }

    /// Records a problem about a spanned value.
    pub(crate) fn at<T>(&mut self, path: &str, value: &Spanned<T>, message: String) {
        self.add(path, pos(value), message);
    }

    /// Records an unknown choice, suggesting the closest of `choices` when it looks like a typo.
    pub(crate) fn unknown<T>(
        &mut self,
        path: &str,
        value: &Spanned<T>,
        wrong: &str,
        message: String,
        choices: &[&str],
    ) {
        match closest(wrong, choices.iter().copied()) {
            Some(near) => self.with_hint(path, value, message, format!("did you mean {near:?}?")),
            None => self.at(path, value, message),
        }
    }

    /// Records a problem with a suggested fix.
    pub(crate) fn with_hint<T>(
        &mut self,
        path: &str,
        value: &Spanned<T>,
        message: String,
        hint: String,
    ) {
        self.0.push(ConfigIssue {
            path: path.to_owned(),
            message,
            position: pos(value),
            hint: Some(hint),
        });
    }
}

/// Where a spanned value stands in the file.
/// A string value with its position.
pub(crate) type Text = Spanned<String>;

pub(crate) fn pos<T>(value: &Spanned<T>) -> Option<Position> {
    Position::from_location(&value.referenced)
}

/// Parses a human duration (`250ms`, `3s`, `2m`, `1h`, `28d`) that must be above zero.
pub(crate) fn duration(
    issues: &mut Issues,
    path: &str,
    value: &Spanned<String>,
) -> Option<Duration> {
    match humantime::parse_duration(value.value.trim()) {
        Ok(d) if d.is_zero() => {
            issues.at(path, value, "must be greater than zero".into());
            None
        }
        Ok(d) => Some(d),
        Err(_) => {
            issues.at(
                path,
                value,
                format!(
                    "invalid duration {:?}: use a number and a unit, e.g. 250ms, 3s, 2m, 1h",
                    value.value
                ),
            );
            None
        }
    }
}

/// An optional duration with a default, checked against an upper bound.
pub(crate) fn duration_or(
    issues: &mut Issues,
    path: &str,
    value: Option<&Spanned<String>>,
    default: Duration,
    max: Duration,
) -> Duration {
    let Some(value) = value else { return default };
    match duration(issues, path, value) {
        Some(d) if d > max => {
            issues.at(
                path,
                value,
                format!(
                    "{} is more than the maximum {}",
                    value.value,
                    humantime::format_duration(max)
                ),
            );
            default
        }
        Some(d) => d,
        None => default,
    }
}

/// Parses a percentage `"99.9%"` into a ratio in (0, 1].
pub(crate) fn percent(issues: &mut Issues, path: &str, value: &Spanned<String>) -> Option<f64> {
    percent_in(issues, path, value, false)
}

/// Parses a percentage into a ratio in [0, 1] (0% allowed).
pub(crate) fn percent_or_zero(
    issues: &mut Issues,
    path: &str,
    value: &Spanned<String>,
) -> Option<f64> {
    percent_in(issues, path, value, true)
}

fn percent_in(
    issues: &mut Issues,
    path: &str,
    value: &Spanned<String>,
    zero_ok: bool,
) -> Option<f64> {
    let parsed = value
        .value
        .trim()
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<f64>().ok())
        .filter(|p| (*p > 0.0 || (zero_ok && *p == 0.0)) && *p <= 100.0);
    if parsed.is_none() && zero_ok {
        issues.at(
            path,
            value,
            format!(
                "invalid percentage {:?}: expected 0% to 100%, e.g. \"20%\"",
                value.value
            ),
        );
    } else if parsed.is_none() {
        issues.at(
            path,
            value,
            format!(
                "invalid percentage {:?}: expected more than 0% and at most 100%, e.g. \"50%\"",
                value.value
            ),
        );
    }
    parsed.map(|p| p / 100.0)
}

/// Parses a listener address, `ip:port`.
pub(crate) fn socket_addr(
    issues: &mut Issues,
    path: &str,
    value: &Spanned<String>,
) -> Option<SocketAddr> {
    match value.value.trim().parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            issues.at(
                path,
                value,
                format!(
                    "invalid listen address {:?}: expected ip:port, e.g. 127.0.0.1:8080",
                    value.value
                ),
            );
            None
        }
    }
}

/// Splits an endpoint address `host:port` (host may be a name, an IPv4 or a bracketed IPv6).
pub(crate) fn host_port(text: &str) -> Result<(String, u16), String> {
    let text = text.trim();
    if text.contains("://") {
        return Err(format!(
            "invalid address {text:?}: give host:port without a scheme (TLS is set with `tls:`)"
        ));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "invalid address {text:?}: expected host:port, e.g. 10.0.0.5:8443"
        ));
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("invalid port in {text:?}: expected 1-65535")),
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
    };
    if !host_ok {
        return Err(format!(
            "invalid host in {text:?}: expected a DNS name, an IPv4 address or [IPv6]"
        ));
    }
    Ok((host.to_owned(), port))
}

/// The candidate closest to `wrong`, when it is close enough to be a typo.
pub(crate) fn closest<'a>(
    wrong: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(wrong, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// A name used in metrics labels and admin URLs: letters, digits, `-`, `_`, `.`.
pub(crate) fn name(issues: &mut Issues, path: &str, value: &Spanned<String>) {
    let ok = !value.value.is_empty()
        && value.value.len() <= 64
        && value
            .value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        issues.at(
            path,
            value,
            format!(
                "invalid name {:?}: use 1-64 letters, digits, '-', '_' or '.'",
                value.value
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_accepts_names_ipv4_and_ipv6() {
        assert_eq!(host_port("127.0.0.1:9001"), Ok(("127.0.0.1".into(), 9001)));
        assert_eq!(
            host_port("api.pg.example:443"),
            Ok(("api.pg.example".into(), 443))
        );
        assert_eq!(host_port("[::1]:80"), Ok(("[::1]".into(), 80)));
        assert!(host_port("127.0.0.1").is_err());
        assert!(host_port("http://x:80").is_err());
        assert!(host_port("x:0").is_err());
        assert!(host_port("x:70000").is_err());
        assert!(host_port("a..b:80").is_err());
    }

    #[test]
    fn closest_finds_typos_only() {
        assert_eq!(closest("paymnts", ["payments", "orders"]), Some("payments"));
        assert_eq!(closest("zzz", ["payments", "orders"]), None);
    }
}
