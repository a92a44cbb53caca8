//! Entitlement checks from the in-memory set: `boolean`, `limit` and `metered`, each over
//! snapshots of 10, 1,000 and 10,000 tenants × 20 features (plans, overrides, usage), the
//! tenant changing every call (16,384 fixed-seed draws over all of them); and `sql_twin`,
//! the same decision as one primary-key query on the local PostgreSQL (a table holding
//! every tenant's materialised value and usage per feature), for scale.
//!
//! ```text
//! cargo bench -p saas-billing --bench entitlements
//! ```
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use saas_billing::catalog::{Catalog, Feature, Plan, Price};
use saas_billing::entitlements::{Entitlements, Grant, GrantKind, GrantValue, SubscriptionState, TenantState};
use saas_billing::{AccessPolicy, SubscriptionStatus};
use saas_core::TenantId;
use saas_core::clock::{Clock, ManualClock};

/// Three plans × 20 features: 7 switches, 7 limits, 6 metered.
fn catalog() -> Catalog {
    let mut plans = Vec::new();
    for (i, key) in ["free", "pro", "business"].iter().enumerate() {
        let mut p = Plan::new(key);
        if i > 0 {
            p = p.price(Price::monthly(&format!("{key}_monthly"), 1000 * i as i64));
        }
        for f in 0..20u64 {
            let name = format!("feature_{f:02}");
            p = match f % 3 {
                0 if i > 0 || f < 6 => p.feature(&name, Feature::On),
                0 => p,
                1 => p.feature(&name, Feature::Limit(10 * (i as u64 + 1) + f)),
                _ => p.feature(&name, Feature::metered_monthly(1_000 * (i as u64 + 1))),
            };
        }
        plans.push(p);
    }
    plans
        .into_iter()
        .fold(Catalog::new("eur"), Catalog::plan)
        .validate()
        .unwrap()
}

/// Tenants checked per size, drawn at random from all of them: at 10,000 tenants each is
/// visited, so the table and the rows do not sit in a warm cache the way a small working
/// set would.
const PICKS: usize = 16_384;

/// A tiny fixed-seed generator (xorshift), so every run checks the same tenants.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn set(tenants: usize, clock: &ManualClock) -> (Entitlements, Vec<TenantId>) {
    let e = Entitlements::new(Arc::new(catalog()), AccessPolicy::new("free"), Arc::new(clock.clone()));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let now = clock.now();
    let ids: Vec<TenantId> = (0..tenants).map(|_| TenantId::new()).collect();
    for t in &ids {
        let plan = ["free", "pro", "business"][(rng.next() % 3) as usize];
        let mut state = TenantState {
            subscription: (plan != "free").then(|| SubscriptionState {
                status: SubscriptionStatus::Active,
                since: now,
                price_lookup_key: Some(format!("{plan}_monthly")),
                period_start: Some(now),
            }),
            ..TenantState::default()
        };
        if rng.next().is_multiple_of(4) {
            state.grants.push(Grant {
                feature: "feature_01".into(),
                kind: GrantKind::Override,
                value: GrantValue::Amount(500),
                starts_at: now,
                ends_at: None,
            });
        }
        state.usage.push(("feature_02".into(), now, rng.next() % 2_000));
        e.put(*t, state);
        e.set_count(*t, "feature_01", rng.next() % 40);
    }
    (e, ids)
}

fn bench(c: &mut Criterion) {
    let clock = ManualClock::new(Utc::now());
    let mut group = c.benchmark_group("entitlement_check");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut biggest = None;
    for size in [10usize, 1_000, 10_000] {
        let (e, ids) = set(size, &clock);
        let mut rng = Rng(42);
        let picks: Vec<TenantId> = (0..PICKS).map(|_| ids[(rng.next() % size as u64) as usize]).collect();
        for (name, feature, amount) in [
            ("boolean", "feature_00", 0u64),
            ("limit", "feature_01", 1),
            ("metered", "feature_02", 1),
        ] {
            let mut i = 0usize;
            group.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter(|| {
                    let t = picks[i % PICKS];
                    i = i.wrapping_add(1);
                    black_box(e.check(black_box(t), black_box(feature), amount))
                })
            });
            // The same with the feature resolved once (`Entitlements::feature`).
            let key = e.feature(feature).unwrap();
            group.bench_function(BenchmarkId::new(format!("{name}_key"), size), |b| {
                b.iter(|| {
                    let t = picks[i % PICKS];
                    i = i.wrapping_add(1);
                    black_box(e.check_key(black_box(t), black_box(key), amount))
                })
            });
        }
        if size == 10_000 {
            biggest = Some((e, picks));
        }
    }

    // The SQL twin: the decision's inputs materialised per (tenant, feature), one
    // primary-key lookup per check, on a database of its own.
    let (e, picks) = biggest.unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt
        .block_on(saas_core::testkit::TestDb::new(&[&saas_core::MIGRATOR]))
        .expect("the SQL twin needs PostgreSQL (DATABASE_URL)");
    let pool = db.owner().clone();
    rt.block_on(async {
        sqlx::query(
            "CREATE TABLE bench_entitlements (tenant_id uuid, feature text COLLATE \"C\", value bigint, used bigint, \
             PRIMARY KEY (tenant_id, feature))",
        )
        .execute(&pool)
        .await
        .unwrap();
        let mut rows = Vec::new();
        for t in &picks {
            let d = e.check(*t, "feature_01", 0);
            rows.push((*t.as_uuid(), d.limit.unwrap_or(0) as i64, d.used as i64));
        }
        rows.sort();
        rows.dedup();
        for chunk in rows.chunks(500) {
            let (ids, values, used): (Vec<_>, Vec<_>, Vec<_>) =
                chunk
                    .iter()
                    .fold((Vec::new(), Vec::new(), Vec::new()), |mut acc, (a, b, c)| {
                        acc.0.push(*a);
                        acc.1.push(*b);
                        acc.2.push(*c);
                        acc
                    });
            sqlx::query(
                "INSERT INTO bench_entitlements SELECT t, 'feature_01', v, u \
                 FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS x(t, v, u)",
            )
            .bind(ids)
            .bind(values)
            .bind(used)
            .execute(&pool)
            .await
            .unwrap();
        }
        sqlx::query("ANALYZE bench_entitlements").execute(&pool).await.unwrap();
    });
    let mut i = 0usize;
    group.bench_function(BenchmarkId::new("sql_twin", 10_000), |b| {
        b.to_async(&rt).iter(|| {
            let t = picks[i % PICKS];
            i = i.wrapping_add(1);
            let pool = pool.clone();
            async move {
                let (value, used): (i64, i64) = sqlx::query_as(
                    "SELECT value, used FROM bench_entitlements WHERE tenant_id = $1 AND feature = 'feature_01'",
                )
                .bind(t)
                .fetch_one(&pool)
                .await
                .unwrap();
                black_box(used < value)
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
