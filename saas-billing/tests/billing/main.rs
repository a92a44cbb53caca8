//! saas-billing against the real PostgreSQL (as the platform and application roles).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod catalog;
mod entitlements;
mod operations;
mod stripe;
mod sync;
mod webhook;

/// A database of its own with every migration saas-billing needs.
pub async fn db() -> saas_core::testkit::TestDb {
    saas_core::testkit::TestDb::new(&[
        &saas_core::MIGRATOR,
        &saas_tenancy::MIGRATOR,
        &saas_events::MIGRATOR,
        &saas_authz::MIGRATOR,
        &saas_billing::MIGRATOR,
    ])
    .await
    .unwrap()
}
