//! The isolation verifier: checks the live database before a process serves requests.
//!
//! [`verify_isolation`] runs with the application pool and refuses (a typed error that
//! lists every problem with the SQL to fix it) when:
//! - the role is superuser or has `BYPASSRLS`;
//! - the role owns a tenant table, or may act as its owner;
//! - a table with a `tenant_id` column (registered or not) lacks `ENABLE` or `FORCE ROW
//!   LEVEL SECURITY`, or the canonical tenant policy, or has any other permissive policy,
//!   for any command: every policy is compared, as PostgreSQL normalises it
//!   (`pg_get_expr`), with the one `saas.tenant_policy` generates, so `FOR DELETE USING
//!   (true)`, `FOR INSERT WITH CHECK (true)` or `USING (… OR true)` are refused with the
//!   SQL that replaces them;
//! - a tenant table has a unique constraint or index without `tenant_id`;
//! - a `SECURITY DEFINER` function owned by a role that bypasses row-level security is
//!   executable by the application role.
//!
//! The schema rules that keep tenants apart as the schema grows ([`check_schema`]) are
//! reported as warnings: `tenant_id` leads the primary key or an index, foreign keys
//! between tenant tables include `tenant_id`, views over tenant tables are
//! `security_invoker`, and every tenant table is registered (export and purge use the
//! registry).
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), saas_tenancy::IsolationError> {
//! saas_tenancy::verify_isolation(&pool).await?; // refuses to serve a leaky database
//! # Ok(()) }
//! ```

use std::fmt;

use sqlx::{PgConnection, PgPool, Row};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Severity {
    /// A schema rule is broken; nothing leaks yet, but it will as the schema grows.
    Warning,
    /// Rows of one tenant can reach another.
    Leak,
}

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The role is superuser.
    Superuser,
    /// The role bypasses row-level security.
    BypassRls,
    /// The role owns (or may act as the owner of) a tenant table.
    OwnsTenantTable,
    /// Row-level security is not enabled.
    RlsNotEnabled,
    /// Row-level security is not forced (the owner would bypass it).
    RlsNotForced,
    /// The canonical tenant policy (`saas.tenant_policy`) is missing.
    NoTenantPolicy,
    /// A permissive policy other than the canonical one widens access (policies are OR-ed).
    WideningPolicy,
    /// A unique constraint or index leaves out `tenant_id`.
    UniqueWithoutTenant,
    /// A `SECURITY DEFINER` function runs as a role that bypasses row-level security.
    UnsafeSecurityDefiner,
    /// No index or primary key starts with `tenant_id`.
    TenantIdNotLeading,
    /// A foreign key between tenant tables leaves out `tenant_id`.
    ForeignKeyWithoutTenant,
    /// A view over tenant tables runs with its owner's rights.
    ViewNotSecurityInvoker,
    /// A tenant table is not in `saas.tenant_tables`.
    NotRegistered,
}

/// One finding, with the SQL that fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolationProblem {
    /// What is wrong.
    pub kind: ProblemKind,
    /// How bad it is.
    pub severity: Severity,
    /// The object concerned (a role, table, constraint, view or function).
    pub object: String,
    /// SQL that fixes it (to run as the owner or an administrator).
    pub fix: String,
}

impl fmt::Display for IsolationProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} on {}; fix: {}", self.kind, self.object, self.fix)
    }
}

/// The database would let tenants' rows leak; the process must not serve.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum IsolationError {
    /// Problems were found.
    #[error("tenant isolation is not enforced by this database:\n{}", list(.0))]
    Unsafe(Vec<IsolationProblem>),
    /// The checks could not run.
    #[error("the isolation checks could not run: {0}")]
    Database(String),
}

fn list(problems: &[IsolationProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl From<sqlx::Error> for IsolationError {
    fn from(e: sqlx::Error) -> Self {
        IsolationError::Database(e.to_string())
    }
}

/// Whether findings stop the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum VerifyMode {
    /// Leaks are an error.
    #[default]
    Strict,
    /// Everything is logged and nothing refused: for migration periods only.
    WarnOnly,
}

/// Everything [`verify_isolation_with`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IsolationReport {
    /// The findings, leaks first.
    pub problems: Vec<IsolationProblem>,
    /// The tenant tables checked.
    pub tenant_tables: Vec<String>,
}

/// Checks the database behind `pool` strictly. See the module docs.
pub async fn verify_isolation(pool: &PgPool) -> Result<IsolationReport, IsolationError> {
    verify_isolation_with(pool, VerifyMode::Strict).await
}

/// Checks the database behind `pool` in `mode`; warnings are always logged.
pub async fn verify_isolation_with(pool: &PgPool, mode: VerifyMode) -> Result<IsolationReport, IsolationError> {
    let mut conn = pool.acquire().await?;
    let report = inspect(&mut conn).await?;
    let leaks: Vec<IsolationProblem> = report
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Leak)
        .cloned()
        .collect();
    for p in &report.problems {
        match (p.severity, mode) {
            (Severity::Leak, VerifyMode::Strict) => {
                tracing::error!(kind = ?p.kind, object = %p.object, fix = %p.fix, "tenant isolation problem")
            }
            _ => tracing::warn!(kind = ?p.kind, object = %p.object, fix = %p.fix, "tenant isolation problem"),
        }
    }
    if mode == VerifyMode::Strict && !leaks.is_empty() {
        return Err(IsolationError::Unsafe(leaks));
    }
    Ok(report)
}

/// The schema rules only (warnings), for a migration test or CI check.
pub async fn check_schema(conn: &mut PgConnection) -> Result<Vec<IsolationProblem>, IsolationError> {
    Ok(inspect(conn)
        .await?
        .problems
        .into_iter()
        .filter(|p| p.severity == Severity::Warning)
        .collect())
}

const TENANT_TABLES: &str = "
    SELECT c.oid
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
    WHERE c.relkind IN ('r', 'p')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_%'
      AND c.oid IS DISTINCT FROM to_regclass('saas.tenant_policy_reference')";

fn problem(
    kind: ProblemKind,
    severity: Severity,
    object: impl Into<String>,
    fix: impl Into<String>,
) -> IsolationProblem {
    IsolationProblem {
        kind,
        severity,
        object: object.into(),
        fix: fix.into(),
    }
}

async fn inspect(conn: &mut PgConnection) -> Result<IsolationReport, IsolationError> {
    use ProblemKind::*;
    use Severity::*;
    let mut out = Vec::new();

    let role = sqlx::query(
        "SELECT current_user::text AS name, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await?;
    let me: String = role.try_get("name")?;
    let quoted_me: String = sqlx::query_scalar("SELECT quote_ident(current_user)")
        .fetch_one(&mut *conn)
        .await?;
    if role.try_get::<bool, _>("rolsuper")? {
        out.push(problem(
            Superuser,
            Leak,
            &me,
            format!("ALTER ROLE {quoted_me} NOSUPERUSER;"),
        ));
    }
    if role.try_get::<bool, _>("rolbypassrls")? {
        out.push(problem(
            BypassRls,
            Leak,
            &me,
            format!("ALTER ROLE {quoted_me} NOBYPASSRLS;"),
        ));
    }

    // Every policy is compared with the canonical one as PostgreSQL normalises it: the
    // policy of `saas.tenant_policy_reference`, made by the same function
    // (`saas.tenant_policy`) that makes every tenant table's. A permissive policy that
    // is not exactly it, for any command, is OR-ed with it and widens access.
    let tables = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH ref AS (
             SELECT pg_get_expr(p.polqual, p.polrelid) AS qual, pg_get_expr(p.polwithcheck, p.polrelid) AS wc
             FROM pg_policy p
             WHERE p.polrelid = to_regclass('saas.tenant_policy_reference') AND p.polname = 'tenant_isolation'
         ), canon AS (
             SELECT p.oid, p.polrelid, p.polpermissive,
                    (p.polcmd = '*' AND ref.qual IS NOT NULL
                     AND pg_get_expr(p.polqual, p.polrelid) IS NOT DISTINCT FROM ref.qual
                     AND pg_get_expr(p.polwithcheck, p.polrelid) IS NOT DISTINCT FROM ref.wc) AS canonical,
                    quote_ident(p.polname) AS name
             FROM pg_policy p LEFT JOIN ref ON true
         )
         SELECT c.oid::regclass::text AS name, c.relrowsecurity, c.relforcerowsecurity,
                pg_has_role(current_user, c.relowner, 'MEMBER') AS owns,
                r.rolname::text AS owner,
                EXISTS (SELECT 1 FROM canon p WHERE p.polrelid = c.oid AND p.polpermissive AND p.canonical) AS has_policy,
                (SELECT string_agg(p.name, ', ' ORDER BY p.name) FROM canon p
                 WHERE p.polrelid = c.oid AND p.polpermissive AND NOT p.canonical) AS widening,
                EXISTS (SELECT 1 FROM ref) AS has_reference,
                to_regclass('saas.tenant_tables') IS NOT NULL AS has_registry
         FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
         WHERE c.oid IN ({TENANT_TABLES})
         ORDER BY 1"
    )))
    .fetch_all(&mut *conn)
    .await?;
    let registered: Vec<String> = if tables
        .first()
        .map(|r| r.try_get::<bool, _>("has_registry"))
        .transpose()?
        .unwrap_or(false)
    {
        sqlx::query_scalar("SELECT table_name::text FROM saas.tenant_tables")
            .fetch_all(&mut *conn)
            .await?
    } else {
        Vec::new()
    };
    let mut names = Vec::new();
    for t in &tables {
        let name: String = t.try_get("name")?;
        if t.try_get::<bool, _>("owns")? {
            let owner: String = t.try_get("owner")?;
            out.push(problem(
                OwnsTenantTable,
                Leak,
                &name,
                format!("ALTER TABLE {name} OWNER TO <migration owner>; -- the application role may act as {owner}"),
            ));
        }
        if !t.try_get::<bool, _>("relrowsecurity")? {
            out.push(problem(
                RlsNotEnabled,
                Leak,
                &name,
                format!("SELECT saas.enable_tenant_rls('{name}');"),
            ));
        }
        if !t.try_get::<bool, _>("relforcerowsecurity")? {
            out.push(problem(
                RlsNotForced,
                Leak,
                &name,
                format!("ALTER TABLE {name} FORCE ROW LEVEL SECURITY;"),
            ));
        }
        if !t.try_get::<bool, _>("has_reference")? {
            out.push(problem(
                NoTenantPolicy,
                Leak,
                &name,
                "-- run saas-tenancy's migrations (saas_tenancy::MIGRATOR): the canonical tenant policy is missing",
            ));
        } else if !t.try_get::<bool, _>("has_policy")? {
            out.push(problem(
                NoTenantPolicy,
                Leak,
                &name,
                format!("SELECT saas.tenant_policy('{name}');"),
            ));
        }
        if let Some(w) = t.try_get::<Option<String>, _>("widening")? {
            let drops: String = w.split(", ").map(|p| format!("DROP POLICY {p} ON {name}; ")).collect();
            out.push(problem(
                WideningPolicy,
                Leak,
                format!("{name} ({w})"),
                format!(
                    "{drops}SELECT saas.tenant_policy('{name}'); -- a permissive policy other than the canonical one is OR-ed with it"
                ),
            ));
        }
        if t.try_get::<bool, _>("has_registry")? && !registered.contains(&name) {
            out.push(problem(
                NotRegistered,
                Warning,
                &name,
                format!("SELECT saas.enable_tenant_rls('{name}');"),
            ));
        }
        names.push(name);
    }

    let uniques = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT i.indrelid::regclass::text AS tbl, i.indexrelid::regclass::text AS idx,
                pg_get_indexdef(i.indexrelid) AS def, con.conname::text AS constraint_name
         FROM pg_index i
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attname = 'tenant_id'
         LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.contype IN ('u', 'p', 'x')
         WHERE i.indisunique AND i.indrelid IN ({TENANT_TABLES})
           AND NOT (a.attnum = ANY (i.indkey::int2[]))
         ORDER BY 1, 2"
    )))
    .fetch_all(&mut *conn)
    .await?;
    for u in &uniques {
        let tbl: String = u.try_get("tbl")?;
        let idx: String = u.try_get("idx")?;
        let def: String = u.try_get("def")?;
        let fix = match u.try_get::<Option<String>, _>("constraint_name")? {
            Some(c) => format!(
                "ALTER TABLE {tbl} DROP CONSTRAINT {c}; ALTER TABLE {tbl} ADD CONSTRAINT {c} UNIQUE (tenant_id, …); -- was: {def}"
            ),
            None => format!("DROP INDEX {idx}; CREATE UNIQUE INDEX ON {tbl} (tenant_id, …); -- was: {def}"),
        };
        out.push(problem(UniqueWithoutTenant, Leak, format!("{tbl}: {idx}"), fix));
    }

    let definers = sqlx::query(
        "SELECT p.oid::regprocedure::text AS func, r.rolname::text AS owner
         FROM pg_proc p
         JOIN pg_roles r ON r.oid = p.proowner
         JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE p.prosecdef AND (r.rolsuper OR r.rolbypassrls)
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND has_function_privilege(current_user, p.oid, 'EXECUTE')
         ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    for d in &definers {
        let func: String = d.try_get("func")?;
        let owner: String = d.try_get("owner")?;
        out.push(problem(
            UnsafeSecurityDefiner,
            Leak,
            format!("{func} (owned by {owner})"),
            format!("ALTER FUNCTION {func} SECURITY INVOKER; -- or REVOKE EXECUTE ON FUNCTION {func} FROM PUBLIC, {quoted_me};"),
        ));
    }

    let not_leading: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT c.oid::regclass::text FROM pg_class c
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
         WHERE c.oid IN ({TENANT_TABLES})
           AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indkey[0] = a.attnum)
         ORDER BY 1"
    )))
    .fetch_all(&mut *conn)
    .await?;
    for t in not_leading {
        out.push(problem(
            TenantIdNotLeading,
            Warning,
            &t,
            format!("CREATE INDEX ON {t} (tenant_id, …);"),
        ));
    }

    let fks = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT con.conrelid::regclass::text AS tbl, con.conname::text AS name, pg_get_constraintdef(con.oid) AS def
         FROM pg_constraint con
         JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attname = 'tenant_id'
         WHERE con.contype = 'f' AND con.conrelid IN ({TENANT_TABLES}) AND con.confrelid IN ({TENANT_TABLES})
           AND NOT (a.attnum = ANY (con.conkey))
         ORDER BY 1, 2"
    )))
    .fetch_all(&mut *conn)
    .await?;
    for fk in &fks {
        let tbl: String = fk.try_get("tbl")?;
        let name: String = fk.try_get("name")?;
        let def: String = fk.try_get("def")?;
        out.push(problem(
            ForeignKeyWithoutTenant,
            Warning,
            format!("{tbl}: {name}"),
            format!("ALTER TABLE {tbl} DROP CONSTRAINT {name}; -- then FOREIGN KEY (tenant_id, …) REFERENCES …(tenant_id, id); was: {def}"),
        ));
    }

    let views: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT DISTINCT v.oid::regclass::text
         FROM pg_rewrite rw
         JOIN pg_class v ON v.oid = rw.ev_class AND v.relkind IN ('v', 'm')
         JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
         WHERE d.refobjid IN ({TENANT_TABLES}) AND d.refobjid <> v.oid
           AND NOT coalesce(v.reloptions @> ARRAY['security_invoker=true'], false)
         ORDER BY 1"
    )))
    .fetch_all(&mut *conn)
    .await?;
    for v in views {
        out.push(problem(
            ViewNotSecurityInvoker,
            Warning,
            &v,
            format!("ALTER VIEW {v} SET (security_invoker = true);"),
        ));
    }

    out.sort_by_key(|p| std::cmp::Reverse(p.severity));
    Ok(IsolationReport {
        problems: out,
        tenant_tables: names,
    })
}
