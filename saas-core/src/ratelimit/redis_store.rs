//! Allowances kept in Redis, shared by every instance of a service.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use super::{Quota, RateDecision, RateKey, RateStore, StoreError};

/// GCRA in one atomic script, on Redis's own clock (microseconds), so that instances with
/// drifting clocks still share one budget.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst
if now < allow_at then
  return {0, 0, tat - now, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
local used = new_tat - now
return {1, math.floor((burst - used) / interval), used, 0}
";

/// Allowances in Redis (feature `redis`): every instance pointed at the same Redis
/// shares one budget per key. Connects lazily and reconnects after failures; a call that
/// cannot reach Redis within the timeout is a [`StoreError`], handled by the layer's
/// [`FailurePolicy`](super::FailurePolicy).
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    conn: Arc<OnceCell<ConnectionManager>>,
    script: Arc<redis::Script>,
    prefix: Arc<str>,
    timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://127.0.0.1:6379`), with keys under
    /// `prefix` (`"rl:"`). Nothing connects until the first check.
    pub fn new(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError(e.to_string()))?;
        Ok(Self {
            client,
            conn: Arc::new(OnceCell::new()),
            script: Arc::new(redis::Script::new(GCRA)),
            prefix: Arc::from(prefix),
            timeout: Duration::from_millis(250),
        })
    }

    /// How long a check may wait for Redis (default 250 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn check_inner(&self, key: &RateKey, quota: Quota) -> Result<RateDecision, StoreError> {
        let conn = self
            .conn
            .get_or_try_init(|| ConnectionManager::new(self.client.clone()))
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        let interval_us = (quota.interval_nanos() / 1_000).max(1);
        let burst_us = interval_us.saturating_mul(u64::from(quota.limit()));
        let (allowed, remaining, reset_us, retry_us): (i64, i64, i64, i64) = self
            .script
            .key(format!("{}{key}", self.prefix))
            .arg(interval_us)
            .arg(burst_us)
            .invoke_async(&mut conn.clone())
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(RateDecision {
            allowed: allowed == 1,
            limit: quota.limit(),
            remaining: u32::try_from(remaining).unwrap_or(0),
            reset: us(reset_us),
            retry_after: us(retry_us),
        })
    }
}

impl RateStore for RedisStore {
    async fn check(&self, key: &RateKey, quota: Quota) -> Result<RateDecision, StoreError> {
        match tokio::time::timeout(self.timeout, self.check_inner(key, quota)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError(format!("no answer from Redis within {:?}", self.timeout))),
        }
    }
}
