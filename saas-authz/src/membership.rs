//! Memberships: which users belong to a tenant, with which roles; the tenant's
//! authentication settings; and the [`MembershipCheck`] that lets `TenantLayer` admit
//! members only.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::StatusCode;
use moka::sync::Cache;
use saas_core::audit::{self, Actor, AuditRecord};
use saas_core::clock::{Clock, SystemClock};
use saas_core::{AuthMethod, Principal, Problem, TenantId, UserId};
use saas_tenancy::{MembershipCheck, MembershipError, MembershipVerdict, TenantTx};
use serde_json::json;
use sqlx::{PgConnection, PgPool, Row};

use crate::error::MemberError;
use crate::notify;
use crate::role::{self, MANAGER_RANK, OWNER};

/// A member of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Member {
    /// The user.
    pub user_id: UserId,
    /// Their roles in this tenant.
    pub roles: Vec<String>,
    /// When they joined.
    pub joined_at: DateTime<Utc>,
    /// Who invited or added them (none for the founding owner).
    pub invited_by: Option<UserId>,
    /// Their email address, when known.
    pub email: Option<String>,
}

impl Member {
    /// Whether the member holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// A tenant's authentication settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct AuthSettings {
    /// Members must have used a second factor to enter the tenant (API keys excepted).
    pub require_mfa: bool,
    /// An invitation may be accepted by a user whose email differs from the invited one.
    pub invitations_any_email: bool,
}

impl AuthSettings {
    /// Settings with MFA required or not.
    pub fn with_require_mfa(mut self, on: bool) -> Self {
        self.require_mfa = on;
        self
    }
    /// Settings allowing any email to accept an invitation, or not.
    pub fn with_invitations_any_email(mut self, on: bool) -> Self {
        self.invitations_any_email = on;
        self
    }
}

/// The problem for a member who must use MFA and has not.
pub fn mfa_required() -> Problem {
    Problem::new(StatusCode::FORBIDDEN)
        .with_type("mfa-required")
        .with_title("Multi-factor authentication required")
        .with_detail("Sign in again with a second factor to continue.")
}

/// Memberships and tenant settings, with a cache for the per-request membership check.
///
/// The check answers from memory for up to a minute; changes made through any process
/// reach every process's cache within about a second through LISTEN/NOTIFY once
/// [`listen`](Self::listen) runs.
#[derive(Clone)]
pub struct Memberships {
    pool: PgPool,
    members: Cache<(TenantId, UserId), bool>,
    settings: Cache<TenantId, AuthSettings>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Memberships {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memberships").finish_non_exhaustive()
    }
}

const COLUMNS: &str = "m.user_id, m.roles, m.joined_at, m.invited_by, u.email";

fn member_from(row: &sqlx::postgres::PgRow) -> Result<Member, sqlx::Error> {
    Ok(Member {
        user_id: row.try_get("user_id")?,
        roles: row.try_get("roles")?,
        joined_at: row.try_get("joined_at")?,
        invited_by: row.try_get("invited_by")?,
        email: row.try_get("email")?,
    })
}

/// The rank of each role: built-in, or the stored rank of the tenant's custom role;
/// unknown roles are an error.
pub(crate) async fn ranked(tx: &mut TenantTx, roles: &[&str]) -> Result<Vec<(String, u8)>, MemberError> {
    if roles.is_empty() || roles.len() > 16 {
        return Err(MemberError::NoRoles);
    }
    let tenant = tx.tenant();
    let mut out: Vec<(String, u8)> = Vec::with_capacity(roles.len());
    for r in roles {
        if out.iter().any(|(o, _)| o == r) {
            continue;
        }
        let rank = match role::rank(r) {
            Some(rank) => rank,
            None => {
                let custom: Option<i16> =
                    sqlx::query_scalar("SELECT rank FROM saas.roles WHERE tenant_id = $1 AND name = $2")
                        .bind(tenant)
                        .bind(*r)
                        .fetch_optional(&mut **tx)
                        .await?;
                custom
                    .and_then(|c| u8::try_from(c).ok())
                    .ok_or_else(|| MemberError::UnknownRole((*r).to_owned()))?
            }
        };
        out.push(((*r).to_owned(), rank));
    }
    Ok(out)
}

/// The highest rank among `roles` (custom roles by their stored rank).
async fn rank_of(tx: &mut TenantTx, roles: &[String]) -> Result<u8, MemberError> {
    let tenant = tx.tenant();
    let mut max = role::max_rank(roles);
    let custom: Vec<&String> = roles.iter().filter(|r| role::rank(r).is_none()).collect();
    if !custom.is_empty() {
        let stored: Option<i16> =
            sqlx::query_scalar("SELECT max(rank) FROM saas.roles WHERE tenant_id = $1 AND name = ANY ($2)")
                .bind(tenant)
                .bind(custom)
                .fetch_one(&mut **tx)
                .await?;
        max = max.max(stored.and_then(|s| u8::try_from(s).ok()).unwrap_or(0));
    }
    Ok(max)
}

impl Memberships {
    /// Memberships stored through `pool` (the application role).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            members: Cache::builder()
                .max_capacity(200_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            settings: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses `clock` for timestamps.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Keeps this process's cache in step with changes made anywhere: listens on
    /// [`notify::CHANNEL`] until the returned task is aborted or the memberships dropped.
    pub fn listen(&self) -> tokio::task::JoinHandle<()> {
        let members = self.members.clone();
        let settings = self.settings.clone();
        notify::spawn(self.pool.clone(), move |payload| {
            match payload.and_then(|p| p.split_once(':')) {
                Some(("member", rest)) => {
                    if let Some((t, u)) = rest.split_once(':')
                        && let (Ok(t), Ok(u)) = (t.parse::<TenantId>(), u.parse::<UserId>())
                    {
                        members.invalidate(&(t, u));
                    }
                }
                Some(("settings", t)) => {
                    if let Ok(t) = t.parse::<TenantId>() {
                        settings.invalidate(&t);
                    }
                }
                Some(_) => {}
                None => {
                    members.invalidate_all();
                    settings.invalidate_all();
                }
            }
            true
        })
    }

    /// The member `user` of the transaction's tenant.
    pub async fn get(tx: &mut TenantTx, user: UserId) -> Result<Option<Member>, MemberError> {
        let tenant = tx.tenant();
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM saas.memberships m JOIN saas.users u ON u.id = m.user_id \
             WHERE m.tenant_id = $1 AND m.user_id = $2"
        )))
        .bind(tenant)
        .bind(user)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.as_ref().map(member_from).transpose()?)
    }

    /// Every member of the transaction's tenant, by join date.
    pub async fn list(tx: &mut TenantTx) -> Result<Vec<Member>, MemberError> {
        let tenant = tx.tenant();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM saas.memberships m JOIN saas.users u ON u.id = m.user_id \
             WHERE m.tenant_id = $1 ORDER BY m.joined_at, m.user_id"
        )))
        .bind(tenant)
        .fetch_all(&mut **tx)
        .await?;
        Ok(rows.iter().map(member_from).collect::<Result<_, _>>()?)
    }

    /// The tenant's authentication settings.
    pub async fn settings(tx: &mut TenantTx) -> Result<AuthSettings, MemberError> {
        let tenant = tx.tenant();
        let row = sqlx::query(
            "SELECT require_mfa, invitations_any_email FROM saas.tenant_auth_settings WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(match row {
            Some(r) => AuthSettings {
                require_mfa: r.try_get("require_mfa")?,
                invitations_any_email: r.try_get("invitations_any_email")?,
            },
            None => AuthSettings::default(),
        })
    }

    /// Changes the tenant's authentication settings (admins and owners), audited with
    /// before and after.
    pub async fn update_settings(
        &self,
        tx: &mut TenantTx,
        actor: &Principal,
        settings: AuthSettings,
    ) -> Result<AuthSettings, MemberError> {
        let tenant = tx.tenant();
        require_manager(tx, actor).await?;
        let before = Self::settings(tx).await?;
        let now = self.clock.now();
        sqlx::query(
            "INSERT INTO saas.tenant_auth_settings (tenant_id, require_mfa, invitations_any_email, updated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id) DO UPDATE SET \
             require_mfa = EXCLUDED.require_mfa, invitations_any_email = EXCLUDED.invitations_any_email, \
             updated_at = EXCLUDED.updated_at",
        )
        .bind(tenant)
        .bind(settings.require_mfa)
        .bind(settings.invitations_any_email)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        let record = AuditRecord::new(tenant, Actor::from(actor), "tenant.auth_settings_changed")?
            .metadata(json!({ "before": before, "after": settings }))
            .at(now);
        audit::record(tx, &record).await?;
        notify::send(tx, &format!("settings:{tenant}")).await?;
        self.settings.invalidate(&tenant);
        Ok(settings)
    }

    /// Makes `user` the first owner of a tenant that has no members yet (at sign-up).
    /// Refused once the tenant has any member: later owners are added by owners.
    pub async fn bootstrap_owner(&self, tx: &mut TenantTx, user: UserId) -> Result<Member, MemberError> {
        let tenant = tx.tenant();
        // Serialise concurrent bootstraps of the same tenant.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 17))")
            .bind(tenant)
            .execute(&mut **tx)
            .await?;
        let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM saas.memberships WHERE tenant_id = $1)")
            .bind(tenant)
            .fetch_one(&mut **tx)
            .await?;
        if any {
            return Err(MemberError::Forbidden);
        }
        let member = self
            .insert(
                tx,
                &Actor::System("saas-authz.bootstrap".into()),
                user,
                vec![OWNER.into()],
                None,
            )
            .await?;
        Ok(member)
    }

    /// Adds `user` with `roles`. The actor needs the admin or owner role and may not grant
    /// a role above their own.
    pub async fn add(
        &self,
        tx: &mut TenantTx,
        actor: &Principal,
        user: UserId,
        roles: &[&str],
    ) -> Result<Member, MemberError> {
        let roles = ranked(tx, roles).await?;
        let actor_rank = acting_rank(tx, actor).await?;
        check_grant(actor_rank, &roles)?;
        let roles = roles.into_iter().map(|(r, _)| r).collect();
        self.insert(tx, &Actor::from(actor), user, roles, Some(actor.user_id))
            .await
    }

    pub(crate) async fn insert(
        &self,
        tx: &mut TenantTx,
        actor: &Actor,
        user: UserId,
        roles: Vec<String>,
        invited_by: Option<UserId>,
    ) -> Result<Member, MemberError> {
        let tenant = tx.tenant();
        let now = self.clock.now();
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM saas.users WHERE id = $1)")
            .bind(user)
            .fetch_one(&mut **tx)
            .await?;
        if !exists {
            return Err(MemberError::UnknownUser);
        }
        let inserted = sqlx::query(
            "INSERT INTO saas.memberships (tenant_id, user_id, roles, joined_at, invited_by) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, user_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(user)
        .bind(&roles)
        .bind(now)
        .bind(invited_by)
        .execute(&mut **tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(MemberError::AlreadyMember);
        }
        let record = AuditRecord::new(tenant, actor.clone(), "member.added")?
            .target("user", user)
            .metadata(json!({ "before": null, "after": { "roles": roles } }))
            .at(now);
        audit::record(tx, &record).await?;
        self.changed(tx, tenant, user).await?;
        Self::get(tx, user).await?.ok_or(MemberError::NotFound)
    }

    /// Replaces the roles of `user`. The actor needs the admin or owner role, may not
    /// grant a role above their own nor change a member ranked above them, and the last
    /// owner keeps the owner role.
    pub async fn set_roles(
        &self,
        tx: &mut TenantTx,
        actor: &Principal,
        user: UserId,
        roles: &[&str],
    ) -> Result<Member, MemberError> {
        let tenant = tx.tenant();
        let roles = ranked(tx, roles).await?;
        let actor_rank = acting_rank(tx, actor).await?;
        check_grant(actor_rank, &roles)?;
        let roles: Vec<String> = roles.into_iter().map(|(r, _)| r).collect();
        let before = lock_member(tx, user).await?.ok_or(MemberError::NotFound)?;
        if rank_of(tx, &before.roles).await? > actor_rank {
            return Err(MemberError::AboveOwnRole(highest(&before.roles)));
        }
        if before.has_role(OWNER) && !roles.iter().any(|r| r == OWNER) {
            ensure_other_owner(tx, user).await?;
        }
        sqlx::query("UPDATE saas.memberships SET roles = $3 WHERE tenant_id = $1 AND user_id = $2")
            .bind(tenant)
            .bind(user)
            .bind(&roles)
            .execute(&mut **tx)
            .await?;
        let record = AuditRecord::new(tenant, Actor::from(actor), "member.roles_changed")?
            .target("user", user)
            .metadata(json!({ "before": { "roles": before.roles }, "after": { "roles": roles } }))
            .at(self.clock.now());
        audit::record(tx, &record).await?;
        self.changed(tx, tenant, user).await?;
        Self::get(tx, user).await?.ok_or(MemberError::NotFound)
    }

    /// Removes `user` from the tenant; when the actor is that user, they leave. Removing
    /// someone else needs the admin or owner role and a rank at least theirs; the last
    /// owner can neither leave nor be removed.
    pub async fn remove(&self, tx: &mut TenantTx, actor: &Principal, user: UserId) -> Result<Member, MemberError> {
        let tenant = tx.tenant();
        let leaving = actor.user_id == user && matches!(actor.method, AuthMethod::IdToken);
        let before = lock_member(tx, user).await?.ok_or(MemberError::NotFound)?;
        if !leaving {
            let actor_rank = acting_rank(tx, actor).await?;
            if actor_rank < MANAGER_RANK {
                return Err(MemberError::Forbidden);
            }
            if rank_of(tx, &before.roles).await? > actor_rank {
                return Err(MemberError::AboveOwnRole(highest(&before.roles)));
            }
        }
        if before.has_role(OWNER) {
            ensure_other_owner(tx, user).await?;
        }
        sqlx::query("DELETE FROM saas.memberships WHERE tenant_id = $1 AND user_id = $2")
            .bind(tenant)
            .bind(user)
            .execute(&mut **tx)
            .await?;
        let action = if leaving { "member.left" } else { "member.removed" };
        let record = AuditRecord::new(tenant, Actor::from(actor), action)?
            .target("user", user)
            .metadata(json!({ "before": { "roles": before.roles }, "after": null }))
            .at(self.clock.now());
        audit::record(tx, &record).await?;
        self.changed(tx, tenant, user).await?;
        Ok(before)
    }

    async fn changed(&self, conn: &mut PgConnection, tenant: TenantId, user: UserId) -> Result<(), MemberError> {
        notify::send(conn, &format!("member:{tenant}:{user}")).await?;
        self.members.invalidate(&(tenant, user));
        Ok(())
    }

    async fn lookup(&self, tenant: TenantId, user: UserId) -> Result<(bool, AuthSettings), sqlx::Error> {
        let member = self.members.get(&(tenant, user));
        let settings = self.settings.get(&tenant);
        if let (Some(member), Some(settings)) = (member, settings) {
            return Ok((member, settings));
        }
        let mut tx = saas_core::db::begin_scoped(&self.pool, tenant).await?;
        let row = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM saas.memberships WHERE tenant_id = $1 AND user_id = $2) AS member, \
                    s.require_mfa, s.invitations_any_email \
             FROM (SELECT 1) one LEFT JOIN saas.tenant_auth_settings s ON s.tenant_id = $1",
        )
        .bind(tenant)
        .bind(user)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let member: bool = row.try_get("member")?;
        let settings = AuthSettings {
            require_mfa: row.try_get::<Option<bool>, _>("require_mfa")?.unwrap_or(false),
            invitations_any_email: row
                .try_get::<Option<bool>, _>("invitations_any_email")?
                .unwrap_or(false),
        };
        self.members.insert((tenant, user), member);
        self.settings.insert(tenant, settings);
        Ok((member, settings))
    }
}

impl MembershipCheck for Memberships {
    /// Members only; API keys belong to their tenant (the tenant layer already refused a
    /// key of another tenant). A tenant that requires MFA refuses members who signed in
    /// without it with 403 `mfa-required`.
    async fn is_member(&self, tenant: TenantId, principal: &Principal) -> Result<MembershipVerdict, MembershipError> {
        if let AuthMethod::ApiKey(_) = principal.method {
            return Ok(if principal.tenant_id == Some(tenant) {
                MembershipVerdict::Member
            } else {
                MembershipVerdict::NotMember
            });
        }
        let (member, settings) = self
            .lookup(tenant, principal.user_id)
            .await
            .map_err(|e| MembershipError(e.to_string()))?;
        Ok(if !member {
            MembershipVerdict::NotMember
        } else if settings.require_mfa && !principal.mfa {
            MembershipVerdict::Refused(mfa_required())
        } else {
            MembershipVerdict::Member
        })
    }
}

fn highest(roles: &[String]) -> String {
    roles
        .iter()
        .max_by_key(|r| role::rank(r).unwrap_or(0))
        .cloned()
        .unwrap_or_default()
}

fn check_grant(actor_rank: u8, roles: &[(String, u8)]) -> Result<(), MemberError> {
    if actor_rank < MANAGER_RANK {
        return Err(MemberError::Forbidden);
    }
    match roles.iter().find(|(_, rank)| *rank > actor_rank) {
        Some((r, _)) => Err(MemberError::AboveOwnRole(r.clone())),
        None => Ok(()),
    }
}

/// Refuses unless the actor holds the admin or owner role in the transaction's tenant.
pub(crate) async fn require_manager(tx: &mut TenantTx, actor: &Principal) -> Result<(), MemberError> {
    if acting_rank(tx, actor).await? < MANAGER_RANK {
        return Err(MemberError::Forbidden);
    }
    Ok(())
}

/// The rank the actor acts with in the transaction's tenant: a user's (or support staff
/// member's) highest role; API keys never manage members, keys or settings.
pub(crate) async fn acting_rank(tx: &mut TenantTx, actor: &Principal) -> Result<u8, MemberError> {
    if let AuthMethod::ApiKey(_) = actor.method {
        return Ok(0);
    }
    let tenant = tx.tenant();
    let roles: Option<Vec<String>> =
        sqlx::query_scalar("SELECT roles FROM saas.memberships WHERE tenant_id = $1 AND user_id = $2")
            .bind(tenant)
            .bind(actor.user_id)
            .fetch_optional(&mut **tx)
            .await?;
    // Built-in roles only: a custom role never confers the right to manage members.
    Ok(roles.map(|r| role::max_rank(&r)).unwrap_or(0))
}

async fn lock_member(tx: &mut TenantTx, user: UserId) -> Result<Option<Member>, MemberError> {
    let tenant = tx.tenant();
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM saas.memberships m JOIN saas.users u ON u.id = m.user_id \
         WHERE m.tenant_id = $1 AND m.user_id = $2 FOR UPDATE OF m"
    )))
    .bind(tenant)
    .bind(user)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.as_ref().map(member_from).transpose()?)
}

/// Refuses when `leaving` is the only owner. Locks every owner row, so that two owners
/// demoting each other concurrently cannot both succeed.
async fn ensure_other_owner(tx: &mut TenantTx, leaving: UserId) -> Result<(), MemberError> {
    let tenant = tx.tenant();
    let owners: Vec<UserId> =
        sqlx::query_scalar("SELECT user_id FROM saas.memberships WHERE tenant_id = $1 AND $2 = ANY (roles) FOR UPDATE")
            .bind(tenant)
            .bind(OWNER)
            .fetch_all(&mut **tx)
            .await?;
    if owners.iter().any(|o| *o != leaving) {
        Ok(())
    } else {
        Err(MemberError::LastOwner)
    }
}
