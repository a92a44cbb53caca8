//! # saas-app
//!
//! The saas-kit example: a project-and-task API for organisations, wiring every crate —
//! tenants isolated by PostgreSQL row-level security, authentication through an
//! identity provider, roles and per-project grants checked by the RBAC evaluator, plans
//! and limits from the billing catalog, feature flags, jobs and e-mail through the
//! outbox, Stripe's webhooks.
//!
//! `cargo run -p saas-app` needs only a local PostgreSQL: it creates its database and
//! roles, migrates, verifies isolation, seeds two demo organisations and serves on
//! `127.0.0.1:3000`, printing tokens and curl commands. Without configuration it runs a
//! local development identity provider, the billing simulator (not Stripe) and a console
//! mailer (nothing is sent); see [`config::Config`] for what switches the real ones on.
//!
//! The same app in a test, on a database of its own:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use saas_app::{app::{App, Billing, Parts}, setup};
//! use saas_billing::Simulator;
//! use saas_core::clock::{ManualClock, SystemClock};
//! use std::sync::Arc;
//!
//! let db = setup::prepare(setup::DEFAULT_ADMIN_URL, "saas_app_demo").await?;
//! setup::migrate(&db.owner).await?;
//! saas_tenancy::verify_isolation(&db.app).await?;
//! let idp = saas_authz::LocalIssuer::start().await?;
//! let app = App::start(db, Parts {
//!     oidc: idp.oidc("api").await?,
//!     billing: Billing::Simulator(Arc::new(Simulator::new(ManualClock::new(chrono::Utc::now())))),
//!     webhook_secret: "whsec_demo".into(),
//!     keyring: Arc::new(saas_core::crypto::Keyring::from_spec(&format!("k1:{}", saas_core::crypto::Keyring::generate_key()))?),
//!     public_url: "http://127.0.0.1:3000".into(),
//!     clock: Arc::new(SystemClock),
//!     allow_local_webhooks: false,
//!     rate_store: saas_app::app::RateStore::Memory(saas_core::ratelimit::MemoryStore::new()),
//!     rate_override: None,
//! }).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! tokio::spawn(axum::serve(listener, app.router.clone()).into_future());
//! # Ok(()) }
//! ```

pub mod app;
pub mod config;
pub mod openapi;
pub mod product;
pub mod routes;
pub mod seed;
pub mod setup;

/// The app's own migrations (projects, tasks). Run after every crate's: see
/// [`setup::migrators`].
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();
