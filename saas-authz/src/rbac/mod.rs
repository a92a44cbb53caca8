//! The RBAC evaluator: compiled per-tenant snapshots, checks in nanoseconds that can say
//! why, reverse queries, live updates.
//!
//! Permissions are registered names (`project:read`) compiled to bit positions; roles are
//! permission sets with inheritance; a member's roles are a bit mask. A check is a
//! lock-free snapshot load, two hash lookups and a few bit tests, and allocates nothing;
//! the [`Decision`] it returns names the role or grant that allowed it, and
//! [`Authz::explain`] turns it into words on demand.
//!
//! ```
//! use saas_authz::rbac::{Authz, Model, TenantData};
//! use saas_core::{Principal, TenantId, UserId};
//!
//! let model = Model::new(["project:read", "project:delete"]).unwrap(); // unknown names fail here
//! let (acme, ann) = (TenantId::new(), UserId::new());
//! let mut data = TenantData::default(); // in production: loaded from PostgreSQL by Authz::new
//! data.members.push((ann, vec!["viewer".into()]));
//! let authz = Authz::in_memory(model, [(acme, data)]).unwrap();
//!
//! let ann = Principal::user(ann);
//! assert!(authz.check(&ann, acme, authz.permission("project:read").unwrap(), None).allowed());
//! let no = authz.check(&ann, acme, authz.permission("project:delete").unwrap(), None);
//! assert!(!no.allowed());
//! assert_eq!(authz.explain(acme, &no).reason, "no role held includes project:delete");
//! assert_eq!(authz.explain(acme, &no).roles, ["viewer"]);
//! ```

mod index;
mod layer;
mod model;
mod store;

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use saas_core::{Principal, Problem, TenantId, UserId};
use uuid::Uuid;

pub use layer::{RequirePermission, RequirePermissionService};
pub use model::{
    MAX_DEPTH, MAX_PERMISSIONS, MAX_ROLES, Model, ModelError, PermSet, Permission, Permissions, ResourceRef, RoleDef,
    valid_role_name,
};
pub(crate) use model::{Subject, TenantPolicy, kind_of};
pub use store::{GrantDef, GrantId, GrantSubject, RbacError, TenantData};

/// Why a check came out as it did. Indices refer to the tenant's roles at the time of the
/// check; [`Authz::explain`] names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// A role the member holds tenant-wide includes the permission ([`Authz::explain`]
    /// names it; the check itself only tests the union of the member's roles).
    Role,
    /// A grant on the resource (`depth` 0) or an ancestor gives a role that includes it.
    Grant {
        /// The granted role.
        role: u8,
        /// 0 for the resource itself, 1 for its parent, and so on.
        depth: u8,
    },
    /// None of the member's roles or grants include the permission.
    Missing,
    /// The API key's scopes do not include the permission.
    OutOfScope,
    /// The principal holds no role in this tenant (or its credential is for another).
    NotMember,
    /// The tenant's policy is not loaded in this process (call [`Authz::ensure`]). Checks
    /// without a resource report this as [`NotMember`](Self::NotMember), and
    /// [`Authz::explain`] says which it was.
    NotLoaded,
}

/// The answer to a check: one machine word, `Copy`, allocation-free to produce.
///
/// Packed into a `u64` (role mask in the low 32 bits, then allowed, reason, role, depth
/// and permission) so that it travels in one register: a two-word or odd-sized struct
/// was copied through the stack with partial stores that stalled the load after them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Decision(u64);

const ALLOWED: u64 = 1 << 32;

impl Decision {
    #[inline(always)]
    fn new(allowed: bool, permission: Permission, reason: Reason, held: u64) -> Self {
        let (tag, role, depth): (u64, u64, u64) = match reason {
            Reason::Role => (0, 0, 0),
            Reason::Grant { role, depth } => (1, u64::from(role & 31), u64::from(depth & 7)),
            Reason::Missing => (2, 0, 0),
            Reason::OutOfScope => (3, 0, 0),
            Reason::NotMember => (4, 0, 0),
            Reason::NotLoaded => (5, 0, 0),
        };
        Self(
            (held & 0xffff_ffff)
                | if allowed { ALLOWED } else { 0 }
                | tag << 33
                | role << 36
                | depth << 41
                | u64::from(permission.0 & 0xff) << 48,
        )
    }

    #[inline(always)]
    fn deny(permission: Permission, reason: Reason, held: u64) -> Self {
        Self::new(false, permission, reason, held)
    }

    /// Whether the action is allowed.
    #[inline(always)]
    pub fn allowed(&self) -> bool {
        self.0 & ALLOWED != 0
    }

    /// The permission checked.
    #[inline]
    pub fn permission(&self) -> Permission {
        Permission(((self.0 >> 48) & 0xff) as u16)
    }

    /// Why.
    pub fn reason(&self) -> Reason {
        let role = ((self.0 >> 36) & 31) as u8;
        let depth = ((self.0 >> 41) & 7) as u8;
        match (self.0 >> 33) & 7 {
            0 => Reason::Role,
            1 => Reason::Grant { role, depth },
            2 => Reason::Missing,
            3 => Reason::OutOfScope,
            4 => Reason::NotMember,
            _ => Reason::NotLoaded,
        }
    }

    /// The role mask the principal holds in the tenant (bit `i` = the tenant's role `i`).
    #[inline]
    pub fn held(&self) -> u64 {
        self.0 & 0xffff_ffff
    }
}

impl std::fmt::Debug for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decision")
            .field("allowed", &self.allowed())
            .field("permission", &self.permission())
            .field("reason", &self.reason())
            .field("held", &format_args!("{:#x}", self.held()))
            .finish()
    }
}

/// A decision in words, for logs and admin tools.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Explanation {
    /// Allowed or not.
    pub allowed: bool,
    /// The permission's name.
    pub permission: String,
    /// Why, in a sentence.
    pub reason: String,
    /// The roles the principal holds.
    pub roles: Vec<String>,
}

/// What a principal may reach of one resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every resource of the type (a tenant-wide role allows it).
    All,
    /// Only these (through resource grants); possibly none.
    Only(Vec<Uuid>),
}

impl Access {
    /// For a list query: `None` means no filter, `Some(ids)` means `id = ANY($n)`. Bind it
    /// as `$n::uuid[]` in `WHERE ($n::uuid[] IS NULL OR id = ANY($n))`.
    pub fn as_filter(&self) -> Option<&[Uuid]> {
        match self {
            Access::All => None,
            Access::Only(ids) => Some(ids),
        }
    }

    /// A SQL condition on `column` using bind parameter `$param` (see [`as_filter`](Self::as_filter)).
    pub fn sql_condition(column: &str, param: u32) -> String {
        format!("(${param}::uuid[] IS NULL OR {column} = ANY(${param}::uuid[]))")
    }
}

/// Every loaded tenant's policy, plus the hot-path index: (tenant, user) → the member's
/// role mask and the union of their roles' permissions, so that a check is one lookup
/// and one bit test.
#[derive(Clone, Default)]
pub(crate) struct Tenants {
    policies: model::IdMap<TenantId, Arc<TenantPolicy>>,
    members: index::MemberIndex,
}

impl Tenants {
    /// Adds or replaces a tenant; call [`reindex`](Self::reindex) when done changing.
    pub(crate) fn insert(&mut self, tenant: TenantId, policy: Arc<TenantPolicy>) {
        self.policies.insert(tenant, policy);
    }

    /// Drops a tenant; call [`reindex`](Self::reindex) when done changing.
    pub(crate) fn remove(&mut self, tenant: &TenantId) {
        self.policies.remove(tenant);
    }

    /// Rebuilds the member index from every tenant's policy (O(members); changes are rare).
    pub(crate) fn reindex(&mut self) {
        let len = self.policies.values().map(|p| p.members.len()).sum();
        let entries = self.policies.iter().flat_map(|(tenant, policy)| {
            policy.members.iter().map(move |(user, mask)| {
                let perms = (0..policy.roles.len())
                    .filter(|i| mask & (1 << i) != 0)
                    .fold(PermSet::EMPTY, |acc, i| acc.union(policy.roles[i].perms));
                (*tenant, *user, *mask, perms)
            })
        });
        self.members = index::MemberIndex::build(len, entries);
    }

    fn get(&self, tenant: &TenantId) -> Option<&Arc<TenantPolicy>> {
        self.policies.get(tenant)
    }

    pub(crate) fn contains_key(&self, tenant: &TenantId) -> bool {
        self.policies.contains_key(tenant)
    }

    pub(crate) fn len(&self) -> usize {
        self.policies.len()
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &TenantId> {
        self.policies.keys()
    }
}

pub(crate) struct Inner {
    pub(crate) model: Model,
    pub(crate) pool: Option<sqlx::PgPool>,
    pub(crate) tenants: ArcSwap<Tenants>,
    /// Bumped after every swap, so that each thread knows when its copy is stale.
    pub(crate) version: AtomicU64,
    pub(crate) loading: tokio::sync::Mutex<()>,
    /// Per tenant, how many changes were notified (any tenant's count moves with
    /// `epoch`, bumped when notifications may have been missed): a load that saw the
    /// number move while it read is thrown away and redone.
    generations: std::sync::Mutex<std::collections::HashMap<TenantId, u64>>,
    epoch: AtomicU64,
    /// Ends the change listener when the last clone of the evaluator is dropped.
    pub(crate) life: saas_core::notify::Lifeline,
}

impl Inner {
    /// The change count of `tenant` (with the epoch).
    pub(crate) fn generation(&self, tenant: TenantId) -> (u64, u64) {
        let epoch = self.epoch.load(Ordering::Acquire);
        let g = self
            .generations
            .lock()
            .map(|m| m.get(&tenant).copied().unwrap_or(0))
            .unwrap_or(u64::MAX);
        (epoch, g)
    }

    /// Records a notified change of `tenant`, or of everything (`None`).
    pub(crate) fn changed(&self, tenant: Option<TenantId>) {
        match tenant {
            Some(t) => {
                if let Ok(mut m) = self.generations.lock() {
                    *m.entry(t).or_insert(0) += 1;
                }
            }
            None => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Replaces the snapshot with `f(current)`, atomically with respect to other updates.
    pub(crate) fn update(&self, f: impl Fn(&mut Tenants)) {
        self.tenants.rcu(|current| {
            let mut next: Tenants = (**current).clone();
            f(&mut next);
            next.reindex();
            next
        });
        self.version.fetch_add(1, Ordering::Release);
    }
}

thread_local! {
    /// This thread's copy of the newest snapshot it saw: (evaluator, version, snapshot).
    /// A check compares one atomic version with it and touches no shared reference count.
    static SNAPSHOT: RefCell<(u64, Option<Arc<Tenants>>)> = const { RefCell::new((0, None)) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The evaluator: the model plus every loaded tenant's compiled policy, swapped
/// atomically on change. Cheap to clone. As an axum extractor (feature `axum`) it comes
/// bound to the request's tenant, with that tenant loaded, so handlers write
/// `authz.require(&principal, "project:delete", id)?`.
#[derive(Clone)]
pub struct Authz {
    pub(crate) inner: Arc<Inner>,
    tenant: Option<TenantId>,
}

impl std::fmt::Debug for Authz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authz")
            .field("tenants", &self.inner.tenants.load().len())
            .field("bound_to", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl Authz {
    /// An evaluator over `model` that loads tenants from `pool` (application role) on
    /// first use. Start [`listen`](Self::listen) to follow changes made anywhere.
    pub fn new(pool: sqlx::PgPool, model: Model) -> Self {
        Self::build(Some(pool), model)
    }

    /// An evaluator without a database, over policies given in memory (tests, benches,
    /// tools).
    pub fn in_memory<I>(model: Model, tenants: I) -> Result<Self, RbacError>
    where
        I: IntoIterator<Item = (TenantId, TenantData)>,
    {
        let authz = Self::build(None, model);
        let mut map = Tenants::default();
        for (id, data) in tenants {
            map.insert(id, Arc::new(store::compile_tenant(&authz.inner.model, &data)?));
        }
        map.reindex();
        authz.inner.tenants.store(Arc::new(map));
        authz.inner.version.fetch_add(1, Ordering::Release);
        Ok(authz)
    }

    fn build(pool: Option<sqlx::PgPool>, model: Model) -> Self {
        Self {
            inner: Arc::new(Inner {
                model,
                pool,
                tenants: ArcSwap::from_pointee(Tenants::default()),
                version: AtomicU64::new(NEXT_ID.fetch_add(1, Ordering::Relaxed) << 40),
                loading: tokio::sync::Mutex::new(()),
                generations: std::sync::Mutex::new(std::collections::HashMap::new()),
                epoch: AtomicU64::new(0),
                life: saas_core::notify::Lifeline::new(),
            }),
            tenant: None,
        }
    }

    /// This evaluator bound to `tenant` (for [`require`](Self::require)).
    pub fn for_tenant(&self, tenant: TenantId) -> Self {
        Self {
            inner: self.inner.clone(),
            tenant: Some(tenant),
        }
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.inner.model
    }

    /// The permission called `name` (an error for an unregistered name).
    pub fn permission(&self, name: &str) -> Result<Permission, ModelError> {
        self.inner.model.perms.get(name)
    }

    /// Whether `tenant`'s policy is loaded in this process.
    pub fn is_loaded(&self, tenant: TenantId) -> bool {
        self.inner.tenants.load().contains_key(&tenant)
    }

    /// Checks `permission` for `principal` in `tenant`, on `resource` if given. Takes no
    /// lock and allocates nothing.
    #[inline(always)]
    pub fn check(
        &self,
        principal: &Principal,
        tenant: TenantId,
        permission: Permission,
        resource: Option<ResourceRef>,
    ) -> Decision {
        // The version starts at the evaluator's id shifted left by 40 bits, so one
        // comparison with this thread's copy tells both "same evaluator" and "same version".
        let stamp = self.inner.version.load(Ordering::Acquire);
        SNAPSHOT.with(|cell| self.check_cell(cell, stamp, principal, tenant, permission, resource))
    }

    /// [`check`](Self::check) on this thread's copy of the newest snapshot (refreshed when
    /// the version moved): no lock, no reference-count traffic on the usual path. Kept
    /// out of line so that `check` is small enough for `LocalKey::with` to be inlined
    /// into the caller, where the thread-local's accessor is a known address rather than
    /// an indirect call (about 25% of a check, measured interleaved).
    #[inline(never)]
    fn check_cell(
        &self,
        cell: &RefCell<(u64, Option<Arc<Tenants>>)>,
        stamp: u64,
        principal: &Principal,
        tenant: TenantId,
        permission: Permission,
        resource: Option<ResourceRef>,
    ) -> Decision {
        {
            let slot = cell.borrow();
            if slot.0 == stamp
                && let Some(snapshot) = &slot.1
            {
                return self.check_in(snapshot, principal, tenant, permission, resource);
            }
        }
        self.refresh_copy(cell, stamp, |tenants| {
            self.check_in(tenants, principal, tenant, permission, resource)
        })
    }

    /// Replaces this thread's copy with the newest snapshot and runs `f` on it (kept out
    /// of line so that the usual path stays small enough to inline).
    #[cold]
    #[inline(never)]
    fn refresh_copy<R>(
        &self,
        cell: &RefCell<(u64, Option<Arc<Tenants>>)>,
        stamp: u64,
        f: impl FnOnce(&Tenants) -> R,
    ) -> R {
        let snapshot = self.inner.tenants.load_full();
        let out = f(&snapshot);
        *cell.borrow_mut() = (stamp, Some(snapshot));
        out
    }

    /// The fast path, inlined: a member slot that answers by itself. Everything else
    /// (scopes, foreign credentials, permissions beyond the slot, resources) goes to
    /// [`check_slow`](Self::check_slow).
    #[inline(always)]
    fn check_in(
        &self,
        tenants: &Tenants,
        principal: &Principal,
        tenant: TenantId,
        permission: Permission,
        resource: Option<ResourceRef>,
    ) -> Decision {
        if principal.tenant_id.is_none() && principal.scopes.is_none() {
            let member = tenants.members.get(tenant, principal.user_id);
            match member.map(|m| (m.mask, m.includes(permission))) {
                Some((mask, Some(true))) => return Decision::new(true, permission, Reason::Role, mask),
                Some((mask, Some(false))) if resource.is_none() => {
                    return Decision::deny(permission, Reason::Missing, mask);
                }
                // A tenant that is not loaded also lands here as "not a member";
                // `explain` tells the two apart.
                None if resource.is_none() => return Decision::deny(permission, Reason::NotMember, 0),
                _ => {}
            }
        }
        self.check_slow(tenants, principal, tenant, permission, resource)
    }

    #[inline(never)]
    fn check_slow(
        &self,
        tenants: &Tenants,
        principal: &Principal,
        tenant: TenantId,
        permission: Permission,
        resource: Option<ResourceRef>,
    ) -> Decision {
        if !principal.may_act_in(tenant) {
            return Decision::deny(permission, Reason::NotMember, 0);
        }
        if let Some(scopes) = &principal.scopes
            && !Permissions::scope_allows(scopes, self.inner.model.perms.name(permission))
        {
            return Decision::deny(permission, Reason::OutOfScope, 0);
        }
        let member = tenants.members.get(tenant, principal.user_id);
        if let Some(m) = member {
            let includes = match m.includes(permission) {
                Some(yes) => yes,
                // Beyond the slot's bits: ask the roles.
                None => tenants.get(&tenant).is_some_and(|policy| {
                    (0..policy.roles.len())
                        .any(|i| m.mask & (1 << i) != 0 && policy.roles[i].perms.contains(permission))
                }),
            };
            if includes {
                return Decision::new(true, permission, Reason::Role, m.mask);
            }
        }
        let held = member.map_or(0, |m| m.mask);
        let Some(r) = resource else {
            let reason = if member.is_some() {
                Reason::Missing
            } else {
                Reason::NotMember
            };
            return Decision::deny(permission, reason, held);
        };
        let Some(policy) = tenants.get(&tenant) else {
            return Decision::deny(permission, Reason::NotLoaded, 0);
        };
        grants(policy, principal.user_id, held, permission, r)
    }

    /// [`check`](Self::check) by permission name, on the resource of the permission's type
    /// with `id`, in the bound tenant (or the principal's); a denial becomes a 403
    /// `permission-denied` problem naming the missing permission, and the full decision
    /// is logged.
    pub fn require(&self, principal: &Principal, permission: &str, id: impl Into<Uuid>) -> Result<(), Problem> {
        self.require_on(principal, permission, Some(id.into()))
    }

    /// [`require`](Self::require) without a resource: tenant-wide roles only.
    pub fn require_any(&self, principal: &Principal, permission: &str) -> Result<(), Problem> {
        self.require_on(principal, permission, None)
    }

    fn require_on(&self, principal: &Principal, permission: &str, id: Option<Uuid>) -> Result<(), Problem> {
        let p = self
            .permission(permission)
            .map_err(|e| Problem::internal().with_internal(e))?;
        let Some(tenant) = self.tenant.or(principal.tenant_id) else {
            return Err(permission_denied(permission));
        };
        let resource = id.map(|id| ResourceRef {
            kind: self.inner.model.perms.kind(p),
            id,
        });
        let decision = self.check(principal, tenant, p, resource);
        if decision.allowed() {
            return Ok(());
        }
        let why = self.explain(tenant, &decision);
        tracing::info!(
            user_id = %principal.user_id, tenant_id = %tenant, permission, reason = %why.reason,
            roles = ?why.roles, "permission denied"
        );
        Err(permission_denied(permission))
    }

    /// `decision` in words.
    pub fn explain(&self, tenant: TenantId, decision: &Decision) -> Explanation {
        let tenants = self.inner.tenants.load();
        let policy = tenants.get(&tenant);
        let role_name = |i: u8| {
            policy
                .and_then(|p| p.roles.get(usize::from(i)))
                .map_or_else(|| format!("#{i}"), |r| r.name.to_string())
        };
        let roles: Vec<String> = (0..64u8)
            .filter(|i| decision.held() & (1 << i) != 0)
            .map(role_name)
            .collect();
        let permission = self.inner.model.perms.name(decision.permission()).to_owned();
        let reason = match decision.reason() {
            Reason::Role => {
                let role = policy.and_then(|pol| {
                    (0..pol.roles.len()).find(|i| {
                        decision.held() & (1 << i) != 0 && pol.roles[*i].perms.contains(decision.permission())
                    })
                });
                let name = role.map_or_else(|| "held".to_owned(), |i| role_name(i as u8));
                format!("role {name} includes {permission}")
            }
            Reason::Grant { role, depth: 0 } => format!(
                "a grant of role {} on the resource includes {permission}",
                role_name(role)
            ),
            Reason::Grant { role, depth } => {
                format!(
                    "a grant of role {} on an ancestor ({depth} up) includes {permission}",
                    role_name(role)
                )
            }
            Reason::Missing => format!("no role held includes {permission}"),
            Reason::OutOfScope => format!("the API key's scopes do not include {permission}"),
            Reason::NotMember if policy.is_none() => "the tenant's policy is not loaded".to_owned(),
            Reason::NotMember => "the principal holds no role in this tenant".to_owned(),
            Reason::NotLoaded => "the tenant's policy is not loaded".to_owned(),
        };
        Explanation {
            allowed: decision.allowed(),
            permission,
            reason,
            roles,
        }
    }

    /// Which resources of `resource_type` the principal may reach with `permission`:
    /// [`Access::All`] through a tenant-wide role, else the ids reachable through grants
    /// (directly, or inherited from an ancestor).
    pub fn accessible(
        &self,
        principal: &Principal,
        tenant: TenantId,
        permission: Permission,
        resource_type: &str,
    ) -> Access {
        if self.check(principal, tenant, permission, None).allowed() {
            return Access::All;
        }
        let tenants = self.inner.tenants.load();
        let Some(policy) = tenants.get(&tenant) else {
            return Access::Only(Vec::new());
        };
        if !principal.may_act_in(tenant)
            || principal
                .scopes
                .as_ref()
                .is_some_and(|s| !Permissions::scope_allows(s, self.inner.model.perms.name(permission)))
        {
            return Access::Only(Vec::new());
        }
        let kind = kind_of(resource_type);
        let mut candidates: Vec<ResourceRef> = policy.grants.keys().chain(policy.parents.keys()).copied().collect();
        candidates.retain(|r| r.kind == kind);
        candidates.sort_by_key(|r| r.id);
        candidates.dedup();
        let ids = candidates
            .into_iter()
            .filter(|r| {
                let held = policy.members.get(&principal.user_id).copied().unwrap_or(0);
                evaluate(policy, principal.user_id, held, permission, Some(*r)).allowed()
            })
            .map(|r| r.id)
            .collect();
        Access::Only(ids)
    }
}

/// The member's roles, then grants up the parent chain (the slow path: reverse queries).
fn evaluate(policy: &TenantPolicy, user: UserId, held: u64, p: Permission, resource: Option<ResourceRef>) -> Decision {
    let mut m = held;
    while m != 0 {
        let i = m.trailing_zeros() as usize;
        if policy.roles.get(i).is_some_and(|r| r.perms.contains(p)) {
            return Decision::new(true, p, Reason::Role, held);
        }
        m &= m - 1;
    }
    match resource {
        Some(r) => grants(policy, user, held, p, r),
        None => Decision::deny(p, if held == 0 { Reason::NotMember } else { Reason::Missing }, held),
    }
}

/// Grants on the resource, then on its ancestors (inherited grants only), up to
/// [`MAX_DEPTH`] levels.
#[inline]
fn grants(policy: &TenantPolicy, user: UserId, held: u64, p: Permission, resource: ResourceRef) -> Decision {
    let mut cur = resource;
    for depth in 0..MAX_DEPTH {
        if let Some(list) = policy.grants.get(&cur) {
            for g in list {
                if depth > 0 && !g.inherit {
                    continue;
                }
                let applies = match g.subject {
                    Subject::User(u) => u == user,
                    Subject::Role(r) => held & (1 << r) != 0,
                };
                if applies
                    && policy
                        .roles
                        .get(usize::from(g.role))
                        .is_some_and(|r| r.perms.contains(p))
                {
                    return Decision::new(
                        true,
                        p,
                        Reason::Grant {
                            role: g.role,
                            depth: depth as u8,
                        },
                        held,
                    );
                }
            }
        }
        match policy.parents.get(&cur) {
            Some(parent) => cur = *parent,
            None => break,
        }
    }
    Decision::deny(p, if held == 0 { Reason::NotMember } else { Reason::Missing }, held)
}

/// The 403 problem for a missing permission. Names the permission, never the roles.
pub fn permission_denied(permission: &str) -> Problem {
    Problem::forbidden(format!("You need the permission {permission} for this."))
        .with_type("permission-denied")
        .with_extension("permission", permission.to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use saas_core::{ApiKeyId, Principal, TenantId, UserId};
    use uuid::Uuid;

    use super::model::compile_roles;
    use super::*;

    const PERMS: [&str; 8] = [
        "project:read",
        "project:create",
        "project:delete",
        "doc:read",
        "doc:edit",
        "member:invite",
        "billing:manage",
        "tenant:delete",
    ];

    fn model() -> Model {
        Model::new(PERMS).unwrap()
    }

    #[test]
    fn roles_grants_scopes_and_reasons() {
        let (t, other) = (TenantId::new(), TenantId::new());
        let (ann, bob, cid) = (UserId::new(), UserId::new(), UserId::new());
        let (ws, proj, doc) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let data = TenantData {
            roles: vec![RoleDef::new("editor", ["doc:*"]).including(["viewer"])],
            members: vec![
                (ann, vec!["owner".into()]),
                (bob, vec!["viewer".into()]),
                (cid, vec!["viewer".into()]),
            ],
            grants: vec![
                GrantDef::new("workspace", ws, GrantSubject::User(bob), "editor"),
                GrantDef::new("project", proj, GrantSubject::Role("viewer".into()), "editor").not_inherited(),
            ],
            parents: vec![
                (("doc".into(), doc), ("project".into(), proj)),
                (("project".into(), proj), ("workspace".into(), ws)),
            ],
        };
        let authz = Authz::in_memory(model(), [(t, data)]).unwrap();
        let p = |n| authz.permission(n).unwrap();
        let ann_p = Principal::user(ann);
        let bob_p = Principal::user(bob);

        let d = authz.check(&ann_p, t, p("billing:manage"), None);
        assert!(d.allowed());
        assert_eq!(d.reason(), Reason::Role);
        assert!(authz.explain(t, &d).reason.contains("owner"));

        let d = authz.check(&bob_p, t, p("doc:edit"), None);
        assert_eq!((d.allowed(), d.reason()), (false, Reason::Missing));
        let why = authz.explain(t, &d);
        assert_eq!(why.roles, ["viewer"]);
        // Inherited from the workspace grant, two levels up.
        let d = authz.check(&bob_p, t, p("doc:edit"), Some(ResourceRef::new("doc", doc)));
        assert_eq!((d.allowed(), d.reason()), (true, Reason::Grant { role: 4, depth: 2 }));
        assert!(authz.explain(t, &d).reason.contains("editor"));
        // The role grant on the project is not inherited by its documents.
        let cid_p = Principal::user(cid);
        assert!(
            authz
                .check(&cid_p, t, p("doc:edit"), Some(ResourceRef::new("project", proj)))
                .allowed()
        );
        assert!(
            !authz
                .check(&cid_p, t, p("doc:edit"), Some(ResourceRef::new("doc", doc)))
                .allowed()
        );
        // Same id, other type: nothing.
        assert!(
            !authz
                .check(&bob_p, t, p("doc:edit"), Some(ResourceRef::new("doc", ws)))
                .allowed()
        );

        // Outsiders, other tenants, unloaded tenants.
        let stranger = Principal::user(UserId::new());
        assert_eq!(
            authz.check(&stranger, t, p("project:read"), None).reason(),
            Reason::NotMember
        );
        let d = authz.check(&ann_p, other, p("project:read"), None);
        assert!(!d.allowed());
        assert_eq!(authz.explain(other, &d).reason, "the tenant's policy is not loaded");

        // API keys: scopes intersect the owner's permissions; bound to their tenant.
        let key = Principal::api_key(ann, ApiKeyId::new(), t, Arc::from(vec!["project:*".to_owned()]));
        assert!(authz.check(&key, t, p("project:delete"), None).allowed());
        assert_eq!(
            authz.check(&key, t, p("billing:manage"), None).reason(),
            Reason::OutOfScope
        );
        let bobs_key = Principal::api_key(bob, ApiKeyId::new(), t, Arc::from(vec!["*".to_owned()]));
        assert!(
            !authz.check(&bobs_key, t, p("project:delete"), None).allowed(),
            "scopes never add"
        );
        let foreign = Principal::api_key(ann, ApiKeyId::new(), other, Arc::from(vec!["*".to_owned()]));
        assert_eq!(
            authz.check(&foreign, t, p("project:read"), None).reason(),
            Reason::NotMember
        );

        // require: 403 naming the permission only.
        let err = authz.for_tenant(t).require(&bob_p, "project:delete", proj).unwrap_err();
        assert_eq!(err.status(), http::StatusCode::FORBIDDEN);
        assert_eq!(err.type_slug(), "permission-denied");
        assert!(err.detail().unwrap_or("").contains("project:delete"));
        assert!(!err.detail().unwrap_or("").contains("viewer"));
        assert!(authz.for_tenant(t).require(&bob_p, "doc:edit", doc).is_ok());
        assert!(authz.for_tenant(t).require_any(&bob_p, "nonsense:perm").is_err());

        // Reverse queries.
        assert_eq!(authz.accessible(&ann_p, t, p("doc:edit"), "doc"), Access::All);
        assert_eq!(
            authz.accessible(&bob_p, t, p("doc:edit"), "doc"),
            Access::Only(vec![doc])
        );
        assert_eq!(
            authz.accessible(&bob_p, t, p("doc:edit"), "project"),
            Access::Only(vec![proj])
        );
        assert_eq!(
            authz.accessible(&stranger, t, p("doc:edit"), "doc"),
            Access::Only(vec![])
        );
        assert_eq!(Access::All.as_filter(), None);
        assert_eq!(
            Access::sql_condition("p.id", 1),
            "($1::uuid[] IS NULL OR p.id = ANY($1::uuid[]))"
        );
    }

    #[test]
    fn permissions_beyond_the_fast_bits_are_answered_from_the_roles() {
        let names: Vec<String> = (0..200).map(|i| format!("r{}:a{}", i / 10, i % 10)).collect();
        let model = Model::new(&names).unwrap();
        let (t, ann) = (TenantId::new(), UserId::new());
        let mut data = TenantData::default();
        data.roles.push(RoleDef::new("wide", ["r0:a1", "r19:a9", "r15:*"]));
        data.members.push((ann, vec!["wide".into()]));
        let authz = Authz::in_memory(model, [(t, data)]).unwrap();
        let ann = Principal::user(ann);
        for (name, expected) in [
            ("r0:a1", true),
            ("r0:a2", false),
            ("r19:a9", true),
            ("r19:a8", false),
            ("r15:a3", true),
        ] {
            let d = authz.check(&ann, t, authz.permission(name).unwrap(), None);
            assert_eq!(d.allowed(), expected, "{name}");
        }
    }

    #[test]
    fn a_new_evaluator_never_reads_an_old_ones_snapshot() {
        let (t, ann) = (TenantId::new(), UserId::new());
        for allowed in [true, false, true, false] {
            let mut data = TenantData::default();
            if allowed {
                data.members.push((ann, vec!["owner".into()]));
            }
            let authz = Authz::in_memory(model(), [(t, data)]).unwrap();
            let p = authz.permission("project:read").unwrap();
            assert_eq!(authz.check(&Principal::user(ann), t, p, None).allowed(), allowed);
        }
    }

    #[test]
    fn unknown_permissions_fail_at_construction() {
        let authz = Authz::in_memory(model(), []).unwrap();
        assert!(authz.permission("project:fly").is_err());
        assert!(RequirePermission::new(&authz, "project:fly").is_err());
        assert!(RequirePermission::new(&authz, "project:read").is_ok());
        let bad = TenantData {
            roles: vec![RoleDef::new("x", ["project:fly"])],
            ..TenantData::default()
        };
        // A custom role that no longer compiles is emptied, not fatal for the tenant.
        let authz = Authz::in_memory(model(), [(TenantId::new(), bad)]).unwrap();
        assert_eq!(authz.inner.tenants.load().len(), 1);
    }

    fn closure(defs: &[(PermSet, Vec<usize>)], i: usize, seen: &mut Vec<usize>) -> PermSet {
        if seen.contains(&i) {
            return PermSet::EMPTY;
        }
        seen.push(i);
        defs[i]
            .1
            .iter()
            .fold(defs[i].0, |acc, j| acc.union(closure(defs, *j, seen)))
    }

    proptest! {
        /// A compiled role holds exactly its own permissions and those of every role it
        /// reaches through inclusion (acyclic graphs: includes point to later roles).
        #[test]
        fn inheritance_is_the_transitive_union(
            own in proptest::collection::vec(proptest::collection::vec(0usize..PERMS.len(), 0..4), 1..10),
            edges in proptest::collection::vec((0usize..10, 0usize..10), 0..20),
        ) {
            let m = model();
            let n = own.len();
            let defs: Vec<RoleDef> = (0..n).map(|i| {
                let includes: Vec<String> = edges.iter().filter(|(a, b)| *a == i && *b > i && *b < n).map(|(_, b)| format!("r{b}")).collect();
                RoleDef::new(format!("r{i}"), own[i].iter().map(|p| PERMS[*p])).including(includes)
            }).collect();
            let compiled = compile_roles(&m.perms, &defs).unwrap();
            let naive: Vec<(PermSet, Vec<usize>)> = defs.iter().map(|d| {
                let set = d.permissions.iter().fold(PermSet::EMPTY, |acc, p| acc.union(m.perms.expand(p).unwrap()));
                (set, d.includes.iter().map(|s| s[1..].parse().unwrap()).collect())
            }).collect();
            for (i, role) in compiled.iter().enumerate() {
                prop_assert_eq!(role.perms, closure(&naive, i, &mut Vec::new()));
            }
        }

        /// `resource:*` is exactly the registered permissions of that resource.
        #[test]
        fn wildcards_expand_to_the_resource(resource in prop::sample::select(vec!["project", "doc", "member", "billing", "tenant"])) {
            let m = model();
            let set = m.perms.expand(&format!("{resource}:*")).unwrap();
            for name in PERMS {
                let p = m.perms.get(name).unwrap();
                prop_assert_eq!(set.contains(p), name.starts_with(&format!("{resource}:")));
                prop_assert_eq!(Permissions::scope_allows(&[format!("{resource}:*")], name), set.contains(p));
            }
        }
    }
}
