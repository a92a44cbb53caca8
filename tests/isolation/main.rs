//! The tenant-isolation attack suite.
//!
//! Every scenario acts as tenant A on the non-superuser application role and asserts
//! that nothing of tenant B is read, written, counted or inferred. Ground truth about B
//! comes from the platform role.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::routing::get;
use http::StatusCode;
use http_body_util::BodyExt;
use saas_core::audit::Actor;
use saas_core::clock::Clock;
use saas_core::problem_layer::ProblemLayer;
use saas_core::request_id::RequestIdLayer;
use saas_core::{Principal, SupportSessionId, TenantId, UserId};
use saas_tenancy::resolve::{self, TenantResolver};
use saas_tenancy::support::{self, SupportSessions};
use saas_tenancy::{
    CachedTenantStore, MembershipError, PgTenantStore, TenantContext, TenantLayer, TenantStore, TenantTx, lifecycle,
};
use saas_tests::Fixture;
use saas_tests::chrono::Duration;
use tower::{ServiceBuilder, ServiceExt};

mod authz;
mod billing;
mod events;
mod flags;
mod hardening;

fn code(e: &sqlx::Error) -> String {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
        .unwrap_or_default()
}

async fn names(tx: &mut TenantTx) -> Vec<String> {
    sqlx::query_scalar("SELECT name FROM projects ORDER BY name")
        .fetch_all(&mut **tx)
        .await
        .unwrap()
}

// ---------------------------------------------------------------- reading

#[tokio::test]
async fn attack_01_select_without_where_sees_only_own_rows() {
    let f = Fixture::new().await;
    let mut tx = f.tx(f.a).await;
    assert_eq!(names(&mut tx).await, ["a-0", "a-1", "a-2"]);
    let titles: Vec<String> = sqlx::query_scalar("SELECT title FROM tasks")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert!(titles.iter().all(|t| t.starts_with("a-")));
}

#[tokio::test]
async fn attack_02_guessed_ids_of_b_return_nothing() {
    let f = Fixture::new().await;
    let mut tx = f.tx(f.a).await;
    for id in &f.b_projects {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 0);
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects WHERE tenant_id = $1 AND id = $2")
            .bind(f.b)
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
}

#[tokio::test]
async fn attack_03_explicit_where_tenant_id_of_b_returns_nothing() {
    let f = Fixture::new().await;
    let mut tx = f.tx(f.a).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects WHERE tenant_id = $1 OR true")
        .bind(f.b)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 3);
}

#[tokio::test]
async fn attack_04_aggregates_count_only_own_rows() {
    let f = Fixture::new().await;
    let mut tx = f.tx(f.a).await;
    let (count, sum, tenants): (i64, i64, i64) =
        sqlx::query_as("SELECT count(*), sum(budget)::int8, count(DISTINCT tenant_id) FROM projects")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!((count, sum, tenants), (3, 3000, 1));
}

#[tokio::test]
async fn attack_05_join_through_the_composite_foreign_key_stays_in_tenant() {
    let f = Fixture::new().await;
    let mut tx = f.tx(f.a).await;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.name, t.title FROM tasks t JOIN projects p ON p.tenant_id = t.tenant_id AND p.id = t.project_id",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    // A cross join cannot reach B either.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects p CROSS JOIN tasks t")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 9);
}

#[tokio::test]
async fn attack_06_a_view_sees_only_own_rows_even_without_security_invoker() {
    let f = Fixture::new().await;
    sqlx::raw_sql(
        "CREATE VIEW v_invoker WITH (security_invoker = true) AS SELECT name FROM projects;
         CREATE VIEW v_owner AS SELECT name FROM projects;
         GRANT SELECT ON v_invoker, v_owner TO saas_app;",
    )
    .execute(f.db.owner())
    .await
    .unwrap();
    let mut tx = f.tx(f.a).await;
    for view in ["v_invoker", "v_owner"] {
        let sql = format!("SELECT count(*) FROM {view}");
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        // v_owner runs as the owner, but FORCE ROW LEVEL SECURITY holds the owner too.
        assert_eq!(n, 3, "{view}");
    }
}

#[tokio::test]
async fn attack_07_functions_invoker_and_definer_see_only_own_rows() {
    let f = Fixture::new().await;
    sqlx::raw_sql(
        "CREATE FUNCTION count_invoker() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM projects';
         CREATE FUNCTION count_definer() RETURNS bigint LANGUAGE sql SECURITY DEFINER AS 'SELECT count(*) FROM projects';",
    )
    .execute(f.db.owner())
    .await
    .unwrap();
    let mut tx = f.tx(f.a).await;
    let (i, d): (i64, i64) = sqlx::query_as("SELECT count_invoker(), count_definer()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!((i, d), (3, 3));
}

#[tokio::test]
async fn attack_08_copy_to_exports_only_own_rows_and_copy_from_is_refused() {
    let f = Fixture::new().await;
    let mut tx = f.tx(f.a).await;
    let mut out = Vec::new();
    {
        use futures_util::TryStreamExt;
        let mut stream = tx.copy_out_raw("COPY projects (name) TO STDOUT").await.unwrap();
        while let Some(chunk) = stream.try_next().await.unwrap() {
            out.extend_from_slice(&chunk);
        }
    }
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(!text.contains("b-secret"));
    let err = tx
        .copy_in_raw("COPY projects (tenant_id, name) FROM STDIN")
        .await
        .err()
        .expect("COPY FROM is refused");
    assert!(err.to_string().to_lowercase().contains("row-level security"), "{err}");
}

#[tokio::test]
async fn attack_09_statistics_reveal_nothing_of_other_tenants() {
    let f = Fixture::new().await;
    sqlx::query("ANALYZE projects").execute(f.db.owner()).await.unwrap();
    let mut tx = f.tx(f.a).await;
    let values: Vec<String> = sqlx::query_scalar(
        "SELECT coalesce(most_common_vals::text, '') || coalesce(histogram_bounds::text, '')
         FROM pg_stats WHERE tablename = 'projects'",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert!(values.iter().all(|v| !v.contains("b-secret")), "{values:?}");
}

#[tokio::test]
async fn attack_10_non_leakproof_functions_in_where_see_only_own_rows() {
    let f = Fixture::new().await;
    sqlx::raw_sql(
        "CREATE TABLE spy (seen text);
         GRANT INSERT, SELECT ON spy TO saas_app;
         CREATE FUNCTION peek(v text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS
           $$ BEGIN INSERT INTO spy VALUES (v); RETURN true; END $$;",
    )
    .execute(f.db.owner())
    .await
    .unwrap();
    let mut tx = f.tx(f.a).await;
    sqlx::query("SELECT count(*) FROM projects WHERE peek(name)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let seen: Vec<String> = sqlx::query_scalar("SELECT seen FROM spy")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|s| s.starts_with("a-")), "{seen:?}");
}

// ---------------------------------------------------------------- writing

#[tokio::test]
async fn attack_11_insert_a_row_into_b_is_refused() {
    let f = Fixture::new().await;
    let mut tx = f.tx(f.a).await;
    let err = sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'planted')")
        .bind(f.b)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42501");
    drop(tx);
    assert_eq!(f.b_rows("projects").await, 2);
}

#[tokio::test]
async fn attack_12_update_that_moves_a_row_into_b_is_refused() {
    let f = Fixture::new().await;
    let mut tx = f.tx(f.a).await;
    let err = sqlx::query("UPDATE projects SET tenant_id = $1")
        .bind(f.b)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42501");
    drop(tx);
    assert_eq!(f.b_rows("projects").await, 2);
}

#[tokio::test]
async fn attack_13_update_of_b_rows_by_id_touches_nothing() {
    let f = Fixture::new().await;
    let mut tx = f.tx(f.a).await;
    let n = sqlx::query("UPDATE projects SET name = 'pwned' WHERE id = ANY($1)")
        .bind(&f.b_projects)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 0);
    let returned: Vec<String> = sqlx::query_scalar("UPDATE projects SET budget = budget RETURNING name")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(returned.len(), 3);
    assert!(returned.iter().all(|n| n.starts_with("a-")));
}

#[tokio::test]
async fn attack_14_delete_across_tenants_deletes_only_own_rows() {
    let f = Fixture::new().await;
    let mut tx = f.tx(f.a).await;
    let n = sqlx::query("DELETE FROM projects WHERE id = ANY($1)")
        .bind(&f.b_projects)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n.rows_affected(), 0);
    let n = sqlx::query("DELETE FROM projects").execute(&mut *tx).await.unwrap();
    assert_eq!(n.rows_affected(), 3);
    tx.commit().await.unwrap();
    assert_eq!(f.b_rows("projects").await, 2);
    assert_eq!(f.b_rows("tasks").await, 2);
}

#[tokio::test]
async fn attack_15_insert_select_copies_only_own_rows() {
    let f = Fixture::new().await;
    let mut tx = f.tx(f.a).await;
    let n = sqlx::query("INSERT INTO projects (tenant_id, name) SELECT tenant_id, name || '-copy' FROM projects")
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 3);
    assert!(names(&mut tx).await.iter().all(|n| n.starts_with("a-")));
}

#[tokio::test]
async fn attack_16_unique_collision_is_no_oracle() {
    let f = Fixture::new().await;
    let mut tx = f.tx(f.a).await;
    // B has "b-secret-0"; A can take the same name: uniqueness is per tenant.
    sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'b-secret-0')")
        .bind(f.a)
        .execute(&mut *tx)
        .await
        .unwrap();
    // A duplicate inside A collides, as it should.
    let err = sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'a-0')")
        .bind(f.a)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(code(&err), "23505");
}

#[tokio::test]
async fn attack_17_foreign_key_to_a_row_of_b_is_refused_like_a_random_id() {
    let f = Fixture::new().await;
    let mut tx = f.tx(f.a).await;
    let to_b = sqlx::query("INSERT INTO tasks (tenant_id, project_id, title) VALUES ($1, $2, 'x')")
        .bind(f.a)
        .bind(f.b_projects[0])
        .execute(&mut *tx)
        .await
        .unwrap_err();
    drop(tx);
    let mut tx = f.tx(f.a).await;
    let to_random = sqlx::query("INSERT INTO tasks (tenant_id, project_id, title) VALUES ($1, $2, 'x')")
        .bind(f.a)
        .bind(uuid::Uuid::now_v7())
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(code(&to_b), "23503");
    assert_eq!(
        code(&to_b),
        code(&to_random),
        "existence of B's row must not be inferable"
    );
    drop(tx);
    let mut tx = f.tx(f.a).await;
    let as_b = sqlx::query("INSERT INTO tasks (tenant_id, project_id, title) VALUES ($1, $2, 'x')")
        .bind(f.b)
        .bind(f.b_projects[0])
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(code(&as_b), "42501");
}

#[tokio::test]
async fn attack_18_truncate_disable_rls_and_set_role_are_refused() {
    let f = Fixture::new().await;
    for sql in [
        "TRUNCATE projects CASCADE",
        "ALTER TABLE projects DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE projects NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY tenant_isolation ON projects",
        "SET ROLE saas_test_owner",
        "SET ROLE saas_test_platform",
        "SET row_security = off",
    ] {
        let mut tx = f.tx(f.a).await;
        let res = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await;
        if sql.starts_with("SET row_security") {
            // Allowed to set, but then any query that RLS would filter fails instead.
            res.unwrap();
            let err = sqlx::query("SELECT count(*) FROM projects")
                .execute(&mut *tx)
                .await
                .unwrap_err();
            assert_eq!(code(&err), "42501", "{sql}");
        } else {
            let err = res.unwrap_err();
            assert_eq!(code(&err), "42501", "{sql}: {err}");
        }
    }
    assert_eq!(f.b_rows("projects").await, 2);
}

// ---------------------------------------------------------------- no tenant, forged tenant

#[tokio::test]
async fn attack_19_no_tenant_set_reads_nothing() {
    let f = Fixture::new().await;
    let mut conn = f.db.app().acquire().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn attack_20_no_tenant_set_writes_nothing() {
    let f = Fixture::new().await;
    let mut conn = f.db.app().acquire().await.unwrap();
    let err = sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'x')")
        .bind(f.b)
        .execute(&mut *conn)
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42501");
    let n = sqlx::query("DELETE FROM projects")
        .execute(&mut *conn)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 0);
    assert_eq!(f.b_rows("projects").await, 2);
}

#[tokio::test]
async fn attack_21_a_garbage_tenant_setting_fails_closed() {
    let f = Fixture::new().await;
    let mut tx = f.db.app().begin().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', 'not-a-uuid'' OR true --', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query("SELECT count(*) FROM projects")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(code(&err), "22P02");
}

// ---------------------------------------------------------------- pooled connections

async fn pooled_scenario(f: &Fixture, end: &str) {
    let pool = saas_tenancy::pool_options()
        .max_connections(1)
        .connect_lazy_with(f.db.app_options());
    let a = f.a;
    let p = pool.clone();
    let end = end.to_owned();
    let outcome = tokio::spawn(async move {
        let mut tx = TenantTx::begin(&p, a).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 3);
        match end.as_str() {
            "commit" => tx.commit().await.unwrap(),
            "rollback" => tx.rollback().await.unwrap(),
            "error" => {
                assert!(sqlx::query("SELECT 1/0").execute(&mut *tx).await.is_err());
            }
            _ => panic!("a handler panics with the transaction open"),
        }
    })
    .await;
    assert_eq!(outcome.is_err(), end_is_panic(&outcome));
    let mut conn = pool.acquire().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(n, 0, "the reused connection still carried tenant A");
    let setting: Option<String> = sqlx::query_scalar("SELECT NULLIF(current_setting('app.tenant_id', true), '')")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(setting, None);
}

fn end_is_panic(outcome: &Result<(), tokio::task::JoinError>) -> bool {
    outcome.as_ref().err().is_some_and(|e| e.is_panic())
}

#[tokio::test]
async fn attack_22_pooled_connection_after_commit() {
    pooled_scenario(&Fixture::new().await, "commit").await;
}

#[tokio::test]
async fn attack_23_pooled_connection_after_rollback() {
    pooled_scenario(&Fixture::new().await, "rollback").await;
}

#[tokio::test]
async fn attack_24_pooled_connection_after_error() {
    pooled_scenario(&Fixture::new().await, "error").await;
}

#[tokio::test]
async fn attack_25_pooled_connection_after_panic() {
    pooled_scenario(&Fixture::new().await, "panic").await;
}

// ---------------------------------------------------------------- over HTTP

#[derive(Clone)]
struct Members(Arc<HashMap<UserId, TenantId>>);

async fn authenticate(mut req: Request, next: Next) -> axum::response::Response {
    let user = req
        .headers()
        .get("x-test-user")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<UserId>().ok());
    let session = req
        .headers()
        .get("x-test-support-session")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<SupportSessionId>().ok());
    if let Some(user) = user {
        let principal = match session {
            Some(s) => Principal::support(user, s),
            None => Principal::user(user),
        };
        req.extensions_mut().insert(principal);
    }
    next.run(req).await
}

async fn list_projects(ctx: TenantContext, mut tx: TenantTx) -> axum::Json<serde_json::Value> {
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projects ORDER BY name")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    axum::Json(serde_json::json!({"tenant": ctx.tenant().slug, "projects": names}))
}

fn app<R: TenantResolver>(f: &Fixture, resolver: R) -> Router {
    let members = Members(Arc::new(HashMap::from([(f.alice, f.a), (f.bob, f.b)])));
    let check = move |tenant: TenantId, p: &Principal| -> Result<bool, MembershipError> {
        Ok(members.0.get(&p.user_id) == Some(&tenant))
    };
    let store = PgTenantStore::new(f.db.app().clone());
    let support = SupportSessions::new(f.db.app().clone(), Arc::new(f.clock.clone()));
    Router::new()
        .route("/v1/projects", get(list_projects).delete(|| async { "deleted" }))
        .route("/v1/billing", get(|| async { "billing" }))
        .layer(
            ServiceBuilder::new()
                .layer(RequestIdLayer::new())
                .layer(ProblemLayer::new())
                .layer(middleware::from_fn(authenticate))
                .layer(axum::Extension(f.db.app().clone()))
                .layer(
                    TenantLayer::new(resolver, store)
                        .membership(check)
                        .allow_while_suspended(["/v1/billing"])
                        .support_sessions(support),
                ),
        )
}

struct Reply {
    status: StatusCode,
    body: serde_json::Value,
}

async fn call(app: Router, method: &str, path: &str, headers: &[(&str, String)]) -> Reply {
    let mut req = http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let res = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let mut body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    if let Some(o) = body.as_object_mut() {
        o.remove("request_id");
    }
    Reply { status, body }
}

fn header_resolver() -> impl TenantResolver {
    resolve::header("x-tenant-id")
}

#[tokio::test]
async fn attack_26_forged_tenant_header_answers_like_an_unknown_tenant() {
    let f = Fixture::new().await;
    let as_alice = |t: String| vec![("x-test-user", f.alice.to_string()), ("x-tenant-id", t)];
    let own = call(
        app(&f, header_resolver()),
        "GET",
        "/v1/projects",
        &as_alice("acme".into()),
    )
    .await;
    assert_eq!(own.status, 200);
    assert_eq!(own.body["projects"].as_array().unwrap().len(), 3);

    let forged_slug = call(
        app(&f, header_resolver()),
        "GET",
        "/v1/projects",
        &as_alice("globex".into()),
    )
    .await;
    let forged_id = call(
        app(&f, header_resolver()),
        "GET",
        "/v1/projects",
        &as_alice(f.b.to_string()),
    )
    .await;
    let unknown = call(
        app(&f, header_resolver()),
        "GET",
        "/v1/projects",
        &as_alice("nobody-here".into()),
    )
    .await;
    let unknown_id = call(
        app(&f, header_resolver()),
        "GET",
        "/v1/projects",
        &as_alice(TenantId::new().to_string()),
    )
    .await;
    let malformed = call(
        app(&f, header_resolver()),
        "GET",
        "/v1/projects",
        &as_alice("'; --".into()),
    )
    .await;
    for r in [&forged_slug, &forged_id, &unknown, &unknown_id, &malformed] {
        assert_eq!(r.status, 404);
        assert_eq!(
            r.body, unknown.body,
            "responses must not reveal whether a tenant exists"
        );
    }
    assert!(!forged_slug.body.to_string().contains("globex"));
}

#[tokio::test]
async fn attack_27_subdomain_and_header_cannot_be_played_against_each_other() {
    let f = Fixture::new().await;
    let headers = vec![
        ("x-test-user", f.alice.to_string()),
        ("host", "acme.example.com".to_owned()),
        ("x-tenant-id", "globex".to_owned()),
    ];
    // First-of: the subdomain decides; the header cannot switch tenants.
    let first = resolve::subdomain("example.com").or(resolve::header("x-tenant-id"));
    let r = call(app(&f, first), "GET", "/v1/projects", &headers).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["tenant"], "acme");
    assert!(!r.body.to_string().contains("b-secret"));
    // Agree: a conflict is rejected outright.
    let strict = resolve::subdomain("example.com").agree(resolve::header("x-tenant-id"));
    let r = call(app(&f, strict), "GET", "/v1/projects", &headers).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["type"], "urn:saas-kit:problem:tenant-conflict");
    // Bob on acme's subdomain naming his own tenant in the header gets nothing of acme.
    let bob = vec![
        ("x-test-user", f.bob.to_string()),
        ("host", "acme.example.com".to_owned()),
        ("x-tenant-id", "globex".to_owned()),
    ];
    let first = resolve::subdomain("example.com").or(resolve::header("x-tenant-id"));
    assert_eq!(call(app(&f, first), "GET", "/v1/projects", &bob).await.status, 404);
}

#[tokio::test]
async fn attack_28_suspended_tenant_is_locked_except_allowed_routes() {
    let f = Fixture::new().await;
    lifecycle::suspend(&f.platform(), f.a, "unpaid", Actor::System("billing".into()), &f.clock)
        .await
        .unwrap();
    let h = vec![("x-test-user", f.alice.to_string()), ("x-tenant-id", "acme".to_owned())];
    let r = call(app(&f, header_resolver()), "GET", "/v1/projects", &h).await;
    assert_eq!(r.status, 423);
    assert_eq!(r.body["type"], "urn:saas-kit:problem:tenant-suspended");
    let r = call(app(&f, header_resolver()), "GET", "/v1/billing", &h).await;
    assert_eq!(r.status, 200);
    // A non-member learns nothing about the suspension.
    let bob = vec![("x-test-user", f.bob.to_string()), ("x-tenant-id", "acme".to_owned())];
    assert_eq!(
        call(app(&f, header_resolver()), "GET", "/v1/projects", &bob)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn attack_29_deleted_tenant_answers_like_an_unknown_one() {
    let f = Fixture::new().await;
    lifecycle::request_deletion(&f.platform(), f.a, None, Actor::User(f.alice), &f.clock)
        .await
        .unwrap();
    let h = vec![("x-test-user", f.alice.to_string()), ("x-tenant-id", "acme".to_owned())];
    let deleted = call(app(&f, header_resolver()), "GET", "/v1/projects", &h).await;
    let h = vec![
        ("x-test-user", f.alice.to_string()),
        ("x-tenant-id", "nobody".to_owned()),
    ];
    let unknown = call(app(&f, header_resolver()), "GET", "/v1/projects", &h).await;
    assert_eq!(deleted.status, 404);
    assert_eq!(deleted.body, unknown.body);
}

#[tokio::test]
async fn attack_30_support_session_expires_and_stays_read_only() {
    let f = Fixture::new().await;
    let staff = UserId::new();
    let s = support::open_session(&f.platform(), f.b, staff, "ticket 17", false, 15, &f.clock)
        .await
        .unwrap();
    let h = |tenant: &str| {
        vec![
            ("x-test-user", staff.to_string()),
            ("x-test-support-session", s.id.to_string()),
            ("x-tenant-id", tenant.to_owned()),
        ]
    };
    let r = call(app(&f, header_resolver()), "GET", "/v1/projects", &h("globex")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["projects"].as_array().unwrap().len(), 2);
    // The session is for B only.
    assert_eq!(
        call(app(&f, header_resolver()), "GET", "/v1/projects", &h("acme"))
            .await
            .status,
        404
    );
    // Read-only.
    let r = call(app(&f, header_resolver()), "DELETE", "/v1/projects", &h("globex")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["type"], "urn:saas-kit:problem:support-session-denied");
    // Expired.
    f.clock.advance(Duration::minutes(16));
    let r = call(app(&f, header_resolver()), "GET", "/v1/projects", &h("globex")).await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn attack_31_unauthenticated_requests_learn_nothing() {
    let f = Fixture::new().await;
    for t in ["acme", "nobody"] {
        let r = call(
            app(&f, header_resolver()),
            "GET",
            "/v1/projects",
            &[("x-tenant-id", t.to_owned())],
        )
        .await;
        assert_eq!(r.status, 401, "{t}");
    }
}

// ---------------------------------------------------------------- data lifecycle

#[tokio::test]
async fn attack_32_export_contains_only_own_rows() {
    let f = Fixture::new().await;
    let mut out = Vec::new();
    saas_tenancy::export::export(f.db.app(), f.a, &mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("b-secret"));
    assert!(!text.contains(&f.b.to_string()));
    assert!(!text.contains(&f.bob.to_string()));
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("{\"table\":\"projects\""))
            .count(),
        3
    );
}

#[tokio::test]
async fn attack_33_purge_removes_only_the_purged_tenants_rows() {
    let f = Fixture::new().await;
    let platform = f.platform();
    lifecycle::request_deletion(&platform, f.b, Some(Duration::hours(1)), Actor::User(f.bob), &f.clock)
        .await
        .unwrap();
    f.clock.advance(Duration::hours(2));
    lifecycle::purge(&platform, f.b, Actor::System("purger".into()), &f.clock)
        .await
        .unwrap();
    assert_eq!(f.b_rows("projects").await, 0);
    assert_eq!(f.b_rows("tasks").await, 0);
    let mut tx = f.tx(f.a).await;
    assert_eq!(names(&mut tx).await.len(), 3);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 3);
}

#[derive(Clone)]
struct Counting {
    inner: PgTenantStore,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl TenantStore for Counting {
    async fn by_id(&self, id: TenantId) -> Result<Option<saas_tenancy::Tenant>, saas_tenancy::TenancyError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.by_id(id).await
    }
    async fn by_slug(&self, slug: &str) -> Result<Option<saas_tenancy::Tenant>, saas_tenancy::TenancyError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.by_slug(slug).await
    }
}

#[tokio::test]
async fn attack_34_tenant_cache_entries_are_never_shared() {
    let f = Fixture::new().await;
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let store = CachedTenantStore::new(
        Counting {
            inner: PgTenantStore::new(f.db.app().clone()),
            calls: calls.clone(),
        },
        100,
        StdDuration::from_secs(60),
    );
    let a = store.by_slug("acme").await.unwrap().unwrap();
    let b = store.by_slug("globex").await.unwrap().unwrap();
    assert_eq!((a.id, b.id), (f.a, f.b));
    // Hits come back for the right key.
    assert_eq!(store.by_id(f.b).await.unwrap().unwrap().slug, "globex");
    assert_eq!(store.by_slug("acme").await.unwrap().unwrap().id, f.a);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Near-miss keys do not hit another tenant's entry.
    for slug in ["acme-", "ACME", "acme ", "globe", ""] {
        assert_eq!(store.by_slug(slug).await.unwrap(), None, "{slug:?}");
    }
}

#[tokio::test]
async fn attack_35_the_audit_log_of_b_is_invisible_and_unwritable() {
    let f = Fixture::new().await;
    let mut tx = f.tx(f.a).await;
    let tenants: Vec<TenantId> = sqlx::query_scalar("SELECT DISTINCT tenant_id FROM saas.audit_log")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(tenants, [f.a]);
    let rec = saas_core::audit::AuditRecord::new(f.b, Actor::User(f.alice), "forged.entry").unwrap();
    assert!(saas_core::audit::record(&mut tx, &rec).await.is_err());
}

#[tokio::test]
async fn attack_36_the_verifier_accepts_this_schema() {
    let f = Fixture::new().await;
    let report = saas_tenancy::verify_isolation(f.db.app()).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(f.clock.now() > saas_tests::chrono::DateTime::<saas_tests::chrono::Utc>::MIN_UTC);
}
