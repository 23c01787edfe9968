//! Policies: plain state machines with an injected clock and no I/O.
//!
//! Each policy takes `now` and returns a decision; the dataplane adapts it (locks, metrics,
//! logs, responses). That keeps every rule testable with a fake clock and no network.

pub mod adaptive;
pub mod breaker;
pub mod classify;
pub mod health;
pub mod idempotency;
pub mod latency_window;
pub mod outcome_rules;
pub mod outlier;
pub mod rate;
pub mod retry;
pub mod retry_budget;

/// enforce: act on decisions. shadow: count and log what would have happened, act on nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Decisions are applied.
    Enforce,
    /// Decisions are counted and logged only.
    Shadow,
}

impl Mode {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}
