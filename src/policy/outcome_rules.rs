//! Partner-aware outcome rules (`upstreams.<name>.outcome`): what an answer means, decided by
//! its status, a header and, for small JSON answers, a field of the body.
//!
//! Payment gateways answer `200 {"code":"PG_TIMEOUT"}` when the payment failed, or `409` when
//! the order already exists (a success for the caller). The status alone misleads breakers,
//! outlier detection, retries and SLOs; these rules replace it for the upstreams that declare
//! them. Rules are tried in order and the first that matches decides; an answer no rule
//! matches is judged by its status as before.
//!
//! This module is pure: it matches an already-parsed answer. Reading the body (a bounded peek,
//! only when a rule needs it) is the dataplane's job (`pipeline::judge`).

use http::{HeaderMap, HeaderName};

/// Most bytes of a response body read to evaluate `json:` conditions. A larger body is
/// streamed untouched and no `json:` condition matches it.
pub const PEEK_LIMIT: usize = 16 * 1024;

/// What an answer means for the policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The upstream did its job: never a breaker or ejection failure, never retried, a good
    /// SLO event, whatever the status.
    Success,
    /// The upstream failed: a breaker and ejection failure and a bad SLO event, whatever the
    /// status; retried when the rule says `retryable: true`.
    Failure,
    /// The caller's request was at fault: not the upstream's failure, not retried, a good
    /// availability event.
    ClientError,
}

impl Verdict {
    /// The config and label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Success => "success",
            Verdict::Failure => "failure",
            Verdict::ClientError => "client_error",
        }
    }

    /// Parses the config value.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "success" => Some(Verdict::Success),
            "failure" => Some(Verdict::Failure),
            "client_error" => Some(Verdict::ClientError),
            _ => None,
        }
    }
}

/// One `status:` item: an exact code or a class (`5xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    /// This status.
    Code(u16),
    /// Any status of this class (the hundreds digit).
    Class(u16),
}

impl StatusItem {
    /// Parses `503` or `5xx`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Some(class) = text.strip_suffix("xx").or_else(|| text.strip_suffix("XX")) {
            return match class.parse::<u16>() {
                Ok(c) if (1..=5).contains(&c) => Some(StatusItem::Class(c)),
                _ => None,
            };
        }
        match text.parse::<u16>() {
            Ok(c) if (100..=599).contains(&c) => Some(StatusItem::Code(c)),
            _ => None,
        }
    }

    fn matches(self, status: u16) -> bool {
        match self {
            StatusItem::Code(c) => c == status,
            StatusItem::Class(c) => status / 100 == c,
        }
    }
}

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `.name` or `['name']`.
    Key(String),
    /// `[3]`.
    Index(usize),
}

/// A JSON path in the common subset: `$`, `.key`, `['key']`, `[n]` (e.g. `$.error.code`,
/// `$.results[0].status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    steps: Vec<Step>,
    text: String,
}

impl JsonPath {
    /// Parses a path; `Err` says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let mut rest = trimmed
            .strip_prefix('$')
            .ok_or_else(|| "a JSON path starts with $ (e.g. $.code)".to_owned())?;
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let key = &after[..end];
                if key.is_empty() {
                    return Err("empty key after '.'".into());
                }
                steps.push(Step::Key(key.to_owned()));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let end = after
                    .find(']')
                    .ok_or_else(|| "'[' without a closing ']'".to_owned())?;
                let inner = after[..end].trim();
                let quoted = inner
                    .strip_prefix('\'')
                    .and_then(|s| s.strip_suffix('\''))
                    .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')));
                let step =
                    match quoted {
                        Some(key) => Step::Key(key.to_owned()),
                        None => Step::Index(inner.parse().map_err(|_| {
                            format!("[{inner}] is neither an index nor a quoted key")
                        })?),
                    };
                steps.push(step);
                rest = &after[end + 1..];
            } else {
                return Err(format!("unexpected {rest:?}: expected .key or [index]"));
            }
        }
        Ok(Self {
            steps,
            text: trimmed.to_owned(),
        })
    }

    /// The value at this path, if there is one.
    pub fn find<'a>(&self, mut value: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
        for step in &self.steps {
            value = match step {
                Step::Key(key) => value.as_object()?.get(key)?,
                Step::Index(i) => value.as_array()?.get(*i)?,
            };
        }
        Some(value)
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Accepted values of a header or JSON field; `None` means "present with any value".
pub type Values = Option<Vec<String>>;

fn accepts(values: &Values, actual: &str) -> bool {
    values
        .as_ref()
        .is_none_or(|list| list.iter().any(|v| v == actual))
}

/// A JSON scalar as the text a rule compares (`"PG_TIMEOUT"` -> `PG_TIMEOUT`, `42` -> `42`,
/// `true` -> `true`); objects and arrays only satisfy "present". The config's `in:` values
/// and statuses are read the same way.
pub fn scalar_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Null => Some("null".into()),
        _ => None,
    }
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Its name, for the access log and the metric (`rule N`, 1-based, when not given).
    pub name: String,
    /// Statuses it applies to; empty: any.
    pub status: Vec<StatusItem>,
    /// A response header and its accepted values.
    pub header: Option<(HeaderName, Values)>,
    /// A field of a JSON body and its accepted values.
    pub json: Option<(JsonPath, Values)>,
    /// What a match means.
    pub verdict: Verdict,
    /// A `failure` the retry stage may retry (subject to the request-safety rules).
    pub retryable: bool,
}

impl Rule {
    /// Whether the rule could match before the body is read.
    fn head_matches(&self, status: u16, headers: &HeaderMap) -> bool {
        if !self.status.is_empty() && !self.status.iter().any(|s| s.matches(status)) {
            return false;
        }
        match &self.header {
            None => true,
            Some((name, values)) => headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| accepts(values, v.trim())),
        }
    }

    fn body_matches(&self, body: Option<&serde_json::Value>) -> bool {
        let Some((path, values)) = &self.json else {
            return true;
        };
        let Some(found) = body.and_then(|b| path.find(b)) else {
            return false;
        };
        match (values, scalar_text(found)) {
            (None, _) => true,
            (Some(_), Some(text)) => accepts(values, &text),
            (Some(_), None) => false,
        }
    }
}

/// The rules of one upstream, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rules {
    /// The rules; the first match decides.
    pub rules: Vec<Rule>,
}

/// The rule that decided an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Index of the rule in [`Rules::rules`].
    pub rule: usize,
    /// Its verdict.
    pub verdict: Verdict,
    /// Whether it may be retried.
    pub retryable: bool,
}

/// What [`Rules::judge_head`] can tell from the status and headers alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadJudgement {
    /// A rule decided, or none can match (`None`).
    Decided(Option<Decision>),
    /// A rule that could match needs the JSON body.
    NeedsBody,
}

impl Rules {
    /// Judges an answer from its head. The body is asked for only when the first rule whose
    /// status and header match has a `json:` condition.
    pub fn judge_head(&self, status: u16, headers: &HeaderMap) -> HeadJudgement {
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.head_matches(status, headers) {
                continue;
            }
            if rule.json.is_some() {
                return HeadJudgement::NeedsBody;
            }
            return HeadJudgement::Decided(Some(decision(i, rule)));
        }
        HeadJudgement::Decided(None)
    }

    /// Judges an answer with its parsed JSON body (`None`: no body, too large, or not JSON).
    pub fn judge(
        &self,
        status: u16,
        headers: &HeaderMap,
        body: Option<&serde_json::Value>,
    ) -> Option<Decision> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, rule)| rule.head_matches(status, headers) && rule.body_matches(body))
            .map(|(i, rule)| decision(i, rule))
    }
}

fn decision(rule: usize, r: &Rule) -> Decision {
    Decision {
        rule,
        verdict: r.verdict,
        retryable: r.retryable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn rule(status: &[&str], json: Option<(&str, &[&str])>, verdict: Verdict) -> Rule {
        Rule {
            name: "r".into(),
            status: status
                .iter()
                .map(|s| StatusItem::parse(s).unwrap())
                .collect(),
            header: None,
            json: json.map(|(p, v)| {
                (
                    JsonPath::parse(p).unwrap(),
                    (!v.is_empty()).then(|| v.iter().map(|s| s.to_string()).collect()),
                )
            }),
            verdict,
            retryable: false,
        }
    }

    #[test]
    fn paths_parse_and_find() {
        let body: serde_json::Value =
            serde_json::json!({"error": {"code": "PG_TIMEOUT"}, "items": [{"s": 7}], "a.b": true});
        let find = |p: &str| JsonPath::parse(p).unwrap().find(&body).cloned();
        assert_eq!(find("$.error.code"), Some("PG_TIMEOUT".into()));
        assert_eq!(find("$.items[0].s"), Some(7.into()));
        assert_eq!(find("$['a.b']"), Some(true.into()));
        assert_eq!(find("$.items[1]"), None);
        assert_eq!(find("$.error.code.deeper"), None);
        assert!(JsonPath::parse("code").is_err());
        assert!(JsonPath::parse("$.").is_err());
        assert!(JsonPath::parse("$[x]").is_err());
        assert!(JsonPath::parse("$.a[0").is_err());
    }

    #[test]
    fn statuses_parse() {
        assert_eq!(StatusItem::parse("5xx"), Some(StatusItem::Class(5)));
        assert_eq!(StatusItem::parse("409"), Some(StatusItem::Code(409)));
        assert_eq!(StatusItem::parse("600"), None);
        assert_eq!(StatusItem::parse("9xx"), None);
    }

    #[test]
    fn the_first_matching_rule_decides_and_json_is_asked_for_only_when_needed() {
        let rules = Rules {
            rules: vec![
                rule(&["409"], None, Verdict::Success),
                rule(
                    &["200"],
                    Some(("$.code", &["PG_TIMEOUT", "PG_BUSY"])),
                    Verdict::Failure,
                ),
                rule(&["2xx"], Some(("$.code", &[])), Verdict::ClientError),
            ],
        };
        let h = HeaderMap::new();
        assert_eq!(
            rules.judge_head(409, &h),
            HeadJudgement::Decided(Some(decision(0, &rules.rules[0])))
        );
        assert_eq!(rules.judge_head(503, &h), HeadJudgement::Decided(None));
        assert_eq!(rules.judge_head(200, &h), HeadJudgement::NeedsBody);
        let busy = serde_json::json!({"code": "PG_BUSY"});
        let declined = serde_json::json!({"code": "DECLINED"});
        let plain = serde_json::json!({"ok": true});
        assert_eq!(rules.judge(200, &h, Some(&busy)).map(|d| d.rule), Some(1));
        assert_eq!(
            rules.judge(200, &h, Some(&declined)).map(|d| d.rule),
            Some(2)
        );
        assert_eq!(
            rules.judge(201, &h, Some(&declined)).map(|d| d.rule),
            Some(2)
        );
        assert_eq!(rules.judge(200, &h, Some(&plain)), None);
        assert_eq!(rules.judge(200, &h, None), None);
    }

    #[test]
    fn headers_and_numbers_compare_as_text() {
        let rules = Rules {
            rules: vec![
                Rule {
                    header: Some((
                        HeaderName::from_static("x-maintenance"),
                        None, // present
                    )),
                    ..rule(&["503"], None, Verdict::ClientError)
                },
                rule(&[], Some(("$.status", &["42", "true"])), Verdict::Failure),
            ],
        };
        let mut h = HeaderMap::new();
        assert_eq!(rules.judge_head(503, &h), HeadJudgement::NeedsBody);
        h.insert("x-maintenance", HeaderValue::from_static("1"));
        assert!(matches!(
            rules.judge_head(503, &h),
            HeadJudgement::Decided(Some(Decision { rule: 0, .. }))
        ));
        let n = serde_json::json!({"status": 42});
        let b = serde_json::json!({"status": true});
        let s = serde_json::json!({"status": {"nested": 1}});
        let empty = HeaderMap::new();
        assert_eq!(rules.judge(200, &empty, Some(&n)).map(|d| d.rule), Some(1));
        assert_eq!(rules.judge(200, &empty, Some(&b)).map(|d| d.rule), Some(1));
        assert_eq!(rules.judge(200, &empty, Some(&s)), None);
    }
}
