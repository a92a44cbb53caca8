//! Demo data: two organisations with a user in every role, a custom role, projects with a
//! per-project editor. Idempotent: a second run finds what the first made.

use saas_authz::rbac::{GrantDef, GrantSubject, RoleDef};
use saas_authz::{Identity, Memberships, Users};
use saas_core::clock::Clock;
use saas_core::{Principal, TenantId, UserId};
use saas_tenancy::{TenantTx, lifecycle};

use crate::app::Shared;

/// One demo user.
#[derive(Debug, Clone)]
pub struct DemoUser {
    /// The identity provider's subject (`sub`).
    pub subject: &'static str,
    /// Their e-mail.
    pub email: &'static str,
    /// Their organisation's slug.
    pub tenant: &'static str,
    /// Their role there.
    pub role: &'static str,
    /// Their user id.
    pub id: UserId,
}

/// A demo organisation: its slug, name and people (the first is its owner).
#[derive(Debug, Clone, Copy)]
pub struct DemoOrg {
    /// The tenant's slug.
    pub slug: &'static str,
    /// Its display name.
    pub name: &'static str,
    /// Its people.
    pub people: &'static [DemoPerson],
}

/// A demo person: identity-provider subject, e-mail, role.
#[derive(Debug, Clone, Copy)]
pub struct DemoPerson {
    /// The `sub` their tokens carry.
    pub subject: &'static str,
    /// Their e-mail.
    pub email: &'static str,
    /// Their role in the organisation (`auditor` is a custom role).
    pub role: &'static str,
}

const fn person(subject: &'static str, email: &'static str, role: &'static str) -> DemoPerson {
    DemoPerson { subject, email, role }
}

/// The two demo organisations.
pub const ORGS: &[DemoOrg] = &[
    DemoOrg {
        slug: "acme",
        name: "Acme Corp",
        people: &[
            person("ada", "ada@acme.test", "owner"),
            person("ben", "ben@acme.test", "admin"),
            person("cy", "cy@acme.test", "member"),
            person("dee", "dee@acme.test", "viewer"),
            person("eve", "eve@acme.test", "auditor"),
        ],
    },
    DemoOrg {
        slug: "globex",
        name: "Globex",
        people: &[
            person("gil", "gil@globex.test", "owner"),
            person("hal", "hal@globex.test", "member"),
        ],
    },
];

/// The demo person whose subject is `subject`.
pub fn person_named(subject: &str) -> Option<&'static DemoPerson> {
    ORGS.iter().flat_map(|o| o.people.iter()).find(|p| p.subject == subject)
}

/// A seeding step failed.
#[derive(Debug, thiserror::Error)]
#[error("seeding the demo data failed ({step}): {error}")]
pub struct SeedError {
    step: &'static str,
    error: String,
}

fn step(step: &'static str) -> impl Fn(&dyn std::fmt::Display) -> SeedError {
    move |e| SeedError {
        step,
        error: e.to_string(),
    }
}

/// Makes (or finds) the demo data; `issuer` is the identity provider the users sign in
/// with. Returns every demo user.
pub async fn demo(shared: &Shared, issuer: &str, clock: &dyn Clock) -> Result<Vec<DemoUser>, SeedError> {
    let users = Users::new(shared.db.app.clone());
    let mut out = Vec::new();
    for org in ORGS {
        let (slug, name, people) = (&org.slug, org.name, org.people);
        let mut ids = Vec::new();
        for p in people {
            let (subject, email) = (p.subject, p.email);
            let id = users
                .provision(&Identity::new(issuer, subject, i64::MAX).with_email(email, true))
                .await
                .map_err(|e| step("users")(&e))?;
            ids.push(id);
        }
        let owner = ids[0];
        let tenant = match find_tenant(shared, slug).await? {
            Some(t) => t,
            None => {
                let t = lifecycle::create(&shared.db.app, slug, name, owner, clock)
                    .await
                    .map_err(|e| step("tenant")(&e))?
                    .id;
                let mut tx = begin(shared, t).await?;
                shared
                    .memberships
                    .bootstrap_owner(&mut tx, owner)
                    .await
                    .map_err(|e| step("owner")(&e))?;
                tx.commit().await.map_err(|e| step("owner")(&e))?;
                t
            }
        };
        let actor = Principal::user(owner);
        let mut tx = begin(shared, tenant).await?;
        if *slug == "acme" {
            let defined: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM saas.roles WHERE name = 'auditor')")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| step("custom role")(&e))?;
            if !defined {
                shared
                    .authz
                    .define_role(
                        &mut tx,
                        &actor,
                        RoleDef::new(
                            "auditor",
                            ["audit:read", "project:list", "project:read", "task:list", "task:read"],
                        ),
                    )
                    .await
                    .map_err(|e| step("custom role")(&e))?;
            }
        }
        for (p, id) in people.iter().zip(&ids) {
            let (subject, email, role) = (p.subject, p.email, p.role);
            if Memberships::get(&mut tx, *id)
                .await
                .map_err(|e| step("members")(&e))?
                .is_none()
            {
                shared
                    .memberships
                    .add(&mut tx, &actor, *id, &[role])
                    .await
                    .map_err(|e| step("members")(&e))?;
            }
            out.push(DemoUser {
                subject,
                email,
                tenant: slug,
                role,
                id: *id,
            });
        }
        let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| step("projects")(&e))?;
        if existing == 0 {
            let mut first = None;
            for (i, (project, task)) in [("Website relaunch", "Pick a font"), ("Q3 planning", "Draft the OKRs")]
                .into_iter()
                .enumerate()
            {
                let id: uuid::Uuid = sqlx::query_scalar(
                    "INSERT INTO projects (tenant_id, name, description, created_by) VALUES ($1, $2, $3, $4) RETURNING id",
                )
                .bind(tenant)
                .bind(format!("{project}{}", if *slug == "acme" { "" } else { " (Globex)" }))
                .bind("demo data")
                .bind(owner)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| step("projects")(&e))?;
                sqlx::query("INSERT INTO tasks (tenant_id, project_id, title, created_by) VALUES ($1, $2, $3, $4)")
                    .bind(tenant)
                    .bind(id)
                    .bind(task)
                    .bind(owner)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| step("projects")(&e))?;
                if i == 0 {
                    first = Some(id);
                }
            }
            // Acme's viewer edits the first project: a grant on that project alone.
            if let (Some(project), true) = (first, *slug == "acme") {
                let dee = ids[3];
                shared
                    .authz
                    .grant(
                        &mut tx,
                        &actor,
                        GrantDef::new("project", project, GrantSubject::User(dee), "member"),
                    )
                    .await
                    .map_err(|e| step("project editor")(&e))?;
            }
        }
        tx.commit().await.map_err(|e| step("commit")(&e))?;
        shared.recount(tenant).await;
    }
    Ok(out)
}

async fn begin(shared: &Shared, tenant: TenantId) -> Result<TenantTx, SeedError> {
    TenantTx::begin(&shared.db.app, tenant)
        .await
        .map_err(|e| step("transaction")(&e))
}

async fn find_tenant(shared: &Shared, slug: &str) -> Result<Option<TenantId>, SeedError> {
    sqlx::query_scalar("SELECT id FROM saas.tenants WHERE slug = $1")
        .bind(slug)
        .fetch_optional(&shared.db.platform)
        .await
        .map_err(|e| step("tenant")(&e))
}
