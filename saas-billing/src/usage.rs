//! Metered usage reported to the provider's meters (Stripe meter events), from the usage
//! the application recorded ([`Entitlements::record_usage`](crate::Entitlements::record_usage)).
//!
//! Every usage event of a feature that the catalog bills by meter (a metered price whose
//! meter has the feature's name) is sent once, with the identifier `<tenant>:<event id>`:
//! the provider counts an identifier once, so an event sent, then sent again after a
//! crash before it was marked, still bills once. Events are taken in batches under
//! `FOR UPDATE SKIP LOCKED`, so several workers share the work; one that fails stays
//! unreported and is retried at the next run.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use saas_core::TenantId;
use saas_events::{Event, JobContext, JobError, WorkerBuilder};
use saas_tenancy::{PlatformPool, SystemTx};
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, Charge};
use crate::provider::{BillingProvider, UsageEvent};
use crate::sync::SyncError;

const BATCH: i64 = 500;

/// What a reporting run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageReport {
    /// Events sent and marked.
    pub sent: usize,
    /// Events left for the next run because the provider failed (events of tenants
    /// without a customer yet wait for one and are not counted here).
    pub left: usize,
}

/// Sends every unreported usage event of a metered feature to the provider, batch by batch.
pub async fn report_usage<P: BillingProvider + ?Sized>(
    platform: &PlatformPool,
    provider: &P,
    catalog: &Catalog,
) -> Result<UsageReport, SyncError> {
    let meters: Vec<String> = catalog
        .plans()
        .iter()
        .flat_map(|p| p.prices())
        .filter_map(|p| match p.charge() {
            Charge::Metered { meter } => Some(meter.clone()),
            _ => None,
        })
        .collect();
    let mut report = UsageReport::default();
    if meters.is_empty() {
        return Ok(report);
    }
    loop {
        let mut tx = SystemTx::begin(platform, "billing-usage-report").await?;
        // Oldest first; rows another worker holds are skipped, not waited for.
        // Tenants without a customer yet are left until they have one.
        let rows: Vec<(uuid::Uuid, String, String, i64, DateTime<Utc>, String)> = sqlx::query_as(
            "SELECT e.tenant_id, e.event_id, e.feature, e.amount, e.at, c.customer_id \
             FROM saas.billing_usage_events e \
             JOIN saas.billing_customers c ON c.tenant_id = e.tenant_id \
             WHERE e.reported_at IS NULL AND e.feature = ANY($1) \
             ORDER BY e.at LIMIT $2 FOR UPDATE OF e SKIP LOCKED",
        )
        .bind(&meters)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(report);
        }
        let fetched = rows.len();
        let mut sent: Vec<(uuid::Uuid, String)> = Vec::new();
        let mut failed = None;
        for (tenant, event_id, feature, amount, at, customer) in rows {
            let usage = UsageEvent {
                meter: feature,
                customer,
                value: u64::try_from(amount).unwrap_or(0),
                identifier: format!("{}:{event_id}", TenantId::from_uuid(tenant)),
                at,
            };
            match provider.report_usage(&usage).await {
                Ok(()) => sent.push((tenant, event_id)),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let (tenants, ids): (Vec<uuid::Uuid>, Vec<String>) = sent.iter().cloned().unzip();
        sqlx::query(
            "UPDATE saas.billing_usage_events e SET reported_at = now() \
             FROM unnest($1::uuid[], $2::text[]) AS s(tenant_id, event_id) \
             WHERE e.tenant_id = s.tenant_id AND e.event_id = s.event_id",
        )
        .bind(&tenants)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        report.sent += sent.len();
        if let Some(e) = failed {
            report.left += fetched - sent.len();
            tracing::warn!(error = %e, sent = report.sent, "usage reporting stopped; the rest is retried at the next run");
            return Err(e.into());
        }
    }
}

/// The scheduled job that runs [`report_usage`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportUsage {}

impl Event for ReportUsage {
    const KIND: &'static str = "billing.report_usage";
}

/// Runs [`report_usage`] at every tick of `cron` (a platform job; one a tenant published
/// is refused).
pub fn schedule_reporting<P: BillingProvider>(
    builder: WorkerBuilder,
    cron: &str,
    platform: PlatformPool,
    provider: Arc<P>,
    catalog: Arc<Catalog>,
) -> Result<WorkerBuilder, saas_events::JobsError> {
    Ok(builder
        .schedule("billing-report-usage", cron, ReportUsage::default)?
        .handle(move |ctx: JobContext, _: ReportUsage| {
            let (platform, provider, catalog) = (platform.clone(), Arc::clone(&provider), Arc::clone(&catalog));
            async move {
                crate::sync::platform_only(&ctx, ReportUsage::KIND)?;
                report_usage(&platform, &*provider, &catalog)
                    .await
                    .map(drop)
                    .map_err(JobError::retry)
            }
        }))
}
