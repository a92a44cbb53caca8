//! Acting once per event: delivery is at least once, so a handler whose effect must not
//! repeat records the event in the same transaction as the effect.
//!
//! ```no_run
//! # async fn demo(ctx: saas_events::JobContext) -> Result<(), saas_events::JobError> {
//! let mut tx = ctx.tenant_tx().await?;
//! if saas_events::idempotency::once(&mut tx, &ctx, "credit-points").await? {
//!     sqlx::query("UPDATE accounts SET points = points + 10").execute(&mut *tx).await?;
//! }
//! tx.commit().await?;   // the receipt and the effect commit together
//! # Ok(()) }
//! ```

use sqlx::PgConnection;

use crate::job::JobContext;

/// Records that `handler` handled this job, in `tx` (a transaction of the job's tenant);
/// `true` the first time, `false` when an earlier delivery already committed it — then
/// skip the effect. Receipts are kept per tenant under row-level security.
pub async fn once(tx: &mut PgConnection, ctx: &JobContext, handler: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO saas.job_receipts (tenant_id, job_id, handler, handled_at) \
         VALUES (saas.current_tenant_id(), $1, $2, now()) ON CONFLICT DO NOTHING",
    )
    .bind(ctx.id())
    .bind(handler)
    .execute(tx)
    .await?;
    Ok(r.rows_affected() == 1)
}
