//! # saas-flags
//!
//! Feature flags with Unleash's semantics, per tenant and per plan.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod compile;
pub mod context;
pub mod engine;
pub mod error;
pub mod eval;
pub mod model;
pub mod murmur;
pub mod unleash;

pub use compile::{FlagSet, FlagSetBuilder, Mode, Versioned, Warning};
pub use context::{Context, Field};
pub use engine::Engine;
pub use error::{DefinitionError, FlagError};
pub use eval::{Evaluation, Reason, VariantReason, VariantRef, VariantResult};
pub use model::{
    Constraint, Dependency, EnvironmentConfig, FlagDefinition, FlagKind, Payload, Segment, Strategy, Variant,
};
