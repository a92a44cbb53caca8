//! The HTTP API.

pub mod account;
pub mod billing;
pub mod hooks;
pub mod people;
pub mod projects;
pub mod tenant;

use axum::Json;
use serde_json::{Value, json};

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
        "auth": "Authorization: Bearer <token or API key>, and X-Tenant-Id: <tenant slug or id>",
    }))
}

/// `GET /health`: liveness.
pub(crate) async fn health() -> http::Response<String> {
    saas_core::health::liveness()
}
