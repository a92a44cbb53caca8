//! The HTTP API.

pub mod account;
pub mod billing;
pub mod hooks;
pub mod people;
pub mod projects;
pub mod tenant;

use axum::Json;
use serde_json::{Value, json};

#[utoipa::path(get, path = "/", tag = "service", security(()),
    responses((status = 200, description = "What this is and where to go", body = Object)))]
/// `GET /`: what this is and where to go next (no credential needed).
pub(crate) async fn root() -> Json<Value> {
    Json(json!({
        "name": "saas-app",
        "version": env!("CARGO_PKG_VERSION"),
        "about": "the saas-kit example: a multi-tenant project-and-task API",
        "links": {
            "me": "/v1/me",
            "projects": "/v1/projects",
            "members": "/v1/members",
            "billing": "/v1/billing",
            "stripe_webhooks": "/webhooks/stripe",
            "health": "/health",
        },
        "docs": "/docs",
        "openapi": "/openapi.json",
        "auth": "Authorization: Bearer <token or API key>, and X-Tenant-Id: <tenant slug or id>",
    }))
}

#[utoipa::path(get, path = "/health", tag = "service", security(()),
    responses((status = 200, description = "Alive", body = Object)))]
/// `GET /health`: liveness.
pub(crate) async fn health() -> http::Response<String> {
    saas_core::health::liveness()
}

#[utoipa::path(get, path = "/v1/ping", tag = "service",
    responses((status = 200, description = "pong: the full stack (authentication, tenant, membership, rate limit, entitlements, flags, a permission check) answered", body = String)))]
/// `GET /v1/ping` (`project:read`): nothing but the stack, for load tests and probes with
/// a credential.
pub(crate) async fn ping() -> &'static str {
    "pong"
}
