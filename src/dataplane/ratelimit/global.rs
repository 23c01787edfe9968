//! Global limits: GCRA in Redis, so every replica together admits the configured rate.
//!
//! One Lua script per decision (one round trip, one key, so one cluster slot). It reads the
//! time from Redis itself, so replicas with skewed clocks still agree. Keys expire when their
//! bucket is full again, so Redis holds only active keys.
//!
//! Redis being slow or down never blocks a request longer than `redis.timeout`, and not even
//! that once Redis is known to be down: after [`FAIL_FAST_AFTER`] consecutive errors,
//! decisions apply `on_error` at once without asking Redis, and one background task probes it
//! with PING after a back-off (1s doubling to 30s, jittered). The first PING that answers
//! ends the fast-fail period. `backstop_redis_available` shows which state holds.
//!
//! "connected to redis" is logged only after Redis answered a PING, and every line or error
//! that shows the URL shows it redacted ([`crate::redact`]).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus::IntGauge;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::Script;

use crate::config::RedisConfig;
use crate::policy::rate::{
    jittered, next_backoff, OnError, RateLimitConfig, Verdict, PROBE_BACKOFF_MIN,
};
use crate::redact::{redact_url, scrub};

/// Consecutive Redis errors after which decisions stop asking Redis until a probe answers.
pub const FAIL_FAST_AFTER: u32 = 3;
/// Longest wait for a PING (connecting, probing).
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// KEYS[1] bucket; ARGV[1] interval in microseconds; ARGV[2] capacity (burst + 1).
/// Returns {allowed, remaining, reset_us}.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local limit = now + interval * capacity
local new_tat = tat + interval
if new_tat > limit then
  return {0, 0, new_tat - limit}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((limit - new_tat) / interval), new_tat - now}
";

/// KEYS[1] bucket; ARGV[1] interval in microseconds; ARGV[2] tolerance in microseconds (the
/// burst beyond one slot: (burst - 1) * interval); ARGV[3] earliest send, microseconds from
/// now; ARGV[4] longest wait in microseconds. GCRA that reserves: when the request's slot is
/// within the longest wait, it is taken at once (so waiters are spread at the rate, not
/// released together). Returns {granted, wait_us}.
const RESERVE: &str = r"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local not_before = now + tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < not_before then tat = not_before end
local go = tat - tolerance
if go < not_before then go = not_before end
local wait = go - now
if wait > tonumber(ARGV[4]) then
  return {0, wait}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, wait}
";

/// The answer of [`Redis::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The slot is taken: send after this wait.
    Granted(Duration),
    /// Nothing taken: the next slot is this far away, beyond the longest wait.
    Refused(Duration),
}

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    async fn ping(&self) -> Result<(), GlobalError> {
        let call = async {
            let cmd = redis::cmd("PING");
            let _: String = match self.clone() {
                Connection::Single(mut c) => cmd.query_async(&mut c).await?,
                Connection::Cluster(mut c) => cmd.query_async(&mut c).await?,
            };
            Ok::<_, GlobalError>(())
        };
        tokio::time::timeout(PING_TIMEOUT, call)
            .await
            .map_err(|_| GlobalError::Timeout)?
    }
}

/// The shared Redis client for all global limits of one process.
pub struct Redis {
    config: RedisConfig,
    connection: ArcSwapOption<ConnectionHolder>,
    script: Script,
    reserve: Script,
    /// Consecutive errors of decisions that asked Redis.
    errors: AtomicU32,
    /// Failing fast: decisions do not ask Redis; a probe is running.
    down: AtomicBool,
    available: IntGauge,
    me: Weak<Redis>,
}

struct ConnectionHolder(Connection);

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &redact_url(&self.config.url))
            .field("down", &self.down.load(Ordering::Relaxed))
            .finish()
    }
}

/// Why a global decision could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GlobalError {
    /// Not connected yet.
    #[error("not connected to redis")]
    NotConnected,
    /// Redis failed repeatedly; decisions do not ask it until a probe answers.
    #[error("redis is down; not asked until a probe answers")]
    Down,
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within `redis.timeout`.
    #[error("redis did not answer within the timeout")]
    Timeout,
}

impl GlobalError {
    /// Whether the decision failed without waiting on Redis.
    pub fn is_fast(&self) -> bool {
        matches!(self, GlobalError::NotConnected | GlobalError::Down)
    }
}

impl Redis {
    /// Starts connecting in the background; decisions follow `on_error` until Redis answers a
    /// PING. `available` is `backstop_redis_available`.
    pub fn start(config: RedisConfig, available: IntGauge) -> Arc<Self> {
        available.set(0);
        let redis = Arc::new_cyclic(|me| Self {
            config,
            connection: ArcSwapOption::empty(),
            script: Script::new(GCRA),
            reserve: Script::new(RESERVE),
            errors: AtomicU32::new(0),
            down: AtomicBool::new(false),
            available,
            me: me.clone(),
        });
        let weak = Arc::downgrade(&redis);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            let mut attempt: u32 = 0;
            loop {
                attempt += 1;
                let Some(redis) = weak.upgrade() else { return };
                let url = redact_url(&redis.config.url);
                let connected = match redis.connect().await {
                    Ok(connection) => connection.ping().await.map(|()| connection),
                    Err(e) => Err(e.into()),
                };
                match connected {
                    Ok(connection) => {
                        redis
                            .connection
                            .store(Some(Arc::new(ConnectionHolder(connection))));
                        redis.available.set(1);
                        tracing::info!(url = %url, "connected to redis");
                        return;
                    }
                    // Warn on attempts 1, 2, 4, 8, ...: visible, but not a line every two seconds.
                    Err(e) if attempt.is_power_of_two() => {
                        let error = scrub(&e.to_string(), &redis.config.url);
                        tracing::warn!(url = %url, error = %error, attempt, "cannot connect to redis yet; rate limit decisions follow on_error")
                    }
                    Err(_) => {}
                }
                drop(redis);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        redis
    }

    async fn connect(&self) -> Result<Connection, redis::RedisError> {
        if self.config.cluster {
            let client = redis::cluster::ClusterClient::new(vec![self.config.url.as_str()])?;
            return Ok(Connection::Cluster(client.get_async_connection().await?));
        }
        let client = redis::Client::open(self.config.url.as_str())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(self.config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        Ok(Connection::Single(ConnectionManager::new_lazy_with_config(
            client, config,
        )?))
    }

    /// What to do when a decision cannot be made.
    pub fn on_error(&self) -> OnError {
        self.config.on_error
    }

    /// The URL with its password hidden, for log lines.
    pub fn url(&self) -> String {
        redact_url(&self.config.url)
    }

    /// Text of `error` with the URL's password hidden, for log lines.
    pub fn describe(&self, error: &GlobalError) -> String {
        scrub(&error.to_string(), &self.config.url)
    }

    /// One GCRA decision for `key` under `limit`, within `redis.timeout`; at once
    /// [`GlobalError::Down`] while Redis is known to be down.
    pub async fn check(&self, key: &str, limit: &RateLimitConfig) -> Result<Verdict, GlobalError> {
        let interval_us = limit.rate.interval().as_micros().max(1) as u64;
        let args = [
            interval_us.to_string().into_bytes(),
            limit.capacity().to_string().into_bytes(),
        ];
        let (allowed, remaining, reset_us): (i64, i64, i64) =
            self.run(&self.script, key, &args).await?;
        Ok(Verdict {
            allowed: allowed == 1,
            remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
            reset: Duration::from_micros(reset_us.max(0) as u64),
        })
    }

    /// Reserves the next slot of `key` at one per `interval` with `burst` at once, no earlier
    /// than `not_before` from now, when it is within `max_wait` (GCRA in Redis, shared by every
    /// process using `key`). Errors as for [`Redis::run`].
    pub async fn reserve(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
        not_before: Duration,
        max_wait: Duration,
    ) -> Result<Reservation, GlobalError> {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let interval_us = us(interval).max(1);
        let tolerance_us = interval_us.saturating_mul(u64::from(burst.saturating_sub(1)));
        let args = [
            interval_us.to_string().into_bytes(),
            tolerance_us.to_string().into_bytes(),
            us(not_before).to_string().into_bytes(),
            us(max_wait).to_string().into_bytes(),
        ];
        let (granted, wait_us): (i64, i64) = self.run(&self.reserve, key, &args).await?;
        let wait = Duration::from_micros(wait_us.max(0) as u64);
        Ok(if granted == 1 {
            Reservation::Granted(wait)
        } else {
            Reservation::Refused(wait)
        })
    }

    /// Runs `script` on one key with `args` within `redis.timeout`: at once
    /// [`GlobalError::Down`] while Redis is known to be down; errors are counted towards the
    /// fail-fast period. Rate-limit decisions and the idempotency store both go through it.
    pub async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: &[Vec<u8>],
    ) -> Result<T, GlobalError> {
        if self.down.load(Ordering::Acquire) {
            return Err(GlobalError::Down);
        }
        let holder = self
            .connection
            .load_full()
            .ok_or(GlobalError::NotConnected)?;
        let mut invocation = script.prepare_invoke();
        invocation.key(key);
        for arg in args {
            invocation.arg(arg.as_slice());
        }
        let call = async {
            let reply: T = match holder.0.clone() {
                Connection::Single(mut c) => invocation.invoke_async(&mut c).await?,
                Connection::Cluster(mut c) => invocation.invoke_async(&mut c).await?,
            };
            Ok::<_, GlobalError>(reply)
        };
        let reply = tokio::time::timeout(self.config.timeout, call)
            .await
            .map_err(|_| GlobalError::Timeout)
            .and_then(|r| r);
        match reply {
            Ok(reply) => {
                if self.errors.load(Ordering::Relaxed) != 0 {
                    self.errors.store(0, Ordering::Relaxed);
                }
                Ok(reply)
            }
            Err(e) => {
                self.failed(&e, holder);
                Err(e)
            }
        }
    }

    /// Counts a failed decision; the one that reaches [`FAIL_FAST_AFTER`] starts failing fast
    /// and the probe.
    fn failed(&self, error: &GlobalError, holder: Arc<ConnectionHolder>) {
        let errors = self.errors.fetch_add(1, Ordering::AcqRel) + 1;
        if errors < FAIL_FAST_AFTER || self.down.swap(true, Ordering::AcqRel) {
            return;
        }
        self.available.set(0);
        tracing::warn!(url = %self.url(), error = %self.describe(error), errors, "redis is failing: global rate limit decisions follow on_error at once until a probe answers");
        tokio::spawn(probe(self.me.clone(), holder));
    }
}

/// PINGs Redis after a jittered, doubling back-off until it answers, then ends fast-failing.
async fn probe(redis: Weak<Redis>, holder: Arc<ConnectionHolder>) {
    let mut wait = PROBE_BACKOFF_MIN;
    loop {
        tokio::time::sleep(jittered(wait, rand::random::<f64>())).await;
        let Some(redis) = redis.upgrade() else { return };
        match holder.0.ping().await {
            Ok(()) => {
                redis.errors.store(0, Ordering::Relaxed);
                redis.down.store(false, Ordering::Release);
                redis.available.set(1);
                tracing::info!(url = %redis.url(), "redis answers again; global rate limits use it");
                return;
            }
            Err(e) => {
                tracing::debug!(url = %redis.url(), error = %redis.describe(&e), next_in = ?next_backoff(wait), "redis probe failed");
                wait = next_backoff(wait);
            }
        }
    }
}
