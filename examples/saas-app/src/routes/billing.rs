//! The tenant's billing: its summary, checkout and portal links.

use axum::Json;
use axum::extract::Extension;
use saas_authz::Memberships;
use saas_billing::summary::TenantBillingSummary;
use saas_core::{Principal, Problem};
use saas_tenancy::{TenantContext, TenantTx};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::Shared;

/// `GET /v1/billing` (`billing:read`): plan, status, seats, usage, invoices — no payment
/// data.
#[utoipa::path(get, path = "/v1/billing", tag = "billing",
    responses((status = 200, description = "Plan, status, seats, usage, invoices", body = Object)))]
pub(crate) async fn summary(
    Extension(shared): Extension<Shared>,
    tenant: TenantContext,
) -> Result<Json<TenantBillingSummary>, Problem> {
    let s = shared
        .billing
        .summary(&shared.platform, &shared.entitlements, tenant.id())
        .await?;
    Ok(Json(s))
}

/// The body of `POST /v1/billing/checkout`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Checkout {
    /// The price's lookup key (`pro_monthly`, `business_seat_annual`, …).
    pub price: String,
}

/// `POST /v1/billing/checkout` (`billing:manage`): a hosted checkout page for a price of
/// the catalog.
#[utoipa::path(post, path = "/v1/billing/checkout", tag = "billing", request_body = Checkout,
    responses((status = 200, description = "The hosted checkout page", body = Object)))]
pub(crate) async fn checkout(
    Extension(shared): Extension<Shared>,
    principal: Principal,
    tenant: TenantContext,
    mut tx: TenantTx,
    Json(body): Json<Checkout>,
) -> Result<Json<Value>, Problem> {
    if shared.catalog.price(&body.price).is_none() {
        let known: Vec<&str> = shared
            .catalog
            .plans()
            .iter()
            .flat_map(|p| p.prices().iter().map(|p| p.lookup_key()))
            .collect();
        return Err(Problem::unprocessable(format!(
            "no price {:?}; the catalog has {}",
            body.price,
            known.join(", ")
        ))
        .with_type("unknown-price"));
    }
    let return_url = format!("{}/v1/billing", shared.public_url);
    // A plan's trial applies to a tenant's first subscription (asked of the mirror, which
    // row-level security limits to this tenant: no call to the provider).
    let subscribed: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM saas.billing_subscriptions)")
        .fetch_one(&mut *tx)
        .await?;
    let trial_days = if subscribed {
        0
    } else {
        shared.catalog.plan_of_price(&body.price).map_or(0, |p| p.trial())
    };
    // The buyer's e-mail goes to the provider's customer (created once per tenant).
    let email = Memberships::get(&mut tx, principal.user_id)
        .await?
        .and_then(|m| m.email);
    tx.commit().await?;
    let email = email.as_deref();
    let page = shared
        .billing
        .checkout(
            &shared.platform,
            tenant.id(),
            email,
            &body.price,
            trial_days,
            &return_url,
        )
        .await?;
    match &shared.relay {
        Some(relay) => {
            relay.opened(&page.id, tenant.id());
            Ok(Json(json!({
                "id": page.id,
                "url": page.url,
                "simulator": "this is the billing simulator, not Stripe: finish with POST /v1/billing/simulator/complete {\"session\": id}",
            })))
        }
        None => Ok(Json(json!({ "id": page.id, "url": page.url }))),
    }
}

/// `POST /v1/billing/portal` (`billing:manage`): the provider's customer portal.
#[utoipa::path(post, path = "/v1/billing/portal", tag = "billing",
    responses((status = 200, description = "The customer portal", body = Object)))]
pub(crate) async fn portal(
    Extension(shared): Extension<Shared>,
    tenant: TenantContext,
) -> Result<Json<Value>, Problem> {
    let return_url = format!("{}/v1/billing", shared.public_url);
    let page = shared
        .billing
        .portal(&shared.platform, tenant.id(), &return_url)
        .await?;
    Ok(Json(json!({ "id": page.id, "url": page.url })))
}

/// The body of `POST /v1/billing/simulator/complete`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Complete {
    /// The checkout session's id.
    pub session: String,
    /// Whether the card works (default true).
    #[serde(default = "yes")]
    pub pays: bool,
}

fn yes() -> bool {
    true
}

/// `POST /v1/billing/simulator/complete` (`billing:manage`; only with the simulator): pays
/// on the simulated checkout page this tenant opened; the simulator's events then reach
/// the webhook endpoint like Stripe's.
#[utoipa::path(post, path = "/v1/billing/simulator/complete", tag = "billing", request_body = Complete,
    responses((status = 200, description = "Paid; the simulator's events were delivered", body = Object),
              (status = 409, description = "The session was completed already")))]
pub(crate) async fn simulator_complete(
    Extension(shared): Extension<Shared>,
    tenant: TenantContext,
    Json(body): Json<Complete>,
) -> Result<Json<Value>, Problem> {
    let Some(relay) = &shared.relay else {
        return Err(Problem::not_found().with_detail("the billing simulator is not in use"));
    };
    if !relay.owns(&body.session, tenant.id()) {
        return Err(Problem::not_found().with_detail("no checkout session of this tenant has that id"));
    }
    let subscription = relay
        .sim
        .complete_checkout(&body.session, body.pays)
        .map_err(|e| Problem::conflict(e.to_string()))?;
    let events = relay.deliver().await?;
    Ok(Json(
        json!({ "subscription": subscription, "events_delivered": events }),
    ))
}
