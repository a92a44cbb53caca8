//! RBAC checks: saas-authz against casbin-rs (`Enforcer` and `CachedEnforcer`) on the
//! identical `rbac_with_domains` workload: `N` policy rules, N/10 users in N/100 tenants,
//! five roles per tenant with some inheritance, 1,024 fixed-seed checks (allowed and
//! denied) cycled through. Before casbin is measured, the engines are checked to agree (10,000 queries at
//! 1k rules, 2,000 at 10k, 1,100 at 100k: each casbin cache miss is a full evaluation).
//! `hash_probe` is the floor a check cannot beat: one foldhash probe of (tenant, user) → a
//! permission mask and a bit test, over the same queries.
//! `RBAC_SIZES=1k,10k` limits the sizes run; `RBAC_ALONE=1` runs saas-authz (and the
//! probe) without casbin.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "../../benches/interleave.rs"]
mod interleave;
#[path = "../tests/authz/workload.rs"]
mod workload;

use std::hint::black_box;
use std::time::Duration;

use casbin::{CachedApi, CachedEnforcer, CoreApi, DefaultModel, Enforcer, MemoryAdapter, MgmtApi};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use workload::{MODEL, generate, permission};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("rbac_check");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let only = std::env::var("RBAC_SIZES").ok();
    for (label, rules) in [("1k", 1_000), ("10k", 10_000), ("100k", 100_000)] {
        if only.as_deref().is_some_and(|o| !o.split(',').any(|s| s == label)) {
            continue;
        }
        let w = generate(rules, 42);
        let authz = w.authz();
        let principals = w.principals();
        let perms: Vec<_> = (0..50).map(|i| authz.permission(&permission(i)).unwrap()).collect();
        let queries = w.queries(1024, 7);
        println!(
            "rbac_check/{label}: {} policy rules, {} users, {} tenants",
            w.rules,
            w.users.len(),
            w.tenants.len()
        );
        // Both sides get their inputs resolved beforehand (the probe its keys, the check
        // its principal, tenant and permission), so the loop measures the lookup alone.
        let checks: Vec<_> = queries
            .iter()
            .map(|q| (&principals[q.user], w.tenants[q.tenant], perms[q.permission]))
            .collect();
        let mut i = 0usize;
        group.bench_function(BenchmarkId::new("saas_authz", label), |b| {
            b.iter(|| {
                let (principal, tenant, permission) = checks[i & 1023];
                i = i.wrapping_add(1);
                black_box(authz.check(black_box(principal), tenant, permission, None))
            })
        });
        // The physical floor: one foldhash probe of (tenant, user) → a 64-bit permission
        // mask and a bit test, over the same queries (every user's mask in a std HashMap).
        let masks: std::collections::HashMap<(u128, u128), u64, foldhash::fast::FixedState> = w
            .users
            .iter()
            .map(|(user, tenant, _)| {
                let key = (w.tenants[*tenant].as_uuid().as_u128(), user.as_uuid().as_u128());
                (key, 0x5555_5555_5555_5555u64 ^ key.1 as u64)
            })
            .collect();
        let probes: Vec<((u128, u128), u32)> = queries
            .iter()
            .map(|q| {
                let key = (
                    w.tenants[q.tenant].as_uuid().as_u128(),
                    principals[q.user].user_id.as_uuid().as_u128(),
                );
                (key, (q.permission % 64) as u32)
            })
            .collect();
        let mut i = 0usize;
        group.bench_function(BenchmarkId::new("hash_probe", label), |b| {
            b.iter(|| {
                let (key, bit) = probes[i & 1023];
                i = i.wrapping_add(1);
                black_box(masks.get(black_box(&key)).is_some_and(|m| m & (1 << bit) != 0))
            })
        });
        // The ratio the goal is about, from interleaved blocks (criterion's two estimates
        // above are taken seconds apart, and this machine drifts in between).
        let (mut i, mut j) = (0usize, 0usize);
        let r = interleave::ratio(
            41,
            200_000,
            || {
                let (principal, tenant, permission) = checks[i & 1023];
                i = i.wrapping_add(1);
                black_box(authz.check(black_box(principal), tenant, permission, None));
            },
            || {
                let (key, bit) = probes[j & 1023];
                j = j.wrapping_add(1);
                black_box(masks.get(black_box(&key)).is_some_and(|m| m & (1 << bit) != 0));
            },
        );
        println!("rbac_probe_ratio/{label}={r}");
        if std::env::var("RBAC_ALONE").is_ok() {
            continue;
        }
        let (p, g) = w.casbin_rules();
        let (plain, mut cached) = rt.block_on(async {
            let mut plain = Enforcer::new(DefaultModel::from_str(MODEL).await.unwrap(), MemoryAdapter::default())
                .await
                .unwrap();
            plain.add_policies(p.clone()).await.unwrap();
            plain.add_grouping_policies(g.clone()).await.unwrap();
            let mut cached =
                CachedEnforcer::new(DefaultModel::from_str(MODEL).await.unwrap(), MemoryAdapter::default())
                    .await
                    .unwrap();
            cached.set_cache(Box::new(casbin::DefaultCache::new(100_000)));
            cached.add_policies(p).await.unwrap();
            cached.add_grouping_policies(g).await.unwrap();
            (plain, cached)
        });
        let requests: Vec<_> = queries.iter().map(|q| w.casbin_request(*q)).collect();
        // Agreement first, which also warms the cached enforcer with every benchmarked
        // query (the first 1,024 of the same seed). A cache miss costs a full evaluation,
        // so fewer queries are compared at the larger sizes.
        let agree = match rules {
            1_000 => 10_000,
            10_000 => 2_000,
            _ => 1_100,
        };
        let started = std::time::Instant::now();
        for (i, q) in w.queries(agree, 7).into_iter().enumerate() {
            let ours = authz
                .check(&principals[q.user], w.tenants[q.tenant], perms[q.permission], None)
                .allowed();
            let req = w.casbin_request(q);
            assert_eq!(ours, cached.enforce(req.clone()).unwrap());
            if i < 200 || rules <= 1_000 {
                assert_eq!(ours, plain.enforce(req).unwrap());
            }
        }
        println!(
            "rbac_check/{label}: all engines agree on {agree} queries ({:?})",
            started.elapsed()
        );
        for r in &requests {
            cached.enforce_mut(r.clone()).unwrap();
        }
        let mut i = 0usize;
        group.bench_function(BenchmarkId::new("casbin_cached", label), |b| {
            b.iter(|| {
                let r = &requests[i & 1023];
                i = i.wrapping_add(1);
                black_box(cached.enforce(r.clone()).unwrap())
            })
        });
        if rules >= 100_000 {
            group.sample_size(10);
        }
        let mut i = 0usize;
        group.bench_function(BenchmarkId::new("casbin", label), |b| {
            b.iter(|| {
                let r = &requests[i & 1023];
                i = i.wrapping_add(1);
                black_box(plain.enforce(r.clone()).unwrap())
            })
        });
        group.sample_size(100);
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
