//! Unleash's client payloads: the features document an Unleash server sends to SDKs
//! (`GET /api/client/features`) and its delta stream (`/api/client/delta`).
//!
//! [`ClientFeatures::into_definitions`] reads one into saas-flags definitions for an
//! environment; [`ClientFeatures::from_definitions`] writes definitions back out, turning
//! tenant overrides and plan targeting into ordinary Unleash constraints on `tenantId`
//! and `plan` so that any Unleash SDK evaluates them the same way.

use serde::{Deserialize, Serialize};

use crate::compile::{FlagSet, FlagSetBuilder, Mode, Versioned};
use crate::error::FlagError;
use crate::model::{Constraint, Dependency, EnvironmentConfig, FlagDefinition, FlagKind, Segment, Strategy, Variant};

/// One feature in Unleash's client payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientFeature {
    /// Its name.
    pub name: String,
    /// Its type (`release`, …).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether it is on in the payload's environment.
    pub enabled: bool,
    /// Strategies.
    #[serde(default, deserialize_with = "null_default")]
    pub strategies: Vec<Strategy>,
    /// Flag-level variants.
    #[serde(default, deserialize_with = "null_default")]
    pub variants: Vec<Variant>,
    /// Parents.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub dependencies: Vec<Dependency>,
    /// Project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Impression data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impression_data: Option<bool>,
}

/// Unleash's client features payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFeatures {
    /// Format version (2).
    #[serde(default = "two")]
    pub version: u32,
    /// The features.
    pub features: Vec<ClientFeature>,
    /// Segments referenced by strategies.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub segments: Vec<Segment>,
}

fn two() -> u32 {
    2
}

/// One event of Unleash's delta stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DeltaEvent {
    /// Replace everything.
    #[serde(rename_all = "camelCase")]
    Hydration {
        /// Event id.
        event_id: u64,
        /// All features.
        features: Vec<ClientFeature>,
        /// All segments.
        #[serde(default, deserialize_with = "null_default")]
        segments: Vec<Segment>,
    },
    /// Add or replace one feature.
    #[serde(rename_all = "camelCase")]
    FeatureUpdated {
        /// Event id.
        event_id: u64,
        /// The feature.
        feature: ClientFeature,
    },
    /// Remove one feature.
    #[serde(rename_all = "camelCase")]
    FeatureRemoved {
        /// Event id.
        event_id: u64,
        /// Its name.
        feature_name: String,
        /// Its project.
        #[serde(default)]
        project: Option<String>,
    },
    /// Add or replace one segment.
    #[serde(rename_all = "camelCase")]
    SegmentUpdated {
        /// Event id.
        event_id: u64,
        /// The segment.
        segment: Segment,
    },
    /// Remove one segment.
    #[serde(rename_all = "camelCase")]
    SegmentRemoved {
        /// Event id.
        event_id: u64,
        /// Its id.
        segment_id: i32,
    },
}

/// A batch of delta events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFeaturesDelta {
    /// The events, oldest first.
    pub events: Vec<DeltaEvent>,
}

impl ClientFeatures {
    /// An empty payload.
    pub fn empty() -> Self {
        ClientFeatures {
            version: 2,
            features: Vec::new(),
            segments: Vec::new(),
        }
    }

    /// Reads a payload from JSON.
    pub fn from_json(json: &[u8]) -> Result<Self, FlagError> {
        serde_json::from_slice(json).map_err(|e| FlagError::Payload(e.to_string()))
    }

    /// Applies delta events in order (a hydration replaces everything).
    pub fn apply(&mut self, delta: &ClientFeaturesDelta) {
        for e in &delta.events {
            match e {
                DeltaEvent::Hydration { features, segments, .. } => {
                    self.features = features.clone();
                    self.segments = segments.clone();
                }
                DeltaEvent::FeatureUpdated { feature, .. } => {
                    match self.features.iter_mut().find(|f| f.name == feature.name) {
                        Some(f) => *f = feature.clone(),
                        None => self.features.push(feature.clone()),
                    }
                }
                DeltaEvent::FeatureRemoved { feature_name, .. } => self.features.retain(|f| &f.name != feature_name),
                DeltaEvent::SegmentUpdated { segment, .. } => {
                    match self.segments.iter_mut().find(|s| s.id == segment.id) {
                        Some(s) => *s = segment.clone(),
                        None => self.segments.push(segment.clone()),
                    }
                }
                DeltaEvent::SegmentRemoved { segment_id, .. } => self.segments.retain(|s| s.id != *segment_id),
            }
        }
    }

    /// The features as saas-flags definitions in `environment`, and the segments.
    pub fn into_definitions(self, environment: &str) -> (Vec<FlagDefinition>, Vec<Segment>) {
        let defs = self
            .features
            .into_iter()
            .map(|f| {
                let mut d = FlagDefinition::new(f.name);
                d.kind = f.kind.as_deref().and_then(FlagKind::parse).unwrap_or_default();
                d.description = f.description;
                d.project = f.project;
                d.variants = f.variants;
                d.dependencies = f.dependencies;
                d.impression_data = f.impression_data.unwrap_or(false);
                d.environments.insert(
                    environment.to_owned(),
                    EnvironmentConfig {
                        enabled: f.enabled,
                        strategies: f.strategies,
                    },
                );
                d
            })
            .collect();
        (defs, self.segments)
    }

    /// Compiles the payload for evaluation, leniently (as an Unleash SDK would).
    pub fn compile(self) -> FlagSet {
        const ENV: &str = "unleash";
        let (defs, segments) = self.into_definitions(ENV);
        let built = FlagSetBuilder::new(ENV)
            .mode(Mode::Lenient)
            .segments(segments)
            .flags(defs.into_iter().map(|definition| Versioned { definition, version: 1 }))
            .build();
        // Lenient compilation does not fail.
        built.unwrap_or_else(|_| FlagSet::empty(ENV))
    }

    /// The payload an Unleash SDK needs to evaluate `definitions` in `environment`
    /// exactly as saas-flags does. Tenant overrides become a leading `default` strategy
    /// constrained to `tenantId IN [forced-on tenants]` and a `tenantId NOT_IN
    /// [forced-off tenants]` constraint on every other strategy; plans become a
    /// `plan IN [plans]` constraint.
    pub fn from_definitions<'a>(
        definitions: impl IntoIterator<Item = &'a FlagDefinition>,
        segments: &[Segment],
        environment: &str,
    ) -> ClientFeatures {
        let features = definitions.into_iter().map(|d| export(d, environment)).collect();
        ClientFeatures {
            version: 2,
            features,
            segments: segments.to_vec(),
        }
    }
}

fn export(d: &FlagDefinition, environment: &str) -> ClientFeature {
    let env = d.environments.get(environment);
    let mut strategies = env.map(|e| e.strategies.clone()).unwrap_or_default();
    let on: Vec<String> = d
        .tenant_overrides
        .iter()
        .filter(|(_, on)| **on)
        .map(|(t, _)| t.to_string())
        .collect();
    let off: Vec<String> = d
        .tenant_overrides
        .iter()
        .filter(|(_, on)| !**on)
        .map(|(t, _)| t.to_string())
        .collect();
    if !d.plans.is_empty() || !d.tenant_overrides.is_empty() {
        if strategies.is_empty() {
            strategies.push(Strategy::new("default"));
        }
        for s in &mut strategies {
            if !off.is_empty() {
                s.constraints
                    .push(Constraint::new("tenantId", "NOT_IN", off.iter().cloned()));
            }
            if !d.plans.is_empty() {
                s.constraints
                    .push(Constraint::new("plan", "IN", d.plans.iter().cloned()));
            }
        }
        if !on.is_empty() {
            strategies.insert(
                0,
                Strategy::new("default").constraint(Constraint::new("tenantId", "IN", on)),
            );
        }
    }
    ClientFeature {
        name: d.name.clone(),
        kind: Some(d.kind.as_str().to_owned()),
        description: d.description.clone(),
        enabled: env.is_some_and(|e| e.enabled),
        strategies,
        variants: d.variants.clone(),
        dependencies: d.dependencies.clone(),
        project: d.project.clone(),
        impression_data: d.impression_data.then_some(true),
    }
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

pub mod spec {
    //! Runs the test files of Unleash's client specification
    //! (<https://github.com/Unleash/client-specification>, also published on npm as
    //! `@unleash/client-specification`) against saas-flags.

    use std::collections::BTreeMap;
    use std::path::Path;

    use serde::Deserialize;

    use super::{ClientFeatures, ClientFeaturesDelta};
    use crate::context::Context;
    use crate::model::Payload;

    /// An Unleash SDK context as the specification writes it.
    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct SpecContext {
        /// `userId`
        pub user_id: Option<String>,
        /// `sessionId`
        pub session_id: Option<String>,
        /// `environment`
        pub environment: Option<String>,
        /// `appName`
        pub app_name: Option<String>,
        /// `currentTime`
        pub current_time: Option<String>,
        /// `remoteAddress`
        pub remote_address: Option<String>,
        /// Custom properties.
        #[serde(default)]
        pub properties: BTreeMap<String, serde_json::Value>,
    }

    impl SpecContext {
        /// The saas-flags context with the same values.
        pub fn to_context(&self) -> Context {
            let mut c = Context::new();
            let set = |c: Context, f: fn(Context, String) -> Context, v: &Option<String>| match v {
                Some(v) => f(c, v.clone()),
                None => c,
            };
            c = set(c, |c, v| c.user_id(v), &self.user_id);
            c = set(c, |c, v| c.session_id(v), &self.session_id);
            c = set(c, |c, v| c.environment(v), &self.environment);
            c = set(c, |c, v| c.app_name(v), &self.app_name);
            c = set(c, |c, v| c.current_time(v), &self.current_time);
            c = set(c, |c, v| c.remote_address(v), &self.remote_address);
            for (k, v) in &self.properties {
                match v {
                    serde_json::Value::String(s) => c.set_property(k, s.clone()),
                    serde_json::Value::Null => {}
                    other => c.set_property(k, other.to_string()),
                }
            }
            c
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    enum State {
        Features(ClientFeatures),
        Delta(ClientFeaturesDelta),
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct EnabledTest {
        description: String,
        #[serde(default)]
        context: SpecContext,
        toggle_name: String,
        expected_result: bool,
    }

    #[derive(Debug, Deserialize)]
    struct ExpectedVariant {
        name: String,
        #[serde(default)]
        payload: Option<Payload>,
        enabled: bool,
        #[serde(default)]
        feature_enabled: Option<bool>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct VariantTest {
        description: String,
        #[serde(default)]
        context: SpecContext,
        toggle_name: String,
        expected_result: ExpectedVariant,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct SpecFile {
        name: String,
        state: State,
        #[serde(default)]
        tests: Vec<EnabledTest>,
        #[serde(default)]
        variant_tests: Vec<VariantTest>,
    }

    /// The outcome of one specification file.
    #[derive(Debug, Clone, Default)]
    pub struct FileReport {
        /// The file's `name`.
        pub name: String,
        /// Tests that passed.
        pub passed: usize,
        /// Descriptions of tests that failed, with what was expected and what came out.
        pub failures: Vec<String>,
    }

    /// Runs one specification file.
    pub fn run_file(path: &Path) -> Result<FileReport, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: SpecFile = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let features = match file.state {
            State::Features(f) => f,
            State::Delta(d) => {
                let mut f = ClientFeatures::empty();
                f.apply(&d);
                f
            }
        };
        let set = features.compile();
        let mut report = FileReport {
            name: file.name,
            ..FileReport::default()
        };
        for t in &file.tests {
            let got = set.is_enabled(&t.toggle_name, &t.context.to_context());
            if got == t.expected_result {
                report.passed += 1;
            } else {
                report
                    .failures
                    .push(format!("{}: expected {}, got {got}", t.description, t.expected_result));
            }
        }
        for t in &file.variant_tests {
            let got = set.variant(&t.toggle_name, &t.context.to_context());
            let want = &t.expected_result;
            let ok = got.name == want.name
                && got.enabled == want.enabled
                && got.payload == want.payload.as_ref()
                && want.feature_enabled.is_none_or(|f| f == got.feature_enabled);
            if ok {
                report.passed += 1;
            } else {
                report.failures.push(format!(
                    "{}: expected {} (enabled {}, feature {:?}, payload {:?}), got {} (enabled {}, feature {}, payload {:?})",
                    t.description,
                    want.name,
                    want.enabled,
                    want.feature_enabled,
                    want.payload,
                    got.name,
                    got.enabled,
                    got.feature_enabled,
                    got.payload
                ));
            }
        }
        Ok(report)
    }

    /// The specification files in `dir`, in the order of its `index.json` when there is one.
    pub fn files(dir: &Path) -> Result<Vec<std::path::PathBuf>, String> {
        let index = dir.join("index.json");
        if index.exists() {
            let text = std::fs::read(&index).map_err(|e| format!("{}: {e}", index.display()))?;
            let names: Vec<String> = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", index.display()))?;
            return Ok(names.into_iter().map(|n| dir.join(n)).collect());
        }
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        out.sort();
        Ok(out)
    }
}

#[cfg(feature = "unleash-client")]
pub use follow::Follower;

#[cfg(feature = "unleash-client")]
mod follow {
    use std::sync::Arc;
    use std::time::Duration;

    use http::StatusCode;
    use http::header::{AUTHORIZATION, ETAG, IF_NONE_MATCH};

    use super::ClientFeatures;
    use crate::engine::Engine;
    use crate::error::FlagError;

    /// Follows an Unleash server: polls its client API (`GET /api/client/features`,
    /// with the client token and `If-None-Match`) and swaps each new payload into an
    /// [`Engine`]. Feature `unleash-client`.
    #[derive(Debug, Clone)]
    pub struct Follower {
        http: reqwest::Client,
        url: String,
        token: String,
        app_name: String,
        instance_id: String,
        etag: Arc<std::sync::Mutex<Option<String>>>,
    }

    impl Follower {
        /// Follows the server at `base_url` (such as `https://unleash.example.com/api`'s
        /// parent, `https://unleash.example.com`) with a client `token`.
        pub fn new(base_url: &str, token: impl Into<String>) -> Self {
            Follower {
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap_or_else(|_| reqwest::Client::new()),
                url: format!("{}/api/client/features", base_url.trim_end_matches('/')),
                token: token.into(),
                app_name: "saas-flags".into(),
                instance_id: format!("saas-flags-{}", std::process::id()),
                etag: Arc::default(),
            }
        }

        /// The application name sent to the server.
        pub fn app_name(mut self, name: impl Into<String>) -> Self {
            self.app_name = name.into();
            self
        }

        /// Fetches once; `true` when a new payload was applied, `false` on 304.
        pub async fn poll(&self, engine: &Engine) -> Result<bool, FlagError> {
            let etag = self.etag.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut req = self
                .http
                .get(&self.url)
                .header(AUTHORIZATION, &self.token)
                .header("unleash-appname", &self.app_name)
                .header("unleash-instanceid", &self.instance_id)
                .header("unleash-client-spec", "6.1.0");
            if let Some(tag) = &etag {
                req = req.header(IF_NONE_MATCH, tag);
            }
            let res = req
                .send()
                .await
                .map_err(|e| FlagError::Payload(format!("unleash server: {e}")))?;
            match res.status() {
                StatusCode::NOT_MODIFIED => return Ok(false),
                s if s.is_success() => {}
                s => return Err(FlagError::Payload(format!("unleash server answered {s}"))),
            }
            let tag = res.headers().get(ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let body = res
                .bytes()
                .await
                .map_err(|e| FlagError::Payload(format!("unleash server: {e}")))?;
            let features = ClientFeatures::from_json(&body)?;
            engine.apply_unleash(features);
            for w in engine.load().warnings() {
                tracing::warn!(flag = %w.flag, message = %w.message, "unleash flag is off: it does not compile");
            }
            *self.etag.lock().unwrap_or_else(|e| e.into_inner()) = tag;
            Ok(true)
        }

        /// Polls every `every` until the engine is dropped; failures are logged and the
        /// last payload stays in use.
        pub fn spawn(self, engine: Arc<Engine>, every: Duration) -> tokio::task::JoinHandle<()> {
            let weak = Arc::downgrade(&engine);
            drop(engine);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(engine) = weak.upgrade() else { return };
                    if let Err(e) = self.poll(&engine).await {
                        tracing::warn!(error = %e, "polling the unleash server failed; keeping the last flags");
                    }
                }
            })
        }
    }
}
