//! The RBAC workload shared by the differential test against casbin and the benchmark:
//! `rules` policy rules (role → permission) over `rules / 100` tenants, `rules / 10`
//! users, five custom roles per tenant with some inheritance, checks drawn from a fixed
//! seed (own tenant mostly, sometimes another).
#![allow(dead_code)]

use saas_authz::rbac::{Authz, GrantSubject, Model, RoleDef, TenantData};
use saas_core::{Principal, TenantId, UserId};

pub const MODEL: &str = "
[request_definition]
r = sub, dom, obj, act

[policy_definition]
p = sub, dom, obj, act

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub, r.dom) && r.dom == p.dom && r.obj == p.obj && r.act == p.act
";

/// SplitMix64: small, fixed-seed, good enough to draw a workload.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

pub const RESOURCES: usize = 10;
pub const ACTIONS: usize = 5;
pub const ROLES_PER_TENANT: usize = 5;

pub fn permission(i: usize) -> String {
    format!("r{}:a{}", i / ACTIONS, i % ACTIONS)
}

pub struct Workload {
    pub tenants: Vec<TenantId>,
    /// (user, its tenant, role names)
    pub users: Vec<(UserId, usize, Vec<String>)>,
    /// per tenant: role definitions
    pub roles: Vec<Vec<RoleDef>>,
    pub rules: usize,
}

/// One query: user index, tenant index, permission index.
#[derive(Clone, Copy, Debug)]
pub struct Query {
    pub user: usize,
    pub tenant: usize,
    pub permission: usize,
}

pub fn generate(rules: usize, seed: u64) -> Workload {
    let mut rng = Rng::new(seed);
    let n_tenants = (rules / 100).max(1);
    let n_users = (rules / 10).max(1);
    let perms_per_role = (rules / n_tenants / ROLES_PER_TENANT).clamp(1, RESOURCES * ACTIONS);
    let tenants: Vec<TenantId> = (0..n_tenants).map(|_| TenantId::new()).collect();
    let mut roles = Vec::with_capacity(n_tenants);
    let mut count = 0;
    for _ in 0..n_tenants {
        let mut defs = Vec::new();
        for r in 0..ROLES_PER_TENANT {
            // A shuffled prefix: distinct permissions per role.
            let mut all: Vec<usize> = (0..RESOURCES * ACTIONS).collect();
            for i in 0..perms_per_role {
                let j = i + rng.below(all.len() - i);
                all.swap(i, j);
            }
            let perms: Vec<String> = all[..perms_per_role].iter().map(|p| permission(*p)).collect();
            count += perms.len();
            let mut def = RoleDef::new(format!("role{r}"), perms);
            if r + 1 < ROLES_PER_TENANT && rng.below(10) < 3 {
                def = def.including([format!("role{}", r + 1)]);
            }
            defs.push(def);
        }
        roles.push(defs);
    }
    let users = (0..n_users)
        .map(|i| {
            let tenant = i % n_tenants;
            let mut held = vec![format!("role{}", rng.below(ROLES_PER_TENANT))];
            if rng.below(4) == 0 {
                let extra = format!("role{}", rng.below(ROLES_PER_TENANT));
                if !held.contains(&extra) {
                    held.push(extra);
                }
            }
            (UserId::new(), tenant, held)
        })
        .collect();
    Workload {
        tenants,
        users,
        roles,
        rules: count,
    }
}

impl Workload {
    pub fn queries(&self, n: usize, seed: u64) -> Vec<Query> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| {
                let user = rng.below(self.users.len());
                // Own tenant 90% of the time.
                let tenant = if rng.below(10) == 0 {
                    rng.below(self.tenants.len())
                } else {
                    self.users[user].1
                };
                Query {
                    user,
                    tenant,
                    permission: rng.below(RESOURCES * ACTIONS),
                }
            })
            .collect()
    }

    pub fn model() -> Model {
        Model::new((0..RESOURCES * ACTIONS).map(permission)).unwrap()
    }

    pub fn authz(&self) -> Authz {
        let data = self.tenants.iter().enumerate().map(|(t, id)| {
            let mut d = TenantData::default();
            d.roles = self.roles[t].clone();
            d.members = self
                .users
                .iter()
                .filter(|u| u.1 == t)
                .map(|u| (u.0, u.2.clone()))
                .collect();
            let _ = GrantSubject::Role(String::new());
            (*id, d)
        });
        Authz::in_memory(Self::model(), data).unwrap()
    }

    pub fn principals(&self) -> Vec<Principal> {
        self.users.iter().map(|u| Principal::user(u.0)).collect()
    }

    /// casbin rules: `p` (role, tenant, resource, action) and `g` (user or role, role, tenant).
    pub fn casbin_rules(&self) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
        let mut p = Vec::new();
        let mut g = Vec::new();
        for (t, defs) in self.roles.iter().enumerate() {
            let dom = self.tenants[t].to_string();
            for def in defs {
                for perm in &def.permissions {
                    let (obj, act) = perm.split_once(':').unwrap();
                    p.push(vec![def.name.clone(), dom.clone(), obj.to_owned(), act.to_owned()]);
                }
                for inc in &def.includes {
                    g.push(vec![def.name.clone(), inc.clone(), dom.clone()]);
                }
            }
        }
        for (user, t, held) in &self.users {
            for r in held {
                g.push(vec![user.to_string(), r.clone(), self.tenants[*t].to_string()]);
            }
        }
        (p, g)
    }

    pub fn casbin_request(&self, q: Query) -> (String, String, String, String) {
        let perm = permission(q.permission);
        let (obj, act) = perm.split_once(':').unwrap();
        (
            self.users[q.user].0.to_string(),
            self.tenants[q.tenant].to_string(),
            obj.to_owned(),
            act.to_owned(),
        )
    }
}
