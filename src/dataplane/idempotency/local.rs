//! The in-memory store: a bounded map per route, keyed by the key's hash.
//!
//! Records expire after their ttl (in-progress ones after their lease). At `max_keys` the
//! map first drops expired records, then evicts the oldest finished ones (an eighth of the map
//! at once, so eviction is amortised), counted in `backstop_idempotency_evictions_total`.
//! Records in progress are never evicted: when every record is in progress the store refuses
//! new keys ([`StoreError::Full`]) and the route's `on_error` applies.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::time::Instant;

use super::{Claim, Entry, KeyHash, StoreError, Ticket};

/// One route's in-memory records.
#[derive(Debug)]
pub struct LocalStore {
    map: Mutex<HashMap<KeyHash, Slot>>,
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
        Self {
            map: Mutex::new(HashMap::new()),
            max_keys: max_keys.max(1),
            evictions,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<KeyHash, Slot>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut map = self.lock();
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
    fn make_room(&self, map: &mut HashMap<KeyHash, Slot>, now: Instant) -> Result<(), StoreError> {
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
        let mut map = self.lock();
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
        let mut map = self.lock();
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
        s.finish(&tickets[0], done, lease).expect("finish");
        assert!(matches!(
            s.claim([9; 32], claim(9, 1), lease, false),
            Ok(Claim::Claimed(_))
        ));
        assert_eq!(s.evictions.get(), 1);
    }
}
