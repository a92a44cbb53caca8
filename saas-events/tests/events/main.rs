//! saas-events against PostgreSQL: the application role publishes, workers run on the
//! platform role, tenant handlers get transactions scoped to their tenant.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, missing_docs)]

mod bus;
mod crash;
mod mail;
mod webhook;
mod worker;

use std::time::Duration;

use saas_core::testkit::TestDb;
use saas_tenancy::PlatformPool;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

pub async fn db() -> TestDb {
    TestDb::new(&[&saas_core::MIGRATOR, &saas_tenancy::MIGRATOR, &saas_events::MIGRATOR])
        .await
        .unwrap()
}

/// A platform pool big enough for several workers (the test kit's is small).
pub async fn platform(db: &TestDb, max: u32) -> PlatformPool {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .connect_with(db.platform_options())
        .await
        .unwrap();
    PlatformPool::new(pool)
}

pub async fn app(db: &TestDb, max: u32) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .connect_with(db.app_options())
        .await
        .unwrap()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ping {
    pub n: u32,
    #[serde(default)]
    pub key: String,
}

impl saas_events::Event for Ping {
    const KIND: &'static str = "test.ping";
}

/// Waits until `f` holds, up to `limit`.
pub async fn until(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f().await
}
