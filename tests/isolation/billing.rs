//! Billing: what a tenant pays for is written only by billing processing. Tenant A reads
//! its own subscription and nothing of B's, cannot change its own plan or status, cannot
//! read or forge webhook events, cannot have billing cancel B's subscription, cannot grant
//! itself entitlements or erase its usage, and purging A removes A's billing rows only.

use std::sync::Arc;

use saas_billing::catalog::Interval;
use saas_billing::simulator::Simulator;
use saas_billing::sync::sync_subscription;
use saas_core::audit::Actor;
use saas_tenancy::{PlatformPool, TenantTx, lifecycle};
use saas_tests::Fixture;
use saas_tests::chrono::Duration;

use super::code;

/// Runs `sql` in a savepoint and asserts the application role was refused (42501).
async fn refused(tx: &mut TenantTx, sql: &'static str) {
    sqlx::query("SAVEPOINT s").execute(&mut **tx).await.unwrap();
    let err = sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut **tx)
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42501", "{sql}: {err}");
    sqlx::query("ROLLBACK TO SAVEPOINT s").execute(&mut **tx).await.unwrap();
}

/// Both tenants subscribed (through the simulator and the real processing path).
async fn subscribed(f: &Fixture) -> (Arc<Simulator>, String, String) {
    let platform = PlatformPool::new(f.db.platform().clone());
    let sim = Arc::new(Simulator::new(f.clock.clone()));
    let mut subs = Vec::new();
    for t in [f.a, f.b] {
        let c = sim.add_customer(t);
        sim.set_payment_method(&c, true).unwrap();
        let s = sim.subscribe(&c, "pro_monthly", Interval::Month, 0).unwrap();
        sync_subscription(&platform, &*sim, &s, "evt_setup").await.unwrap();
        subs.push(s);
    }
    let b = subs.pop().unwrap();
    (sim, subs.pop().unwrap(), b)
}

#[tokio::test]
async fn attack_60_a_tenant_reads_only_its_billing_and_cannot_grant_itself_a_plan() {
    let f = Fixture::new().await;
    let (_sim, a_sub, _b_sub) = subscribed(&f).await;
    let mut tx = TenantTx::begin(f.db.app(), f.a).await.unwrap();
    let seen: Vec<String> = sqlx::query_scalar("SELECT subscription_id FROM saas.billing_subscriptions")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, vec![a_sub.clone()]);
    for sql in [
        "SELECT count(*) FROM saas.billing_customers WHERE tenant_id <> saas.current_tenant_id()",
        "SELECT count(*) FROM saas.billing_transitions WHERE tenant_id <> saas.current_tenant_id()",
    ] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 0, "{sql}");
    }
    // Its own rows are read-only: no upgrade, no un-cancel, no forged history.
    for sql in [
        "UPDATE saas.billing_subscriptions SET price_lookup_key = 'business_seat', quantity = 1000",
        "UPDATE saas.billing_subscriptions SET status = 'active', cancel_at_period_end = false",
        "INSERT INTO saas.billing_subscriptions (tenant_id, subscription_id, customer_id, status, status_since) \
         VALUES (saas.current_tenant_id(), 'sub_forged', 'cus_forged', 'active', now())",
        "DELETE FROM saas.billing_transitions",
        "UPDATE saas.billing_customers SET customer_id = 'cus_someone_elses'",
    ] {
        refused(&mut tx, sql).await;
    }
}

#[tokio::test]
async fn attack_61_webhook_events_are_neither_readable_nor_forgeable_by_a_tenant() {
    let f = Fixture::new().await;
    sqlx::query(
        "INSERT INTO saas.billing_inbox (event_id, type, livemode, created, object_id, raw) \
         VALUES ('evt_b', 'invoice.paid', false, now(), 'in_b', '{\"secret\": \"b\"}')",
    )
    .execute(f.db.platform())
    .await
    .unwrap();
    let mut tx = TenantTx::begin(f.db.app(), f.a).await.unwrap();
    for sql in [
        "SELECT raw FROM saas.billing_inbox",
        "INSERT INTO saas.billing_inbox (event_id, type, livemode, created, raw) VALUES ('evt_x', 'invoice.paid', false, now(), '{}')",
        "UPDATE saas.billing_inbox SET processed_at = now()",
    ] {
        refused(&mut tx, sql).await;
    }
    // A processing job published by the tenant carries the tenant, and processing
    // refuses such jobs (saas-billing's worker test shows it dead-lettered).
    let job: uuid::Uuid =
        sqlx::query_scalar("SELECT saas.publish_job('default', 'billing.stripe_event', '{\"event_id\": \"evt_b\"}')")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    let tenant: Option<uuid::Uuid> = sqlx::query_scalar("SELECT tenant_id FROM saas.jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(tenant, Some(*f.a.as_uuid()));
}

#[tokio::test]
async fn attack_62_purging_a_removes_its_billing_rows_and_nothing_of_b() {
    let f = Fixture::new().await;
    let (_sim, _a_sub, b_sub) = subscribed(&f).await;
    let platform = PlatformPool::new(f.db.platform().clone());
    lifecycle::request_deletion(&platform, f.a, Some(Duration::days(30)), Actor::User(f.alice), &f.clock)
        .await
        .unwrap();
    f.clock.advance(Duration::days(60));
    lifecycle::purge(&platform, f.a, Actor::System("test".into()), &f.clock)
        .await
        .unwrap();
    let count = |sql: &'static str, tenant| {
        let pool = f.db.platform().clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(tenant)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    for sql in [
        "SELECT count(*) FROM saas.billing_customers WHERE tenant_id = $1",
        "SELECT count(*) FROM saas.billing_subscriptions WHERE tenant_id = $1",
        "SELECT count(*) FROM saas.billing_transitions WHERE tenant_id = $1",
    ] {
        assert_eq!(count(sql, f.a).await, 0, "{sql}");
        assert_eq!(count(sql, f.b).await, 1, "{sql}");
    }
    let b_status: String =
        sqlx::query_scalar("SELECT status FROM saas.billing_subscriptions WHERE subscription_id = $1")
            .bind(&b_sub)
            .fetch_one(f.db.platform())
            .await
            .unwrap();
    assert_eq!(b_status, "active");
}

#[tokio::test]
async fn attack_63_a_tenant_cannot_have_billing_cancel_another_tenants_subscription() {
    let f = Fixture::new().await;
    let (sim, _a_sub, b_sub) = subscribed(&f).await;
    let platform = PlatformPool::new(f.db.platform().clone());
    let mut tx = TenantTx::begin(f.db.app(), f.a).await.unwrap();
    // A platform job (no tenant) is out of the application role's reach …
    refused(
        &mut tx,
        "SELECT saas.publish_job('default', 'billing.tenant_deleted', \
         jsonb_build_object('tenant_id', '00000000-0000-0000-0000-000000000000'), NULL)",
    )
    .await;
    // … and the one it may publish (for itself) names B: the handler must not act on it.
    saas_events::publish(&mut tx, &saas_billing::customers::TenantDeleted { tenant_id: f.b })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let worker = saas_billing::sync::handle_events(
        saas_events::Worker::builder(platform.clone()),
        platform.clone(),
        Arc::clone(&sim),
    )
    .start()
    .await
    .unwrap();
    let mut state: Option<String> = None;
    for _ in 0..400 {
        state = sqlx::query_scalar(
            "SELECT state FROM saas.jobs WHERE kind = 'billing.tenant_deleted' \
             UNION ALL SELECT 'done' FROM saas.jobs_done WHERE kind = 'billing.tenant_deleted'",
        )
        .fetch_optional(f.db.platform())
        .await
        .unwrap();
        if matches!(state.as_deref(), Some("dead" | "done")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    worker.shutdown(std::time::Duration::from_secs(5)).await;
    assert_eq!(state.as_deref(), Some("dead"), "the forged job is dead-lettered");
    use saas_billing::provider::BillingProvider;
    let at_provider = sim.subscription(&b_sub).await.unwrap().unwrap();
    assert_eq!(at_provider.status.as_str(), "active", "B still pays");
}

#[tokio::test]
async fn attack_64_a_tenant_cannot_grant_itself_entitlements_or_erase_its_usage() {
    let f = Fixture::new().await;
    let platform_pool = f.db.platform().clone();
    for t in [f.a, f.b] {
        sqlx::query(
            "INSERT INTO saas.billing_entitlement_grants (tenant_id, feature, kind, amount, reason) \
             VALUES ($1, 'projects', 'override', 10, 'staff')",
        )
        .bind(t)
        .execute(&platform_pool)
        .await
        .unwrap();
    }
    let mut tx = TenantTx::begin(f.db.app(), f.b).await.unwrap();
    sqlx::query(
        "INSERT INTO saas.billing_usage_events (tenant_id, event_id, feature, amount, period_start) \
         VALUES (saas.current_tenant_id(), 'b-1', 'api_calls', 900, '2026-01-01')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let mut tx = TenantTx::begin(f.db.app(), f.a).await.unwrap();
    // Its own usage, once counted, cannot be changed or removed; counters are not its to write.
    sqlx::query(
        "INSERT INTO saas.billing_usage_events (tenant_id, event_id, feature, amount, period_start) \
         VALUES (saas.current_tenant_id(), 'a-1', 'api_calls', 500, '2026-01-01')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    for sql in [
        "UPDATE saas.billing_usage_events SET amount = 1",
        "DELETE FROM saas.billing_usage_events",
        "UPDATE saas.billing_usage SET used = 0",
        "DELETE FROM saas.billing_usage",
        "INSERT INTO saas.billing_usage (tenant_id, feature, period_start, used) \
         VALUES (saas.current_tenant_id(), 'api_calls', '2026-02-01', 0)",
        "INSERT INTO saas.billing_entitlement_grants (tenant_id, feature, kind, switch, reason) \
         VALUES (saas.current_tenant_id(), 'sso', 'override', true, 'self-service')",
        "UPDATE saas.billing_entitlement_grants SET amount = 1000000",
        "INSERT INTO saas.billing_provider_features (tenant_id, feature) VALUES (saas.current_tenant_id(), 'sso')",
        "DELETE FROM saas.billing_entitlement_grants",
    ] {
        refused(&mut tx, sql).await;
    }
    // Usage for B is refused by the policy; B's rows are invisible.
    sqlx::query("SAVEPOINT s").execute(&mut *tx).await.unwrap();
    let err = sqlx::query(
        "INSERT INTO saas.billing_usage_events (tenant_id, event_id, feature, amount, period_start) \
         VALUES ($1, 'b-forged', 'api_calls', 99999, '2026-01-01')",
    )
    .bind(f.b)
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert_eq!(code(&err), "42501", "{err}");
    sqlx::query("ROLLBACK TO SAVEPOINT s").execute(&mut *tx).await.unwrap();
    for sql in [
        "SELECT count(*) FROM saas.billing_usage WHERE tenant_id <> saas.current_tenant_id()",
        "SELECT count(*) FROM saas.billing_usage_events WHERE tenant_id <> saas.current_tenant_id()",
        "SELECT count(*) FROM saas.billing_entitlement_grants WHERE tenant_id <> saas.current_tenant_id()",
    ] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 0, "{sql}");
    }
    tx.commit().await.unwrap();
    let used: Vec<(uuid::Uuid, i64)> = sqlx::query_as("SELECT tenant_id, used FROM saas.billing_usage ORDER BY used")
        .fetch_all(&platform_pool)
        .await
        .unwrap();
    assert_eq!(used, vec![(*f.a.as_uuid(), 500), (*f.b.as_uuid(), 900)]);
}
