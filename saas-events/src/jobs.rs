//! [`Jobs`]: inspecting and operating the queue — dead letters, replay, pruning, depth.

use chrono::{DateTime, Utc};
use saas_core::TenantId;
use saas_tenancy::PlatformPool;
use serde_json::Value;

use crate::error::JobsError;
use crate::job::JobId;

/// A dead-lettered job.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DeadJob {
    /// Its id.
    pub id: JobId,
    /// Queue.
    pub queue: String,
    /// Event kind.
    pub kind: String,
    /// Tenant, if any.
    #[sqlx(rename = "tenant_id")]
    pub tenant: Option<TenantId>,
    /// The event.
    pub payload: Value,
    /// Attempts made.
    pub attempts: i32,
    /// The last error.
    pub last_error: Option<String>,
    /// When it died.
    #[sqlx(rename = "finished_at")]
    pub died_at: Option<DateTime<Utc>>,
}

/// Pending jobs of one queue and tenant.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Depth {
    /// Queue.
    pub queue: String,
    /// Tenant (`None`: platform-level).
    #[sqlx(rename = "tenant_id")]
    pub tenant: Option<TenantId>,
    /// Pending jobs.
    pub pending: i64,
}

/// Queue operations for operators (platform role).
#[derive(Debug, Clone)]
pub struct Jobs {
    pool: PlatformPool,
}

impl Jobs {
    /// Operations through the platform pool.
    pub fn new(pool: PlatformPool) -> Self {
        Jobs { pool }
    }

    /// Dead-lettered jobs of `queue`, newest first.
    pub async fn dead(&self, queue: &str, limit: i64) -> Result<Vec<DeadJob>, JobsError> {
        Ok(sqlx::query_as(
            "SELECT id, queue, kind, tenant_id, payload, attempts, last_error, finished_at FROM saas.jobs \
             WHERE queue = $1 AND state = 'dead' ORDER BY finished_at DESC NULLS LAST LIMIT $2",
        )
        .bind(queue)
        .bind(limit)
        .fetch_all(self.pool.as_pool())
        .await?)
    }

    /// Puts a dead job back in its queue with its attempts reset. Job ids are unique per
    /// tenant, so the job is named by both (`tenant` `None`: a platform job), as
    /// [`DeadJob`] gives them.
    pub async fn replay(&self, tenant: Option<TenantId>, id: JobId) -> Result<(), JobsError> {
        let queue: Option<String> = sqlx::query_scalar(
            "UPDATE saas.jobs SET state = 'pending', attempts = 0, run_at = now(), finished_at = NULL \
             WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2 AND state = 'dead' RETURNING queue",
        )
        .bind(id)
        .bind(tenant)
        .fetch_optional(self.pool.as_pool())
        .await?;
        let Some(queue) = queue else {
            return Err(JobsError::NotFound);
        };
        let mut conn = self.pool.as_pool().acquire().await?;
        saas_core::notify::send(&mut conn, crate::event::CHANNEL, &crate::event::Wake { queue }).await?;
        Ok(())
    }

    /// Deletes the record of jobs finished before `before`, `batch` rows per statement;
    /// returns how many.
    pub async fn prune(&self, before: DateTime<Utc>, batch: i64) -> Result<u64, JobsError> {
        let mut total = 0;
        loop {
            let r = sqlx::query(
                "DELETE FROM saas.jobs_done WHERE ctid = ANY(ARRAY(SELECT ctid FROM saas.jobs_done WHERE finished_at < $1 LIMIT $2))",
            )
            .bind(before)
            .bind(batch.max(1))
            .execute(self.pool.as_pool())
            .await?;
            total += r.rows_affected();
            if r.rows_affected() < batch.max(1) as u64 {
                return Ok(total);
            }
        }
    }

    /// Pending jobs per queue and tenant.
    pub async fn depth(&self) -> Result<Vec<Depth>, JobsError> {
        Ok(sqlx::query_as(
            "SELECT queue, tenant_id, count(*) AS pending FROM saas.jobs WHERE state = 'pending' \
             GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(self.pool.as_pool())
        .await?)
    }

    /// Rescues running jobs past their visibility timeout now (workers do it periodically).
    pub async fn rescue_expired(&self) -> Result<u64, JobsError> {
        Ok(crate::worker::rescue(self.pool.as_pool()).await?)
    }

    /// A job's state (`pending`, `running`, `dead`, or `done` while its record is kept)
    /// and attempts; the job is named by its tenant (`None`: a platform job) and id.
    pub async fn state(&self, tenant: Option<TenantId>, id: JobId) -> Result<(String, i32), JobsError> {
        let r: Option<(String, i32)> = sqlx::query_as(
            "SELECT state, attempts FROM saas.jobs WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2 \
             UNION ALL SELECT 'done', attempts FROM saas.jobs_done WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2 LIMIT 1",
        )
        .bind(id)
        .bind(tenant)
        .fetch_optional(self.pool.as_pool())
        .await?;
        r.ok_or(JobsError::NotFound)
    }
}
