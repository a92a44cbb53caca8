//! [`Engine`]: the current [`FlagSet`], swapped atomically when definitions change.

use std::sync::Arc;

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
    unleash: std::sync::Mutex<Option<ClientFeatures>>,
}

impl Engine {
    /// An engine serving `set`.
    pub fn new(set: FlagSet) -> Self {
        Engine {
            set: ArcSwap::from_pointee(set),
            unleash: std::sync::Mutex::new(None),
        }
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
        self.set.load().is_enabled(name, ctx)
    }
}
