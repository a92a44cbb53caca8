//! What tenant scoping costs: `TenantTx` + a point lookup under row-level security,
//! against a plain transaction + the same lookup with an explicit `WHERE tenant_id`
//! on a twin table without RLS. Runs against the local PostgreSQL (`DATABASE_URL`),
//! as the application role, in a database of its own.
//!
//! ```text
//! cargo bench -p saas-tenancy --bench scoped_query
//! ```
//!
//! First it prints `tenant_query_ratio=<median> min=<lo> max=<hi>`: `tenant_tx` over
//! `plain_tx_where`, alternated call by call inside one loop, the ratio of medians per
//! repetition (`TENANT_QUERY_REPS`, default 7, of `TENANT_QUERY_PAIRS` pairs, default
//! 3,000) with its spread. The criterion groups follow.
//!
//! Round trips per iteration: `tenant_tx` 3 (`BEGIN; set_config` as one message, the
//! select, `COMMIT`), `plain_tx_where` 3 (`BEGIN`, the select, `COMMIT`); both on pools
//! with the same options. The release reset of `saas_tenancy::pool_options` (one more
//! round trip, after the response) is measured on its own in `pool_release_reset`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use saas_core::TenantId;
use saas_core::testkit::TestDb;
use saas_tenancy::TenantTx;
use sqlx::PgPool;

const TENANTS: usize = 10_000;
const ROWS_PER_TENANT: usize = 100;

struct Setup {
    _db: TestDb,
    scoped: PgPool,
    plain: PgPool,
    single_reset: PgPool,
    single_plain: PgPool,
    keys: Vec<(TenantId, uuid::Uuid)>,
    scale_keys: Vec<(usize, Vec<(TenantId, uuid::Uuid)>)>,
}

async fn fill(owner: &PgPool, table: &str, tenants: usize, rows: usize, rls: bool) {
    let ddl = format!(
        "CREATE TABLE {table} (tenant_id uuid NOT NULL, id uuid NOT NULL, payload text NOT NULL,
                               PRIMARY KEY (tenant_id, id));
         INSERT INTO {table}
           SELECT md5('t' || t)::uuid, md5('t' || t || 'r' || r)::uuid, repeat('x', 64)
           FROM generate_series(1, {tenants}) t, generate_series(1, {rows}) r;"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(owner).await.unwrap();
    // Vacuum now, so that autovacuum does not run during the measurements.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM (ANALYZE, FREEZE) {table}")))
        .execute(owner)
        .await
        .unwrap();
    let grant = if rls {
        format!("SELECT saas.enable_tenant_rls('{table}')")
    } else {
        format!("GRANT SELECT ON {table} TO saas_app")
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(grant)).execute(owner).await.unwrap();
}

async fn keys(owner: &PgPool, tenants: usize, rows: usize, n: usize) -> Vec<(TenantId, uuid::Uuid)> {
    // A spread of (tenant, row) pairs, computed the same way as the data.
    let sql = format!(
        "SELECT md5('t' || t)::uuid, md5('t' || t || 'r' || r)::uuid
         FROM (SELECT 1 + (i * 7919) % {tenants} AS t, 1 + (i * 104729) % {rows} AS r
               FROM generate_series(0, {n} - 1) i) k"
    );
    sqlx::query_as::<_, (uuid::Uuid, uuid::Uuid)>(sqlx::AssertSqlSafe(sql))
        .fetch_all(owner)
        .await
        .unwrap()
        .into_iter()
        .map(|(t, r)| (TenantId::from_uuid(t), r))
        .collect()
}

async fn setup() -> Setup {
    let db = TestDb::new(&[&saas_core::MIGRATOR, &saas_tenancy::MIGRATOR])
        .await
        .unwrap();
    let owner = db.owner().clone();
    fill(&owner, "items", TENANTS, ROWS_PER_TENANT, true).await;
    fill(&owner, "items_plain", TENANTS, ROWS_PER_TENANT, false).await;
    let mut scale_keys = Vec::new();
    for tenants in [10usize, 1_000, 100_000] {
        let rows = 10;
        fill(&owner, &format!("items_scale_{tenants}"), tenants, rows, true).await;
        scale_keys.push((tenants, keys(&owner, tenants, rows, 4096).await));
    }
    let keys = keys(&owner, TENANTS, ROWS_PER_TENANT, 4096).await;
    let max = 4;
    let pool = |options: sqlx::postgres::PgPoolOptions, max: u32| {
        options.max_connections(max).connect_lazy_with(db.app_options())
    };
    Setup {
        scoped: pool(saas_core::db::pool_options(), max),
        plain: pool(saas_core::db::pool_options(), max),
        single_reset: pool(saas_tenancy::pool_options(), 1),
        single_plain: pool(saas_core::db::pool_options(), 1),
        _db: db,
        keys,
        scale_keys,
    }
}

async fn scoped(pool: &PgPool, table: &str, tenant: TenantId, id: uuid::Uuid) {
    let mut tx = TenantTx::begin(pool, tenant).await.unwrap();
    let sql = format!("SELECT payload FROM {table} WHERE id = $1");
    let row: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .unwrap();
    assert!(row.is_some());
    tx.commit().await.unwrap();
}

async fn plain(pool: &PgPool, tenant: TenantId, id: uuid::Uuid) {
    let mut tx = pool.begin().await.unwrap();
    let row: Option<String> = sqlx::query_scalar("SELECT payload FROM items_plain WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .unwrap();
    assert!(row.is_some());
    tx.commit().await.unwrap();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let setup = rt.block_on(setup());
    let s = &setup;
    let next = AtomicUsize::new(0);
    let pick = |keys: &[(TenantId, uuid::Uuid)]| keys[next.fetch_add(1, Ordering::Relaxed) % keys.len()];
    let pick = &pick;

    // The machine is a small VM whose speed drifts between seconds; to compare like with
    // like, each function times its own operation while the other one runs, untimed, in
    // between. Both see the same conditions, so their ratio is stable even when the
    // absolute numbers move.
    let mut g = c.benchmark_group("tenant_query");
    g.bench_function("tenant_tx", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let (t, id) = pick(&s.keys);
                let start = Instant::now();
                scoped(&s.scoped, "items", t, id).await;
                timed += start.elapsed();
                let (t, id) = pick(&s.keys);
                plain(&s.plain, t, id).await;
            }
            timed
        })
    });
    g.bench_function("plain_tx_where", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let (t, id) = pick(&s.keys);
                scoped(&s.scoped, "items", t, id).await;
                let (t, id) = pick(&s.keys);
                let start = Instant::now();
                plain(&s.plain, t, id).await;
                timed += start.elapsed();
            }
            timed
        })
    });
    g.finish();

    // The ratio a sceptic can trust: A and B alternate inside one loop (same pools, same
    // moment), each call timed on its own; per repetition the ratio of the two medians;
    // reported as the median of the repetitions with their spread.
    let reps: usize = std::env::var("TENANT_QUERY_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let per_rep: usize = std::env::var("TENANT_QUERY_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let ratios = rt.block_on(async {
        let mut ratios = Vec::with_capacity(reps);
        for _ in 0..reps {
            let (mut a, mut b) = (Vec::with_capacity(per_rep), Vec::with_capacity(per_rep));
            for i in 0..per_rep {
                let (t, id) = pick(&s.keys);
                let (t2, id2) = pick(&s.keys);
                // Alternate which goes first, so neither always follows the other.
                if i % 2 == 0 {
                    let start = Instant::now();
                    scoped(&s.scoped, "items", t, id).await;
                    a.push(start.elapsed());
                    let start = Instant::now();
                    plain(&s.plain, t2, id2).await;
                    b.push(start.elapsed());
                } else {
                    let start = Instant::now();
                    plain(&s.plain, t2, id2).await;
                    b.push(start.elapsed());
                    let start = Instant::now();
                    scoped(&s.scoped, "items", t, id).await;
                    a.push(start.elapsed());
                }
            }
            ratios.push(median(&mut a).as_secs_f64() / median(&mut b).as_secs_f64());
        }
        ratios
    });
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    println!("tenant_query: {reps} repetitions of {per_rep} alternated pairs");
    println!(
        "tenant_query_ratio={:.3} min={:.3} max={:.3}",
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1]
    );

    // The pool's safety net clears `app.tenant_id` when a connection is released: one
    // more round trip, after the response. With one connection per pool the next
    // checkout waits for it, so here it is counted in full.
    let mut g = c.benchmark_group("pool_release_reset");
    g.bench_function("tenant_tx_with_release_reset", |b| {
        b.to_async(&rt).iter(|| {
            let (t, id) = pick(&s.keys);
            scoped(&s.single_reset, "items", t, id)
        })
    });
    g.bench_function("tenant_tx_without_release_reset", |b| {
        b.to_async(&rt).iter(|| {
            let (t, id) = pick(&s.keys);
            scoped(&s.single_plain, "items", t, id)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("tenant_query_scale");
    for (tenants, keys) in &s.scale_keys {
        let table = format!("items_scale_{tenants}");
        g.bench_with_input(BenchmarkId::new("tenant_tx", tenants), keys, |b, keys| {
            b.to_async(&rt).iter(|| {
                let (t, id) = pick(keys);
                scoped(&s.scoped, &table, t, id)
            })
        });
    }
    g.finish();
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(10));
    targets = bench
}
criterion_main!(benches);
