//! # saas-tenancy
//!
//! Multi-tenancy that cannot leak: PostgreSQL row-level security does the enforcing,
//! and this crate makes it the easy path.
//!
//! - [`TenantTx`]: a transaction scoped to one tenant (and, with `begin_as`, the acting
//!   user) in the same round trip as `BEGIN`; plain sqlx queries inside it see and write
//!   only that tenant's rows. It is the one way a tenant transaction is opened.
//! - [`SystemTx`] on a [`PlatformPool`]: the explicit, greppable way to work outside a
//!   tenant, with a reason.
//! - [`enable_tenant_rls`] / `saas.enable_tenant_rls('table')`: turns a table into a
//!   tenant table (RLS enabled and forced, the one canonical policy that
//!   `saas.tenant_policy` generates for every crate, grants, registry).
//! - [`verify_isolation`]: refuses to serve when the live database would let rows leak,
//!   including any policy other than the canonical one, for any command.
//! - [`TenantLayer`]: resolves the tenant of a request ([`resolve`]), loads it from a
//!   [`TenantStore`], checks membership and lifecycle, and hands handlers a
//!   [`TenantContext`] (and, with the `axum` feature, a ready [`TenantTx`]).
//! - [`lifecycle`], [`export`], [`support`]: create, suspend, delete, restore and purge
//!   tenants, export a tenant's data, and time-boxed support access, all audited.
//!
//! ## Two tenants, one table, no WHERE clause
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use saas_core::TenantId;
//! use saas_tenancy::TenantTx;
//! # let db = saas_core::testkit::TestDb::new(&[&saas_core::MIGRATOR, &saas_tenancy::MIGRATOR]).await.unwrap();
//! # let (owner, app) = (db.owner().clone(), db.app().clone());
//!
//! // A migration, run as the table owner:
//! sqlx::query("create table projects (tenant_id uuid not null, id uuid not null, name text not null,
//!              primary key (tenant_id, id))").execute(&owner).await.unwrap();
//! saas_tenancy::enable_tenant_rls(&mut *owner.acquire().await.unwrap(), "projects").await.unwrap();
//!
//! // The application, as the application role:
//! let (acme, globex) = (TenantId::new(), TenantId::new());
//! for (tenant, name) in [(acme, "Apollo"), (globex, "Gemini")] {
//!     let mut tx = TenantTx::begin(&app, tenant).await.unwrap();
//!     sqlx::query("insert into projects (tenant_id, id, name) values ($1, gen_random_uuid(), $2)")
//!         .bind(tenant).bind(name).execute(&mut *tx).await.unwrap();
//!     tx.commit().await.unwrap();
//! }
//! let mut tx = TenantTx::begin(&app, acme).await.unwrap();
//! let names: Vec<String> = sqlx::query_scalar("select name from projects")
//!     .fetch_all(&mut *tx).await.unwrap();
//! assert_eq!(names, ["Apollo"]);
//!
//! // Writing another tenant's row is refused by the policy's WITH CHECK.
//! let forged = sqlx::query("insert into projects (tenant_id, id, name) values ($1, gen_random_uuid(), 'x')")
//!     .bind(globex).execute(&mut *tx).await;
//! assert!(forged.is_err());
//!
//! // And the database passes the verifier.
//! saas_tenancy::verify_isolation(&app).await.unwrap();
//! # });
//! ```
//!
//! ## Roles
//!
//! Three database roles keep the promise: the migration owner owns the tables; the
//! application role (member of `saas_app`) owns nothing and cannot bypass row-level
//! security; the platform role (member of `saas_platform`, `BYPASSRLS`) is used only
//! through [`SystemTx`] for jobs and audited cross-tenant work.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
pub mod export;
mod layer;
pub mod lifecycle;
mod pool;
pub mod repo;
pub mod resolve;
pub mod support;
mod tenant;
mod tx;
mod verify;

pub use error::TenancyError;
pub use layer::{
    AllowAnyMember, MembershipCheck, MembershipError, MembershipVerdict, TenantContext, TenantLayer,
    TenantLayerBuilder, TenantService, tenant_not_found,
};
pub use pool::{pool, pool_options};
pub use resolve::{TenantRef, TenantResolver};
pub use tenant::{CachedTenantStore, PgTenantStore, Tenant, TenantStatus, TenantStore, validate_slug};
pub use tx::{PlatformPool, SystemTx, TenantTx};
pub use verify::{
    IsolationError, IsolationProblem, IsolationReport, ProblemKind, Severity, VerifyMode, check_schema,
    verify_isolation, verify_isolation_with,
};

/// The migrations of saas-tenancy (`saas.tenants`, the tenant-table registry,
/// `saas.enable_tenant_rls`, support sessions). Run after [`saas_core::MIGRATOR`], as the
/// migration owner.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Turns `table` into a tenant table (see `saas.enable_tenant_rls`): row-level security
/// enabled and forced, one policy with `USING` and `WITH CHECK` on `app.tenant_id`, DML
/// granted to `saas_app` and `saas_platform`, and an entry in `saas.tenant_tables`.
/// Run it as the table's owner, in a migration.
pub async fn enable_tenant_rls(conn: &mut sqlx::PgConnection, table: &str) -> Result<(), TenancyError> {
    sqlx::query("SELECT saas.enable_tenant_rls($1::regclass)")
        .bind(table)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn public_types_cross_threads() {
        assert_send_sync::<crate::TenantTx>();
        assert_send_sync::<crate::SystemTx>();
        assert_send_sync::<crate::TenantContext>();
        assert_send_sync::<crate::PgTenantStore>();
        assert_send_sync::<crate::CachedTenantStore<crate::PgTenantStore>>();
        assert_send_sync::<crate::IsolationError>();
        assert_send_sync::<crate::TenancyError>();
        assert_send_sync::<crate::support::SupportSessions>();
    }
}
