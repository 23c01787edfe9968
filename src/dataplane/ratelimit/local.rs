//! Local limits: GCRA per key in a bounded table that evicts the least recently used key.
//!
//! Keyed state must not grow without bound when a client sends thousands of distinct keys
//! (merchant ids, addresses), and a flood of junk keys must not cost a real merchant its
//! first request. So the table holds at most `max_keys` keys, split over up to 64 shards (each
//! behind its own short lock; a key's shard comes from its hash, and one shard holds at most
//! twice its share). A key not yet in the table always gets its own fresh bucket: when the
//! table (or its shard) is full, an idle key is evicted (one whose bucket is full again, so
//! forgetting it loses nothing) from the shard's least recently used end, or else the shard's
//! least recently used key itself. Each eviction is O(1). The live count is one atomic,
//! touched only when a key is added or dropped, never on a request for a known key.
//!
//! Memory per key: a 40-byte node (key pointer and length, bucket time, hash, LRU links), the
//! key's own bytes, and a 4-byte slot plus a control byte in the hash table. Measured by
//! tests/ratelimit_memory.rs: 68 bytes per 16-byte key, so a million such keys take about
//! 70 MB. Node storage and table grow by doubling, so the bound is about 100 bytes plus the
//! key's length per key: `max_keys` x (100 + key length), e.g. at most 116 MB for a million
//! 16-byte keys, 356 MB for a million keys at the 256-byte limit. Memory is allocated only as
//! keys arrive; idle keys are dropped by [`LocalLimiter::prune`], which the route runs every
//! 2s and which gives memory back once a shard has shrunk to a quarter.
//!
//! Keys are hashed with SipHash and a random per-process seed, so a client cannot choose keys
//! that all land in one shard or one hash chain.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use prometheus::IntCounter;

use crate::policy::rate::{gcra, RateLimitConfig, Verdict};

/// No node (end of an LRU list).
const NIL: u32 = u32::MAX;
/// How many keys from the least recently used end an insert into a full shard looks at for an
/// idle one before it evicts the least recently used key.
const EVICTION_SCAN: usize = 8;
/// Most shards; fewer for small tables, so small caps are exact LRU.
const MAX_SHARDS: usize = 64;
/// Keys per shard below which the table has fewer shards.
const KEYS_PER_SHARD: usize = 1024;

struct Node {
    key: Box<str>,
    /// Theoretical arrival time, nanoseconds since the limiter started.
    tat: u64,
    hash: u64,
    /// Towards the most recently used end.
    prev: u32,
    /// Towards the least recently used end.
    next: u32,
}

/// One shard: a hash table of indices into `nodes`, and an LRU list through the nodes.
struct Shard {
    table: HashTable<u32>,
    nodes: Vec<Node>,
    cap: usize,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
}

impl Shard {
    fn new(cap: usize) -> Self {
        Self {
            table: HashTable::new(),
            nodes: Vec::new(),
            cap,
            head: NIL,
            tail: NIL,
        }
    }

    fn find(&self, hash: u64, key: &str) -> Option<u32> {
        let nodes = &self.nodes;
        self.table
            .find(hash, |&i| {
                let node = &nodes[i as usize];
                node.hash == hash && &*node.key == key
            })
            .copied()
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let node = &self.nodes[i as usize];
            (node.prev, node.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let node = &mut self.nodes[i as usize];
            node.prev = NIL;
            node.next = old;
        }
        match old {
            NIL => self.tail = i,
            o => self.nodes[o as usize].prev = i,
        }
        self.head = i;
    }

    fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    fn insert(&mut self, hash: u64, key: &str, tat: u64) {
        let len = self.nodes.len();
        if len == self.nodes.capacity() {
            // Grow by doubling, but never past the cap.
            let more = len.max(8).min(self.cap.saturating_sub(len)).max(1);
            self.nodes.reserve_exact(more);
        }
        // Fewer than `cap` nodes, and caps fit in u32 (see `LocalLimiter::with_start`).
        let i = len as u32;
        self.nodes.push(Node {
            key: key.into(),
            tat,
            hash,
            prev: NIL,
            next: NIL,
        });
        let nodes = &self.nodes;
        self.table
            .insert_unique(hash, i, |&j| nodes[j as usize].hash);
        self.push_front(i);
    }

    /// Removes node `i`; the last node moves into its place.
    fn remove(&mut self, i: u32) {
        self.unlink(i);
        let hash = self.nodes[i as usize].hash;
        if let Ok(entry) = self.table.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        let last = (self.nodes.len() - 1) as u32;
        self.nodes.swap_remove(i as usize);
        if i == last {
            return;
        }
        let (hash, prev, next) = {
            let moved = &self.nodes[i as usize];
            (moved.hash, moved.prev, moved.next)
        };
        if let Some(slot) = self.table.find_mut(hash, |&j| j == last) {
            *slot = i;
        }
        match prev {
            NIL => self.head = i,
            p => self.nodes[p as usize].next = i,
        }
        match next {
            NIL => self.tail = i,
            n => self.nodes[n as usize].prev = i,
        }
    }

    /// The key to evict for a new one: an idle key near the least recently used end, else
    /// the least recently used key.
    fn victim(&self, now: u64) -> u32 {
        let mut i = self.tail;
        for _ in 0..EVICTION_SCAN {
            if i == NIL {
                break;
            }
            let node = &self.nodes[i as usize];
            if node.tat <= now {
                return i;
            }
            i = node.prev;
        }
        self.tail
    }

    /// Drops every idle key; gives memory back once the table is mostly empty.
    fn prune(&mut self, now: u64) -> usize {
        for i in (0..self.nodes.len()).rev() {
            if self.nodes[i].tat <= now {
                self.remove(i as u32);
            }
        }
        let len = self.nodes.len();
        if self.nodes.capacity() > 64 && self.nodes.capacity() / 4 > len {
            self.nodes.shrink_to(len * 2);
            let nodes = &self.nodes;
            self.table.shrink_to(len * 2, |&j| nodes[j as usize].hash);
        }
        len
    }
}

/// A keyed GCRA limiter for one route, bounded to `max_keys` keys.
pub struct LocalLimiter {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    start: Instant,
    capacity: u32,
    interval: u64,
    max_keys: usize,
    live: AtomicUsize,
    evictions: IntCounter,
}

impl std::fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("max_keys", &self.max_keys)
            .field("shards", &self.shards.len())
            .field("capacity", &self.capacity)
            .field("interval_ns", &self.interval)
            .finish()
    }
}

impl LocalLimiter {
    /// A limiter on the real clock.
    pub fn new(config: &RateLimitConfig) -> Self {
        Self::with_start(config, Instant::now())
    }

    /// A limiter whose clock starts at `start`: [`check_at`](Self::check_at) and
    /// [`prune_at`](Self::prune_at) take times since then (tests pass their own).
    pub fn with_start(config: &RateLimitConfig, start: Instant) -> Self {
        let max_keys = config.max_keys.clamp(1, NIL as usize - 1);
        let shards = (max_keys / KEYS_PER_SHARD)
            .clamp(1, MAX_SHARDS)
            .next_power_of_two();
        // One shard may hold up to twice its share (hashes are not spread perfectly evenly);
        // the whole table holds max_keys.
        let cap = if shards == 1 {
            max_keys
        } else {
            (max_keys * 2).div_ceil(shards)
        };
        let interval = config
            .rate
            .interval()
            .as_nanos()
            .clamp(1, u128::from(u64::MAX)) as u64;
        Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::new(cap))).collect(),
            hasher: RandomState::new(),
            start,
            capacity: config.capacity(),
            interval,
            max_keys,
            live: AtomicUsize::new(0),
            evictions: IntCounter::new("evictions", "keys evicted").expect("valid metric"),
        }
    }

    /// Counts evictions in `counter` (the route's `backstop_rate_limit_evictions_total`).
    pub fn counting_evictions(mut self, counter: IntCounter) -> Self {
        self.evictions = counter;
        self
    }

    /// Decides about one request counted under `key`, now.
    pub fn check(&self, key: &str) -> Verdict {
        self.check_at(key, self.start.elapsed())
    }

    /// Decides about one request counted under `key` at `now` (since the limiter's start).
    pub fn check_at(&self, key: &str, now: Duration) -> Verdict {
        let now = nanos(now);
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        if let Some(i) = shard.find(hash, key) {
            let node = &mut shard.nodes[i as usize];
            let (verdict, tat) = gcra(node.tat, now, self.interval, self.capacity);
            node.tat = tat;
            shard.touch(i);
            return verdict;
        }
        // A key not in the table has a full bucket: its own, never a shared one.
        let (verdict, tat) = gcra(0, now, self.interval, self.capacity);
        if verdict.allowed {
            // An empty shard takes the key even when the table is full: the table then holds
            // at most one key more per shard, until that shard's next new key evicts.
            let full = shard.nodes.len() >= shard.cap
                || (self.live.load(Ordering::Relaxed) >= self.max_keys && !shard.nodes.is_empty());
            if full {
                let victim = shard.victim(now);
                shard.remove(victim);
                self.evictions.inc();
            } else {
                self.live.fetch_add(1, Ordering::Relaxed);
            }
            shard.insert(hash, key, tat);
        }
        verdict
    }

    /// Forgets keys whose buckets are full again; returns the number of live keys.
    pub fn prune(&self) -> usize {
        self.prune_at(self.start.elapsed())
    }

    /// [`prune`](Self::prune) at `now` (since the limiter's start).
    pub fn prune_at(&self, now: Duration) -> usize {
        let now = nanos(now);
        self.shards
            .iter()
            .map(|s| {
                let mut shard = lock(s);
                let before = shard.nodes.len();
                let after = shard.prune(now);
                self.live.fetch_sub(before - after, Ordering::Relaxed);
                after
            })
            .sum()
    }

    /// Live keys now (takes every shard's lock: not for the request path).
    pub fn keys(&self) -> usize {
        self.shards.iter().map(|s| lock(s).nodes.len()).sum()
    }

    /// Keys evicted so far to make room for new ones.
    pub fn evictions(&self) -> u64 {
        self.evictions.get()
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // High bits pick the shard; the table uses the low ones.
        let i = (hash >> 40) as usize & (self.shards.len() - 1);
        lock(&self.shards[i])
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // Nothing panics while holding the lock; if something did, the table is still consistent
    // enough to limit with.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rate::{LimitKey, Rate, Scope};
    use crate::policy::Mode;

    fn config(rate: &str, burst: u32, max_keys: usize) -> RateLimitConfig {
        RateLimitConfig {
            mode: Mode::Enforce,
            rate: Rate::parse(rate).unwrap(),
            burst,
            key: LimitKey::Route,
            scope: Scope::Local,
            reject_missing_key: true,
            max_keys,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn limiter(rate: &str, burst: u32, max_keys: usize) -> LocalLimiter {
        LocalLimiter::with_start(&config(rate, burst, max_keys), Instant::now())
    }

    #[test]
    fn a_burst_admits_burst_plus_one_then_the_steady_rate() {
        let l = limiter("10/s", 5, 100);
        let admitted = (0..20).filter(|_| l.check_at("k", ms(0)).allowed).count();
        assert_eq!(admitted, 6);
        let rejected = l.check_at("k", ms(0));
        assert!(!rejected.allowed);
        assert_eq!(rejected.reset, ms(100));
        assert!(
            l.check_at("k", ms(100)).allowed,
            "one more after one interval"
        );
        assert!(!l.check_at("k", ms(100)).allowed);
    }

    #[test]
    fn keys_are_independent_and_remaining_counts_down() {
        let l = limiter("1/s", 2, 100);
        assert_eq!(l.check_at("a", ms(0)).remaining, 2);
        assert_eq!(l.check_at("a", ms(0)).remaining, 1);
        assert_eq!(l.check_at("a", ms(0)).remaining, 0);
        assert!(!l.check_at("a", ms(0)).allowed);
        assert!(
            l.check_at("b", ms(0)).allowed,
            "another key has its own bucket"
        );
    }

    #[test]
    fn a_new_key_gets_its_own_bucket_while_the_cap_is_full_of_junk() {
        let l = limiter("1/m", 0, 50);
        for i in 0..1000 {
            assert!(l.check_at(&format!("junk-{i}"), ms(i)).allowed);
        }
        assert_eq!(l.keys(), 50, "bounded at the cap");
        assert_eq!(l.evictions(), 950);
        let v = l.check_at("merchant-new", ms(1000));
        assert!(v.allowed, "a key never seen before is admitted");
        assert_eq!(v.remaining, 0, "in its own bucket of capacity 1");
        assert!(
            !l.check_at("merchant-new", ms(1001)).allowed,
            "and limited in it"
        );
    }

    #[test]
    fn eviction_prefers_an_idle_key_then_the_least_recently_used() {
        // 1 request per 10ms, burst 1, cap 3. "busy" is the least recently used but its bucket
        // is not full again; "idle" is newer but its bucket is full again: it goes first.
        let l = limiter("100/s", 1, 3);
        assert!(l.check_at("busy", ms(0)).allowed);
        assert!(l.check_at("busy", ms(0)).allowed); // tat 20ms
        assert!(l.check_at("idle", ms(1)).allowed); // tat 11ms
        assert!(l.check_at("fresh", ms(9)).allowed); // tat 19ms
        assert!(l.check_at("new-1", ms(12)).allowed); // tat 22ms; evicts "idle"
        assert_eq!(l.evictions(), 1);
        assert_eq!(l.keys(), 3);
        assert_eq!(
            l.check_at("busy", ms(12)).remaining,
            0,
            "busy kept its state (a fresh bucket would leave 1)"
        );
        // None idle now (fresh 19, new-1 22, busy 30): the least recently used, "fresh", goes.
        assert!(l.check_at("new-2", ms(12)).allowed);
        assert_eq!(l.evictions(), 2);
        assert_eq!(
            l.check_at("fresh", ms(12)).remaining,
            1,
            "fresh was evicted, so it starts over with a full bucket"
        );
    }

    /// The table and the LRU list agree: every node is in the list once, in both directions,
    /// and the table finds each key at its own index.
    fn assert_consistent(l: &LocalLimiter) {
        for shard in l.shards.iter() {
            let s = lock(shard);
            assert!(s.nodes.len() <= s.cap);
            assert_eq!(s.table.len(), s.nodes.len());
            let (mut seen, mut prev, mut i) = (0, NIL, s.head);
            while i != NIL {
                let node = &s.nodes[i as usize];
                assert_eq!(node.prev, prev);
                assert_eq!(s.find(node.hash, &node.key), Some(i));
                seen += 1;
                prev = i;
                i = node.next;
            }
            assert_eq!(prev, s.tail);
            assert_eq!(seen, s.nodes.len());
        }
        assert_eq!(l.live.load(Ordering::Relaxed), l.keys());
    }

    #[test]
    fn the_table_and_lru_list_stay_consistent_through_evictions_and_pruning() {
        let l = limiter("1/s", 0, 64);
        for round in 0..20u64 {
            let now = ms(round * 2000);
            for i in 0..200 {
                l.check_at(&format!("k-{}", (i * 7 + round) % 150), now + ms(i));
                if i % 16 == 0 {
                    assert_consistent(&l);
                }
            }
            assert_eq!(l.keys(), 64);
            assert_eq!(
                l.prune_at(now + ms(1300)),
                0,
                "all idle 1s after the last use"
            );
            assert_consistent(&l);
        }
        assert!(l.evictions() > 0);
    }

    #[test]
    fn pruning_forgets_idle_keys_and_the_cap_holds_over_shards() {
        let l = limiter("10/s", 0, 5000);
        assert_eq!(l.shards.len(), 4);
        for i in 0..20_000 {
            l.check_at(&format!("merchant-{i}"), ms(0));
        }
        assert_eq!(l.keys(), 5000, "bounded, and the whole cap is used");
        assert_eq!(l.live.load(Ordering::Relaxed), 5000);
        assert_eq!(l.evictions(), 15_000);
        assert_eq!(l.prune_at(ms(99)), l.keys(), "nothing idle before 100ms");
        assert_eq!(l.prune_at(ms(100)), 0, "idle keys are pruned");
        assert_eq!(l.live.load(Ordering::Relaxed), 0);
    }
}
