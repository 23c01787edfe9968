//! What happened to one request, filled in by the stages and read by the observe stage: the
//! route, the attempts (the trail), the flags, and why backstop answered itself if it did.
//!
//! Indexes and static strings only: names are looked up through the request's snapshot when
//! the access log needs them, and the trail is a fixed array, so recording costs no
//! allocation.

use std::fmt::Write as _;
use std::time::Duration;

use crate::dataplane::rescue::ProxyError;
use crate::policy::classify::CallResult;
use crate::policy::outcome_rules::Decision;

/// Attempts kept in the trail; later ones are counted in [`Outcome::attempts`] only.
pub const TRAIL_LEN: usize = 6;

/// The route, upstream and endpoint a request went to, and how it ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Index of the matched route.
    pub route: Option<usize>,
    /// Index of the upstream of the last attempt (the route's, or a failover upstream).
    pub upstream: Option<usize>,
    /// Index of the endpoint of the last attempt within that upstream.
    pub endpoint: Option<usize>,
    /// Attempts sent upstream.
    pub attempts: u32,
    /// Why backstop answered itself, if it did.
    pub reason: Option<ProxyError>,
    /// Why a retry was not made, for the access log (e.g. `retry_budget_exhausted`).
    pub note: Option<&'static str>,
    /// The first [`TRAIL_LEN`] attempts (a re-send on a fresh connection counts as one).
    pub trail: [Attempt; TRAIL_LEN],
    /// How many of `trail` are filled.
    trail_len: usize,
    /// Attempts past [`TRAIL_LEN`], counted only.
    trail_dropped: usize,
    /// Response flags (see [`Flags`]).
    pub flags: Flags,
    /// Time spent waiting on upstreams, summed over the attempts.
    pub upstream_time: Duration,
    /// A stable short hash of the rate-limit key (never the key itself).
    pub rate_key: Option<u32>,
    /// The outcome rule that judged the last attempt's answer: (upstream index, decision).
    pub judged: Option<(usize, Decision)>,
}

/// One attempt as the access log shows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attempt {
    /// Index of its upstream.
    pub upstream: usize,
    /// Index of its endpoint.
    pub endpoint: usize,
    /// How it ended.
    pub end: End,
    /// How long it took.
    pub elapsed: Duration,
    /// Why it was sent after the one before (`None` for the first).
    pub why: Option<Why>,
    /// When it went to a failover upstream: why the route's own upstream did not take it.
    pub failover: Option<&'static str>,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum End {
    /// Not recorded.
    #[default]
    None,
    /// The upstream answered with this status.
    Status(u16),
    /// No connection.
    ConnectFailure,
    /// The upstream closed a reused connection without reading the request.
    Unread,
    /// No answer in time.
    Timeout,
    /// The connection broke or the answer was malformed.
    Reset,
    /// The client's body broke, stalled or the client left.
    ClientFault,
    /// A hedged race was won by another attempt, and this one was cancelled.
    Cancelled,
}

impl End {
    /// The end of a call: the client's fault if it was one, else as the policies saw it.
    pub fn of(result: CallResult, client_fault: bool) -> Self {
        if client_fault {
            return End::ClientFault;
        }
        match result {
            CallResult::Status(s) | CallResult::Judged(s, _) => End::Status(s),
            CallResult::ConnectFailure => End::ConnectFailure,
            CallResult::Timeout => End::Timeout,
            CallResult::Reset => End::Reset,
        }
    }
}

/// Why an attempt followed the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A retry, for this retry condition (`5xx`, `reset`, a status code...).
    Retry(&'static str),
    /// Sent again on a fresh connection: the one before provably never reached the upstream.
    Resend,
    /// A hedge: the attempt before had not answered in time (`routes[].hedge`).
    Hedge,
}

/// Envoy-style response flags: what went wrong, in two letters each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(u16);

impl Flags {
    /// `UF`: an attempt could not connect.
    pub const CONNECT_FAILURE: Flags = Flags(1);
    /// `UT`: an attempt or the route timed out.
    pub const TIMEOUT: Flags = Flags(1 << 1);
    /// `UO`: the upstream's concurrency limit refused the request.
    pub const OVERFLOW: Flags = Flags(1 << 2);
    /// `RL`: the route's rate limit refused the request.
    pub const RATE_LIMITED: Flags = Flags(1 << 3);
    /// `CO`: a circuit breaker refused the request.
    pub const CIRCUIT_OPEN: Flags = Flags(1 << 4);
    /// `UR`: an upstream connection was reset or answered malformed.
    pub const RESET: Flags = Flags(1 << 5);
    /// `FO`: an attempt went to a failover upstream.
    pub const FAILED_OVER: Flags = Flags(1 << 6);
    /// `OU`: the answer says `x-backstop-outcome: unknown`.
    pub const OUTCOME_UNKNOWN: Flags = Flags(1 << 7);
    /// `CB`: the client's body broke or stalled, or the client left.
    pub const CLIENT_BODY: Flags = Flags(1 << 8);

    const NAMES: [(Flags, &'static str); 9] = [
        (Flags::CONNECT_FAILURE, "UF"),
        (Flags::TIMEOUT, "UT"),
        (Flags::OVERFLOW, "UO"),
        (Flags::RATE_LIMITED, "RL"),
        (Flags::CIRCUIT_OPEN, "CO"),
        (Flags::RESET, "UR"),
        (Flags::FAILED_OVER, "FO"),
        (Flags::OUTCOME_UNKNOWN, "OU"),
        (Flags::CLIENT_BODY, "CB"),
    ];

    /// Adds `other`.
    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether none is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The flags of an attempt that ended so.
    pub fn of_end(end: End) -> Flags {
        match end {
            End::ConnectFailure => Flags::CONNECT_FAILURE,
            End::Timeout => Flags::TIMEOUT,
            End::Reset => Flags::RESET,
            End::ClientFault => Flags::CLIENT_BODY,
            End::None | End::Status(_) | End::Unread | End::Cancelled => Flags::default(),
        }
    }

    /// The flags of an answer backstop gave itself.
    pub fn of_error(error: ProxyError) -> Flags {
        match error {
            ProxyError::ConnectFailed => Flags::CONNECT_FAILURE,
            ProxyError::Timeout => Flags::TIMEOUT,
            ProxyError::UpstreamError => Flags::RESET,
            ProxyError::Overloaded | ProxyError::AdaptiveConcurrencyLimited => Flags::OVERFLOW,
            ProxyError::RateLimited { .. } | ProxyError::UpstreamQuotaExhausted { .. } => {
                Flags::RATE_LIMITED
            }
            ProxyError::CircuitOpen { .. } | ProxyError::CircuitHalfOpen { .. } => {
                Flags::CIRCUIT_OPEN
            }
            ProxyError::ClientBodyError
            | ProxyError::ClientBodyTimeout
            | ProxyError::ClientClosed => Flags::CLIENT_BODY,
            _ => Flags::default(),
        }
    }

    /// `UF,FO`, or `-` when none is set.
    pub fn render(self) -> String {
        if self.is_empty() {
            return "-".to_owned();
        }
        let mut out = String::new();
        for (flag, name) in Flags::NAMES {
            if self.contains(flag) {
                if !out.is_empty() {
                    out.push(',');
                }
                out.push_str(name);
            }
        }
        out
    }
}

impl Outcome {
    /// Records an attempt: in the trail while there is room, in the flags and upstream time
    /// always.
    pub fn attempted(&mut self, attempt: Attempt) {
        match self.trail.get_mut(self.trail_len) {
            Some(slot) => {
                *slot = attempt;
                self.trail_len += 1;
            }
            None => self.trail_dropped += 1,
        }
        self.flags.insert(Flags::of_end(attempt.end));
        self.upstream_time += attempt.elapsed;
    }

    /// The attempts recorded, in order.
    pub fn recorded(&self) -> &[Attempt] {
        &self.trail[..self.trail_len]
    }
}

/// Writes the trail as the access log shows it, e.g.
/// `pg-primary/127.0.0.1:9001 503 12.0ms, retry 5xx: failover circuit_open:
/// pg-secondary/127.0.0.1:9002 200 8.1ms`;
/// `names` gives an attempt's upstream and endpoint names.
pub fn render_trail<'a>(
    outcome: &'a Outcome,
    names: impl Fn(&Attempt) -> (&'a str, &'a str),
) -> String {
    let mut out = String::new();
    for (i, attempt) in outcome.recorded().iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        match attempt.why {
            Some(Why::Retry(reason)) => {
                let _ = write!(out, "retry {reason}: ");
            }
            Some(Why::Resend) => out.push_str("resend: "),
            Some(Why::Hedge) => out.push_str("hedge: "),
            None => {}
        }
        if let Some(reason) = attempt.failover {
            let _ = write!(out, "failover {reason}: ");
        }
        let (upstream, endpoint) = names(attempt);
        let _ = write!(out, "{upstream}/{endpoint} ");
        match attempt.end {
            End::Status(s) => {
                let _ = write!(out, "{s}");
            }
            End::ConnectFailure => out.push_str("connect_failure"),
            End::Unread => out.push_str("closed_unread"),
            End::Timeout => out.push_str("timeout"),
            End::Reset => out.push_str("reset"),
            End::ClientFault => out.push_str("client_fault"),
            End::Cancelled => out.push_str("cancelled"),
            End::None => {}
        }
        let _ = write!(out, " {:.1}ms", attempt.elapsed.as_secs_f64() * 1000.0);
    }
    if outcome.trail_dropped > 0 {
        let _ = write!(out, ", ... {} more", outcome.trail_dropped);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_render_in_a_fixed_order() {
        let mut flags = Flags::default();
        assert_eq!(flags.render(), "-");
        flags.insert(Flags::FAILED_OVER);
        flags.insert(Flags::CONNECT_FAILURE);
        assert_eq!(flags.render(), "UF,FO");
    }

    #[test]
    fn the_trail_shows_each_attempt_and_why_it_followed() {
        let mut outcome = Outcome::default();
        outcome.attempted(Attempt {
            upstream: 0,
            endpoint: 0,
            end: End::Status(503),
            elapsed: Duration::from_millis(12),
            why: None,
            failover: None,
        });
        outcome.attempted(Attempt {
            upstream: 1,
            endpoint: 0,
            end: End::Reset,
            elapsed: Duration::from_millis(3),
            why: Some(Why::Retry("5xx")),
            failover: Some("circuit_open"),
        });
        let text = render_trail(&outcome, |a| {
            (if a.upstream == 0 { "a" } else { "b" }, "127.0.0.1:1")
        });
        assert_eq!(
            text,
            "a/127.0.0.1:1 503 12.0ms, retry 5xx: failover circuit_open: b/127.0.0.1:1 reset 3.0ms"
        );
        assert!(outcome.flags.contains(Flags::RESET));
        assert_eq!(outcome.upstream_time, Duration::from_millis(15));
    }
}
