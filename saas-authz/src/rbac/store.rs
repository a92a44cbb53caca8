//! Where policies come from: PostgreSQL (custom roles, members, resource grants, the
//! parent chain, all tenant-scoped with RLS), compiled per tenant, reloaded when any
//! process changes them; and the audited admin functions that change them.

use std::sync::Arc;

use saas_core::audit::{self, Actor, AuditRecord};
use saas_core::{IntoProblem, Principal, Problem, TenantId, UserId};
use saas_tenancy::TenantTx;
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use super::Authz;
use super::model::{
    CompiledGrant, Model, ModelError, RoleDef, Subject, TenantPolicy, compile_roles, kind_of, valid_role_name,
};
use crate::membership::require_manager;
use crate::notify::{self, Change};
use crate::role;
use saas_core::notify::Notice;

saas_core::define_id!(
    /// A resource grant.
    pub struct GrantId("grant");
);

/// Who a grant is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantSubject {
    /// One user.
    User(UserId),
    /// Everyone holding a role in the tenant.
    Role(String),
}

/// A role on one resource, optionally inherited by its descendants.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrantDef {
    /// The resource's type (`project`).
    pub resource_type: String,
    /// The resource's id.
    pub resource_id: Uuid,
    /// Who gets it.
    pub subject: GrantSubject,
    /// The role they get on the resource.
    pub role: String,
    /// Whether the resource's descendants inherit it.
    pub inherit: bool,
}

impl GrantDef {
    /// `subject` gets `role` on `resource_type`/`resource_id`, inherited by descendants.
    pub fn new(resource_type: &str, resource_id: impl Into<Uuid>, subject: GrantSubject, role: &str) -> Self {
        Self {
            resource_type: resource_type.into(),
            resource_id: resource_id.into(),
            subject,
            role: role.into(),
            inherit: true,
        }
    }
    /// Only the resource itself, not its descendants.
    pub fn not_inherited(mut self) -> Self {
        self.inherit = false;
        self
    }
}

/// One tenant's policy data before compilation.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TenantData {
    /// The tenant's custom roles.
    pub roles: Vec<RoleDef>,
    /// Members and their role names.
    pub members: Vec<(UserId, Vec<String>)>,
    /// Resource grants.
    pub grants: Vec<GrantDef>,
    /// `(child type, child id) → (parent type, parent id)`.
    pub parents: Vec<((String, Uuid), (String, Uuid))>,
}

/// An RBAC operation failed or was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RbacError {
    /// The model or a role definition is invalid.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The actor may not do this (needs admin or owner).
    #[error("managing roles and grants needs the admin or owner role")]
    Forbidden,
    /// Granting or defining this would give more than the actor holds.
    #[error("you cannot grant permissions you do not hold yourself: {0}")]
    Escalation(String),
    /// No such role or grant.
    #[error("no such {0}")]
    NotFound(&'static str),
    /// The tenant's policy kept changing while it was being loaded; try again.
    #[error("the tenant's permissions kept changing while being loaded; try again")]
    Busy,
    /// The role is still held by members or grants.
    #[error("role {0:?} is still in use; reassign its members and grants first")]
    InUse(String),
    /// Writing the audit record failed.
    #[error(transparent)]
    Audit(#[from] saas_core::audit::AuditError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<crate::error::MemberError> for RbacError {
    fn from(e: crate::error::MemberError) -> Self {
        match e {
            crate::error::MemberError::Database(e) => RbacError::Database(e),
            _ => RbacError::Forbidden,
        }
    }
}

impl IntoProblem for RbacError {
    fn to_problem(&self) -> Problem {
        match self {
            RbacError::Model(_) => Problem::unprocessable(self.to_string()).with_type("invalid-role"),
            RbacError::Forbidden | RbacError::Escalation(_) => {
                Problem::forbidden(self.to_string()).with_type("permission-denied")
            }
            RbacError::NotFound(_) => Problem::not_found().with_detail(self.to_string()),
            RbacError::InUse(_) => Problem::conflict(self.to_string()).with_type("role-in-use"),
            RbacError::Busy => Problem::unavailable().with_detail(self.to_string()),
            RbacError::Audit(e) => e.to_problem(),
            RbacError::Database(e) => e.to_problem(),
        }
    }
}

/// Compiles one tenant: built-in roles then its custom roles (a custom role that no
/// longer compiles, because the model dropped a permission it names, is left empty and
/// logged rather than taking the tenant down), members, grants and parents.
pub(crate) fn compile_tenant(model: &Model, data: &TenantData) -> Result<TenantPolicy, RbacError> {
    let mut defs: Vec<RoleDef> = model.builtin.clone();
    defs.extend(data.roles.iter().cloned());
    let roles = match compile_roles(&model.perms, &defs) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "a custom role does not compile; compiling the others without it");
            let mut good = model.builtin.clone();
            for r in &data.roles {
                let mut trial = good.clone();
                trial.push(r.clone());
                if compile_roles(&model.perms, &trial).is_ok() {
                    good = trial;
                } else {
                    good.push(RoleDef::new(r.name.clone(), Vec::<String>::new()));
                }
            }
            compile_roles(&model.perms, &good)?
        }
    };
    let mut policy = TenantPolicy {
        roles,
        ..TenantPolicy::default()
    };
    for (user, names) in &data.members {
        let mask = policy.mask_of(names);
        policy.members.insert(*user, mask);
    }
    for g in &data.grants {
        let Some(role) = policy.role_index(&g.role) else {
            continue;
        };
        let subject = match &g.subject {
            GrantSubject::User(u) => Subject::User(*u),
            GrantSubject::Role(r) => match policy.role_index(r) {
                Some(i) => Subject::Role(i),
                None => continue,
            },
        };
        policy
            .grants
            .entry(super::ResourceRef {
                kind: kind_of(&g.resource_type),
                id: g.resource_id,
            })
            .or_default()
            .push(CompiledGrant {
                subject,
                role,
                inherit: g.inherit,
            });
    }
    for ((ct, cid), (pt, pid)) in &data.parents {
        policy.parents.insert(
            super::ResourceRef {
                kind: kind_of(ct),
                id: *cid,
            },
            super::ResourceRef {
                kind: kind_of(pt),
                id: *pid,
            },
        );
    }
    Ok(policy)
}

async fn load_data(pool: &sqlx::PgPool, tenant: TenantId) -> Result<TenantData, sqlx::Error> {
    let mut tx = crate::tenant_tx(pool, tenant).await?;
    let mut data = TenantData::default();
    for r in sqlx::query("SELECT name, permissions, includes FROM saas.roles WHERE tenant_id = $1 ORDER BY name")
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?
    {
        data.roles.push(RoleDef {
            name: r.try_get("name")?,
            permissions: r.try_get("permissions")?,
            includes: r.try_get("includes")?,
        });
    }
    for r in sqlx::query("SELECT user_id, roles FROM saas.memberships WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?
    {
        data.members.push((r.try_get("user_id")?, r.try_get("roles")?));
    }
    // Service-account keys are members holding their role, known by the key's id.
    for r in sqlx::query(
        "SELECT id, role FROM saas.api_keys WHERE tenant_id = $1 AND kind = 'service' AND revoked_at IS NULL \
         AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?
    {
        let id: Uuid = r.try_get("id")?;
        let role: String = r.try_get("role")?;
        data.members.push((UserId::from_uuid(id), vec![role]));
    }
    for r in sqlx::query(
        "SELECT resource_type, resource_id, user_id, role_subject, role, inherit FROM saas.resource_grants WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?
    {
        let subject = match r.try_get::<Option<UserId>, _>("user_id")? {
            Some(u) => GrantSubject::User(u),
            None => GrantSubject::Role(r.try_get::<Option<String>, _>("role_subject")?.unwrap_or_default()),
        };
        data.grants.push(GrantDef {
            resource_type: r.try_get("resource_type")?,
            resource_id: r.try_get("resource_id")?,
            subject,
            role: r.try_get("role")?,
            inherit: r.try_get("inherit")?,
        });
    }
    for r in sqlx::query(
        "SELECT resource_type, resource_id, parent_type, parent_id FROM saas.resource_parents WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?
    {
        data.parents.push((
            (r.try_get("resource_type")?, r.try_get("resource_id")?),
            (r.try_get("parent_type")?, r.try_get("parent_id")?),
        ));
    }
    tx.commit().await.map_err(crate::db_err)?;
    Ok(data)
}

impl Authz {
    /// Loads `tenant`'s policy if this process has not yet (the layer and the extractor
    /// call it; handlers rarely need to).
    pub async fn ensure(&self, tenant: TenantId) -> Result<(), RbacError> {
        if self.is_loaded(tenant) {
            return Ok(());
        }
        let _one_at_a_time = self.inner.loading.lock().await;
        if self.is_loaded(tenant) {
            return Ok(());
        }
        self.load_locked(tenant).await
    }

    /// Reloads `tenant`'s policy from the database and swaps it in.
    pub async fn reload(&self, tenant: TenantId) -> Result<(), RbacError> {
        let _one_at_a_time = self.inner.loading.lock().await;
        self.load_locked(tenant).await
    }

    /// Reloads `tenant` if it is loaded (the listener's path). The check and the load run
    /// under the loading lock, so a change cannot slip between a first load's read and its
    /// install unseen: either the load sees the change's generation move and reads again,
    /// or the change is handled here after the install.
    async fn refresh(&self, tenant: TenantId) -> Result<(), RbacError> {
        let _one_at_a_time = self.inner.loading.lock().await;
        if !self.is_loaded(tenant) {
            return Ok(());
        }
        self.load_locked(tenant).await
    }

    /// Loads and installs `tenant`, holding the loading lock. A change notified while the
    /// data was being read (its generation moved) makes the load start over; after a few
    /// tries in a storm of changes the tenant is left unloaded (loaded again on next use).
    async fn load_locked(&self, tenant: TenantId) -> Result<(), RbacError> {
        let Some(pool) = &self.inner.pool else { return Ok(()) };
        for _ in 0..8 {
            let before = self.inner.generation(tenant);
            let data = load_data(pool, tenant).await?;
            let policy = Arc::new(compile_tenant(&self.inner.model, &data)?);
            if self.inner.generation(tenant) == before {
                self.inner.update(|map| {
                    map.insert(tenant, policy.clone());
                });
                return Ok(());
            }
            tracing::debug!(%tenant, "the tenant's policy changed while loading; loading again");
        }
        self.evict(tenant);
        Err(RbacError::Busy)
    }

    /// Forgets `tenant`'s policy (it is loaded again on next use).
    pub fn evict(&self, tenant: TenantId) {
        if self.is_loaded(tenant) {
            self.inner.update(|map| {
                map.remove(&tenant);
            });
        }
    }

    /// Follows changes made by any process (roles, grants, parents, memberships,
    /// service-account keys): the changed tenant is reloaded, usually within milliseconds
    /// of the commit. Ends when the last clone of this evaluator is dropped.
    pub fn listen(&self) -> tokio::task::JoinHandle<()> {
        let Some(pool) = self.inner.pool.clone() else {
            return tokio::spawn(async {});
        };
        // The reloading task holds the evaluator weakly: dropping the last `Authz` ends
        // the listener (its lifeline) and then this task (its channel).
        let weak = Arc::downgrade(&self.inner);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<TenantId>>();
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                let Some(inner) = weak.upgrade() else { return };
                let authz = Authz { inner, tenant: None };
                match change {
                    Some(tenant) => {
                        if let Err(e) = authz.refresh(tenant).await {
                            tracing::warn!(error = %e, %tenant, "reloading a tenant's policy failed; evicting it");
                            authz.evict(tenant);
                        }
                    }
                    None => {
                        let loaded: Vec<TenantId> = authz.inner.tenants.load().keys().copied().collect();
                        for tenant in loaded {
                            if authz.refresh(tenant).await.is_err() {
                                authz.evict(tenant);
                            }
                        }
                    }
                }
            }
        });
        let weak = Arc::downgrade(&self.inner);
        notify::spawn(pool, self.inner.life.ended(), move |notice| {
            // The generation moves here, synchronously, before anything is reloaded: a
            // load that is reading this tenant right now will notice and read again.
            let change = match notice {
                Notice::Message(c) => match c.policy_tenant() {
                    Some(tenant) => Some(tenant),
                    None => return,
                },
                Notice::Gap => None,
            };
            if let Some(inner) = weak.upgrade() {
                inner.changed(change);
            }
            let _ = tx.send(change);
        })
    }

    /// The permissions the actor holds tenant-wide, as the transaction sees it (for the
    /// escalation rule): their roles, compiled with the tenant's custom roles.
    async fn held(
        &self,
        tx: &mut TenantTx,
        actor: &Principal,
        roles: &[super::model::CompiledRole],
    ) -> Result<super::PermSet, RbacError> {
        let held: Option<Vec<String>> =
            sqlx::query_scalar("SELECT roles FROM saas.memberships WHERE tenant_id = $1 AND user_id = $2")
                .bind(tx.tenant())
                .bind(actor.user_id)
                .fetch_optional(&mut **tx)
                .await?;
        let held = held.unwrap_or_default();
        Ok(roles
            .iter()
            .filter(|r| held.iter().any(|h| **h == *r.name))
            .fold(super::PermSet::EMPTY, |acc, r| acc.union(r.perms)))
    }

    async fn manager(&self, tx: &mut TenantTx, actor: &Principal) -> Result<(), RbacError> {
        Ok(require_manager(tx, actor).await?)
    }

    fn within(&self, held: super::PermSet, perms: super::PermSet) -> Result<(), RbacError> {
        if perms.is_subset(&held) {
            return Ok(());
        }
        let missing: Vec<&str> = perms
            .iter()
            .filter(|p| !held.contains(*p))
            .map(|p| self.inner.model.perms.name(p))
            .collect();
        Err(RbacError::Escalation(missing.join(", ")))
    }

    fn compile_with(&self, custom: &[RoleDef]) -> Result<Vec<super::model::CompiledRole>, RbacError> {
        let mut defs = self.inner.model.builtin.clone();
        defs.extend(custom.iter().cloned());
        Ok(compile_roles(&self.inner.model.perms, &defs)?)
    }

    /// Creates or replaces the tenant's custom role `def`. The actor needs the admin or
    /// owner role and must hold every permission the role gives; inclusion cycles and
    /// unknown permissions are refused. Audited with before and after.
    pub async fn define_role(&self, tx: &mut TenantTx, actor: &Principal, def: RoleDef) -> Result<(), RbacError> {
        let tenant = tx.tenant();
        if !valid_role_name(&def.name) {
            return Err(ModelError::InvalidRoleName(def.name).into());
        }
        if role::rank(&def.name).is_some() {
            return Err(ModelError::BuiltinRole(def.name).into());
        }
        self.manager(tx, actor).await?;
        let mut data = load_data_in(tx).await?;
        let current = self.compile_with(&data.roles)?;
        let held = self.held(tx, actor, &current).await?;
        let before = data.roles.iter().find(|r| r.name == def.name).cloned();
        data.roles.retain(|r| r.name != def.name);
        data.roles.push(def.clone());
        let compiled = self.compile_with(&data.roles)?;
        let perms = compiled
            .iter()
            .find(|r| *r.name == *def.name)
            .map(|r| r.perms)
            .unwrap_or_default();
        self.within(held, perms)?;
        // No rank is stored: it follows what the role includes, and is computed from the
        // compiled role whenever the membership rules need it.
        sqlx::query(
            "INSERT INTO saas.roles (tenant_id, name, permissions, includes, updated_at) VALUES ($1, $2, $3, $4, now()) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET permissions = EXCLUDED.permissions, includes = EXCLUDED.includes, \
             updated_at = EXCLUDED.updated_at",
        )
        .bind(tenant)
        .bind(&def.name)
        .bind(&def.permissions)
        .bind(&def.includes)
        .execute(&mut **tx)
        .await?;
        let record = AuditRecord::new(tenant, Actor::from(actor), "role.defined")?
            .target("role", &def.name)
            .metadata(json!({ "before": before, "after": def }));
        audit::record(tx, &record).await?;
        notify::send(tx, &Change::Policy { tenant }).await?;
        Ok(())
    }

    /// Deletes a custom role that no member, grant, role or pending invitation uses. Audited.
    pub async fn delete_role(&self, tx: &mut TenantTx, actor: &Principal, name: &str) -> Result<(), RbacError> {
        let tenant = tx.tenant();
        self.manager(tx, actor).await?;
        let in_use: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM saas.memberships WHERE tenant_id = $1 AND $2 = ANY (roles)) \
                 OR EXISTS (SELECT 1 FROM saas.resource_grants WHERE tenant_id = $1 AND (role = $2 OR role_subject = $2)) \
                 OR EXISTS (SELECT 1 FROM saas.roles WHERE tenant_id = $1 AND $2 = ANY (includes)) \
                 OR EXISTS (SELECT 1 FROM saas.invitations WHERE tenant_id = $1 AND role = $2 \
                            AND accepted_at IS NULL AND revoked_at IS NULL)",
        )
        .bind(tenant)
        .bind(name)
        .fetch_one(&mut **tx)
        .await?;
        if in_use {
            return Err(RbacError::InUse(name.into()));
        }
        let before =
            sqlx::query("DELETE FROM saas.roles WHERE tenant_id = $1 AND name = $2 RETURNING permissions, includes")
                .bind(tenant)
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?
                .ok_or(RbacError::NotFound("role"))?;
        let perms: Vec<String> = before.try_get("permissions")?;
        let record = AuditRecord::new(tenant, Actor::from(actor), "role.deleted")?
            .target("role", name)
            .metadata(json!({ "before": { "permissions": perms }, "after": null }));
        audit::record(tx, &record).await?;
        notify::send(tx, &Change::Policy { tenant }).await?;
        Ok(())
    }

    /// Grants a role on one resource. The actor needs the admin or owner role and must
    /// hold every permission the granted role gives. Audited.
    pub async fn grant(&self, tx: &mut TenantTx, actor: &Principal, grant: GrantDef) -> Result<GrantId, RbacError> {
        let tenant = tx.tenant();
        self.manager(tx, actor).await?;
        let data = load_data_in(tx).await?;
        let roles = self.compile_with(&data.roles)?;
        let role_perms = roles
            .iter()
            .find(|r| *r.name == *grant.role)
            .map(|r| r.perms)
            .ok_or(RbacError::NotFound("role"))?;
        if let GrantSubject::Role(r) = &grant.subject
            && !roles.iter().any(|x| *x.name == **r)
        {
            return Err(RbacError::NotFound("role"));
        }
        let held = self.held(tx, actor, &roles).await?;
        self.within(held, role_perms)?;
        let id = GrantId::new();
        let (user, role_subject) = match &grant.subject {
            GrantSubject::User(u) => (Some(*u), None),
            GrantSubject::Role(r) => (None, Some(r.clone())),
        };
        sqlx::query(
            "INSERT INTO saas.resource_grants (tenant_id, id, resource_type, resource_id, user_id, role_subject, role, inherit, granted_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())",
        )
        .bind(tenant)
        .bind(id)
        .bind(&grant.resource_type)
        .bind(grant.resource_id)
        .bind(user)
        .bind(&role_subject)
        .bind(&grant.role)
        .bind(grant.inherit)
        .bind(actor.user_id)
        .execute(&mut **tx)
        .await?;
        let record = AuditRecord::new(tenant, Actor::from(actor), "grant.created")?
            .target(grant.resource_type.clone(), grant.resource_id)
            .metadata(json!({ "before": null, "after": {
                "id": id, "user": user, "role_subject": role_subject, "role": grant.role, "inherit": grant.inherit } }));
        audit::record(tx, &record).await?;
        notify::send(tx, &Change::Policy { tenant }).await?;
        Ok(id)
    }

    /// Removes a grant (admins and owners). Audited.
    pub async fn revoke_grant(&self, tx: &mut TenantTx, actor: &Principal, id: GrantId) -> Result<(), RbacError> {
        let tenant = tx.tenant();
        self.manager(tx, actor).await?;
        let row = sqlx::query(
            "DELETE FROM saas.resource_grants WHERE tenant_id = $1 AND id = $2 \
             RETURNING resource_type, resource_id, user_id, role_subject, role, inherit",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(RbacError::NotFound("grant"))?;
        let resource_type: String = row.try_get("resource_type")?;
        let resource_id: Uuid = row.try_get("resource_id")?;
        let record = AuditRecord::new(tenant, Actor::from(actor), "grant.revoked")?
            .target(resource_type, resource_id)
            .metadata(json!({ "before": {
                "id": id, "user": row.try_get::<Option<UserId>, _>("user_id")?,
                "role_subject": row.try_get::<Option<String>, _>("role_subject")?,
                "role": row.try_get::<String, _>("role")?, "inherit": row.try_get::<bool, _>("inherit")? }, "after": null }));
        audit::record(tx, &record).await?;
        notify::send(tx, &Change::Policy { tenant }).await?;
        Ok(())
    }

    /// Records that `child` belongs to `parent` (a document to its project), or removes
    /// the link with `None`. Part of the application's data model, not an access change
    /// by itself: call it where the resource is created or moved.
    pub async fn set_parent(
        &self,
        tx: &mut TenantTx,
        child: (&str, Uuid),
        parent: Option<(&str, Uuid)>,
    ) -> Result<(), RbacError> {
        let tenant = tx.tenant();
        match parent {
            Some((pt, pid)) => {
                sqlx::query(
                    "INSERT INTO saas.resource_parents (tenant_id, resource_type, resource_id, parent_type, parent_id) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, resource_type, resource_id) \
                     DO UPDATE SET parent_type = EXCLUDED.parent_type, parent_id = EXCLUDED.parent_id",
                )
                .bind(tenant)
                .bind(child.0)
                .bind(child.1)
                .bind(pt)
                .bind(pid)
                .execute(&mut **tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM saas.resource_parents WHERE tenant_id = $1 AND resource_type = $2 AND resource_id = $3")
                    .bind(tenant)
                    .bind(child.0)
                    .bind(child.1)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        notify::send(tx, &Change::Policy { tenant }).await?;
        Ok(())
    }
}

async fn load_data_in(tx: &mut TenantTx) -> Result<TenantData, sqlx::Error> {
    let tenant = tx.tenant();
    let mut data = TenantData::default();
    for r in
        sqlx::query("SELECT name, permissions, includes FROM saas.roles WHERE tenant_id = $1 ORDER BY name FOR UPDATE")
            .bind(tenant)
            .fetch_all(&mut **tx)
            .await?
    {
        data.roles.push(RoleDef {
            name: r.try_get("name")?,
            permissions: r.try_get("permissions")?,
            includes: r.try_get("includes")?,
        });
    }
    Ok(data)
}
