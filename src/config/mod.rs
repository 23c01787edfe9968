//! Config: YAML -> raw structs -> checked and compiled [`Config`].
//!
//! The one entry point is [`load`] (or [`load_str`]); startup, `backstop validate` and reload
//! all go through it, so a file that validates is exactly a file that runs.

mod compile;
mod compile_adaptive;
mod compile_hedge;
mod compile_idempotency;
mod compile_metrics;
mod compile_outcome;
mod compile_policy;
mod compile_quota;
mod compile_rules;
mod compile_server;
mod diff;
mod error;
mod key_paths;
mod lint;
mod model;
mod raw;
mod recover;
mod redact;
mod validate;

use sha2::{Digest, Sha256};

pub use compile::{DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN};
pub use diff::{diff, diff_values, needs_restart, Change};
pub use error::{ConfigError, ConfigIssue, Position};
pub use lint::{lint, Finding, RULES as LINT_RULES};
pub use model::{
    AccessLog, Cidr, Config, DeclaredRate, Endpoint, FingerprintParts, GeneratedKey, HealthCheck,
    Hedge, HedgeAfter, HostMatch, Idempotency, IdempotencyStore, LoadBalancing, QuotaConfig,
    RedisConfig, Route, ServerLimits, Tls, Upgrade, Upstream, UpstreamProtocol,
};
pub use redact::redact_url;

/// Reads, parses, checks and compiles the config file at `path`.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    load_str(&text)
}

/// Like [`load`], and also returns the file's text (for [`lint`] and diffs).
pub fn load_with_text(path: &std::path::Path) -> Result<(Config, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    load_str(&text).map(|c| (c, text))
}

/// Parses, checks and compiles config text.
pub fn load_str(text: &str) -> Result<Config, ConfigError> {
    let recovered = recover::parse(text, syntax_issue).map_err(ConfigError::Syntax)?;
    let sha256 = sha256_hex(text.as_bytes());
    let mut issues = recovered.issues;
    if let Some(raw) = recovered.raw {
        match compile::compile(&raw, sha256) {
            Ok(config) if issues.is_empty() => return Ok(config),
            Ok(_) => {}
            Err(found) => issues.extend(found),
        }
    }
    // File order; problems without a position (missing sections, notes) come last.
    issues.sort_by_key(|i| (i.position.is_none(), i.position));
    Err(ConfigError::Invalid(issues))
}

/// The JSON Schema of the config file, generated from the same types the loader uses, for
/// editors' YAML support.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(raw::RawConfig);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

/// Hex SHA-256 of config bytes, as [`Config::sha256`] holds it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Turns a serde-saphyr error into an issue with the key path at the error's position.
fn syntax_issue(text: &str, err: &serde_saphyr::Error) -> ConfigIssue {
    let position = err.location().and_then(|l| Position::from_location(&l));
    let full = err.without_snippet().to_string();
    let message = strip_location_suffix(strip_location_prefix(&full));
    let mut path = position
        .and_then(|p| key_paths::path_at(text, p))
        .unwrap_or_default();
    if let Some(field) = missing_field(message) {
        // serde points at a key of the mapping that lacks `field`; name the missing key itself.
        path = match path.rsplit_once('.') {
            Some((parent, last)) if !last.ends_with(']') => format!("{parent}.{field}"),
            _ if path.is_empty() => field.to_owned(),
            _ => format!("{path}.{field}"),
        };
    }
    let hint = unknown_field_hint(message);
    ConfigIssue {
        path,
        message: plain_words(message),
        position,
        hint,
    }
}

/// serde-saphyr says `error: line 6 column 9: unknown field ...`; we print the position ourselves.
fn strip_location_prefix(full: &str) -> &str {
    let rest = full.strip_prefix("error: ").unwrap_or(full);
    match rest.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((_, message)) => message,
        None => rest,
    }
}

/// serde-saphyr may end a message with ` at line L, column C`; we print the position ourselves.
fn strip_location_suffix(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(", column ") => &message[..i],
        _ => message,
    }
}

/// Rewords serde's type names into what a YAML author understands.
fn plain_words(message: &str) -> String {
    let words = [
        (
            "invalid u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("invalid u64", "expected a whole number of 0 or more"),
        ("invalid type: ", "wrong type: "),
    ];
    let mut out = message.to_owned();
    for (from, to) in words {
        out = out.replace(from, to);
    }
    out
}

/// `missing field `upstream`` -> `upstream`.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")?
        .split_once('`')
        .map(|(f, _)| f)
}

/// For `unknown field `wieght`, expected one of address, weight`, suggests `weight`.
fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest.split_once("expected ")?.1;
    let expected = expected.strip_prefix("one of ").unwrap_or(expected);
    let candidates = expected.split(", ").map(|c| c.trim_matches('`'));
    validate::closest(field, candidates).map(|near| format!("did you mean {near:?}?"))
}

/// Splits a validated endpoint address into host (IPv6 without brackets) and port.
pub fn split_host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = validate::host_port(address).ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .map_or(host.clone(), str::to_owned);
    Some((host, port))
}
