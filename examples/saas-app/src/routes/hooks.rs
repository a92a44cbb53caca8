//! The tenant's outbound webhook endpoints: `project.*` and `task.*` events, signed with
//! the Standard Webhooks scheme, retried, logged.

use axum::Json;
use axum::extract::Extension;
use axum::http::StatusCode;
use saas_core::Problem;
use saas_core::validate::Valid;
use saas_tenancy::TenantTx;
use serde::Deserialize;
use serde_json::{Value, json};
use validator::Validate;

use crate::app::Shared;

/// The event types the app sends.
pub const EVENT_TYPES: &[&str] = &["project.created", "project.archived", "project.deleted", "task.created"];

/// The body of `POST /v1/webhooks`.
#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
pub struct NewEndpoint {
    /// Where deliveries go (https; addresses inside our network are refused).
    #[validate(length(min = 1, max = 2000))]
    pub url: String,
    /// The event types it receives (empty or absent: all).
    #[serde(default)]
    pub event_types: Vec<String>,
}

/// `POST /v1/webhooks` (`webhook:manage`): the signing secret is in this answer only.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = NewEndpoint,
    responses((status = 201, description = "The endpoint and its signing secret (shown once)", body = Object)))]
pub(crate) async fn create(
    Extension(shared): Extension<Shared>,
    mut tx: TenantTx,
    Valid(body): Valid<NewEndpoint>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    if let Some(unknown) = body.event_types.iter().find(|t| !EVENT_TYPES.contains(&t.as_str())) {
        return Err(Problem::unprocessable(format!(
            "unknown event type {unknown:?}; the app sends {}",
            EVENT_TYPES.join(", ")
        ))
        .with_type("unknown-event-type"));
    }
    let tenant = tx.tenant();
    let types: Vec<&str> = body.event_types.iter().map(String::as_str).collect();
    let (endpoint, secret) = shared
        .webhooks
        .create_endpoint(&mut tx, tenant, &body.url, &types)
        .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": endpoint.id, "url": endpoint.url, "event_types": endpoint.event_types, "secret": secret,
        })),
    ))
}

/// `GET /v1/webhooks` (`webhook:manage`): the endpoints, without their secrets.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, description = "The endpoints, without secrets", body = Object)))]
pub(crate) async fn list(Extension(shared): Extension<Shared>, mut tx: TenantTx) -> Result<Json<Value>, Problem> {
    let endpoints = shared.webhooks.endpoints(&mut tx).await?;
    tx.commit().await?;
    let list: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            json!({
                "id": e.id, "url": e.url, "event_types": e.event_types, "enabled": e.enabled,
                "disabled_reason": e.disabled_reason, "failing_since": e.failing_since,
            })
        })
        .collect();
    Ok(Json(json!({ "endpoints": list })))
}
