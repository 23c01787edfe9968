//! Stage 7, hedged: when the route hedges (`routes[].hedge`) and the request may be sent
//! twice, an attempt that has not answered after `after` gets company: another attempt to a
//! different endpoint of the same upstream (never a failover provider), up to `max_extra`,
//! within the route's hedge budget. The first answer that is not a failure wins and the
//! others are cancelled; a failure that finishes while another attempt still runs is
//! classified (breaker, ejection) and the race goes on. When every attempt failed, the last
//! failure is the answer, and the retry stage decides as usual.
//!
//! Which requests: idempotent methods, and non-idempotent ones carrying an idempotency key the
//! upstream honours ([`RequestKind::KeyedNonIdempotent`]); never any other, whatever the
//! config says. Not while an SLO covering the route burns fast (`retry.when_burning`), when
//! extra load would deepen the outage. A body must be replayable (kept in memory) to be sent
//! twice.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::request::Parts;
use http::Request;
use tokio::time::{Instant, Sleep};

use super::attempt::{self, upstream_request, Sent};
use super::exchange::Exchange;
use super::judge;
use super::outcome::{Attempt, End, Why};
use super::source::Source;
use super::target::{self, Target};
use crate::dataplane::hedge_cell::{HedgeCell, Skipped};
use crate::dataplane::pool::Via;
use crate::dataplane::request_body::RequestBody;
use crate::policy::classify::FailureSet;
use crate::policy::retry::RequestKind;
use crate::runtime::Snapshot;

/// Whether this attempt may be hedged: the route's cell, after how long, and whether an SLO
/// covering the route burns fast (then a hedge that comes due is counted, not sent).
pub fn plan(
    ex: &Exchange,
    kind: RequestKind,
    source: &Source,
    own_upstream: bool,
    now: Instant,
) -> Option<Plan> {
    let live = ex.route();
    let cell = live.hedge.as_ref()?;
    let safe = matches!(
        kind,
        RequestKind::Idempotent | RequestKind::KeyedNonIdempotent
    );
    if !safe || !own_upstream || !source.replayable() {
        return None;
    }
    // A hedge would spend the partner's own quota (`quota:`): such upstreams are not hedged.
    if ex.snapshot.upstreams[live.config.upstream].quota.is_some() {
        return None;
    }
    let index = ex.outcome.route.unwrap_or_default();
    let burning = live
        .burn
        .as_ref()
        .is_some_and(|g| g.check(&ex.snapshot.slos, index, now));
    let delay = cell.delay(now)?;
    Some(Plan {
        cell: cell.clone(),
        delay,
        burning,
    })
}

/// A hedging plan for one attempt (see [`plan`]).
#[derive(Debug)]
pub struct Plan {
    /// The route's hedging state.
    pub cell: Arc<HedgeCell>,
    /// How long the attempt may run before a hedge follows.
    pub delay: Duration,
    /// An SLO covering the route burns fast: no hedges now.
    pub burning: bool,
}

/// An attempt of a race that finished.
#[derive(Debug)]
pub struct Finished {
    /// Its target (permits still held, for the record stage).
    pub target: Target,
    /// How it ended.
    pub sent: Sent,
    /// Why it was sent (`Hedge` for a hedge).
    pub why: Option<Why>,
}

/// How a race ended.
#[derive(Debug)]
pub struct Raced {
    /// The answer.
    pub winner: Finished,
    /// Attempts that failed while another still ran (already in the access log trail).
    pub failed: Vec<Finished>,
}

/// What a race needs to send a hedge.
#[derive(Debug)]
pub struct Hedger<'a> {
    /// The request's snapshot.
    pub snapshot: &'a Snapshot,
    /// Index of the route.
    pub route: usize,
    /// The request head, cloned for each hedge.
    pub parts: &'a Parts,
    /// The request body; a hedge gets its own copy of a body held whole.
    pub source: &'a Source,
    /// (upstream, endpoint) pairs this request already tried before this race.
    pub tried: &'a [(usize, usize)],
    /// Whether the request carries an idempotency key (a keyed non-idempotent request).
    pub keyed: bool,
    /// The route's deadline.
    pub deadline: Instant,
    /// The per-try timeout of the route's retry policy, if any.
    pub per_try: Option<Duration>,
}

type Racing<'a> = Pin<Box<dyn Future<Output = Sent> + Send + 'a>>;

struct Racer<'a> {
    target: Target,
    why: Option<Why>,
    started: Instant,
    running: Racing<'a>,
}

/// Runs the first attempt (`target` with `request`) and its hedges; see the module docs.
pub async fn race(
    ex: &mut Exchange,
    plan: Plan,
    first: (Target, Request<RequestBody>, Option<Why>),
    timeout: Duration,
    hedger: Hedger<'_>,
) -> Raced {
    let snapshot = hedger.snapshot;
    let Plan {
        cell,
        delay,
        burning,
    } = plan;
    let (target, request, why) = first;
    let mut racers = vec![launch(snapshot, target, request, timeout, why)];
    // Hedges stay in the first attempt's priority group: a keyed request stays where its
    // key was seen, and a backup group is not for speed.
    let upstream = &snapshot.upstreams[racers[0].target.upstream];
    let priority = upstream.config.endpoints[racers[0].target.endpoint].priority;
    let mut tried: Vec<(usize, usize)> = hedger.tried.to_vec();
    tried.push((racers[0].target.upstream, racers[0].target.endpoint));
    let mut failed = Vec::new();
    let mut hedges = 0;
    let mut timer: Option<Pin<Box<Sleep>>> = Some(Box::pin(tokio::time::sleep(delay)));
    let failure_set = FailureSet::default();
    loop {
        let event = std::future::poll_fn(|cx| {
            for (i, racer) in racers.iter_mut().enumerate() {
                if let Poll::Ready(sent) = racer.running.as_mut().poll(cx) {
                    return Poll::Ready(Some((i, sent)));
                }
            }
            match timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(None),
                _ => Poll::Pending,
            }
        })
        .await;
        let now = Instant::now();
        let Some((i, sent)) = event else {
            // Time for a hedge.
            timer = None;
            if burning {
                cell.count_skipped(Skipped::SloBurning);
                continue;
            }
            if !cell.withdraw(now) {
                cell.count_skipped(Skipped::BudgetExhausted);
                continue;
            }
            match hedger.next(&tried, priority, now).await {
                Some((target, request)) => {
                    tried.push((target.upstream, target.endpoint));
                    let left = hedger.attempt_timeout(now);
                    racers.push(launch(snapshot, target, request, left, Some(Why::Hedge)));
                    cell.count_sent();
                    hedges += 1;
                    if hedges < cell.config.max_extra {
                        timer = Some(Box::pin(tokio::time::sleep(delay)));
                    }
                }
                None => cell.count_skipped(Skipped::NoEndpoint),
            }
            continue;
        };
        let racer = racers.remove(i);
        if sent.call.result.status().is_some() {
            // Answers only: a fast connect failure says nothing about the route's latency.
            cell.observe(sent.call.elapsed, now);
        }
        let finished = Finished {
            target: racer.target,
            sent,
            why: racer.why,
        };
        let result = finished.sent.call.result;
        let failure = match &finished.target.permit {
            Some(permit) => permit.failure_on().is_failure(result),
            None => failure_set.is_failure(result),
        };
        // With a key, a quick 409/425/429 is most likely the provider seeing the same key
        // while the other attempt still runs: not the answer while that one may still give it.
        let duplicate = hedger.keyed && matches!(result.status(), Some(409 | 425 | 429));
        if (failure || duplicate) && !racers.is_empty() {
            // Another attempt may still answer well: note this one and wait on. (A failure
            // with nothing else in flight is the answer: retrying it is the retry stage's job,
            // within its budget, not the hedge's.)
            ex.outcome.attempted(Attempt {
                upstream: finished.target.upstream,
                endpoint: finished.target.endpoint,
                end: End::of(finished.sent.call.result, false),
                elapsed: finished.sent.call.elapsed,
                why: finished.why,
                failover: None,
            });
            failed.push(finished);
            continue;
        }
        if finished.why == Some(Why::Hedge) {
            cell.count_won();
        }
        for loser in racers.drain(..) {
            let elapsed = loser.started.elapsed();
            cell.observe(elapsed, now);
            ex.outcome.attempted(Attempt {
                upstream: loser.target.upstream,
                endpoint: loser.target.endpoint,
                end: End::Cancelled,
                elapsed,
                why: loser.why,
                failover: None,
            });
            // Dropping it cancels the request and hands back its permits unrecorded.
        }
        return Raced {
            winner: finished,
            failed,
        };
    }
}

fn launch<'a>(
    snapshot: &'a Snapshot,
    target: Target,
    request: Request<RequestBody>,
    timeout: Duration,
    why: Option<Why>,
) -> Racer<'a> {
    let upstream = &snapshot.upstreams[target.upstream];
    let endpoint = target.endpoint;
    let running: Racing<'a> = Box::pin(async move {
        let started = Instant::now();
        let mut sent = attempt::send(upstream, endpoint, request, timeout, Via::Pooled).await;
        let left = timeout.saturating_sub(started.elapsed());
        judge::judge(upstream, &mut sent, left).await;
        sent
    });
    Racer {
        target,
        why,
        started: Instant::now(),
        running,
    }
}

impl Hedger<'_> {
    /// A target and request for one more attempt at another endpoint of the route's own
    /// upstream, past its breaker and bulkhead; `None` when none can take it.
    async fn next(
        &self,
        tried: &[(usize, usize)],
        priority: u32,
        now: Instant,
    ) -> Option<(Target, Request<RequestBody>)> {
        let body = self.source.body_for_hedge()?;
        let target = target::another(self.snapshot, self.route, tried, priority, now)?;
        let target = target.claimed().await.ok()?;
        let upstream = &self.snapshot.upstreams[target.upstream];
        let request = upstream_request(self.parts.clone(), body, upstream, target.endpoint)?;
        Some((target, request))
    }

    /// The time a hedge sent now may take.
    fn attempt_timeout(&self, now: Instant) -> Duration {
        let left = self.deadline.saturating_duration_since(now);
        self.per_try.map_or(left, |t| t.min(left))
    }
}
