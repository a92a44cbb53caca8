//! saas-flags against PostgreSQL (as the application and platform roles), through HTTP
//! layers, through OpenFeature, and against Unleash's client specification.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod follow;
mod layer;
mod openfeature;
mod spec;
mod store;

use saas_core::testkit::TestDb;

pub async fn db() -> TestDb {
    TestDb::new(&[&saas_core::MIGRATOR, &saas_tenancy::MIGRATOR, &saas_flags::MIGRATOR])
        .await
        .unwrap()
}
