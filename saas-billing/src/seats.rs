//! Per-seat subscriptions follow the membership count: adding or removing a member queues
//! (after 30 seconds, coalescing a burst) a recount for the tenant, and the subscription's
//! quantity is updated when it differs, with the configured proration.

use std::sync::Arc;

use saas_core::TenantId;
use saas_events::{Event, JobContext, JobError, WorkerBuilder};
use saas_tenancy::{PlatformPool, SystemTx};
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, Charge};
use crate::provider::{BillingProvider, Proration, SubscriptionChange};
use crate::sync::{SyncError, sync_subscription};

/// The job a membership change queues (a tenant job: see the migration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSeats {}

impl Event for SyncSeats {
    const KIND: &'static str = "billing.sync_seats";
}

/// Sets the quantity of `tenant`'s live per-seat subscription to its member count (at
/// least 1) if it differs; returns the new quantity, or `None` when nothing changed.
pub async fn sync_seats<P: BillingProvider + ?Sized>(
    platform: &PlatformPool,
    provider: &P,
    catalog: &Catalog,
    tenant: TenantId,
    proration: Proration,
) -> Result<Option<u64>, SyncError> {
    let mut tx = SystemTx::begin(platform, "billing-seats").await?;
    let members: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.memberships WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await?;
    let live: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT subscription_id, price_lookup_key, quantity FROM saas.billing_subscriptions \
         WHERE tenant_id = $1 AND status IN ('trialing', 'active', 'past_due')",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let seats = u64::try_from(members.max(1)).unwrap_or(1);
    for (id, price, quantity) in live {
        let per_seat = price
            .as_deref()
            .and_then(|p| catalog.price(p))
            .is_some_and(|p| *p.charge() == Charge::PerSeat);
        if !per_seat || u64::try_from(quantity).ok() == Some(seats) {
            continue;
        }
        provider
            .update_subscription(&id, &SubscriptionChange::quantity(seats).proration(proration))
            .await?;
        sync_subscription(platform, provider, &id, "seats").await?;
        tracing::info!(tenant_id = %tenant, subscription = %id, seats, "per-seat subscription follows the members");
        return Ok(Some(seats));
    }
    Ok(None)
}

/// Registers the [`SyncSeats`] handler: the job's tenant (never its payload) is recounted.
pub fn handle_seat_sync<P: BillingProvider>(
    builder: WorkerBuilder,
    platform: PlatformPool,
    provider: Arc<P>,
    catalog: Arc<Catalog>,
    proration: Proration,
) -> WorkerBuilder {
    builder.handle(move |ctx: JobContext, _: SyncSeats| {
        let (platform, provider, catalog) = (platform.clone(), Arc::clone(&provider), Arc::clone(&catalog));
        async move {
            let Some(tenant) = ctx.tenant() else {
                return Err(JobError::fatal("billing.sync_seats needs its tenant"));
            };
            sync_seats(&platform, &*provider, &catalog, tenant, proration)
                .await
                .map(drop)
                .map_err(JobError::retry)
        }
    })
}
