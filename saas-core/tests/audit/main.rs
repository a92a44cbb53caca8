//! The audit log against the real PostgreSQL, as the non-superuser application role.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use chrono::{Duration, TimeZone, Utc};
use saas_core::audit::{self, Actor, AuditError, AuditQuery, AuditRecord, BrokenReason, RequestContext};
use saas_core::clock::{Clock, ManualClock};
use saas_core::testkit::TestDb;
use saas_core::{TenantId, UserId};
use serde_json::json;

async fn db() -> TestDb {
    TestDb::new(&[&saas_core::MIGRATOR]).await.expect("test database")
}

fn rec(tenant: TenantId, action: &str) -> AuditRecord {
    AuditRecord::new(tenant, Actor::User(UserId::new()), action).unwrap()
}

async fn write(db: &TestDb, tenant: TenantId, records: impl IntoIterator<Item = AuditRecord>) {
    let mut tx = TestDb::begin_as(db.app(), tenant).await.unwrap();
    for r in records {
        audit::record(&mut tx, &r).await.unwrap();
    }
    tx.commit().await.unwrap();
}

async fn verify(db: &TestDb, tenant: TenantId) -> audit::ChainReport {
    let mut tx = TestDb::begin_as(db.app(), tenant).await.unwrap();
    audit::verify_chain(&mut tx, tenant).await.unwrap()
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned())
}

#[tokio::test]
async fn tests_run_as_a_role_that_cannot_bypass_rls() {
    let db = db().await;
    let (superuser, bypass): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            .fetch_one(db.app())
            .await
            .unwrap();
    assert!(!superuser && !bypass);
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = current_user",
    )
    .fetch_one(db.app())
    .await
    .unwrap();
    assert_eq!(owned, 0, "the application role owns nothing");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.core_migrations")
        .fetch_one(db.owner())
        .await
        .unwrap();
    assert!(applied >= 1);
}

#[tokio::test]
async fn chain_of_a_tenant_verifies_and_records_read_back() {
    let db = db().await;
    let t = TenantId::new();
    let user = UserId::new();
    let ctx = RequestContext::new()
        .ip("203.0.113.9".parse().unwrap())
        .user_agent("curl/8")
        .request_id("req-1");
    let meta =
        json!({"before": {"role": "member", "n": 1.5}, "after": {"role": "admin", "n": -0.0}, "z": [1, "a", null]});
    let mut tx = TestDb::begin_as(db.app(), t).await.unwrap();
    let first = audit::record(
        &mut tx,
        &AuditRecord::new(t, Actor::User(user), "member.role_changed")
            .unwrap()
            .target("membership", "m-1")
            .context(ctx.clone())
            .metadata(meta),
    )
    .await
    .unwrap();
    for i in 0..4 {
        audit::record(&mut tx, &rec(t, "project.deleted").target("project", i))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(first.seq, 1);

    let report = verify(&db, t).await;
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.checked, 5);

    let mut tx = TestDb::begin_as(db.app(), t).await.unwrap();
    let page = audit::query(&mut tx, t, &AuditQuery::new().action("member.role_changed"))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    let e = &page.items[0];
    assert_eq!(e.actor, Actor::User(user));
    assert_eq!(e.context, ctx);
    assert_eq!(e.target, Some(("membership".into(), "m-1".into())));
    assert_eq!(e.metadata["after"]["role"], "admin");
    assert_eq!(e.hash, first.hash);
}

#[tokio::test]
async fn records_are_invisible_across_tenants_and_need_a_tenant() {
    let db = db().await;
    let (a, b) = (TenantId::new(), TenantId::new());
    write(&db, a, (0..3).map(|_| rec(a, "secret.read"))).await;
    write(&db, b, [rec(b, "project.created")]).await;

    // B sees only its own row, even when asking for A's explicitly.
    let mut tx = TestDb::begin_as(db.app(), b).await.unwrap();
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.audit_log")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(all, 1);
    let page = audit::query(&mut tx, a, &AuditQuery::new()).await.unwrap();
    assert!(page.items.is_empty());
    let report = audit::verify_chain(&mut tx, a).await.unwrap();
    assert_eq!(report.checked, 0);
    // Writing A's record from B's scope is refused by row-level security.
    let err = audit::record(&mut tx, &rec(a, "forged.entry")).await.unwrap_err();
    let AuditError::Database(e) = err else {
        panic!("expected a database error")
    };
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");
    drop(tx);

    // Without a tenant there are no rows and no writes (fail closed).
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.audit_log")
        .fetch_one(db.app())
        .await
        .unwrap();
    assert_eq!(none, 0);
    let mut conn = db.app().acquire().await.unwrap();
    assert!(audit::record(&mut conn, &rec(a, "no.scope")).await.is_err());
    // The owner is subject to the policy too (FORCE ROW LEVEL SECURITY).
    let owner_sees: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.audit_log")
        .fetch_one(db.owner())
        .await
        .unwrap();
    assert_eq!(owner_sees, 0);
}

#[tokio::test]
async fn the_application_role_cannot_update_or_delete() {
    let db = db().await;
    let t = TenantId::new();
    write(&db, t, [rec(t, "invoice.paid")]).await;
    for sql in [
        "UPDATE saas.audit_log SET action = 'x.y'",
        "DELETE FROM saas.audit_log",
        "TRUNCATE saas.audit_log",
    ] {
        let mut tx = TestDb::begin_as(db.app(), t).await.unwrap();
        let err = sqlx::query(sql).execute(&mut *tx).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{sql}: {err}");
    }
    // Even the owner cannot update: the table is append-only.
    let mut tx = TestDb::begin_as(db.owner(), t).await.unwrap();
    let err = sqlx::query("UPDATE saas.audit_log SET action = 'x.y'")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err}");
    assert!(verify(&db, t).await.is_intact());
}

/// Runs `sql` as the owner with the append-only trigger off: an attacker with the
/// owner's credentials.
async fn tamper(db: &TestDb, tenant: TenantId, sql: &'static str) {
    let mut tx = TestDb::begin_as(db.owner(), tenant).await.unwrap();
    sqlx::query("ALTER TABLE saas.audit_log DISABLE TRIGGER audit_log_append_only")
        .execute(&mut *tx)
        .await
        .unwrap();
    let n = sqlx::query(sql).execute(&mut *tx).await.unwrap().rows_affected();
    assert_eq!(n, 1, "{sql}");
    sqlx::query("ALTER TABLE saas.audit_log ENABLE TRIGGER audit_log_append_only")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn tampering_with_one_row_is_detected_at_that_row() {
    let db = db().await;
    let (t, other) = (TenantId::new(), TenantId::new());
    write(
        &db,
        t,
        (0..6).map(|i| rec(t, "file.downloaded").metadata(json!({"file": i}))),
    )
    .await;
    write(&db, other, (0..3).map(|_| rec(other, "file.downloaded"))).await;
    assert!(verify(&db, t).await.is_intact());

    tamper(
        &db,
        t,
        "UPDATE saas.audit_log SET metadata = '{\"file\": 99}' WHERE seq = 3",
    )
    .await;
    let report = verify(&db, t).await;
    let broken = report.first_broken.expect("tampering is detected");
    assert_eq!(broken.seq, 3);
    assert_eq!(broken.reason, BrokenReason::ContentAltered);
    // The other tenant's chain is untouched.
    assert!(verify(&db, other).await.is_intact());
}

#[tokio::test]
async fn altered_actor_time_or_link_is_detected_at_that_row() {
    let db = db().await;
    let t = TenantId::new();
    write(&db, t, (0..5).map(|_| rec(t, "key.created"))).await;
    tamper(
        &db,
        t,
        "UPDATE saas.audit_log SET occurred_at = occurred_at - interval '1 day' WHERE seq = 2",
    )
    .await;
    assert_eq!(verify(&db, t).await.first_broken.map(|b| b.seq), Some(2));

    let t = TenantId::new();
    write(&db, t, (0..5).map(|_| rec(t, "key.created"))).await;
    tamper(&db, t, "UPDATE saas.audit_log SET prev_hash = hash WHERE seq = 4").await;
    assert_eq!(verify(&db, t).await.first_broken.map(|b| b.seq), Some(4));
}

#[tokio::test]
async fn a_removed_row_is_detected_at_the_gap() {
    let db = db().await;
    let t = TenantId::new();
    write(&db, t, (0..5).map(|_| rec(t, "user.exported"))).await;
    tamper(&db, t, "DELETE FROM saas.audit_log WHERE seq = 3").await;
    let broken = verify(&db, t).await.first_broken.unwrap();
    assert_eq!(broken.seq, 4);
    assert_eq!(broken.reason, BrokenReason::Gap { expected: 3 });
}

#[tokio::test]
async fn a_rolled_back_change_leaves_no_record() {
    let db = db().await;
    let t = TenantId::new();
    let mut tx = TestDb::begin_as(db.app(), t).await.unwrap();
    audit::record(&mut tx, &rec(t, "project.deleted")).await.unwrap();
    tx.rollback().await.unwrap();
    let mut tx = TestDb::begin_as(db.app(), t).await.unwrap();
    assert!(
        audit::query(&mut tx, t, &AuditQuery::new())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_tenant_keep_one_chain() {
    let db = db().await;
    let t = TenantId::new();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let pool = db.app().clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = TestDb::begin_as(&pool, t).await.unwrap();
            audit::record(&mut tx, &rec(t, "ping.sent").metadata(json!({"i": i})))
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let report = verify(&db, t).await;
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.checked, 16);
}

#[tokio::test]
async fn query_filters_and_paginates() {
    let db = db().await;
    let t = TenantId::new();
    let alice = UserId::new();
    let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
    let mut records = Vec::new();
    for i in 0..7 {
        let actor = if i % 2 == 0 {
            Actor::User(alice)
        } else {
            Actor::System("billing-sync".into())
        };
        let action = if i < 4 { "member.invited" } else { "member.removed" };
        records.push(AuditRecord::new(t, actor, action).unwrap().at(t0 + Duration::hours(i)));
    }
    write(&db, t, records).await;
    let mut tx = TestDb::begin_as(db.app(), t).await.unwrap();

    let by_alice = audit::query(&mut tx, t, &AuditQuery::new().actor(Actor::User(alice)))
        .await
        .unwrap();
    assert_eq!(by_alice.items.len(), 4);
    let prefix = audit::query(&mut tx, t, &AuditQuery::new().action("member."))
        .await
        .unwrap();
    assert_eq!(prefix.items.len(), 7);
    let removed = audit::query(&mut tx, t, &AuditQuery::new().action("member.removed"))
        .await
        .unwrap();
    assert_eq!(removed.items.len(), 3);
    let window = audit::query(
        &mut tx,
        t,
        &AuditQuery::new().between(t0 + Duration::hours(2), t0 + Duration::hours(5)),
    )
    .await
    .unwrap();
    assert_eq!(window.items.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 4, 3]);

    let mut seen = Vec::new();
    let mut q = AuditQuery::new().limit(3);
    loop {
        let page = audit::query(&mut tx, t, &q).await.unwrap();
        seen.extend(page.items.iter().map(|e| e.seq));
        match page.next {
            Some(c) => q = AuditQuery::new().limit(3).after(c),
            None => break,
        }
    }
    assert_eq!(seen, vec![7, 6, 5, 4, 3, 2, 1]);

    let bad = audit::query(&mut tx, t, &AuditQuery::new().after("bm90LWEtY3Vyc29y"))
        .await
        .unwrap_err();
    assert!(matches!(bad, AuditError::InvalidCursor));
    let bad = audit::query(&mut tx, t, &AuditQuery::new().action("DROP TABLE"))
        .await
        .unwrap_err();
    assert!(matches!(bad, AuditError::InvalidAction(_)));
}

#[tokio::test]
async fn retention_prunes_a_prefix_records_itself_and_keeps_the_chain_provable() {
    let db = db().await;
    let t = TenantId::new();
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
    let start = clock.now();
    let records: Vec<_> = (0..6)
        .map(|d| rec(t, "login.succeeded").at(start + Duration::days(d * 30)))
        .collect();
    write(&db, t, records).await;
    clock.set(start + Duration::days(200));
    let cutoff = clock.now() - Duration::days(90); // keeps days 120 and 150

    // The application role may not prune.
    let mut tx = TestDb::begin_as(db.app(), t).await.unwrap();
    let err = audit::prune(&mut tx, t, cutoff, Actor::System("retention".into()), &clock)
        .await
        .unwrap_err();
    assert!(matches!(err, AuditError::Database(_)), "{err:?}");
    drop(tx);

    let mut tx = TestDb::begin_as(db.owner(), t).await.unwrap();
    let report = audit::prune(&mut tx, t, cutoff, Actor::System("retention".into()), &clock)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(report.deleted, 4);
    assert_eq!(report.through_seq, Some(4));

    let chain = verify(&db, t).await;
    assert!(chain.is_intact(), "{chain:?}");
    assert_eq!(chain.checked, 3); // two kept rows and the retention record
    let mut tx = TestDb::begin_as(db.app(), t).await.unwrap();
    let pruned = audit::query(&mut tx, t, &AuditQuery::new().action("audit.pruned"))
        .await
        .unwrap();
    assert_eq!(pruned.items[0].metadata["deleted"], 4);
    assert_eq!(pruned.items[0].occurred_at, clock.now());
    drop(tx);

    // Removing the oldest kept row behind retention's back is still detected.
    tamper(&db, t, "DELETE FROM saas.audit_log WHERE seq = 5").await;
    let broken = verify(&db, t).await.first_broken.unwrap();
    assert_eq!(broken.seq, 6);
    assert_eq!(broken.reason, BrokenReason::UnanchoredStart);
}
