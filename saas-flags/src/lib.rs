//! # saas-flags
//!
//! Feature flags with Unleash's semantics, per tenant and per plan.
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
