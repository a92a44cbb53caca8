//! What a handler receives and returns.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use saas_core::TenantId;
use saas_tenancy::{PlatformPool, SystemTx, TenantTx};
use sqlx::PgPool;

saas_core::define_id!(
    /// A job (one outbox row); also the event's idempotency key.
    pub struct JobId("job");
);

/// The job a handler runs: its identity, tenant and attempt, and the only ways to reach
/// the database from it — a [`TenantTx`] for the job's own tenant, or a [`SystemTx`] for
/// a platform-level job. A tenant job cannot open an unscoped transaction by accident.
#[derive(Clone)]
pub struct JobContext {
    pub(crate) id: JobId,
    pub(crate) kind: &'static str,
    pub(crate) queue: std::sync::Arc<str>,
    pub(crate) tenant: Option<TenantId>,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) app: Option<PgPool>,
    pub(crate) platform: PlatformPool,
}

impl JobContext {
    /// The job id, stable across retries: the key to deduplicate on.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The event kind.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The tenant the event belongs to; `None` for platform-level events.
    pub fn tenant(&self) -> Option<TenantId> {
        self.tenant
    }

    /// This attempt, from 1.
    pub fn attempt(&self) -> i32 {
        self.attempt
    }

    /// Whether this is the last attempt before the dead-letter state.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// When the event was published.
    pub fn published_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    /// A transaction scoped to the job's tenant, on the application role. An error for
    /// platform-level jobs and for workers built without an application pool.
    pub async fn tenant_tx(&self) -> Result<TenantTx, JobError> {
        let tenant = self
            .tenant
            .ok_or_else(|| JobError::fatal("a platform-level job has no tenant transaction"))?;
        let app = self
            .app
            .as_ref()
            .ok_or_else(|| JobError::fatal("the worker was built without an application pool"))?;
        TenantTx::begin(app, tenant).await.map_err(JobError::retry)
    }

    /// A platform transaction for a platform-level job (refused for tenant jobs: use
    /// [`JobContext::tenant_tx`]).
    pub async fn system_tx(&self, reason: &'static str) -> Result<SystemTx, JobError> {
        if self.tenant.is_some() {
            return Err(JobError::fatal(
                "a tenant job runs in its tenant's transaction, not a system one",
            ));
        }
        SystemTx::begin(&self.platform, reason).await.map_err(JobError::retry)
    }
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("queue", &self.queue)
            .field("tenant", &self.tenant)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Why a handler did not finish.
#[derive(Debug)]
pub enum JobError {
    /// Try again later (after `after`, else with exponential backoff), until the attempts
    /// run out.
    Retry {
        /// What went wrong.
        message: String,
        /// When to try again, if the handler knows (a `Retry-After`, say).
        after: Option<Duration>,
    },
    /// Do not try again: dead-letter now.
    Fatal {
        /// What went wrong.
        message: String,
    },
}

impl JobError {
    /// A retryable failure.
    pub fn retry(e: impl fmt::Display) -> Self {
        JobError::Retry {
            message: e.to_string(),
            after: None,
        }
    }

    /// A retryable failure, not before `after`.
    pub fn retry_after(e: impl fmt::Display, after: Duration) -> Self {
        JobError::Retry {
            message: e.to_string(),
            after: Some(after),
        }
    }

    /// A permanent failure.
    pub fn fatal(e: impl fmt::Display) -> Self {
        JobError::Fatal { message: e.to_string() }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            JobError::Retry { message, .. } | JobError::Fatal { message } => message,
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Retry { message, .. } => write!(f, "retryable: {message}"),
            JobError::Fatal { message } => write!(f, "fatal: {message}"),
        }
    }
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::retry(e)
    }
}

impl From<saas_tenancy::TenancyError> for JobError {
    fn from(e: saas_tenancy::TenancyError) -> Self {
        JobError::retry(e)
    }
}

/// Consumes events of one kind. Implemented for async closures
/// `|ctx: JobContext, event: E| async move { … }`.
pub trait Handler<E>: Send + Sync + 'static {
    /// Handles one event; delivery is at least once, so deduplicate on [`JobContext::id`]
    /// (see [`crate::idempotency`]) where acting twice would matter.
    fn handle(&self, ctx: JobContext, event: E) -> impl Future<Output = Result<(), JobError>> + Send;
}

impl<E, F, Fut> Handler<E> for F
where
    E: Send + 'static,
    F: Fn(JobContext, E) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send,
{
    fn handle(&self, ctx: JobContext, event: E) -> impl Future<Output = Result<(), JobError>> + Send {
        self(ctx, event)
    }
}
