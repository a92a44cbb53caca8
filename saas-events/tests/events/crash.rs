//! A worker process killed with SIGKILL mid-batch loses nothing: its claimed jobs are
//! rescued after the visibility timeout and run again; side effects happen at least once,
//! and exactly once through the idempotency helper.

use std::time::{Duration, Instant};

use saas_core::TenantId;
use saas_events::{Publish, publish_batch};
use saas_tenancy::TenantTx;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{db, until};

#[derive(Serialize, Deserialize)]
struct Work {
    n: u32,
}

impl saas_events::Event for Work {
    const KIND: &'static str = "crash.work";
}

const JOBS: u32 = 300;

fn spawn_worker(db: &saas_core::testkit::TestDb) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_saas-events-crash-worker"))
        .env("APP_URL", db.url(false))
        .env("PLATFORM_URL", db.url(true))
        .env("VISIBILITY_MS", "2000")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn count(db: &saas_core::testkit::TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(db.platform())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_worker_killed_mid_batch_loses_nothing_and_effects_happen_once() {
    let db = db().await;
    sqlx::raw_sql(
        "CREATE TABLE crash_effects (tenant_id uuid NOT NULL, job_id uuid NOT NULL, n bigint NOT NULL, PRIMARY KEY (tenant_id, job_id)); \
         SELECT saas.enable_tenant_rls('crash_effects'); \
         CREATE TABLE crash_attempts (tenant_id uuid NOT NULL, job_id uuid NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp()); \
         SELECT saas.enable_tenant_rls('crash_attempts');",
    )
    .execute(db.owner())
    .await
    .unwrap();
    let tenants: Vec<TenantId> = (0..3).map(|_| TenantId::new()).collect();
    for (i, t) in tenants.iter().enumerate() {
        let mut tx = TenantTx::begin(db.app(), *t).await.unwrap();
        let events: Vec<Work> = (0..JOBS / 3).map(|n| Work { n: i as u32 * 1000 + n }).collect();
        publish_batch(&mut tx, &events, &Publish::new()).await.unwrap();
        tx.commit().await.unwrap();
    }

    // First worker process: let it get going, then SIGKILL it mid-batch.
    let mut child = spawn_worker(&db);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
    assert!(
        until(Duration::from_secs(20), async || count(
            &db,
            "SELECT count(*) FROM crash_effects"
        )
        .await
            >= 60)
        .await
    );
    child.start_kill().unwrap();
    let killed_at = Instant::now();
    child.wait().await.unwrap();
    let in_flight = count(&db, "SELECT count(*) FROM saas.jobs WHERE state = 'running'").await;
    let done_before = count(&db, "SELECT count(*) FROM crash_effects").await;
    assert!(in_flight > 0, "the kill should land while jobs are claimed");
    println!("killed with {in_flight} jobs claimed and {done_before} effects committed");

    // A second process takes over; the dead one's jobs come back after the visibility timeout.
    let mut child = spawn_worker(&db);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
    assert!(
        until(Duration::from_secs(60), async || count(
            &db,
            "SELECT count(*) FROM saas.jobs"
        )
        .await
            == 0)
        .await,
        "not every job finished"
    );
    let recovered_after = killed_at.elapsed();
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let effects = count(&db, "SELECT count(*) FROM crash_effects").await;
    let distinct = count(&db, "SELECT count(DISTINCT (tenant_id, job_id)) FROM crash_effects").await;
    let attempts = count(&db, "SELECT count(*) FROM crash_attempts").await;
    let rerun = count(&db, "SELECT count(*) FROM saas.jobs_done WHERE attempts > 1").await;
    let done = count(&db, "SELECT count(*) FROM saas.jobs_done").await;
    println!(
        "{done} done, {effects} effects, {attempts} handler runs, {rerun} jobs rescued and rerun, all finished {recovered_after:?} after the kill"
    );
    assert_eq!(done, i64::from(JOBS), "no job is lost");
    assert_eq!(effects, i64::from(JOBS), "the effect happened exactly once per job");
    assert_eq!(distinct, effects);
    assert!(attempts >= i64::from(JOBS), "every job ran at least once");
    assert!(rerun > 0, "the jobs the dead worker held were rescued and run again");
    let dead = count(&db, "SELECT count(*) FROM saas.jobs WHERE state = 'dead'").await;
    assert_eq!(dead, 0);
}
