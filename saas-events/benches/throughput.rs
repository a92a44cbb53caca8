//! End-to-end throughput: enqueue and process 50,000 no-op jobs with 2 workers against
//! the local PostgreSQL (first enqueue to last completion recorded in the database), for
//! saas-events and, in the same run, its peers each configured as its documentation
//! recommends for throughput: apalis 1 on apalis-postgres with its defaults and tuned
//! (fetching 100 jobs at a time, 100 handlers at once per worker), and graphile_worker
//! 0.14 (local queue of 100, completions batched every 5 ms, concurrency 100). Each system
//! gets a fresh database; every connection is plain TCP (`sslmode=disable`, the test kit's
//! default URL).
//!
//! ```text
//! cargo bench -p saas-events --bench throughput
//! ```
//!
//! Prints each run and, last, one line:
//! `saas_events_jobs_per_s=<x> best_peer=<name> best_peer_jobs_per_s=<y> ratio=<x/y>` followed
//! by every peer's `<name>_jobs_per_s=<rate>`.
//! `RUNS=<n>` measures saas-events n times (fresh database each; the line reports the
//! median, and `saas_events_slowest_run_ratio` the slowest run against the best peer);
//! the peers run once.
//! saas-events runs with its defaults (200 jobs per claim); `BATCH=<n>` changes that,
//! `JOBS=<n>` the job count, and `APALIS=0` measures saas-events alone (no peers).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use saas_core::TenantId;
use saas_core::testkit::TestDb;
use saas_events::{JobContext, Publish, Worker, publish_batch};
use saas_tenancy::{PlatformPool, TenantTx};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;

const CHUNK: usize = 1000;

#[derive(Serialize, Deserialize)]
struct Noop {
    n: u32,
}

impl saas_events::Event for Noop {
    const KIND: &'static str = "bench.noop";
}

async fn wait_for(limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < limit, "did not finish within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until every handler ran (`count` reached `jobs`) and then until the queue itself
/// records them all (`recorded`, a query answering one boolean): the end of a run.
async fn drained(count: &AtomicU64, jobs: usize, limit: Duration, pool: &sqlx::PgPool, recorded: String) {
    wait_for(limit, async || count.load(Ordering::Relaxed) >= jobs as u64).await;
    wait_for(Duration::from_secs(60), async || {
        sqlx::query_scalar::<_, bool>(sqlx::AssertSqlSafe(recorded.clone()))
            .fetch_one(pool)
            .await
            .unwrap()
    })
    .await;
}

async fn saas_events(jobs: usize) -> f64 {
    let db = TestDb::new(&[&saas_core::MIGRATOR, &saas_tenancy::MIGRATOR, &saas_events::MIGRATOR])
        .await
        .unwrap();
    let app = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(db.app_options())
        .await
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let platform = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(db.platform_options())
            .await
            .unwrap();
        let c = Arc::clone(&count);
        let mut builder = Worker::builder(PlatformPool::new(platform));
        if std::env::var("DONE").is_ok_and(|d| d == "delete") {
            builder = builder.delete_finished();
        }
        workers.push(
            builder
                .batch(std::env::var("BATCH").ok().and_then(|b| b.parse().ok()).unwrap_or(200))
                .concurrency(100)
                .handle(move |_ctx: JobContext, _e: Noop| {
                    let c = Arc::clone(&c);
                    async move {
                        c.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                })
                .start()
                .await
                .unwrap(),
        );
    }
    let tenant = TenantId::new();
    let started = Instant::now();
    let mut n = 0u32;
    while (n as usize) < jobs {
        let events: Vec<Noop> = (0..CHUNK.min(jobs - n as usize))
            .map(|i| Noop { n: n + i as u32 })
            .collect();
        n += events.len() as u32;
        let mut tx = TenantTx::begin(&app, tenant).await.unwrap();
        publish_batch(&mut tx, &events, &Publish::new()).await.unwrap();
        tx.commit().await.unwrap();
    }
    let enqueued = started.elapsed();
    drained(
        &count,
        jobs,
        Duration::from_secs(300),
        db.platform(),
        "SELECT count(*) = 0 FROM saas.jobs".into(),
    )
    .await;
    let elapsed = started.elapsed();
    for w in workers {
        w.shutdown(Duration::from_secs(5)).await;
    }
    let rate = jobs as f64 / elapsed.as_secs_f64();
    println!("saas-events: {jobs} jobs in {elapsed:.2?} (enqueued in {enqueued:.2?}) = {rate:.0} jobs/s");
    rate
}

static APALIS_COUNT: AtomicU64 = AtomicU64::new(0);

async fn apalis_noop(_n: u32) -> Result<(), apalis::prelude::BoxDynError> {
    APALIS_COUNT.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn apalis(jobs: usize, batch: Option<usize>, concurrency: Option<usize>) -> f64 {
    use apalis::prelude::*;
    use apalis_postgres::{Config, PostgresStorage};

    let db = TestDb::new(&[&saas_core::MIGRATOR]).await.unwrap();
    let pool = db.owner().clone();
    PostgresStorage::setup(&pool).await.unwrap();
    APALIS_COUNT.store(0, Ordering::SeqCst);
    let config = match batch {
        Some(b) => Config::default().batch_size(b),
        None => Config::default(),
    };
    let label = match (batch, concurrency) {
        (Some(b), Some(c)) => format!("apalis (batch {b}, concurrency {c}, pubsub)"),
        (Some(b), None) => format!("apalis (batch {b})"),
        _ => "apalis (defaults)".to_owned(),
    };
    let mut backend: PostgresStorage<u32> = PostgresStorage::new(&pool).with_config(config);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut runs = Vec::new();
    for i in 0..2 {
        let mut stop = stop_rx.clone();
        let until = async move {
            let _ = stop.changed().await;
            Ok::<(), std::io::Error>(())
        };
        runs.push(match concurrency {
            // Tuned: woken by its LISTEN/NOTIFY listener when jobs arrive (otherwise an
            // idle worker parks until its next heartbeat, 30 s), 100 handlers at once.
            Some(c) => {
                let worker = WorkerBuilder::new(format!("bench-{i}"))
                    .backend(backend.clone().with_pubsub())
                    .concurrency(c)
                    .build(apalis_noop);
                tokio::spawn(async move {
                    let _ = worker.run_until(until).await;
                })
            }
            None => {
                let worker = WorkerBuilder::new(format!("bench-{i}"))
                    .backend(backend.clone())
                    .build(apalis_noop);
                tokio::spawn(async move {
                    let _ = worker.run_until(until).await;
                })
            }
        });
    }
    let started = Instant::now();
    let mut n = 0u32;
    while (n as usize) < jobs {
        let take = CHUNK.min(jobs - n as usize) as u32;
        let mut items = futures_util::stream::iter((n..n + take).map(|i| TaskBuilder::new(i).build()));
        n += take;
        backend.push_all(&mut items).await.unwrap();
    }
    let enqueued = started.elapsed();
    drained(
        &APALIS_COUNT,
        jobs,
        Duration::from_secs(600),
        &pool,
        format!("SELECT count(*) >= {jobs} FROM apalis.jobs WHERE status = 'Done'"),
    )
    .await;
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    for r in runs {
        let _ = tokio::time::timeout(Duration::from_secs(10), r).await;
    }
    let rate = jobs as f64 / elapsed.as_secs_f64();
    println!("{label}: {jobs} jobs in {elapsed:.2?} (enqueued in {enqueued:.2?}) = {rate:.0} jobs/s");
    rate
}

static GRAPHILE_COUNT: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Serialize, Deserialize)]
struct GraphileNoop {
    n: u32,
}

impl graphile_worker::TaskHandler for GraphileNoop {
    const IDENTIFIER: &'static str = "bench_noop";
    async fn run(self, _ctx: graphile_worker::WorkerContext) -> impl graphile_worker::IntoTaskHandlerResult {
        GRAPHILE_COUNT.fetch_add(1, Ordering::Relaxed);
        Ok::<(), String>(())
    }
}

/// graphile_worker configured for throughput as its documentation describes: a local
/// queue fetching 100 jobs per round trip, completions batched every 5 ms, concurrency 100
/// per worker, plain TCP.
async fn graphile(jobs: usize) -> f64 {
    use graphile_worker::{JobSpec, LocalQueueConfig, WorkerOptions};

    let db = TestDb::new(&[&saas_core::MIGRATOR]).await.unwrap();
    GRAPHILE_COUNT.store(0, Ordering::SeqCst);
    let mut workers = Vec::new();
    for _ in 0..2 {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(db.owner_options())
            .await
            .unwrap();
        let worker = WorkerOptions::default()
            .pg_pool(pool)
            .schema("graphile_worker")
            .concurrency(100)
            .local_queue(LocalQueueConfig::default().with_size(100))
            .complete_job_batch_delay(Duration::from_millis(5))
            .define_job::<GraphileNoop>()
            .init()
            .await
            .unwrap();
        workers.push(Arc::new(worker));
    }
    let utils = workers[0].create_utils();
    let runs: Vec<_> = workers
        .iter()
        .map(|w| {
            let w = Arc::clone(w);
            tokio::spawn(async move {
                let _ = w.run().await;
            })
        })
        .collect();
    let spec = JobSpec::default();
    let started = Instant::now();
    let mut n = 0u32;
    while (n as usize) < jobs {
        let take = CHUNK.min(jobs - n as usize) as u32;
        let batch: Vec<(GraphileNoop, &JobSpec)> = (n..n + take).map(|i| (GraphileNoop { n: i }, &spec)).collect();
        n += take;
        utils.add_jobs(&batch).await.unwrap();
    }
    let enqueued = started.elapsed();
    drained(
        &GRAPHILE_COUNT,
        jobs,
        Duration::from_secs(600),
        db.owner(),
        "SELECT count(*) = 0 FROM graphile_worker._private_jobs".into(),
    )
    .await;
    let elapsed = started.elapsed();
    for w in &workers {
        w.request_shutdown();
    }
    for r in runs {
        let _ = tokio::time::timeout(Duration::from_secs(10), r).await;
    }
    let rate = jobs as f64 / elapsed.as_secs_f64();
    println!(
        "graphile_worker (local queue 100, batch completion 5 ms, concurrency 100): {jobs} jobs in {elapsed:.2?} (enqueued in {enqueued:.2?}) = {rate:.0} jobs/s"
    );
    rate
}

fn main() {
    // `cargo test --benches` runs benches with `--bench`-less args; keep that quick.
    if std::env::args().any(|a| a == "--test")
        || std::env::args().all(|a| a != "--bench") && std::env::var("JOBS").is_err()
    {
        println!("throughput: skipped (run with `cargo bench -p saas-events --bench throughput`)");
        return;
    }
    let jobs: usize = std::env::var("JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(50_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
        .max(1);
    rt.block_on(async {
        let mut rates = Vec::with_capacity(runs);
        for _ in 0..runs {
            rates.push(saas_events(jobs).await);
        }
        rates.sort_by(f64::total_cmp);
        let ours = rates[rates.len() / 2];
        let all: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "saas_events_runs={} median={ours:.0} min={:.0} max={:.0}",
            all.join(","),
            rates[0],
            rates[rates.len() - 1]
        );
        if std::env::var("APALIS").is_ok_and(|v| v == "0") {
            println!("saas_events_jobs_per_s={ours:.0} (apalis skipped: APALIS=0)");
            return;
        }
        let peers = [
            ("apalis_default", apalis(jobs, None, None).await),
            ("apalis_tuned", apalis(jobs, Some(100), Some(100)).await),
            ("graphile_worker", graphile(jobs).await),
        ];
        let (best, best_rate) = peers
            .iter()
            .copied()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or(("none", f64::NAN));
        let each: Vec<String> = peers.iter().map(|(n, r)| format!("{n}_jobs_per_s={r:.0}")).collect();
        println!(
            "saas_events_slowest_run_ratio={:.2} (slowest of the runs against the best peer)",
            rates[0] / best_rate
        );
        println!(
            "saas_events_jobs_per_s={ours:.0} best_peer={best} best_peer_jobs_per_s={best_rate:.0} ratio={:.2} {}",
            ours / best_rate,
            each.join(" ")
        );
    });
}
