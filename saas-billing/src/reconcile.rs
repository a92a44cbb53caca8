//! Reconciliation: the mirror checked against the provider, drift fixed and reported.
//!
//! Webhooks can be missed for good (an endpoint down longer than Stripe retries, a
//! misconfigured secret, an event type not subscribed to). `reconcile` lists the
//! provider's customers and their subscriptions, compares each with the mirror, applies
//! the provider's state where they differ (through the same path as webhook processing,
//! with `reconcile` as the cause) and returns every difference it found. Run it on a
//! schedule ([`schedule`]) and on demand (the example app exposes it as a command).

use std::collections::HashMap;
use std::sync::Arc;

use saas_core::TenantId;
use saas_events::{Event, JobContext, JobError, WorkerBuilder};
use saas_tenancy::PlatformPool;
use serde::{Deserialize, Serialize};

use crate::provider::{BillingProvider, Subscription};
use crate::status::SubscriptionStatus;
use crate::sync::{SyncError, sync_subscription};

/// One subscription on which the mirror and the provider disagreed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The subscription.
    pub subscription: String,
    /// Its tenant (from the customer's metadata).
    pub tenant: Option<TenantId>,
    /// The mirror's status before (`None`: the mirror did not have it).
    pub mirror: Option<SubscriptionStatus>,
    /// The provider's status.
    pub provider: SubscriptionStatus,
    /// What differed (`status`, `price`, `quantity`, `cancel_at_period_end`, `missing`).
    pub fields: Vec<&'static str>,
}

/// What a reconciliation found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Subscriptions compared.
    pub checked: usize,
    /// Those that differed (all now fixed).
    pub drift: Vec<Drift>,
    /// Customers whose metadata names no tenant (left alone).
    pub orphan_customers: Vec<String>,
}

/// Compares every provider subscription with the mirror and fixes what differs.
pub async fn reconcile<P: BillingProvider + ?Sized>(
    platform: &PlatformPool,
    provider: &P,
) -> Result<ReconcileReport, SyncError> {
    let mut report = ReconcileReport::default();
    // Two paginated lists from the provider and one query of the mirror, whatever the
    // number of customers.
    let mut tenants = HashMap::new();
    for customer in provider.customers().await? {
        match customer.tenant {
            Some(t) => {
                tenants.insert(customer.id, t);
            }
            None => report.orphan_customers.push(customer.id),
        }
    }
    let mirror: HashMap<String, MirrorRow> = sqlx::query_as::<_, (String, String, Option<String>, i64, bool)>(
        "SELECT subscription_id, status, price_lookup_key, quantity, cancel_at_period_end \
         FROM saas.billing_subscriptions",
    )
    .fetch_all(platform.as_pool())
    .await?
    .into_iter()
    .map(|(id, status, price, quantity, cancel)| (id, (status, price, quantity, cancel)))
    .collect();
    for sub in provider.subscriptions().await? {
        let Some(&tenant) = tenants.get(&sub.customer) else {
            continue;
        };
        report.checked += 1;
        let row = mirror.get(&sub.id);
        let fields = differences(row, &sub);
        if fields.is_empty() {
            continue;
        }
        sync_subscription(platform, provider, &sub.id, "reconcile").await?;
        report.drift.push(Drift {
            subscription: sub.id.clone(),
            tenant: Some(tenant),
            mirror: row.and_then(|m| m.0.parse().ok()),
            provider: sub.status,
            fields,
        });
    }
    if !report.drift.is_empty() {
        tracing::warn!(
            fixed = report.drift.len(),
            checked = report.checked,
            "billing mirror drift fixed"
        );
    }
    metrics::counter!("saas_billing_reconcile_drift_total").increment(report.drift.len() as u64);
    Ok(report)
}

/// A mirror row: status, price lookup key, quantity, cancel at period end.
type MirrorRow = (String, Option<String>, i64, bool);

fn differences(mirror: Option<&MirrorRow>, sub: &Subscription) -> Vec<&'static str> {
    let Some((status, price, quantity, cancel)) = mirror else {
        return vec!["missing"];
    };
    let mut out = Vec::new();
    if status != sub.status.as_str() {
        out.push("status");
    }
    if *price != sub.price_lookup_key {
        out.push("price");
    }
    if u64::try_from(*quantity).ok() != Some(sub.quantity) {
        out.push("quantity");
    }
    if *cancel != sub.cancel_at_period_end {
        out.push("cancel_at_period_end");
    }
    out
}

/// The scheduled job that runs [`reconcile`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileBilling {}

impl Event for ReconcileBilling {
    const KIND: &'static str = "billing.reconcile";
}

/// Runs [`reconcile`] at every tick of `cron` (once per tick across processes, through
/// saas-events' schedules). Jobs carrying a tenant are refused.
pub fn schedule<P: BillingProvider>(
    builder: WorkerBuilder,
    cron: &str,
    platform: PlatformPool,
    provider: Arc<P>,
) -> Result<WorkerBuilder, saas_events::JobsError> {
    Ok(builder
        .schedule("billing-reconcile", cron, ReconcileBilling::default)?
        .handle(move |ctx: JobContext, _: ReconcileBilling| {
            let (platform, provider) = (platform.clone(), Arc::clone(&provider));
            async move {
                crate::sync::platform_only(&ctx, ReconcileBilling::KIND)?;
                reconcile(&platform, &*provider)
                    .await
                    .map(drop)
                    .map_err(JobError::retry)
            }
        }))
}
