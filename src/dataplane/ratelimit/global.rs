//! Global limits: GCRA in Redis, so every replica together admits the configured rate.
//!
//! One Lua script per decision (one round trip, one key, so one cluster slot). It reads the
//! time from Redis itself, so replicas with skewed clocks still agree. Keys expire when their
//! bucket is full again, so Redis holds only active keys. Redis being slow or down never
//! blocks a request longer than `redis.timeout`: the decision falls back to `on_error`, is
//! counted, and the next request tries again. Connections are re-established in the
//! background.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::Script;

use crate::config::RedisConfig;
use crate::policy::rate::{OnError, RateLimitConfig, Verdict};

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

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The shared Redis client for all global limits of one process.
pub struct Redis {
    config: RedisConfig,
    connection: ArcSwapOption<ConnectionHolder>,
    script: Script,
}

struct ConnectionHolder(Connection);

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.config.url)
            .finish()
    }
}

/// Why a global decision could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GlobalError {
    /// Not connected yet.
    #[error("not connected to redis")]
    NotConnected,
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within `redis.timeout`.
    #[error("redis did not answer within the timeout")]
    Timeout,
}

impl Redis {
    /// Starts connecting in the background; decisions follow `on_error` until connected.
    pub fn start(config: RedisConfig) -> Arc<Self> {
        let redis = Arc::new(Self {
            config,
            connection: ArcSwapOption::empty(),
            script: Script::new(GCRA),
        });
        let weak = Arc::downgrade(&redis);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            let mut attempt: u32 = 0;
            loop {
                attempt += 1;
                let Some(redis) = weak.upgrade() else { return };
                match redis.connect().await {
                    Ok(connection) => {
                        redis
                            .connection
                            .store(Some(Arc::new(ConnectionHolder(connection))));
                        tracing::info!(url = %redis.config.url, "connected to redis");
                        return;
                    }
                    // Warn on attempts 1, 2, 4, 8, ...: visible, but not a line every two seconds.
                    Err(e) if attempt.is_power_of_two() => {
                        tracing::warn!(url = %redis.config.url, error = %e, attempt, "cannot connect to redis yet; rate limit decisions follow on_error")
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

    /// One GCRA decision for `key` under `limit`, within `redis.timeout`.
    pub async fn check(&self, key: &str, limit: &RateLimitConfig) -> Result<Verdict, GlobalError> {
        let holder = self
            .connection
            .load_full()
            .ok_or(GlobalError::NotConnected)?;
        let interval_us = limit.rate.interval().as_micros().max(1) as u64;
        let mut invocation = self.script.prepare_invoke();
        invocation.key(key).arg(interval_us).arg(limit.capacity());
        let call = async {
            let reply: (i64, i64, i64) = match holder.0.clone() {
                Connection::Single(mut c) => invocation.invoke_async(&mut c).await?,
                Connection::Cluster(mut c) => invocation.invoke_async(&mut c).await?,
            };
            Ok::<_, GlobalError>(reply)
        };
        let (allowed, remaining, reset_us) = tokio::time::timeout(self.config.timeout, call)
            .await
            .map_err(|_| GlobalError::Timeout)??;
        Ok(Verdict {
            allowed: allowed == 1,
            remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
            reset: Duration::from_micros(reset_us.max(0) as u64),
        })
    }
}
