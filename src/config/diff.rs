//! `backstop validate --diff OLD NEW` and `--against ADMIN`: what a reload would change, value
//! by value (`routes[pay].rate_limit.rate: 5/s -> 20/s`), and whether it needs a restart.
//!
//! Both sides are flattened to `key path -> value` leaves. Lists of named items (routes, slos,
//! the admin view's upstreams) are keyed by name, so a reordering is one line, not a diff of
//! every item after it. A route, upstream or slo that is new or gone is one line.

use serde_json::Value;

use super::model::Config;
use super::redact::redact_urls;

/// One changed setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `path: old -> new`, with a note when the change resets live state.
    pub line: String,
    /// A reload does not apply it; backstop must restart.
    pub needs_restart: bool,
}

/// Settings a running backstop cannot change on reload: the reload refuses a new `listen` or
/// `admin.listen`, and the connection limit is read once when the listener starts.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    let mut check = |path: &str, a: String, b: String| {
        if a != b {
            out.push(Change {
                line: format!("{path}: {a} -> {b} (needs a restart)"),
                needs_restart: true,
            });
        }
    };
    check("listen", old.listen.to_string(), new.listen.to_string());
    check(
        "admin.listen",
        old.admin_listen.to_string(),
        new.admin_listen.to_string(),
    );
    let limit = |c: &Config| {
        c.server
            .max_connections
            .map_or("auto".to_owned(), |n| n.to_string())
    };
    check("server.max_connections", limit(old), limit(new));
    out
}

/// What a reload from `old` to `new` changes; both texts must have compiled to the configs.
pub fn diff(old_text: &str, old: &Config, new_text: &str, new: &Config) -> Vec<Change> {
    let tree = |text: &str| serde_saphyr::from_str::<Value>(text).unwrap_or(Value::Null);
    let restart = needs_restart(old, new);
    let skip = ["listen", "admin.listen", "server.max_connections"];
    let mut out = restart;
    out.extend(
        diff_values(&tree(old_text), &tree(new_text), &skip)
            .into_iter()
            .map(|line| Change {
                line,
                needs_restart: false,
            }),
    );
    out
}

/// Leaf-by-leaf differences of two JSON trees, leaving out the paths in `skip`.
pub fn diff_values(old: &Value, new: &Value, skip: &[&str]) -> Vec<String> {
    let (a, b) = (flatten(old), flatten(new));
    let mut out = Vec::new();
    let entity_of = |path: &str| entity(path).map(str::to_owned);
    let old_entities: Vec<String> = a.iter().filter_map(|l| entity_of(&l.path)).collect();
    let new_entities: Vec<String> = b.iter().filter_map(|l| entity_of(&l.path)).collect();
    let mut reported: Vec<String> = Vec::new();
    for leaf in &b {
        if skip.contains(&leaf.path.as_str()) {
            continue;
        }
        if let Some(e) = entity(&leaf.path) {
            if !old_entities.iter().any(|o| o == e) {
                if !reported.iter().any(|r| r == e) {
                    out.push(format!("{e}: added"));
                    reported.push(e.to_owned());
                }
                continue;
            }
        }
        match a.iter().find(|o| o.path == leaf.path) {
            Some(o) if o.raw == leaf.raw => {}
            Some(o) if o.value == leaf.value => {
                out.push(change(
                    &leaf.path,
                    &o.value,
                    &format!("{} (changed)", leaf.value),
                ));
            }
            Some(o) => out.push(change(&leaf.path, &o.value, &leaf.value)),
            None => out.push(change(&leaf.path, "(unset)", &leaf.value)),
        }
    }
    for leaf in &a {
        if skip.contains(&leaf.path.as_str()) || b.iter().any(|n| n.path == leaf.path) {
            continue;
        }
        if let Some(e) = entity(&leaf.path) {
            if !new_entities.iter().any(|n| n == e) {
                if !reported.iter().any(|r| r == e) {
                    out.push(format!("{e}: removed"));
                    reported.push(e.to_owned());
                }
                continue;
            }
        }
        out.push(change(&leaf.path, &leaf.value, "(unset)"));
    }
    let order = |v: &Value| -> Vec<String> {
        v.get("routes")
            .and_then(Value::as_array)
            .map(|routes| {
                routes
                    .iter()
                    .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (before, after) = (order(old), order(new));
    for (i, name) in after.iter().enumerate() {
        if let Some(j) = before.iter().position(|n| n == name) {
            if i != j {
                out.push(format!(
                    "routes[{name}]: position {} -> {} (first match wins)",
                    j + 1,
                    i + 1
                ));
            }
        }
    }
    out
}

fn change(path: &str, old: &str, new: &str) -> String {
    let note = if path.contains(".circuit_breaker") {
        " (its state starts over)"
    } else if path.contains(".rate_limit") {
        " (its buckets start over)"
    } else if path.starts_with("upstreams.") && path.contains(".quota") {
        " (the learned pause and the declared rate's bucket start over)"
    } else if path.starts_with("slos[") {
        " (its live budget starts over)"
    } else if path.starts_with("metrics.") {
        " (the duration histogram starts over)"
    } else if path.starts_with("redis.") {
        " (global rate limits reconnect)"
    } else {
        ""
    };
    format!("{path}: {old} -> {new}{note}")
}

/// The route, upstream or slo a path belongs to, if any.
fn entity(path: &str) -> Option<&str> {
    for list in ["routes[", "slos[", "upstreams["] {
        if path.starts_with(list) {
            return path.find(']').map(|end| &path[..=end]);
        }
    }
    let rest = path.strip_prefix("upstreams.")?;
    let name_end = rest
        .find('.')
        .map_or(path.len(), |i| "upstreams.".len() + i);
    Some(&path[..name_end])
}

struct Leaf {
    path: String,
    /// As shown: secrets as `***`, URL passwords redacted.
    value: String,
    /// As written, for comparing only.
    raw: String,
}

fn flatten(value: &Value) -> Vec<Leaf> {
    let mut out = Vec::new();
    walk(value, String::new(), false, &mut out);
    out
}

fn walk(value: &Value, path: String, secret: bool, out: &mut Vec<Leaf>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::Object(map) => {
            // A header match `{ value: ..., secret: true }` never shows its value.
            let secret = secret || map.get("secret") == Some(&Value::Bool(true));
            for (k, v) in map {
                walk(v, join(k), secret, out);
            }
        }
        Value::Array(items) if items.iter().all(is_scalar) => {
            let raw = format!(
                "[{}]",
                items.iter().map(scalar).collect::<Vec<_>>().join(", ")
            );
            out.push(Leaf {
                value: redact_urls(&raw).into_owned(),
                raw,
                path,
            });
        }
        Value::Array(items) => {
            let named = items
                .iter()
                .all(|i| i.get("name").and_then(Value::as_str).is_some());
            for (i, item) in items.iter().enumerate() {
                let key = match item.get("name").and_then(Value::as_str) {
                    Some(name) if named => format!("{path}[{name}]"),
                    _ => format!("{path}[{i}]"),
                };
                walk(item, key, secret, out);
            }
        }
        scalar_value => {
            let raw = scalar(scalar_value);
            let value = if secret && !path.ends_with(".secret") {
                "***".to_owned()
            } else {
                redact_urls(&raw).into_owned()
            };
            out.push(Leaf { path, value, raw });
        }
    }
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Object(_) | Value::Array(_))
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_compared_leaf_by_leaf_and_named_lists_by_name() {
        let old = serde_json::json!({
            "routes": [
                {"name": "a", "rate_limit": {"rate": "5/s"}},
                {"name": "b", "match": {"headers": {"x-key": {"value": "old", "secret": true}}}},
            ],
            "upstreams": {"pg": {"endpoints": [{"address": "x:1"}]}},
        });
        let new = serde_json::json!({
            "routes": [
                {"name": "b", "match": {"headers": {"x-key": {"value": "new", "secret": true}}}},
                {"name": "a", "rate_limit": {"rate": "20/s", "burst": 5}},
            ],
            "upstreams": {"pg-b": {"endpoints": [{"address": "x:2"}]}},
        });
        assert_eq!(
            diff_values(&old, &new, &[]),
            vec![
                "routes[b].match.headers.x-key.value: *** -> *** (changed)",
                "routes[a].rate_limit.burst: (unset) -> 5 (its buckets start over)",
                "routes[a].rate_limit.rate: 5/s -> 20/s (its buckets start over)",
                "upstreams.pg-b: added",
                "upstreams.pg: removed",
                "routes[b]: position 2 -> 1 (first match wins)",
                "routes[a]: position 1 -> 2 (first match wins)",
            ]
        );
    }

    #[test]
    fn a_quota_change_says_its_state_starts_over() {
        let old = serde_json::json!({"upstreams": {"pg": {"quota": {"rate": "20/s"}}}});
        let new = serde_json::json!({"upstreams": {"pg": {"quota": {"rate": "30/s"}}}});
        assert_eq!(
            diff_values(&old, &new, &[]),
            vec![
                "upstreams.pg.quota.rate: 20/s -> 30/s (the learned pause and the declared rate's bucket start over)"
            ]
        );
    }
}
