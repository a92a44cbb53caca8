//! Support access: platform staff acting inside a tenant, time-boxed and visible.
//!
//! Staff open a session on one tenant with a reason, read-only unless write is granted,
//! for at most [`MAX_SESSION_MINUTES`]. While it lasts, the staff member's requests to
//! that tenant pass the [`TenantLayer`](crate::TenantLayer), and each one is written to
//! the tenant's audit log (`support.request`), where the tenant's admins see it.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use saas_core::audit::{self, Actor, AuditRecord};
use saas_core::clock::Clock;
use saas_core::{SupportSessionId, TenantId, UserId};
use sqlx::{PgPool, Row};

use crate::error::TenancyError;
use crate::tx::{PlatformPool, SystemTx, TenantTx};

/// The longest support session that can be opened.
pub const MAX_SESSION_MINUTES: u32 = 240;

/// An open (or past) support session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SupportSession {
    /// Its id.
    pub id: SupportSessionId,
    /// The tenant.
    pub tenant_id: TenantId,
    /// The staff member.
    pub staff_id: UserId,
    /// Why it was opened.
    pub reason: String,
    /// Whether writes are allowed.
    pub can_write: bool,
    /// When it opened.
    pub opened_at: DateTime<Utc>,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
}

/// Opens a support session (audited in the tenant's log as `support.session_opened`).
pub async fn open_session(
    platform: &PlatformPool,
    tenant: TenantId,
    staff: UserId,
    reason: &str,
    can_write: bool,
    minutes: u32,
    clock: &dyn Clock,
) -> Result<SupportSession, TenancyError> {
    let reason = reason.trim();
    if !(3..=500).contains(&reason.len()) {
        return Err(TenancyError::InvalidSupportSession(
            "a reason of 3-500 characters is required".into(),
        ));
    }
    if minutes == 0 || minutes > MAX_SESSION_MINUTES {
        return Err(TenancyError::InvalidSupportSession(format!(
            "a session lasts 1-{MAX_SESSION_MINUTES} minutes"
        )));
    }
    let now = clock.now();
    let session = SupportSession {
        id: SupportSessionId::new(),
        tenant_id: tenant,
        staff_id: staff,
        reason: reason.to_owned(),
        can_write,
        opened_at: now,
        expires_at: now + Duration::minutes(i64::from(minutes)),
    };
    let mut tx = SystemTx::begin(platform, "support-session").await?;
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM saas.tenants WHERE id = $1")
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?;
    match status.as_deref() {
        None | Some("purged") => return Err(TenancyError::NotFound),
        Some(_) => {}
    }
    sqlx::query(
        "INSERT INTO saas.support_sessions (tenant_id, id, staff_id, reason, can_write, opened_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(tenant)
    .bind(session.id)
    .bind(staff)
    .bind(&session.reason)
    .bind(can_write)
    .bind(session.opened_at)
    .bind(session.expires_at)
    .execute(&mut *tx)
    .await?;
    let record = AuditRecord::new(tenant, Actor::Support(staff), "support.session_opened")?
        .at(now)
        .target("support_session", session.id)
        .metadata(serde_json::json!({
            "reason": session.reason,
            "can_write": can_write,
            "expires_at": session.expires_at.to_rfc3339(),
        }));
    audit::record(&mut tx, &record).await?;
    tx.commit().await?;
    Ok(session)
}

/// Closes a session before it expires (audited as `support.session_closed`).
pub async fn close_session(
    platform: &PlatformPool,
    tenant: TenantId,
    session: SupportSessionId,
    clock: &dyn Clock,
) -> Result<(), TenancyError> {
    let now = clock.now();
    let mut tx = SystemTx::begin(platform, "support-session").await?;
    let staff: Option<UserId> = sqlx::query_scalar(
        "UPDATE saas.support_sessions SET closed_at = $3 \
         WHERE tenant_id = $1 AND id = $2 AND closed_at IS NULL RETURNING staff_id",
    )
    .bind(tenant)
    .bind(session)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let staff = staff.ok_or(TenancyError::NotFound)?;
    let record = AuditRecord::new(tenant, Actor::Support(staff), "support.session_closed")?
        .at(now)
        .target("support_session", session);
    audit::record(&mut tx, &record).await?;
    tx.commit().await?;
    Ok(())
}

/// Why a support request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SupportDenial {
    /// No such session for this tenant and staff member, or it was closed.
    Unknown,
    /// The session has expired.
    Expired,
    /// The session is read-only and the request writes.
    ReadOnly,
}

/// Checks support sessions and records the requests made under them; used by the
/// [`TenantLayer`](crate::TenantLayer).
#[derive(Clone)]
pub struct SupportSessions {
    pool: PgPool,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SupportSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupportSessions").finish_non_exhaustive()
    }
}

impl SupportSessions {
    /// Reads sessions and writes audit records through the application `pool`.
    pub fn new(pool: PgPool, clock: Arc<dyn Clock>) -> Self {
        Self { pool, clock }
    }

    /// Admits one request of `staff` under `session` to `tenant` and records it in the
    /// tenant's audit log, or says why not.
    pub async fn admit(
        &self,
        tenant: TenantId,
        staff: UserId,
        session: SupportSessionId,
        method: &http::Method,
        path: &str,
    ) -> Result<Result<(), SupportDenial>, TenancyError> {
        let now = self.clock.now();
        let mut tx = TenantTx::begin(&self.pool, tenant).await?;
        let row = sqlx::query(
            "SELECT can_write, expires_at, closed_at FROM saas.support_sessions WHERE id = $1 AND staff_id = $2",
        )
        .bind(session)
        .bind(staff)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(Err(SupportDenial::Unknown));
        };
        let closed: Option<DateTime<Utc>> = row.try_get("closed_at")?;
        if closed.is_some() {
            return Ok(Err(SupportDenial::Unknown));
        }
        let expires: DateTime<Utc> = row.try_get("expires_at")?;
        if now >= expires {
            return Ok(Err(SupportDenial::Expired));
        }
        let can_write: bool = row.try_get("can_write")?;
        let writes = !matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS);
        if writes && !can_write {
            return Ok(Err(SupportDenial::ReadOnly));
        }
        let path: String = path.chars().take(512).collect();
        let record = AuditRecord::new(tenant, Actor::Support(staff), "support.request")?
            .at(now)
            .target("support_session", session)
            .metadata(serde_json::json!({"method": method.as_str(), "path": path}));
        audit::record(&mut tx, &record).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }
}
