//! Tenants as customers: one provider customer per tenant, created lazily and recorded,
//! and a tenant whose deletion is requested stops paying.

use std::sync::Arc;

use saas_core::TenantId;
use saas_events::{Event, JobContext, JobError, WorkerBuilder};
use saas_tenancy::{PlatformPool, SystemTx};
use serde::{Deserialize, Serialize};

use crate::provider::{BillingProvider, CancelAt};
use crate::sync::{SyncError, sync_subscription};

/// The provider customer of `tenant`: the recorded one, or a new one (the tenant id in its
/// metadata, `email` as its billing address) recorded now. Concurrent callers for one
/// tenant get the same customer (the provider call is idempotent per tenant and the
/// record is taken under the tenant's lock).
pub async fn customer_for<P: BillingProvider + ?Sized>(
    platform: &PlatformPool,
    provider: &P,
    tenant: TenantId,
    email: Option<&str>,
) -> Result<String, SyncError> {
    let mut tx = SystemTx::begin(platform, "billing-customer").await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7478))")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    let known: Option<String> =
        sqlx::query_scalar("SELECT customer_id FROM saas.billing_customers WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(c) = known {
        tx.commit().await?;
        return Ok(c);
    }
    let customer = provider.create_customer(tenant, email).await?;
    sqlx::query("INSERT INTO saas.billing_customers (tenant_id, customer_id) VALUES ($1, $2)")
        .bind(tenant)
        .bind(&customer.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(customer.id)
}

/// The platform job queued when a tenant's deletion is requested (by a trigger on
/// `saas.tenants`, in the same transaction).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantDeleted {
    /// The tenant.
    pub tenant_id: TenantId,
}

impl Event for TenantDeleted {
    const KIND: &'static str = "billing.tenant_deleted";
}

/// Cancels, now, every live subscription of `tenant` at the provider and applies the
/// result to the mirror. Returns the subscriptions canceled.
pub async fn cancel_for_deleted_tenant<P: BillingProvider + ?Sized>(
    platform: &PlatformPool,
    provider: &P,
    tenant: TenantId,
) -> Result<Vec<String>, SyncError> {
    let mut tx = SystemTx::begin(platform, "billing-tenant-deleted").await?;
    let customer: Option<String> =
        sqlx::query_scalar("SELECT customer_id FROM saas.billing_customers WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    let Some(customer) = customer else {
        return Ok(Vec::new());
    };
    let mut canceled = Vec::new();
    // The provider's list, not the mirror's: a subscription whose webhook never came is canceled too.
    for sub in provider.subscriptions_of(&customer).await? {
        if sub.status.is_terminal() {
            continue;
        }
        provider.cancel_subscription(&sub.id, CancelAt::Now).await?;
        sync_subscription(platform, provider, &sub.id, "tenant-deleted").await?;
        canceled.push(sub.id);
    }
    if !canceled.is_empty() {
        tracing::info!(tenant_id = %tenant, subscriptions = ?canceled, "canceled the subscriptions of a tenant whose deletion was requested");
    }
    Ok(canceled)
}

/// Registers the handling of [`TenantDeleted`] on `builder` (a platform job; one a tenant
/// published is refused).
pub fn handle_tenant_deletion<P: BillingProvider>(
    builder: WorkerBuilder,
    platform: PlatformPool,
    provider: Arc<P>,
) -> WorkerBuilder {
    builder.handle(move |ctx: JobContext, job: TenantDeleted| {
        let (platform, provider) = (platform.clone(), Arc::clone(&provider));
        async move {
            crate::sync::platform_only(&ctx, TenantDeleted::KIND)?;
            cancel_for_deleted_tenant(&platform, &*provider, job.tenant_id)
                .await
                .map(drop)
                .map_err(JobError::retry)
        }
    })
}
