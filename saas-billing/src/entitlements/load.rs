//! Loading entitlements from the database, keeping them current, and counting usage.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use saas_core::TenantId;
use saas_core::clock::Clock;
use saas_core::notify::{self, Notice};
use saas_tenancy::{PlatformPool, SystemTx, TenantTx};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::set::Entitlements;
use crate::access::AccessPolicy;
use crate::catalog::Catalog;
use crate::status::SubscriptionStatus;

/// The notification channel of the mirror's, the grants' and the usage counters' triggers.
pub const CHANNEL: &str = "saas_billing_entitlements";

/// Why entitlements could not be loaded or usage recorded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntitlementsError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A tenant or platform transaction failed.
    #[error(transparent)]
    Tenancy(#[from] saas_tenancy::TenancyError),
    /// Usage was recorded for a feature no plan has.
    #[error("no plan has a feature called {0:?}")]
    UnknownFeature(String),
    /// Usage was recorded for a feature that is not metered (limits are counted by the
    /// application: see `Entitlements::set_count`).
    #[error("{0:?} is not a metered feature")]
    NotMetered(String),
}

/// A tenant's subscription, as entitlements need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionState {
    /// Its status.
    pub status: SubscriptionStatus,
    /// Since when.
    pub since: DateTime<Utc>,
    /// Its price (the catalog's lookup key).
    pub price_lookup_key: Option<String>,
    /// Its current period's start (the anchor usage periods reset on).
    pub period_start: Option<DateTime<Utc>>,
}

/// An override lasts until removed; a grant until it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    /// Until removed.
    Override,
    /// Until `ends_at`.
    Grant,
}

/// What a grant gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantValue {
    /// A switch on (or off: an override can only add, so off never wins).
    Switch(bool),
    /// A limit or an allowance.
    Amount(u64),
    /// A tier.
    Tier(String),
}

/// An override or grant made to a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The feature.
    pub feature: String,
    /// Override or grant.
    pub kind: GrantKind,
    /// What it gives.
    pub value: GrantValue,
    /// From when.
    pub starts_at: DateTime<Utc>,
    /// Until when (`None`: until removed).
    pub ends_at: Option<DateTime<Utc>>,
}

/// Everything a tenant's entitlements are computed from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantState {
    /// Its subscription (the live one, or the latest).
    pub subscription: Option<SubscriptionState>,
    /// Its overrides and grants, current and future.
    pub grants: Vec<Grant>,
    /// Usage counted: (feature, period start, used).
    pub usage: Vec<(String, DateTime<Utc>, u64)>,
    /// The features the provider reports active (used by a [`ProviderSource`](super::ProviderSource)).
    pub provider_features: Vec<String>,
}

impl TenantState {
    /// The usage of `feature` in the period starting at `period_start` (metered), or all
    /// of it (limits count forever).
    pub(super) fn used(&self, feature: &str, period_start: Option<DateTime<Utc>>, metered: bool) -> u64 {
        self.usage
            .iter()
            .filter(|(f, p, _)| f == feature && (!metered || Some(*p) == period_start))
            .map(|(_, _, u)| *u)
            .sum()
    }

    pub(super) fn note_usage(&mut self, feature: &str, period_start: DateTime<Utc>, used: u64) {
        match self
            .usage
            .iter_mut()
            .find(|(f, p, _)| f == feature && *p == period_start)
        {
            Some(entry) => entry.2 = entry.2.max(used),
            None => self.usage.push((feature.to_owned(), period_start, used)),
        }
    }
}

/// What the triggers send.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Change {
    /// The tenant's subscription or grants changed: reload it.
    Tenant { tenant: TenantId },
    /// A usage was counted: the period's total is now `used`.
    Usage {
        tenant: TenantId,
        feature: String,
        period_start: DateTime<Utc>,
        used: i64,
    },
}

type SubRow = (uuid::Uuid, String, DateTime<Utc>, Option<String>, Option<DateTime<Utc>>);
type GrantRow = (
    uuid::Uuid,
    String,
    String,
    Option<bool>,
    Option<i64>,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// Reads the inputs of `tenant` (every tenant when `None`).
async fn read_states(
    tx: &mut SystemTx,
    tenant: Option<TenantId>,
) -> Result<HashMap<TenantId, TenantState>, EntitlementsError> {
    let only = tenant.map(|t| *t.as_uuid());
    let mut states: HashMap<TenantId, TenantState> = HashMap::new();
    // The live subscription if there is one, else the latest.
    let subs: Vec<SubRow> = sqlx::query_as(
        "SELECT DISTINCT ON (tenant_id) tenant_id, status, status_since, price_lookup_key, current_period_start \
         FROM saas.billing_subscriptions WHERE $1::uuid IS NULL OR tenant_id = $1 \
         ORDER BY tenant_id, status IN ('canceled', 'incomplete_expired'), status_since DESC",
    )
    .bind(only)
    .fetch_all(&mut **tx)
    .await?;
    for (t, status, since, price, period_start) in subs {
        let Ok(status) = status.parse::<SubscriptionStatus>() else {
            continue;
        };
        states.entry(TenantId::from_uuid(t)).or_default().subscription = Some(SubscriptionState {
            status,
            since,
            price_lookup_key: price,
            period_start,
        });
    }
    let grants: Vec<GrantRow> = sqlx::query_as(
        "SELECT tenant_id, feature, kind, switch, amount, tier, starts_at, ends_at \
         FROM saas.billing_entitlement_grants \
         WHERE ($1::uuid IS NULL OR tenant_id = $1) AND (ends_at IS NULL OR ends_at > now())",
    )
    .bind(only)
    .fetch_all(&mut **tx)
    .await?;
    for (t, feature, kind, switch, amount, tier, starts_at, ends_at) in grants {
        let value = match (switch, amount, tier) {
            (Some(s), _, _) => GrantValue::Switch(s),
            (_, Some(a), _) => GrantValue::Amount(u64::try_from(a).unwrap_or(0)),
            (_, _, Some(t)) => GrantValue::Tier(t),
            _ => continue,
        };
        states.entry(TenantId::from_uuid(t)).or_default().grants.push(Grant {
            feature,
            kind: if kind == "override" {
                GrantKind::Override
            } else {
                GrantKind::Grant
            },
            value,
            starts_at,
            ends_at,
        });
    }
    // Limits count every period; metered features only their current one (a year back
    // covers annual periods).
    let usage: Vec<(uuid::Uuid, String, DateTime<Utc>, i64)> = sqlx::query_as(
        "SELECT tenant_id, feature, period_start, used FROM saas.billing_usage \
         WHERE ($1::uuid IS NULL OR tenant_id = $1) AND period_start > now() - interval '13 months'",
    )
    .bind(only)
    .fetch_all(&mut **tx)
    .await?;
    let provider: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT tenant_id, feature FROM saas.billing_provider_features WHERE $1::uuid IS NULL OR tenant_id = $1",
    )
    .bind(only)
    .fetch_all(&mut **tx)
    .await?;
    for (t, feature) in provider {
        states
            .entry(TenantId::from_uuid(t))
            .or_default()
            .provider_features
            .push(feature);
    }
    for (t, feature, period_start, used) in usage {
        states.entry(TenantId::from_uuid(t)).or_default().usage.push((
            feature,
            period_start,
            u64::try_from(used).unwrap_or(0),
        ));
    }
    Ok(states)
}

impl Entitlements {
    /// Loads every tenant's entitlements from the mirror, the grants and the usage
    /// counters. Keep them current with [`listen`](Self::listen).
    pub async fn load(
        platform: &PlatformPool,
        catalog: Arc<Catalog>,
        policy: AccessPolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, EntitlementsError> {
        Self::load_with(platform, catalog, policy, clock, Arc::new(super::CatalogSource)).await
    }

    /// [`load`](Self::load) with the switches decided by `source` (for instance
    /// [`ProviderSource`](super::ProviderSource): Stripe's own entitlements).
    pub async fn load_with(
        platform: &PlatformPool,
        catalog: Arc<Catalog>,
        policy: AccessPolicy,
        clock: Arc<dyn Clock>,
        source: Arc<dyn super::FeatureSource>,
    ) -> Result<Arc<Self>, EntitlementsError> {
        let e = Arc::new(Entitlements::new(catalog, policy, clock).with_source(source));
        e.reload_all(platform).await?;
        Ok(e)
    }

    async fn reload_all(&self, platform: &PlatformPool) -> Result<(), EntitlementsError> {
        let mut tx = SystemTx::begin(platform, "entitlements-load").await?;
        let states = read_states(&mut tx, None).await?;
        tx.commit().await?;
        self.replace_all(states);
        Ok(())
    }

    /// Reloads `tenant` from the database.
    pub async fn reload(&self, platform: &PlatformPool, tenant: TenantId) -> Result<(), EntitlementsError> {
        let mut tx = SystemTx::begin(platform, "entitlements-load").await?;
        let mut states = read_states(&mut tx, Some(tenant)).await?;
        tx.commit().await?;
        self.put(tenant, states.remove(&tenant).unwrap_or_default());
        Ok(())
    }

    /// Keeps the set current until the last `Arc` of it is dropped: reloads a tenant when
    /// its subscription or grants change (in any process), sets a counter when a usage is
    /// counted, reloads everything after a gap in notifications, and every second
    /// recomputes the tenants whose grant, grace period or usage period ended.
    pub fn listen(self: &Arc<Self>, platform: PlatformPool) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let ended = self.lifeline.ended();
        let p = platform.clone();
        let listener = notify::spawn(
            platform.as_pool().clone(),
            CHANNEL,
            ended,
            move |notice: Notice<Change>| {
                let (weak, platform) = (weak.clone(), p.clone());
                async move {
                    let Some(e) = weak.upgrade() else { return };
                    let done = match notice {
                        Notice::Message(Change::Tenant { tenant }) => e.reload(&platform, tenant).await,
                        Notice::Message(Change::Usage {
                            tenant,
                            feature,
                            period_start,
                            used,
                        }) => {
                            e.observe_usage(tenant, &feature, period_start, u64::try_from(used).unwrap_or(0));
                            Ok(())
                        }
                        Notice::Gap => e.reload_all(&platform).await,
                    };
                    if let Err(err) = done {
                        tracing::warn!(error = %err, "entitlements could not be reloaded; retried at the next change");
                    }
                }
            },
        );
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(e) = weak.upgrade() else { break };
                e.refresh_due();
                if listener.is_finished() {
                    break;
                }
            }
        })
    }

    /// Counts `amount` of the metered `feature` for `tenant` under `event_id`, once: a
    /// retry or a concurrent duplicate with the same id counts nothing. Returns whether it
    /// counted and the period's total. Runs as the application role, in a transaction of
    /// the tenant's own; every process's set learns the total on commit.
    pub async fn record_usage(
        &self,
        app: &PgPool,
        tenant: TenantId,
        feature: &str,
        event_id: &str,
        amount: u64,
    ) -> Result<(bool, u64), EntitlementsError> {
        if !self.is_metered(feature) {
            return Err(
                if self
                    .catalog()
                    .plans()
                    .iter()
                    .any(|p| p.feature_value(feature).is_some())
                {
                    EntitlementsError::NotMetered(feature.to_owned())
                } else {
                    EntitlementsError::UnknownFeature(feature.to_owned())
                },
            );
        }
        let period_start = self
            .usage_period(tenant, feature)
            .ok_or_else(|| EntitlementsError::UnknownFeature(feature.to_owned()))?;
        let mut tx = TenantTx::begin(app, tenant).await?;
        let (counted, total) = record_usage(&mut tx, feature, event_id, amount, period_start).await?;
        tx.commit().await?;
        if counted {
            self.observe_usage(tenant, feature, period_start, total);
        }
        Ok((counted, total))
    }
}

/// Counts usage in `tx` (the tenant's transaction): inserts the usage event unless its id
/// was counted before, and returns whether it counted and the period's total.
pub async fn record_usage(
    tx: &mut TenantTx,
    feature: &str,
    event_id: &str,
    amount: u64,
    period_start: DateTime<Utc>,
) -> Result<(bool, u64), EntitlementsError> {
    let amount = i64::try_from(amount).unwrap_or(i64::MAX);
    let counted = sqlx::query(
        "INSERT INTO saas.billing_usage_events (tenant_id, event_id, feature, amount, period_start) \
         VALUES (saas.current_tenant_id(), $1, $2, $3, $4) ON CONFLICT (tenant_id, event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(feature)
    .bind(amount)
    .bind(period_start)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    let total: Option<i64> =
        sqlx::query_scalar("SELECT used FROM saas.billing_usage WHERE feature = $1 AND period_start = $2")
            .bind(feature)
            .bind(period_start)
            .fetch_optional(&mut **tx)
            .await?;
    Ok((counted, u64::try_from(total.unwrap_or(0)).unwrap_or(0)))
}

/// The count behind the `seats` limit: members plus pending invitations (saas-authz's
/// tables), for [`Entitlements::count_with`].
pub const SEATS_COUNT: &str = "SELECT (SELECT count(*) FROM saas.memberships WHERE tenant_id = $1) \
     + (SELECT count(*) FROM saas.invitations WHERE tenant_id = $1 \
        AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > now())";

impl Entitlements {
    /// Counts the limited `feature` from the source of truth with `sql` (the
    /// application's own query, `$1` the tenant, one `bigint` back), run by
    /// [`refresh_counts`](Self::refresh_counts). [`SEATS_COUNT`] counts seats.
    pub fn count_with(&self, feature: &str, sql: &'static str) {
        crate::entitlements::set::lock_counters(self).push((feature.to_owned(), sql));
    }

    /// Recounts `tenant`'s limited features from the source of truth (after a change the
    /// application made, or on a schedule) and tells the set.
    pub async fn refresh_counts(&self, platform: &PlatformPool, tenant: TenantId) -> Result<(), EntitlementsError> {
        let counters = crate::entitlements::set::lock_counters(self).clone();
        if counters.is_empty() {
            return Ok(());
        }
        let mut tx = SystemTx::begin(platform, "entitlements-count").await?;
        let mut counts = Vec::new();
        for (feature, sql) in counters {
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(tenant)
                .fetch_one(&mut *tx)
                .await?;
            counts.push((feature, u64::try_from(n).unwrap_or(0)));
        }
        tx.commit().await?;
        for (feature, n) in counts {
            self.set_count(tenant, &feature, n);
        }
        Ok(())
    }
}
