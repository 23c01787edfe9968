//! The idempotency layer's rules: what a repeat of a recorded key gets, and what the first
//! request's ending makes of its record. Plain decisions, no I/O: the dataplane stage
//! ([`crate::dataplane::pipeline::idempotency`]) reads and writes the store.
//!
//! # The rules
//! - A repeat whose fingerprint differs from the recorded request's: 422, never delivered.
//! - The first request still in flight: 409 `idempotency_in_progress`.
//! - Completed: the stored response is replayed.
//! - Unknown (the first request may or may not have been acted on) or completed with a
//!   response too large to store: delivered again only when the upstream deduplicates by key
//!   itself (`honours_idempotency_key`), else 409 so a person or a reconciliation job decides.
//! - The first request ends in one of three ways ([`conclude`]): its final answer came from
//!   the upstream and is final (2xx, 3xx, 4xx other than 408, 409, 425, 429): stored; no
//!   attempt can have been acted on (backstop refused before sending, connect failures, or
//!   the upstream declined with 408, 409, 425 or 429): the record is released, so the client
//!   may retry; anything else (a reset or timeout after sending, a 5xx): unknown.

/// How one attempt ended, as the idempotency rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Provably not delivered (no connection, or closed unread).
    Not,
    /// May have been delivered, no answer (reset, timeout, the client left mid-attempt).
    Maybe,
    /// The upstream answered with this status.
    Answered(u16),
}

/// What becomes of the first request's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conclusion {
    /// Store the final response for replay.
    Store,
    /// Delete the in-progress record: nothing was acted on.
    Release,
    /// Record the outcome as unknown.
    Unknown,
}

/// Statuses with which an upstream declines a request without acting on it.
fn declined(status: u16) -> bool {
    matches!(status, 408 | 409 | 425 | 429)
}

/// The record's fate after `attempts`; `answered` is the status of the final response when it
/// came from the upstream (`None` when backstop answered itself).
pub fn conclude(attempts: impl IntoIterator<Item = Sent>, answered: Option<u16>) -> Conclusion {
    let maybe_acted = attempts.into_iter().any(|a| match a {
        Sent::Not => false,
        Sent::Maybe => true,
        Sent::Answered(s) => s >= 500,
    });
    match answered {
        Some(s) if s >= 500 => Conclusion::Unknown,
        Some(s) if declined(s) && !maybe_acted => Conclusion::Release,
        Some(s) if declined(s) => Conclusion::Unknown,
        Some(_) => Conclusion::Store,
        None if maybe_acted => Conclusion::Unknown,
        None => Conclusion::Release,
    }
}

/// What a repeat of a recorded key gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// 422 `idempotency_key_reused`.
    Reused,
    /// 409 `idempotency_in_progress`.
    InProgress,
    /// The stored response.
    Replay,
    /// 409 `idempotency_outcome_unknown`.
    Unknown,
    /// 409 `idempotency_response_not_stored`.
    NotStored,
}

/// The record's state, as [`repeat`] needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// In flight.
    InProgress,
    /// Completed and stored.
    Done,
    /// Outcome unknown.
    Unknown,
    /// Completed, response not stored.
    NotStored,
}

/// The answer to a repeat whose record is `recorded`; `same` when the fingerprints match.
/// (A reclaimable record with `honours_idempotency_key` never reaches here: the store's claim
/// takes it.)
pub fn repeat(recorded: Recorded, same: bool) -> Repeat {
    if !same {
        return Repeat::Reused;
    }
    match recorded {
        Recorded::InProgress => Repeat::InProgress,
        Recorded::Done => Repeat::Replay,
        Recorded::Unknown => Repeat::Unknown,
        Recorded::NotStored => Repeat::NotStored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_upstream_answers_are_stored_and_5xx_are_unknown() {
        assert_eq!(
            conclude([Sent::Answered(201)], Some(201)),
            Conclusion::Store
        );
        assert_eq!(
            conclude([Sent::Answered(400)], Some(400)),
            Conclusion::Store
        );
        assert_eq!(
            conclude([Sent::Answered(500)], Some(500)),
            Conclusion::Unknown
        );
        assert_eq!(
            conclude([Sent::Maybe, Sent::Answered(201)], Some(201)),
            Conclusion::Store
        );
    }

    #[test]
    fn nothing_sent_releases_and_maybe_sent_is_unknown() {
        assert_eq!(conclude([], None), Conclusion::Release);
        assert_eq!(conclude([Sent::Not, Sent::Not], None), Conclusion::Release);
        assert_eq!(conclude([Sent::Maybe], None), Conclusion::Unknown);
        assert_eq!(
            conclude([Sent::Answered(503), Sent::Not], None),
            Conclusion::Unknown
        );
        assert_eq!(
            conclude([Sent::Answered(429)], Some(429)),
            Conclusion::Release
        );
        assert_eq!(
            conclude([Sent::Maybe, Sent::Answered(429)], Some(429)),
            Conclusion::Unknown
        );
    }

    #[test]
    fn a_different_request_is_refused_whatever_the_state() {
        for r in [
            Recorded::InProgress,
            Recorded::Done,
            Recorded::Unknown,
            Recorded::NotStored,
        ] {
            assert_eq!(repeat(r, false), Repeat::Reused);
        }
        assert_eq!(repeat(Recorded::Done, true), Repeat::Replay);
        assert_eq!(repeat(Recorded::InProgress, true), Repeat::InProgress);
    }
}
