//! Compiles `upstreams.<name>.outcome`, the partner's outcome rules.
//!
//! Checks what a typo would silently break: an unknown verdict, a bad status or JSON path,
//! `retryable` on anything but a failure, a condition-less rule that hides the rules after it,
//! and duplicate names (the access log and the metric tell rules apart by name).

use std::collections::HashSet;

use http::HeaderName;
use serde_saphyr::Spanned;

use super::raw::{RawFieldMatch, RawOutcomeRule};
use super::validate::Issues;
use crate::policy::outcome_rules::{
    scalar_text, JsonPath, Rule, Rules, StatusItem, Values, Verdict,
};

const VERDICTS: [&str; 3] = ["success", "failure", "client_error"];

/// `outcome:` on an upstream.
pub(crate) fn outcome(
    issues: &mut Issues,
    path: &str,
    raw: &Spanned<Vec<Spanned<RawOutcomeRule>>>,
) -> Rules {
    let mut rules = Vec::new();
    let mut names = HashSet::new();
    let mut catch_all: Option<usize> = None;
    for (i, spanned) in raw.value.iter().enumerate() {
        let r = &spanned.value;
        let at = format!("{path}[{i}]");
        if let Some(earlier) = catch_all {
            issues.at(
                &at,
                spanned,
                format!(
                    "unreachable: rule {} has no status, header or json condition and matches every answer",
                    earlier + 1
                ),
            );
        }
        if r.status.is_none() && r.header.is_none() && r.json.is_none() {
            catch_all.get_or_insert(i);
        }
        if let Some(rule) = rule(issues, &at, i, spanned) {
            if !names.insert(rule.name.clone()) {
                let message = format!("duplicate rule name {:?}", rule.name);
                match &r.name {
                    Some(name) => issues.at(&format!("{at}.name"), name, message),
                    None => issues.at(&at, spanned, message),
                }
            }
            rules.push(rule);
        }
    }
    Rules { rules }
}

fn rule(
    issues: &mut Issues,
    path: &str,
    index: usize,
    spanned: &Spanned<RawOutcomeRule>,
) -> Option<Rule> {
    let r = &spanned.value;
    let verdict = match &r.outcome {
        None => {
            let message = "every rule needs an outcome: success, failure or client_error";
            issues.at(&format!("{path}.outcome"), spanned, message.into());
            None
        }
        Some(text) => match Verdict::parse(text.value.trim()) {
            Some(v) => Some(v),
            None => {
                let wrong = text.value.trim();
                let message =
                    format!("unknown outcome {wrong:?}: expected success, failure or client_error");
                issues.unknown(&format!("{path}.outcome"), text, wrong, message, &VERDICTS);
                None
            }
        },
    };
    let retryable = r.retryable.unwrap_or(false);
    if retryable && verdict.is_some_and(|v| v != Verdict::Failure) {
        let message = "retryable: true only applies to outcome: failure".to_owned();
        issues.at(&format!("{path}.retryable"), spanned, message);
    }
    let status = r
        .status
        .as_ref()
        .map(|s| statuses(issues, &format!("{path}.status"), s))
        .unwrap_or_default();
    let header = r.header.as_ref().and_then(|h| {
        condition(issues, &format!("{path}.header"), h, Key::Name, |text| {
            HeaderName::from_bytes(text.as_bytes())
                .map_err(|_| format!("invalid header name {text:?}"))
        })
    });
    let json = r.json.as_ref().and_then(|j| {
        condition(issues, &format!("{path}.json"), j, Key::Path, |text| {
            JsonPath::parse(text).map_err(|why| format!("bad JSON path {text:?}: {why}"))
        })
    });
    let name = r
        .name
        .as_ref()
        .map(|n| n.value.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("rule {}", index + 1));
    Some(Rule {
        name,
        status,
        header,
        json,
        verdict: verdict?,
        retryable,
    })
}

/// Which key a condition takes: `header:` a `name`, `json:` a `path`.
#[derive(Clone, Copy)]
enum Key {
    Name,
    Path,
}

/// A `header:` or `json:` condition: its key parsed by `parse`, and its accepted values.
fn condition<T>(
    issues: &mut Issues,
    path: &str,
    raw: &Spanned<RawFieldMatch>,
    key: Key,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Option<(T, Values)> {
    let m = &raw.value;
    let (wanted, other, value, stray) = match key {
        Key::Name => ("name", "path", m.name.as_ref(), m.path.is_some()),
        Key::Path => ("path", "name", m.path.as_ref(), m.name.is_some()),
    };
    if stray {
        let message = format!("{other} does not apply here; this condition takes {wanted}");
        issues.at(&format!("{path}.{other}"), raw, message);
    }
    let Some(text) = value.map(|v| v.value.trim()).filter(|t| !t.is_empty()) else {
        issues.at(
            &format!("{path}.{wanted}"),
            raw,
            format!("{wanted} is required"),
        );
        return None;
    };
    match parse(text) {
        Ok(parsed) => Some((parsed, values(issues, path, raw, m))),
        Err(message) => {
            issues.at(&format!("{path}.{wanted}"), raw, message);
            None
        }
    }
}

fn values(
    issues: &mut Issues,
    path: &str,
    raw: &Spanned<RawFieldMatch>,
    m: &RawFieldMatch,
) -> Values {
    let list = m.values.as_ref()?;
    if list.is_empty() {
        let message = "in: is empty and would match nothing; leave it out to match any value";
        issues.at(&format!("{path}.in"), raw, message.into());
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        match scalar_text(v) {
            Some(text) => out.push(text.trim().to_owned()),
            None => issues.at(
                &format!("{path}.in[{i}]"),
                raw,
                "values are compared as text: use strings, numbers or booleans".into(),
            ),
        }
    }
    Some(out)
}

fn statuses(issues: &mut Issues, path: &str, raw: &Spanned<serde_json::Value>) -> Vec<StatusItem> {
    let items: Vec<&serde_json::Value> = match &raw.value {
        serde_json::Value::Array(list) => list.iter().collect(),
        one => vec![one],
    };
    let mut out = Vec::new();
    for item in items {
        match scalar_text(item).as_deref().and_then(StatusItem::parse) {
            Some(s) => out.push(s),
            None => issues.at(
                path,
                raw,
                format!("bad status {item}: expected a code 100-599 or a class such as 5xx"),
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::{self, ConfigError, ConfigIssue};

    fn issues(rules: &str) -> Vec<ConfigIssue> {
        let yaml = format!(
            "upstreams:\n  pay:\n    endpoints: [{{address: 127.0.0.1:1}}]\n    outcome:\n{rules}\nroutes:\n  - {{name: r, upstream: pay}}\n"
        );
        match config::load_str(&yaml) {
            Err(ConfigError::Invalid(found)) => found,
            other => panic!("expected issues, got {other:?}"),
        }
    }

    #[test]
    fn good_rules_compile_in_order() {
        let yaml = "upstreams:\n  pay:\n    endpoints: [{address: 127.0.0.1:1}]\n    outcome:\n      - {status: 409, outcome: success}\n      - {name: pg_timeout, status: [200, 2xx], json: {path: $.code, in: [PG_TIMEOUT, 42]}, outcome: failure, retryable: true}\n      - {header: {name: x-maintenance}, outcome: client_error}\nroutes:\n  - {name: r, upstream: pay}\n";
        let config = config::load_str(yaml).unwrap();
        let rules = &config.upstreams[0].outcome.as_ref().unwrap().rules;
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["rule 1", "pg_timeout", "rule 3"]);
        assert_eq!(
            rules[1].json.as_ref().unwrap().1,
            Some(vec!["PG_TIMEOUT".to_owned(), "42".to_owned()])
        );
        assert!(rules[1].retryable);
    }

    #[test]
    fn every_bad_rule_is_reported_with_its_path() {
        let found = issues(
            "      - {status: 700, outcome: failure}\n      - {status: 200, outcome: sucess}\n      - {json: {path: code}, outcome: failure}\n      - {status: 200, outcome: success, retryable: true}\n      - {header: {path: $.x}, outcome: failure}\n      - {outcome: failure}\n      - {status: 500, outcome: failure}\n      - {status: 200}",
        );
        let paths: Vec<&str> = found.iter().map(|i| i.path.as_str()).collect();
        for expected in [
            "upstreams.pay.outcome[0].status",
            "upstreams.pay.outcome[1].outcome",
            "upstreams.pay.outcome[2].json.path",
            "upstreams.pay.outcome[3].retryable",
            "upstreams.pay.outcome[4].header.path",
            "upstreams.pay.outcome[4].header.name",
            "upstreams.pay.outcome[6]",
            "upstreams.pay.outcome[7].outcome",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
        let typo = found
            .iter()
            .find(|i| i.path == "upstreams.pay.outcome[1].outcome")
            .unwrap();
        assert_eq!(typo.hint.as_deref(), Some("did you mean \"success\"?"));
    }
}
