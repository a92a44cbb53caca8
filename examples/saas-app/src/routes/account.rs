//! Who the caller is, and the tenant's members.

use axum::Json;
use saas_authz::Memberships;
use saas_billing::entitlements::TenantSnapshot;
use saas_core::{Principal, Problem};
use saas_tenancy::{TenantContext, TenantTx};
use serde_json::{Value, json};

/// `GET /v1/me`: the caller, the tenant, the caller's roles, and the tenant's plan and
/// features.
#[utoipa::path(get, path = "/v1/me", tag = "account",
    responses((status = 200, description = "The caller, the tenant, roles, plan", body = Object)))]
pub(crate) async fn me(
    principal: Principal,
    tenant: TenantContext,
    axum::Extension(snapshot): axum::Extension<TenantSnapshot>,
    mut tx: TenantTx,
) -> Result<Json<Value>, Problem> {
    let member = Memberships::get(&mut tx, principal.user_id).await?;
    tx.commit().await?;
    let (plan, payment_problem) = snapshot.plan();
    Ok(Json(json!({
        "user": principal.user_id,
        "api_key": principal.api_key_id(),
        "mfa": principal.mfa,
        "tenant": { "id": tenant.id(), "slug": tenant.tenant().slug, "name": tenant.tenant().name },
        "roles": member.map(|m| m.roles).unwrap_or_default(),
        "plan": &*plan,
        "payment_problem": payment_problem,
    })))
}

/// `GET /v1/members` (`member:list`).
#[utoipa::path(get, path = "/v1/members", tag = "people",
    responses((status = 200, description = "The tenant's members", body = Object)))]
pub(crate) async fn members(mut tx: TenantTx) -> Result<Json<Value>, Problem> {
    let members = Memberships::list(&mut tx).await?;
    tx.commit().await?;
    let list: Vec<Value> = members
        .iter()
        .map(|m| json!({ "user": m.user_id, "email": m.email, "roles": m.roles }))
        .collect();
    Ok(Json(json!({ "members": list })))
}
