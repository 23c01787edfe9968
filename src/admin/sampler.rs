//! What the status page remembers between two looks: counters sampled every few seconds, so
//! it can show counts over the last minute instead of since the process started, and what
//! each reload changed.
//!
//! Counters are read from the registry (`backstop_requests_total`, `backstop_retries_total`,
//! `backstop_circuit_rejected_total`...), not from the route handles: the registry keeps a
//! series across reloads, while a route's handles are rebuilt with each snapshot.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::metrics::handles::RouteTotals;
use crate::metrics::{names, Metrics};
use crate::runtime::{Snapshot, SnapshotHandle};

/// How often the background task samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept: one minute of them, plus the one that starts the minute.
const KEEP: usize = 13;
/// Reloads whose changes the page lists.
const RELOADS_KEPT: usize = 5;
/// Change lines kept per reload.
const LINES_KEPT: usize = 20;

/// One counter series the page reads, summed over the labels it does not name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// Requests answered on a route with this status.
    Status {
        /// Route name.
        route: String,
        /// Three-digit status.
        status: u16,
    },
    /// Retries on a route.
    Retries(String),
    /// Attempts a route sent to a failover upstream.
    Failovers(String),
    /// Non-idempotent requests of a route that failed after being sent.
    OutcomeUnknown(String),
    /// Requests a route's rate limit rejected (`enforce`) or would have (`shadow`).
    RateLimited {
        /// Route name.
        route: String,
        /// Enforced (answered 429) rather than shadow.
        enforce: bool,
    },
    /// Requests an enforcing breaker rejected; `route` is "" for an upstream-level breaker.
    CircuitRejected {
        /// Upstream name.
        upstream: String,
        /// Route name, "" for the upstream's own breaker.
        route: String,
    },
    /// Requests of a route backstop refused, by reason (`backstop_refused_total`).
    Refused {
        /// Route name.
        route: String,
        /// The refusal's reason.
        reason: String,
    },
    /// Requests an upstream's `max_concurrent_requests` rejected.
    Overloaded(String),
    /// Requests an upstream's enforcing adaptive concurrency limit rejected.
    AdaptiveRejected(String),
    /// Attempts to an upstream (all endpoints) with this result.
    Attempts {
        /// Upstream name.
        upstream: String,
        /// `success`, `5xx`, `connect_failure`, `timeout`, `error`.
        result: String,
    },
}

/// Counter values at one moment.
#[derive(Debug, Clone, Default)]
pub struct Counts(HashMap<Key, u64>);

impl Counts {
    /// Reads every series the page uses from `metrics`' registry.
    pub fn read(metrics: &Metrics) -> Self {
        let mut counts = HashMap::new();
        for family in metrics.registry().gather() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map_or("", |l| l.value())
                };
                let key = match family.name() {
                    names::REQUESTS_TOTAL => Key::Status {
                        route: label("route").to_owned(),
                        status: label("status").parse().unwrap_or(0),
                    },
                    names::RETRIES_TOTAL => Key::Retries(label("route").to_owned()),
                    names::FAILOVER_TOTAL => Key::Failovers(label("route").to_owned()),
                    names::OUTCOME_UNKNOWN_TOTAL => Key::OutcomeUnknown(label("route").to_owned()),
                    names::RATE_LIMITED_TOTAL => Key::RateLimited {
                        route: label("route").to_owned(),
                        enforce: label("mode") != "shadow",
                    },
                    names::CIRCUIT_REJECTED_TOTAL if label("mode") != "shadow" => {
                        Key::CircuitRejected {
                            upstream: label("upstream").to_owned(),
                            route: label("route").to_owned(),
                        }
                    }
                    names::OVERLOAD_REJECTED_TOTAL => Key::Overloaded(label("upstream").to_owned()),
                    names::REFUSED_TOTAL => Key::Refused {
                        route: label("route").to_owned(),
                        reason: label("reason").to_owned(),
                    },
                    names::ADAPTIVE_REJECTIONS_TOTAL if label("mode") != "shadow" => {
                        Key::AdaptiveRejected(label("upstream").to_owned())
                    }
                    names::UPSTREAM_ATTEMPTS_TOTAL => Key::Attempts {
                        upstream: label("upstream").to_owned(),
                        result: label("result").to_owned(),
                    },
                    _ => continue,
                };
                let value = metric.get_counter().get_value();
                *counts.entry(key).or_insert(0) += value.max(0.0) as u64;
            }
        }
        Self(counts)
    }

    /// The value of `key` (0 for a series that does not exist yet).
    pub fn get(&self, key: &Key) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// Sum over the series `keep` selects.
    pub fn sum(&self, keep: impl Fn(&Key) -> bool) -> u64 {
        self.0.iter().filter(|(k, _)| keep(k)).map(|(_, v)| v).sum()
    }
}

/// One sample.
#[derive(Debug)]
struct Sample {
    at: Instant,
    totals: HashMap<String, RouteTotals>,
    counts: Counts,
}

/// What one accepted reload changed.
#[derive(Debug, Clone)]
pub struct Reload {
    /// Generation it produced.
    pub generation: u64,
    /// When the page first saw it (RFC 3339, UTC).
    pub seen_at: String,
    /// `path: old -> new` lines, at most [`LINES_KEPT`].
    pub lines: Vec<String>,
    /// Lines left out beyond [`LINES_KEPT`].
    pub more: usize,
}

#[derive(Debug, Default)]
struct Generations {
    generation: u64,
    view: serde_json::Value,
    reloads: VecDeque<Reload>,
}

/// Samples counters every [`SAMPLE_EVERY`] and keeps the last reloads' changes.
#[derive(Debug)]
pub struct Sampler {
    started: Instant,
    samples: Mutex<VecDeque<Sample>>,
    generations: Mutex<Generations>,
}

/// Counts over the sampled span: now against the oldest sample.
#[derive(Debug)]
pub struct Window<'a> {
    /// Length of the span (at most about a minute).
    pub span: Duration,
    old: &'a Counts,
    now: &'a Counts,
}

impl Window<'_> {
    /// How much `key` grew over the span.
    pub fn delta(&self, key: &Key) -> u64 {
        self.now.get(key).saturating_sub(self.old.get(key))
    }

    /// How much the series `keep` selects grew over the span.
    pub fn delta_sum(&self, keep: impl Fn(&Key) -> bool) -> u64 {
        self.now
            .0
            .iter()
            .filter(|(k, _)| keep(k))
            .fold(0, |sum, (k, v)| sum + v.saturating_sub(self.old.get(k)))
    }
}

impl Sampler {
    /// A sampler holding one sample of `snapshot` taken now: the start of the first window.
    pub fn new(snapshot: &Snapshot) -> Self {
        let sampler = Self {
            started: Instant::now(),
            samples: Mutex::new(VecDeque::new()),
            generations: Mutex::new(Generations {
                generation: snapshot.generation,
                view: config_view(snapshot),
                reloads: VecDeque::new(),
            }),
        };
        sampler.sample(snapshot);
        sampler
    }

    /// Samples `snapshots` now and then every [`SAMPLE_EVERY`] in the background.
    pub fn start(snapshots: SnapshotHandle) -> Arc<Self> {
        let sampler = Arc::new(Self::new(&snapshots.load()));
        let weak = Arc::downgrade(&sampler);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + SAMPLE_EVERY, SAMPLE_EVERY);
            loop {
                tick.tick().await;
                let Some(sampler) = weak.upgrade() else {
                    return;
                };
                sampler.sample(&snapshots.load());
            }
        });
        sampler
    }

    /// How long this sampler (so, this process's admin side) has been running.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Takes one sample of `snapshot` and notes a new generation.
    pub fn sample(&self, snapshot: &Snapshot) {
        self.note_generation(snapshot);
        let totals = snapshot
            .routes
            .iter()
            .map(|r| (r.config.name.clone(), r.metrics.totals()))
            .collect();
        let sample = Sample {
            at: Instant::now(),
            totals,
            counts: Counts::read(&snapshot.metrics),
        };
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back(sample);
        while samples.len() > KEEP {
            samples.pop_front();
        }
    }

    /// Calls `f` with the window from the oldest sample to `now` counts, and the oldest
    /// totals of `route`; `None` before the first sample.
    pub fn with_window<T>(
        &self,
        now: &Counts,
        f: impl FnOnce(&Window<'_>, &dyn Fn(&str) -> RouteTotals) -> T,
    ) -> Option<T> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = samples.front()?;
        let window = Window {
            span: oldest.at.elapsed(),
            old: &oldest.counts,
            now,
        };
        let totals = |route: &str| oldest.totals.get(route).cloned().unwrap_or_default();
        Some(f(&window, &totals))
    }

    /// Records what changed if `snapshot` is a generation this sampler has not seen yet.
    pub fn note_generation(&self, snapshot: &Snapshot) {
        let mut g = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        if snapshot.generation == g.generation {
            return;
        }
        let view = config_view(snapshot);
        let mut lines = crate::config::diff_values(&g.view, &view, &["generation", "sha256"]);
        let more = lines.len().saturating_sub(LINES_KEPT);
        lines.truncate(LINES_KEPT);
        g.reloads.push_front(Reload {
            generation: snapshot.generation,
            seen_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            lines,
            more,
        });
        g.reloads.truncate(RELOADS_KEPT);
        g.generation = snapshot.generation;
        g.view = view;
    }

    /// The last reloads, newest first.
    pub fn reloads(&self) -> Vec<Reload> {
        let g = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        g.reloads.iter().cloned().collect()
    }
}

/// The config as `GET /admin/config` shows it (secrets redacted), as JSON.
fn config_view(snapshot: &Snapshot) -> serde_json::Value {
    serde_json::to_value(super::views::config(snapshot)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(yaml: &str, generation: u64, metrics: &Metrics) -> Snapshot {
        let yaml = format!("listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n{yaml}");
        let config = crate::config::load_str(&yaml).expect("valid test config");
        Snapshot::build(config, generation, metrics, None).expect("snapshot builds")
    }

    const YAML: &str = "upstreams:\n  a:\n    endpoints: [{ address: \"127.0.0.1:9\" }]\nroutes:\n  - { name: r, upstream: a, rate_limit: { rate: 5/s } }\n";

    /// Counts leave the window a minute after they happened: the page shows the last minute,
    /// not the process's lifetime.
    #[tokio::test(start_paused = true)]
    async fn counts_slide_out_of_the_window_after_a_minute() {
        let metrics = Metrics::new();
        let handle = SnapshotHandle::new(snapshot(YAML, 1, &metrics));
        let sampler = Sampler::start(handle.clone());
        let retries = || {
            let now = Counts::read(&metrics);
            sampler
                .with_window(&now, |w, _| (w.delta(&Key::Retries("r".into())), w.span))
                .expect("sampled at start")
        };
        metrics.retry("r", "5xx");
        metrics.retry("r", "5xx");
        assert_eq!(retries().0, 2, "counted from the first sample on");
        // Let the sampler tick for 30s, then one more retry.
        for _ in 0..6 {
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        metrics.retry("r", "reset");
        assert_eq!(retries().0, 3);
        // 66s after the first two (the sample at 65s taken), only the third is in the last
        // minute.
        for _ in 0..7 {
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (n, span) = retries();
        assert_eq!(n, 1, "the two early retries left the window");
        assert!(span <= Duration::from_secs(61), "{span:?}");
        // And a minute later none.
        for _ in 0..13 {
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        assert_eq!(retries().0, 0);
    }

    /// A new generation is noted once, with the changed settings.
    #[tokio::test]
    async fn a_reload_is_noted_with_what_changed() {
        let metrics = Metrics::new();
        let first = snapshot(YAML, 1, &metrics);
        let sampler = Sampler::new(&first);
        sampler.note_generation(&first);
        assert!(sampler.reloads().is_empty(), "no reload yet");
        let second = snapshot(&YAML.replace("5/s", "20/s"), 2, &metrics);
        sampler.note_generation(&second);
        sampler.note_generation(&second);
        let reloads = sampler.reloads();
        assert_eq!(reloads.len(), 1, "{reloads:?}");
        assert_eq!(reloads[0].generation, 2);
        assert!(
            reloads[0]
                .lines
                .iter()
                .any(|l| l.contains("rate_limit") && l.contains("5/s") && l.contains("20/s")),
            "{:?}",
            reloads[0].lines
        );
        assert!(
            !reloads[0].lines.iter().any(|l| l.starts_with("generation")),
            "{:?}",
            reloads[0].lines
        );
    }
}
