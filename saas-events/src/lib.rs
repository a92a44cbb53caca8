//! # saas-events
//!
//! Events and background work for saas-kit.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bus;
pub mod error;
pub mod event;
pub mod idempotency;
pub mod job;
pub mod jobs;
pub mod mail;
pub mod webhook;
pub mod worker;

pub use error::{JobsError, PublishError};
pub use event::{Event, Publish, publish, publish_batch, publish_with};
pub use job::{Handler, JobContext, JobError, JobId};
pub use jobs::{DeadJob, Depth, Jobs};
pub use webhook::Webhooks;
pub use worker::{Backoff, Worker, WorkerBuilder, WorkerHandle};

/// The migrations of saas-events (history table `saas.events_migrations`); run after
/// saas-core's and saas-tenancy's.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();
