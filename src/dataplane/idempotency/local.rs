//! The in-memory store: a bounded map per route, keyed by the key's hash.
//!
//! The map is split into [`SHARDS`] shards by the key's hash (SHA-256, so keys spread evenly),
//! each with its own lock and `max_keys / SHARDS` records. Growing a map rehashes it under its
//! lock; one map of 500,000 records held every request for tens of milliseconds when it
//! doubled (the bench's p99), a shard holds them for a sixteenth of that.
//!
//! Records expire after their ttl (in-progress ones after their lease). When a shard is full
//! it first drops expired records, then evicts its oldest finished ones (an eighth of the
//! shard at once, so eviction is amortised), counted in `backstop_idempotency_evictions_total`.
//! Records in progress are never evicted: when every record of a shard is in progress the
//! store refuses new keys there ([`StoreError::Full`]) and the route's `on_error` applies.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::time::Instant;

use super::{Claim, Entry, KeyHash, StoreError, Ticket};

/// Shards of a store (fewer when `max_keys` is smaller).
pub const SHARDS: usize = 16;

type Shard = HashMap<KeyHash, Slot>;

/// One route's in-memory records.
#[derive(Debug)]
pub struct LocalStore {
    shards: Box<[Mutex<Shard>]>,
    /// Most records per shard.
    max_keys: usize,
    evictions: IntCounter,
}

#[derive(Debug)]
struct Slot {
    entry: Entry,
    expires: Instant,
}

impl LocalStore {
    /// An empty store holding at most `max_keys` records.
    pub fn new(max_keys: usize, evictions: IntCounter) -> Self {
        let max_keys = max_keys.max(1);
        let shards = SHARDS.min(max_keys);
        Self {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            max_keys: max_keys.div_ceil(shards),
            evictions,
        }
    }

    /// The shard of `key`, locked.
    fn lock(&self, key: &KeyHash) -> MutexGuard<'_, Shard> {
        let shard = &self.shards[usize::from(key[0]) % self.shards.len()];
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See [`super::Store::claim`].
    pub fn claim(
        &self,
        key: KeyHash,
        claim: Entry,
        lease: Duration,
        reclaim: bool,
    ) -> Result<Claim, StoreError> {
        let now = Instant::now();
        let mut map = self.lock(&key);
        if let Some(slot) = map.get_mut(&key) {
            if slot.expires > now {
                let same = slot.entry.fingerprint() == claim.fingerprint();
                if !(reclaim && same && slot.entry.reclaimable()) {
                    return Ok(Claim::Existing(slot.entry.clone()));
                }
            }
            slot.entry = claim.clone();
            slot.expires = now + lease;
            return Ok(Claim::Claimed(Ticket { key, claim }));
        }
        if map.len() >= self.max_keys {
            self.make_room(&mut map, now)?;
        }
        map.insert(
            key,
            Slot {
                entry: claim.clone(),
                expires: now + lease,
            },
        );
        Ok(Claim::Claimed(Ticket { key, claim }))
    }

    /// Drops expired records, then the oldest finished ones.
    fn make_room(&self, map: &mut Shard, now: Instant) -> Result<(), StoreError> {
        map.retain(|_, slot| slot.expires > now);
        if map.len() < self.max_keys {
            return Ok(());
        }
        let mut finished: Vec<(Instant, KeyHash)> = map
            .iter()
            .filter(|(_, slot)| !matches!(slot.entry, Entry::InProgress { .. }))
            .map(|(key, slot)| (slot.expires, *key))
            .collect();
        if finished.is_empty() {
            return Err(StoreError::Full);
        }
        let evict = (self.max_keys / 8).clamp(1, finished.len());
        finished.select_nth_unstable(evict - 1);
        for (_, key) in &finished[..evict] {
            map.remove(key);
        }
        self.evictions.inc_by(evict as u64);
        Ok(())
    }

    /// See [`super::Store::finish`].
    pub fn finish(&self, ticket: &Ticket, entry: Entry, ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut map = self.lock(&ticket.key);
        match map.get_mut(&ticket.key) {
            Some(slot) if slot.entry == ticket.claim => {
                slot.entry = entry;
                slot.expires = now + ttl;
            }
            // Another claim took the key after this one's lease ran out: leave it.
            Some(slot) if slot.expires > now => {}
            _ => {
                map.insert(
                    ticket.key,
                    Slot {
                        entry,
                        expires: now + ttl,
                    },
                );
            }
        }
        Ok(())
    }

    /// See [`super::Store::release`].
    pub fn release(&self, ticket: &Ticket) -> Result<(), StoreError> {
        let mut map = self.lock(&ticket.key);
        if map
            .get(&ticket.key)
            .is_some_and(|s| s.entry == ticket.claim)
        {
            map.remove(&ticket.key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max: usize) -> LocalStore {
        let counter = IntCounter::new("evictions", "test").expect("valid");
        LocalStore::new(max, counter)
    }

    fn claim(fp: u8, token: u64) -> Entry {
        Entry::InProgress {
            fingerprint: [fp; 32],
            token,
        }
    }

    #[tokio::test]
    async fn a_key_is_claimed_once_then_finished_then_replayed() {
        let s = store(10);
        let lease = Duration::from_secs(10);
        let Ok(Claim::Claimed(ticket)) = s.claim([1; 32], claim(1, 1), lease, false) else {
            panic!("first claim");
        };
        assert!(matches!(
            s.claim([1; 32], claim(1, 2), lease, false),
            Ok(Claim::Existing(Entry::InProgress { token: 1, .. }))
        ));
        let done = Entry::Unknown {
            fingerprint: [1; 32],
        };
        s.finish(&ticket, done.clone(), lease).expect("finish");
        assert!(matches!(
            s.claim([1; 32], claim(1, 3), lease, false),
            Ok(Claim::Existing(e)) if e == done
        ));
        // The upstream honours keys: the unknown record is claimed again, once.
        assert!(matches!(
            s.claim([1; 32], claim(1, 4), lease, true),
            Ok(Claim::Claimed(_))
        ));
        assert!(matches!(
            s.claim([1; 32], claim(1, 5), lease, true),
            Ok(Claim::Existing(Entry::InProgress { token: 4, .. }))
        ));
        // A different request never reclaims.
        s.release(&Ticket {
            key: [1; 32],
            claim: claim(1, 4),
        })
        .expect("release");
        assert!(matches!(
            s.claim([1; 32], claim(2, 6), lease, true),
            Ok(Claim::Claimed(_))
        ));
    }

    #[tokio::test]
    async fn full_of_keys_in_progress_refuses_and_finished_ones_are_evicted() {
        // Two shards of one record: keys [0..] and [1..] fill them; [9..] shares [1..]'s.
        let s = store(2);
        let lease = Duration::from_secs(10);
        let mut tickets = Vec::new();
        for k in 0..2u8 {
            let Ok(Claim::Claimed(t)) = s.claim([k; 32], claim(k, 1), lease, false) else {
                panic!("claim");
            };
            tickets.push(t);
        }
        assert!(matches!(
            s.claim([9; 32], claim(9, 1), lease, false),
            Err(StoreError::Full)
        ));
        let done = Entry::Unknown {
            fingerprint: [0; 32],
        };
        s.finish(&tickets[1], done, lease).expect("finish");
        assert!(matches!(
            s.claim([9; 32], claim(9, 1), lease, false),
            Ok(Claim::Claimed(_))
        ));
        assert_eq!(s.evictions.get(), 1);
    }

    #[tokio::test]
    async fn max_keys_is_split_over_the_shards_and_still_bounds_the_store() {
        let s = store(1600);
        assert_eq!((s.shards.len(), s.max_keys), (SHARDS, 100));
        let lease = Duration::from_secs(10);
        for i in 0..4000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            let Ok(Claim::Claimed(t)) = s.claim(key, claim(1, 1), lease, false) else {
                panic!("claim {i}");
            };
            let done = Entry::Unknown {
                fingerprint: [1; 32],
            };
            s.finish(&t, done, lease).expect("finish");
        }
        let held: usize = s.shards.iter().map(|m| m.lock().unwrap().len()).sum();
        assert!(held <= 1600, "{held} records");
        assert!(s.evictions.get() >= 2400);
        assert_eq!(store(3).shards.len(), 3, "no more shards than keys");
    }
}
