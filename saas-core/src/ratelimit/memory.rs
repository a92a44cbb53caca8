//! Allowances kept in this process.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::{Quota, RateDecision, RateKey, RateStore, StoreError, gcra};

const SHARDS: usize = 32;
/// A shard sweeps out finished allowances when it grows past this many keys.
const SWEEP_AT: usize = 4096;

/// In-process allowances: sharded maps of each key's theoretical arrival time.
///
/// Each instance of a service has its own; use the Redis store to share one budget.
/// Keys whose allowance is full again are swept out as shards grow, so memory follows
/// the number of recently active keys.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    epoch: Instant,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<RateKey, u64>>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                hasher: RandomState::new(),
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            }),
        }
    }

    /// Checks `key` at `now` nanoseconds after this store's creation (for tests that
    /// control time; [`RateStore::check`] uses the monotonic clock).
    pub fn check_at(&self, key: &RateKey, quota: Quota, now: u64) -> RateDecision {
        let shard = &self.inner.shards[(self.inner.hasher.hash_one(key) as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let (decision, new_tat) = gcra(now, map.get(key).copied(), quota);
        if let Some(t) = new_tat {
            if map.len() >= SWEEP_AT && !map.contains_key(key) {
                map.retain(|_, tat| *tat > now);
            }
            map.insert(key.clone(), t);
        }
        decision
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RateStore for MemoryStore {
    async fn check(&self, key: &RateKey, quota: Quota) -> Result<RateDecision, StoreError> {
        let now = self.inner.epoch.elapsed().as_nanos() as u64;
        Ok(self.check_at(key, quota, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TenantId;
    use std::time::Duration;

    #[test]
    fn keys_are_independent_and_swept() {
        let s = MemoryStore::new();
        let q = Quota::per(2, Duration::from_secs(1));
        let (a, b) = (RateKey::Tenant(TenantId::new()), RateKey::Tenant(TenantId::new()));
        assert!(s.check_at(&a, q, 0).allowed);
        assert!(s.check_at(&a, q, 0).allowed);
        assert!(!s.check_at(&a, q, 0).allowed);
        assert!(s.check_at(&b, q, 0).allowed);
        // One new key per millisecond: allowances older than a second are full again
        // and swept, so the map stays near its sweep threshold.
        for i in 0..(SHARDS * SWEEP_AT * 2) as u64 {
            s.check_at(
                &RateKey::Custom(Arc::from(i.to_string())),
                q,
                5_000_000_000 + i * 1_000_000,
            );
        }
        assert!(s.len() < SHARDS * SWEEP_AT + SHARDS, "{}", s.len());
    }
}
