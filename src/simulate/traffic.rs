//! Recorded traffic for `backstop simulate`: backstop's own JSON access log, or a CSV.
//!
//! CSV: `timestamp,method,host,path,status,latency_ms[,key]`, one request per line, a header
//! line allowed; `timestamp` is RFC 3339 or Unix seconds (fractions allowed). The JSON access
//! log (`--log-format json`, target `backstop::access`) gives more: each attempt of the trail
//! with its upstream, result and time, so retries and failovers can reuse what the partner
//! really answered; `rate_key` (the key's stable hash) stands in for the rate-limit key; the
//! host is not logged, so routes are matched by method and path, or by the recorded route's
//! name when the config has a route of that name.

use std::time::Duration;

use http::Method;

/// How one attempt of a recorded request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The upstream answered with this status.
    Status(u16),
    /// No connection.
    ConnectFailure,
    /// No answer in time.
    Timeout,
    /// The connection broke.
    Reset,
}

/// One recorded attempt.
#[derive(Debug, Clone)]
pub struct Attempted {
    /// The upstream it went to, when the recording says.
    pub upstream: Option<String>,
    /// How it ended.
    pub answer: Answer,
    /// How long it took.
    pub latency: Duration,
}

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Time since the first request of the file.
    pub at: Duration,
    /// Method.
    pub method: Method,
    /// Host, when recorded.
    pub host: Option<String>,
    /// Path (and query).
    pub path: String,
    /// The route that served it, when recorded.
    pub route: Option<String>,
    /// The rate-limit key (CSV) or its hash (access log).
    pub key: Option<String>,
    /// What the upstream(s) answered, in order; empty when backstop answered itself in the
    /// recording (then the simulation assumes a 200 in the route's typical latency).
    pub attempts: Vec<Attempted>,
}

/// A traffic file that could not be read, with the line.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TrafficError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses a traffic file: JSON lines when the first non-empty line starts with `{`, else CSV.
/// Lines of the JSON log that are not access-log lines are skipped.
pub fn parse(text: &str) -> Result<Vec<Recorded>, TrafficError> {
    let json = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.trim_start().starts_with('{'));
    let mut out: Vec<(f64, Recorded)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let parsed = if json {
            json_line(trimmed)
        } else {
            csv_line(trimmed, line_no)
        };
        match parsed {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(message) => {
                return Err(TrafficError {
                    line: line_no,
                    message,
                })
            }
        }
    }
    // Recorded order is completion order in an access log: sort by start time.
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    let first = out.first().map_or(0.0, |r| r.0);
    Ok(out
        .into_iter()
        .map(|(t, mut r)| {
            r.at = Duration::from_secs_f64((t - first).max(0.0));
            r
        })
        .collect())
}

fn seconds(text: &str) -> Result<f64, String> {
    if let Ok(s) = text.parse::<f64>() {
        return Ok(s);
    }
    let t = humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(text))
        .map_err(|e| format!("timestamp {text:?}: {e}"))?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .map_err(|e| e.to_string())
}

fn csv_line(line: &str, line_no: usize) -> Result<Option<(f64, Recorded)>, String> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    if line_no == 1 && fields.first() == Some(&"timestamp") {
        return Ok(None);
    }
    if fields.len() < 6 || fields.len() > 7 {
        return Err(format!(
            "expected timestamp,method,host,path,status,latency_ms[,key], got {} fields",
            fields.len()
        ));
    }
    let at = seconds(fields[0])?;
    let method =
        Method::from_bytes(fields[1].as_bytes()).map_err(|_| format!("method {:?}", fields[1]))?;
    let status: u16 = fields[4]
        .parse()
        .map_err(|_| format!("status {:?}", fields[4]))?;
    let latency: f64 = fields[5]
        .parse()
        .map_err(|_| format!("latency_ms {:?}", fields[5]))?;
    if !(0.0..=86_400_000.0).contains(&latency) {
        return Err(format!("latency_ms {latency} out of range"));
    }
    Ok(Some((
        at,
        Recorded {
            at: Duration::ZERO,
            method,
            host: Some(fields[2].to_owned()).filter(|h| !h.is_empty()),
            path: fields[3].to_owned(),
            route: None,
            key: fields
                .get(6)
                .map(|k| (*k).to_owned())
                .filter(|k| !k.is_empty()),
            attempts: vec![Attempted {
                upstream: None,
                answer: Answer::Status(status),
                latency: Duration::from_secs_f64(latency / 1000.0),
            }],
        },
    )))
}

fn json_line(line: &str) -> Result<Option<(f64, Recorded)>, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if v["message"] != "request" || v.get("status").is_none() {
        return Ok(None);
    }
    let end = seconds(v["timestamp"].as_str().unwrap_or(""))?;
    let total = v["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    let method = Method::from_bytes(v["method"].as_str().unwrap_or("GET").as_bytes())
        .map_err(|_| "method".to_owned())?;
    let text = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    Ok(Some((
        end - total,
        Recorded {
            at: Duration::ZERO,
            method,
            host: None,
            path: text("path").unwrap_or_else(|| "/".to_owned()),
            route: text("route"),
            key: text("rate_key"),
            attempts: trail(v["trail"].as_str().unwrap_or("")),
        },
    )))
}

/// The attempts of an access-log trail (`up/ep 503 12.0ms, retry 503: up/ep 200 8.1ms`).
pub fn trail(text: &str) -> Vec<Attempted> {
    text.split(", ")
        .filter_map(|segment| {
            let attempt = segment.rsplit(": ").next()?;
            let mut parts = attempt.split_whitespace();
            let target = parts.next()?;
            let result = parts.next()?;
            let ms: f64 = parts.next()?.strip_suffix("ms")?.parse().ok()?;
            let answer = match result {
                "connect_failure" | "closed_unread" => Answer::ConnectFailure,
                "timeout" => Answer::Timeout,
                "reset" => Answer::Reset,
                s => Answer::Status(s.parse().ok()?),
            };
            Some(Attempted {
                upstream: target.split('/').next().map(str::to_owned),
                answer,
                latency: Duration::from_secs_f64(ms / 1000.0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_header_and_both_timestamp_forms() {
        let text = "timestamp,method,host,path,status,latency_ms,key\n\
                    1700000001.5,POST,pay.internal,/v1/pay,503,12.5,m-1\n\
                    2023-11-14T22:13:20Z,GET,,/x,200,3\n";
        let r = parse(text).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].path, "/x", "sorted by time: 1700000000 comes first");
        assert_eq!(r[1].at, Duration::from_millis(1500));
        assert_eq!(r[1].key.as_deref(), Some("m-1"));
        assert_eq!(r[1].attempts[0].answer, Answer::Status(503));
    }

    #[test]
    fn a_bad_line_is_named() {
        let e = parse("1,GET,h,/,abc,1\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.message.contains("status"), "{e}");
    }

    #[test]
    fn access_log_trails_become_attempts() {
        let a = trail("pg-a/127.0.0.1:1 503 12.0ms, retry 503: failover circuit_open: pg-b/127.0.0.1:2 200 8.5ms");
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].upstream.as_deref(), Some("pg-a"));
        assert_eq!(a[1].answer, Answer::Status(200));
        assert_eq!(a[1].latency, Duration::from_micros(8500));
        assert!(trail("").is_empty());
    }
}
