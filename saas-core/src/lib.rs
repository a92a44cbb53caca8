//! # saas-core
//!
//! The foundation every saas-kit crate stands on:
//!
//! | module | what it gives you |
//! |---|---|
//! | [`id`] | UUIDv7 newtype ids ([`TenantId`], [`UserId`], …) and [`define_id!`] for your own |
//! | [`principal`] | the authenticated caller, as every crate sees it |
//! | [`clock`] | [`Clock`](clock::Clock), with a [`ManualClock`](clock::ManualClock) for tests that move time |
//! | [`problem`] | RFC 9457 problem+json errors and [`IntoProblem`] |
//! | [`request_id`], [`problem_layer`] | tower layers for request ids and problem bodies |
//! | [`ratelimit`] | GCRA rate limits per tenant, key, user or address; in memory or in Redis |
//! | [`telemetry`] | JSON logs with request/trace/tenant/user ids, a per-request span, RED metrics, OTLP, Sentry |
//! | [`audit`] | a tenant-scoped, append-only, hash-chained audit log |
//! | [`crypto`] | field-level encryption with key rotation |
//! | [`defaults`] | catch-panic, API security headers, and body limit/timeout/CORS for axum |
//! | [`page`] | tamper-evident cursor pagination and a typed page |
//! | [`health`] | liveness and readiness (database, migrations, start-up verdicts, worker heartbeats) |
//! | `validate` (feature `axum`) | `Valid<T>`: JSON that deserialised and validated, or a 400/422 problem |
//! | [`idempotency`] | `Idempotency-Key` replays stored per tenant and principal in PostgreSQL |
//! | [`notify`] | typed change notifications between processes (LISTEN/NOTIFY) with one listener |
//! | `openapi` (feature) | utoipa components: the problem schema, rate-limit headers, shared error responses, pages |
//! | [`service`] | helpers shared by the middleware |
//! | [`db`] | pool defaults and pool metrics |
//! | `testkit` (feature) | a fresh database per test, reached as a non-superuser application role |
//!
//! ## A service with the edge layers
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use bytes::Bytes;
//! use saas_core::{problem::Problem, problem_layer::ProblemLayer, request_id::RequestIdLayer,
//!                 telemetry::TraceLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! async fn handler(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
//!     if req.uri().path() == "/hello" {
//!         Ok(Response::new(Full::from("hello")))
//!     } else {
//!         Ok(Problem::not_found().with_detail("nothing lives here").into_http())
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let app = ServiceBuilder::new()
//!     .layer(RequestIdLayer::new())
//!     .layer(TraceLayer::new())
//!     .layer(ProblemLayer::new())
//!     .service(service_fn(handler));
//!
//! let res = app.oneshot(Request::get("/nope").body(Full::default()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::NOT_FOUND);
//! let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! let problem = Problem::from_json(&body).unwrap();
//! assert_eq!(problem.extension("request_id").unwrap(), id.as_str());
//! # });
//! ```
//!
//! ## Migrations
//!
//! [`MIGRATOR`] creates the `saas` schema, the `saas_app` group role that application
//! logins join, and the audit log. Run it as the migration owner, not as the
//! application role. Its history lives in `saas.core_migrations`, apart from other
//! crates' migrations.
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate self as saas_core;

pub mod audit;
pub mod clock;
pub mod crypto;
pub mod db;
pub mod defaults;
pub mod health;
pub mod id;
pub mod idempotency;
pub mod notify;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod page;
pub mod principal;
pub mod problem;
pub mod problem_layer;
pub mod ratelimit;
pub mod request_id;
pub mod service;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
#[cfg(feature = "axum")]
pub mod validate;

pub use id::{ApiKeyId, AuditId, EventId, TenantId, UserId};
pub use principal::{AuthMethod, Principal, SupportSessionId};
pub use problem::{IntoProblem, Problem};

/// The migrations of saas-core (schema `saas`, role `saas_app`, the audit log).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

#[doc(hidden)]
pub mod __private {
    pub use serde;
    pub use sqlx;
    pub use uuid;
}

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn public_types_cross_threads() {
        assert_send_sync::<crate::Problem>();
        assert_send_sync::<crate::TenantId>();
        assert_send_sync::<crate::request_id::RequestId>();
        assert_send_sync::<crate::request_id::RequestIdLayer>();
        assert_send_sync::<crate::problem_layer::ProblemLayer>();
        assert_send_sync::<crate::telemetry::TraceLayer>();
        assert_send_sync::<crate::telemetry::RequestSpan>();
        assert_send_sync::<crate::clock::ManualClock>();
        assert_send_sync::<crate::crypto::Keyring>();
        assert_send_sync::<crate::audit::AuditRecord>();
        assert_send_sync::<crate::audit::AuditError>();
    }
}
