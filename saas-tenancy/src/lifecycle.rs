//! Creating, suspending, deleting, restoring and purging tenants, each audited.
//!
//! Creation runs on the application pool (sign-up); every other change of status runs
//! on the [`PlatformPool`] through a [`SystemTx`], because the application role may not
//! update `saas.tenants`.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use saas_core::audit::{self, Actor, AuditRecord};
use saas_core::clock::Clock;
use saas_core::{TenantId, UserId};
use sqlx::{PgConnection, PgPool, Row};

use crate::error::TenancyError;
use crate::tenant::{TENANT_COLUMNS, Tenant, TenantStatus, tenant_from_row, validate_slug};
use crate::tx::{PlatformPool, SystemTx, TenantTx};

/// How long a deleted tenant stays restorable by default.
pub const DEFAULT_PURGE_DELAY_DAYS: i64 = 30;

/// Creates an active tenant, created by `owner` (audited as `tenant.created`).
///
/// The owner's membership is saas-authz's to record, in the same flow.
pub async fn create(
    pool: &PgPool,
    slug: &str,
    name: &str,
    owner: UserId,
    clock: &dyn Clock,
) -> Result<Tenant, TenancyError> {
    validate_slug(slug)?;
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(TenancyError::InvalidName);
    }
    let id = TenantId::new();
    let now = clock.now();
    let mut tx = TenantTx::begin(pool, id).await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO saas.tenants (id, slug, name, status, created_by, created_at, updated_at) \
         VALUES ($1, $2, $3, 'active', $4, $5, $5) RETURNING {TENANT_COLUMNS}"
    )))
    .bind(id)
    .bind(slug)
    .bind(name)
    .bind(owner)
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| match e.as_database_error().and_then(|d| d.code()).as_deref() {
        Some("23505") => TenancyError::SlugTaken(slug.to_owned()),
        _ => TenancyError::Database(e),
    })?;
    let tenant = tenant_from_row(&row)?;
    let record = AuditRecord::new(id, Actor::User(owner), "tenant.created")?
        .at(now)
        .target("tenant", id)
        .metadata(serde_json::json!({"slug": slug, "name": name}));
    audit::record(&mut tx, &record).await?;
    tx.commit().await?;
    Ok(tenant)
}

/// One change of lifecycle status.
struct Transition {
    action: &'static str,
    audit: &'static str,
    from: &'static [TenantStatus],
    /// The new status; `None`: back to what deletion interrupted (suspended if a
    /// suspension reason is kept, else active).
    to: Option<TenantStatus>,
    /// The new suspension reason; `None` keeps the current one.
    suspended_reason: Option<Option<String>>,
    purge_after: Option<DateTime<Utc>>,
}

async fn transition(
    platform: &PlatformPool,
    id: TenantId,
    t: Transition,
    actor: Actor,
    clock: &dyn Clock,
) -> Result<Tenant, TenancyError> {
    let now = clock.now();
    let mut tx = SystemTx::begin(platform, "tenant-lifecycle").await?;
    let before = load_for_update(&mut tx, id).await?;
    if !t.from.contains(&before.status) {
        return Err(TenancyError::InvalidTransition {
            from: before.status.as_str(),
            action: t.action,
        });
    }
    let reason = t.suspended_reason.unwrap_or_else(|| before.suspended_reason.clone());
    let to = t.to.unwrap_or(if reason.is_some() {
        TenantStatus::Suspended
    } else {
        TenantStatus::Active
    });
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE saas.tenants SET status = $3, suspended_reason = $4, purge_after = $5, updated_at = $2 \
         WHERE id = $1 RETURNING {TENANT_COLUMNS}"
    )))
    .bind(id)
    .bind(now)
    .bind(to.as_str())
    .bind(reason)
    .bind(t.purge_after)
    .fetch_one(&mut *tx)
    .await?;
    let after = tenant_from_row(&row)?;
    let record = AuditRecord::new(id, actor, t.audit)?
        .at(now)
        .target("tenant", id)
        .metadata(serde_json::json!({
            "before": {"status": before.status, "suspended_reason": before.suspended_reason},
            "after": {"status": after.status, "suspended_reason": after.suspended_reason,
                      "purge_after": after.purge_after.map(|t| t.to_rfc3339())},
        }));
    audit::record(&mut tx, &record).await?;
    tx.commit().await?;
    Ok(after)
}

async fn load_for_update(conn: &mut PgConnection, id: TenantId) -> Result<Tenant, TenancyError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TENANT_COLUMNS} FROM saas.tenants WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(TenancyError::NotFound)?;
    tenant_from_row(&row)
}

/// Suspends an active tenant for `reason` (audited as `tenant.suspended`).
pub async fn suspend(
    platform: &PlatformPool,
    id: TenantId,
    reason: &str,
    actor: Actor,
    clock: &dyn Clock,
) -> Result<Tenant, TenancyError> {
    let t = Transition {
        action: "suspended",
        audit: "tenant.suspended",
        from: &[TenantStatus::Active],
        to: Some(TenantStatus::Suspended),
        suspended_reason: Some(Some(reason.trim().chars().take(500).collect())),
        purge_after: None,
    };
    transition(platform, id, t, actor, clock).await
}

/// Reactivates a suspended tenant (audited as `tenant.reactivated`).
pub async fn reactivate(
    platform: &PlatformPool,
    id: TenantId,
    actor: Actor,
    clock: &dyn Clock,
) -> Result<Tenant, TenancyError> {
    let t = Transition {
        action: "reactivated",
        audit: "tenant.reactivated",
        from: &[TenantStatus::Suspended],
        to: Some(TenantStatus::Active),
        suspended_reason: Some(None),
        purge_after: None,
    };
    transition(platform, id, t, actor, clock).await
}

/// Requests deletion: the tenant disappears from requests at once and is purged after
/// `delay` (default [`DEFAULT_PURGE_DELAY_DAYS`]); audited as `tenant.deletion_requested`.
pub async fn request_deletion(
    platform: &PlatformPool,
    id: TenantId,
    delay: Option<Duration>,
    actor: Actor,
    clock: &dyn Clock,
) -> Result<Tenant, TenancyError> {
    let t = Transition {
        action: "deleted",
        audit: "tenant.deletion_requested",
        from: &[TenantStatus::Active, TenantStatus::Suspended],
        to: Some(TenantStatus::PendingDeletion),
        suspended_reason: None,
        purge_after: Some(clock.now() + delay.unwrap_or_else(|| Duration::days(DEFAULT_PURGE_DELAY_DAYS))),
    };
    transition(platform, id, t, actor, clock).await
}

/// Restores a tenant whose deletion is pending (audited as `tenant.restored`). A tenant
/// that was suspended when deletion was requested comes back suspended.
pub async fn restore(
    platform: &PlatformPool,
    id: TenantId,
    actor: Actor,
    clock: &dyn Clock,
) -> Result<Tenant, TenancyError> {
    let t = Transition {
        action: "restored",
        audit: "tenant.restored",
        from: &[TenantStatus::PendingDeletion],
        to: None,
        suspended_reason: None,
        purge_after: None,
    };
    transition(platform, id, t, actor, clock).await
}

/// What [`purge`] deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgeReport {
    /// Rows deleted per table, in deletion order.
    pub deleted: Vec<(String, u64)>,
}

/// The registered tenant tables, children before parents (by foreign keys among them).
pub async fn tenant_tables_in_delete_order(conn: &mut PgConnection) -> Result<Vec<String>, TenancyError> {
    let tables: Vec<(i64, String)> =
        sqlx::query_as("SELECT table_name::oid::int8, table_name::text FROM saas.tenant_tables ORDER BY 2")
            .fetch_all(&mut *conn)
            .await?;
    let edges: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT conrelid::int8, confrelid::int8 FROM pg_constraint \
         WHERE contype = 'f' AND conrelid IN (SELECT table_name FROM saas.tenant_tables) \
           AND confrelid IN (SELECT table_name FROM saas.tenant_tables) AND conrelid <> confrelid",
    )
    .fetch_all(&mut *conn)
    .await?;
    // Kahn's algorithm on "child must go before parent".
    let names: BTreeMap<i64, String> = tables.into_iter().collect();
    let mut referenced_by: HashMap<i64, usize> = names.keys().map(|k| (*k, 0)).collect();
    for (_child, parent) in &edges {
        *referenced_by.entry(*parent).or_default() += 1;
    }
    let mut ready: Vec<i64> = names.keys().filter(|k| referenced_by[k] == 0).copied().collect();
    let mut order = Vec::with_capacity(names.len());
    let mut done = HashSet::new();
    while let Some(t) = ready.pop() {
        if !done.insert(t) {
            continue;
        }
        order.push(names[&t].clone());
        for (child, parent) in &edges {
            if *child == t
                && let Some(n) = referenced_by.get_mut(parent)
            {
                *n -= 1;
                if *n == 0 {
                    ready.push(*parent);
                }
            }
        }
    }
    // Cycles (rare): append the rest; the deletes run in one transaction with deferred
    // constraints where the schema declares them so.
    for (oid, name) in &names {
        if !done.contains(oid) {
            order.push(name.clone());
        }
    }
    Ok(order)
}

/// Purges a tenant whose deletion is due: deletes its rows from every registered tenant
/// table (children first), then turns the tenant into a tombstone (status `purged`,
/// name and slug scrubbed). The tenant's audit log is kept as the record of what
/// happened; `tenant.purged` is its last entry.
pub async fn purge(
    platform: &PlatformPool,
    id: TenantId,
    actor: Actor,
    clock: &dyn Clock,
) -> Result<PurgeReport, TenancyError> {
    let now = clock.now();
    let mut tx = SystemTx::begin(platform, "tenant-purge").await?;
    let tenant = load_for_update(&mut tx, id).await?;
    let due = tenant.purge_after.is_some_and(|t| t <= now);
    if tenant.status != TenantStatus::PendingDeletion || !due {
        return Err(TenancyError::InvalidTransition {
            from: tenant.status.as_str(),
            action: "purged (deletion must be requested and due)",
        });
    }
    let mut deleted = Vec::new();
    for table in tenant_tables_in_delete_order(&mut tx).await? {
        if table == "saas.audit_log" {
            continue;
        }
        // `table` is a regclass rendered by PostgreSQL: a quoted, qualified identifier.
        let n = sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE tenant_id = $1")))
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        deleted.push((table, n));
    }
    let tombstone = format!("purged-{}", &id.as_uuid().simple().to_string()[20..]);
    sqlx::query(
        "UPDATE saas.tenants SET status = 'purged', purge_after = NULL, name = '[purged]', slug = $2, \
         purged_at = $3, updated_at = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(&tombstone)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let counts: serde_json::Map<String, serde_json::Value> = deleted
        .iter()
        .map(|(t, n)| (t.clone(), serde_json::Value::from(*n)))
        .collect();
    let record = AuditRecord::new(id, actor, "tenant.purged")?
        .at(now)
        .target("tenant", id)
        .metadata(serde_json::json!({"deleted": counts, "slug_was": tenant.slug}));
    audit::record(&mut tx, &record).await?;
    tx.commit().await?;
    Ok(PurgeReport { deleted })
}

/// Purges every tenant whose deletion is due; returns the purged ids. A platform job.
pub async fn purge_due(
    platform: &PlatformPool,
    actor: Actor,
    clock: &dyn Clock,
) -> Result<Vec<TenantId>, TenancyError> {
    let mut tx = SystemTx::begin(platform, "tenant-purge").await?;
    let due: Vec<TenantId> = sqlx::query(
        "SELECT id FROM saas.tenants WHERE status = 'pending_deletion' AND purge_after <= $1 ORDER BY purge_after",
    )
    .bind(clock.now())
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| r.try_get("id"))
    .collect::<Result<_, _>>()?;
    tx.commit().await?;
    for id in &due {
        purge(platform, *id, actor.clone(), clock).await?;
    }
    Ok(due)
}
