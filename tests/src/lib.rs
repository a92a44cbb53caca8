//! Fixtures shared by the cross-crate tests.
//!
//! [`Fixture::new`] gives a fresh database with the saas-core, saas-tenancy and saas-authz migrations,
//! an application schema of two tenant tables (`projects`, and `tasks` with a composite
//! foreign key to it), and two tenants, A (`acme`) and B (`globex`), each with data.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixtures fail loudly on purpose

use chrono::{TimeZone, Utc};
use saas_core::clock::ManualClock;
use saas_core::testkit::TestDb;
use saas_core::{TenantId, UserId};
use saas_tenancy::{PlatformPool, TenantTx, lifecycle};

pub use chrono;

/// The application schema every scenario runs against.
pub const SCHEMA: &str = "
    CREATE TABLE projects (
        tenant_id uuid NOT NULL,
        id        uuid NOT NULL DEFAULT gen_random_uuid(),
        name      text NOT NULL,
        budget    bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant_id, id),
        UNIQUE (tenant_id, name));
    SELECT saas.enable_tenant_rls('projects');
    CREATE TABLE tasks (
        tenant_id  uuid NOT NULL,
        id         uuid NOT NULL DEFAULT gen_random_uuid(),
        project_id uuid NOT NULL,
        title      text NOT NULL,
        PRIMARY KEY (tenant_id, id),
        FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE);
    SELECT saas.enable_tenant_rls('tasks');
";

/// A database with two tenants and their data.
pub struct Fixture {
    /// The database and its pools.
    pub db: TestDb,
    /// Tenant A (`acme`): the attacker's own tenant.
    pub a: TenantId,
    /// Tenant B (`globex`): the victim.
    pub b: TenantId,
    /// A's member.
    pub alice: UserId,
    /// B's member.
    pub bob: UserId,
    /// B's project ids.
    pub b_projects: Vec<uuid::Uuid>,
    /// A clock for lifecycle and support sessions.
    pub clock: ManualClock,
}

impl Fixture {
    /// Builds the database, schema, tenants and data.
    pub async fn new() -> Self {
        let db = TestDb::new(&[
            &saas_core::MIGRATOR,
            &saas_tenancy::MIGRATOR,
            &saas_events::MIGRATOR,
            &saas_authz::MIGRATOR,
            &saas_flags::MIGRATOR,
            &saas_billing::MIGRATOR,
        ])
        .await
        .unwrap();
        sqlx::raw_sql(SCHEMA).execute(db.owner()).await.unwrap();
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 6, 1, 9, 0, 0).unwrap());
        let (alice, bob) = (UserId::new(), UserId::new());
        let a = lifecycle::create(db.app(), "acme", "Acme", alice, &clock)
            .await
            .unwrap()
            .id;
        let b = lifecycle::create(db.app(), "globex", "Globex", bob, &clock)
            .await
            .unwrap()
            .id;
        let mut f = Self {
            db,
            a,
            b,
            alice,
            bob,
            b_projects: Vec::new(),
            clock,
        };
        f.seed(a, "a", 3).await;
        f.b_projects = f.seed(b, "b-secret", 2).await;
        f
    }

    async fn seed(&self, tenant: TenantId, prefix: &str, n: usize) -> Vec<uuid::Uuid> {
        let mut tx = self.tx(tenant).await;
        let mut ids = Vec::new();
        for i in 0..n {
            let id: uuid::Uuid =
                sqlx::query_scalar("INSERT INTO projects (tenant_id, name, budget) VALUES ($1, $2, $3) RETURNING id")
                    .bind(tenant)
                    .bind(format!("{prefix}-{i}"))
                    .bind(1000_i64)
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
            sqlx::query("INSERT INTO tasks (tenant_id, project_id, title) VALUES ($1, $2, $3)")
                .bind(tenant)
                .bind(id)
                .bind(format!("{prefix}-task-{i}"))
                .execute(&mut *tx)
                .await
                .unwrap();
            ids.push(id);
        }
        tx.commit().await.unwrap();
        ids
    }

    /// A transaction as `tenant` on the application pool.
    pub async fn tx(&self, tenant: TenantId) -> TenantTx {
        TenantTx::begin(self.db.app(), tenant).await.unwrap()
    }

    /// The platform pool.
    pub fn platform(&self) -> PlatformPool {
        PlatformPool::new(self.db.platform().clone())
    }

    /// Counts B's rows in `table` as the platform sees them (ground truth).
    pub async fn b_rows(&self, table: &str) -> i64 {
        let mut tx = saas_tenancy::SystemTx::begin(&self.platform(), "test-ground-truth")
            .await
            .unwrap();
        let sql = format!("SELECT count(*) FROM {table} WHERE tenant_id = $1");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(self.b)
            .fetch_one(&mut *tx)
            .await
            .unwrap()
    }
}
