//! The test kit and the pool helpers against the real PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use saas_core::testkit::TestDb;
use sqlx::Connection;

async fn database_exists(name: &str) -> bool {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| saas_core::testkit::DEFAULT_DATABASE_URL.into());
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_test_database_is_dropped_with_its_handle() {
    let db = TestDb::new(&[]).await.unwrap();
    let name = db.name().to_owned();
    sqlx::query("SELECT 1").execute(db.app()).await.unwrap();
    assert!(database_exists(&name).await);
    drop(db);
    assert!(!database_exists(&name).await);
}

#[tokio::test]
async fn test_databases_are_independent() {
    let (a, b) = (TestDb::new(&[]).await.unwrap(), TestDb::new(&[]).await.unwrap());
    assert_ne!(a.name(), b.name());
    sqlx::query("CREATE TABLE only_in_a (x int)")
        .execute(a.owner())
        .await
        .unwrap();
    let in_b: Option<String> = sqlx::query_scalar("SELECT to_regclass('only_in_a')::text")
        .fetch_one(b.owner())
        .await
        .unwrap();
    assert_eq!(in_b, None);
}

#[tokio::test]
async fn the_application_role_cannot_create_or_read_what_it_was_not_granted() {
    let db = TestDb::new(&[&saas_core::MIGRATOR]).await.unwrap();
    sqlx::query("CREATE TABLE private_table (x int)")
        .execute(db.owner())
        .await
        .unwrap();
    let err = sqlx::query("SELECT * FROM private_table")
        .execute(db.app())
        .await
        .unwrap_err();
    assert_eq!(err.as_database_error().unwrap().code().as_deref(), Some("42501"));
    let err = sqlx::query("CREATE TABLE saas.mine (x int)")
        .execute(db.app())
        .await
        .unwrap_err();
    assert_eq!(err.as_database_error().unwrap().code().as_deref(), Some("42501"));
    // Migrations are the owner's, in the crate's own history table: readable (for
    // readiness), not writable.
    sqlx::query("SELECT * FROM saas.core_migrations")
        .execute(db.app())
        .await
        .unwrap();
    for sql in [
        "DELETE FROM saas.core_migrations",
        "UPDATE saas.core_migrations SET success = false",
    ] {
        let err = sqlx::query(sql).execute(db.app()).await.unwrap_err();
        assert_eq!(
            err.as_database_error().unwrap().code().as_deref(),
            Some("42501"),
            "{sql}"
        );
    }
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let db = TestDb::new(&[&saas_core::MIGRATOR, &saas_core::MIGRATOR])
        .await
        .unwrap();
    saas_core::MIGRATOR.run(db.owner()).await.unwrap();
}

#[cfg(feature = "prometheus")]
#[tokio::test]
async fn pool_gauges_and_acquire_waits_are_recorded() {
    let recorder = saas_core::telemetry::prometheus::recorder().unwrap();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let db = TestDb::new(&[]).await.unwrap();
    let pool = saas_core::db::pool_options()
        .max_connections(4)
        .connect_lazy_with(db.app_options());
    let conn = saas_core::db::acquire(&pool, "app").await.unwrap();
    saas_core::db::record_pool_gauges(&pool, "app");
    drop(conn);
    let text = handle.render();
    assert!(text.contains(r#"db_pool_connections{pool="app"} 1"#), "{text}");
    assert!(text.contains(r#"db_pool_max_connections{pool="app"} 4"#), "{text}");
    assert!(
        text.contains(r#"db_pool_acquire_seconds_count{pool="app"} 1"#),
        "{text}"
    );
}

mod health {
    use std::time::Duration;

    use saas_core::health::{DatabaseCheck, Heartbeats, MigrationsCheck, Readiness, StartupCheck, liveness};
    use saas_core::testkit::TestDb;

    #[tokio::test]
    async fn readiness_reports_each_check_and_answers_503_until_all_pass() {
        let db = TestDb::new(&[&saas_core::MIGRATOR]).await.unwrap();
        let isolation = StartupCheck::new();
        let workers = Heartbeats::new(Duration::from_secs(60));
        workers.beat("outbox");
        let ready = Readiness::new()
            .check("database", DatabaseCheck::new(db.app().clone()))
            .check(
                "migrations",
                MigrationsCheck::new(db.app().clone(), vec![&saas_core::MIGRATOR]),
            )
            .check("isolation", isolation.clone())
            .check("workers", workers.clone());
        let (ok, report) = ready.report().await;
        assert!(!ok);
        assert_eq!(report["status"], "not_ready");
        assert_eq!(report["checks"]["database"]["ok"], true);
        assert_eq!(report["checks"]["migrations"]["ok"], true, "{report}");
        assert_eq!(report["checks"]["isolation"]["detail"], "not run yet");
        assert_eq!(report["checks"]["workers"]["ok"], true);
        isolation.pass();
        let res: http::Response<String> = ready.response().await;
        assert_eq!(res.status(), 200);
        let body: serde_json::Value = serde_json::from_str(res.body()).unwrap();
        assert_eq!(body["status"], "ready");
        let live: http::Response<String> = liveness();
        assert_eq!(live.status(), 200);
    }

    #[tokio::test]
    async fn pending_migrations_stale_workers_and_a_dead_database_fail() {
        let db = TestDb::new(&[]).await.unwrap();
        let (ok, report) = Readiness::new()
            .check(
                "migrations",
                MigrationsCheck::new(db.owner().clone(), vec![&saas_core::MIGRATOR]),
            )
            .report()
            .await;
        assert!(!ok);
        assert_eq!(
            report["checks"]["migrations"]["detail"]["pending"][0]["version"],
            20261123000001_i64
        );

        let workers = Heartbeats::new(Duration::ZERO);
        workers.beat("outbox");
        std::thread::sleep(Duration::from_millis(2));
        let (ok, report) = Readiness::new().check("workers", workers.clone()).report().await;
        assert!(!ok);
        assert_eq!(report["checks"]["workers"]["detail"]["outbox"]["stale"], true);
        workers.remove("outbox");
        assert!(Readiness::new().check("workers", workers).report().await.0);

        let dead = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(300))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let ready = Readiness::new()
            .check("database", DatabaseCheck::new(dead))
            .timeout(Duration::from_secs(1));
        let res: http::Response<String> = ready.response().await;
        assert_eq!(res.status(), 503);
        assert!(!res.body().contains("127.0.0.1"), "{}", res.body());
    }
}

#[tokio::test]
async fn client_input_the_database_refuses_is_a_422_not_a_500() {
    use saas_core::IntoProblem;
    let db = TestDb::new(&[]).await.unwrap();
    sqlx::query("CREATE TABLE notes (body text NOT NULL, n smallint)")
        .execute(db.owner())
        .await
        .unwrap();
    sqlx::query("GRANT INSERT ON notes TO saas_app")
        .execute(db.owner())
        .await
        .unwrap();
    // A NUL character: valid in JSON ("\u0000") and Rust strings, refused by PostgreSQL.
    let nul = sqlx::query("INSERT INTO notes (body) VALUES ($1)")
        .bind("a\0b")
        .execute(db.app())
        .await
        .unwrap_err()
        .to_problem();
    assert_eq!(nul.status(), 422, "{nul:?}");
    assert_eq!(nul.type_slug(), "invalid-text");
    let big = sqlx::query("INSERT INTO notes (body, n) VALUES ('x', $1::int)")
        .bind(100_000_i32)
        .execute(db.app())
        .await
        .unwrap_err()
        .to_problem();
    assert_eq!(big.status(), 422, "{big:?}");
    assert_eq!(big.type_slug(), "constraint-violated");
}
