//! Breakers shared by every replica (`circuit_breaker.shared: redis`).
//!
//! Each replica keeps its own breaker ([`crate::policy::breaker`]) and admits requests from it
//! alone: a closed breaker's admit never waits on Redis. What the replicas share lives in one
//! Redis hash per breaker, `backstop:cb:{upstream}:{route}` (route empty for an
//! upstream-level breaker), written only by Lua scripts run through the process's one Redis
//! client ([`Redis::run`]):
//!
//! - `s` 1 open (half_open once Redis's clock passes `u`), 0 closed; `e` the open episode (Redis
//!   time in ms when it began, so an id never comes back after the key expired); `u` the end
//!   of the open period; `p` half-open probe slots claimed and `ok` probes passed in this
//!   episode; `c` when the last slot was claimed.
//!
//! **Open.** A replica whose breaker opens on its own evidence publishes it ([`OPEN`]): a new
//! episode with its open period, or, when the fleet is already open, it joins that episode and
//! takes its end. The others learn it from a poll of the key ([`READ`]): every
//! [`POLL_ACTIVE`] while the breaker gets traffic (or is not closed), every [`POLL_IDLE`]
//! otherwise. So a replica with traffic opens within `POLL_ACTIVE` plus one Redis round trip of
//! the publish; an idle one within `POLL_IDLE`. Polling (rather than pub/sub) needs no second
//! connection, works the same on a Redis Cluster, and cannot miss a message while
//! disconnected: the next poll after Redis comes back sees the current state.
//!
//! **Half-open.** When its open period ends, a replica's breaker admits a probe only after
//! claiming one of the episode's `half_open_requests` slots in Redis ([`CLAIM`], one round trip
//! within `redis.timeout`), so the fleet sends that many probes in total. A refused claim is a
//! 503 `circuit_half_open`. A slot whose replica never reports (it crashed) frees after
//! [`PROBE_LEASE`]; a probe whose client went away hands its slot back ([`RELEASE`]).
//!
//! **Close.** Each passed probe is counted in Redis ([`PASS`]); the replica whose probe makes
//! the count closes the episode and its own breaker; the others close at their next poll. A
//! failed probe opens the replica's breaker, which publishes a new episode.
//!
//! **Redis unreachable.** The breaker goes on alone: opens are kept locally (and published when
//! Redis answers again), probes are admitted by the local count, and
//! `backstop_circuit_shared_fallback_total` counts every failed exchange while
//! `backstop_circuit_shared_connected` says 0.
//!
//! **Expiry.** Every write sets the key to expire [`KEY_TTL`] after the open period (closed:
//! after the close), so Redis holds only breakers that opened recently.
//!
//! Admin actions (force open, force close, reset) apply to this replica only.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus::{IntCounter, IntGauge};
use redis::Script;
use tokio::time::Instant;

use super::breaker_cell::BreakerCell;
use super::ratelimit::global::{GlobalError, Redis};
use crate::policy::breaker::{Cause, StateName};

/// Poll period of a breaker that got traffic since the last poll, or is not closed.
pub const POLL_ACTIVE: Duration = Duration::from_millis(250);
/// Poll period of an idle closed breaker.
pub const POLL_IDLE: Duration = Duration::from_secs(1);
/// A claimed probe slot whose replica never reported frees after this long.
pub const PROBE_LEASE: Duration = Duration::from_secs(30);
/// A key lives this long after the open period (or the close) that last wrote it.
pub const KEY_TTL: Duration = Duration::from_secs(600);

/// Lua: Redis's clock in milliseconds, as `now`.
macro_rules! lua_now {
    () => {
        "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    };
}

/// KEYS[1]. Returns {exists, s, e, ms until half_open}.
const READ: &str = concat!(
    lua_now!(),
    r"
local v = redis.call('HMGET', KEYS[1], 's', 'e', 'u')
if not v[1] then return {0, 0, 0, 0} end
local rem = (tonumber(v[3]) or 0) - now
if rem < 0 then rem = 0 end
return {1, tonumber(v[1]), tonumber(v[2]), rem}
"
);

/// KEYS[1]; ARGV[1] the last episode this replica knew; ARGV[2] open period ms; ARGV[3] key
/// ttl ms. Joins an open episode (another one than ARGV[1], or this one within its open
/// period); else starts one. Returns {episode, ms until half_open, started}.
const OPEN: &str = concat!(
    lua_now!(),
    r"
local v = redis.call('HMGET', KEYS[1], 's', 'e', 'u')
local s = tonumber(v[1]) or 0
local e = tonumber(v[2]) or 0
local u = tonumber(v[3]) or 0
if s == 1 and (e ~= tonumber(ARGV[1]) or now < u) then
  local rem = u - now
  if rem < 0 then rem = 0 end
  return {e, rem, 0}
end
e = math.max(e + 1, now)
local period = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 's', 1, 'e', e, 'u', now + period, 'p', 0, 'ok', 0, 'c', 0)
redis.call('PEXPIRE', KEYS[1], period + tonumber(ARGV[3]))
return {e, period, 1}
"
);

/// KEYS[1]; ARGV[1] half_open_requests; ARGV[2] lease ms; ARGV[3] key ttl ms.
/// Returns {verdict, episode, ms until half_open}: 1 claimed; 0 refused (still open, or every
/// slot taken); -1 no record; -2 closed.
const CLAIM: &str = concat!(
    lua_now!(),
    r"
local v = redis.call('HMGET', KEYS[1], 's', 'e', 'u', 'p', 'ok', 'c')
if not v[1] then return {-1, 0, 0} end
local e = tonumber(v[2])
if tonumber(v[1]) ~= 1 then return {-2, e, 0} end
local u = tonumber(v[3])
if now < u then return {0, e, u - now} end
local p = tonumber(v[4]) or 0
local n = tonumber(ARGV[1])
if p >= n and now - (tonumber(v[6]) or 0) >= tonumber(ARGV[2]) then
  p = tonumber(v[5]) or 0
end
if p >= n then return {0, e, 0} end
redis.call('HSET', KEYS[1], 'p', p + 1, 'c', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, e, 0}
"
);

/// KEYS[1]; ARGV[1] episode; ARGV[2] half_open_requests; ARGV[3] key ttl ms.
/// Returns 1 closed by this probe; 2 already closed; 0 not yet; -1 another episode.
const PASS: &str = r"
local v = redis.call('HMGET', KEYS[1], 's', 'e')
if not v[1] or tonumber(v[2]) ~= tonumber(ARGV[1]) then return -1 end
if tonumber(v[1]) ~= 1 then return 2 end
local ok = redis.call('HINCRBY', KEYS[1], 'ok', 1)
if ok >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 's', 0)
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
  return 1
end
return 0
";

/// KEYS[1]; ARGV[1] episode. Hands back a claimed slot that will never report.
const RELEASE: &str = r"
local v = redis.call('HMGET', KEYS[1], 's', 'e', 'p', 'ok')
if v[1] and tonumber(v[1]) == 1 and tonumber(v[2]) == tonumber(ARGV[1])
  and (tonumber(v[3]) or 0) > (tonumber(v[4]) or 0) then
  redis.call('HINCRBY', KEYS[1], 'p', -1)
end
return 1
";

/// What a probe claim decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A fleet slot of this episode.
    Fleet(u64),
    /// Admit by the local count (Redis unreachable, or no shared episode).
    Local,
    /// Refused: every slot is taken, or the fleet is still open.
    Refused,
    /// The fleet closed this episode meanwhile: admit as closed.
    Closed,
}

/// The shared side of one breaker. See the module docs.
pub struct Shared {
    key: String,
    redis: ArcSwapOption<Redis>,
    /// The fleet episode the local open state belongs to; 0 while open on its own evidence
    /// and not yet published (or closed).
    seen: AtomicU64,
    /// The last fleet episode this replica published, adopted or closed.
    last: AtomicU64,
    /// Serializes publishes and polls, so their adoptions do not interleave.
    sync: tokio::sync::Mutex<()>,
    /// A request came since the last poll.
    touched: AtomicBool,
    /// The poller runs.
    polling: AtomicBool,
    /// The last exchange with Redis succeeded.
    synced: AtomicBool,
    connected: IntGauge,
    fallback: IntCounter,
    read: Script,
    open: Script,
    claim: Script,
    pass: Script,
    release: Script,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("key", &self.key)
            .field("seen", &self.seen.load(Ordering::Relaxed))
            .field("synced", &self.synced.load(Ordering::Relaxed))
            .finish()
    }
}

fn ms(d: Duration) -> Vec<u8> {
    d.as_millis().to_string().into_bytes()
}

fn num(n: impl ToString) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// The Redis key of a breaker.
pub fn key(upstream: &str, route: &str) -> String {
    format!("backstop:cb:{upstream}:{route}")
}

impl Shared {
    /// The shared side of the breaker of `upstream` / `route`, not yet attached to a client.
    pub fn new(upstream: &str, route: &str, connected: IntGauge, fallback: IntCounter) -> Self {
        connected.set(0);
        Self {
            key: key(upstream, route),
            redis: ArcSwapOption::empty(),
            seen: AtomicU64::new(0),
            last: AtomicU64::new(0),
            sync: tokio::sync::Mutex::new(()),
            touched: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            connected,
            fallback,
            read: Script::new(READ),
            open: Script::new(OPEN),
            claim: Script::new(CLAIM),
            pass: Script::new(PASS),
            release: Script::new(RELEASE),
        }
    }

    /// The Redis key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the last exchange with Redis succeeded.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Notes a request (the poller's traffic gate): one relaxed load when already noted.
    #[inline]
    pub fn touch(&self) {
        if !self.touched.load(Ordering::Relaxed) {
            self.touched.store(true, Ordering::Relaxed);
        }
    }

    /// Marks the local open as this replica's own, not yet published.
    pub fn opened_locally(&self) {
        self.seen.store(0, Ordering::Relaxed);
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        args: &[Vec<u8>],
    ) -> Result<T, GlobalError> {
        let redis = self.redis.load_full().ok_or(GlobalError::NotConnected)?;
        let reply = redis.run(script, &self.key, args).await;
        match &reply {
            Ok(_) => {
                if !self.synced.swap(true, Ordering::Relaxed) {
                    self.connected.set(1);
                }
            }
            Err(e) => {
                self.fallback.inc();
                if self.synced.swap(false, Ordering::Relaxed) {
                    self.connected.set(0);
                    tracing::warn!(key = %self.key, error = %redis.describe(e), "shared circuit breaker cannot reach redis: deciding alone until it answers");
                }
            }
        }
        reply
    }
}

/// Attaches the process's Redis client (again after a reload) and starts the poller once.
pub fn attach(cell: &Arc<BreakerCell>, redis: Option<&Arc<Redis>>) {
    let Some(shared) = cell.shared() else { return };
    shared.redis.store(redis.cloned());
    if redis.is_some() && !shared.polling.swap(true, Ordering::AcqRel) {
        tokio::spawn(poll(Arc::downgrade(cell)));
    }
}

/// Polls the key while the breaker lives (it holds only a weak reference, so a reload that
/// drops the breaker ends it).
async fn poll(cell: Weak<BreakerCell>) {
    let mut idle = Duration::ZERO;
    loop {
        tokio::time::sleep(POLL_ACTIVE).await;
        let Some(cell) = cell.upgrade() else { return };
        let Some(shared) = cell.shared() else { return };
        let busy = shared.touched.swap(false, Ordering::Relaxed)
            || cell.breaker().state() != StateName::Closed;
        idle += POLL_ACTIVE;
        if !busy && idle < POLL_IDLE {
            continue;
        }
        idle = Duration::ZERO;
        sync(&cell, shared).await;
    }
}

/// One poll: adopts the fleet's state, or publishes this replica's own open.
async fn sync(cell: &Arc<BreakerCell>, shared: &Shared) {
    let serial = shared.sync.lock().await;
    let Ok((exists, s, e, rem)) = shared.run::<(i64, i64, u64, u64)>(&shared.read, &[]).await
    else {
        return;
    };
    let now = Instant::now();
    let b = cell.breaker();
    let remaining = Duration::from_millis(rem);
    let seen = shared.seen.load(Ordering::Relaxed);
    let local = b.state();
    let forced = local == StateName::Open && b.next_probe_in(now).is_none();
    if forced {
        return;
    }
    if local == StateName::Closed {
        if exists == 1 && s == 1 && e != shared.last.load(Ordering::Relaxed) {
            shared.seen.store(e, Ordering::Relaxed);
            shared.last.store(e, Ordering::Relaxed);
            if let Some(t) = b.adopt_open(now, remaining) {
                cell.emit(&t);
            }
        }
        return;
    }
    let open_remote = exists == 1 && s == 1;
    if seen == 0 || !(open_remote || exists == 1 && e == seen) {
        // This replica's own open is not shared yet, or the record is gone or belongs to an
        // older episode: publish it (it joins the fleet's episode if one is open).
        drop(serial);
        publish(cell, shared).await;
    } else if open_remote && e != seen {
        // Another episode began (a probe failed elsewhere): follow it.
        shared.seen.store(e, Ordering::Relaxed);
        shared.last.store(e, Ordering::Relaxed);
        if let Some(t) = b.adopt_open(now, remaining) {
            cell.emit(&t);
        }
    } else if !open_remote {
        // This episode closed elsewhere: its probes passed.
        shared.last.store(e, Ordering::Relaxed);
        shared.seen.store(0, Ordering::Relaxed);
        let reason = "closed by another replica: the fleet's probes passed".to_owned();
        if let Some(t) = b.adopt_close(now, reason, Cause::PeerClosed) {
            cell.emit(&t);
        }
    }
}

/// Publishes this replica's open (its own evidence): starts an episode or joins the fleet's.
pub async fn publish(cell: &Arc<BreakerCell>, shared: &Shared) {
    let _serial = shared.sync.lock().await;
    let b = cell.breaker();
    let now = Instant::now();
    let period = match b.state() {
        StateName::Closed => return,
        StateName::HalfOpen => Duration::ZERO,
        // None: forced open by the admin API, which stays local.
        StateName::Open => match b.next_probe_in(now) {
            Some(p) => p,
            None => return,
        },
    };
    let last = shared.last.load(Ordering::Relaxed);
    let args = [num(last), ms(period), ms(KEY_TTL)];
    let Ok((e, rem, started)) = shared.run::<(u64, u64, i64)>(&shared.open, &args).await else {
        return;
    };
    shared.seen.store(e, Ordering::Relaxed);
    shared.last.store(e, Ordering::Relaxed);
    if started == 1 {
        tracing::info!(upstream = %cell.upstream, route = %cell.route, episode = e, "shared circuit breaker: published open");
    } else if let Some(t) = b.adopt_open(Instant::now(), Duration::from_millis(rem)) {
        cell.emit(&t);
    }
}

/// Claims a half-open probe slot for this replica.
pub async fn claim(cell: &BreakerCell, shared: &Shared) -> Claim {
    let n = cell.config().half_open_requests;
    let args = [num(n), ms(PROBE_LEASE), ms(KEY_TTL)];
    match shared.run::<(i64, u64, u64)>(&shared.claim, &args).await {
        Err(_) => Claim::Local,
        Ok((1, e, _)) => {
            shared.seen.store(e, Ordering::Relaxed);
            shared.last.store(e, Ordering::Relaxed);
            Claim::Fleet(e)
        }
        Ok((0, _, _)) => Claim::Refused,
        Ok((-2, e, _)) if e == shared.seen.load(Ordering::Relaxed) => Claim::Closed,
        // No record, or a closed one of another episode: this replica's own open was never
        // shared; its next poll publishes it. Meanwhile it probes alone.
        Ok(_) => Claim::Local,
    }
}

/// Counts a passed fleet probe; closes the local breaker when the fleet closed.
pub async fn pass(cell: &Arc<BreakerCell>, shared: &Shared, episode: u64) {
    let n = cell.config().half_open_requests;
    let args = [num(episode), num(n), ms(KEY_TTL)];
    let b = cell.breaker();
    match shared.run::<i64>(&shared.pass, &args).await {
        Ok(verdict @ (1 | 2)) => {
            shared.last.store(episode, Ordering::Relaxed);
            shared.seen.store(0, Ordering::Relaxed);
            let (reason, cause) = if verdict == 1 {
                (
                    format!("{n} of {n} probe(s) succeeded across replicas"),
                    Cause::ProbesPassed,
                )
            } else {
                (
                    "closed by another replica: the fleet's probes passed".to_owned(),
                    Cause::PeerClosed,
                )
            };
            if let Some(t) = b.adopt_close(Instant::now(), reason, cause) {
                cell.emit(&t);
            }
        }
        Ok(_) => {}
        Err(_) => {
            if let Some(t) = b.close_if_probes_passed(Instant::now()) {
                cell.emit(&t);
            }
        }
    }
}

/// Hands back a claimed slot whose probe will never report.
pub async fn release(shared: &Shared, episode: u64) {
    let _ = shared.run::<i64>(&shared.release, &[num(episode)]).await;
}
