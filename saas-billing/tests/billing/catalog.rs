//! The catalog pushed to a provider (the simulator), drift reported, prices replaced and
//! archived — never deleted — and subscriptions kept on the terms they took.

use chrono::{Duration, TimeZone, Utc};
use saas_billing::ProviderError;
use saas_billing::catalog::{Catalog, CatalogDrift, CatalogProvider, Feature, Plan, Price, check, push};
use saas_billing::provider::{BillingProvider, NewSubscription};
use saas_billing::simulator::Simulator;
use saas_core::TenantId;
use saas_core::clock::ManualClock;

fn v1() -> Catalog {
    Catalog::new("eur")
        .plan(Plan::new("free").feature("projects", Feature::Limit(3)))
        .plan(
            Plan::new("pro")
                .price(Price::monthly("pro_monthly", 3000))
                .price(Price::annual("pro_annual", 30000))
                .price(Price::metered_monthly("pro_api", "api_calls", 1)),
        )
        .plan(
            Plan::new("business")
                .name("Business")
                .price(Price::per_seat_monthly("business_seat", 1500)),
        )
        .validate()
        .unwrap()
}

/// Pro renamed, its monthly price raised, its annual price dropped.
fn v2() -> Catalog {
    Catalog::new("eur")
        .plan(Plan::new("free").feature("projects", Feature::Limit(3)))
        .plan(
            Plan::new("pro")
                .name("Pro")
                .price(Price::monthly("pro_monthly", 3500))
                .price(Price::metered_monthly("pro_api", "api_calls", 1)),
        )
        .plan(
            Plan::new("business")
                .name("Business")
                .price(Price::per_seat_monthly("business_seat", 1500)),
        )
        .validate()
        .unwrap()
}

#[tokio::test]
async fn push_creates_then_does_nothing_then_replaces_and_archives() {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap());
    let sim = Simulator::new(clock);

    let drift = check(&v1(), &sim).await.unwrap();
    assert!(drift.contains(&CatalogDrift::MissingProduct { plan: "pro".into() }));
    assert!(
        !drift
            .iter()
            .any(|d| matches!(d, CatalogDrift::MissingProduct { plan } if plan == "free")),
        "free plans are not sold"
    );
    assert_eq!(
        drift
            .iter()
            .filter(|d| matches!(d, CatalogDrift::MissingPrice { .. }))
            .count(),
        4
    );

    let report = push(&v1(), &sim).await.unwrap();
    assert_eq!(report.products_created, ["pro", "business"]);
    assert_eq!(
        report.prices_created,
        ["pro_monthly", "pro_annual", "pro_api", "business_seat"]
    );
    assert_eq!(check(&v1(), &sim).await.unwrap(), []);
    assert!(
        push(&v1(), &sim).await.unwrap().is_empty(),
        "a second push changes nothing"
    );

    // A customer on the old monthly price.
    let tenant = TenantId::new();
    let customer = sim.create_customer(tenant, None).await.unwrap().id;
    sim.set_payment_method(&customer, true).unwrap();
    let sub = sim
        .create_subscription(&NewSubscription::new(tenant, &customer, "pro_monthly"))
        .await
        .unwrap()
        .id;
    let old_monthly = sim
        .prices()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.lookup_key.as_deref() == Some("pro_monthly"))
        .unwrap()
        .id;

    let mut drift = check(&v2(), &sim).await.unwrap();
    drift.sort_by_key(|d| format!("{d:?}"));
    assert!(
        drift.contains(&CatalogDrift::ProductName {
            plan: "pro".into(),
            provider: "pro".into(),
            code: "Pro".into()
        }),
        "{drift:?}"
    );
    assert!(
        drift
            .iter()
            .any(|d| matches!(d, CatalogDrift::PriceDiffers { lookup_key, fields, .. }
        if lookup_key == "pro_monthly" && fields == &["amount"]))
    );
    assert!(
        drift
            .iter()
            .any(|d| matches!(d, CatalogDrift::NotInCode { lookup_key: Some(k), .. } if k == "pro_annual"))
    );
    assert_eq!(drift.len(), 3, "{drift:?}");

    let report = push(&v2(), &sim).await.unwrap();
    assert_eq!(report.products_renamed, ["pro"]);
    assert_eq!(report.prices_created, ["pro_monthly"]);
    assert_eq!(report.prices_archived.len(), 2);
    assert!(report.prices_archived.contains(&old_monthly));
    assert_eq!(check(&v2(), &sim).await.unwrap(), []);

    // Archived, not deleted; no longer offered; the subscription keeps its terms.
    let prices = sim.prices().await.unwrap();
    let old = prices.iter().find(|p| p.id == old_monthly).unwrap();
    assert!(!old.active);
    assert_eq!(prices.iter().filter(|p| p.active).count(), 3);
    assert!(matches!(
        sim.create_subscription(&NewSubscription::new(tenant, &customer, "pro_annual"))
            .await,
        Err(ProviderError::NotFound(_))
    ));
    sim.advance(Duration::days(31));
    let renewal = sim.events().into_iter().rfind(|e| e.kind == "invoice.paid").unwrap();
    let invoice = sim
        .invoice(renewal.object["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (invoice.subscription.as_deref(), invoice.amount_paid),
        (Some(sub.as_str()), 3000),
        "renewed at the price it subscribed to"
    );
    let newcomer = sim.create_customer(TenantId::new(), None).await.unwrap().id;
    sim.set_payment_method(&newcomer, true).unwrap();
    sim.create_subscription(&NewSubscription::new(tenant, &newcomer, "pro_monthly"))
        .await
        .unwrap();
    let first = sim.events().into_iter().rfind(|e| e.kind == "invoice.paid").unwrap();
    assert_eq!(
        first.object["amount_paid"], 3500,
        "new subscriptions take the new price"
    );
}
