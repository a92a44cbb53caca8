//! Publishing: an event becomes an outbox row in the caller's transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgConnection;

use crate::error::PublishError;
use crate::job::JobId;

/// The notification channel publishes announce their queue on.
pub const CHANNEL: &str = "saas_events";

/// The payload of a [`CHANNEL`] notification (JSON): work arrived in `queue`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Wake {
    pub(crate) queue: String,
}

/// Default attempts before a job is dead-lettered.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 10;

/// Something that happened, or work to do later. Serialised with serde into the outbox.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct ProjectDeleted { id: uuid::Uuid }
/// impl saas_events::Event for ProjectDeleted {
///     const KIND: &'static str = "project.deleted";
/// }
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Its kind: a stable name handlers are registered under (`project.deleted`).
    const KIND: &'static str;
    /// The queue it goes to unless [`Publish::queue`] says otherwise.
    const QUEUE: &'static str = "default";
}

/// How to publish: when, how urgently, how often to try, and what it must not overlap with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publish {
    queue: Option<String>,
    run_at: Option<DateTime<Utc>>,
    priority: i16,
    max_attempts: Option<i32>,
    unique_key: Option<String>,
    order_key: Option<String>,
}

impl Publish {
    /// Defaults: the event's queue, now, priority 0, [`DEFAULT_MAX_ATTEMPTS`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Another queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Not before `at` (a scheduled job).
    pub fn at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Higher runs first within a tenant (default 0).
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    /// Attempts before dead-lettering (1–1000).
    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// While a job with this key is pending or running in the queue for the same tenant
    /// (or platform), publishing another is a no-op ([`publish_with`] returns `None`).
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Jobs with the same key run one at a time, in publishing order (for example
    /// `"{tenant}:{aggregate id}"`). Publishing order is the order of the jobs' UUIDv7
    /// ids: exact within a process, and across servers as exact as their clocks agree.
    pub fn ordered_by(mut self, key: impl Into<String>) -> Self {
        self.order_key = Some(key.into());
        self
    }
}

/// Publishes `event` in the transaction `conn` belongs to (a `TenantTx` — the event
/// carries its tenant — or a `SystemTx` for a platform-level event). It commits with
/// the business write or not at all; workers are woken on commit.
pub async fn publish<E: Event>(conn: &mut PgConnection, event: &E) -> Result<JobId, PublishError> {
    publish_with(conn, event, &Publish::new())
        .await?
        .ok_or(PublishError::Invalid("a job without a unique key was not inserted"))
}

/// [`publish`] with options; `None` when a job with the same unique key is pending or running.
pub async fn publish_with<E: Event>(
    conn: &mut PgConnection,
    event: &E,
    opts: &Publish,
) -> Result<Option<JobId>, PublishError> {
    let payload = serde_json::to_value(event).map_err(PublishError::Serialize)?;
    let queue = opts.queue.as_deref().unwrap_or(E::QUEUE);
    validate(queue, E::KIND, opts)?;
    let id = JobId::new();
    let row: Option<(uuid::Uuid,)> = sqlx::query_as(
        "WITH ins AS ( \
           INSERT INTO saas.jobs (id, queue, kind, tenant_id, payload, priority, run_at, created_at, max_attempts, unique_key, order_key) \
           VALUES ($1, $2, $3, saas.current_tenant_id(), $4, $5, coalesce($6, now()), now(), $7, $8, $9) \
           ON CONFLICT (tenant_id, queue, unique_key) WHERE unique_key IS NOT NULL AND state IN ('pending', 'running') DO NOTHING \
           RETURNING id) \
         SELECT id FROM ins, pg_notify($10, json_build_object('queue', $2::text)::text)",
    )
    .bind(id)
    .bind(queue)
    .bind(E::KIND)
    .bind(&payload)
    .bind(opts.priority)
    .bind(opts.run_at)
    .bind(opts.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS))
    .bind(&opts.unique_key)
    .bind(&opts.order_key)
    .bind(CHANNEL)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|_| id))
}

/// Publishes many events of one kind in one statement (same options for all, no unique key).
pub async fn publish_batch<E: Event>(
    conn: &mut PgConnection,
    events: &[E],
    opts: &Publish,
) -> Result<Vec<JobId>, PublishError> {
    if opts.unique_key.is_some() {
        return Err(PublishError::Invalid("a batch cannot share one unique key"));
    }
    let queue = opts.queue.as_deref().unwrap_or(E::QUEUE);
    validate(queue, E::KIND, opts)?;
    let ids: Vec<JobId> = events.iter().map(|_| JobId::new()).collect();
    let payloads = events
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(PublishError::Serialize)?;
    sqlx::query(
        "WITH ins AS ( \
           INSERT INTO saas.jobs (id, queue, kind, tenant_id, payload, priority, run_at, created_at, max_attempts, order_key) \
           SELECT i, $2, $3, saas.current_tenant_id(), p, $5, coalesce($6, now()), now(), $7, $8 \
           FROM unnest($1::uuid[], $4::jsonb[]) AS u(i, p) RETURNING 1) \
         SELECT count(*), pg_notify($9, json_build_object('queue', $2::text)::text) FROM ins",
    )
    .bind(&ids)
    .bind(queue)
    .bind(E::KIND)
    .bind(&payloads)
    .bind(opts.priority)
    .bind(opts.run_at)
    .bind(opts.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS))
    .bind(&opts.order_key)
    .bind(CHANNEL)
    .execute(conn)
    .await?;
    Ok(ids)
}

fn validate(queue: &str, kind: &str, opts: &Publish) -> Result<(), PublishError> {
    if queue.is_empty() || queue.len() > 64 {
        return Err(PublishError::Invalid("queue names are 1-64 bytes"));
    }
    if kind.is_empty() || kind.len() > 128 {
        return Err(PublishError::Invalid("event kinds are 1-128 bytes"));
    }
    if let Some(n) = opts.max_attempts
        && !(1..=1000).contains(&n)
    {
        return Err(PublishError::Invalid("max_attempts is 1-1000"));
    }
    if opts.unique_key.as_ref().is_some_and(|k| k.len() > 256) || opts.order_key.as_ref().is_some_and(|k| k.len() > 256)
    {
        return Err(PublishError::Invalid("unique and order keys are at most 256 bytes"));
    }
    Ok(())
}
