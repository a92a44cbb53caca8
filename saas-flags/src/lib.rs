//! # saas-flags
//!
//! Feature flags with Unleash's semantics — the same strategies, constraint operators,
//! segments, variants, stickiness and dependencies, bucketing users exactly as Unleash's
//! SDKs do — plus what a multi-tenant product needs: per-tenant overrides, plan
//! targeting, audited changes that reach every process within a second, and evaluation
//! in tens of nanoseconds without locks or allocation.
//!
//! | piece | what it does |
//! |---|---|
//! | [`FlagDefinition`], [`model`] | flags, strategies, constraints, variants (Unleash's JSON) |
//! | [`FlagSetBuilder`] → [`FlagSet`] | compiles definitions for one environment; evaluates |
//! | [`Context`] | who asks: user, tenant, plan, role, address, version, properties |
//! | [`Evaluation`], [`Reason`] | value, variant, reason (OpenFeature's) and version |
//! | [`FlagStore`] | PostgreSQL + `LISTEN/NOTIFY` + snapshot file; usage counts |
//! | [`FlagAdmin`] | validated, audited changes; history; stale report; Unleash import/export |
//! | [`FlagsLayer`], [`Flags`], [`RequireFlag`] | tower layers and the per-request handle (axum extractor with `axum`) |
//! | [`Engine`], [`unleash`] | run standalone on an Unleash payload or delta stream; follow an Unleash server (`unleash-client` feature) |
//! | `openfeature` (feature) | an OpenFeature provider |
//!
//! ## Evaluate
//!
//! ```
//! use saas_core::TenantId;
//! use saas_flags::{Constraint, Context, FlagDefinition, FlagSetBuilder, Reason, Strategy, Variant};
//!
//! let beta_customer = TenantId::new();
//! let set = FlagSetBuilder::new("production")
//!     .flag(FlagDefinition::new("new-editor")
//!         .enable_in("production", vec![
//!             Strategy::rollout(25, "tenantId", "new-editor")
//!                 .constraint(Constraint::single("appVersion", "SEMVER_GT", "2.0.0")),
//!         ])
//!         .plans(["pro", "enterprise"])
//!         .tenant_override(beta_customer, true)
//!         .variant(Variant::new("compact", 500).payload("string", "compact"))
//!         .variant(Variant::new("roomy", 500).payload("string", "roomy")))
//!     .build()?;
//!
//! let ctx = Context::new().tenant(beta_customer).plan("free").user_id("u-1");
//! let e = set.evaluate("new-editor", &ctx);
//! assert!(e.enabled);
//! assert_eq!(e.reason, Reason::TenantOverride);
//! assert!(["compact", "roomy"].contains(&e.variant_name()));
//!
//! let free = Context::new().tenant(TenantId::new()).plan("free").app_version("2.1.0");
//! assert_eq!(set.evaluate("new-editor", &free).reason, Reason::PlanExcluded);
//! # Ok::<(), saas_flags::DefinitionError>(())
//! ```
//!
//! ## Store, admin and layers
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use saas_core::audit::Actor;
//! use saas_flags::{FlagAdmin, FlagDefinition, FlagStore, Context};
//! use saas_tenancy::PlatformPool;
//!
//! let db = saas_core::testkit::TestDb::new(&[&saas_core::MIGRATOR, &saas_tenancy::MIGRATOR, &saas_flags::MIGRATOR]).await.unwrap();
//! // Every process: the application role reads, and follows changes.
//! let store = FlagStore::load(db.app(), "production").await.unwrap();
//! // Staff tools: the platform role writes, validated and audited.
//! let admin = FlagAdmin::new(PlatformPool::new(db.platform().clone()));
//! admin.create(&Actor::System("seed".into()), FlagDefinition::new("dark-mode").enable_in("production", vec![])).await.unwrap();
//! store.reload().await.unwrap(); // or wait: LISTEN/NOTIFY brings it within a second
//! assert!(store.snapshot().is_enabled("dark-mode", &Context::new()));
//! // In the service: `.layer(FlagsLayer::new(store))`, then `flags.is_enabled("dark-mode")`
//! // in handlers and `.route_layer(RequireFlag::new("dark-mode"))` on unreleased routes.
//! # });
//! ```
//!
//! ## Compatibility with Unleash
//!
//! The evaluator passes every test of Unleash's client specification 6.1.0 (run it with
//! `cargo run -p saas-flags --example unleash_spec -- <specifications dir>`) and agrees
//! with `unleash-yggdrasil` on randomly generated flags and contexts. Differences: custom
//! strategies are off (strict validation refuses them); `applicationHostname` compares
//! with the host name given to the store; case-insensitive string operators lower-case
//! character by character (a final Greek sigma compares as `σ`, where Unleash's engine
//! writes `ς`); a dependency's parent is evaluated with its own name as the default
//! rollout group (Unleash's Rust engine uses the child's).
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admin;
pub mod compile;
pub mod context;
pub mod engine;
pub mod error;
pub mod eval;
pub mod layer;
pub mod model;
pub mod murmur;
#[cfg(feature = "openfeature")]
#[cfg_attr(docsrs, doc(cfg(feature = "openfeature")))]
pub mod openfeature;
pub mod store;
pub mod unleash;

pub use admin::{FlagAdmin, HistoryEntry, StaleFlag, Staleness};
pub use compile::{FlagSet, FlagSetBuilder, Mode, Versioned, Warning};
pub use context::{Context, Field};
pub use engine::Engine;
pub use error::{DefinitionError, FlagError};
pub use eval::{Evaluation, Reason, VariantReason, VariantRef, VariantResult};
pub use layer::{Flags, FlagsLayer, Plan, RequireFlag, Role};
pub use model::{
    Constraint, Dependency, EnvironmentConfig, FlagDefinition, FlagKind, Payload, Segment, Strategy, Variant,
};
pub use store::{FlagStore, FlagStoreBuilder};

/// The migrations of saas-flags (history table `saas.flags_migrations`); run after
/// saas-core's and saas-tenancy's.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();
