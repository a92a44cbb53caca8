//! API keys: per-tenant credentials for machines, shown once, stored as a digest.
//!
//! A key looks like `sk_live_` followed by 86 URL-safe characters that encode the
//! tenant, the key's id and 256 random bits. The server finds the key under the
//! tenant's row-level security (there is no cross-tenant lookup to abuse), compares the
//! digest in constant time, and remembers verified keys for a short while; revocations
//! reach every process within about a second once [`ApiKeys::listen`] runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use moka::sync::Cache;
use saas_core::audit::{self, Actor, AuditRecord};
use saas_core::clock::{Clock, SystemClock};
use saas_core::{ApiKeyId, Principal, TenantId, UserId};
use saas_tenancy::TenantTx;
use serde_json::json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::error::{ApiKeyError, AuthError};
use crate::membership::require_manager;
use crate::notify::{self, Change};
use crate::secret::{self, Secret, Token};
use saas_core::notify::{Lifeline, Notice};

/// What to create.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NewApiKey {
    /// A name for people (`CI deploy`).
    pub name: String,
    /// The permissions the key is limited to (`project:read`, `project:*`).
    pub scopes: Vec<String>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// For a service-account key: the role it holds. `None`: a member's key.
    pub service_role: Option<String>,
}

impl NewApiKey {
    /// A member's key named `name` with `scopes`, without expiry. It acts for the member
    /// who creates it: what it may do is its scopes intersected with that member's
    /// permissions at the time of each request, and it is revoked when the member leaves
    /// or is removed.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(name: impl Into<String>, scopes: I) -> Self {
        Self {
            name: name.into(),
            scopes: scopes.into_iter().map(Into::into).collect(),
            expires_at: None,
            service_role: None,
        }
    }

    /// A service-account key named `name`: it belongs to the tenant, holds `role` (which
    /// its creator must hold or outrank), is limited to `scopes` (`["*:*"]` is not a scope;
    /// list them), survives the removal of any member, and appears as an `api_key` actor in
    /// the audit log.
    pub fn service_account<I: IntoIterator<Item = S>, S: Into<String>>(
        name: impl Into<String>,
        role: impl Into<String>,
        scopes: I,
    ) -> Self {
        Self {
            service_role: Some(role.into()),
            ..Self::new(name, scopes)
        }
    }
    /// Expires at `at`.
    pub fn expires_at(mut self, at: DateTime<Utc>) -> Self {
        self.expires_at = Some(at);
        self
    }
}

/// An API key's description; never its secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ApiKey {
    /// Its id.
    pub id: ApiKeyId,
    /// The tenant it belongs to.
    pub tenant_id: TenantId,
    /// Its name.
    pub name: String,
    /// The first characters of the key, to recognise it (`sk_live_AZb3…`).
    pub display_prefix: String,
    /// The permissions it is limited to.
    pub scopes: Vec<String>,
    /// Who created it (a member's key acts as this user, limited to the scopes).
    pub created_by: UserId,
    /// For a service-account key, the role it holds; `None` for a member's key.
    pub service_role: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it was last used (updated at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A key just created: its description and the secret, which is shown this once.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IssuedApiKey {
    /// The key's description.
    pub key: ApiKey,
    /// The full key to hand to its owner. Not stored anywhere.
    pub secret: Secret,
}

const COLUMNS: &str =
    "id, tenant_id, name, display_prefix, scopes, created_by, role, created_at, expires_at, revoked_at, last_used_at";

fn key_from(row: &sqlx::postgres::PgRow) -> Result<ApiKey, sqlx::Error> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        display_prefix: row.try_get("display_prefix")?,
        scopes: row.try_get("scopes")?,
        created_by: row.try_get("created_by")?,
        service_role: row.try_get("role")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

const USAGE_EVERY_SECS: i64 = 60;

/// Whether `s` is a permission name: `resource:action` or `resource:*`, lower-case.
pub fn is_permission_name(s: &str) -> bool {
    let segment = |seg: &str| {
        let mut chars = seg.chars();
        chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    };
    s.len() <= 64
        && s.split_once(':')
            .is_some_and(|(res, action)| segment(res) && (action == "*" || segment(action)))
}

#[derive(Debug)]
struct Verified {
    tenant: TenantId,
    digest: [u8; 32],
    created_by: UserId,
    service: bool,
    scopes: Arc<[String]>,
    expires_at: Option<DateTime<Utc>>,
    revoked: bool,
    /// When this process last queued the key's use (seconds since the epoch).
    marked_at: AtomicI64,
}

struct Inner {
    pool: PgPool,
    prefix: String,
    cache: Cache<Uuid, Arc<Verified>>,
    /// Keys used since the last flush (each at most once a minute): id → (tenant, when).
    used: Mutex<HashMap<ApiKeyId, (TenantId, DateTime<Utc>)>>,
    clock: Arc<dyn Clock>,
    /// Ends the change listener when the last clone is dropped.
    life: Lifeline,
}

/// Creates, lists, revokes and authenticates API keys.
#[derive(Clone)]
pub struct ApiKeys {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl ApiKeys {
    /// Keys stored through `pool`, with the prefix `sk_live`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                prefix: "sk_live".into(),
                cache: Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(Duration::from_secs(60))
                    .build(),
                used: Mutex::new(HashMap::new()),
                clock: Arc::new(SystemClock),
                life: Lifeline::new(),
            }),
        }
    }

    /// Uses `prefix` (letters, digits and `_`, such as `sk_test` or `acme_live`) for new
    /// keys and recognises keys by it. Set before sharing.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.prefix = prefix.into();
        }
        self
    }

    /// Uses `clock` for timestamps and expiry. Set before sharing.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.clock = clock;
        }
        self
    }

    /// The prefix keys carry.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Whether `credential` looks like one of our keys (by its prefix).
    pub fn recognises(&self, credential: &str) -> bool {
        credential
            .strip_prefix(self.inner.prefix.as_str())
            .is_some_and(|rest| rest.starts_with('_'))
    }

    /// Creates a key in the transaction's tenant. The actor needs the admin or owner role.
    pub async fn create(
        &self,
        tx: &mut TenantTx,
        actor: &Principal,
        new: NewApiKey,
    ) -> Result<IssuedApiKey, ApiKeyError> {
        let name = new.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(ApiKeyError::InvalidName);
        }
        if new.scopes.len() > 64 {
            return Err(ApiKeyError::InvalidScope(format!(
                "{} scopes (at most 64)",
                new.scopes.len()
            )));
        }
        if let Some(bad) = new.scopes.iter().find(|s| !is_permission_name(s)) {
            return Err(ApiKeyError::InvalidScope(bad.clone()));
        }
        let now = self.inner.clock.now();
        if new.expires_at.is_some_and(|at| at <= now) {
            return Err(ApiKeyError::ExpiryInPast);
        }
        require_manager(tx, actor).await.map_err(member_to_key_error)?;
        if let Some(role) = &new.service_role {
            // Nobody hands a machine a role above their own.
            let ranked = crate::membership::ranked(tx, None, &[role.as_str()])
                .await
                .map_err(member_to_key_error_keep_role)?;
            let actor_rank = crate::membership::acting_rank(tx, actor)
                .await
                .map_err(member_to_key_error)?;
            if ranked.iter().any(|(_, rank)| *rank > actor_rank) {
                return Err(ApiKeyError::Forbidden);
            }
        }
        let tenant = tx.tenant();
        let id = ApiKeyId::new();
        let token = Token::new(tenant.into_uuid(), id.into_uuid());
        let full = token.encode(&self.inner.prefix);
        let display_prefix = format!("{}…", &full[..self.inner.prefix.len() + 5]);
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO saas.api_keys (tenant_id, id, name, display_prefix, secret_hash, scopes, created_by, created_at, expires_at, kind, role) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {COLUMNS}"
        )))
        .bind(tenant)
        .bind(id)
        .bind(name)
        .bind(&display_prefix)
        .bind(&token.digest()[..])
        .bind(&new.scopes)
        .bind(actor.user_id)
        .bind(now)
        .bind(new.expires_at)
        .bind(if new.service_role.is_some() { "service" } else { "member" })
        .bind(&new.service_role)
        .fetch_one(&mut **tx)
        .await?;
        let key = key_from(&row)?;
        let record = AuditRecord::new(tenant, Actor::from(actor), "api_key.created")?
            .target("api_key", id)
            .metadata(json!({ "after": {
                "name": key.name, "scopes": key.scopes, "expires_at": key.expires_at, "service_role": key.service_role } }))
            .at(now);
        audit::record(tx, &record).await?;
        if key.service_role.is_some() {
            // The evaluator knows service accounts as members holding their role.
            notify::send(tx, &Change::Policy { tenant }).await?;
        }
        Ok(IssuedApiKey {
            key,
            secret: Secret::new(full),
        })
    }

    /// The keys of the transaction's tenant, newest first, revoked ones included.
    pub async fn list(tx: &mut TenantTx) -> Result<Vec<ApiKey>, ApiKeyError> {
        let tenant = tx.tenant();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM saas.api_keys WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC"
        )))
        .bind(tenant)
        .fetch_all(&mut **tx)
        .await?;
        Ok(rows.iter().map(key_from).collect::<Result<_, _>>()?)
    }

    /// Revokes a key (admins and owners). Revoking a revoked key changes nothing.
    pub async fn revoke(&self, tx: &mut TenantTx, actor: &Principal, id: ApiKeyId) -> Result<ApiKey, ApiKeyError> {
        require_manager(tx, actor).await.map_err(member_to_key_error)?;
        let tenant = tx.tenant();
        let now = self.inner.clock.now();
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE saas.api_keys SET revoked_at = coalesce(revoked_at, $3), revoked_by = coalesce(revoked_by, $4) \
             WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}, (revoked_at = $3) AS now_revoked"
        )))
        .bind(tenant)
        .bind(id)
        .bind(now)
        .bind(actor.user_id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(ApiKeyError::NotFound)?;
        let key = key_from(&row)?;
        if row.try_get::<bool, _>("now_revoked")? {
            let record = AuditRecord::new(tenant, Actor::from(actor), "api_key.revoked")?
                .target("api_key", id)
                .metadata(json!({ "before": { "revoked_at": null }, "after": { "revoked_at": now } }))
                .at(now);
            audit::record(tx, &record).await?;
            notify::send(tx, &Change::ApiKey { key: id }).await?;
            if key.service_role.is_some() {
                notify::send(tx, &Change::Policy { tenant }).await?;
            }
        }
        self.inner.cache.invalidate(&id.into_uuid());
        Ok(key)
    }

    /// Authenticates a presented key: for a member's key the principal of its creator, for
    /// a service-account key the key itself; either bound to the key's tenant and limited
    /// to its scopes. Unknown keys and wrong secrets get the same
    /// answer; a correct secret learns that its key was revoked or expired.
    pub async fn authenticate(&self, presented: &str) -> Result<Principal, AuthError> {
        let token = Token::parse(&self.inner.prefix, presented).ok_or(AuthError::InvalidApiKey)?;
        let tenant = TenantId::from_uuid(token.tenant);
        let verified = match self.inner.cache.get(&token.id) {
            Some(v) => v,
            None => {
                let v = Arc::new(self.load(tenant, token.id).await?.ok_or(AuthError::InvalidApiKey)?);
                self.inner.cache.insert(token.id, v.clone());
                v
            }
        };
        if verified.tenant != tenant || !secret::verify(&token.secret, &verified.digest) {
            return Err(AuthError::InvalidApiKey);
        }
        if verified.revoked {
            return Err(AuthError::ApiKeyRevoked);
        }
        let now = self.inner.clock.now();
        if verified.expires_at.is_some_and(|at| at <= now) {
            return Err(AuthError::ApiKeyExpired);
        }
        let id = ApiKeyId::from_uuid(token.id);
        // Queue the use for `last_used_at` at most once a minute per key: one atomic load
        // on the usual path, no write per request.
        let secs = now.timestamp();
        let marked = verified.marked_at.load(Ordering::Relaxed);
        if secs.saturating_sub(marked) >= USAGE_EVERY_SECS
            && verified
                .marked_at
                .compare_exchange(marked, secs, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            && let Ok(mut used) = self.inner.used.lock()
        {
            used.insert(id, (tenant, now));
        }
        Ok(if verified.service {
            Principal::service_account(id, tenant, verified.scopes.clone())
        } else {
            Principal::api_key(verified.created_by, id, tenant, verified.scopes.clone())
        })
    }

    async fn load(&self, tenant: TenantId, id: Uuid) -> Result<Option<Verified>, AuthError> {
        let mut tx = crate::tenant_tx(&self.inner.pool, tenant).await?;
        let row = sqlx::query(
            "SELECT secret_hash, created_by, kind = 'service' AS service, scopes, expires_at, revoked_at IS NOT NULL AS revoked \
             FROM saas.api_keys WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await.map_err(crate::db_err)?;
        let Some(row) = row else { return Ok(None) };
        let hash: Vec<u8> = row.try_get("secret_hash")?;
        let mut digest = [0u8; 32];
        if hash.len() != 32 {
            return Ok(None);
        }
        digest.copy_from_slice(&hash);
        let scopes: Vec<String> = row.try_get("scopes")?;
        Ok(Some(Verified {
            tenant,
            digest,
            created_by: row.try_get("created_by")?,
            service: row.try_get("service")?,
            scopes: scopes.into(),
            expires_at: row.try_get("expires_at")?,
            revoked: row.try_get("revoked")?,
            marked_at: AtomicI64::new(i64::MIN),
        }))
    }

    /// Writes `last_used_at` for keys used since the last flush, one statement per
    /// tenant. Returns how many keys were updated. [`spawn_usage_flusher`](Self::spawn_usage_flusher)
    /// calls it periodically; call it at shutdown too.
    pub async fn flush_usage(&self) -> Result<usize, ApiKeyError> {
        let used = match self.inner.used.lock() {
            Ok(mut used) => std::mem::take(&mut *used),
            Err(_) => return Ok(0),
        };
        let mut by_tenant: HashMap<TenantId, Vec<(ApiKeyId, DateTime<Utc>)>> = HashMap::new();
        for (id, (tenant, at)) in used {
            by_tenant.entry(tenant).or_default().push((id, at));
        }
        let mut n = 0;
        for (tenant, keys) in by_tenant {
            let ids: Vec<ApiKeyId> = keys.iter().map(|k| k.0).collect();
            let ats: Vec<DateTime<Utc>> = keys.iter().map(|k| k.1).collect();
            let mut tx = crate::tenant_tx(&self.inner.pool, tenant).await?;
            let done = sqlx::query(
                "UPDATE saas.api_keys k SET last_used_at = greatest(k.last_used_at, u.at) \
                 FROM unnest($2::uuid[], $3::timestamptz[]) AS u(id, at) \
                 WHERE k.tenant_id = $1 AND k.id = u.id",
            )
            .bind(tenant)
            .bind(&ids)
            .bind(&ats)
            .execute(&mut *tx)
            .await?;
            tx.commit().await.map_err(crate::db_err)?;
            n += usize::try_from(done.rows_affected()).unwrap_or(usize::MAX);
        }
        Ok(n)
    }

    /// Flushes key usage every `every` until the returned task is aborted.
    pub fn spawn_usage_flusher(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let keys = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = keys.flush_usage().await {
                    tracing::warn!(error = %e, "writing API key usage failed");
                }
            }
        })
    }

    /// Drops revoked keys from this process's cache as soon as any process revokes them
    /// (directly, or by removing the member who created them). Ends when the last clone
    /// of these keys is dropped.
    pub fn listen(&self) -> tokio::task::JoinHandle<()> {
        let cache = self.inner.cache.clone();
        notify::spawn(
            self.inner.pool.clone(),
            self.inner.life.ended(),
            move |notice| match notice {
                Notice::Message(Change::ApiKey { key }) => cache.invalidate(&key.into_uuid()),
                Notice::Message(_) => {}
                Notice::Gap => cache.invalidate_all(),
            },
        )
    }
}

fn member_to_key_error_keep_role(e: crate::error::MemberError) -> ApiKeyError {
    match e {
        crate::error::MemberError::UnknownRole(r) => ApiKeyError::UnknownRole(r),
        other => member_to_key_error(other),
    }
}

fn member_to_key_error(e: crate::error::MemberError) -> ApiKeyError {
    match e {
        crate::error::MemberError::Database(e) => ApiKeyError::Database(e),
        _ => ApiKeyError::Forbidden,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_names() {
        for ok in ["project:read", "project:*", "billing:manage", "a1:b-c_d"] {
            assert!(is_permission_name(ok), "{ok}");
        }
        for bad in [
            "project",
            ":read",
            "project:",
            "Project:read",
            "project:read:x",
            "*:*",
            "p:r w",
        ] {
            assert!(!is_permission_name(bad), "{bad}");
        }
    }
}
