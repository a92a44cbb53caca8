//! saas-billing against the real PostgreSQL (as the platform and application roles).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod sync;
mod webhook;
