//! The simulation: recorded requests through a config's policies in virtual time.
//!
//! A discrete-event loop: each recorded request arrives at its recorded time; an attempt is
//! admitted by the same breaker, outlier detector, rate limiter, retry rules and budget the
//! proxy runs (their types, not copies), takes the latency the recording gives, and ends as a
//! completion event at start + latency, where the breaker and outlier detection see it and the
//! retry rules decide. Approximations, all documented in the README:
//! - an attempt's answer is the recorded one for that upstream, in order (the second attempt
//!   to an upstream reuses its second recorded attempt, else its last); an upstream the
//!   recording never reached (a failover, or a request backstop refused when recorded)
//!   answers 200 in the route's median recorded latency;
//! - a global rate limit is modelled as a local one (one bucket set for the fleet); a limit
//!   keyed by client address has one bucket (addresses are not recorded);
//! - back-off takes the middle of its jitter range; endpoints are taken in turn (no latency
//!   estimate) among those outlier detection has not ejected;
//! - burn-rate alerts are evaluated every virtual minute and fire after their `for` time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use http::Request;
use serde::Serialize;
use tokio::time::Instant;

use super::traffic::{Answer, Recorded};
use crate::config::Config;
use crate::dataplane::ratelimit::local::LocalLimiter;
use crate::dataplane::rescue::ProxyError;
use crate::dataplane::router;
use crate::policy::breaker::{Admission, Breaker, Transition};
use crate::policy::classify::{Call, CallResult, FailureSet};
use crate::policy::outlier::OutlierDetector;
use crate::policy::rate::LimitKey;
use crate::policy::retry::{self, RequestKind};
use crate::policy::retry_budget::RetryBudget;
use crate::policy::Mode;
use crate::slo::budget::EventRing;

/// No attempt starts with less time than this before the deadline (as in the proxy).
const MIN_ATTEMPT: Duration = Duration::from_millis(10);
/// Latency assumed for an upstream the recording never reached, when a route has no sample.
const DEFAULT_LATENCY: Duration = Duration::from_millis(50);

/// What a config did with the traffic.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Recorded requests read.
    pub requests: u64,
    /// Of those, requests no route matched.
    pub unrouted: u64,
    /// Time from the first to the last recorded request.
    pub span_seconds: f64,
    /// Per route, in config order.
    pub routes: Vec<RouteReport>,
    /// Every breaker transition, in time order.
    pub transitions: Vec<TransitionLine>,
    /// Per SLO, in config order.
    pub slos: Vec<SloReport>,
}

/// One route's counts.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RouteReport {
    /// Route name.
    pub name: String,
    /// Requests that matched it.
    pub requests: u64,
    /// Requests the rate limit let through.
    pub admitted: u64,
    /// Requests the rate limit refused (429), or would have in shadow mode.
    pub rate_limited: u64,
    /// Requests refused because every breaker on the way was open (503 circuit_open).
    pub circuit_refused: u64,
    /// Requests refused by a full bulkhead (503 upstream_overloaded).
    pub overloaded: u64,
    /// Retries sent.
    pub retried: u64,
    /// Retries refused by the retry budget.
    pub budget_exhausted: u64,
    /// Attempts sent to a failover upstream.
    pub failed_over: u64,
    /// Final answers by class.
    pub answered_2xx: u64,
    /// Final 4xx answers (429 included).
    pub answered_4xx: u64,
    /// Final 5xx answers (backstop's own included).
    pub answered_5xx: u64,
}

/// A breaker transition.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TransitionLine {
    /// Time since the first recorded request, `mm:ss.mmm`.
    pub at: String,
    /// `upstream NAME` or `route NAME`.
    pub breaker: String,
    /// From state.
    pub from: String,
    /// To state.
    pub to: String,
    /// Why.
    pub reason: String,
}

/// One SLO at the end of the traffic.
#[derive(Debug, Clone, Serialize)]
pub struct SloReport {
    /// SLO name.
    pub name: String,
    /// Events counted.
    pub events: u64,
    /// Of those, bad.
    pub bad: u64,
    /// Share of the error budget left at the end (negative when overspent), over the events
    /// the traffic holds (it may span less than the SLO's window).
    pub budget_remaining: f64,
    /// The SLO's window.
    pub window_seconds: u64,
    /// Burn-rate alerts that fired: severity and time.
    pub alerts: Vec<AlertLine>,
}

/// An alert that fired.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AlertLine {
    /// `page` or `ticket`.
    pub severity: String,
    /// When it started firing, `mm:ss.mmm` since the first request.
    pub at: String,
}

/// A breaker's name and where it is kept.
#[derive(Debug, Clone, Copy)]
enum Which {
    Route(usize),
    Upstream(usize),
}

/// Something that happens at a virtual time.
#[derive(Debug)]
enum Event {
    /// Attempt number `attempt` of request `req` starts.
    Try { req: usize, attempt: u32 },
    /// An attempt ends.
    Done(Ended),
}

/// An attempt that ends at its event's time.
#[derive(Debug)]
struct Ended {
    req: usize,
    attempt: u32,
    upstream: usize,
    endpoint: usize,
    /// The breaker that admitted it, and how.
    breaker: Option<(Which, Admission)>,
    answer: Answer,
    latency: Duration,
}

/// A request in flight.
#[derive(Debug, Clone, Copy)]
struct Flight {
    route: usize,
    started: Duration,
    deadline: Duration,
    kind: RequestKind,
}

struct Sim<'a> {
    config: &'a Config,
    traffic: &'a [Recorded],
    base: Instant,
    limiters: Vec<Option<LocalLimiter>>,
    route_breakers: Vec<Option<Breaker>>,
    upstream_breakers: Vec<Option<Breaker>>,
    outliers: Vec<Option<OutlierDetector>>,
    turn: Vec<usize>,
    in_flight: Vec<u32>,
    budgets: Vec<Option<RetryBudget>>,
    rings: Vec<EventRing>,
    /// Per SLO and alert severity: since when its condition holds, and whether it fired.
    pending: Vec<[(Option<Duration>, bool); 2]>,
    typical: Vec<Duration>,
    flights: Vec<Option<Flight>>,
    /// Attempts sent per request and upstream, to pick the matching recorded attempt.
    sent_to: Vec<Vec<(usize, u32)>>,
    events: BinaryHeap<Reverse<(Duration, u64)>>,
    payloads: Vec<Option<Event>>,
    next_minute: Duration,
    report: Report,
}

/// Runs `traffic` through `config`.
pub fn run(config: &Config, traffic: &[Recorded]) -> Report {
    let base = Instant::now();
    let std_base = std::time::Instant::now();
    let spans: Vec<Duration> = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
        .iter()
        .filter_map(|s| humantime::parse_duration(s).ok())
        .collect();
    let seed = 0x5eed;
    let mut sim = Sim {
        config,
        traffic,
        base,
        limiters: config
            .routes
            .iter()
            .map(|r| {
                r.rate_limit
                    .as_ref()
                    .map(|l| LocalLimiter::with_start(l, std_base))
            })
            .collect(),
        route_breakers: config
            .routes
            .iter()
            .map(|r| {
                r.circuit_breaker
                    .clone()
                    .map(|b| Breaker::new(b, base, seed))
            })
            .collect(),
        upstream_breakers: config
            .upstreams
            .iter()
            .map(|u| {
                u.circuit_breaker
                    .clone()
                    .map(|b| Breaker::new(b, base, seed))
            })
            .collect(),
        outliers: config
            .upstreams
            .iter()
            .map(|u| {
                u.outlier_detection
                    .clone()
                    .map(|o| OutlierDetector::new(o, u.endpoints.len(), base))
            })
            .collect(),
        turn: vec![0; config.upstreams.len()],
        in_flight: vec![0; config.upstreams.len()],
        budgets: config
            .routes
            .iter()
            .map(|r| {
                r.retry
                    .as_ref()
                    .map(|p| RetryBudget::new(p.budget_ratio, p.budget_min_per_second, base))
            })
            .collect(),
        rings: config
            .slos
            .iter()
            .map(|s| EventRing::new(s.window, &spans, base))
            .collect(),
        pending: vec![[(None, false); 2]; config.slos.len()],
        typical: typical_latencies(config, traffic),
        flights: vec![None; traffic.len()],
        sent_to: vec![Vec::new(); traffic.len()],
        events: BinaryHeap::new(),
        payloads: Vec::new(),
        next_minute: Duration::from_secs(60),
        report: Report {
            requests: traffic.len() as u64,
            span_seconds: traffic.last().map_or(0.0, |r| r.at.as_secs_f64()),
            routes: config
                .routes
                .iter()
                .map(|r| RouteReport {
                    name: r.name.clone(),
                    ..RouteReport::default()
                })
                .collect(),
            slos: config
                .slos
                .iter()
                .map(|s| SloReport {
                    name: s.name.clone(),
                    events: 0,
                    bad: 0,
                    budget_remaining: 1.0,
                    window_seconds: s.window.as_secs(),
                    alerts: Vec::new(),
                })
                .collect(),
            ..Report::default()
        },
    };
    for (req, recorded) in traffic.iter().enumerate() {
        let at = recorded.at;
        while let Some(&Reverse((t, _))) = sim.events.peek() {
            if t > at {
                break;
            }
            sim.step();
        }
        sim.alerts_until(at);
        sim.arrive(req, at);
    }
    while !sim.events.is_empty() {
        sim.step();
    }
    sim.finish_report()
}

/// The median of each route's first recorded attempt latency (by recorded route name or by
/// matching), for upstreams the recording never reached.
fn typical_latencies(config: &Config, traffic: &[Recorded]) -> Vec<Duration> {
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); config.routes.len()];
    for r in traffic.iter().take(100_000) {
        if let (Some(route), Some(first)) = (route_of(config, r), r.attempts.first()) {
            samples[route].push(first.latency);
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort();
            s.get(s.len() / 2).copied().unwrap_or(DEFAULT_LATENCY)
        })
        .collect()
}

fn route_of(config: &Config, r: &Recorded) -> Option<usize> {
    if let Some(name) = &r.route {
        if let Some(i) = config.routes.iter().position(|x| &x.name == name) {
            return Some(i);
        }
    }
    let mut req = Request::builder()
        .method(r.method.clone())
        .uri(r.path.as_str());
    if let Some(host) = &r.host {
        req = req.header(http::header::HOST, host.as_str());
    }
    let req = req.body(()).ok()?;
    router::find(&config.routes, &req)
}

fn clock(at: Duration) -> String {
    let ms = at.as_millis();
    format!(
        "{:02}:{:02}.{:03}",
        ms / 60_000,
        (ms / 1000) % 60,
        ms % 1000
    )
}

fn status_of(answer: Answer) -> u16 {
    match answer {
        Answer::Status(s) => s,
        Answer::Timeout => 504,
        Answer::ConnectFailure | Answer::Reset => 502,
    }
}

fn result_of(answer: Answer) -> CallResult {
    match answer {
        Answer::Status(s) => CallResult::Status(s),
        Answer::Timeout => CallResult::Timeout,
        Answer::ConnectFailure => CallResult::ConnectFailure,
        Answer::Reset => CallResult::Reset,
    }
}

impl Sim<'_> {
    fn schedule(&mut self, at: Duration, event: Event) {
        let id = self.payloads.len() as u64;
        self.payloads.push(Some(event));
        self.events.push(Reverse((at, id)));
    }

    fn step(&mut self) {
        let Some(Reverse((at, id))) = self.events.pop() else {
            return;
        };
        self.alerts_until(at);
        let Some(event) = self.payloads[id as usize].take() else {
            return;
        };
        match event {
            Event::Try { req, attempt } => self.attempt(req, attempt, at),
            Event::Done(ended) => self.done(ended, at),
        }
    }

    fn arrive(&mut self, req: usize, at: Duration) {
        let recorded = &self.traffic[req];
        let Some(route) = route_of(self.config, recorded) else {
            self.report.unrouted += 1;
            return;
        };
        self.report.routes[route].requests += 1;
        let config = &self.config.routes[route];
        if let (Some(limiter), Some(limit)) = (&self.limiters[route], &config.rate_limit) {
            let key = match &limit.key {
                LimitKey::Route | LimitKey::ClientIp => "",
                LimitKey::Header(_) => recorded.key.as_deref().unwrap_or("\u{0}missing"),
            };
            if !limiter.check_at(key, at).allowed {
                self.report.routes[route].rate_limited += 1;
                if limit.mode == Mode::Enforce {
                    let error = ProxyError::RateLimited {
                        retry_after: Duration::ZERO,
                    };
                    self.finish(route, 429, Some(error), Duration::ZERO, at);
                    return;
                }
            }
        }
        self.report.routes[route].admitted += 1;
        if let Some(budget) = &self.budgets[route] {
            budget.deposit(self.base + at);
        }
        let kind = if retry::is_idempotent(&recorded.method) {
            RequestKind::Idempotent
        } else {
            RequestKind::NonIdempotent
        };
        self.flights[req] = Some(Flight {
            route,
            started: at,
            deadline: at + config.timeout,
            kind,
        });
        self.attempt(req, 1, at);
    }

    /// Breaker admission, bulkhead and endpoint choice over the route's upstream and its
    /// failover list, then the recorded answer.
    fn attempt(&mut self, req: usize, attempt: u32, at: Duration) {
        let Some(flight) = self.flights[req] else {
            return;
        };
        let config = &self.config.routes[flight.route];
        let now = self.base + at;
        let candidates: Vec<usize> = std::iter::once(config.upstream)
            .chain(config.failover.iter().copied())
            .collect();
        let mut refusal = None;
        for u in candidates {
            let which = if u == config.upstream && self.route_breakers[flight.route].is_some() {
                Some(Which::Route(flight.route))
            } else if self.upstream_breakers[u].is_some() {
                Some(Which::Upstream(u))
            } else {
                None
            };
            let admission = match which {
                Some(w) => {
                    let (admission, transition) = self.breaker(w).admit(now);
                    self.note(w, transition, at);
                    match admission {
                        Admission::Reject { .. } => {
                            refusal.get_or_insert(ProxyError::CircuitOpen {
                                retry_after: Duration::ZERO,
                            });
                            continue;
                        }
                        a => Some((w, a)),
                    }
                }
                None => None,
            };
            let limit = self.config.upstreams[u].max_concurrent_requests;
            if limit.is_some_and(|l| self.in_flight[u] >= l) {
                if let Some((w, Admission::Probe)) = admission {
                    self.breaker(w).cancel_probe();
                }
                refusal.get_or_insert(ProxyError::Overloaded);
                continue;
            }
            let endpoint = self.endpoint(u, now);
            if u != config.upstream {
                self.report.routes[flight.route].failed_over += 1;
            }
            let (answer, latency) = self.recorded_answer(req, flight.route, u);
            let left = flight.deadline.saturating_sub(at);
            let per_try = config
                .retry
                .as_ref()
                .and_then(|p| p.per_try_timeout)
                .map_or(left, |t| t.min(left));
            let (answer, latency) = if latency > per_try {
                (Answer::Timeout, per_try)
            } else {
                (answer, latency)
            };
            self.in_flight[u] += 1;
            self.schedule(
                at + latency,
                Event::Done(Ended {
                    req,
                    attempt,
                    upstream: u,
                    endpoint,
                    breaker: admission,
                    answer,
                    latency,
                }),
            );
            return;
        }
        let error = refusal.unwrap_or(ProxyError::Overloaded);
        match error {
            ProxyError::CircuitOpen { .. } => self.report.routes[flight.route].circuit_refused += 1,
            _ => self.report.routes[flight.route].overloaded += 1,
        }
        self.flights[req] = None;
        self.finish(flight.route, 503, Some(error), at - flight.started, at);
    }

    fn done(&mut self, ended: Ended, at: Duration) {
        let Ended {
            req,
            attempt,
            upstream,
            endpoint,
            breaker,
            answer,
            latency,
        } = ended;
        self.in_flight[upstream] = self.in_flight[upstream].saturating_sub(1);
        let now = self.base + at;
        let call = Call {
            result: result_of(answer),
            elapsed: latency,
        };
        let failure_set = match breaker {
            Some((w, admission)) => {
                let transition = self.breaker(w).record(admission, call, now);
                self.note(w, transition, at);
                self.breaker(w).config().failure_on.clone()
            }
            None => FailureSet::default(),
        };
        if let Some(outlier) = &self.outliers[upstream] {
            outlier.record(endpoint, failure_set.is_failure(call.result), now);
        }
        let Some(flight) = self.flights[req] else {
            return;
        };
        let config = &self.config.routes[flight.route];
        if let Some(policy) = &config.retry {
            if let Ok(_reason) = retry::decide(policy, flight.kind, call.result, attempt) {
                let budget_ok = self.budgets[flight.route]
                    .as_ref()
                    .is_none_or(|b| b.withdraw(now));
                if !budget_ok {
                    self.report.routes[flight.route].budget_exhausted += 1;
                } else {
                    let backoff = retry::backoff(policy, attempt, None, 0.5);
                    if at + backoff + MIN_ATTEMPT <= flight.deadline {
                        self.report.routes[flight.route].retried += 1;
                        self.schedule(
                            at + backoff,
                            Event::Try {
                                req,
                                attempt: attempt + 1,
                            },
                        );
                        return;
                    }
                }
            }
        }
        self.flights[req] = None;
        let reason = match answer {
            Answer::Status(_) => None,
            Answer::Timeout => Some(ProxyError::Timeout),
            Answer::ConnectFailure => Some(ProxyError::ConnectFailed),
            Answer::Reset => Some(ProxyError::UpstreamError),
        };
        self.finish(
            flight.route,
            status_of(answer),
            reason,
            at - flight.started,
            at,
        );
    }

    /// The recorded answer for the next attempt of `req` at upstream `u`.
    fn recorded_answer(&mut self, req: usize, route: usize, u: usize) -> (Answer, Duration) {
        let name = &self.config.upstreams[u].name;
        let sent = &mut self.sent_to[req];
        let k = match sent.iter_mut().find(|(x, _)| *x == u) {
            Some((_, n)) => {
                *n += 1;
                *n - 1
            }
            None => {
                sent.push((u, 1));
                0
            }
        };
        let primary = u == self.config.routes[route].upstream;
        let mine: Vec<_> = self.traffic[req]
            .attempts
            .iter()
            .filter(|a| match &a.upstream {
                Some(n) => n == name,
                None => primary,
            })
            .collect();
        match mine.get(k as usize).or(mine.last()) {
            Some(a) => (a.answer, a.latency),
            None => (Answer::Status(200), self.typical[route]),
        }
    }

    fn endpoint(&mut self, u: usize, now: Instant) -> usize {
        let n = self.config.upstreams[u].endpoints.len().max(1);
        for _ in 0..n {
            let e = self.turn[u] % n;
            self.turn[u] = self.turn[u].wrapping_add(1);
            if self.outliers[u]
                .as_ref()
                .is_none_or(|o| o.is_available(e, now))
            {
                return e;
            }
        }
        self.turn[u] % n
    }

    fn breaker(&self, which: Which) -> &Breaker {
        match which {
            Which::Route(r) => self.route_breakers[r].as_ref(),
            Which::Upstream(u) => self.upstream_breakers[u].as_ref(),
        }
        .expect("a breaker is only named when it exists")
    }

    fn note(&mut self, which: Which, transition: Option<Transition>, at: Duration) {
        let Some(t) = transition else { return };
        let breaker = match which {
            Which::Route(r) => format!("route {}", self.config.routes[r].name),
            Which::Upstream(u) => format!("upstream {}", self.config.upstreams[u].name),
        };
        self.report.transitions.push(TransitionLine {
            at: clock(at),
            breaker,
            from: t.from.as_str().to_owned(),
            to: t.to.as_str().to_owned(),
            reason: t.reason,
        });
    }

    fn finish(
        &mut self,
        route: usize,
        status: u16,
        reason: Option<ProxyError>,
        elapsed: Duration,
        at: Duration,
    ) {
        let r = &mut self.report.routes[route];
        match status {
            200..=299 => r.answered_2xx += 1,
            400..=499 => r.answered_4xx += 1,
            500..=599 => r.answered_5xx += 1,
            _ => {}
        }
        for (i, slo) in self.config.slos.iter().enumerate() {
            if !slo.routes.contains(&route) {
                continue;
            }
            if let Some(good) = crate::slo::classify(slo.sli, status, reason, None, elapsed) {
                self.rings[i].record(good, self.base + at);
                self.report.slos[i].events += 1;
                self.report.slos[i].bad += u64::from(!good);
            }
        }
    }

    /// Evaluates the burn-rate alerts at every virtual minute up to `at`.
    fn alerts_until(&mut self, at: Duration) {
        while self.next_minute <= at {
            let minute = self.next_minute;
            self.next_minute += Duration::from_secs(60);
            self.evaluate_alerts(minute);
        }
    }

    fn evaluate_alerts(&mut self, at: Duration) {
        let now = self.base + at;
        for (i, slo) in self.config.slos.iter().enumerate() {
            for (a, (severity, wait, conditions)) in crate::slo::rules::ALERTS.iter().enumerate() {
                let burning = conditions.iter().any(|(factor, long, short)| {
                    let rate = |w: &str| {
                        humantime::parse_duration(w).map_or(0.0, |span| {
                            self.rings[i].burn_rate(slo.objective, span, now)
                        })
                    };
                    rate(long) > *factor && rate(short) > *factor
                });
                let wait = humantime::parse_duration(wait).unwrap_or_default();
                let (since, fired) = &mut self.pending[i][a];
                if !burning {
                    *since = None;
                    *fired = false;
                    continue;
                }
                let start = *since.get_or_insert(at);
                if !*fired && at.saturating_sub(start) >= wait {
                    *fired = true;
                    self.report.slos[i].alerts.push(AlertLine {
                        severity: (*severity).to_owned(),
                        at: clock(at),
                    });
                }
            }
        }
    }

    fn finish_report(mut self) -> Report {
        let end = self.base + Duration::from_secs_f64(self.report.span_seconds);
        for (i, slo) in self.config.slos.iter().enumerate() {
            self.report.slos[i].budget_remaining =
                self.rings[i].budget_remaining(slo.objective, end);
        }
        self.report
    }
}
