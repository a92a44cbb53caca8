//! How long processed events stay in the inbox.
//!
//! The inbox deduplicates deliveries by event id. Stripe retries a delivery for up to
//! three days and keeps events retrievable (and resendable from the Dashboard) for 30, so
//! processed events are kept [`DEFAULT_RETENTION_DAYS`] days and then deleted, in batches.
//! Events not yet processed are never deleted. An event resent after its row is gone is
//! stored and processed again, which is harmless: processing refetches the object.

use chrono::{DateTime, Duration, Utc};
use saas_events::{Event, JobContext, JobError, WorkerBuilder};
use saas_tenancy::PlatformPool;
use serde::{Deserialize, Serialize};

/// How long processed events are kept by default.
pub const DEFAULT_RETENTION_DAYS: i64 = 30;
const BATCH: i64 = 5_000;

/// Deletes the events processed before `now - keep`; returns how many.
pub async fn prune_inbox(platform: &PlatformPool, keep: Duration, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let before = now - keep;
    let mut total = 0;
    loop {
        let n = sqlx::query(
            "DELETE FROM saas.billing_inbox WHERE event_id IN ( \
                 SELECT event_id FROM saas.billing_inbox \
                 WHERE processed_at IS NOT NULL AND processed_at < $1 LIMIT $2)",
        )
        .bind(before)
        .bind(BATCH)
        .execute(platform.as_pool())
        .await?
        .rows_affected();
        total += n;
        if n < u64::try_from(BATCH).unwrap_or(u64::MAX) {
            break;
        }
    }
    if total > 0 {
        tracing::info!(deleted = total, before = %before, "pruned processed billing events");
    }
    Ok(total)
}

/// The scheduled job that runs [`prune_inbox`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneInbox {}

impl Event for PruneInbox {
    const KIND: &'static str = "billing.prune_inbox";
}

/// Runs [`prune_inbox`] with `keep` at every tick of `cron` (a platform job; one a tenant
/// published is refused).
pub fn schedule_pruning(
    builder: WorkerBuilder,
    cron: &str,
    platform: PlatformPool,
    keep: Duration,
) -> Result<WorkerBuilder, saas_events::JobsError> {
    Ok(builder
        .schedule("billing-prune-inbox", cron, PruneInbox::default)?
        .handle(move |ctx: JobContext, _: PruneInbox| {
            let platform = platform.clone();
            async move {
                crate::sync::platform_only(&ctx, PruneInbox::KIND)?;
                prune_inbox(&platform, keep, Utc::now())
                    .await
                    .map(drop)
                    .map_err(JobError::retry)
            }
        }))
}
