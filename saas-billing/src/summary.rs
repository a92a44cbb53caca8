//! What staff and billing pages see, without raw payment data: a tenant's billing
//! summary and the platform's, as serialisable structs.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use saas_core::TenantId;
use saas_tenancy::{PlatformPool, SystemTx};
use serde::Serialize;

use crate::catalog::{Catalog, Charge, Interval};
use crate::entitlements::Entitlements;
use crate::provider::BillingProvider;
use crate::sync::SyncError;

/// A tenant's subscription, as the mirror has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionSummary {
    /// The provider's id.
    pub id: String,
    /// Its status and since when.
    pub status: String,
    /// Since when (as the mirror saw it).
    pub since: DateTime<Utc>,
    /// The price's lookup key.
    pub price: Option<String>,
    /// Seats paid for.
    pub quantity: i64,
    /// When the period ends.
    pub current_period_end: Option<DateTime<Utc>>,
    /// When the trial ends.
    pub trial_end: Option<DateTime<Utc>>,
    /// Whether it ends with the period.
    pub cancel_at_period_end: bool,
}

/// Usage of one metered feature this period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageSummary {
    /// The feature.
    pub feature: String,
    /// Used this period.
    pub used: u64,
    /// The allowance.
    pub allowance: Option<u64>,
}

/// An invoice without payment details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvoiceSummary {
    /// `in_…`.
    pub id: Option<String>,
    /// `paid`, `open`, …
    pub status: Option<String>,
    /// Due, in minor units.
    pub amount_due: i64,
    /// Paid, in minor units.
    pub amount_paid: i64,
    /// The currency.
    pub currency: String,
    /// Where the customer sees and pays it.
    pub hosted_invoice_url: Option<String>,
}

/// One tenant's billing at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantBillingSummary {
    /// The tenant.
    pub tenant: TenantId,
    /// The plan whose features apply now (the access policy's answer).
    pub plan: String,
    /// Whether the tenant should fix its payment.
    pub payment_problem: bool,
    /// Its subscription (the live one, or the latest).
    pub subscription: Option<SubscriptionSummary>,
    /// Seats used (the `seats` feature's count) against the limit, if the catalog has it.
    pub seats_used: Option<u64>,
    /// The seat limit.
    pub seats_limit: Option<u64>,
    /// Usage of each metered feature this period.
    pub usage: Vec<UsageSummary>,
    /// The latest invoices (at most 5), from the provider.
    pub invoices: Vec<InvoiceSummary>,
    /// Failed payments in the last 90 days (from the events received).
    pub failed_payments_90d: i64,
    /// Changes reconciliation had to make in the last 30 days (missed webhooks).
    pub reconcile_fixes_30d: i64,
}

/// The billing summary of `tenant`.
pub async fn tenant_summary<P: BillingProvider + ?Sized>(
    platform: &PlatformPool,
    provider: &P,
    entitlements: &Entitlements,
    tenant: TenantId,
) -> Result<TenantBillingSummary, SyncError> {
    let mut tx = SystemTx::begin(platform, "billing-summary").await?;
    type Row = (
        String,
        String,
        DateTime<Utc>,
        Option<String>,
        i64,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        bool,
    );
    let sub: Option<Row> = sqlx::query_as(
        "SELECT subscription_id, status, status_since, price_lookup_key, quantity, current_period_end, trial_end, \
                cancel_at_period_end \
         FROM saas.billing_subscriptions WHERE tenant_id = $1 \
         ORDER BY status IN ('canceled', 'incomplete_expired'), status_since DESC LIMIT 1",
    )
    .bind(tenant)
    .fetch_optional(&mut *tx)
    .await?;
    let customer: Option<String> =
        sqlx::query_scalar("SELECT customer_id FROM saas.billing_customers WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
    let failed: i64 = match &customer {
        Some(c) => {
            sqlx::query_scalar(
                "SELECT count(*) FROM saas.billing_inbox WHERE type = 'invoice.payment_failed' \
                 AND created > now() - interval '90 days' AND raw::jsonb #>> '{data,object,customer}' = $1",
            )
            .bind(c)
            .fetch_one(&mut *tx)
            .await?
        }
        None => 0,
    };
    let fixes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM saas.billing_transitions WHERE tenant_id = $1 AND cause = 'reconcile' \
         AND at > now() - interval '30 days'",
    )
    .bind(tenant)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let invoices = match &customer {
        Some(c) => provider
            .invoices_of(c, 5)
            .await?
            .into_iter()
            .map(|i| InvoiceSummary {
                id: i.id,
                status: i.status,
                amount_due: i.amount_due,
                amount_paid: i.amount_paid,
                currency: i.currency,
                hosted_invoice_url: i.hosted_invoice_url,
            })
            .collect(),
        None => Vec::new(),
    };
    let catalog = entitlements.catalog();
    let mut usage = Vec::new();
    let mut metered: Vec<&str> = catalog
        .plans()
        .iter()
        .flat_map(|p| p.features())
        .filter(|(_, f)| matches!(f, crate::catalog::Feature::Metered { .. }))
        .map(|(n, _)| n)
        .collect();
    metered.sort_unstable();
    metered.dedup();
    for feature in metered {
        let d = entitlements.check(tenant, feature, 0);
        usage.push(UsageSummary {
            feature: feature.to_owned(),
            used: d.used,
            allowance: d.limit,
        });
    }
    let has_seats = catalog.plans().iter().any(|p| p.feature_value("seats").is_some());
    let seats = has_seats.then(|| entitlements.check(tenant, "seats", 0));
    let (plan, payment_problem) = entitlements.plan(tenant);
    Ok(TenantBillingSummary {
        tenant,
        plan: plan.to_string(),
        payment_problem,
        subscription: sub.map(
            |(id, status, since, price, quantity, current_period_end, trial_end, cancel_at_period_end)| {
                SubscriptionSummary {
                    id,
                    status,
                    since,
                    price,
                    quantity,
                    current_period_end,
                    trial_end,
                    cancel_at_period_end,
                }
            },
        ),
        seats_used: seats.map(|d| d.used),
        seats_limit: seats.and_then(|d| d.limit),
        usage,
        invoices,
        failed_payments_90d: failed,
        reconcile_fixes_30d: fixes,
    })
}

/// The platform's billing at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlatformBillingSummary {
    /// The catalog's currency.
    pub currency: String,
    /// Monthly recurring revenue per plan, in minor units (active and past-due
    /// subscriptions; annual prices count a twelfth; usage is not recurring).
    pub mrr_by_plan: BTreeMap<String, i64>,
    /// The sum of `mrr_by_plan`.
    pub mrr: i64,
    /// Tenants by the status of their subscription (`none`: no subscription).
    pub tenants_by_status: BTreeMap<String, i64>,
    /// Trials ending in the next seven days: (tenant, when).
    pub trials_ending_this_week: Vec<(TenantId, DateTime<Utc>)>,
    /// What the past-due subscriptions' periods cost, in minor units.
    pub past_due_amount: i64,
}

/// One period's amount of `price` at `quantity`, as a monthly figure.
fn monthly(catalog: &Catalog, price: Option<&str>, quantity: i64) -> Option<(String, i64)> {
    let price_key = price?;
    let plan = catalog.plan_of_price(price_key)?;
    let p = catalog.price(price_key)?;
    let period = match p.charge() {
        Charge::Flat => p.amount(),
        Charge::PerSeat => p.amount().saturating_mul(quantity),
        Charge::Metered { .. } => return None,
    };
    let per_month = match p.interval() {
        Interval::Month => period,
        Interval::Year => period / 12,
    };
    Some((plan.key().to_owned(), per_month))
}

/// The platform's billing summary at `now`.
pub async fn platform_summary(
    platform: &PlatformPool,
    catalog: &Catalog,
    now: DateTime<Utc>,
) -> Result<PlatformBillingSummary, SyncError> {
    let mut tx = SystemTx::begin(platform, "billing-summary").await?;
    // Each tenant's live subscription (or latest), and tenants without one.
    /// Tenant, status, price, quantity, trial end.
    type Row = (
        uuid::Uuid,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT t.id, s.status, s.price_lookup_key, s.quantity, s.trial_end FROM saas.tenants t \
         LEFT JOIN LATERAL (SELECT status, price_lookup_key, quantity, trial_end FROM saas.billing_subscriptions b \
                            WHERE b.tenant_id = t.id \
                            ORDER BY status IN ('canceled', 'incomplete_expired'), status_since DESC LIMIT 1) s ON true \
         WHERE t.status <> 'purged'",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut out = PlatformBillingSummary {
        currency: catalog.currency().to_owned(),
        mrr_by_plan: BTreeMap::new(),
        mrr: 0,
        tenants_by_status: BTreeMap::new(),
        trials_ending_this_week: Vec::new(),
        past_due_amount: 0,
    };
    for (tenant, status, price, quantity, trial_end) in rows {
        let status = status.unwrap_or_else(|| "none".into());
        *out.tenants_by_status.entry(status.clone()).or_default() += 1;
        let amount = monthly(catalog, price.as_deref(), quantity.unwrap_or(1));
        match status.as_str() {
            "active" | "past_due" => {
                if let Some((plan, m)) = &amount {
                    *out.mrr_by_plan.entry(plan.clone()).or_default() += m;
                    out.mrr += m;
                }
                if status == "past_due"
                    && let (Some(p), Some(q)) = (price.as_deref().and_then(|k| catalog.price(k)), quantity)
                {
                    out.past_due_amount += match p.charge() {
                        Charge::PerSeat => p.amount().saturating_mul(q),
                        Charge::Flat => p.amount(),
                        Charge::Metered { .. } => 0,
                    };
                }
            }
            "trialing" => {
                if let Some(end) = trial_end.filter(|e| *e > now && *e <= now + Duration::days(7)) {
                    out.trials_ending_this_week.push((TenantId::from_uuid(tenant), end));
                }
            }
            _ => {}
        }
    }
    out.trials_ending_this_week.sort_by_key(|(_, e)| *e);
    Ok(out)
}
