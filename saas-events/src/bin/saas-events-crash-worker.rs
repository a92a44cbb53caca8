//! A worker process for saas-events' crash test (feature `testkit`): it runs jobs of kind
//! `crash.work` until it is killed. Each run records an attempt (committed at once), then
//! in the job's tenant transaction records the effect through the idempotency helper and
//! holds the transaction open a little, so that a kill lands mid-batch and mid-handler.
//!
//! Environment: `APP_URL`, `PLATFORM_URL` (PostgreSQL URLs for the application and
//! platform roles), `VISIBILITY_MS`.

use std::time::Duration;

use saas_events::{Event, JobContext, JobError, Worker, idempotency};
use saas_tenancy::PlatformPool;
use serde::{Deserialize, Serialize};

/// The crash test's event.
#[derive(Serialize, Deserialize)]
struct Work {
    n: u32,
}

impl Event for Work {
    const KIND: &'static str = "crash.work";
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = sqlx::PgPool::connect(&std::env::var("APP_URL")?).await?;
    let platform = sqlx::PgPool::connect(&std::env::var("PLATFORM_URL")?).await?;
    let visibility = Duration::from_millis(std::env::var("VISIBILITY_MS")?.parse()?);
    let attempts = app.clone();
    let _workers = Worker::builder(PlatformPool::new(platform))
        .app_pool(app)
        .visibility_timeout(visibility)
        .batch(20)
        .concurrency(4)
        .handle(move |ctx: JobContext, w: Work| {
            let attempts = attempts.clone();
            async move { handle(attempts, ctx, w).await }
        })
        .start()
        .await?;
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}

async fn handle(attempts: sqlx::PgPool, ctx: JobContext, w: Work) -> Result<(), JobError> {
    let tenant = ctx.tenant().ok_or_else(|| JobError::fatal("tenant job expected"))?;
    let mut tx = saas_tenancy::TenantTx::begin(&attempts, tenant).await?;
    sqlx::query("INSERT INTO crash_attempts (tenant_id, job_id) VALUES (saas.current_tenant_id(), $1)")
        .bind(ctx.id())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut tx = ctx.tenant_tx().await?;
    if idempotency::once(&mut tx, &ctx, "crash-effect").await? {
        sqlx::query("INSERT INTO crash_effects (tenant_id, job_id, n) VALUES (saas.current_tenant_id(), $1, $2)")
            .bind(ctx.id())
            .bind(i64::from(w.n))
            .execute(&mut *tx)
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    tx.commit().await?;
    Ok(())
}
