//! # saas-billing
//!
//! Stripe owns the money; this crate keeps what the product needs to know about it —
//! which plan a tenant is on and what that lets it use — in a local mirror that converges
//! to Stripe's truth whatever its webhooks do.
//!
//! | piece | what it does |
//! |---|---|
//! | [`catalog`] | plans, prices (flat, per seat, metered; monthly and annual) and features, in code, named by lookup key; [`push`](catalog::push) to the provider and [`check`](catalog::check) for drift |
//! | [`SubscriptionStatus`] | Stripe's statuses and the legal moves between them; terminal states stay terminal |
//! | [`AccessPolicy`] | (status, time in status, plan) → what the tenant may use: grace period, fallback, payment-problem signal |
//! | [`webhook`] | the `POST` endpoint: `Stripe-Signature` verified against every active secret, the event stored in an inbox and its processing queued in one transaction, duplicates acknowledged; inbox retention |
//! | [`sync`] | processing: each stored event's subscriptions refetched from the provider and applied to the mirror, serialised per subscription, with a transition history and the tenant's audit log |
//! | [`reconcile`](mod@reconcile) | the mirror compared with the provider, drift fixed and reported; on a schedule or on demand |
//! | [`BillingProvider`] | customers (one per tenant: [`customer_for`]), checkout and portal sessions, subscription changes with proration and their previews, invoices, usage |
//! | [`Simulator`] | an in-memory provider (not Stripe) that walks Stripe's lifecycles on a `ManualClock` and emits Stripe's events |
//! | `stripe` (feature `stripe`) | the Stripe client: idempotency keys, retries honouring `Retry-After`, a cap on requests in flight, a redacted key |
//! | [`customers`] | a tenant whose deletion is requested stops paying |
//! | [`entitlements`] | what a tenant may use, answered from memory: plan, access policy, overrides and grants; usage counted once; the 402 route layer; seats for invitations; flag targeting |
//! | [`usage`] | metered usage sent to the provider's meters, once per usage |
//! | [`seats`] | per-seat subscriptions follow the member count |
//! | [`notify`] | failed payments, payments needing action and ending trials emailed to the tenant's owners |
//! | [`summary`] | a tenant's and the platform's billing at a glance (MRR, statuses, trials ending, invoices) |
//!
//! ## Receive Stripe's webhooks
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use saas_billing::webhook::{WebhookEndpoint, WebhookSecrets, sign};
//! use saas_tenancy::PlatformPool;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::ServiceExt;
//!
//! let db = saas_core::testkit::TestDb::new(&[
//!     &saas_core::MIGRATOR, &saas_tenancy::MIGRATOR, &saas_events::MIGRATOR, &saas_billing::MIGRATOR,
//! ]).await.unwrap();
//! // In production: `WebhookSecrets::from_env()` (STRIPE_WEBHOOK_SECRET).
//! let secrets = WebhookSecrets::new("whsec_example").unwrap();
//! let endpoint = WebhookEndpoint::new(PlatformPool::new(db.platform().clone()), secrets);
//!
//! let body = r#"{"id":"evt_1","object":"event","type":"invoice.paid","created":1767225600,"livemode":false,"data":{"object":{"id":"in_1"}}}"#;
//! let now = chrono::Utc::now().timestamp();
//! let delivery = || {
//!     http::Request::post("/webhooks/stripe")
//!         .header("stripe-signature", sign("whsec_example", now, body.as_bytes()))
//!         .body(Full::new(Bytes::from(body)))
//!         .unwrap()
//! };
//! let res = endpoint.clone().oneshot(delivery()).await.unwrap();
//! assert_eq!(res.status(), 200);
//! // Stripe delivers at least once: the same event again is acknowledged and ignored.
//! let again = endpoint.clone().oneshot(delivery()).await.unwrap();
//! assert_eq!(again.status(), 200);
//! let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.billing_inbox").fetch_one(db.platform()).await.unwrap();
//! assert_eq!(stored, 1);
//! # });
//! ```
//!
//! ## Sell a plan
//!
//! With the [`Simulator`] here; in production the same calls go to `stripe::Stripe`, and
//! [`customer_for`] records each tenant's customer in the mirror.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use saas_billing::catalog::{self, Catalog, Plan, Price};
//! use saas_billing::provider::{BillingProvider, CheckoutRequest, SubscriptionChange};
//! use saas_billing::Simulator;
//! use saas_core::{TenantId, clock::ManualClock};
//!
//! let catalog = Catalog::new("eur")
//!     .plan(Plan::new("free"))
//!     .plan(Plan::new("pro").trial_days(14).price(Price::monthly("pro_monthly", 2900)))
//!     .plan(Plan::new("team").price(Price::per_seat_monthly("team_seat", 1200)))
//!     .validate()
//!     .unwrap();
//! let provider = Simulator::new(ManualClock::new(chrono::Utc::now()));
//! catalog::push(&catalog, &provider).await.unwrap(); // products and prices, idempotent
//!
//! let tenant = TenantId::new();
//! let customer = provider.create_customer(tenant, Some("billing@acme.test")).await.unwrap();
//! let page = provider
//!     .checkout_session(
//!         &CheckoutRequest::new(tenant, &customer.id, "pro_monthly", "https://app.test/ok", "https://app.test/back")
//!             .trial_days(14),
//!     )
//!     .await
//!     .unwrap();
//! // Send the customer to `page.url`; Stripe then sends `checkout.session.completed`.
//! let sub = provider.complete_checkout(&page.id, true).unwrap();
//! assert_eq!(provider.subscription(&sub).await.unwrap().unwrap().status.as_str(), "trialing");
//!
//! // What moving to five Team seats would cost, before doing it.
//! let change = SubscriptionChange::price("team_seat").with_quantity(5);
//! let preview = provider.preview_change(&sub, &change).await.unwrap();
//! assert_eq!(preview.amount_due, 5 * 1200); // still in the trial: no proration
//! provider.update_subscription(&sub, &change).await.unwrap();
//! # });
//! ```

pub mod access;
pub mod catalog;
pub mod customers;
pub mod entitlements;
pub mod notify;
pub mod provider;
pub mod reconcile;
pub mod seats;
pub mod simulator;
pub mod status;
#[cfg(feature = "stripe")]
pub mod stripe;
pub mod summary;
pub mod sync;
pub mod usage;
pub mod webhook;

pub use access::{Access, AccessPolicy, AccessReason, Lapsed, Mode};
pub use catalog::{Catalog, CatalogError};
pub use customers::customer_for;
pub use entitlements::{Decision, Entitlements};
pub use provider::{BillingProvider, ProviderError};
pub use simulator::Simulator;
pub use status::{SubscriptionStatus, TransitionError, UnknownStatus};

/// This crate's migrations (the webhook inbox, the mirror). Run after saas-core's, saas-tenancy's
/// and saas-events'.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();
