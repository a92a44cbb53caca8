//! Where a plan's switches come from: the code catalog, or the provider's own
//! entitlements (Stripe's features attached to products in its Dashboard).

use saas_core::TenantId;
use saas_tenancy::{PlatformPool, SystemTx};

use crate::catalog::{Feature, Plan};
use crate::provider::BillingProvider;
use crate::sync::SyncError;

/// Decides a tenant's switches; limits, allowances and tiers always come from the catalog.
pub trait FeatureSource: Send + Sync + 'static {
    /// Whether the switch `feature` is on for a tenant whose plan (from the access
    /// policy) is `plan` and for whom the provider reports the active features `active`.
    fn switch_on(&self, plan: Option<&Plan>, feature: &str, active: &[String]) -> bool;
}

/// The code catalog decides (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct CatalogSource;

impl FeatureSource for CatalogSource {
    fn switch_on(&self, plan: Option<&Plan>, feature: &str, _: &[String]) -> bool {
        plan.and_then(|p| p.feature_value(feature)) == Some(&Feature::On)
    }
}

/// The provider decides: a switch is on when the provider lists it among the tenant's
/// active entitlements (kept by [`sync_provider_features`] on Stripe's
/// `entitlements.active_entitlement_summary.updated`). The access policy's grace and
/// lapse rules are then Stripe's (it keeps entitlements active while a subscription is
/// trialing, active or past due).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProviderSource;

impl FeatureSource for ProviderSource {
    fn switch_on(&self, _: Option<&Plan>, feature: &str, active: &[String]) -> bool {
        active.iter().any(|a| a == feature)
    }
}

/// Replaces `tenant`'s provider features with what the provider reports for its
/// customer now (every process's entitlements reload it). Returns them.
pub async fn sync_provider_features<P: BillingProvider + ?Sized>(
    platform: &PlatformPool,
    provider: &P,
    tenant: TenantId,
) -> Result<Vec<String>, SyncError> {
    let mut tx = SystemTx::begin(platform, "billing-provider-features").await?;
    let customer: Option<String> =
        sqlx::query_scalar("SELECT customer_id FROM saas.billing_customers WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
    let active = match customer {
        Some(c) => provider.active_entitlements(&c).await?,
        None => Vec::new(),
    };
    sqlx::query("DELETE FROM saas.billing_provider_features WHERE tenant_id = $1 AND NOT (feature = ANY($2))")
        .bind(tenant)
        .bind(&active)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO saas.billing_provider_features (tenant_id, feature) SELECT $1, f FROM unnest($2::text[]) AS f \
         ON CONFLICT (tenant_id, feature) DO NOTHING",
    )
    .bind(tenant)
    .bind(&active)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(active)
}
