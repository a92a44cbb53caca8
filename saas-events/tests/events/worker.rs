use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use saas_core::TenantId;
use saas_events::{
    Backoff, JobContext, JobError, Jobs, Publish, Worker, idempotency, publish, publish_batch, publish_with,
};
use saas_tenancy::{SystemTx, TenantTx};

use crate::{Ping, app, db, platform, until};

fn fast() -> Backoff {
    Backoff {
        base: Duration::from_millis(20),
        max: Duration::from_millis(100),
        jitter: 0.1,
    }
}

#[tokio::test]
async fn publish_commits_with_the_transaction_and_carries_the_tenant() {
    let db = db().await;
    let t = TenantId::new();
    // Rolled back: nothing.
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    publish(
        &mut tx,
        &Ping {
            n: 1,
            key: String::new(),
        },
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    // Committed: one row with the tenant.
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let id = publish(
        &mut tx,
        &Ping {
            n: 2,
            key: String::new(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let rows: Vec<(uuid::Uuid, Option<uuid::Uuid>, serde_json::Value)> =
        sqlx::query_as("SELECT id, tenant_id, payload FROM saas.jobs")
            .fetch_all(db.platform())
            .await
            .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, *id.as_uuid());
    assert_eq!(rows[0].1, Some(*t.as_uuid()));
    assert_eq!(rows[0].2["n"], 2);
    // Platform-level through a SystemTx: no tenant.
    let p = platform(&db, 2).await;
    let mut tx = SystemTx::begin(&p, "test").await.unwrap();
    publish(
        &mut tx,
        &Ping {
            n: 3,
            key: String::new(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let platform_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.jobs WHERE tenant_id IS NULL")
        .fetch_one(db.platform())
        .await
        .unwrap();
    assert_eq!(platform_rows, 1);
    // The application role cannot change or claim jobs, and sees only its tenant's.
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    assert!(
        sqlx::query("UPDATE saas.jobs SET state = 'dead'")
            .execute(&mut *tx)
            .await
            .is_err()
    );
    drop(tx);
    let mut tx = TenantTx::begin(db.app(), TenantId::new()).await.unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.jobs")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, 0);
    // Unique keys: a second pending job with the key is not inserted.
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let a = publish_with(
        &mut tx,
        &Ping {
            n: 4,
            key: String::new(),
        },
        &Publish::new().unique("nightly"),
    )
    .await
    .unwrap();
    let b = publish_with(
        &mut tx,
        &Ping {
            n: 5,
            key: String::new(),
        },
        &Publish::new().unique("nightly"),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(a.is_some() && b.is_none());
}

#[tokio::test]
async fn concurrent_workers_run_each_event_once_in_its_tenant_transaction() {
    let db = db().await;
    let tenants: Vec<TenantId> = (0..5).map(|_| TenantId::new()).collect();
    for t in &tenants {
        let mut tx = TenantTx::begin(db.app(), *t).await.unwrap();
        let events: Vec<Ping> = (0..400).map(|n| Ping { n, key: String::new() }).collect();
        publish_batch(&mut tx, &events, &Publish::new()).await.unwrap();
        tx.commit().await.unwrap();
    }
    let seen: Arc<Mutex<HashMap<(TenantId, u32), u32>>> = Arc::default();
    let receipts = Arc::new(AtomicU32::new(0));
    let mut handles = Vec::new();
    for _ in 0..3 {
        let seen = Arc::clone(&seen);
        let receipts = Arc::clone(&receipts);
        let h = Worker::builder(platform(&db, 6).await)
            .app_pool(app(&db, 8).await)
            .loops(2)
            .batch(50)
            .poll_interval(Duration::from_millis(50))
            .handle(move |ctx: JobContext, e: Ping| {
                let seen = Arc::clone(&seen);
                let receipts = Arc::clone(&receipts);
                async move {
                    let tenant = ctx.tenant().unwrap();
                    *seen.lock().unwrap().entry((tenant, e.n)).or_default() += 1;
                    // The handler's transaction is its tenant's: it sees only that tenant's jobs.
                    let mut tx = ctx.tenant_tx().await?;
                    let other: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.jobs WHERE tenant_id <> $1")
                        .bind(tenant)
                        .fetch_one(&mut *tx)
                        .await?;
                    assert_eq!(other, 0);
                    if idempotency::once(&mut tx, &ctx, "count").await? {
                        receipts.fetch_add(1, Ordering::SeqCst);
                    }
                    tx.commit().await?;
                    assert!(
                        ctx.system_tx("nope").await.is_err(),
                        "a tenant job has no system transaction"
                    );
                    Ok(())
                }
            })
            .start()
            .await
            .unwrap();
        handles.push(h);
    }
    let done = until(Duration::from_secs(30), async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM saas.jobs_done")
            .fetch_one(db.platform())
            .await
            .unwrap()
            == 2000
    })
    .await;
    for h in handles {
        h.shutdown(Duration::from_secs(5)).await;
    }
    assert!(done, "not all jobs finished");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2000);
        assert!(seen.values().all(|c| *c == 1), "some event ran twice");
    }
    assert_eq!(receipts.load(Ordering::SeqCst), 2000);
    let rc: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.job_receipts")
        .fetch_one(db.platform())
        .await
        .unwrap();
    assert_eq!(rc, 2000);
}

#[tokio::test]
async fn retries_back_off_then_dead_letter_and_replay() {
    let db = db().await;
    let p = platform(&db, 6).await;
    let t = TenantId::new();
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let flaky = publish(
        &mut tx,
        &Ping {
            n: 1,
            key: "flaky".into(),
        },
    )
    .await
    .unwrap();
    let doomed = publish_with(
        &mut tx,
        &Ping {
            n: 2,
            key: "always".into(),
        },
        &Publish::new().max_attempts(3),
    )
    .await
    .unwrap()
    .unwrap();
    let fatal = publish(
        &mut tx,
        &Ping {
            n: 3,
            key: "fatal".into(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let attempts: Arc<Mutex<HashMap<u32, Vec<(i32, Instant)>>>> = Arc::default();
    let healed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (a2, h2) = (Arc::clone(&attempts), Arc::clone(&healed));
    let worker = Worker::builder(p.clone())
        .backoff(Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.0,
        })
        .poll_interval(Duration::from_millis(20))
        .handle(move |ctx: JobContext, e: Ping| {
            let (a2, h2) = (Arc::clone(&a2), Arc::clone(&h2));
            async move {
                a2.lock()
                    .unwrap()
                    .entry(e.n)
                    .or_default()
                    .push((ctx.attempt(), Instant::now()));
                match e.key.as_str() {
                    "flaky" if ctx.attempt() < 3 => Err(JobError::retry("not yet")),
                    "always" if !h2.load(Ordering::SeqCst) => Err(JobError::retry("broken")),
                    "fatal" => Err(JobError::fatal("cannot ever work")),
                    _ => Ok(()),
                }
            }
        })
        .start()
        .await
        .unwrap();
    let jobs = Jobs::new(p.clone());
    assert!(
        until(Duration::from_secs(10), async || jobs
            .state(Some(t), flaky)
            .await
            .unwrap()
            .0
            == "done")
        .await
    );
    assert!(
        until(Duration::from_secs(10), async || jobs
            .state(Some(t), doomed)
            .await
            .unwrap()
            .0
            == "dead")
        .await
    );
    assert_eq!(
        jobs.state(Some(t), fatal).await.unwrap(),
        ("dead".to_owned(), 1),
        "fatal: dead at the first attempt"
    );
    {
        let a = attempts.lock().unwrap();
        let f = &a[&1];
        assert_eq!(f.iter().map(|x| x.0).collect::<Vec<_>>(), [1, 2, 3]);
        // Exponential: ~100 ms, then ~200 ms.
        let gap1 = f[1].1 - f[0].1;
        let gap2 = f[2].1 - f[1].1;
        assert!(gap1 >= Duration::from_millis(90), "{gap1:?}");
        assert!(gap2 >= Duration::from_millis(190), "{gap2:?}");
        assert_eq!(a[&2].len(), 3);
    }
    let dead = jobs.dead("default", 10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert!(
        dead.iter()
            .any(|d| d.id == doomed && d.last_error.as_deref() == Some("broken") && d.tenant == Some(t))
    );
    // Fix the cause, replay: it runs again and succeeds.
    healed.store(true, Ordering::SeqCst);
    jobs.replay(Some(t), doomed).await.unwrap();
    assert!(
        until(Duration::from_secs(10), async || jobs
            .state(Some(t), doomed)
            .await
            .unwrap()
            .0
            == "done")
        .await
    );
    assert!(matches!(
        jobs.replay(Some(t), doomed).await,
        Err(saas_events::JobsError::NotFound)
    ));
    worker.shutdown(Duration::from_secs(1)).await;
    // Pruning removes finished rows only.
    let pruned = jobs
        .prune(chrono::Utc::now() + chrono::Duration::seconds(1), 1)
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    assert_eq!(jobs.dead("default", 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn per_key_order_priorities_and_run_at() {
    let db = db().await;
    let t = TenantId::new();
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    for n in 0..200u32 {
        let key = format!("order-{}", n % 4);
        publish_with(&mut tx, &Ping { n, key: key.clone() }, &Publish::new().ordered_by(key))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let seen: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let s2 = Arc::clone(&seen);
    let mut handles = Vec::new();
    for _ in 0..2 {
        let s2 = Arc::clone(&s2);
        handles.push(
            Worker::builder(platform(&db, 5).await)
                .loops(2)
                .concurrency(16)
                .backoff(fast())
                .poll_interval(Duration::from_millis(20))
                .handle(move |_ctx: JobContext, e: Ping| {
                    let s2 = Arc::clone(&s2);
                    async move {
                        // Jitter so that unordered execution would show.
                        tokio::time::sleep(Duration::from_millis(u64::from(e.n % 3))).await;
                        s2.lock().unwrap().entry(e.key).or_default().push(e.n);
                        Ok(())
                    }
                })
                .start()
                .await
                .unwrap(),
        );
    }
    assert!(
        until(Duration::from_secs(30), async || seen
            .lock()
            .unwrap()
            .values()
            .map(Vec::len)
            .sum::<usize>()
            == 200)
        .await
    );
    for h in handles {
        h.shutdown(Duration::from_secs(1)).await;
    }
    for (key, ns) in seen.lock().unwrap().iter() {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, &sorted, "{key} out of order");
        assert_eq!(ns.len(), 50);
    }

    // Priorities within a tenant, and run_at.
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    publish_with(
        &mut tx,
        &Ping {
            n: 1,
            key: "low".into(),
        },
        &Publish::new().priority(-5),
    )
    .await
    .unwrap();
    publish_with(
        &mut tx,
        &Ping {
            n: 2,
            key: "high".into(),
        },
        &Publish::new().priority(5),
    )
    .await
    .unwrap();
    let later = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    publish_with(
        &mut tx,
        &Ping {
            n: 3,
            key: "later".into(),
        },
        &Publish::new().at(later),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let order: Arc<Mutex<Vec<(String, chrono::DateTime<chrono::Utc>)>>> = Arc::default();
    let o2 = Arc::clone(&order);
    let h = Worker::builder(platform(&db, 4).await)
        .batch(1)
        .concurrency(1)
        .poll_interval(Duration::from_millis(20))
        .handle(move |_ctx: JobContext, e: Ping| {
            let o2 = Arc::clone(&o2);
            async move {
                o2.lock().unwrap().push((e.key, chrono::Utc::now()));
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    assert!(until(Duration::from_secs(5), async || order.lock().unwrap().len() == 3).await);
    h.shutdown(Duration::from_secs(1)).await;
    let order = order.lock().unwrap();
    assert_eq!(
        order.iter().map(|o| o.0.as_str()).collect::<Vec<_>>(),
        ["high", "low", "later"]
    );
    assert!(order[2].1 >= later, "ran before its time");
}

#[tokio::test]
async fn one_tenants_flood_does_not_delay_another_tenant() {
    let db = db().await;
    let (flood, quiet) = (TenantId::new(), TenantId::new());
    let t0 = Instant::now();
    for chunk in 0..10u32 {
        let mut tx = TenantTx::begin(db.app(), flood).await.unwrap();
        let events: Vec<Ping> = (0..10_000)
            .map(|n| Ping {
                n: chunk * 10_000 + n,
                key: String::new(),
            })
            .collect();
        publish_batch(&mut tx, &events, &Publish::new()).await.unwrap();
        tx.commit().await.unwrap();
    }
    println!("queued 100,000 events for one tenant in {:?}", t0.elapsed());
    let quiet_started: Arc<Mutex<Option<Instant>>> = Arc::default();
    let flood_done = Arc::new(AtomicU32::new(0));
    let (q2, f2) = (Arc::clone(&quiet_started), Arc::clone(&flood_done));
    let h = Worker::builder(platform(&db, 6).await)
        .loops(2)
        .delete_finished()
        .handle(move |ctx: JobContext, _e: Ping| {
            let (q2, f2) = (Arc::clone(&q2), Arc::clone(&f2));
            async move {
                if ctx.tenant() == Some(quiet) {
                    *q2.lock().unwrap() = Some(Instant::now());
                } else {
                    f2.fetch_add(1, Ordering::Relaxed);
                }
                // Some work per job, so the flood takes a while.
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    // Let the flood get going, then the quiet tenant publishes one event.
    assert!(
        until(Duration::from_secs(10), async || flood_done.load(Ordering::Relaxed)
            > 2_000)
        .await
    );
    let published = Instant::now();
    let mut tx = TenantTx::begin(db.app(), quiet).await.unwrap();
    publish(
        &mut tx,
        &Ping {
            n: 0,
            key: String::new(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(
        until(Duration::from_secs(10), async || quiet_started
            .lock()
            .unwrap()
            .is_some())
        .await
    );
    let delay = quiet_started.lock().unwrap().unwrap() - published;
    let flood_left = 100_000 - flood_done.load(Ordering::Relaxed);
    h.shutdown(Duration::from_secs(2)).await;
    println!(
        "the quiet tenant's event started {delay:?} after publishing, with ~{flood_left} of the flood still queued"
    );
    // The bound: one claim cycle plus one batch of the flood (~100 jobs), well under 1 s.
    assert!(delay < Duration::from_millis(1000), "{delay:?}");
    assert!(
        flood_left > 50_000,
        "the flood should still be queued when the quiet event ran"
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_or_hands_back_and_schedules_fire_once() {
    let db = db().await;
    let p = platform(&db, 6).await;
    let t = TenantId::new();
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let quick = publish(
        &mut tx,
        &Ping {
            n: 1,
            key: "quick".into(),
        },
    )
    .await
    .unwrap();
    let slow = publish(
        &mut tx,
        &Ping {
            n: 2,
            key: "slow".into(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let h = Worker::builder(p.clone())
        .handle(|_ctx: JobContext, e: Ping| async move {
            let d = if e.key == "slow" { 30_000 } else { 200 };
            tokio::time::sleep(Duration::from_millis(d)).await;
            Ok(())
        })
        .start()
        .await
        .unwrap();
    let jobs = Jobs::new(p.clone());
    assert!(
        until(Duration::from_secs(5), async || jobs
            .state(Some(t), slow)
            .await
            .unwrap()
            .0
            == "running")
        .await
    );
    h.shutdown(Duration::from_millis(500)).await;
    assert_eq!(
        jobs.state(Some(t), quick).await.unwrap().0,
        "done",
        "in-flight work within the grace finishes"
    );
    assert_eq!(
        jobs.state(Some(t), slow).await.unwrap(),
        ("pending".to_owned(), 0),
        "the rest is handed back, attempt not counted"
    );

    // A schedule every second, with two worker processes: each tick enqueues once.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Tick;
    impl saas_events::Event for Tick {
        const KIND: &'static str = "test.tick";
    }
    let ticks = Arc::new(AtomicU32::new(0));
    let mut hs = Vec::new();
    for _ in 0..2 {
        let t2 = Arc::clone(&ticks);
        hs.push(
            Worker::builder(platform(&db, 4).await)
                .poll_interval(Duration::from_millis(20))
                .handle(move |ctx: JobContext, _t: Tick| {
                    let t2 = Arc::clone(&t2);
                    async move {
                        assert!(ctx.tenant().is_none());
                        t2.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                })
                .schedule("every-second", "* * * * * *", || Tick)
                .unwrap()
                .start()
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for h in hs {
        h.shutdown(Duration::from_secs(1)).await;
    }
    let keys: Vec<(Option<String>,)> = sqlx::query_as(
        "SELECT unique_key FROM saas.jobs WHERE kind = 'test.tick' \
         UNION ALL SELECT unique_key FROM saas.jobs_done WHERE kind = 'test.tick'",
    )
    .fetch_all(db.platform())
    .await
    .unwrap();
    let enqueued = keys.len();
    let mut distinct: Vec<_> = keys.iter().map(|k| k.0.clone().unwrap()).collect();
    distinct.sort();
    distinct.dedup();
    assert!((2..=4).contains(&enqueued), "{enqueued} ticks in 3.5 s");
    assert_eq!(distinct.len(), enqueued, "a tick was enqueued twice: {keys:?}");
    assert!(ticks.load(Ordering::SeqCst) as usize <= enqueued);
    // A worker with a retention prunes the record by itself.
    let pruner = Worker::builder(platform(&db, 3).await)
        .keep_finished_for(Duration::ZERO)
        .start()
        .await
        .unwrap();
    assert!(
        until(Duration::from_secs(5), async || {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM saas.jobs_done")
                .fetch_one(db.platform())
                .await
                .unwrap()
                == 0
        })
        .await
    );
    pruner.shutdown(Duration::from_secs(1)).await;

    assert!(ticks.load(Ordering::SeqCst) >= 2);
    assert!(
        saas_events::Worker::builder(p)
            .schedule("bad", "not a cron", || Tick)
            .is_err()
    );
}

#[tokio::test]
async fn readiness_reports_a_stalled_worker() {
    use saas_core::health::{HealthCheck, Heartbeats};
    let db = db().await;
    let beats = Heartbeats::new(Duration::from_millis(400));
    let t = TenantId::new();
    let h = Worker::builder(platform(&db, 4).await)
        .poll_interval(Duration::from_millis(50))
        .heartbeats(beats.clone())
        .handle(|_ctx: JobContext, _e: Ping| async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok(())
        })
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(beats.check().await.ok, "an idle worker keeps beating");
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    publish(
        &mut tx,
        &Ping {
            n: 1,
            key: String::new(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(
        until(Duration::from_secs(3), async || !beats.check().await.ok).await,
        "a worker stuck in a job goes stale"
    );
    assert!(
        until(Duration::from_secs(3), async || beats.check().await.ok).await,
        "and recovers when the job ends"
    );
    h.shutdown(Duration::from_secs(1)).await;
    assert!(beats.check().await.ok, "a worker that stopped on purpose is forgotten");
}

/// A handler that panics is a failed attempt: retried, then dead-lettered with the panic's
/// message; the loop lives on and runs the other jobs.
#[tokio::test]
async fn a_panicking_handler_is_a_failed_attempt_not_a_dead_worker() {
    let db = db().await;
    let t = TenantId::new();
    let p = platform(&db, 4).await;
    let ran = Arc::new(AtomicU32::new(0));
    let r = Arc::clone(&ran);
    let h = Worker::builder(p.clone())
        .poll_interval(Duration::from_millis(50))
        .backoff(fast())
        .handle(move |_ctx: JobContext, e: Ping| {
            let r = Arc::clone(&r);
            async move {
                if e.key == "boom" {
                    panic!("the handler exploded on {}", e.n);
                }
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let boom = publish_with(
        &mut tx,
        &Ping {
            n: 7,
            key: "boom".into(),
        },
        &Publish::new().max_attempts(3),
    )
    .await
    .unwrap()
    .unwrap();
    tx.commit().await.unwrap();
    let jobs = Jobs::new(p);
    assert!(
        until(Duration::from_secs(10), async || jobs
            .state(Some(t), boom)
            .await
            .unwrap()
            .0
            == "dead")
        .await,
        "the panicking job was not dead-lettered"
    );
    assert_eq!(jobs.state(Some(t), boom).await.unwrap().1, 3, "three attempts");
    let dead = jobs.dead("default", 10).await.unwrap();
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("panicked") && e.contains("exploded on 7")),
        "{dead:?}"
    );
    // The same loop still works.
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    publish(
        &mut tx,
        &Ping {
            n: 8,
            key: String::new(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(until(Duration::from_secs(5), async || ran.load(Ordering::SeqCst) == 1).await);
    h.shutdown(Duration::from_secs(1)).await;
}

/// A handler that never finishes loses its attempt at the job timeout; the others in its
/// batch are recorded, and the job is retried (here it then succeeds).
#[tokio::test]
async fn a_handler_blocking_past_its_time_fails_the_attempt_and_the_batch_goes_on() {
    let db = db().await;
    let t = TenantId::new();
    let p = platform(&db, 4).await;
    let h = Worker::builder(p.clone())
        .poll_interval(Duration::from_millis(50))
        .visibility_timeout(Duration::from_secs(1))
        .job_timeout(Duration::from_millis(500))
        .backoff(fast())
        .handle(move |ctx: JobContext, e: Ping| async move {
            if e.key == "stuck" && ctx.attempt() == 1 {
                std::future::pending::<()>().await;
            }
            Ok(())
        })
        .start()
        .await
        .unwrap();
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let stuck = publish(
        &mut tx,
        &Ping {
            n: 1,
            key: "stuck".into(),
        },
    )
    .await
    .unwrap();
    let quick = publish(
        &mut tx,
        &Ping {
            n: 2,
            key: String::new(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let jobs = Jobs::new(p);
    assert!(
        until(Duration::from_secs(10), async || jobs
            .state(Some(t), stuck)
            .await
            .unwrap()
            .0
            == "done")
        .await
    );
    assert_eq!(jobs.state(Some(t), quick).await.unwrap(), ("done".to_owned(), 1));
    assert_eq!(
        jobs.state(Some(t), stuck).await.unwrap(),
        ("done".to_owned(), 2),
        "timed out once, then done"
    );
    h.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_job_published_from_sql_is_the_same_job_as_one_published_from_rust() {
    let db = db().await;
    let t = TenantId::new();
    // From Rust and from SQL, in the same tenant transaction.
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let from_rust = publish(
        &mut tx,
        &Ping {
            n: 1,
            key: String::new(),
        },
    )
    .await
    .unwrap();
    let from_sql: uuid::Uuid =
        sqlx::query_scalar("SELECT saas.publish_job('default', $1, jsonb_build_object('n', 2, 'key', ''))")
            .bind(<Ping as saas_events::Event>::KIND)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    // The application role cannot publish for another tenant, nor a platform job.
    let other = TenantId::new();
    for tenant in [Some(other), None] {
        sqlx::query("SAVEPOINT attack").execute(&mut *tx).await.unwrap();
        let err = sqlx::query("SELECT saas.publish_job('default', 'x.y', '{}', $1)")
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("row-level security"), "{err}");
        sqlx::query("ROLLBACK TO SAVEPOINT attack")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(from_sql.get_version_num(), 7, "a time-ordered id like JobId's");
    assert!(from_sql > *from_rust.as_uuid(), "published later, sorts later");
    // Every column a worker reads is the same but the id and payload.
    let rows: Vec<(String, String, Option<uuid::Uuid>, i16, i32, String, i32)> = sqlx::query_as(
        "SELECT queue, kind, tenant_id, priority, max_attempts, state, attempts FROM saas.jobs ORDER BY id",
    )
    .fetch_all(db.platform())
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0], rows[1]);
    // And a worker runs it like any other, in its tenant.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let w = Worker::builder(platform(&db, 4).await)
        .app_pool(db.app().clone())
        .handle(move |ctx: JobContext, p: Ping| {
            let s = Arc::clone(&s);
            async move {
                s.lock().unwrap().push((ctx.tenant(), p.n));
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    assert!(until(Duration::from_secs(10), async || seen.lock().unwrap().len() == 2).await);
    w.shutdown(Duration::from_secs(5)).await;
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|(_, n)| *n);
    assert_eq!(seen, vec![(Some(t), 1), (Some(t), 2)]);
}
