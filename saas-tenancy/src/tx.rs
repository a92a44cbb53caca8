//! Transactions scoped to one tenant, and the explicit way to work without one.

use std::ops::{Deref, DerefMut};

use saas_core::audit::{self, Actor, AuditRecord};
use saas_core::{TenantId, UserId};
use sqlx::postgres::PgPool;
use sqlx::{PgConnection, Postgres, Transaction};

use crate::error::TenancyError;

/// A transaction in which row-level security shows and accepts only one tenant's rows.
///
/// [`TenantTx::begin`] sends `BEGIN` and `SET LOCAL app.tenant_id = '…'` as one
/// simple-protocol message, so scoping costs no extra round trip, and the setting is
/// transaction-local: it ends with the transaction and never survives into the pool.
/// The transaction derefs to [`PgConnection`], so queries are plain sqlx:
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool, tenant: saas_core::TenantId) -> Result<(), saas_tenancy::TenancyError> {
/// use saas_tenancy::TenantTx;
/// let mut tx = TenantTx::begin(&pool, tenant).await?;
/// // No WHERE tenant_id: row-level security adds it.
/// let names: Vec<String> = sqlx::query_scalar("select name from projects order by name")
///     .fetch_all(&mut *tx)
///     .await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
///
/// Dropping it without [`commit`](TenantTx::commit) rolls back.
///
/// The transaction may also carry the authenticated user ([`begin_as`](TenantTx::begin_as),
/// set in the same message): tables about people (`saas.users`) show a user their own row
/// and the tenant's members, nothing else.
#[derive(Debug)]
pub struct TenantTx {
    tx: Transaction<'static, Postgres>,
    tenant: TenantId,
    user: Option<UserId>,
}

#[cfg(test)]
use saas_core::db::scoped_begin_statement as begin_statement;

impl TenantTx {
    /// Takes a connection from `pool` and begins a transaction scoped to `tenant`.
    pub async fn begin(pool: &PgPool, tenant: TenantId) -> Result<Self, TenancyError> {
        Self::open(pool, "BEGIN", tenant, None).await
    }

    /// Begins a transaction scoped to `tenant` on behalf of `user` (the request's
    /// principal), both set in the one `BEGIN` message.
    pub async fn begin_as(pool: &PgPool, tenant: TenantId, user: UserId) -> Result<Self, TenancyError> {
        Self::open(pool, "BEGIN", tenant, Some(user)).await
    }

    /// Begins a read-only, repeatable-read transaction scoped to `tenant`: one consistent
    /// snapshot for reports and exports.
    pub async fn begin_snapshot(pool: &PgPool, tenant: TenantId) -> Result<Self, TenancyError> {
        Self::open(pool, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", tenant, None).await
    }

    async fn open(
        pool: &PgPool,
        begin: &'static str,
        tenant: TenantId,
        user: Option<UserId>,
    ) -> Result<Self, TenancyError> {
        let tx = saas_core::db::begin_scoped(pool, begin, tenant, user).await?;
        Ok(Self { tx, tenant, user })
    }

    /// The tenant this transaction is scoped to.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// The user this transaction acts for, if any.
    pub fn user(&self) -> Option<UserId> {
        self.user
    }

    /// Makes the rest of this transaction act for `user` (one statement; prefer
    /// [`begin_as`](Self::begin_as), which costs none). For library code that receives a
    /// transaction and must read the caller's own identity (accepting an invitation).
    pub async fn act_as(&mut self, user: UserId) -> Result<(), TenancyError> {
        if self.user != Some(user) {
            sqlx::query("SELECT set_config('app.user_id', $1, true)")
                .bind(user.to_string())
                .execute(&mut *self.tx)
                .await?;
            self.user = Some(user);
        }
        Ok(())
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), TenancyError> {
        self.tx.commit().await.map_err(Into::into)
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<(), TenancyError> {
        self.tx.rollback().await.map_err(Into::into)
    }
}

impl Deref for TenantTx {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for TenantTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

/// A pool whose role works across tenants: `BYPASSRLS`, a member of `saas_platform`.
///
/// Kept apart from the application pool by type, so that code which may cross tenants
/// says so in its signature. Use it only through [`SystemTx`].
#[derive(Debug, Clone)]
pub struct PlatformPool(PgPool);

impl PlatformPool {
    /// Wraps a pool connected as the platform role.
    pub fn new(pool: PgPool) -> Self {
        Self(pool)
    }

    /// The pool itself, for infrastructure whose statements are cross-tenant by nature and
    /// each complete on their own (a job queue claiming work for all tenants). Anything
    /// that reads or changes tenant data goes through [`SystemTx`].
    pub fn as_pool(&self) -> &PgPool {
        &self.0
    }
}

/// A transaction outside any tenant, for platform jobs and audited cross-tenant work.
///
/// Every one names its reason (a short lower-case label such as `"billing-sync"`),
/// logged when it begins and visible to the database as `app.system_reason`. Greppable:
/// every place that may touch several tenants contains `SystemTx::begin`. No tenant is
/// set, so on the application role a `SystemTx` sees no tenant rows at all; on the
/// [`PlatformPool`] it sees every tenant's rows.
#[derive(Debug)]
pub struct SystemTx {
    tx: Transaction<'static, Postgres>,
    reason: &'static str,
}

fn valid_reason(reason: &str) -> bool {
    (3..=64).contains(&reason.len())
        && reason
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.' | ':'))
}

impl SystemTx {
    /// Begins a platform transaction for `reason` (3–64 of `a-z 0-9 - _ . :`).
    pub async fn begin(pool: &PlatformPool, reason: &'static str) -> Result<Self, TenancyError> {
        if !valid_reason(reason) {
            return Err(TenancyError::InvalidReason(reason));
        }
        // The reason was checked to be a plain label, so it can be inlined.
        let begin = format!("BEGIN; SET LOCAL app.tenant_id = ''; SET LOCAL app.system_reason = '{reason}'");
        let tx = pool.0.begin_with(sqlx::AssertSqlSafe(begin)).await?;
        tracing::info!(reason, "system transaction");
        Ok(Self { tx, reason })
    }

    /// Why this transaction exists.
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    /// Records in `tenant`'s audit log that `actor` read or changed its data in this
    /// transaction (`platform.data_accessed`, with the reason and `what`), so that the
    /// tenant's admins see cross-tenant access by platform staff. Commits with the
    /// transaction.
    pub async fn audit_access(&mut self, tenant: TenantId, actor: Actor, what: &str) -> Result<(), TenancyError> {
        let what: String = what.chars().take(500).collect();
        let record = AuditRecord::new(tenant, actor, "platform.data_accessed")?
            .metadata(serde_json::json!({"reason": self.reason, "what": what}));
        audit::record(&mut self.tx, &record).await?;
        Ok(())
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), TenancyError> {
        self.tx.commit().await.map_err(Into::into)
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<(), TenancyError> {
        self.tx.rollback().await.map_err(Into::into)
    }
}

impl Deref for SystemTx {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for SystemTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_statement_inlines_only_a_uuid() {
        let t = TenantId::from_uuid(uuid_nil());
        assert_eq!(
            begin_statement("BEGIN", t, None),
            "BEGIN; SET LOCAL app.tenant_id = '00000000-0000-0000-0000-000000000000'"
        );
        let u = UserId::from_uuid(uuid_nil());
        assert!(
            begin_statement("BEGIN", t, Some(u))
                .ends_with("; SET LOCAL app.user_id = '00000000-0000-0000-0000-000000000000'")
        );
    }

    fn uuid_nil() -> saas_core::__private::uuid::Uuid {
        saas_core::__private::uuid::Uuid::nil()
    }

    #[test]
    fn reasons_are_plain_labels() {
        assert!(valid_reason("billing-sync"));
        assert!(valid_reason("support:export"));
        for bad in ["", "x", "Has Caps", "a'; drop table x; --", &"a".repeat(65)] {
            assert!(!valid_reason(bad), "{bad}");
        }
    }
}
