//! The provider's write side on the simulator, end to end through the webhook endpoint
//! and the mirror: a customer per tenant, checkout, the portal, changes with their
//! proration previews, one currency per customer, usage, cancellation, and a deleted
//! tenant's subscription canceled.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{Duration, TimeZone, Utc};
use http::Request;
use http_body_util::Full;
use saas_billing::catalog::{Catalog, Plan, Price};
use saas_billing::provider::{
    BillingProvider, CancelAt, CheckoutRequest, Discount, NewSubscription, Proration, SubscriptionChange, UsageEvent,
};
use saas_billing::simulator::Simulator;
use saas_billing::sync::process_event;
use saas_billing::webhook::{WebhookEndpoint, WebhookSecrets, sign};
use saas_billing::{ProviderError, customer_for};
use saas_core::audit::Actor;
use saas_core::clock::{Clock, ManualClock};
use saas_core::{TenantId, UserId};
use saas_tenancy::{PlatformPool, lifecycle};
use tower::ServiceExt;

const SECRET: &str = "whsec_operations_tests";

fn catalogs() -> (Catalog, Catalog) {
    let eur = Catalog::new("eur")
        .plan(Plan::new("free"))
        .plan(
            Plan::new("pro")
                .trial_days(14)
                .price(Price::monthly("pro_monthly", 3000))
                .price(Price::annual("pro_annual", 30000))
                .price(Price::metered_monthly("pro_api", "api_calls", 1)),
        )
        .plan(Plan::new("business").price(Price::per_seat_monthly("business_seat", 1500)))
        .validate()
        .unwrap();
    let usd = Catalog::new("usd")
        .plan(Plan::new("pro_us").price(Price::monthly("pro_us_monthly", 3500)))
        .validate()
        .unwrap();
    (eur, usd)
}

struct World {
    db: saas_core::testkit::TestDb,
    platform: PlatformPool,
    clock: ManualClock,
    sim: Arc<Simulator>,
    endpoint: WebhookEndpoint,
    delivered: usize,
}

impl World {
    async fn new() -> Self {
        let db = crate::db().await;
        let platform = PlatformPool::new(db.platform().clone());
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap());
        let (eur, usd) = catalogs();
        let sim = Arc::new(Simulator::new(clock.clone()).with_catalog(&eur).with_catalog(&usd));
        let endpoint =
            WebhookEndpoint::new(platform.clone(), WebhookSecrets::new(SECRET).unwrap()).clock(clock.clone());
        Self {
            db,
            platform,
            clock,
            sim,
            endpoint,
            delivered: 0,
        }
    }

    /// Delivers the simulator's new events to the endpoint and processes each, as the
    /// worker would.
    async fn deliver(&mut self) -> Vec<String> {
        let events = self.sim.events();
        let mut kinds = Vec::new();
        for e in &events[self.delivered..] {
            let body = e.body();
            let req = Request::post("/webhooks/stripe")
                .header(
                    "stripe-signature",
                    sign(SECRET, self.clock.now().timestamp(), body.as_bytes()),
                )
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            assert_eq!(self.endpoint.clone().oneshot(req).await.unwrap().status(), 200);
            process_event(&self.platform, &*self.sim, &e.id).await.unwrap();
            kinds.push(e.kind.clone());
        }
        self.delivered = events.len();
        kinds
    }

    /// A user (written as the platform: users are not a tenant's to create).
    async fn user(&self, subject: &str, email: Option<&str>) -> UserId {
        let user = UserId::new();
        sqlx::query(
            "INSERT INTO saas.users (id, issuer, subject, email, created_at, updated_at) \
             VALUES ($1, 'test', $2, $3, now(), now())",
        )
        .bind(user)
        .bind(subject)
        .bind(email)
        .execute(self.db.platform())
        .await
        .unwrap();
        user
    }

    async fn mirror(&self, sub: &str) -> (String, Option<String>, i64, bool) {
        sqlx::query_as(
            "SELECT status, price_lookup_key, quantity, cancel_at_period_end \
             FROM saas.billing_subscriptions WHERE subscription_id = $1",
        )
        .bind(sub)
        .fetch_one(self.db.platform())
        .await
        .unwrap()
    }
}

#[tokio::test]
async fn one_customer_per_tenant_even_when_asked_concurrently() {
    let w = World::new().await;
    let tenant = TenantId::new();
    let calls = (0..8).map(|_| customer_for(&w.platform, &*w.sim, tenant, Some("billing@acme.test")));
    let ids = futures_util::future::join_all(calls).await;
    let first = ids[0].as_ref().unwrap().clone();
    assert!(ids.iter().all(|r| r.as_ref().unwrap() == &first), "{ids:?}");
    let at_provider = w.sim.customers().await.unwrap();
    assert_eq!(at_provider.iter().filter(|c| c.tenant == Some(tenant)).count(), 1);
    let recorded: String = sqlx::query_scalar("SELECT customer_id FROM saas.billing_customers WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(w.db.platform())
        .await
        .unwrap();
    assert_eq!(recorded, first);
}

#[tokio::test]
async fn checkout_portal_changes_previews_and_cancellation() {
    let mut w = World::new().await;
    let tenant = TenantId::new();
    let customer = customer_for(&w.platform, &*w.sim, tenant, None).await.unwrap();

    // Checkout: a discount or a promotion-code field, not both; unknown prices refused.
    let page =
        |price: &str| CheckoutRequest::new(tenant, &customer, price, "https://app.test/ok", "https://app.test/no");
    let both = page("pro_monthly")
        .discount(Discount::Coupon("LAUNCH".into()))
        .allow_promotion_codes();
    assert!(matches!(
        w.sim.checkout_session(&both).await,
        Err(ProviderError::Refused(_))
    ));
    assert!(matches!(
        w.sim.checkout_session(&page("gold_monthly")).await,
        Err(ProviderError::NotFound(_))
    ));
    let session = w
        .sim
        .checkout_session(
            &page("pro_monthly")
                .trial_days(14)
                .discount(Discount::Coupon("LAUNCH".into())),
        )
        .await
        .unwrap();
    assert!(
        session.url.starts_with("https://checkout.simulator.invalid/"),
        "{}",
        session.url
    );
    let sub = w.sim.complete_checkout(&session.id, true).unwrap();
    let kinds = w.deliver().await;
    assert!(kinds.contains(&"checkout.session.completed".to_owned()), "{kinds:?}");
    assert_eq!(w.mirror(&sub).await.0, "trialing");
    assert!(
        w.sim.complete_checkout(&session.id, true).is_err(),
        "a session completes once"
    );

    let portal = w
        .sim
        .portal_session(&customer, "https://app.test/billing")
        .await
        .unwrap();
    assert!(portal.url.starts_with("https://billing.simulator.invalid/"));
    assert!(matches!(
        w.sim.portal_session("cus_nobody", "https://app.test").await,
        Err(ProviderError::NotFound(_))
    ));

    // The trial ends and the first period is paid; half-way through it, an upgrade to
    // three Business seats is previewed: half of Pro credited, half of 3 × 15 € charged,
    // then the next period at the new terms.
    w.sim.advance(Duration::days(14));
    w.sim.advance(Duration::days(15));
    w.deliver().await;
    assert_eq!(w.mirror(&sub).await.0, "active");
    let upgrade = SubscriptionChange::price("business_seat").with_quantity(3);
    let preview = w.sim.preview_change(&sub, &upgrade).await.unwrap();
    assert_eq!(preview.currency, "eur");
    assert_eq!(preview.proration_amount(), -1500 + 2250);
    assert_eq!(preview.amount_due, -1500 + 2250 + 4500);
    assert!(
        w.sim
            .preview_change(&sub, &upgrade.clone().proration(Proration::None))
            .await
            .unwrap()
            .lines
            .iter()
            .all(|l| !l.proration)
    );

    // Upgrading with `always_invoice` invoices the difference now.
    let changed = w
        .sim
        .update_subscription(&sub, &upgrade.clone().proration(Proration::AlwaysInvoice))
        .await
        .unwrap();
    assert_eq!(
        (changed.price_lookup_key.as_deref(), changed.quantity),
        (Some("business_seat"), 3)
    );
    let kinds = w.deliver().await;
    assert_eq!(kinds, ["customer.subscription.updated", "invoice.paid"]);
    let invoice_id = w.sim.events().last().unwrap().object["id"].as_str().unwrap().to_owned();
    let invoice = w.sim.invoice(&invoice_id).await.unwrap().unwrap();
    assert_eq!((invoice.amount_due, invoice.amount_paid), (750, 750), "{invoice:?}");
    assert_eq!(invoice.subscription.as_deref(), Some(sub.as_str()));
    assert_eq!(
        w.mirror(&sub).await,
        ("active".into(), Some("business_seat".into()), 3, false)
    );

    // One currency per customer.
    let err = w
        .sim
        .update_subscription(&sub, &SubscriptionChange::price("pro_us_monthly"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::CurrencyMismatch { has, wanted, .. } if has == "eur" && wanted == "usd"),
        "{err}"
    );
    assert!(matches!(
        w.sim.checkout_session(&page("pro_us_monthly")).await,
        Err(ProviderError::CurrencyMismatch { .. })
    ));

    // Monthly → annual: a new period starts; the unused time is credited, the year charged.
    let annual = SubscriptionChange::price("pro_annual").with_quantity(1);
    let preview = w.sim.preview_change(&sub, &annual).await.unwrap();
    assert_eq!(preview.amount_due, -2250 + 30000);
    w.sim.update_subscription(&sub, &annual).await.unwrap();
    w.deliver().await;
    assert_eq!(w.mirror(&sub).await.1.as_deref(), Some("pro_annual"));

    // Usage: each identifier counts once, however often it is reported.
    for (id, value) in [("u1", 40), ("u2", 2), ("u1", 40)] {
        w.sim
            .report_usage(&UsageEvent {
                meter: "api_calls".into(),
                customer: customer.clone(),
                value,
                identifier: id.into(),
                at: w.clock.now(),
            })
            .await
            .unwrap();
    }
    assert_eq!(w.sim.usage_reported(&customer, "api_calls"), 42);

    // Cancel at period end, think better of it, then cancel now.
    w.sim.cancel_subscription(&sub, CancelAt::PeriodEnd).await.unwrap();
    w.deliver().await;
    assert!(w.mirror(&sub).await.3);
    w.sim
        .update_subscription(&sub, &SubscriptionChange::keep())
        .await
        .unwrap();
    w.deliver().await;
    assert!(!w.mirror(&sub).await.3);
    w.sim.cancel_subscription(&sub, CancelAt::Now).await.unwrap();
    w.deliver().await;
    assert_eq!(w.mirror(&sub).await.0, "canceled");
    assert!(
        w.sim
            .update_subscription(&sub, &SubscriptionChange::keep())
            .await
            .is_err(),
        "a canceled subscription stays canceled"
    );
}

#[tokio::test]
async fn a_subscription_created_directly_and_a_paused_one_resumed() {
    let mut w = World::new().await;
    let tenant = TenantId::new();
    let customer = customer_for(&w.platform, &*w.sim, tenant, None).await.unwrap();
    // A trial without a payment method pauses at its end; resuming charges it.
    let sub = w
        .sim
        .create_subscription(&NewSubscription::new(tenant, &customer, "pro_monthly").trial_days(7))
        .await
        .unwrap();
    w.sim.advance(Duration::days(8));
    w.deliver().await;
    assert_eq!(w.mirror(&sub.id).await.0, "paused");
    w.sim.set_payment_method(&customer, true).unwrap();
    let resumed = w.sim.resume_subscription(&sub.id).await.unwrap();
    assert_eq!(resumed.status.as_str(), "active");
    w.deliver().await;
    assert_eq!(w.mirror(&sub.id).await.0, "active");
    assert!(matches!(
        w.sim
            .create_subscription(&NewSubscription::new(tenant, &customer, "gold"))
            .await,
        Err(ProviderError::NotFound(_))
    ));
}

#[tokio::test]
async fn requesting_a_tenants_deletion_cancels_its_subscription() {
    let w = World::new().await;
    let tenant = lifecycle::create(w.db.app(), "doomed-co", "Doomed Co", UserId::new(), &w.clock)
        .await
        .unwrap()
        .id;
    let other = lifecycle::create(w.db.app(), "staying-co", "Staying Co", UserId::new(), &w.clock)
        .await
        .unwrap()
        .id;
    let mut subs = Vec::new();
    for t in [tenant, other] {
        let customer = customer_for(&w.platform, &*w.sim, t, None).await.unwrap();
        w.sim.set_payment_method(&customer, true).unwrap();
        let sub = w
            .sim
            .create_subscription(&NewSubscription::new(t, &customer, "pro_monthly"))
            .await
            .unwrap();
        saas_billing::sync::sync_subscription(&w.platform, &*w.sim, &sub.id, "test")
            .await
            .unwrap();
        subs.push(sub.id);
    }
    let worker = saas_billing::sync::handle_events(
        saas_events::Worker::builder(w.platform.clone()),
        w.platform.clone(),
        Arc::clone(&w.sim),
    )
    .start()
    .await
    .unwrap();
    lifecycle::request_deletion(&w.platform, tenant, None, Actor::System("test".into()), &w.clock)
        .await
        .unwrap();
    let mut status = String::new();
    for _ in 0..400 {
        status = w.mirror(&subs[0]).await.0;
        if status == "canceled" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    worker.shutdown(std::time::Duration::from_secs(5)).await;
    assert_eq!(status, "canceled");
    let at_provider = w.sim.subscription(&subs[0]).await.unwrap().unwrap();
    assert_eq!(at_provider.status.as_str(), "canceled");
    let cause: String = sqlx::query_scalar(
        "SELECT cause FROM saas.billing_transitions WHERE subscription_id = $1 AND to_status = 'canceled'",
    )
    .bind(&subs[0])
    .fetch_one(w.db.platform())
    .await
    .unwrap();
    assert_eq!(cause, "tenant-deleted");
    // The other tenant still pays.
    assert_eq!(w.mirror(&subs[1]).await.0, "active");
}

#[tokio::test]
async fn failed_payments_and_ending_trials_email_the_owners_once() {
    use saas_billing::notify::Notifications;
    use saas_billing::sync::process_event_notifying;

    let w = World::new().await;
    let owner = w.user("owner", Some("owner@dunning.test")).await;
    let member = w.user("dev", Some("dev@dunning.test")).await;
    let tenant = lifecycle::create(w.db.app(), "dunning-co", "Dunning Co", owner, &w.clock)
        .await
        .unwrap()
        .id;
    for (user, role) in [(owner, "owner"), (member, "member")] {
        sqlx::query(
            "INSERT INTO saas.memberships (tenant_id, user_id, roles, joined_at) VALUES ($1, $2, ARRAY[$3], now())",
        )
        .bind(tenant)
        .bind(user)
        .bind(role)
        .execute(w.db.platform())
        .await
        .unwrap();
    }
    let customer = customer_for(&w.platform, &*w.sim, tenant, None).await.unwrap();
    // A trial (warned three days before its end), then a card that fails.
    let sub = w
        .sim
        .create_subscription(&NewSubscription::new(tenant, &customer, "pro_monthly").trial_days(14))
        .await
        .unwrap();
    w.sim.set_payment_method(&customer, false).unwrap();
    w.sim.advance(Duration::days(15));
    let notifications = Notifications::new("https://app.test/settings/billing");
    for e in w.sim.events() {
        let body = e.body();
        let req = Request::post("/webhooks/stripe")
            .header(
                "stripe-signature",
                sign(SECRET, w.clock.now().timestamp(), body.as_bytes()),
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        assert_eq!(w.endpoint.clone().oneshot(req).await.unwrap().status(), 200);
        // Twice, as a redelivered job would: the email goes once.
        for _ in 0..2 {
            process_event_notifying(&w.platform, &*w.sim, &e.id, Some(&notifications))
                .await
                .unwrap();
        }
    }
    assert_eq!(w.mirror(&sub.id).await.0, "past_due");
    let emails: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT payload->>'template', payload FROM saas.jobs WHERE kind = 'email.send' ORDER BY created_at",
    )
    .fetch_all(w.db.platform())
    .await
    .unwrap();
    let templates: Vec<&str> = emails.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(templates, ["trial_ending", "payment_failed"]);
    for (_, payload) in &emails {
        assert_eq!(payload["to"], serde_json::json!(["owner@dunning.test"]), "owners only");
        assert_eq!(payload["context"]["link"], "https://app.test/settings/billing");
        assert_eq!(payload["context"]["tenant"], "Dunning Co");
    }
    assert_eq!(emails[1].1["context"]["amount"], "30.00 EUR");
    // The templates render (saas-events' built-ins).
    let templates = saas_events::mail::Templates::built_in();
    for (name, payload) in &emails {
        let to = vec![payload["to"][0].as_str().unwrap().to_owned()];
        let email = templates.render(name, &to, &payload["context"]).unwrap();
        assert!(email.subject.contains("Dunning Co"), "{}", email.subject);
    }
}

#[tokio::test]
async fn billing_summaries_for_a_tenant_and_the_platform() {
    use saas_billing::entitlements::Entitlements;
    use saas_billing::summary::{platform_summary, tenant_summary};

    let w = World::new().await;
    let mut ids = Vec::new();
    for slug in ["sum-active", "sum-pastdue", "sum-trial", "sum-none"] {
        ids.push(
            lifecycle::create(w.db.app(), slug, slug, UserId::new(), &w.clock)
                .await
                .unwrap()
                .id,
        );
    }
    let subscribe = |t: TenantId, price: &'static str, seats: u64, trial: Option<u32>, pays: bool| {
        let (w, sim) = (&w, Arc::clone(&w.sim));
        async move {
            let c = customer_for(&w.platform, &*sim, t, None).await.unwrap();
            sim.set_payment_method(&c, pays).unwrap();
            let mut req = NewSubscription::new(t, &c, price).quantity(seats);
            if let Some(days) = trial {
                req = req.trial_days(days);
            }
            let s = sim.create_subscription(&req).await.unwrap();
            s.id
        }
    };
    let active = subscribe(ids[0], "pro_monthly", 1, None, true).await;
    let past_due = subscribe(ids[1], "business_seat", 4, Some(2), false).await;
    w.sim.advance(Duration::days(2));
    subscribe(ids[2], "pro_annual", 1, Some(5), true).await;
    for s in w.sim.subscriptions().await.unwrap() {
        saas_billing::sync::sync_subscription(&w.platform, &*w.sim, &s.id, "test")
            .await
            .unwrap();
    }
    assert_eq!(w.mirror(&past_due).await.0, "past_due");

    let (eur, _) = catalogs();
    let p = platform_summary(&w.platform, &eur, w.clock.now()).await.unwrap();
    assert_eq!(p.mrr_by_plan.get("pro"), Some(&3000));
    assert_eq!(p.mrr_by_plan.get("business"), Some(&6000));
    assert_eq!((p.mrr, p.past_due_amount), (9000, 6000));
    for (status, n) in [("active", 1), ("past_due", 1), ("trialing", 1), ("none", 1)] {
        assert_eq!(
            p.tenants_by_status.get(status),
            Some(&n),
            "{status}: {:?}",
            p.tenants_by_status
        );
    }
    assert_eq!(p.trials_ending_this_week.len(), 1);
    assert_eq!(p.trials_ending_this_week[0].0, ids[2]);

    let e = Entitlements::load(
        &w.platform,
        Arc::new(eur),
        saas_billing::AccessPolicy::new("free"),
        Arc::new(w.clock.clone()),
    )
    .await
    .unwrap();
    let a = tenant_summary(&w.platform, &*w.sim, &e, ids[0]).await.unwrap();
    assert_eq!((a.plan.as_str(), a.payment_problem), ("pro", false));
    let sub = a.subscription.clone().unwrap();
    assert_eq!((sub.id.as_str(), sub.status.as_str()), (active.as_str(), "active"));
    assert_eq!(a.invoices.len(), 1);
    assert_eq!(
        (a.invoices[0].amount_paid, a.invoices[0].status.as_deref()),
        (3000, Some("paid"))
    );
    let b = tenant_summary(&w.platform, &*w.sim, &e, ids[1]).await.unwrap();
    assert!(b.payment_problem);
    assert_eq!(b.subscription.unwrap().quantity, 4);
    // Serialisable for pages and APIs, with no card or bank detail in it.
    let json = serde_json::to_value(&a).unwrap();
    assert_eq!(json["plan"], "pro");
}

#[tokio::test]
async fn per_seat_subscriptions_follow_the_members() {
    use saas_billing::seats::sync_seats;

    let w = World::new().await;
    let tenant = lifecycle::create(w.db.app(), "seats-co", "Seats Co", UserId::new(), &w.clock)
        .await
        .unwrap()
        .id;
    let customer = customer_for(&w.platform, &*w.sim, tenant, None).await.unwrap();
    w.sim.set_payment_method(&customer, true).unwrap();
    let sub = w
        .sim
        .create_subscription(&NewSubscription::new(tenant, &customer, "business_seat"))
        .await
        .unwrap()
        .id;
    saas_billing::sync::sync_subscription(&w.platform, &*w.sim, &sub, "test")
        .await
        .unwrap();
    // Three members join; the memberships are written as the application role writes them.
    let mut tx = saas_tenancy::TenantTx::begin(w.db.app(), tenant).await.unwrap();
    for i in 0..3 {
        let user = w.user(&format!("seat-{i}"), None).await;
        sqlx::query("INSERT INTO saas.memberships (tenant_id, user_id, roles, joined_at) VALUES ($1, $2, ARRAY['member'], now())")
            .bind(tenant)
            .bind(user)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let queued: Vec<(Option<uuid::Uuid>, String)> =
        sqlx::query_as("SELECT tenant_id, state FROM saas.jobs WHERE kind = 'billing.sync_seats'")
            .fetch_all(w.db.platform())
            .await
            .unwrap();
    assert_eq!(
        queued,
        vec![(Some(*tenant.as_uuid()), "pending".to_owned())],
        "one job for the burst"
    );

    let (eur, _) = catalogs();
    let changed = sync_seats(&w.platform, &*w.sim, &eur, tenant, Proration::CreateProrations)
        .await
        .unwrap();
    assert_eq!(changed, Some(3));
    assert_eq!(w.sim.subscription(&sub).await.unwrap().unwrap().quantity, 3);
    assert_eq!(w.mirror(&sub).await.2, 3);
    assert_eq!(
        sync_seats(&w.platform, &*w.sim, &eur, tenant, Proration::CreateProrations)
            .await
            .unwrap(),
        None,
        "nothing to change the second time"
    );
}

#[tokio::test]
async fn a_downgrade_waits_for_the_period_end_and_a_cancellation_keeps_its_reason() {
    use saas_billing::provider::CancellationReason;

    let mut w = World::new().await;
    let tenant = TenantId::new();
    let customer = customer_for(&w.platform, &*w.sim, tenant, None).await.unwrap();
    w.sim.set_payment_method(&customer, true).unwrap();
    let sub = w
        .sim
        .create_subscription(&NewSubscription::new(tenant, &customer, "business_seat").quantity(3))
        .await
        .unwrap()
        .id;
    w.deliver().await;
    // Downgrade to Pro at the period's end: nothing changes now, nothing is invoiced.
    let down = SubscriptionChange::price("pro_monthly").with_quantity(1);
    let now = w.sim.schedule_change(&sub, &down).await.unwrap();
    assert_eq!(
        (now.price_lookup_key.as_deref(), now.quantity),
        (Some("business_seat"), 3)
    );
    assert!(!w.deliver().await.contains(&"invoice.paid".to_owned()));
    w.sim.advance(Duration::days(30));
    w.deliver().await;
    assert_eq!(
        w.mirror(&sub).await,
        ("active".into(), Some("pro_monthly".into()), 1, false)
    );
    let renewal = w.sim.events().into_iter().rfind(|e| e.kind == "invoice.paid").unwrap();
    assert_eq!(renewal.object["amount_paid"], 3000, "the new period at the new price");
    // A change scheduled, then dropped: the renewal keeps the terms.
    w.sim
        .schedule_change(&sub, &SubscriptionChange::price("pro_annual"))
        .await
        .unwrap();
    w.sim.unschedule_change(&sub).await.unwrap();
    w.sim.advance(Duration::days(30));
    w.deliver().await;
    assert_eq!(w.mirror(&sub).await.1.as_deref(), Some("pro_monthly"));

    let reason = CancellationReason {
        feedback: Some("too_expensive".into()),
        comment: Some("we only need it in spring".into()),
    };
    w.sim
        .cancel_with_reason(&sub, CancelAt::PeriodEnd, &reason)
        .await
        .unwrap();
    assert_eq!(w.sim.cancellation_reason(&sub), Some(reason));
    w.deliver().await;
    assert!(w.mirror(&sub).await.3);
}

#[tokio::test]
async fn a_trial_ends_as_configured_and_coupons_apply_to_running_subscriptions() {
    use saas_billing::provider::TrialEnd;

    let mut w = World::new().await;
    let mut subs = Vec::new();
    for end in [TrialEnd::Pause, TrialEnd::Cancel, TrialEnd::CreateInvoice] {
        let tenant = TenantId::new();
        let customer = customer_for(&w.platform, &*w.sim, tenant, None).await.unwrap();
        let req = NewSubscription::new(tenant, &customer, "pro_monthly")
            .trial_days(7)
            .trial_end(end);
        subs.push(w.sim.create_subscription(&req).await.unwrap().id);
    }
    w.sim.advance(Duration::days(8));
    w.deliver().await;
    let statuses: Vec<String> = futures_util::future::join_all(subs.iter().map(|s| w.mirror(s)))
        .await
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(statuses, ["paused", "canceled", "past_due"]);

    let coupon = Discount::Coupon("SPRING25".into());
    w.sim
        .update_subscription(&subs[0], &SubscriptionChange::discount(coupon.clone()))
        .await
        .unwrap();
    assert_eq!(w.sim.discount_of(&subs[0]), Some(coupon));
}

#[tokio::test]
async fn seats_are_counted_from_members_and_pending_invitations() {
    use saas_billing::catalog::{Feature, Plan};
    use saas_billing::entitlements::{Entitlements, SEATS_COUNT};

    let w = World::new().await;
    let tenant = lifecycle::create(w.db.app(), "counted-co", "Counted Co", UserId::new(), &w.clock)
        .await
        .unwrap()
        .id;
    for i in 0..2 {
        let user = w.user(&format!("counted-{i}"), None).await;
        sqlx::query("INSERT INTO saas.memberships (tenant_id, user_id, roles, joined_at) VALUES ($1, $2, ARRAY['member'], now())")
            .bind(tenant)
            .bind(user)
            .execute(w.db.platform())
            .await
            .unwrap();
    }
    for (email, revoked) in [("pending@counted.test", false), ("gone@counted.test", true)] {
        sqlx::query(
            "INSERT INTO saas.invitations (tenant_id, id, email, role, token_hash, invited_by, created_at, expires_at, \
             last_sent_at, revoked_at) VALUES ($1, gen_random_uuid(), $2, 'member', decode(repeat('ab', 32), 'hex'), \
             gen_random_uuid(), now(), now() + interval '7 days', now(), CASE WHEN $3 THEN now() END)",
        )
        .bind(tenant)
        .bind(email)
        .bind(revoked)
        .execute(w.db.platform())
        .await
        .unwrap();
    }
    let catalog = Arc::new(
        Catalog::new("eur")
            .plan(Plan::new("free").feature("seats", Feature::Limit(3)))
            .validate()
            .unwrap(),
    );
    let e = Entitlements::new(
        catalog,
        saas_billing::AccessPolicy::new("free"),
        Arc::new(w.clock.clone()),
    );
    e.count_with("seats", SEATS_COUNT);
    e.refresh_counts(&w.platform, tenant).await.unwrap();
    let d = e.check(tenant, "seats", 1);
    assert_eq!(
        (d.used, d.limit, d.granted),
        (3, Some(3), false),
        "two members and one pending invitation"
    );
}
