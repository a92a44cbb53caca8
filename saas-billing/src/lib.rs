//! # saas-billing
//!
//! Stripe owns the money; this crate keeps what the product needs to know about it —
//! which plan a tenant is on and what that lets it use — in a local mirror that converges
//! to Stripe's truth whatever its webhooks do.
//!
//! | piece | what it does |
//! |---|---|
//! | [`catalog`] | plans, prices (flat, per seat, metered; monthly and annual) and features, in code, named by lookup key |
//! | [`SubscriptionStatus`] | Stripe's statuses and the legal moves between them; terminal states stay terminal |
//! | [`AccessPolicy`] | (status, time in status, plan) → what the tenant may use: grace period, fallback, payment-problem signal |
//! | [`webhook`] | the `POST` endpoint: `Stripe-Signature` verified against every active secret, the event stored in an inbox and its processing queued in one transaction, duplicates acknowledged |
//! | [`sync`] | processing: each stored event's subscription refetched from the provider and applied to the mirror, serialised per subscription, with a transition history and the tenant's audit log |
//! | [`BillingProvider`], [`Simulator`] | what the mirror reads from the provider; an in-memory provider (not Stripe) that walks Stripe's lifecycles on a `ManualClock` and emits Stripe's events |
//!
//! | [`reconcile`](mod@reconcile) | the mirror compared with the provider, drift fixed and reported; on a schedule or on demand |
//! | `stripe` (feature `stripe`) | the Stripe client: idempotency keys, retries honouring `Retry-After`, a cap on requests in flight, a redacted key; the provider's read side and customer creation |
//!
//! Still to come (see the crate's CHANGELOG): the provider's write side (checkout and
//! portal sessions, subscription changes with proration, usage), the catalog's push and
//! drift check, entitlements and usage metering.
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

pub mod access;
pub mod catalog;
pub mod customers;
pub mod provider;
pub mod reconcile;
pub mod simulator;
pub mod status;
#[cfg(feature = "stripe")]
pub mod stripe;
pub mod sync;
pub mod webhook;

pub use access::{Access, AccessPolicy, AccessReason, Lapsed, Mode};
pub use catalog::{Catalog, CatalogError};
pub use customers::customer_for;
pub use provider::{BillingProvider, ProviderError};
pub use simulator::Simulator;
pub use status::{SubscriptionStatus, TransitionError, UnknownStatus};

/// This crate's migrations (the webhook inbox, the mirror). Run after saas-core's, saas-tenancy's
/// and saas-events'.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();
