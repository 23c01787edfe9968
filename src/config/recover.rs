//! Reads a file into [`RawConfig`] past its schema problems, so that one run of
//! `backstop validate` lists unknown keys, wrong types and bad values together.
//!
//! serde stops at the first unknown key or wrong type. So we read the document once as a tree
//! of spanned nodes (which any valid YAML is), and then deserialise in rounds: each error is
//! recorded with its key path, the offending entry (key and value, or list item) is blanked out
//! of a working copy of the text with spaces, and the next round reads again. Blanking keeps
//! every other line and column where it was, so positions in later rounds and in the value
//! checks still point into the original file.
//!
//! An entry that is blanked out is as if absent. That is harmless for an unknown key, and for
//! an optional key with a wrong type. Removing a list item or a named upstream would shift
//! indices or make references fail, and value checks on that would report problems that are
//! not in the file; then the value checks are skipped and a note says so.

use serde_saphyr::Spanned;

use super::error::{ConfigIssue, Position};
use super::key_paths::Node;
use super::raw::RawConfig;

/// Most rounds: one per schema problem; a file with more is cut off here.
const MAX_ROUNDS: usize = 200;

/// What one pass over a file found.
pub(crate) struct Recovered {
    /// The raw config when the value checks can run on it.
    pub(crate) raw: Option<RawConfig>,
    /// Unknown keys, wrong types and missing keys, in file order.
    pub(crate) issues: Vec<ConfigIssue>,
}

/// One key-value pair of a mapping or one item of a list, with its extent in characters.
struct Entry {
    path: String,
    parent: Option<usize>,
    start: Position,
    /// Character offsets `[from, to)` covering the key and its value (or the item).
    from: usize,
    to: usize,
    item: bool,
}

/// Reads `text`; `Err` with the syntax problem when it is not YAML at all.
pub(crate) fn parse(
    text: &str,
    syntax_issue: impl Fn(&str, &serde_saphyr::Error) -> ConfigIssue,
) -> Result<Recovered, ConfigIssue> {
    let first = match serde_saphyr::from_str::<RawConfig>(text) {
        Ok(raw) => {
            return Ok(Recovered {
                raw: Some(raw),
                issues: Vec::new(),
            })
        }
        Err(e) => e,
    };
    let chars: Vec<char> = text.chars().collect();
    let Ok(root) = serde_saphyr::from_str::<Spanned<Node>>(text) else {
        return Err(syntax_issue(text, &first));
    };
    let mut entries = Vec::new();
    collect(&root.value, "", None, &chars, &mut entries);

    let mut work = chars.clone();
    let mut blanked: Vec<usize> = Vec::new();
    let mut issues = Vec::new();
    let mut safe = true;
    let mut error = first;
    for _ in 0..MAX_ROUNDS {
        let issue = syntax_issue(text, &error);
        let target = issue
            .position
            .and_then(|at| entry_for(&entries, &issue, at));
        let Some(target) = target else {
            issues.push(issue);
            return Ok(stopped(issues));
        };
        if blanked.contains(&target) {
            // Blanking did not help: stop rather than loop.
            issues.push(issue);
            return Ok(stopped(issues));
        }
        // A problem that follows from the blanking is not a problem of its own: a required key
        // removed because its type was wrong, a list left empty.
        let follows = if issue.message.starts_with("missing field `") {
            blanked.iter().any(|&b| entries[b].path == issue.path)
        } else {
            blanked.iter().any(|&b| is_within(&entries, b, target))
        };
        if !follows {
            issues.push(issue);
        }
        safe &= removal_is_harmless(&entries[target].path, entries[target].item);
        blank(&mut work, &entries[target]);
        blanked.push(target);
        let current: String = work.iter().collect();
        match serde_saphyr::from_str::<RawConfig>(&current) {
            Ok(raw) if safe => {
                return Ok(Recovered {
                    raw: Some(raw),
                    issues,
                })
            }
            Ok(_) => return Ok(stopped(issues)),
            Err(e) => error = e,
        }
    }
    Ok(stopped(issues))
}

/// The value checks cannot run: say so after the schema problems.
fn stopped(mut issues: Vec<ConfigIssue>) -> Recovered {
    issues.push(ConfigIssue {
        path: String::new(),
        message: "values were not checked: fix the problems above and validate again".into(),
        position: None,
        hint: None,
    });
    Recovered { raw: None, issues }
}

/// Whether removing the entry at `path` leaves every other key path and reference intact.
fn removal_is_harmless(path: &str, item: bool) -> bool {
    if item || matches!(path, "upstreams" | "routes" | "slos" | "redis" | "admin") {
        return false;
    }
    // `upstreams.NAME` is referenced by routes; admin keys decide whether a token is needed.
    let upstream = path
        .strip_prefix("upstreams.")
        .is_some_and(|rest| !rest.contains('.'));
    !upstream && !path.starts_with("admin.")
}

/// Whether entry `inner` lies inside entry `outer` (or is it).
fn is_within(entries: &[Entry], inner: usize, outer: usize) -> bool {
    let mut at = Some(inner);
    while let Some(i) = at {
        if i == outer {
            return true;
        }
        at = entries[i].parent;
    }
    false
}

/// The entry to blank for `issue`: the entry the problem is at, or for a missing key the
/// mapping that lacks it.
fn entry_for(entries: &[Entry], issue: &ConfigIssue, at: Position) -> Option<usize> {
    let found = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.start <= at)
        .max_by_key(|(_, e)| e.start)
        .map(|(i, _)| i)?;
    if !issue.message.starts_with("missing field `") {
        return Some(found);
    }
    // The issue's path is `MAPPING.FIELD`; blank MAPPING.
    let mapping = issue.path.rsplit_once('.').map_or("", |(m, _)| m);
    let mut at = Some(found);
    while let Some(i) = at {
        if entries[i].path == mapping {
            return Some(i);
        }
        at = entries[i].parent;
    }
    None
}

/// Replaces the characters of `entry` (and a separating comma or list dash) with spaces.
fn blank(work: &mut [char], entry: &Entry) {
    let mut from = entry.from;
    let mut to = entry.to.min(work.len());
    let mut after = to;
    while after < work.len() && work[after] == ' ' {
        after += 1;
    }
    let mut before = from;
    while before > 0 && work[before - 1] == ' ' {
        before -= 1;
    }
    if after < work.len() && work[after] == ',' {
        to = after + 1;
    } else if before > 0 && (work[before - 1] == ',' || (entry.item && work[before - 1] == '-')) {
        from = before - 1;
    }
    for c in &mut work[from..to] {
        if *c != '\n' && *c != '\r' {
            *c = ' ';
        }
    }
}

fn offset(location: &serde_saphyr::Location) -> usize {
    location.span().offset() as usize
}

fn position(location: &serde_saphyr::Location) -> Option<Position> {
    Position::from_location(location)
}

/// Flattens the tree into entries, parents before children.
fn collect(node: &Node, prefix: &str, parent: Option<usize>, chars: &[char], out: &mut Vec<Entry>) {
    let mut add = |path: String, key: Option<&Spanned<String>>, value: &Spanned<Node>| {
        let head = key.map_or(&value.referenced, |k| &k.referenced);
        let Some(start) = position(head) else { return };
        let from = offset(head);
        let key_end = key.map_or(from, |k| {
            offset(&k.referenced) + k.referenced.span().len() as usize
        });
        let to = end_of(&value.value, &value.referenced, chars).max(key_end);
        out.push(Entry {
            path: path.clone(),
            parent,
            start,
            from,
            to,
            item: key.is_none(),
        });
        let me = out.len() - 1;
        collect(&value.value, &path, Some(me), chars, out);
    };
    match node {
        Node::Map(pairs) => {
            for (key, value) in pairs {
                let path = if prefix.is_empty() {
                    key.value.clone()
                } else {
                    format!("{prefix}.{}", key.value)
                };
                add(path, Some(key), value);
            }
        }
        Node::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                add(format!("{prefix}[{i}]"), None, item);
            }
        }
        Node::Scalar => {}
    }
}

/// The character offset just past a value: a flow collection ends at its closing bracket, a
/// block collection with its last descendant, a scalar with its span.
fn end_of(node: &Node, at: &serde_saphyr::Location, chars: &[char]) -> usize {
    let start = offset(at);
    if matches!(chars.get(start), Some('[' | '{')) {
        return matching_bracket(chars, start);
    }
    match node {
        Node::Scalar => start + at.span().len() as usize,
        Node::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| {
                let key_end = offset(&k.referenced) + k.referenced.span().len() as usize;
                end_of(&v.value, &v.referenced, chars).max(key_end)
            })
            .max()
            .unwrap_or(start),
        Node::Seq(items) => items
            .iter()
            .map(|v| end_of(&v.value, &v.referenced, chars))
            .max()
            .unwrap_or(start),
    }
}

/// Offset just past the bracket closing the one at `open`, skipping quoted text and comments.
fn matching_bracket(chars: &[char], open: usize) -> usize {
    let mut depth = 0usize;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            '[' | '{' => depth += 1,
            ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            q @ ('"' | '\'') => {
                i += 1;
                while i < chars.len() && chars[i] != q {
                    if q == '"' && chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            '#' if i > 0 && chars[i - 1].is_whitespace() => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    chars.len()
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;

    fn issues_of(yaml: &str) -> Vec<String> {
        match load_str(yaml) {
            Ok(_) => vec![],
            Err(e) => e.issues(),
        }
    }

    #[test]
    fn unknown_keys_wrong_types_and_values_in_one_run() {
        let yaml = "upstreams:\n  pay:\n    conect_timeout: 1s\n    endpoints:\n      - { address: \"127.0.0.1:1\", wieght: 2 }\n      - address: \"127.0.0.1:2\"\n        priority: -1\nroutes:\n  - name: a\n    upstream: payy\n    timeout: soon\n";
        assert_eq!(
            issues_of(yaml),
            vec![
                "upstreams.pay.conect_timeout: unknown field `conect_timeout`, expected one of endpoints, connect_timeout, tls, host_header, protocol, idle_timeout, read_timeout, max_idle_connections, max_concurrent_requests, adaptive_concurrency, circuit_breaker, outlier_detection, load_balancing, health_check, honours_idempotency_key, idempotency_key, quota, outcome (line 3, column 5); did you mean \"connect_timeout\"?",
                "upstreams.pay.endpoints[0].wieght: unknown field `wieght`, expected one of address, priority, weight (line 5, column 35); did you mean \"weight\"?",
                "upstreams.pay.endpoints[1].priority: expected a whole number from 0 to 4294967295 (line 7, column 19)",
                "routes[0].upstream: unknown upstream \"payy\" (line 10, column 15); did you mean \"pay\"?",
                "routes[0].timeout: invalid duration \"soon\": use a number and a unit, e.g. 250ms, 3s, 2m, 1h (line 11, column 14)",
            ]
        );
    }

    #[test]
    fn a_removed_list_item_skips_the_value_checks() {
        let yaml = "upstreams:\n  pay: { endpoints: [{ address: \"127.0.0.1:1\" }] }\nroutes:\n  - name: a\n    upstreem: pay\n  - name: b\n    upstream: pay\n    timeout: soon\n";
        let issues = issues_of(yaml);
        assert_eq!(issues.len(), 3, "{issues:?}");
        assert!(issues[0].starts_with("routes[0].upstream: missing field"));
        assert!(issues[1].starts_with("routes[0].upstreem: unknown field"));
        assert!(issues[2].starts_with("values were not checked"));
    }

    #[test]
    fn blanking_keeps_flow_and_block_yaml_valid() {
        for yaml in [
            "routes: [{ nme: x, name: a, upstream: u }]\nupstreams: { u: { endpoints: [{ address: \"127.0.0.1:1\" }] } }\n",
            "routes: [{ name: a, upstream: u, nme: x }]\nupstreams: { u: { endpoints: [{ address: \"127.0.0.1:1\" }] } }\n",
            "routes:\n  - name: a\n    upstream: u\n    extra:\n      deep: [1, { a: 2 }]\n      more: \"x # y\"\nupstreams: { u: { endpoints: [{ address: \"127.0.0.1:1\" }] } }\n",
        ] {
            let issues = issues_of(yaml);
            assert_eq!(issues.len(), 1, "{yaml}: {issues:?}");
            assert!(issues[0].contains("unknown field"), "{issues:?}");
        }
    }
}
