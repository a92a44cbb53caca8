//! # saas-events
//!
//! Everything that happens after the response, reliably: a transactional outbox in
//! PostgreSQL (no extra server), workers, outbound webhooks, email, and adapters that
//! carry events to other services.
//!
//! | piece | what it does |
//! |---|---|
//! | [`publish`], [`Publish`] | an [`Event`] becomes an outbox row in the caller's transaction (`TenantTx`: the tenant travels with it) |
//! | [`Worker`] | claims batches fairly across tenants (`FOR UPDATE SKIP LOCKED`), wakes on `LISTEN/NOTIFY`, retries with backoff and jitter, dead-letters, runs schedules (cron), keeps per-key order, priorities, unique jobs, rescues jobs of dead workers, shuts down gracefully, reports metrics and heartbeats |
//! | [`JobContext`] | the job's id (the idempotency key), tenant, attempt, and a `TenantTx` for its tenant only |
//! | [`idempotency`] | act once per event: a receipt in the handler's own transaction |
//! | [`Jobs`] | dead letters, replay, pruning, depth |
//! | [`webhook`] | endpoints, Standard Webhooks signatures, the retry schedule, delivery log, SSRF guard, a receiver's [`verify`](webhook::sign::verify) |
//! | [`mail`] | a [`Mailer`](mail::Mailer), SMTP over lettre (feature `smtp`), templates, email as outbox jobs |
//! | [`bus`] | [`Relay`](bus::Relay) to Redis Streams (feature `redis`) or NATS JetStream (feature `nats`) |
//!
//! ## Publish with the business write, handle after the response
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::time::Duration;
//! use saas_events::{Event, JobContext, Worker, publish};
//! use saas_tenancy::{PlatformPool, TenantTx};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct ProjectDeleted { name: String }
//! impl Event for ProjectDeleted {
//!     const KIND: &'static str = "project.deleted";
//! }
//!
//! let db = saas_core::testkit::TestDb::new(&[&saas_core::MIGRATOR, &saas_tenancy::MIGRATOR, &saas_events::MIGRATOR]).await.unwrap();
//! let tenant = saas_core::TenantId::new();
//!
//! // In the request: the event commits with the write, or not at all.
//! let mut tx = TenantTx::begin(db.app(), tenant).await.unwrap();
//! publish(&mut tx, &ProjectDeleted { name: "apollo".into() }).await.unwrap();
//! tx.commit().await.unwrap();
//!
//! // In the worker process: handlers get the job's tenant and a transaction scoped to it.
//! let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
//! let workers = Worker::builder(PlatformPool::new(db.platform().clone()))
//!     .app_pool(db.app().clone())
//!     .handle(move |ctx: JobContext, e: ProjectDeleted| {
//!         let done_tx = done_tx.clone();
//!         async move {
//!             let mut tx = ctx.tenant_tx().await?;
//!             if saas_events::idempotency::once(&mut tx, &ctx, "cleanup").await? {
//!                 // … the side effect, once per event …
//!             }
//!             tx.commit().await?;
//!             let _ = done_tx.send((ctx.tenant(), e.name));
//!             Ok(())
//!         }
//!     })
//!     .start()
//!     .await
//!     .unwrap();
//! assert_eq!(done.recv().await, Some((Some(tenant), "apollo".to_owned())));
//! workers.shutdown(Duration::from_secs(5)).await;
//! # });
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bus;
pub mod error;
pub mod event;
pub mod idempotency;
pub mod job;
pub mod jobs;
pub mod mail;
#[cfg(feature = "testkit")]
pub mod testkit;
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
