//! The compiled model: registered permissions as bit positions, roles as permission
//! sets with inheritance, and one tenant's policy (members, custom roles, resource grants).

use std::collections::HashMap;
use std::fmt;

use saas_core::UserId;
use uuid::Uuid;

use crate::role::{ADMIN, MEMBER, OWNER, VIEWER};

/// The most permissions a model registers.
pub const MAX_PERMISSIONS: usize = 256;
const _: () = assert!(MAX_PERMISSIONS <= 256, "a Decision stores the permission in 8 bits");
/// The most roles (built-in and custom) one tenant has: a member's roles are a 32-bit
/// mask carried whole in every [`Decision`](super::Decision).
pub const MAX_ROLES: usize = 32;
/// How far a grant is inherited down a parent chain (the resource and 7 ancestors).
pub const MAX_DEPTH: usize = 8;

pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// Maps keyed by our UUIDv7 ids: the ids end in 62 random bits drawn by the server, so
/// hashing them is one multiply instead of a pass over 16 bytes.
pub(crate) type IdMap<K, V> = HashMap<K, V, IdHash>;

#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    #[inline]
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // The random tail of a UUID (or the tail of whatever else is written).
        let mut tail = [0u8; 8];
        let n = bytes.len().min(8);
        tail[..n].copy_from_slice(&bytes[bytes.len() - n..]);
        self.0 = (self.0.rotate_left(23) ^ u64::from_le_bytes(tail)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    /// Length prefixes of fixed-size ids carry nothing.
    #[inline]
    fn write_usize(&mut self, _: usize) {}
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(23) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A set of permissions, one bit each.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PermSet([u64; 4]);

impl PermSet {
    /// The empty set.
    pub const EMPTY: PermSet = PermSet([0; 4]);

    #[inline]
    pub(crate) fn insert(&mut self, p: Permission) {
        self.0[usize::from(p.0 >> 6)] |= 1 << (p.0 & 63);
    }
    /// Whether `p` is in the set.
    #[inline]
    pub fn contains(&self, p: Permission) -> bool {
        self.0[usize::from(p.0 >> 6)] & (1 << (p.0 & 63)) != 0
    }
    /// Both sets together.
    #[inline]
    pub fn union(self, other: PermSet) -> PermSet {
        PermSet([
            self.0[0] | other.0[0],
            self.0[1] | other.0[1],
            self.0[2] | other.0[2],
            self.0[3] | other.0[3],
        ])
    }
    /// Whether every permission of `self` is in `other`.
    pub fn is_subset(&self, other: &PermSet) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(a, b)| a & !b == 0)
    }
    /// The `i`th 64-bit word of the set.
    #[inline]
    pub(crate) fn word(&self, i: usize) -> u64 {
        self.0[i]
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
    /// The permissions in the set.
    pub fn iter(&self) -> impl Iterator<Item = Permission> + '_ {
        (0..MAX_PERMISSIONS as u16)
            .map(Permission)
            .filter(|p| self.contains(*p))
    }
}

impl fmt::Debug for PermSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|p| p.0)).finish()
    }
}

/// A registered permission: a bit position. Get one with [`Permissions::get`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct Permission(pub(crate) u16);

/// Why a model, a role or a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Not `resource:action`, `resource:*` or `*`.
    #[error("{0:?} is not a permission name (resource:action)")]
    InvalidName(String),
    /// Registered twice.
    #[error("permission {0:?} is registered twice")]
    Duplicate(String),
    /// Not registered.
    #[error("unknown permission {0:?}: register it in the model first")]
    UnknownPermission(String),
    /// More than [`MAX_PERMISSIONS`] permissions or [`MAX_ROLES`] roles.
    #[error("too many {0} (at most {1})")]
    TooMany(&'static str, usize),
    /// A role includes a role that does not exist.
    #[error("role {role:?} includes unknown role {included:?}")]
    UnknownRole {
        /// The including role.
        role: String,
        /// The missing role.
        included: String,
    },
    /// Role inclusion loops.
    #[error("role inheritance has a cycle through {0:?}")]
    Cycle(String),
    /// A role name is empty, too long, or not lower-case letters, digits, `_` and `-`.
    #[error("{0:?} is not a role name (1-64 of a-z, 0-9, _ and -)")]
    InvalidRoleName(String),
    /// A custom role reuses a built-in role's name.
    #[error("{0:?} is a built-in role")]
    BuiltinRole(String),
}

fn valid_segment(seg: &str) -> bool {
    let mut chars = seg.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Whether `name` is a role name.
pub fn valid_role_name(name: &str) -> bool {
    name.len() <= 64 && valid_segment(name)
}

/// The registered permissions, compiled to bit positions.
#[derive(Clone)]
pub struct Permissions {
    names: Vec<Box<str>>,
    kinds: Vec<u64>,
    by_name: FastMap<Box<str>, Permission>,
    by_resource: FastMap<Box<str>, PermSet>,
    all: PermSet,
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names.iter()).finish()
    }
}

impl Permissions {
    /// Registers `names` (`resource:action`). Duplicates, bad names and more than
    /// [`MAX_PERMISSIONS`] are errors.
    pub fn new<I, S>(names: I) -> Result<Self, ModelError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Self {
            names: Vec::new(),
            kinds: Vec::new(),
            by_name: FastMap::default(),
            by_resource: FastMap::default(),
            all: PermSet::EMPTY,
        };
        for name in names {
            let name = name.as_ref();
            let Some((resource, action)) = name.split_once(':') else {
                return Err(ModelError::InvalidName(name.into()));
            };
            if !valid_segment(resource) || !valid_segment(action) || name.len() > 64 {
                return Err(ModelError::InvalidName(name.into()));
            }
            if out.by_name.contains_key(name) {
                return Err(ModelError::Duplicate(name.into()));
            }
            if out.names.len() == MAX_PERMISSIONS {
                return Err(ModelError::TooMany("permissions", MAX_PERMISSIONS));
            }
            let p = Permission(u16::try_from(out.names.len()).unwrap_or(u16::MAX));
            out.names.push(name.into());
            out.kinds.push(kind_of(resource));
            out.by_name.insert(name.into(), p);
            out.by_resource.entry(resource.into()).or_default().insert(p);
            out.all.insert(p);
        }
        Ok(out)
    }

    /// The permission called `name`; an error (not a silent deny) when unregistered.
    pub fn get(&self, name: &str) -> Result<Permission, ModelError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| ModelError::UnknownPermission(name.into()))
    }

    /// The name of `p`.
    pub fn name(&self, p: Permission) -> &str {
        self.names.get(usize::from(p.0)).map_or("", |n| n)
    }

    /// The resource type `p` is about, hashed (see [`ResourceRef`]).
    #[inline]
    pub(crate) fn kind(&self, p: Permission) -> u64 {
        self.kinds.get(usize::from(p.0)).copied().unwrap_or(0)
    }

    /// The resource part of `p` (`project` of `project:read`).
    pub fn resource(&self, p: Permission) -> &str {
        self.name(p).split_once(':').map_or("", |(r, _)| r)
    }

    /// What a pattern means: `resource:action`, `resource:*` (every registered action of
    /// the resource) or `*` (everything).
    pub fn expand(&self, pattern: &str) -> Result<PermSet, ModelError> {
        if pattern == "*" {
            return Ok(self.all);
        }
        if let Some(resource) = pattern.strip_suffix(":*") {
            return self
                .by_resource
                .get(resource)
                .copied()
                .ok_or_else(|| ModelError::UnknownPermission(pattern.into()));
        }
        let mut set = PermSet::EMPTY;
        set.insert(self.get(pattern)?);
        Ok(set)
    }

    /// Every registered permission.
    pub fn all(&self) -> PermSet {
        self.all
    }

    /// How many are registered.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether `name` is one of `scopes` (exact, `resource:*` or `*`): how an API key's
    /// scopes limit it. No allocation.
    pub fn scope_allows<S: AsRef<str>>(scopes: &[S], name: &str) -> bool {
        let resource = name.split_once(':').map_or(name, |(r, _)| r);
        scopes.iter().any(|s| {
            let s = s.as_ref();
            s == "*" || s == name || s.strip_suffix(":*").is_some_and(|r| r == resource)
        })
    }
}

/// A role's definition: permission patterns and the roles it includes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct RoleDef {
    /// The role's name.
    pub name: String,
    /// Its permission patterns (`project:read`, `project:*`, `*`).
    pub permissions: Vec<String>,
    /// Roles whose permissions it includes.
    pub includes: Vec<String>,
}

impl RoleDef {
    /// A role with `permissions` and no included roles.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(name: impl Into<String>, permissions: I) -> Self {
        Self {
            name: name.into(),
            permissions: permissions.into_iter().map(Into::into).collect(),
            includes: Vec::new(),
        }
    }
    /// Includes the permissions of `roles`.
    pub fn including<I: IntoIterator<Item = S>, S: Into<String>>(mut self, roles: I) -> Self {
        self.includes.extend(roles.into_iter().map(Into::into));
        self
    }
}

/// A compiled role.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRole {
    pub(crate) name: Box<str>,
    /// Its own and every included role's permissions.
    pub(crate) perms: PermSet,
}

/// Compiles role definitions (built-ins first) into permission sets, resolving inclusion
/// and rejecting unknown permissions, unknown included roles and cycles.
pub(crate) fn compile_roles(perms: &Permissions, defs: &[RoleDef]) -> Result<Vec<CompiledRole>, ModelError> {
    if defs.len() > MAX_ROLES {
        return Err(ModelError::TooMany("roles", MAX_ROLES));
    }
    let index: HashMap<&str, usize> = defs.iter().enumerate().map(|(i, d)| (d.name.as_str(), i)).collect();
    let mut direct = Vec::with_capacity(defs.len());
    for d in defs {
        if !valid_role_name(&d.name) {
            return Err(ModelError::InvalidRoleName(d.name.clone()));
        }
        let mut set = PermSet::EMPTY;
        for p in &d.permissions {
            set = set.union(perms.expand(p)?);
        }
        for inc in &d.includes {
            if !index.contains_key(inc.as_str()) {
                return Err(ModelError::UnknownRole {
                    role: d.name.clone(),
                    included: inc.clone(),
                });
            }
        }
        direct.push(set);
    }
    // Depth-first closure with cycle detection (0 = new, 1 = on the stack, 2 = done).
    fn visit(
        i: usize,
        defs: &[RoleDef],
        index: &HashMap<&str, usize>,
        direct: &[PermSet],
        state: &mut [u8],
        done: &mut [PermSet],
    ) -> Result<PermSet, ModelError> {
        match state[i] {
            2 => return Ok(done[i]),
            1 => return Err(ModelError::Cycle(defs[i].name.clone())),
            _ => {}
        }
        state[i] = 1;
        let mut set = direct[i];
        for inc in &defs[i].includes {
            let j = index[inc.as_str()];
            set = set.union(visit(j, defs, index, direct, state, done)?);
        }
        state[i] = 2;
        done[i] = set;
        Ok(set)
    }
    let mut state = vec![0u8; defs.len()];
    let mut done = vec![PermSet::EMPTY; defs.len()];
    let mut out = Vec::with_capacity(defs.len());
    for (i, d) in defs.iter().enumerate() {
        let set = visit(i, defs, &index, &direct, &mut state, &mut done)?;
        out.push(CompiledRole {
            name: d.name.as_str().into(),
            perms: set,
        });
    }
    Ok(out)
}

/// The application's model: its permissions and the built-in roles' definitions.
#[derive(Debug, Clone)]
pub struct Model {
    pub(crate) perms: Permissions,
    pub(crate) builtin: Vec<RoleDef>,
    pub(crate) compiled_builtin: Vec<CompiledRole>,
}

/// Actions a viewer may take on anything.
const READ_ACTIONS: [&str; 2] = ["read", "list"];
/// Actions a member may take on the product's own resources.
const WRITE_ACTIONS: [&str; 5] = ["create", "update", "write", "edit", "comment"];
/// Resources that only admins (or owners) manage.
const ADMIN_RESOURCES: [&str; 6] = ["member", "api_key", "role", "settings", "audit", "invitation"];
/// Resources only owners manage.
const OWNER_RESOURCES: [&str; 2] = ["billing", "tenant"];

impl Model {
    /// A model over `permissions` with the built-in roles' defaults:
    /// `owner` everything; `admin` everything but `billing:*` and `tenant:*`; `member`
    /// what a viewer may plus create/update/write/edit/comment on the product's
    /// resources (not members, keys, roles, settings, audit, invitations, billing,
    /// tenant); `viewer` every `read` and `list` outside billing and tenant.
    pub fn new<I, S>(permissions: I) -> Result<Self, ModelError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let perms = Permissions::new(permissions)?;
        let pick = |f: &dyn Fn(&str, &str) -> bool| -> Vec<String> {
            perms
                .names
                .iter()
                .filter(|n| n.split_once(':').is_some_and(|(r, a)| f(r, a)))
                .map(|n| n.to_string())
                .collect()
        };
        let viewer = pick(&|r, a| READ_ACTIONS.contains(&a) && !OWNER_RESOURCES.contains(&r));
        let member =
            pick(&|r, a| WRITE_ACTIONS.contains(&a) && !ADMIN_RESOURCES.contains(&r) && !OWNER_RESOURCES.contains(&r));
        let admin = pick(&|r, _| !OWNER_RESOURCES.contains(&r));
        let builtin = vec![
            RoleDef::new(OWNER, ["*"]),
            RoleDef::new(ADMIN, admin).including([MEMBER]),
            RoleDef::new(MEMBER, member).including([VIEWER]),
            RoleDef::new(VIEWER, viewer),
        ];
        let compiled_builtin = compile_roles(&perms, &builtin)?;
        Ok(Self {
            perms,
            builtin,
            compiled_builtin,
        })
    }

    /// Replaces the definition of the built-in role `def.name` (`owner`, `admin`,
    /// `member` or `viewer`).
    pub fn role(mut self, def: RoleDef) -> Result<Self, ModelError> {
        let Some(slot) = self.builtin.iter_mut().find(|d| d.name == def.name) else {
            return Err(ModelError::UnknownRole {
                role: def.name.clone(),
                included: def.name,
            });
        };
        *slot = def;
        self.compiled_builtin = compile_roles(&self.perms, &self.builtin)?;
        Ok(self)
    }

    /// The registered permissions.
    pub fn permissions(&self) -> &Permissions {
        &self.perms
    }

    /// The built-in roles' definitions.
    pub fn builtin_roles(&self) -> &[RoleDef] {
        &self.builtin
    }

    /// The rank (1 viewer … 4 owner) of the lowest built-in role whose permissions cover
    /// `perms`: what a custom role with these permissions counts as when the rule "nobody
    /// grants a role above their own" is applied.
    pub fn rank_covering(&self, perms: PermSet) -> u8 {
        [
            crate::role::VIEWER,
            crate::role::MEMBER,
            crate::role::ADMIN,
            crate::role::OWNER,
        ]
        .into_iter()
        .find(|b| self.builtin_permissions(b).is_some_and(|bp| perms.is_subset(&bp)))
        .and_then(crate::role::rank)
        .unwrap_or(4)
    }

    /// The rank of each of `roles` (built-in by name, custom ones compiled with the
    /// tenant's `custom` definitions, inclusions followed). `None` for a role that does not
    /// exist.
    pub(crate) fn ranks_of(&self, custom: &[RoleDef], roles: &[&str]) -> Result<Vec<Option<u8>>, ModelError> {
        let mut defs = self.builtin.clone();
        defs.extend(custom.iter().cloned());
        let compiled = compile_roles(&self.perms, &defs)?;
        Ok(roles
            .iter()
            .map(|r| match crate::role::rank(r) {
                Some(rank) => Some(rank),
                None => compiled
                    .iter()
                    .find(|c| &*c.name == *r)
                    .map(|c| self.rank_covering(c.perms)),
            })
            .collect())
    }

    /// The permissions of built-in role `name`.
    pub fn builtin_permissions(&self, name: &str) -> Option<PermSet> {
        self.compiled_builtin.iter().find(|r| &*r.name == name).map(|r| r.perms)
    }
}

/// The hash that stands for a resource type name.
pub(crate) fn kind_of(resource_type: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x5aa5_6b1d).hash_one(resource_type)
}

/// A reference to one resource: its type (`project`, `workspace`) and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResourceRef {
    pub(crate) kind: u64,
    pub(crate) id: Uuid,
}

impl ResourceRef {
    /// The resource of type `resource_type` (the resource part of its permissions) and `id`.
    pub fn new(resource_type: &str, id: impl Into<Uuid>) -> Self {
        Self {
            kind: kind_of(resource_type),
            id: id.into(),
        }
    }
}

/// Who a grant is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subject {
    User(UserId),
    Role(u8),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct CompiledGrant {
    pub(crate) subject: Subject,
    pub(crate) role: u8,
    pub(crate) inherit: bool,
}

/// One tenant's compiled policy: roles (built-in, then custom), each member's role mask,
/// resource grants and the parent chain.
#[derive(Debug, Clone, Default)]
pub(crate) struct TenantPolicy {
    pub(crate) roles: Vec<CompiledRole>,
    pub(crate) members: IdMap<UserId, u64>,
    pub(crate) grants: FastMap<ResourceRef, Vec<CompiledGrant>>,
    pub(crate) parents: FastMap<ResourceRef, ResourceRef>,
}

impl TenantPolicy {
    pub(crate) fn role_index(&self, name: &str) -> Option<u8> {
        self.roles
            .iter()
            .position(|r| &*r.name == name)
            .and_then(|i| u8::try_from(i).ok())
    }
    pub(crate) fn mask_of<S: AsRef<str>>(&self, roles: &[S]) -> u64 {
        roles
            .iter()
            .filter_map(|r| self.role_index(r.as_ref()))
            .fold(0, |m, i| m | (1 << i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_compile_to_bits_and_wildcards_expand() {
        let p = Permissions::new(["project:read", "project:delete", "billing:manage"]).unwrap();
        let read = p.get("project:read").unwrap();
        assert!(p.expand("project:*").unwrap().contains(read));
        assert!(
            !p.expand("project:*")
                .unwrap()
                .contains(p.get("billing:manage").unwrap())
        );
        assert_eq!(p.expand("*").unwrap(), p.all());
        assert!(matches!(p.get("project:write"), Err(ModelError::UnknownPermission(_))));
        assert!(matches!(p.expand("nothing:*"), Err(ModelError::UnknownPermission(_))));
        assert!(matches!(
            Permissions::new(["a:b", "a:b"]),
            Err(ModelError::Duplicate(_))
        ));
        assert!(matches!(Permissions::new(["ab"]), Err(ModelError::InvalidName(_))));
        assert!(matches!(Permissions::new(["a:B"]), Err(ModelError::InvalidName(_))));
        let many: Vec<String> = (0..=MAX_PERMISSIONS).map(|i| format!("r:a{i}")).collect();
        assert!(matches!(Permissions::new(&many), Err(ModelError::TooMany(..))));
    }

    #[test]
    fn inheritance_closes_and_cycles_are_refused() {
        let p = Permissions::new(["doc:read", "doc:write", "doc:delete"]).unwrap();
        let defs = vec![
            RoleDef::new("reader", ["doc:read"]),
            RoleDef::new("writer", ["doc:write"]).including(["reader"]),
            RoleDef::new("boss", ["doc:delete"]).including(["writer"]),
        ];
        let roles = compile_roles(&p, &defs).unwrap();
        assert_eq!(roles[2].perms, p.all());
        let cyclic = vec![
            RoleDef::new("a", ["doc:read"]).including(["b"]),
            RoleDef::new("b", ["doc:read"]).including(["a"]),
        ];
        assert!(matches!(compile_roles(&p, &cyclic), Err(ModelError::Cycle(_))));
        let selfish = vec![RoleDef::new("a", ["doc:read"]).including(["a"])];
        assert!(matches!(compile_roles(&p, &selfish), Err(ModelError::Cycle(_))));
        let dangling = vec![RoleDef::new("a", ["doc:read"]).including(["ghost"])];
        assert!(matches!(
            compile_roles(&p, &dangling),
            Err(ModelError::UnknownRole { .. })
        ));
    }

    #[test]
    fn default_roles_are_ordered() {
        let m = Model::new([
            "project:read",
            "project:create",
            "project:delete",
            "member:invite",
            "billing:manage",
        ])
        .unwrap();
        let get = |r| m.builtin_permissions(r).unwrap();
        assert!(get(VIEWER).is_subset(&get(MEMBER)));
        assert!(get(MEMBER).is_subset(&get(ADMIN)));
        assert!(get(ADMIN).is_subset(&get(OWNER)));
        let billing = m.permissions().get("billing:manage").unwrap();
        assert!(get(OWNER).contains(billing) && !get(ADMIN).contains(billing));
        let invite = m.permissions().get("member:invite").unwrap();
        assert!(get(ADMIN).contains(invite) && !get(MEMBER).contains(invite));
        let create = m.permissions().get("project:create").unwrap();
        assert!(get(MEMBER).contains(create) && !get(VIEWER).contains(create));
    }

    #[test]
    fn scopes() {
        assert!(Permissions::scope_allows(&["project:*"], "project:delete"));
        assert!(Permissions::scope_allows(&["project:read"], "project:read"));
        assert!(!Permissions::scope_allows(&["project:read"], "project:delete"));
        assert!(!Permissions::scope_allows(&["proj:*"], "project:read"));
        assert!(Permissions::scope_allows(&["*"], "billing:manage"));
        assert!(!Permissions::scope_allows::<&str>(&[], "project:read"));
    }
}
