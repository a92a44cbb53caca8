//! A fresh PostgreSQL database per test, reached through two roles.
//!
//! [`TestDb::new`] connects to the server named by `DATABASE_URL` (default
//! `postgres://root@127.0.0.1:5432/postgres?sslmode=disable`) as an administrator,
//! creates a database owned by a non-superuser owner role, runs the given migrators as
//! that owner, and hands out two pools:
//! - [`TestDb::owner`]: the migration owner (owns the tables, still not superuser);
//! - [`TestDb::platform`]: a platform role with `BYPASSRLS` for system work;
//! - [`TestDb::app`]: the application role — `LOGIN NOSUPERUSER NOBYPASSRLS`, owns
//!   nothing, member of `saas_app`. Isolation tests must use this one: a test that
//!   passes only as superuser proves nothing.
//!
//! The database is dropped when the `TestDb` is dropped; databases left behind by a
//! crashed run are dropped by the next run after two hours. Tests in parallel each get
//! their own database and do not interfere.
//!
//! ```no_run
//! # async fn demo() -> Result<(), saas_core::testkit::TestDbError> {
//! let db = saas_core::testkit::TestDb::new(&[&saas_core::MIGRATOR]).await?;
//! let one: i32 = sqlx::query_scalar("select 1").fetch_one(db.app()).await?;
//! assert_eq!(one, 1);
//! # Ok(()) }
//! ```

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::OnceCell;

use crate::id::TenantId;

/// The server used when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://root@127.0.0.1:5432/postgres?sslmode=disable";

/// The owner role every test database belongs to.
pub const OWNER_ROLE: &str = "saas_test_owner";
/// The application login role tests connect as.
pub const APP_ROLE: &str = "saas_test_app";
/// The platform login role (`BYPASSRLS`, member of `saas_platform`) for system work.
pub const PLATFORM_ROLE: &str = "saas_test_platform";
const ROLE_PASSWORD: &str = "saas_test";
const DB_PREFIX: &str = "saas_test_";

/// A test database could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestDbError {
    /// `DATABASE_URL` does not parse.
    #[error("DATABASE_URL is invalid: {0}")]
    Url(sqlx::Error),
    /// The server could not be reached or refused a setup statement.
    #[error("PostgreSQL setup failed (is the server running and DATABASE_URL an administrator?): {0}")]
    Database(#[from] sqlx::Error),
    /// A migrator failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] MigrateError),
}

/// A database of its own for one test. See the module docs.
pub struct TestDb {
    name: String,
    admin: PgConnectOptions,
    owner_options: PgConnectOptions,
    owner: PgPool,
    app: PgPool,
    platform: PgPool,
    app_options: PgConnectOptions,
    platform_options: PgConnectOptions,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn admin_options() -> Result<PgConnectOptions, TestDbError> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    PgConnectOptions::from_str(&url).map_err(TestDbError::Url)
}

static SETUP: OnceCell<()> = OnceCell::const_new();

/// Creates the shared roles once per process and drops databases left by crashed runs.
async fn setup_cluster(admin: &PgConnectOptions) -> Result<(), TestDbError> {
    SETUP
        .get_or_try_init(|| async {
            let mut conn = PgConnection::connect_with(admin).await?;
            // Concurrent test processes may race to create the roles: tolerate that.
            let sql = format!(
                "DO $$ BEGIN
                   BEGIN CREATE ROLE saas_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
                   EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
                   BEGIN CREATE ROLE {OWNER_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB PASSWORD '{ROLE_PASSWORD}';
                   EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
                   BEGIN CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB INHERIT PASSWORD '{ROLE_PASSWORD}';
                   EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
                   BEGIN CREATE ROLE saas_platform NOLOGIN NOSUPERUSER NOBYPASSRLS;
                   EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
                   BEGIN CREATE ROLE {PLATFORM_ROLE} LOGIN NOSUPERUSER BYPASSRLS NOCREATEROLE NOCREATEDB INHERIT PASSWORD '{ROLE_PASSWORD}';
                   EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
                 END $$"
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
            // GRANT of a role already granted only warns.
            for grant in [format!("GRANT saas_app TO {APP_ROLE}"), format!("GRANT saas_platform TO {PLATFORM_ROLE}")] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(grant))
                    .execute(&mut conn)
                    .await
                    .or_else(ignore_concurrent_update)?;
            }
            drop_stale(&mut conn).await?;
            conn.close().await?;
            Ok::<(), TestDbError>(())
        })
        .await
        .map(|_| ())
}

fn ignore_concurrent_update(e: sqlx::Error) -> Result<sqlx::postgres::PgQueryResult, sqlx::Error> {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("XX000") => Ok(Default::default()),
        _ => Err(e),
    }
}

async fn drop_stale(conn: &mut PgConnection) -> Result<(), TestDbError> {
    let names: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'saas\\_test\\_%'")
        .fetch_all(&mut *conn)
        .await?;
    let cutoff = chrono::Utc::now() - chrono::Duration::hours(2);
    for name in names {
        let Some(created) = name
            .strip_prefix(DB_PREFIX)
            .and_then(|s| uuid::Uuid::try_parse(s).ok())
            .and_then(|u| u.get_timestamp())
            .map(|ts| ts.to_unix())
            .and_then(|(secs, nanos)| chrono::DateTime::from_timestamp(secs as i64, nanos))
        else {
            continue;
        };
        if created < cutoff {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            )))
            .execute(&mut *conn)
            .await;
        }
    }
    Ok(())
}

impl TestDb {
    /// Creates the database and runs `migrators` (in order) as the owner.
    pub async fn new(migrators: &[&Migrator]) -> Result<Self, TestDbError> {
        let admin = admin_options()?;
        setup_cluster(&admin).await?;
        let name = format!("{DB_PREFIX}{}", crate::id::new_v7().simple());
        let mut conn = PgConnection::connect_with(&admin).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{name}\" OWNER {OWNER_ROLE}"
        )))
        .execute(&mut conn)
        .await?;
        // Nobody but the two roles (and administrators) may connect.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "REVOKE CONNECT ON DATABASE \"{name}\" FROM PUBLIC; \
             GRANT CONNECT ON DATABASE \"{name}\" TO {OWNER_ROLE}, {APP_ROLE}, {PLATFORM_ROLE}"
        )))
        .execute(&mut conn)
        .await?;
        conn.close().await?;

        let owner_options = admin
            .clone()
            .database(&name)
            .username(OWNER_ROLE)
            .password(ROLE_PASSWORD);
        let app_options = admin.clone().database(&name).username(APP_ROLE).password(ROLE_PASSWORD);
        let platform_options = admin
            .clone()
            .database(&name)
            .username(PLATFORM_ROLE)
            .password(ROLE_PASSWORD);
        let pool = |max| {
            PgPoolOptions::new()
                .max_connections(max)
                .min_connections(0)
                .acquire_timeout(Duration::from_secs(30))
                .test_before_acquire(false)
        };
        let db = Self {
            owner: pool(3).connect_lazy_with(owner_options.clone()),
            owner_options,
            app: pool(8).connect_lazy_with(app_options.clone()),
            platform: pool(3).connect_lazy_with(platform_options.clone()),
            app_options,
            platform_options,
            admin,
            name,
        };
        for m in migrators {
            m.run(&db.owner).await?;
        }
        Ok(db)
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many connections to this database are listening (`LISTEN`) right now, as the
    /// administrator sees them (the test roles cannot see each other's sessions): for
    /// tests that a listener ends with its owner.
    pub async fn listening_connections(&self) -> Result<i64, TestDbError> {
        let mut conn = PgConnection::connect_with(&self.admin).await?;
        let n = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'")
            .bind(&self.name)
            .fetch_one(&mut conn)
            .await?;
        conn.close().await?;
        Ok(n)
    }
    /// A pool connected as the owner role (DDL, fixtures, tampering in tests).
    pub fn owner(&self) -> &PgPool {
        &self.owner
    }
    /// A pool connected as the application role.
    pub fn app(&self) -> &PgPool {
        &self.app
    }
    /// A pool connected as the platform role: `BYPASSRLS`, for system jobs and audited
    /// cross-tenant work. Never use it where the application role belongs.
    pub fn platform(&self) -> &PgPool {
        &self.platform
    }
    /// Connection options for the owner role (for pools a test or bench builds itself, such
    /// as a peer job queue that creates its own schema).
    pub fn owner_options(&self) -> PgConnectOptions {
        self.owner_options.clone()
    }

    /// Connection options for the application role (for pools a test builds itself).
    pub fn app_options(&self) -> PgConnectOptions {
        self.app_options.clone()
    }

    /// Connection options for the platform role (for pools a test builds itself).
    pub fn platform_options(&self) -> PgConnectOptions {
        self.platform_options.clone()
    }

    /// A `postgres://` URL for the application role (`platform = false`) or the platform
    /// role, for a process a test starts.
    pub fn url(&self, platform: bool) -> String {
        let o = if platform {
            &self.platform_options
        } else {
            &self.app_options
        };
        let user = if platform { PLATFORM_ROLE } else { APP_ROLE };
        format!(
            "postgres://{user}:{ROLE_PASSWORD}@{}:{}/{}?sslmode=disable",
            o.get_host(),
            o.get_port(),
            self.name
        )
    }

    /// Begins a transaction on `pool` with `app.tenant_id` set to `tenant` for it.
    ///
    /// A test helper only: saas-tenancy's `TenantTx` is the real, one-round-trip form.
    pub async fn begin_as(pool: &PgPool, tenant: TenantId) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = std::mem::take(&mut self.name);
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread
        // with a runtime of its own. FORCE ends the pools' remaining connections.
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect_with(&admin).await.ok()?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .ok()?;
                conn.close().await.ok()
            })
        });
        let _ = handle.join();
    }
}
