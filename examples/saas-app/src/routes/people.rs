//! Invitations, members' roles and API keys.

use axum::Json;
use axum::extract::{Extension, Path};
use axum::http::StatusCode;
use saas_authz::{ApiKeys, InvitationToken, NewApiKey};
use saas_core::validate::Valid;
use saas_core::{ApiKeyId, Principal, Problem, UserId};
use saas_tenancy::TenantTx;
use serde::Deserialize;
use serde_json::{Value, json};
use validator::Validate;

use crate::app::Shared;

/// The body of `POST /v1/invitations`.
#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
pub struct NewInvitation {
    /// Who to invite.
    #[validate(email, length(max = 320))]
    pub email: String,
    /// The role they get (built-in or custom); not above the inviter's.
    #[validate(length(min = 1, max = 64))]
    pub role: String,
}

/// `POST /v1/invitations` (`invitation:create`): the e-mail goes out through the outbox,
/// the link's token sealed in the job.
#[utoipa::path(post, path = "/v1/invitations", tag = "people", request_body = NewInvitation,
    responses((status = 201, description = "Invited; the e-mail is on its way", body = Object),
              (status = 402, description = "Every seat of the plan is taken"), (status = 409, description = "Already a member or invited")))]
pub(crate) async fn invite(
    Extension(shared): Extension<Shared>,
    principal: Principal,
    mut tx: TenantTx,
    Valid(body): Valid<NewInvitation>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let tenant = tx.tenant();
    let inv = shared
        .invitations
        .invite(&mut tx, &principal, &body.email, &body.role)
        .await?;
    tx.commit().await?;
    shared.recount(tenant).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": inv.id, "email": inv.email, "role": inv.role, "expires_at": inv.expires_at })),
    ))
}

/// The body of `POST /v1/invitations/accept`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Accept {
    /// The token from the invitation's link.
    pub token: String,
}

/// `POST /v1/invitations/accept`: the signed-in invitee joins the tenant the token names
/// (no `X-Tenant-Id`: they are not a member yet). A wrong, used, revoked or expired token
/// answers 404.
#[utoipa::path(post, path = "/v1/invitations/accept", tag = "people", request_body = Accept,
    responses((status = 200, description = "Joined", body = Object), (status = 410, description = "Used, revoked or expired")))]
pub(crate) async fn accept(
    Extension(shared): Extension<Shared>,
    principal: Principal,
    Json(body): Json<Accept>,
) -> Result<Json<Value>, Problem> {
    let token = InvitationToken::parse(body.token.trim())?;
    let tenant = token.tenant();
    let mut tx = TenantTx::begin_as(&shared.db.app, tenant, principal.user_id).await?;
    let member = shared.invitations.accept(&mut tx, &principal, &token).await?;
    tx.commit().await?;
    shared.policy_changed(tenant).await;
    shared.recount(tenant).await;
    Ok(Json(json!({ "tenant": tenant, "roles": member.roles })))
}

/// The body of `PUT /v1/members/{user}/roles`.
#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
pub struct Roles {
    /// The member's roles from now on.
    #[validate(length(min = 1, max = 8))]
    pub roles: Vec<String>,
}

/// `PUT /v1/members/{user}/roles`: admins and owners, never above their own role, never
/// leaving the tenant without an owner (saas-authz's rules); audited.
#[utoipa::path(put, path = "/v1/members/{user}/roles", tag = "people", params(("user" = Uuid, Path, description = "The member")),
    request_body = Roles, responses((status = 200, description = "The member's roles now", body = Object)))]
pub(crate) async fn set_roles(
    Extension(shared): Extension<Shared>,
    principal: Principal,
    mut tx: TenantTx,
    Path(user): Path<UserId>,
    Valid(body): Valid<Roles>,
) -> Result<Json<Value>, Problem> {
    let tenant = tx.tenant();
    let roles: Vec<&str> = body.roles.iter().map(String::as_str).collect();
    let member = shared.memberships.set_roles(&mut tx, &principal, user, &roles).await?;
    tx.commit().await?;
    shared.policy_changed(tenant).await;
    Ok(Json(json!({ "user": member.user_id, "roles": member.roles })))
}

/// `DELETE /v1/members/{user}`: a member leaves (their own id), or an admin removes
/// someone (`member:delete`); their keys, grants and pending invitations go with them, and
/// the last owner can neither leave nor be removed.
#[utoipa::path(delete, path = "/v1/members/{user}", tag = "people", params(("user" = Uuid, Path, description = "The member")),
    responses((status = 204, description = "Removed, with their keys, grants and invitations")))]
pub(crate) async fn remove(
    Extension(shared): Extension<Shared>,
    principal: Principal,
    mut tx: TenantTx,
    Path(user): Path<UserId>,
) -> Result<StatusCode, Problem> {
    let tenant = tx.tenant();
    // Anyone may leave; removing someone else is an admin's (and saas-authz's rank rules).
    if user != principal.user_id {
        shared.authz.ensure(tenant).await?;
        shared
            .authz
            .for_tenant(tenant)
            .require_any(&principal, "member:delete")?;
    }
    shared.memberships.remove(&mut tx, &principal, user).await?;
    tx.commit().await?;
    shared.policy_changed(tenant).await;
    shared.recount(tenant).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `POST /v1/api-keys`.
#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
pub struct NewKey {
    /// What it is for.
    #[validate(length(min = 1, max = 100))]
    pub name: String,
    /// The permissions it is limited to (`project:read`, …).
    #[validate(length(min = 1, max = 64))]
    pub scopes: Vec<String>,
    /// A service account's role: the key belongs to the tenant and outlives its creator.
    /// Without it, the key acts for its creator and dies with their membership.
    #[serde(default)]
    pub service_role: Option<String>,
}

/// `POST /v1/api-keys`: the secret is in this answer only.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api keys", request_body = NewKey,
    responses((status = 201, description = "The key and its secret (shown once)", body = Object)))]
pub(crate) async fn create_key(
    Extension(keys): Extension<ApiKeys>,
    principal: Principal,
    mut tx: TenantTx,
    Valid(body): Valid<NewKey>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let new = match body.service_role {
        Some(role) => NewApiKey::service_account(body.name, role, body.scopes),
        None => NewApiKey::new(body.name, body.scopes),
    };
    let issued = keys.create(&mut tx, &principal, new).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "key": issued.key, "secret": issued.secret.expose() })),
    ))
}

/// `GET /v1/api-keys`: descriptions, never secrets.
#[utoipa::path(get, path = "/v1/api-keys", tag = "api keys",
    responses((status = 200, description = "The tenant's keys, without secrets", body = Object)))]
pub(crate) async fn list_keys(mut tx: TenantTx) -> Result<Json<Value>, Problem> {
    let keys = ApiKeys::list(&mut tx).await?;
    tx.commit().await?;
    Ok(Json(json!({ "keys": keys })))
}

/// `DELETE /v1/api-keys/{id}`.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api keys", params(("id" = Uuid, Path, description = "The key")),
    responses((status = 204, description = "Revoked")))]
pub(crate) async fn revoke_key(
    Extension(keys): Extension<ApiKeys>,
    principal: Principal,
    mut tx: TenantTx,
    Path(id): Path<ApiKeyId>,
) -> Result<StatusCode, Problem> {
    keys.revoke(&mut tx, &principal, id).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
