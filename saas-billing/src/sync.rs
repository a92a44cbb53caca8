//! Processing stored events into the mirror: refetch, then apply.
//!
//! An event only says *which* object changed. Processing reads the object's current state
//! from the provider and applies that, so the order in which events arrive, how often,
//! and whether some never do, does not change where the mirror ends up: the provider's
//! state at the last processing. Applications to one subscription are serialised (a
//! transaction-scoped advisory lock taken *before* the provider is read), so a slow
//! processing of an old event can never overwrite a newer state.
//!
//! Every status change is recorded in `saas.billing_transitions` (from, to, cause, at)
//! and in the tenant's audit log (`billing.subscription_status_changed`).

use std::sync::Arc;

use saas_core::TenantId;
use saas_core::audit::{self, Actor, AuditRecord};
use saas_events::{JobContext, JobError, WorkerBuilder};
use saas_tenancy::{PlatformPool, SystemTx, TenancyError};

use crate::notify::Notifications;
use crate::provider::{BillingProvider, ProviderError, Subscription};
use crate::status::SubscriptionStatus;
use crate::webhook::StripeEventReceived;

/// Why processing failed (it is retried by the job queue).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The provider could not answer.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A tenant transaction or audit record failed.
    #[error(transparent)]
    Tenancy(#[from] TenancyError),
    /// The audit record failed.
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    /// The event is not in the inbox.
    #[error("no stored event {0}")]
    UnknownEvent(String),
    /// A billing email could not be queued.
    #[error("billing email: {0}")]
    Notify(String),
    /// A tenant already has another provider customer (one customer per tenant).
    #[error("tenant {tenant} already has the customer {existing}, not {customer}")]
    SecondCustomer {
        /// The tenant.
        tenant: TenantId,
        /// Its customer.
        existing: String,
        /// The other customer naming the same tenant.
        customer: String,
    },
}

/// What processing an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// The named subscriptions were refetched and applied.
    Applied(Vec<String>),
    /// Nothing to apply (the reason is stored as the event's outcome).
    Ignored(String),
}

/// Registers billing's platform jobs on `builder`: each [`StripeEventReceived`] job
/// refetches and applies what its event names, and each
/// [`TenantDeleted`](crate::customers::TenantDeleted) job cancels the deleted tenant's
/// subscriptions. Jobs that carry a tenant are refused (the application role could
/// publish them).
pub fn handle_events<P: BillingProvider>(
    builder: WorkerBuilder,
    platform: PlatformPool,
    provider: Arc<P>,
) -> WorkerBuilder {
    register(builder, platform, provider, None)
}

/// [`handle_events`], with the billing emails of [`process_event_notifying`] (register
/// saas-events' `MailHandler` on a worker to send them).
pub fn handle_events_notifying<P: BillingProvider>(
    builder: WorkerBuilder,
    platform: PlatformPool,
    provider: Arc<P>,
    notifications: Notifications,
) -> WorkerBuilder {
    register(builder, platform, provider, Some(Arc::new(notifications)))
}

fn register<P: BillingProvider>(
    builder: WorkerBuilder,
    platform: PlatformPool,
    provider: Arc<P>,
    notifications: Option<Arc<Notifications>>,
) -> WorkerBuilder {
    let builder = crate::customers::handle_tenant_deletion(builder, platform.clone(), Arc::clone(&provider));
    builder.handle(move |ctx: JobContext, job: StripeEventReceived| {
        let (platform, provider, notifications) = (platform.clone(), Arc::clone(&provider), notifications.clone());
        async move {
            platform_only(&ctx, <StripeEventReceived as saas_events::Event>::KIND)?;
            match process_event_notifying(&platform, &*provider, &job.event_id, notifications.as_deref()).await {
                Ok(_) => Ok(()),
                Err(SyncError::UnknownEvent(id)) => Err(JobError::fatal(format!("no stored event {id}"))),
                Err(e) => Err(JobError::retry(e)),
            }
        }
    })
}

/// Refuses a billing job that carries a tenant: billing's jobs are the platform's, and the
/// application role may publish any kind for its own tenant.
pub(crate) fn platform_only(ctx: &JobContext, kind: &str) -> Result<(), JobError> {
    match ctx.tenant() {
        Some(_) => Err(JobError::fatal(format!(
            "{kind} is a platform job; a tenant published this one"
        ))),
        None => Ok(()),
    }
}

/// Processes the stored event `event_id`: finds the subscriptions it concerns, refetches
/// and applies each, and marks the event processed with its outcome.
pub async fn process_event<P: BillingProvider + ?Sized>(
    platform: &PlatformPool,
    provider: &P,
    event_id: &str,
) -> Result<Processed, SyncError> {
    process_event_notifying(platform, provider, event_id, None).await
}

/// [`process_event`], and the billing email the event calls for (failed payment, payment
/// needing action, trial ending) queued to the tenant's billing contacts in the same
/// transaction that marks the event processed: an event processed twice emails once.
pub async fn process_event_notifying<P: BillingProvider + ?Sized>(
    platform: &PlatformPool,
    provider: &P,
    event_id: &str,
    notifications: Option<&Notifications>,
) -> Result<Processed, SyncError> {
    let raw: Option<String> = sqlx::query_scalar("SELECT raw FROM saas.billing_inbox WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(platform.as_pool())
        .await?;
    let raw = raw.ok_or_else(|| SyncError::UnknownEvent(event_id.to_owned()))?;
    let event: serde_json::Value = serde_json::from_str(&raw).unwrap_or_default();
    let object = &event["data"]["object"];
    let str_of = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    // Invoices name their subscription under `parent.subscription_details` (API versions
    // from 2025-03-31) or at the top (older ones, checkout sessions).
    let named =
        str_of(&object["parent"]["subscription_details"]["subscription"]).or_else(|| str_of(&object["subscription"]));
    let customer = match object["object"].as_str() {
        Some("customer") => str_of(&object["id"]),
        _ => str_of(&object["customer"]),
    };
    let ids: Vec<String> = match (object["object"].as_str(), named, customer) {
        (Some("subscription"), _, _) => str_of(&object["id"]).into_iter().collect(),
        (_, Some(sub), _) => vec![sub],
        // A customer, an entitlement summary, an upcoming invoice without a subscription:
        // everything the customer has.
        (_, None, Some(c)) => provider.subscriptions_of(&c).await?.into_iter().map(|s| s.id).collect(),
        (_, None, None) => Vec::new(),
    };
    // The provider's own entitlements changed: refresh the tenant's provider features.
    if event["type"].as_str() == Some("entitlements.active_entitlement_summary.updated")
        && let Some(c) = str_of(&object["customer"])
    {
        let mut tx = SystemTx::begin(platform, "billing-provider-features").await?;
        let tenant: Option<uuid::Uuid> =
            sqlx::query_scalar("SELECT tenant_id FROM saas.billing_customers WHERE customer_id = $1")
                .bind(&c)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        if let Some(t) = tenant {
            crate::entitlements::sync_provider_features(platform, provider, TenantId::from_uuid(t)).await?;
        }
    }
    let outcome = if ids.is_empty() {
        Processed::Ignored(format!(
            "ignored: no subscription in a {} event",
            event["type"].as_str().unwrap_or("?")
        ))
    } else {
        // A subscription event says which status the subscription had when it happened:
        // the mirror dates the status from then, not from when a worker got to it, so a
        // grace period runs from the failed payment whatever the delivery delay.
        let reported = match (
            object["object"].as_str(),
            object["status"].as_str(),
            event["created"].as_i64(),
        ) {
            (Some("subscription"), Some(status), Some(at)) => status
                .parse::<SubscriptionStatus>()
                .ok()
                .zip(chrono::DateTime::<chrono::Utc>::from_timestamp(at, 0)),
            _ => None,
        };
        for id in &ids {
            sync_subscription_at(platform, provider, id, event_id, reported).await?;
        }
        Processed::Applied(ids)
    };
    let text = match &outcome {
        Processed::Applied(ids) => format!("applied: {}", ids.join(", ")),
        Processed::Ignored(why) => why.clone(),
    };
    let mut tx = SystemTx::begin(platform, "billing-event-processed").await?;
    let first = sqlx::query(
        "UPDATE saas.billing_inbox SET processed_at = now(), outcome = $2 WHERE event_id = $1 AND processed_at IS NULL",
    )
    .bind(event_id)
    .bind(&text)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !first {
        // Processed before (a redelivered job): the outcome is refreshed, nothing is sent again.
        sqlx::query("UPDATE saas.billing_inbox SET outcome = $2 WHERE event_id = $1")
            .bind(event_id)
            .bind(&text)
            .execute(&mut *tx)
            .await?;
    }
    if let (true, Some(n), Processed::Applied(ids)) = (first, notifications, &outcome)
        && let Some(id) = ids.first()
    {
        let tenant: Option<uuid::Uuid> =
            sqlx::query_scalar("SELECT tenant_id FROM saas.billing_subscriptions WHERE subscription_id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(t) = tenant {
            n.queue_for(&mut tx, TenantId::from_uuid(t), &event).await?;
        }
    }
    tx.commit().await?;
    Ok(outcome)
}

/// Refetches subscription `id` and applies it to the mirror (`cause`: the event id, or
/// `reconcile`). Returns the status change it made, if any. A status change is dated now
/// (see [`sync_subscription_at`]).
pub async fn sync_subscription<P: BillingProvider + ?Sized>(
    platform: &PlatformPool,
    provider: &P,
    id: &str,
    cause: &str,
) -> Result<Option<(Option<SubscriptionStatus>, SubscriptionStatus)>, SyncError> {
    sync_subscription_at(platform, provider, id, cause, None).await
}

/// [`sync_subscription`] with what the event being processed reported: the status the
/// subscription had and when (a `customer.subscription.*` event's object and `created`).
/// When the refetched status is that one, the mirror dates it from the event — the
/// earliest moment it is known to hold, never before the status it replaced began —
/// instead of from now: a delivery or worker delay does not move the grace period.
pub async fn sync_subscription_at<P: BillingProvider + ?Sized>(
    platform: &PlatformPool,
    provider: &P,
    id: &str,
    cause: &str,
    reported: Option<(SubscriptionStatus, chrono::DateTime<chrono::Utc>)>,
) -> Result<Option<(Option<SubscriptionStatus>, SubscriptionStatus)>, SyncError> {
    let mut tx = SystemTx::begin(platform, "billing-sync").await?;
    // Serialise every application to this subscription, then read the provider: what is
    // applied was read after the previous application committed.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7477))")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let Some(sub) = provider.subscription(id).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
    let Some(tenant) = tenant_of(&mut tx, provider, &sub.customer).await? else {
        tracing::warn!(subscription = id, customer = %sub.customer, "a subscription whose customer names no tenant is ignored");
        tx.rollback().await?;
        return Ok(None);
    };
    let happened = reported.filter(|(status, _)| *status == sub.status).map(|(_, at)| at);
    let change = apply(&mut tx, tenant, &sub, cause, happened).await?;
    tx.commit().await?;
    Ok(change)
}

async fn tenant_of<P: BillingProvider + ?Sized>(
    tx: &mut SystemTx,
    provider: &P,
    customer: &str,
) -> Result<Option<TenantId>, SyncError> {
    let known: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT tenant_id FROM saas.billing_customers WHERE customer_id = $1")
            .bind(customer)
            .fetch_optional(&mut **tx)
            .await?;
    if let Some(t) = known {
        return Ok(Some(TenantId::from_uuid(t)));
    }
    let Some(c) = provider.customer(customer).await? else {
        return Ok(None);
    };
    let Some(tenant) = c.tenant else {
        return Ok(None);
    };
    let existing: Option<String> = sqlx::query_scalar(
        "WITH ins AS (INSERT INTO saas.billing_customers (tenant_id, customer_id) VALUES ($1, $2) \
                      ON CONFLICT (tenant_id) DO NOTHING RETURNING customer_id) \
         SELECT customer_id FROM ins UNION ALL \
         SELECT customer_id FROM saas.billing_customers WHERE tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM ins)",
    )
    .bind(tenant)
    .bind(customer)
    .fetch_optional(&mut **tx)
    .await?;
    match existing {
        Some(e) if e != customer => Err(SyncError::SecondCustomer {
            tenant,
            existing: e,
            customer: customer.to_owned(),
        }),
        _ => Ok(Some(tenant)),
    }
}

async fn apply(
    tx: &mut SystemTx,
    tenant: TenantId,
    sub: &Subscription,
    cause: &str,
    happened: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Option<(Option<SubscriptionStatus>, SubscriptionStatus)>, SyncError> {
    let current: Option<String> =
        sqlx::query_scalar("SELECT status FROM saas.billing_subscriptions WHERE subscription_id = $1 FOR UPDATE")
            .bind(&sub.id)
            .fetch_optional(&mut **tx)
            .await?;
    let from = current.and_then(|s| s.parse::<SubscriptionStatus>().ok());
    let to = match from {
        Some(f) if f.is_terminal() && f != sub.status => {
            // The provider never revives a terminal subscription: keep ours, and say so.
            metrics::counter!("saas_billing_illegal_transitions_total").increment(1);
            tracing::warn!(subscription = %sub.id, from = %f, to = %sub.status, "terminal subscription reported live; kept terminal");
            f
        }
        Some(f) => {
            if let Err(e) = f.transition(sub.status) {
                // The mirror missed steps (dropped events); the provider's state is the truth.
                metrics::counter!("saas_billing_illegal_transitions_total").increment(1);
                tracing::warn!(subscription = %sub.id, error = %e, "unexpected status change applied from the provider");
            }
            sub.status
        }
        None => sub.status,
    };
    sqlx::query(
        "INSERT INTO saas.billing_subscriptions (tenant_id, subscription_id, customer_id, status, status_since, \
             price_lookup_key, quantity, current_period_end, trial_end, cancel_at_period_end, synced_at, \
             current_period_start) \
         VALUES ($1, $2, $3, $4, coalesce($11, now()), $5, $6, $7, $8, $9, now(), $10) \
         ON CONFLICT (tenant_id, subscription_id) DO UPDATE SET \
             status_since = CASE WHEN billing_subscriptions.status = excluded.status \
                                 THEN least(billing_subscriptions.status_since, coalesce($11, 'infinity')) \
                                 ELSE greatest(coalesce($11, now()), billing_subscriptions.status_since) END, \
             status = excluded.status, price_lookup_key = excluded.price_lookup_key, \
             quantity = excluded.quantity, current_period_end = excluded.current_period_end, \
             current_period_start = excluded.current_period_start, \
             trial_end = excluded.trial_end, cancel_at_period_end = excluded.cancel_at_period_end, \
             synced_at = now()",
    )
    .bind(tenant)
    .bind(&sub.id)
    .bind(&sub.customer)
    .bind(to.as_str())
    .bind(&sub.price_lookup_key)
    .bind(i64::try_from(sub.quantity).unwrap_or(i64::MAX))
    .bind(sub.current_period_end)
    .bind(sub.trial_end)
    .bind(sub.cancel_at_period_end)
    .bind(sub.current_period_start)
    .bind(happened)
    .execute(&mut **tx)
    .await?;
    if from == Some(to) {
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO saas.billing_transitions (tenant_id, subscription_id, from_status, to_status, cause) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(tenant)
    .bind(&sub.id)
    .bind(from.map(SubscriptionStatus::as_str))
    .bind(to.as_str())
    .bind(cause)
    .execute(&mut **tx)
    .await?;
    let record = AuditRecord::new(
        tenant,
        Actor::System("billing".into()),
        "billing.subscription_status_changed",
    )?
    .target("subscription", &sub.id)
    .metadata(serde_json::json!({
        "from": from.map(SubscriptionStatus::as_str),
        "to": to.as_str(),
        "cause": cause,
    }));
    audit::record(tx, &record).await?;
    tracing::info!(tenant_id = %tenant, subscription = %sub.id, from = ?from.map(SubscriptionStatus::as_str), to = %to, cause, "subscription status changed");
    Ok(Some((from, to)))
}
