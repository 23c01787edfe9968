//! `slos_rules:` -> [`RulesConfig`]: the settings of `backstop rules` (labels kept in every
//! aggregation, runbook links, the long windows' interval and the operational alerts'
//! thresholds). They change only the generated rule file, never the running proxy.

use std::time::Duration;

use super::raw::RawSlosRules;
use super::validate::{duration_or, percent, Issues};
use crate::slo::rules::RulesConfig;

/// Labels a rule cannot keep: `slo`, `result` and `le` are the rules' own (keeping `result`
/// would split the ratio's numerator from its denominator), `__*` are Prometheus' internal ones.
const RESERVED: [&str; 3] = ["slo", "result", "le"];

/// `slos_rules:`
pub(crate) fn slos_rules(issues: &mut Issues, raw: Option<&RawSlosRules>) -> RulesConfig {
    let defaults = RulesConfig::default();
    let Some(raw) = raw else { return defaults };
    let mut keep_labels = Vec::new();
    if let Some(labels) = &raw.keep_labels {
        for (i, label) in labels.iter().enumerate() {
            let path = format!("slos_rules.keep_labels[{i}]");
            let name = label.value.trim();
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid || name.starts_with("__") {
                issues.at(
                    &path,
                    label,
                    format!("{name:?} is not a Prometheus label name: use letters, digits and '_', not starting with a digit or \"__\""),
                );
            } else if RESERVED.contains(&name) {
                issues.at(
                    &path,
                    label,
                    format!("{name:?} is used by the rules themselves and cannot be listed here"),
                );
            } else if keep_labels.iter().any(|l: &String| l == name) {
                issues.at(&path, label, format!("duplicate label {name:?}"));
            } else {
                keep_labels.push(name.to_owned());
            }
        }
    } else {
        keep_labels = defaults.keep_labels.clone();
    }
    let runbook_base_url = raw.runbook_base_url.as_ref().and_then(|url| {
        let text = url.value.trim();
        let ok = (text.starts_with("https://") || text.starts_with("http://"))
            && text.len() > "https://".len()
            && !text
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '#' | '\\'));
        if !ok {
            issues.at(
                "slos_rules.runbook_base_url",
                url,
                format!("{text:?} is not an http(s) URL without a fragment: backstop appends #<alert name> to it"),
            );
        }
        ok.then(|| text.trim_end_matches('/').to_owned())
    });
    let long_window_interval = duration_or(
        issues,
        "slos_rules.long_window_interval",
        raw.long_window_interval.as_ref(),
        defaults.long_window_interval,
        Duration::from_secs(3600),
    );
    if long_window_interval.subsec_nanos() != 0 {
        if let Some(v) = &raw.long_window_interval {
            issues.at(
                "slos_rules.long_window_interval",
                v,
                "use whole seconds (Prometheus rule groups have no finer interval)".into(),
            );
        }
    }
    let breaker_open_for = duration_or(
        issues,
        "slos_rules.breaker_open_for",
        raw.breaker_open_for.as_ref(),
        defaults.breaker_open_for,
        Duration::from_secs(24 * 3600),
    );
    if breaker_open_for < Duration::from_secs(60) {
        if let Some(v) = &raw.breaker_open_for {
            issues.at(
                "slos_rules.breaker_open_for",
                v,
                "at least 1m: a breaker's open period alone is usually longer".into(),
            );
        }
    }
    let ejected_share = raw
        .ejected_share
        .as_ref()
        .and_then(|s| percent(issues, "slos_rules.ejected_share", s))
        .unwrap_or(defaults.ejected_share);
    RulesConfig {
        keep_labels,
        runbook_base_url,
        long_window_interval,
        breaker_open_for,
        ejected_share,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    const BASE: &str = "upstreams:\n  pg: { endpoints: [ { address: \"127.0.0.1:9001\" } ] }\nroutes:\n  - { name: pay, upstream: pg }\n";

    #[test]
    fn defaults_keep_job_and_link_no_runbook() {
        let c = load_str(BASE).unwrap();
        assert_eq!(c.slos_rules, RulesConfig::default());
        assert_eq!(c.slos_rules.keep_labels, ["job"]);
    }

    #[test]
    fn reads_every_key() {
        let c = load_str(&format!(
            "{BASE}slos_rules:\n  keep_labels: [job, namespace, cluster]\n  runbook_base_url: https://wiki.example.com/backstop/\n  long_window_interval: 1m\n  breaker_open_for: 30m\n  ejected_share: 25%\n"
        ))
        .unwrap();
        assert_eq!(
            c.slos_rules,
            RulesConfig {
                keep_labels: vec!["job".into(), "namespace".into(), "cluster".into()],
                runbook_base_url: Some("https://wiki.example.com/backstop".into()),
                long_window_interval: Duration::from_secs(60),
                breaker_open_for: Duration::from_secs(1800),
                ejected_share: 0.25,
            }
        );
        let none = load_str(&format!("{BASE}slos_rules: {{ keep_labels: [] }}\n")).unwrap();
        assert!(none.slos_rules.keep_labels.is_empty());
    }

    #[test]
    fn every_bad_value_is_reported_with_its_key_path() {
        let err = load_str(&format!(
            "{BASE}slos_rules:\n  keep_labels: [job, 1abc, __name__, result, job]\n  runbook_base_url: wiki/backstop#x\n  long_window_interval: 500ms\n  breaker_open_for: 10s\n  ejected_share: 0%\n"
        ))
        .unwrap_err()
        .to_string();
        for path in [
            "slos_rules.keep_labels[1]",
            "slos_rules.keep_labels[2]",
            "slos_rules.keep_labels[3]",
            "slos_rules.keep_labels[4]",
            "slos_rules.runbook_base_url",
            "slos_rules.long_window_interval",
            "slos_rules.breaker_open_for",
            "slos_rules.ejected_share",
        ] {
            assert!(err.contains(path), "{path} missing from:\n{err}");
        }
        assert!(!err.contains("slos_rules.keep_labels[0]"), "{err}");
    }
}
