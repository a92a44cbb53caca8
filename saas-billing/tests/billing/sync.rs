//! Convergence: for each lifecycle the simulator walks (Stripe's statuses and events), the
//! mirror ends in the provider's final state whatever the order of the deliveries and
//! however many arrive twice — and the history records each change once.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{Duration, TimeZone, Utc};
use http::Request;
use http_body_util::Full;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use saas_billing::SubscriptionStatus;
use saas_billing::catalog::Interval;
use saas_billing::provider::BillingProvider;
use saas_billing::reconcile::reconcile;
use saas_billing::simulator::Simulator;
use saas_billing::sync::{Processed, process_event};
use saas_billing::webhook::{WebhookEndpoint, WebhookSecrets, sign};
use saas_core::TenantId;
use saas_core::clock::{Clock, ManualClock};
use saas_tenancy::PlatformPool;
use tower::ServiceExt;

const SECRET: &str = "whsec_sync_tests";

type Steps = fn(&Simulator, &str) -> String;

/// The lifecycles of the issue, each from a fresh customer (returns the subscription).
fn lifecycles() -> Vec<(&'static str, bool, SubscriptionStatus, Steps)> {
    vec![
        (
            "trial → active",
            false,
            SubscriptionStatus::Active,
            (|s: &Simulator, c: &str| {
                s.set_payment_method(c, true).unwrap();
                let sub = s.subscribe(c, "pro_monthly", Interval::Month, 14).unwrap();
                s.advance(Duration::days(15));
                sub
            }) as Steps,
        ),
        (
            "trial → paused → resumed",
            false,
            SubscriptionStatus::Active,
            (|s: &Simulator, c: &str| {
                let sub = s.subscribe(c, "pro_monthly", Interval::Month, 14).unwrap();
                s.advance(Duration::days(15));
                s.set_payment_method(c, true).unwrap();
                s.resume(&sub).unwrap();
                sub
            }) as Steps,
        ),
        (
            "active → past_due → active",
            false,
            SubscriptionStatus::Active,
            (|s: &Simulator, c: &str| {
                s.set_payment_method(c, true).unwrap();
                let sub = s.subscribe(c, "pro_monthly", Interval::Month, 0).unwrap();
                s.set_payment_method(c, false).unwrap();
                s.advance(Duration::days(31));
                s.set_payment_method(c, true).unwrap();
                s.advance(Duration::days(4));
                sub
            }) as Steps,
        ),
        (
            "past_due → unpaid",
            true,
            SubscriptionStatus::Unpaid,
            (|s: &Simulator, c: &str| {
                s.set_payment_method(c, true).unwrap();
                let sub = s.subscribe(c, "pro_monthly", Interval::Month, 0).unwrap();
                s.set_payment_method(c, false).unwrap();
                s.advance(Duration::days(40));
                sub
            }) as Steps,
        ),
        (
            "past_due → canceled",
            false,
            SubscriptionStatus::Canceled,
            (|s: &Simulator, c: &str| {
                s.set_payment_method(c, true).unwrap();
                let sub = s.subscribe(c, "pro_monthly", Interval::Month, 0).unwrap();
                s.set_payment_method(c, false).unwrap();
                s.advance(Duration::days(40));
                sub
            }) as Steps,
        ),
        (
            "upgrade mid-period",
            false,
            SubscriptionStatus::Active,
            (|s: &Simulator, c: &str| {
                s.set_payment_method(c, true).unwrap();
                let sub = s.subscribe(c, "pro_monthly", Interval::Month, 0).unwrap();
                s.advance(Duration::days(10));
                s.change_price(&sub, "business_seat", Interval::Month).unwrap();
                sub
            }) as Steps,
        ),
        (
            "downgrade",
            false,
            SubscriptionStatus::Active,
            (|s: &Simulator, c: &str| {
                s.set_payment_method(c, true).unwrap();
                let sub = s.subscribe(c, "business_seat", Interval::Month, 0).unwrap();
                s.advance(Duration::days(29));
                s.change_price(&sub, "pro_monthly", Interval::Month).unwrap();
                s.advance(Duration::days(2));
                sub
            }) as Steps,
        ),
        (
            "cancel at period end, then reactivate",
            false,
            SubscriptionStatus::Active,
            (|s: &Simulator, c: &str| {
                s.set_payment_method(c, true).unwrap();
                let sub = s.subscribe(c, "pro_monthly", Interval::Month, 0).unwrap();
                s.cancel(&sub, true).unwrap();
                s.advance(Duration::days(5));
                s.reactivate(&sub).unwrap();
                s.advance(Duration::days(30));
                sub
            }) as Steps,
        ),
        (
            "incomplete → incomplete_expired",
            false,
            SubscriptionStatus::IncompleteExpired,
            (|s: &Simulator, c: &str| {
                let sub = s.subscribe(c, "pro_monthly", Interval::Month, 0).unwrap();
                s.advance(Duration::days(1));
                sub
            }) as Steps,
        ),
        (
            "monthly → annual",
            false,
            SubscriptionStatus::Active,
            (|s: &Simulator, c: &str| {
                s.set_payment_method(c, true).unwrap();
                let sub = s.subscribe(c, "pro_monthly", Interval::Month, 0).unwrap();
                s.advance(Duration::days(3));
                s.change_price(&sub, "pro_annual", Interval::Year).unwrap();
                s.advance(Duration::days(40));
                sub
            }) as Steps,
        ),
        (
            "cancel now",
            false,
            SubscriptionStatus::Canceled,
            (|s: &Simulator, c: &str| {
                s.set_payment_method(c, true).unwrap();
                let sub = s.subscribe(c, "pro_monthly", Interval::Month, 7).unwrap();
                s.advance(Duration::days(2));
                s.cancel(&sub, false).unwrap();
                s.advance(Duration::days(60));
                sub
            }) as Steps,
        ),
    ]
}

#[test]
fn every_lifecycle_converges_whatever_the_delivery_order_and_duplicates() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(async { crate::db().await });
    let platform = PlatformPool::new(db.platform().clone());
    for (name, unpaid, expected, steps) in lifecycles() {
        let mut runner = TestRunner::new(Config {
            cases: 6,
            failure_persistence: None,
            ..Config::default()
        });
        // A permutation of the events' indices (a seed for a shuffle) and extra deliveries.
        // And which events are never delivered (missed for good, repaired by reconcile).
        let strategy = (
            any::<u64>(),
            proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
            proptest::collection::vec(any::<bool>(), 0..24),
        );
        runner
            .run(&strategy, |(seed, extra, dropped)| {
                rt.block_on(async {
                    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
                    let sim = Simulator::new(clock.clone());
                    let sim = if unpaid { sim.unpaid_when_retries_run_out() } else { sim };
                    let tenant = TenantId::new();
                    let customer = sim.add_customer(tenant);
                    let sub = steps(&sim, &customer);
                    // The simulator walked the lifecycle (not just the mirror agreeing with it).
                    prop_assert_eq!(sim.subscription(&sub).await.unwrap().unwrap().status, expected, "{}", name);
                    let events = sim.events();
                    let mut order: Vec<usize> = (0..events.len()).collect();
                    shuffle(&mut order, seed);
                    order.extend(extra.iter().map(|i| i.index(events.len())));
                    order.retain(|i| !dropped.get(*i).copied().unwrap_or(false));
                    let endpoint = WebhookEndpoint::new(platform.clone(), WebhookSecrets::new(SECRET).unwrap())
                        .clock(clock.clone());
                    for i in &order {
                        let body = events[*i].body();
                        let req = Request::post("/webhooks/stripe")
                            .header("stripe-signature", sign(SECRET, clock.now().timestamp(), body.as_bytes()))
                            .body(Full::new(Bytes::from(body)))
                            .unwrap();
                        let res = endpoint.clone().oneshot(req).await.unwrap();
                        prop_assert_eq!(res.status(), 200);
                        // Processing runs as the worker would: at least once per delivery.
                        let outcome = process_event(&platform, &sim, &events[*i].id).await.unwrap();
                        if events[*i].kind == "customer.created" {
                            prop_assert_eq!(outcome, Processed::Applied(vec![sub.clone()]));
                        }
                    }
                    // Whatever was missed, a reconciliation repairs; after it, nothing differs.
                    let report = reconcile(&platform, &sim).await.unwrap();
                    if order.is_empty() {
                        prop_assert_eq!(report.drift.len(), 1, "{}: everything dropped", name);
                    }
                    prop_assert!(reconcile(&platform, &sim).await.unwrap().drift.is_empty());
                    let truth = sim.subscription(&sub).await.unwrap().unwrap();
                    let mirror: (String, Option<String>, bool, i64) = sqlx::query_as(
                        "SELECT status, price_lookup_key, cancel_at_period_end, quantity \
                         FROM saas.billing_subscriptions WHERE subscription_id = $1",
                    )
                    .bind(&sub)
                    .fetch_one(db.platform())
                    .await
                    .unwrap();
                    prop_assert_eq!(
                        mirror,
                        (
                            truth.status.as_str().to_owned(),
                            truth.price_lookup_key.clone(),
                            truth.cancel_at_period_end,
                            truth.quantity as i64
                        ),
                        "{}",
                        name
                    );
                    // The tenant is the customer's; the history has no repeated change.
                    let (owner, changes, distinct): (uuid::Uuid, i64, i64) = sqlx::query_as(
                        "SELECT s.tenant_id, (SELECT count(*) FROM saas.billing_transitions t WHERE t.subscription_id = s.subscription_id), \
                                (SELECT count(DISTINCT (from_status, to_status)) FROM saas.billing_transitions t WHERE t.subscription_id = s.subscription_id) \
                         FROM saas.billing_subscriptions s WHERE s.subscription_id = $1",
                    )
                    .bind(&sub)
                    .fetch_one(db.platform())
                    .await
                    .unwrap();
                    prop_assert_eq!(owner, *tenant.as_uuid());
                    // Every processing read the provider's final state: one change, once.
                    prop_assert_eq!((changes, distinct), (1, 1), "{}", name);
                    Ok(())
                })
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Fisher–Yates with a small xorshift seeded by proptest (shrinks with the seed).
fn shuffle(v: &mut [usize], mut seed: u64) {
    seed |= 1;
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

#[tokio::test]
async fn the_application_role_reads_its_mirror_and_writes_none_of_it() {
    let db = crate::db().await;
    let platform = PlatformPool::new(db.platform().clone());
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
    let sim = Arc::new(Simulator::new(clock));
    let (a, b) = (TenantId::new(), TenantId::new());
    let mut subs = Vec::new();
    for t in [a, b] {
        let c = sim.add_customer(t);
        sim.set_payment_method(&c, true).unwrap();
        let sub = sim.subscribe(&c, "pro_monthly", Interval::Month, 0).unwrap();
        saas_billing::sync::sync_subscription(&platform, &*sim, &sub, "test")
            .await
            .unwrap();
        subs.push(sub);
    }
    let mut tx = saas_tenancy::TenantTx::begin(db.app(), a).await.unwrap();
    let seen: Vec<String> = sqlx::query_scalar("SELECT subscription_id FROM saas.billing_subscriptions")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, vec![subs[0].clone()], "tenant A sees its subscription only");
    for sql in [
        "UPDATE saas.billing_subscriptions SET status = 'active'",
        "DELETE FROM saas.billing_transitions",
        "INSERT INTO saas.billing_customers (tenant_id, customer_id) VALUES (saas.current_tenant_id(), 'cus_forged')",
    ] {
        sqlx::query("SAVEPOINT s").execute(&mut *tx).await.unwrap();
        let err = sqlx::query(sql).execute(&mut *tx).await.unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{sql}: {err}");
        sqlx::query("ROLLBACK TO SAVEPOINT s").execute(&mut *tx).await.unwrap();
    }
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn a_worker_applies_delivered_events_to_the_mirror() {
    let db = crate::db().await;
    let platform = PlatformPool::new(db.platform().clone());
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
    let sim = Arc::new(Simulator::new(clock.clone()));
    let worker = saas_billing::sync::handle_events(
        saas_events::Worker::builder(platform.clone()),
        platform.clone(),
        Arc::clone(&sim),
    )
    .start()
    .await
    .unwrap();
    let endpoint = WebhookEndpoint::new(platform.clone(), WebhookSecrets::new(SECRET).unwrap()).clock(clock.clone());
    let tenant = TenantId::new();
    let customer = sim.add_customer(tenant);
    sim.set_payment_method(&customer, true).unwrap();
    let sub = sim.subscribe(&customer, "pro_monthly", Interval::Month, 14).unwrap();
    sim.advance(Duration::days(15));
    for e in sim.events() {
        let body = e.body();
        let req = Request::post("/webhooks/stripe")
            .header(
                "stripe-signature",
                sign(SECRET, clock.now().timestamp(), body.as_bytes()),
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        assert_eq!(endpoint.clone().oneshot(req).await.unwrap().status(), 200);
    }
    let mut status = String::new();
    for _ in 0..200 {
        let unprocessed: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.billing_inbox WHERE processed_at IS NULL")
            .fetch_one(db.platform())
            .await
            .unwrap();
        status = sqlx::query_scalar("SELECT status FROM saas.billing_subscriptions WHERE subscription_id = $1")
            .bind(&sub)
            .fetch_optional(db.platform())
            .await
            .unwrap()
            .unwrap_or_default();
        if unprocessed == 0 && status == "active" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(status, "active");
    // The change is dated when the provider's event happened (the trial's end, on the
    // simulator's clock), not when the worker applied it (today).
    let since: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT status_since FROM saas.billing_subscriptions WHERE subscription_id = $1")
            .bind(&sub)
            .fetch_one(db.platform())
            .await
            .unwrap();
    let trial_end = Utc.with_ymd_and_hms(2026, 1, 15, 0, 0, 0).unwrap();
    assert!(
        since >= trial_end && since <= clock.now(),
        "status_since {since} is not the event's time (trial end {trial_end})"
    );
    // A billing job published by a tenant is dead-lettered, not run.
    let mut tx = saas_tenancy::TenantTx::begin(db.app(), tenant).await.unwrap();
    saas_events::publish(
        &mut tx,
        &saas_billing::webhook::StripeEventReceived {
            event_id: "evt_forged".into(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut state: Option<String> = None;
    for _ in 0..200 {
        state = sqlx::query_scalar("SELECT state FROM saas.jobs WHERE payload->>'event_id' = 'evt_forged'")
            .fetch_optional(db.platform())
            .await
            .unwrap();
        if state.as_deref() == Some("dead") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    worker.shutdown(std::time::Duration::from_secs(5)).await;
    assert_eq!(state.as_deref(), Some("dead"));
    // The tenant's audit log records the change, as the billing system.
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM saas.audit_log WHERE tenant_id = $1 AND action = 'billing.subscription_status_changed'",
    )
    .bind(tenant)
    .fetch_one(db.platform())
    .await
    .unwrap();
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn reconcile_reports_and_fixes_what_webhooks_missed_and_runs_on_a_schedule() {
    let db = crate::db().await;
    let platform = PlatformPool::new(db.platform().clone());
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
    let sim = Arc::new(Simulator::new(clock.clone()));
    let (a, b) = (TenantId::new(), TenantId::new());
    let ca = sim.add_customer(a);
    sim.set_payment_method(&ca, true).unwrap();
    let sa = sim.subscribe(&ca, "pro_monthly", Interval::Month, 14).unwrap();
    saas_billing::sync::sync_subscription(&platform, &*sim, &sa, "evt_seen")
        .await
        .unwrap();
    let cb = sim.add_customer(b);
    let sb = sim.subscribe(&cb, "pro_monthly", Interval::Month, 0).unwrap();
    // No webhook reaches us from here on: A's trial ends (active), B never paid (expired).
    sim.advance(Duration::days(15));
    let report = reconcile(&platform, &*sim).await.unwrap();
    assert_eq!(report.checked, 2);
    let mut drift: Vec<_> = report
        .drift
        .iter()
        .map(|d| (d.subscription.clone(), d.tenant, d.mirror, d.provider, d.fields.clone()))
        .collect();
    drift.sort_by(|x, y| x.0.cmp(&y.0));
    let mut want = vec![
        (
            sa.clone(),
            Some(a),
            Some(SubscriptionStatus::Trialing),
            SubscriptionStatus::Active,
            vec!["status"],
        ),
        (
            sb.clone(),
            Some(b),
            None,
            SubscriptionStatus::IncompleteExpired,
            vec!["missing"],
        ),
    ];
    want.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(drift, want);
    assert!(reconcile(&platform, &*sim).await.unwrap().drift.is_empty(), "fixed");
    let cause: String = sqlx::query_scalar(
        "SELECT cause FROM saas.billing_transitions WHERE subscription_id = $1 ORDER BY at DESC LIMIT 1",
    )
    .bind(&sa)
    .fetch_one(db.platform())
    .await
    .unwrap();
    assert_eq!(cause, "reconcile");

    // On a schedule: a third tenant's subscription appears in the mirror by itself.
    let c = TenantId::new();
    let cc = sim.add_customer(c);
    sim.set_payment_method(&cc, true).unwrap();
    let sc = sim.subscribe(&cc, "pro_annual", Interval::Year, 0).unwrap();
    let builder = saas_events::Worker::builder(platform.clone());
    let worker = saas_billing::reconcile::schedule(builder, "* * * * * *", platform.clone(), Arc::clone(&sim))
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut status = None;
    for _ in 0..200 {
        status =
            sqlx::query_scalar::<_, String>("SELECT status FROM saas.billing_subscriptions WHERE subscription_id = $1")
                .bind(&sc)
                .fetch_optional(db.platform())
                .await
                .unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    worker.shutdown(std::time::Duration::from_secs(5)).await;
    assert_eq!(status.as_deref(), Some("active"));
}
