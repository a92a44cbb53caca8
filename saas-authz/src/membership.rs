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
use crate::notify::{self, Change};
use crate::rbac::{Model, RoleDef};
use crate::role::{self, MANAGER_RANK, OWNER};
use saas_core::notify::{Lifeline, Notice};

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
    model: Option<Arc<Model>>,
    /// Ends the change listener when the last clone is dropped.
    life: Arc<Lifeline>,
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

/// The rank of each role: built-in by name; a custom role's is computed from the role as
/// compiled now with the tenant's other custom roles (what it includes counts), so that it
/// never goes stale. Without the model ([`Memberships::with_model`]) a custom role counts
/// as owner-level: only owners grant it. Unknown roles are an error. The tenant's role
/// definitions are read `FOR SHARE`, so a concurrent redefinition waits for this
/// transaction.
pub(crate) async fn ranked(
    tx: &mut TenantTx,
    model: Option<&Model>,
    roles: &[&str],
) -> Result<Vec<(String, u8)>, MemberError> {
    if roles.is_empty() || roles.len() > 16 {
        return Err(MemberError::NoRoles);
    }
    let mut unique: Vec<&str> = Vec::with_capacity(roles.len());
    for r in roles {
        if !unique.contains(r) {
            unique.push(r);
        }
    }
    let ranks: Vec<Option<u8>> = if unique.iter().all(|r| role::rank(r).is_some()) {
        unique.iter().map(|r| role::rank(r)).collect()
    } else {
        let custom = custom_roles(tx).await?;
        match model {
            Some(model) => model
                .ranks_of(&custom, &unique)
                .map_err(|e| MemberError::UnknownRole(e.to_string()))?,
            None => unique
                .iter()
                .map(|r| role::rank(r).or_else(|| custom.iter().any(|c| c.name == *r).then_some(4)))
                .collect(),
        }
    };
    unique
        .iter()
        .zip(ranks)
        .map(|(r, rank)| {
            rank.map(|k| ((*r).to_owned(), k))
                .ok_or_else(|| MemberError::UnknownRole((*r).to_owned()))
        })
        .collect()
}

async fn custom_roles(tx: &mut TenantTx) -> Result<Vec<RoleDef>, sqlx::Error> {
    let rows = sqlx::query("SELECT name, permissions, includes FROM saas.roles WHERE tenant_id = $1 FOR SHARE")
        .bind(tx.tenant())
        .fetch_all(&mut **tx)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(RoleDef {
                name: r.try_get("name")?,
                permissions: r.try_get("permissions")?,
                includes: r.try_get("includes")?,
            })
        })
        .collect()
}

/// The highest rank among a member's `roles` (custom roles computed as in [`ranked`]; a
/// role that no longer exists counts for nothing).
async fn rank_of(tx: &mut TenantTx, model: Option<&Model>, roles: &[String]) -> Result<u8, MemberError> {
    let mut max = role::max_rank(roles);
    let custom: Vec<&str> = roles
        .iter()
        .map(String::as_str)
        .filter(|r| role::rank(r).is_none())
        .collect();
    if !custom.is_empty() {
        let defs = custom_roles(tx).await?;
        let ranks = match model {
            Some(model) => model
                .ranks_of(&defs, &custom)
                .unwrap_or_else(|_| vec![Some(4); custom.len()]),
            None => custom
                .iter()
                .map(|r| defs.iter().any(|d| d.name == *r).then_some(4))
                .collect(),
        };
        max = max.max(ranks.into_iter().flatten().max().unwrap_or(0));
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
            model: None,
            life: Arc::new(Lifeline::new()),
        }
    }

    /// Uses `clock` for timestamps.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Ranks the tenant's custom roles with `model` (the RBAC model, `authz.model()`): a
    /// custom role ranks as the lowest built-in role whose permissions cover it, computed
    /// from the role as it is now. Without a model, custom roles count as owner-level, so
    /// only owners may grant them.
    pub fn with_model(mut self, model: Model) -> Self {
        self.model = Some(Arc::new(model));
        self
    }

    pub(crate) fn model(&self) -> Option<&Model> {
        self.model.as_deref()
    }

    /// Keeps this process's cache in step with changes made anywhere: listens on
    /// [`notify::CHANNEL`] until the returned task is aborted or the last clone of these
    /// memberships is dropped (which closes the listener's connection at once).
    pub fn listen(&self) -> tokio::task::JoinHandle<()> {
        let members = self.members.clone();
        let settings = self.settings.clone();
        notify::spawn(self.pool.clone(), self.life.ended(), move |notice| match notice {
            Notice::Message(Change::Member { tenant, user }) => members.invalidate(&(tenant, user)),
            Notice::Message(Change::Settings { tenant }) => settings.invalidate(&tenant),
            Notice::Message(_) => {}
            Notice::Gap => {
                members.invalidate_all();
                settings.invalidate_all();
            }
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
        notify::send(tx, &Change::Settings { tenant }).await?;
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
        let roles = ranked(tx, self.model(), roles).await?;
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
        // Users outside the tenant are invisible here (row-level security); the foreign
        // key says whether the user exists, inside a savepoint so that an unknown user
        // leaves the caller's transaction usable.
        let mut savepoint = sqlx::Connection::begin(&mut **tx).await?;
        let inserted = sqlx::query(
            "INSERT INTO saas.memberships (tenant_id, user_id, roles, joined_at, invited_by) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, user_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(user)
        .bind(&roles)
        .bind(now)
        .bind(invited_by)
        .execute(&mut *savepoint)
        .await
        .map_err(|e| match e.as_database_error().and_then(|d| d.code()) {
            Some(code) if code == "23503" => MemberError::UnknownUser,
            _ => MemberError::Database(e),
        })?;
        savepoint.commit().await?;
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
        let roles = ranked(tx, self.model(), roles).await?;
        let actor_rank = acting_rank(tx, actor).await?;
        check_grant(actor_rank, &roles)?;
        let roles: Vec<String> = roles.into_iter().map(|(r, _)| r).collect();
        let before = lock_member(tx, user).await?.ok_or(MemberError::NotFound)?;
        if rank_of(tx, self.model(), &before.roles).await? > actor_rank {
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
    ///
    /// Credentials die with the membership, in the same transaction: the member's API keys
    /// are revoked (every process drops them within about a second of the commit), their
    /// direct resource grants deleted, and the invitations they sent that are still
    /// pending revoked. Service-account keys belong to the tenant and stay.
    pub async fn remove(&self, tx: &mut TenantTx, actor: &Principal, user: UserId) -> Result<Member, MemberError> {
        let tenant = tx.tenant();
        let leaving = actor.user_id == user && matches!(actor.method, AuthMethod::IdToken);
        let before = lock_member(tx, user).await?.ok_or(MemberError::NotFound)?;
        if !leaving {
            let actor_rank = acting_rank(tx, actor).await?;
            if actor_rank < MANAGER_RANK {
                return Err(MemberError::Forbidden);
            }
            if rank_of(tx, self.model(), &before.roles).await? > actor_rank {
                return Err(MemberError::AboveOwnRole(highest(&before.roles)));
            }
        }
        if before.has_role(OWNER) {
            ensure_other_owner(tx, user).await?;
        }
        let now = self.clock.now();
        sqlx::query("DELETE FROM saas.memberships WHERE tenant_id = $1 AND user_id = $2")
            .bind(tenant)
            .bind(user)
            .execute(&mut **tx)
            .await?;
        // Credentials die with their holder: the member's direct grants, their API keys
        // (service-account keys belong to the tenant and stay) and the invitations they
        // sent but nobody accepted yet.
        let grants = sqlx::query("DELETE FROM saas.resource_grants WHERE tenant_id = $1 AND user_id = $2")
            .bind(tenant)
            .bind(user)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        let keys: Vec<saas_core::ApiKeyId> = sqlx::query_scalar(
            "UPDATE saas.api_keys SET revoked_at = $3, revoked_by = $4 \
             WHERE tenant_id = $1 AND created_by = $2 AND kind = 'member' AND revoked_at IS NULL RETURNING id",
        )
        .bind(tenant)
        .bind(user)
        .bind(now)
        .bind(actor.user_id)
        .fetch_all(&mut **tx)
        .await?;
        let invitations = sqlx::query(
            "UPDATE saas.invitations SET revoked_at = $3 \
             WHERE tenant_id = $1 AND invited_by = $2 AND accepted_at IS NULL AND revoked_at IS NULL",
        )
        .bind(tenant)
        .bind(user)
        .bind(now)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        let action = if leaving { "member.left" } else { "member.removed" };
        let record = AuditRecord::new(tenant, Actor::from(actor), action)?
            .target("user", user)
            .metadata(json!({
                "before": { "roles": before.roles }, "after": null,
                "revoked_api_keys": keys, "deleted_grants": grants, "revoked_invitations": invitations,
            }))
            .at(now);
        audit::record(tx, &record).await?;
        for key in &keys {
            notify::send(tx, &Change::ApiKey { key: *key }).await?;
        }
        self.changed(tx, tenant, user).await?;
        Ok(before)
    }

    async fn changed(&self, conn: &mut PgConnection, tenant: TenantId, user: UserId) -> Result<(), MemberError> {
        notify::send(conn, &Change::Member { tenant, user }).await?;
        self.members.invalidate(&(tenant, user));
        Ok(())
    }

    async fn lookup(&self, tenant: TenantId, user: UserId) -> Result<(bool, AuthSettings), sqlx::Error> {
        let member = self.members.get(&(tenant, user));
        let settings = self.settings.get(&tenant);
        if let (Some(member), Some(settings)) = (member, settings) {
            return Ok((member, settings));
        }
        let mut tx = crate::tenant_tx(&self.pool, tenant).await?;
        let row = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM saas.memberships WHERE tenant_id = $1 AND user_id = $2) AS member, \
                    s.require_mfa, s.invitations_any_email \
             FROM (SELECT 1) one LEFT JOIN saas.tenant_auth_settings s ON s.tenant_id = $1",
        )
        .bind(tenant)
        .bind(user)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await.map_err(crate::db_err)?;
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
    /// Members only. A member's API key is admitted while its creator is a member of the
    /// key's tenant (removing the member ends the key everywhere within about a second,
    /// through the change notifications); a service-account key belongs to its tenant. A
    /// tenant that requires MFA refuses members who signed in without it with 403
    /// `mfa-required` (API keys are exempt).
    async fn is_member(&self, tenant: TenantId, principal: &Principal) -> Result<MembershipVerdict, MembershipError> {
        let key = match principal.method {
            // Service-account keys belong to the tenant itself.
            AuthMethod::ServiceAccount(_) => {
                return Ok(if principal.tenant_id == Some(tenant) {
                    MembershipVerdict::Member
                } else {
                    MembershipVerdict::NotMember
                });
            }
            // A member's key acts for its creator, who must still be a member.
            AuthMethod::ApiKey(_) if principal.tenant_id != Some(tenant) => return Ok(MembershipVerdict::NotMember),
            AuthMethod::ApiKey(_) => true,
            _ => false,
        };
        let (member, settings) = self
            .lookup(tenant, principal.user_id)
            .await
            .map_err(|e| MembershipError(e.to_string()))?;
        Ok(if !member {
            MembershipVerdict::NotMember
        } else if !key && settings.require_mfa && !principal.mfa {
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
/// member's) highest role; API keys (members' and service accounts') never manage members,
/// keys or settings.
pub(crate) async fn acting_rank(tx: &mut TenantTx, actor: &Principal) -> Result<u8, MemberError> {
    if let AuthMethod::ApiKey(_) | AuthMethod::ServiceAccount(_) = actor.method {
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
