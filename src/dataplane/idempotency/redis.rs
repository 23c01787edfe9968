//! The shared store: records in the top-level `redis:`, so every replica agrees on a key.
//!
//! One Lua script per step (one round trip, one key): the claim is `SET ... PX lease` only if
//! no record exists (or a reclaimable one with the same fingerprint, when the upstream honours
//! keys), returning the existing record otherwise; finishing and releasing compare the record
//! with the claim first, so a request whose lease ran out never overwrites a newer claim. The
//! lease makes a crashed replica's claim expire. Redis errors, timeouts and its fail-fast
//! period are those of the shared client ([`Redis`]).

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::{Claim, Entry, KeyHash, StoreError, Ticket};
use crate::dataplane::ratelimit::global::Redis;

/// KEYS[1] record; ARGV[1] the claim; ARGV[2] lease in ms; ARGV[3] "1" to reclaim an unknown
/// or not-stored record with the same fingerprint. Returns nil when claimed, else the record.
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  local state = string.byte(v, 2)
  local same = string.sub(v, 3, 34) == string.sub(ARGV[1], 3, 34)
  if not (ARGV[3] == '1' and same and (state == 3 or state == 4)) then
    return v
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

/// KEYS[1] record; ARGV[1] the claim; ARGV[2] the final record; ARGV[3] ttl in ms.
const FINISH: &str = r"
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// KEYS[1] record; ARGV[1] the claim.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

/// One route's records in Redis, under `backstop:idempotency:<route>:<hex of the key's hash>`.
pub struct RedisStore {
    redis: Arc<Redis>,
    prefix: String,
    claim: Script,
    finish: Script,
    release: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisStore {
    /// The store of route `route` on the shared client.
    pub fn new(redis: Arc<Redis>, route: &str) -> Self {
        Self {
            redis,
            prefix: format!("backstop:idempotency:{route}:"),
            claim: Script::new(CLAIM),
            finish: Script::new(FINISH),
            release: Script::new(RELEASE),
        }
    }

    fn key(&self, key: &KeyHash) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(self.prefix.len() + 64);
        out.push_str(&self.prefix);
        for b in key {
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// See [`super::Store::claim`].
    pub async fn claim(
        &self,
        key: KeyHash,
        claim: Entry,
        lease: Duration,
        reclaim: bool,
    ) -> Result<Claim, StoreError> {
        let value = claim.encode();
        let args = [
            value,
            millis(lease).into_bytes(),
            if reclaim {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
        ];
        let existing: Option<Vec<u8>> = self.redis.run(&self.claim, &self.key(&key), &args).await?;
        match existing {
            None => Ok(Claim::Claimed(Ticket { key, claim })),
            Some(bytes) => Entry::decode(&bytes)
                .map(Claim::Existing)
                .ok_or(StoreError::Corrupt),
        }
    }

    /// See [`super::Store::finish`].
    pub async fn finish(
        &self,
        ticket: &Ticket,
        entry: Entry,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let args = [
            ticket.claim.encode(),
            entry.encode(),
            millis(ttl).into_bytes(),
        ];
        let _: i64 = self
            .redis
            .run(&self.finish, &self.key(&ticket.key), &args)
            .await?;
        Ok(())
    }

    /// See [`super::Store::release`].
    pub async fn release(&self, ticket: &Ticket) -> Result<(), StoreError> {
        let args = [ticket.claim.encode()];
        let _: i64 = self
            .redis
            .run(&self.release, &self.key(&ticket.key), &args)
            .await?;
        Ok(())
    }
}

fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}
