//! The database: created with its roles on first run, migrated, verified.
//!
//! Three login roles, none of them superuser:
//! - `saas_app_owner` owns the database and runs the migrations;
//! - `saas_app_user` is the application role the request path uses: `NOBYPASSRLS`, owns
//!   nothing, member of the group `saas_app` that the migrations grant to;
//! - `saas_app_platform` (`BYPASSRLS`, member of `saas_platform`) runs system jobs only
//!   (webhook processing, reconcile, purges).
//!
//! The administrator connection (`DATABASE_URL`) is used only to create them.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// The server used when `DATABASE_URL` is not set.
pub const DEFAULT_ADMIN_URL: &str = "postgres://root@127.0.0.1:5432/postgres?sslmode=disable";

/// The role that owns the database and runs migrations.
pub const OWNER_ROLE: &str = "saas_app_owner";
/// The application role (row-level security applies to it).
pub const APP_ROLE: &str = "saas_app_user";
/// The platform role for system jobs.
pub const PLATFORM_ROLE: &str = "saas_app_platform";

/// The password the three roles get (the local server trusts loopback; set
/// `SAAS_APP_DB_PASSWORD` where it does not).
fn role_password() -> String {
    std::env::var("SAAS_APP_DB_PASSWORD").unwrap_or_else(|_| "saas_app_dev".to_owned())
}

/// What went wrong preparing the database, said so that a person knows what to do.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `DATABASE_URL` does not parse.
    #[error("DATABASE_URL is not a PostgreSQL URL ({0}); set it like {DEFAULT_ADMIN_URL}")]
    Url(String),
    /// The server did not answer.
    #[error(
        "PostgreSQL is not reachable at {0}: start it (for example `sudo service postgresql start` or \
         `pg_ctlcluster 15 main start`), or point DATABASE_URL at a running server"
    )]
    Unreachable(String),
    /// The administrator connection may not create roles or databases.
    #[error(
        "the role in DATABASE_URL may not create roles and databases ({0}); use an administrator, \
         for example {DEFAULT_ADMIN_URL}"
    )]
    NotAdmin(String),
    /// A migration failed.
    #[error("a migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Anything else the server refused.
    #[error("PostgreSQL refused a setup statement: {0}")]
    Database(#[from] sqlx::Error),
}

/// The database's three pools.
#[derive(Debug, Clone)]
pub struct Database {
    /// The owner (migrations only).
    pub owner: PgPool,
    /// The application role: every request's queries.
    pub app: PgPool,
    /// The platform role: system jobs.
    pub platform: PgPool,
    /// The database's name.
    pub name: String,
}

/// Every migrator the app runs, in order: the crates', then the app's own.
pub fn migrators() -> [&'static Migrator; 7] {
    [
        &saas_core::MIGRATOR,
        &saas_tenancy::MIGRATOR,
        &saas_events::MIGRATOR,
        &saas_authz::MIGRATOR,
        &saas_flags::MIGRATOR,
        &saas_billing::MIGRATOR,
        &crate::MIGRATOR,
    ]
}

/// Creates (if missing) the roles and the database `name` on the server behind
/// `admin_url`, and connects the three pools. Nothing is migrated yet.
pub async fn prepare(admin_url: &str, name: &str) -> Result<Database, SetupError> {
    let admin: PgConnectOptions = admin_url
        .parse()
        .map_err(|e: sqlx::Error| SetupError::Url(e.to_string()))?;
    // Notices ("already exists, skipping") are for DBAs, not for the person starting the app.
    let admin = admin
        .options([("client_min_messages", "warning")])
        .log_statements(tracing::log::LevelFilter::Off);
    let where_ = format!("{}:{}", admin.get_host(), admin.get_port());
    let mut conn = PgConnection::connect_with(&admin)
        .await
        .map_err(|e| classify(e, &where_))?;
    let password = role_password().replace('\'', "''");
    let roles = format!(
        "DO $$ BEGIN
           BEGIN CREATE ROLE saas_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
           EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
           BEGIN CREATE ROLE saas_platform NOLOGIN NOSUPERUSER NOBYPASSRLS;
           EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
           BEGIN CREATE ROLE {OWNER_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB PASSWORD '{password}';
           EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
           BEGIN CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB INHERIT PASSWORD '{password}';
           EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
           BEGIN CREATE ROLE {PLATFORM_ROLE} LOGIN NOSUPERUSER BYPASSRLS NOCREATEROLE NOCREATEDB INHERIT PASSWORD '{password}';
           EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
         END $$;
         GRANT saas_app TO {APP_ROLE};
         GRANT saas_platform TO {PLATFORM_ROLE};"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(roles))
        .execute(&mut conn)
        .await
        .map_err(|e| classify(e, &where_))?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        let ident = name.replace('"', "\"\"");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{ident}\" OWNER {OWNER_ROLE}"
        )))
        .execute(&mut conn)
        .await
        .map_err(|e| classify(e, &where_))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "REVOKE CONNECT ON DATABASE \"{ident}\" FROM PUBLIC; \
             GRANT CONNECT ON DATABASE \"{ident}\" TO {OWNER_ROLE}, {APP_ROLE}, {PLATFORM_ROLE}"
        )))
        .execute(&mut conn)
        .await?;
    }
    conn.close().await?;

    let password = role_password();
    let as_role = |role: &str| admin.clone().database(name).username(role).password(&password);
    let pool = |max: u32, options: PgConnectOptions| {
        PgPoolOptions::new()
            .max_connections(max)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(10))
            .test_before_acquire(false)
            .connect_lazy_with(options)
    };
    Ok(Database {
        owner: pool(2, as_role(OWNER_ROLE)),
        app: pool(20, as_role(APP_ROLE)),
        platform: pool(5, as_role(PLATFORM_ROLE)),
        name: name.to_owned(),
    })
}

/// Runs every migrator as the owner.
pub async fn migrate(owner: &PgPool) -> Result<(), SetupError> {
    for m in migrators() {
        m.run(owner).await?;
    }
    Ok(())
}

/// Sorts a connection or setup failure into what the person should do about it.
fn classify(e: sqlx::Error, where_: &str) -> SetupError {
    match &e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => SetupError::Unreachable(where_.to_owned()),
        // 42501 insufficient_privilege; 28000/28P01 authentication.
        sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("42501" | "28000" | "28P01")) => {
            SetupError::NotAdmin(d.message().to_owned())
        }
        _ => SetupError::Database(e),
    }
}
