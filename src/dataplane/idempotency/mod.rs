//! Where idempotency keys are recorded: [`local`] (this process's memory) or [`redis`]
//! (shared by every replica).
//!
//! A key's record is one [`Entry`]: in progress (with a lease), done (the stored response),
//! or not replayable (the outcome is unknown, or the response was too large to keep). Both
//! stores make the first step atomic: [`Store::claim`] either records the key as in progress
//! for this request, or returns what is already recorded. Later steps name the claim they
//! finish ([`Ticket`]), so a request whose lease ran out never overwrites a newer one.
//!
//! Records are encoded compactly ([`Entry::encode`]): a version byte, a state byte, the
//! 32-byte fingerprint, then the state's fields; binary-safe in Redis.

pub mod local;
pub mod redis;

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue};

/// SHA-256 of the parts of a request the route's `fingerprint` names.
pub type Fingerprint = [u8; 32];

/// SHA-256 of the client's key: records are keyed by it, never by the key itself.
pub type KeyHash = [u8; 32];

const VERSION: u8 = 1;
const IN_PROGRESS: u8 = 1;
const DONE: u8 = 2;
const UNKNOWN: u8 = 3;
const NOT_STORED: u8 = 4;

/// What is recorded for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A request with this key is being delivered; `token` names that claim.
    InProgress {
        /// Of the request being delivered.
        fingerprint: Fingerprint,
        /// Random, unique per claim.
        token: u64,
    },
    /// The request completed; its response is replayed to repeats.
    Done {
        /// Of the request that completed.
        fingerprint: Fingerprint,
        /// The stored response.
        response: StoredResponse,
    },
    /// The request may or may not have been acted on.
    Unknown {
        /// Of the request.
        fingerprint: Fingerprint,
    },
    /// The request completed but its response was larger than `max_response_bytes`.
    NotStored {
        /// Of the request.
        fingerprint: Fingerprint,
        /// The status it got.
        status: u16,
    },
}

/// A response kept for replay: status, a documented subset of headers ([`STORED_HEADERS`])
/// and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// Status code.
    pub status: u16,
    /// Headers in [`STORED_HEADERS`], in the order received.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The whole body.
    pub body: Bytes,
}

/// The response headers kept with a stored response; others (hop-by-hop, dates, cookies,
/// tracing) are not replayed.
pub const STORED_HEADERS: [&str; 10] = [
    "content-type",
    "content-encoding",
    "content-language",
    "content-location",
    "location",
    "etag",
    "last-modified",
    "cache-control",
    "link",
    "idempotency-key",
];

impl Entry {
    /// The fingerprint of the request the record is about.
    pub fn fingerprint(&self) -> &Fingerprint {
        match self {
            Entry::InProgress { fingerprint, .. }
            | Entry::Done { fingerprint, .. }
            | Entry::Unknown { fingerprint }
            | Entry::NotStored { fingerprint, .. } => fingerprint,
        }
    }

    /// Whether a repeat may re-claim the key (when the upstream honours keys itself).
    pub fn reclaimable(&self) -> bool {
        matches!(self, Entry::Unknown { .. } | Entry::NotStored { .. })
    }

    /// The compact binary form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(64);
        out.put_u8(VERSION);
        let state = match self {
            Entry::InProgress { .. } => IN_PROGRESS,
            Entry::Done { .. } => DONE,
            Entry::Unknown { .. } => UNKNOWN,
            Entry::NotStored { .. } => NOT_STORED,
        };
        out.put_u8(state);
        out.put_slice(self.fingerprint());
        match self {
            Entry::InProgress { token, .. } => out.put_u64(*token),
            Entry::Done { response, .. } => {
                out.put_u16(response.status);
                let count = response.headers.len().min(usize::from(u16::MAX));
                out.put_u16(count as u16);
                for (name, value) in response.headers.iter().take(count) {
                    put_short(&mut out, name.as_str().as_bytes());
                    put_short(&mut out, value.as_bytes());
                }
                out.put_slice(&response.body);
            }
            Entry::Unknown { .. } => {}
            Entry::NotStored { status, .. } => out.put_u16(*status),
        }
        out.to_vec()
    }

    /// Reads [`Entry::encode`]'s form; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let mut b = bytes;
        if b.remaining() < 34 || b.get_u8() != VERSION {
            return None;
        }
        let state = b.get_u8();
        let mut fingerprint = [0; 32];
        b.copy_to_slice(&mut fingerprint);
        match state {
            IN_PROGRESS if b.remaining() == 8 => Some(Entry::InProgress {
                fingerprint,
                token: b.get_u64(),
            }),
            DONE if b.remaining() >= 4 => {
                let status = b.get_u16();
                let count = b.get_u16();
                let mut headers = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    let name = HeaderName::from_bytes(get_short(&mut b)?).ok()?;
                    let value = HeaderValue::from_bytes(get_short(&mut b)?).ok()?;
                    headers.push((name, value));
                }
                Some(Entry::Done {
                    fingerprint,
                    response: StoredResponse {
                        status,
                        headers,
                        body: Bytes::copy_from_slice(b),
                    },
                })
            }
            UNKNOWN if b.is_empty() => Some(Entry::Unknown { fingerprint }),
            NOT_STORED if b.remaining() == 2 => Some(Entry::NotStored {
                fingerprint,
                status: b.get_u16(),
            }),
            _ => None,
        }
    }
}

fn put_short(out: &mut BytesMut, bytes: &[u8]) {
    let len = bytes.len().min(usize::from(u16::MAX));
    out.put_u16(len as u16);
    out.put_slice(&bytes[..len]);
}

fn get_short<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    if b.remaining() < 2 {
        return None;
    }
    let len = usize::from(b.get_u16());
    if b.len() < len {
        return None;
    }
    let (head, tail) = b.split_at(len);
    *b = tail;
    Some(head)
}

/// A claim this request holds on a key: what [`Store::finish`] and [`Store::release`] name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The key.
    pub key: KeyHash,
    /// The in-progress record written by the claim.
    pub claim: Entry,
}

/// What [`Store::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is now in progress for this request.
    Claimed(Ticket),
    /// The key already has this record; nothing was written.
    Existing(Entry),
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The local store is full of keys in progress.
    #[error("the local idempotency store is full of keys in progress")]
    Full,
    /// Redis failed, is down, or is not connected.
    #[error(transparent)]
    Redis(#[from] crate::dataplane::ratelimit::global::GlobalError),
    /// Redis held a record backstop cannot read.
    #[error("unreadable idempotency record")]
    Corrupt,
}

/// One route's store.
#[derive(Debug)]
pub enum Store {
    /// In memory.
    Local(local::LocalStore),
    /// In Redis.
    Redis(redis::RedisStore),
}

impl Store {
    /// Records `key` as in progress for a request with `fingerprint`, for `lease`, unless a
    /// record exists. A record that is not replayable ([`Entry::reclaimable`]) with the same
    /// fingerprint is replaced when `reclaim` (the upstream honours keys itself).
    pub async fn claim(
        &self,
        key: KeyHash,
        fingerprint: Fingerprint,
        lease: Duration,
        reclaim: bool,
    ) -> Result<Claim, StoreError> {
        let claim = Entry::InProgress {
            fingerprint,
            token: rand::random(),
        };
        match self {
            Store::Local(s) => s.claim(key, claim, lease, reclaim),
            Store::Redis(s) => s.claim(key, claim, lease, reclaim).await,
        }
    }

    /// Replaces the claim with `entry`, kept for `ttl`, unless another claim took the key
    /// since (the lease ran out).
    pub async fn finish(
        &self,
        ticket: &Ticket,
        entry: Entry,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        match self {
            Store::Local(s) => s.finish(ticket, entry, ttl),
            Store::Redis(s) => s.finish(ticket, entry, ttl).await,
        }
    }

    /// Deletes the claim, so a repeat is delivered: nothing reached the upstream.
    pub async fn release(&self, ticket: &Ticket) -> Result<(), StoreError> {
        match self {
            Store::Local(s) => s.release(ticket),
            Store::Redis(s) => s.release(ticket).await,
        }
    }

    /// [`Store::finish`] without waiting: for a request abandoned mid-flight (its future was
    /// dropped). The local store writes at once; Redis in a spawned task.
    pub fn finish_detached(
        self: &std::sync::Arc<Self>,
        ticket: Ticket,
        entry: Entry,
        ttl: Duration,
    ) {
        match &**self {
            Store::Local(s) => {
                let _ = s.finish(&ticket, entry, ttl);
            }
            Store::Redis(_) => {
                let Ok(handle) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let store = self.clone();
                handle.spawn(async move {
                    if let Err(e) = store.finish(&ticket, entry, ttl).await {
                        tracing::warn!(error = %e, "could not record an abandoned idempotent request as unknown; its in-progress record expires with its lease");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_round_trips() {
        let fp = [7; 32];
        let entries = [
            Entry::InProgress {
                fingerprint: fp,
                token: 42,
            },
            Entry::Done {
                fingerprint: fp,
                response: StoredResponse {
                    status: 201,
                    headers: vec![(
                        HeaderName::from_static("content-type"),
                        HeaderValue::from_static("application/json"),
                    )],
                    body: Bytes::from_static(b"{\"id\":1}\0\xff"),
                },
            },
            Entry::Unknown { fingerprint: fp },
            Entry::NotStored {
                fingerprint: fp,
                status: 200,
            },
        ];
        for entry in entries {
            assert_eq!(Entry::decode(&entry.encode()), Some(entry));
        }
        assert_eq!(Entry::decode(b""), None);
        assert_eq!(Entry::decode(&[9; 40]), None);
    }
}
