//! saas-tenancy against the real PostgreSQL, as the non-superuser application role.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{Duration, TimeZone, Utc};
use saas_core::audit::{self, Actor, AuditQuery};
use saas_core::clock::{Clock, ManualClock};
use saas_core::testkit::TestDb;
use saas_core::{TenantId, UserId};
use saas_tenancy::lifecycle;
use saas_tenancy::repo::{Repo, TenantRecord};
use saas_tenancy::{
    CachedTenantStore, IsolationError, PgTenantStore, PlatformPool, ProblemKind, SystemTx, TenancyError, TenantStatus,
    TenantStore, TenantTx, VerifyMode,
};

async fn db() -> TestDb {
    let db = TestDb::new(&[&saas_core::MIGRATOR, &saas_tenancy::MIGRATOR])
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE projects (
             tenant_id uuid NOT NULL, id uuid NOT NULL, name text NOT NULL,
             PRIMARY KEY (tenant_id, id), UNIQUE (tenant_id, name));
         SELECT saas.enable_tenant_rls('projects');",
    )
    .execute(db.owner())
    .await
    .unwrap();
    db
}

fn clock() -> ManualClock {
    ManualClock::new(Utc.with_ymd_and_hms(2026, 6, 1, 9, 0, 0).unwrap())
}

async fn tenant(db: &TestDb, slug: &str) -> TenantId {
    lifecycle::create(db.app(), slug, &format!("{slug} Inc."), UserId::new(), &clock())
        .await
        .unwrap()
        .id
}

async fn add_project(db: &TestDb, t: TenantId, name: &str) {
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    sqlx::query("INSERT INTO projects (tenant_id, id, name) VALUES ($1, gen_random_uuid(), $2)")
        .bind(t)
        .bind(name)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn visible(pool: &sqlx::PgPool) -> (Option<String>, i64) {
    let mut conn = pool.acquire().await.unwrap();
    let setting: Option<String> = sqlx::query_scalar("SELECT current_setting('app.tenant_id', true)")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    (setting.filter(|s| !s.is_empty()), rows)
}

/// A one-connection pool, so that every checkout reuses the same session.
fn single(db: &TestDb) -> sqlx::PgPool {
    saas_tenancy::pool_options()
        .max_connections(1)
        .connect_lazy_with(db.app_options())
}

#[tokio::test]
async fn a_tenant_tx_sees_only_its_tenant() {
    let db = db().await;
    let (a, b) = (tenant(&db, "acme").await, tenant(&db, "globex").await);
    add_project(&db, a, "Apollo").await;
    add_project(&db, b, "Gemini").await;
    let mut tx = TenantTx::begin(db.app(), a).await.unwrap();
    assert_eq!(tx.tenant(), a);
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projects")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(names, ["Apollo"]);
}

#[tokio::test]
async fn a_returned_connection_carries_no_tenant_after_commit_rollback_error_or_panic() {
    let db = db().await;
    let a = tenant(&db, "acme").await;
    add_project(&db, a, "Apollo").await;
    let pool = single(&db);

    let tx = TenantTx::begin(&pool, a).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(visible(&pool).await, (None, 0));

    let tx = TenantTx::begin(&pool, a).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(visible(&pool).await, (None, 0));

    let mut tx = TenantTx::begin(&pool, a).await.unwrap();
    assert!(sqlx::query("SELECT 1/0").execute(&mut *tx).await.is_err());
    drop(tx);
    assert_eq!(visible(&pool).await, (None, 0));

    let p = pool.clone();
    let panicked = tokio::spawn(async move {
        let mut tx = TenantTx::begin(&p, a).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 1);
        panic!("handler bug while the transaction is open");
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    assert_eq!(visible(&pool).await, (None, 0));

    // Even a session-level setting left by code outside TenantTx is cleared on release.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, false)")
        .bind(a.to_string())
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(visible(&pool).await, (None, 0));
}

#[tokio::test]
async fn system_tx_needs_a_reason_and_sees_tenants_only_on_the_platform_role() {
    let db = db().await;
    let (a, b) = (tenant(&db, "acme").await, tenant(&db, "globex").await);
    add_project(&db, a, "Apollo").await;
    add_project(&db, b, "Gemini").await;
    let platform = PlatformPool::new(db.platform().clone());
    let err = SystemTx::begin(&platform, "No Reason!").await.unwrap_err();
    assert!(matches!(err, TenancyError::InvalidReason(_)));

    let mut tx = SystemTx::begin(&platform, "nightly-report").await.unwrap();
    assert_eq!(tx.reason(), "nightly-report");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 2);
    let reason: String = sqlx::query_scalar("SELECT current_setting('app.system_reason')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(reason, "nightly-report");
    tx.commit().await.unwrap();

    // Cross-tenant access by staff is written to each tenant's audit log.
    let mut tx = SystemTx::begin(&platform, "support-export").await.unwrap();
    let staff = UserId::new();
    tx.audit_access(b, Actor::Support(staff), "read projects for ticket 12")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = TenantTx::begin(db.app(), b).await.unwrap();
    let seen = audit::query(&mut tx, b, &AuditQuery::new().action("platform.data_accessed"))
        .await
        .unwrap();
    assert_eq!(seen.items.len(), 1);
    assert_eq!(seen.items[0].actor, Actor::Support(staff));
    assert_eq!(seen.items[0].metadata["reason"], "support-export");
    drop(tx);

    // The same "system" work on the application role sees nothing: fail closed.
    let mut conn = db.app().acquire().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[derive(sqlx::FromRow, Debug, PartialEq, Clone)]
struct Project {
    id: uuid::Uuid,
    name: String,
}

impl TenantRecord for Project {
    type Id = uuid::Uuid;
    const TABLE: &'static str = "projects";
    const COLUMNS: &'static [&'static str] = &["id", "name"];
    fn id(&self) -> uuid::Uuid {
        self.id
    }
    fn push_values(&self, row: &mut sqlx::query_builder::Separated<'_, sqlx::Postgres, &'static str>) {
        row.push_bind(self.id).push_bind(self.name.clone());
    }
}

#[tokio::test]
async fn the_repository_does_crud_within_the_tenant() {
    let db = db().await;
    let (a, b) = (tenant(&db, "acme").await, tenant(&db, "globex").await);
    let mut tx = TenantTx::begin(db.app(), a).await.unwrap();
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let p = Repo::<Project>::insert(
            &mut tx,
            &Project {
                id: uuid::Uuid::now_v7(),
                name: name.into(),
            },
        )
        .await
        .unwrap();
        ids.push(p.id);
    }
    assert_eq!(Repo::<Project>::count(&mut tx).await.unwrap(), 3);
    let page = Repo::<Project>::list(&mut tx, Some(ids[0]), 10).await.unwrap();
    assert_eq!(page.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["b", "c"]);
    let mut p = Repo::<Project>::get(&mut tx, ids[1]).await.unwrap().unwrap();
    p.name = "renamed".into();
    assert!(Repo::<Project>::update(&mut tx, &p).await.unwrap());
    assert_eq!(
        Repo::<Project>::get(&mut tx, ids[1]).await.unwrap().unwrap().name,
        "renamed"
    );
    assert!(Repo::<Project>::delete(&mut tx, ids[2]).await.unwrap());
    tx.commit().await.unwrap();

    // Another tenant can neither see, change nor delete them.
    let mut tx = TenantTx::begin(db.app(), b).await.unwrap();
    assert_eq!(Repo::<Project>::count(&mut tx).await.unwrap(), 0);
    assert_eq!(Repo::<Project>::get(&mut tx, ids[0]).await.unwrap(), None);
    assert!(
        !Repo::<Project>::update(
            &mut tx,
            &Project {
                id: ids[0],
                name: "pwned".into()
            }
        )
        .await
        .unwrap()
    );
    assert!(!Repo::<Project>::delete(&mut tx, ids[0]).await.unwrap());
}

#[tokio::test]
async fn lifecycle_transitions_are_enforced_and_audited() {
    let db = db().await;
    let clock = clock();
    let platform = PlatformPool::new(db.platform().clone());
    let staff = Actor::System("ops".into());
    let t = lifecycle::create(db.app(), "acme", "Acme", UserId::new(), &clock)
        .await
        .unwrap();
    assert_eq!(t.status, TenantStatus::Active);
    assert!(matches!(
        lifecycle::create(db.app(), "acme", "Other", UserId::new(), &clock).await,
        Err(TenancyError::SlugTaken(_))
    ));
    assert!(matches!(
        lifecycle::create(db.app(), "Bad Slug", "x", UserId::new(), &clock).await,
        Err(TenancyError::InvalidSlug(_))
    ));

    let s = lifecycle::suspend(&platform, t.id, "unpaid invoices", staff.clone(), &clock)
        .await
        .unwrap();
    assert_eq!(s.status, TenantStatus::Suspended);
    assert_eq!(s.suspended_reason.as_deref(), Some("unpaid invoices"));
    let again = lifecycle::suspend(&platform, t.id, "x", staff.clone(), &clock)
        .await
        .unwrap_err();
    assert!(matches!(
        again,
        TenancyError::InvalidTransition { from: "suspended", .. }
    ));
    let r = lifecycle::reactivate(&platform, t.id, staff.clone(), &clock)
        .await
        .unwrap();
    assert_eq!((r.status, r.suspended_reason), (TenantStatus::Active, None));

    let d = lifecycle::request_deletion(&platform, t.id, None, staff.clone(), &clock)
        .await
        .unwrap();
    assert_eq!(d.status, TenantStatus::PendingDeletion);
    assert_eq!(d.purge_after, Some(clock.now() + Duration::days(30)));
    // Not due yet.
    assert!(lifecycle::purge(&platform, t.id, staff.clone(), &clock).await.is_err());
    let r = lifecycle::restore(&platform, t.id, staff.clone(), &clock)
        .await
        .unwrap();
    assert_eq!((r.status, r.purge_after), (TenantStatus::Active, None));

    // Deleting and restoring a suspended tenant does not lift the suspension.
    lifecycle::suspend(&platform, t.id, "chargeback", staff.clone(), &clock)
        .await
        .unwrap();
    lifecycle::request_deletion(&platform, t.id, None, staff.clone(), &clock)
        .await
        .unwrap();
    let r = lifecycle::restore(&platform, t.id, staff.clone(), &clock)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.suspended_reason.as_deref()),
        (TenantStatus::Suspended, Some("chargeback"))
    );
    lifecycle::reactivate(&platform, t.id, staff.clone(), &clock)
        .await
        .unwrap();

    // The application role cannot change status behind the lifecycle's back.
    let mut tx = TenantTx::begin(db.app(), t.id).await.unwrap();
    let err = sqlx::query("UPDATE saas.tenants SET status = 'active'")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(err.as_database_error().unwrap().code().as_deref(), Some("42501"));
    drop(tx);

    let mut tx = TenantTx::begin(db.app(), t.id).await.unwrap();
    let page = audit::query(&mut tx, t.id, &AuditQuery::new().action("tenant."))
        .await
        .unwrap();
    let actions: Vec<&str> = page.items.iter().rev().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "tenant.created",
            "tenant.suspended",
            "tenant.reactivated",
            "tenant.deletion_requested",
            "tenant.restored",
            "tenant.suspended",
            "tenant.deletion_requested",
            "tenant.restored",
            "tenant.reactivated"
        ]
    );
    assert_eq!(page.items[0].action, "tenant.reactivated");
    assert_eq!(page.items[0].metadata["before"]["status"], "suspended");
    assert!(audit::verify_chain(&mut tx, t.id).await.unwrap().is_intact());
}

#[tokio::test]
async fn purge_deletes_one_tenants_rows_children_first_and_keeps_a_tombstone() {
    let db = db().await;
    sqlx::raw_sql(
        "CREATE TABLE tasks (tenant_id uuid NOT NULL, id uuid NOT NULL, project_id uuid NOT NULL,
             PRIMARY KEY (tenant_id, id),
             FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id));
         SELECT saas.enable_tenant_rls('tasks');",
    )
    .execute(db.owner())
    .await
    .unwrap();
    let clock = clock();
    let platform = PlatformPool::new(db.platform().clone());
    let (a, b) = (tenant(&db, "acme").await, tenant(&db, "globex").await);
    for t in [a, b] {
        let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
        sqlx::raw_sql(
            "WITH p AS (INSERT INTO projects (tenant_id, id, name)
                        VALUES (current_setting('app.tenant_id')::uuid, gen_random_uuid(), 'p') RETURNING id)
             INSERT INTO tasks (tenant_id, id, project_id)
             SELECT current_setting('app.tenant_id')::uuid, gen_random_uuid(), id FROM p, generate_series(1, 3)",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    lifecycle::request_deletion(
        &platform,
        b,
        Some(Duration::days(1)),
        Actor::System("ops".into()),
        &clock,
    )
    .await
    .unwrap();
    clock.advance(Duration::days(2));
    let purged = lifecycle::purge_due(&platform, Actor::System("purger".into()), &clock)
        .await
        .unwrap();
    assert_eq!(purged, [b]);

    let mut tx = SystemTx::begin(&platform, "test-check").await.unwrap();
    let rows: Vec<(TenantId, i64)> = sqlx::query_as("SELECT tenant_id, count(*) FROM tasks GROUP BY 1")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(rows, [(a, 3)]);
    let rows: Vec<(TenantId, i64)> = sqlx::query_as("SELECT tenant_id, count(*) FROM projects GROUP BY 1")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(rows, [(a, 1)]);
    let (status, name, slug): (String, String, String) =
        sqlx::query_as("SELECT status, name, slug FROM saas.tenants WHERE id = $1")
            .bind(b)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!((status.as_str(), name.as_str()), ("purged", "[purged]"));
    assert!(slug.starts_with("purged-"));
    drop(tx);

    let mut tx = TenantTx::begin(db.app(), b).await.unwrap();
    let last = audit::query(&mut tx, b, &AuditQuery::new().limit(1)).await.unwrap();
    assert_eq!(last.items[0].action, "tenant.purged");
    assert_eq!(last.items[0].metadata["deleted"]["tasks"], 3);
    assert_eq!(last.items[0].metadata["deleted"]["projects"], 1);
}

#[tokio::test]
async fn export_writes_only_the_tenants_rows_as_json_lines() {
    let db = db().await;
    let (a, b) = (tenant(&db, "acme").await, tenant(&db, "globex").await);
    for i in 0..250 {
        add_project(&db, a, &format!("a-{i}")).await;
    }
    add_project(&db, b, "b-secret").await;
    let mut out = Vec::new();
    let report = saas_tenancy::export::export(db.app(), a, &mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("b-secret"));
    assert!(!text.contains(&b.to_string()));
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(report.total(), lines.len() as u64);
    let projects: Vec<&serde_json::Value> = lines.iter().filter(|l| l["table"] == "projects").collect();
    assert_eq!(projects.len(), 250);
    assert!(projects.iter().all(|p| p["row"]["tenant_id"] == a.to_string()));
    // The audit log of the tenant is part of its data.
    assert!(
        lines
            .iter()
            .any(|l| l["table"] == "saas.audit_log" && l["row"]["action"] == "tenant.created")
    );
}

#[tokio::test]
async fn the_cached_store_serves_hits_and_forgets_on_invalidate() {
    let db = db().await;
    let clock = clock();
    let platform = PlatformPool::new(db.platform().clone());
    let (a, b) = (tenant(&db, "acme").await, tenant(&db, "globex").await);
    let store = CachedTenantStore::new(PgTenantStore::new(db.app().clone()), 1000, StdDuration::from_secs(60));
    assert_eq!(store.by_slug("acme").await.unwrap().unwrap().id, a);
    assert_eq!(store.by_slug("globex").await.unwrap().unwrap().id, b);
    assert_eq!(store.by_id(b).await.unwrap().unwrap().slug, "globex");
    assert_eq!(store.by_slug("nobody").await.unwrap(), None);
    assert_eq!(store.by_slug("'; drop table x").await.unwrap(), None);

    lifecycle::suspend(&platform, a, "abuse", Actor::System("ops".into()), &clock)
        .await
        .unwrap();
    // Cached: still active until invalidated.
    assert_eq!(store.by_id(a).await.unwrap().unwrap().status, TenantStatus::Active);
    store.invalidate(a).await;
    assert_eq!(store.by_id(a).await.unwrap().unwrap().status, TenantStatus::Suspended);
    assert_eq!(
        store.by_slug("acme").await.unwrap().unwrap().status,
        TenantStatus::Suspended
    );
}

#[tokio::test]
async fn support_sessions_are_bounded_and_audited() {
    let db = db().await;
    let clock = clock();
    let platform = PlatformPool::new(db.platform().clone());
    let a = tenant(&db, "acme").await;
    let staff = UserId::new();
    for (reason, minutes) in [("", 30), ("debugging", 0), ("debugging", 10_000)] {
        let err = saas_tenancy::support::open_session(&platform, a, staff, reason, false, minutes, &clock).await;
        assert!(
            matches!(err, Err(TenancyError::InvalidSupportSession(_))),
            "{reason} {minutes}"
        );
    }
    let s = saas_tenancy::support::open_session(&platform, a, staff, "ticket 4711", false, 30, &clock)
        .await
        .unwrap();
    assert_eq!(s.expires_at, clock.now() + Duration::minutes(30));
    let sessions = saas_tenancy::support::SupportSessions::new(db.app().clone(), Arc::new(clock.clone()));
    let get = http::Method::GET;
    assert_eq!(
        sessions.admit(a, staff, s.id, &get, "/v1/projects").await.unwrap(),
        Ok(())
    );
    assert!(
        sessions
            .admit(a, staff, s.id, &http::Method::DELETE, "/v1/projects/1")
            .await
            .unwrap()
            .is_err()
    );
    assert!(
        sessions
            .admit(a, UserId::new(), s.id, &get, "/")
            .await
            .unwrap()
            .is_err()
    );
    clock.advance(Duration::minutes(31));
    assert!(
        sessions
            .admit(a, staff, s.id, &get, "/v1/projects")
            .await
            .unwrap()
            .is_err()
    );

    // The tenant's admins see the session and every request made under it.
    let mut tx = TenantTx::begin(db.app(), a).await.unwrap();
    let page = audit::query(&mut tx, a, &AuditQuery::new().action("support."))
        .await
        .unwrap();
    let actions: Vec<&str> = page.items.iter().rev().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["support.session_opened", "support.request"]);
    assert_eq!(page.items[0].metadata["path"], "/v1/projects");
    assert_eq!(page.items[0].actor, Actor::Support(staff));
    // The application role cannot open sessions itself.
    let err = sqlx::query(
        "INSERT INTO saas.support_sessions (tenant_id, id, staff_id, reason, opened_at, expires_at)
         VALUES ($1, gen_random_uuid(), gen_random_uuid(), 'self-granted', now(), now() + interval '1 day')",
    )
    .bind(a)
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert_eq!(err.as_database_error().unwrap().code().as_deref(), Some("42501"));
}

#[tokio::test]
async fn the_verifier_passes_a_sound_database() {
    let db = db().await;
    let report = saas_tenancy::verify_isolation(db.app()).await.unwrap();
    assert!(report.tenant_tables.contains(&"projects".to_owned()), "{report:?}");
    assert!(
        report.tenant_tables.contains(&"saas.audit_log".to_owned()),
        "{report:?}"
    );
    assert!(report.problems.is_empty(), "{report:?}");
}

fn kinds(err: &IsolationError) -> Vec<(ProblemKind, String)> {
    match err {
        IsolationError::Unsafe(p) => p.iter().map(|p| (p.kind, p.object.clone())).collect(),
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn the_verifier_reports_each_misconfiguration_with_a_fix() {
    let db = db().await;
    sqlx::raw_sql(
        "CREATE TABLE no_rls (tenant_id uuid NOT NULL, id uuid NOT NULL, PRIMARY KEY (tenant_id, id));
         GRANT SELECT ON no_rls TO saas_app;
         CREATE TABLE not_forced (tenant_id uuid NOT NULL, id uuid NOT NULL, PRIMARY KEY (tenant_id, id));
         ALTER TABLE not_forced ENABLE ROW LEVEL SECURITY;
         CREATE POLICY p ON not_forced USING (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid));
         CREATE TABLE no_policy (tenant_id uuid NOT NULL, id uuid NOT NULL, PRIMARY KEY (tenant_id, id));
         ALTER TABLE no_policy ENABLE ROW LEVEL SECURITY; ALTER TABLE no_policy FORCE ROW LEVEL SECURITY;
         CREATE TABLE widened (tenant_id uuid NOT NULL, id uuid NOT NULL, PRIMARY KEY (tenant_id, id));
         SELECT saas.enable_tenant_rls('widened');
         CREATE POLICY everyone ON widened USING (true);
         CREATE TABLE global_unique (tenant_id uuid NOT NULL, id uuid NOT NULL, email text UNIQUE, PRIMARY KEY (tenant_id, id));
         SELECT saas.enable_tenant_rls('global_unique');
         CREATE UNIQUE INDEX global_unique_email_idx ON projects (name);",
    )
    .execute(db.owner())
    .await
    .unwrap();
    // A table the application role owns (created by it through a granted schema).
    let admin_url = std::env::var("DATABASE_URL").unwrap_or_else(|_| saas_core::testkit::DEFAULT_DATABASE_URL.into());
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(
            admin_url
                .parse::<sqlx::postgres::PgConnectOptions>()
                .unwrap()
                .database(db.name()),
        );
    sqlx::raw_sql(
        "CREATE TABLE app_owned (tenant_id uuid NOT NULL, id uuid NOT NULL, PRIMARY KEY (tenant_id, id));
         ALTER TABLE app_owned OWNER TO saas_test_app;
         CREATE FUNCTION leaky() RETURNS bigint LANGUAGE sql SECURITY DEFINER AS 'SELECT count(*) FROM projects';",
    )
    .execute(&admin)
    .await
    .unwrap();

    let err = saas_tenancy::verify_isolation(db.app()).await.unwrap_err();
    let found = kinds(&err);
    let has = |k: ProblemKind, obj: &str| found.iter().any(|(kk, o)| *kk == k && o.contains(obj));
    assert!(has(ProblemKind::RlsNotEnabled, "no_rls"), "{found:?}");
    assert!(has(ProblemKind::RlsNotForced, "not_forced"), "{found:?}");
    assert!(has(ProblemKind::NoTenantPolicy, "no_policy"), "{found:?}");
    assert!(has(ProblemKind::WideningPolicy, "widened"), "{found:?}");
    assert!(has(ProblemKind::UniqueWithoutTenant, "global_unique"), "{found:?}");
    assert!(
        has(ProblemKind::UniqueWithoutTenant, "global_unique_email_idx"),
        "{found:?}"
    );
    assert!(has(ProblemKind::OwnsTenantTable, "app_owned"), "{found:?}");
    assert!(has(ProblemKind::UnsafeSecurityDefiner, "leaky"), "{found:?}");
    let text = err.to_string();
    assert!(text.contains("FORCE ROW LEVEL SECURITY"), "{text}");
    assert!(text.contains("SECURITY INVOKER"), "{text}");
    // Well-configured tables are not reported.
    assert!(!found.iter().any(|(_, o)| o == "projects"), "{found:?}");

    // Warn-only mode logs and lets the process start.
    let report = saas_tenancy::verify_isolation_with(db.app(), VerifyMode::WarnOnly)
        .await
        .unwrap();
    assert!(report.problems.len() >= found.len());

    // The role checks, on the platform role (BYPASSRLS) used by mistake as the app pool.
    let err = saas_tenancy::verify_isolation(db.platform()).await.unwrap_err();
    assert!(kinds(&err).iter().any(|(k, _)| *k == ProblemKind::BypassRls));
    // And a superuser.
    let err = saas_tenancy::verify_isolation(&admin).await.unwrap_err();
    assert!(kinds(&err).iter().any(|(k, _)| *k == ProblemKind::Superuser));
}

#[tokio::test]
async fn schema_rules_are_reported_as_warnings() {
    let db = db().await;
    sqlx::raw_sql(
        "CREATE TABLE parents (id uuid PRIMARY KEY, tenant_id uuid NOT NULL);
         CREATE UNIQUE INDEX ON parents (tenant_id, id);
         SELECT saas.enable_tenant_rls('parents');
         CREATE TABLE children (tenant_id uuid NOT NULL, id uuid NOT NULL, parent_id uuid REFERENCES parents (id),
                                PRIMARY KEY (tenant_id, id));
         SELECT saas.enable_tenant_rls('children');
         CREATE VIEW project_names AS SELECT name FROM projects;
         CREATE TABLE unregistered (tenant_id uuid NOT NULL, id uuid NOT NULL, PRIMARY KEY (tenant_id, id));
         ALTER TABLE unregistered ENABLE ROW LEVEL SECURITY; ALTER TABLE unregistered FORCE ROW LEVEL SECURITY;
         CREATE POLICY t ON unregistered USING (tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid));",
    )
    .execute(db.owner())
    .await
    .unwrap();
    let mut conn = db.app().acquire().await.unwrap();
    let warnings = saas_tenancy::check_schema(&mut conn).await.unwrap();
    let has = |k: ProblemKind, obj: &str| warnings.iter().any(|p| p.kind == k && p.object.contains(obj));
    assert!(has(ProblemKind::ForeignKeyWithoutTenant, "children"), "{warnings:?}");
    assert!(
        has(ProblemKind::ViewNotSecurityInvoker, "project_names"),
        "{warnings:?}"
    );
    assert!(has(ProblemKind::NotRegistered, "unregistered"), "{warnings:?}");
    assert!(warnings.iter().all(|w| w.severity == saas_tenancy::Severity::Warning));
    // `parents` has a global primary key on id: a leak-grade problem for the verifier.
    let err = saas_tenancy::verify_isolation(db.app()).await.unwrap_err();
    assert!(
        kinds(&err)
            .iter()
            .any(|(k, o)| *k == ProblemKind::UniqueWithoutTenant && o.contains("parents"))
    );
}
