//! [`Engine`]: the current [`FlagSet`], swapped atomically when definitions change.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwap, Guard};

use crate::compile::FlagSet;
use crate::context::Context;
use crate::unleash::{ClientFeatures, ClientFeaturesDelta};

/// Holds the current compiled flags. Readers never wait: [`Engine::load`] is a few
/// atomic operations, and a writer replaces the whole set at once.
///
/// ```
/// use saas_flags::{Context, Engine, unleash::ClientFeatures};
/// let payload = br#"{"version":2,"features":[{"name":"beta","enabled":true,"strategies":[
///     {"name":"flexibleRollout","parameters":{"rollout":"100","stickiness":"default","groupId":"beta"}}]}]}"#;
/// let engine = Engine::from_unleash(ClientFeatures::from_json(payload).unwrap());
/// assert!(engine.is_enabled("beta", &Context::new().user_id("7")));
/// assert!(!engine.is_enabled("gamma", &Context::new()));
/// ```
#[derive(Debug)]
pub struct Engine {
    set: ArcSwap<FlagSet>,
    /// Bumped after every swap, so that each thread knows when its copy is stale.
    version: AtomicU64,
    /// Unique per engine for the process's lifetime (an address could be reused).
    id: u64,
    unleash: std::sync::Mutex<Option<ClientFeatures>>,
}

thread_local! {
    /// This thread's copy of the newest set it saw: (engine, version, set). An evaluation
    /// compares one atomic version with it and touches no shared reference count (an
    /// `ArcSwap` load costs about 10 ns; this about 1).
    static CURRENT: CurrentCell = const { RefCell::new(None) };
}

/// A thread's copy: (engine id, version, set).
type CurrentCell = RefCell<Option<(u64, u64, Arc<FlagSet>)>>;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Engine {
    /// An engine serving `set`.
    pub fn new(set: FlagSet) -> Self {
        Engine {
            set: ArcSwap::from_pointee(set),
            version: AtomicU64::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            unleash: std::sync::Mutex::new(None),
        }
    }

    /// Runs `f` on the current set through this thread's copy, refreshed when the version
    /// moved: no lock and no reference-count traffic on the usual path. A thread keeps the
    /// last set it used alive until its next evaluation.
    #[inline(always)]
    pub fn with_current<R>(&self, f: impl FnOnce(&FlagSet) -> R) -> R {
        let version = self.version.load(Ordering::Acquire);
        CURRENT.with(|cell| self.with_cell(cell, version, f))
    }

    /// [`with_current`](Self::with_current) on this thread's copy. Kept out of line so
    /// that `with_current` is small enough for `LocalKey::with` to be inlined into the
    /// caller, where the thread-local's accessor is a known address rather than an
    /// indirect call.
    #[inline(never)]
    fn with_cell<R>(&self, cell: &CurrentCell, version: u64, f: impl FnOnce(&FlagSet) -> R) -> R {
        {
            let slot = cell.borrow();
            if let Some((id, v, set)) = &*slot
                && *id == self.id
                && *v == version
            {
                return f(set);
            }
        }
        self.refresh_copy(cell, version, f)
    }

    /// Replaces this thread's copy with the current set and runs `f` on it.
    #[cold]
    #[inline(never)]
    fn refresh_copy<R>(&self, cell: &CurrentCell, version: u64, f: impl FnOnce(&FlagSet) -> R) -> R {
        let set = self.set.load_full();
        let out = f(&set);
        *cell.borrow_mut() = Some((self.id, version, set));
        out
    }

    /// An engine serving an Unleash payload (compiled leniently, as an Unleash SDK would).
    pub fn from_unleash(features: ClientFeatures) -> Self {
        let engine = Engine::new(features.clone().compile());
        *engine.unleash.lock().unwrap_or_else(|e| e.into_inner()) = Some(features);
        engine
    }

    /// The current set, for a short read (the guard should not be held across `.await`).
    #[inline]
    pub fn load(&self) -> Guard<Arc<FlagSet>> {
        self.set.load()
    }

    /// The current set, to keep (a request keeps one so all its evaluations agree).
    pub fn snapshot(&self) -> Arc<FlagSet> {
        self.set.load_full()
    }

    /// Replaces the set.
    pub fn replace(&self, set: FlagSet) {
        self.set.store(Arc::new(set));
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Replaces the set with an Unleash payload.
    pub fn apply_unleash(&self, features: ClientFeatures) {
        self.replace(features.clone().compile());
        *self.unleash.lock().unwrap_or_else(|e| e.into_inner()) = Some(features);
    }

    /// Applies Unleash delta events to the last payload (a hydration event starts over).
    pub fn apply_delta(&self, delta: &ClientFeaturesDelta) {
        let mut last = self.unleash.lock().unwrap_or_else(|e| e.into_inner());
        let features = last.get_or_insert_with(ClientFeatures::empty);
        features.apply(delta);
        self.replace(features.clone().compile());
    }

    /// Whether `name` is on for `ctx` in the current set.
    #[inline]
    pub fn is_enabled(&self, name: &str, ctx: &Context) -> bool {
        self.with_current(|set| set.is_enabled(name, ctx))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn payload(enabled: bool) -> ClientFeatures {
        let json = format!(r#"{{"version":2,"features":[{{"name":"beta","enabled":{enabled},"strategies":[]}}]}}"#);
        ClientFeatures::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn a_thread_with_a_cached_set_sees_every_replacement() {
        let a = Engine::from_unleash(payload(true));
        let b = Engine::from_unleash(payload(false));
        let ctx = Context::new();
        for _ in 0..3 {
            // Two engines on one thread take turns in its cache.
            assert!(a.is_enabled("beta", &ctx));
            assert!(!b.is_enabled("beta", &ctx));
        }
        a.apply_unleash(payload(false));
        assert!(!a.is_enabled("beta", &ctx), "the cached set was used after a swap");
        b.replace(payload(true).compile());
        assert!(b.is_enabled("beta", &ctx));
    }
}
