//! The tenant model and where tenants are loaded from.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use moka::future::Cache;
use saas_core::{TenantId, UserId};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};

use crate::error::TenancyError;

/// Where a tenant is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TenantStatus {
    /// Serving normally.
    Active,
    /// Blocked (unpaid, abuse): requests answer 423 except on routes allowed while suspended.
    Suspended,
    /// Deletion requested; restorable until `purge_after`.
    PendingDeletion,
    /// Data deleted; only a tombstone remains.
    Purged,
}

impl TenantStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
            TenantStatus::PendingDeletion => "pending_deletion",
            TenantStatus::Purged => "purged",
        }
    }

    fn parse(s: &str) -> Result<Self, TenancyError> {
        Ok(match s {
            "active" => TenantStatus::Active,
            "suspended" => TenantStatus::Suspended,
            "pending_deletion" => TenantStatus::PendingDeletion,
            "purged" => TenantStatus::Purged,
            other => {
                return Err(TenancyError::Database(sqlx::Error::Decode(
                    format!("unknown tenant status {other:?}").into(),
                )));
            }
        })
    }
}

/// A tenant: the customer organisation that owns data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Tenant {
    /// Its id.
    pub id: TenantId,
    /// Its URL-safe name (`acme`), unique.
    pub slug: String,
    /// Its display name.
    pub name: String,
    /// Its lifecycle status.
    pub status: TenantStatus,
    /// Why it is suspended.
    pub suspended_reason: Option<String>,
    /// When a pending deletion becomes final.
    pub purge_after: Option<DateTime<Utc>>,
    /// Who created it.
    pub created_by: Option<UserId>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

pub(crate) const TENANT_COLUMNS: &str =
    "id, slug, name, status, suspended_reason, purge_after, created_by, created_at, updated_at";

pub(crate) fn tenant_from_row(row: &sqlx::postgres::PgRow) -> Result<Tenant, TenancyError> {
    let status: String = row.try_get("status")?;
    Ok(Tenant {
        id: row.try_get("id")?,
        slug: row.try_get("slug")?,
        name: row.try_get("name")?,
        status: TenantStatus::parse(&status)?,
        suspended_reason: row.try_get("suspended_reason")?,
        purge_after: row.try_get("purge_after")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Checks a slug: a DNS label of lower-case letters, digits and inner hyphens.
pub fn validate_slug(slug: &str) -> Result<(), TenancyError> {
    let b = slug.as_bytes();
    let ok = (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(TenancyError::InvalidSlug(slug.chars().take(64).collect()))
    }
}

/// Loads tenants by id or slug.
pub trait TenantStore: Clone + Send + Sync + 'static {
    /// The tenant with this id.
    fn by_id(&self, id: TenantId) -> impl Future<Output = Result<Option<Tenant>, TenancyError>> + Send;
    /// The tenant with this slug.
    fn by_slug(&self, slug: &str) -> impl Future<Output = Result<Option<Tenant>, TenancyError>> + Send;
}

/// Tenants in `saas.tenants`, read with the application pool.
#[derive(Debug, Clone)]
pub struct PgTenantStore {
    pool: PgPool,
}

impl PgTenantStore {
    /// Reads through `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

impl TenantStore for PgTenantStore {
    async fn by_id(&self, id: TenantId) -> Result<Option<Tenant>, TenancyError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TENANT_COLUMNS} FROM saas.tenants WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    async fn by_slug(&self, slug: &str) -> Result<Option<Tenant>, TenancyError> {
        if validate_slug(slug).is_err() {
            return Ok(None);
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TENANT_COLUMNS} FROM saas.tenants WHERE slug = $1"
        )))
        .bind(slug)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(tenant_from_row).transpose()
    }
}

/// A store in front of another, caching tenants by id (and slugs to ids) for a TTL.
///
/// Lifecycle changes call [`CachedTenantStore::invalidate`]; other processes see them
/// within the TTL. Entries are keyed by the typed id or the exact slug, so two tenants
/// never share an entry. Misses are not cached (a tenant created a moment ago resolves).
#[derive(Clone)]
pub struct CachedTenantStore<S> {
    inner: S,
    by_id: Cache<TenantId, Arc<Tenant>>,
    slugs: Cache<String, TenantId>,
}

impl<S> std::fmt::Debug for CachedTenantStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedTenantStore")
            .field("entries", &self.by_id.entry_count())
            .finish()
    }
}

impl<S: TenantStore> CachedTenantStore<S> {
    /// Caches up to `capacity` tenants for `ttl`.
    pub fn new(inner: S, capacity: u64, ttl: Duration) -> Self {
        Self {
            inner,
            by_id: Cache::builder().max_capacity(capacity).time_to_live(ttl).build(),
            slugs: Cache::builder().max_capacity(capacity).time_to_live(ttl).build(),
        }
    }

    /// Forgets a tenant (after a lifecycle change).
    pub async fn invalidate(&self, id: TenantId) {
        if let Some(t) = self.by_id.get(&id).await {
            self.slugs.invalidate(&t.slug).await;
        }
        self.by_id.invalidate(&id).await;
    }

    async fn remember(&self, tenant: &Tenant) -> Arc<Tenant> {
        let t = Arc::new(tenant.clone());
        self.by_id.insert(tenant.id, t.clone()).await;
        self.slugs.insert(tenant.slug.clone(), tenant.id).await;
        t
    }
}

impl<S: TenantStore> TenantStore for CachedTenantStore<S> {
    async fn by_id(&self, id: TenantId) -> Result<Option<Tenant>, TenancyError> {
        if let Some(t) = self.by_id.get(&id).await {
            return Ok(Some((*t).clone()));
        }
        let found = self.inner.by_id(id).await?;
        if let Some(t) = &found {
            self.remember(t).await;
        }
        Ok(found)
    }

    async fn by_slug(&self, slug: &str) -> Result<Option<Tenant>, TenancyError> {
        if let Some(id) = self.slugs.get(slug).await
            && let Some(t) = self.by_id.get(&id).await
            && t.slug == slug
        {
            return Ok(Some((*t).clone()));
        }
        let found = self.inner.by_slug(slug).await?;
        if let Some(t) = &found {
            self.remember(t).await;
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_dns_labels() {
        for ok in ["acme", "a", "acme-corp", "x1", &"a".repeat(63)] {
            assert!(validate_slug(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-acme",
            "acme-",
            "Acme",
            "ac me",
            "acme.corp",
            "ac_me",
            &"a".repeat(64),
            "ünï",
        ] {
            assert!(validate_slug(bad).is_err(), "{bad}");
        }
    }
}
