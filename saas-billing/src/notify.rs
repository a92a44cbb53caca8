//! Billing emails to the tenant's billing contacts, queued through saas-events' mailer
//! (an outbox job in the transaction that marks the event processed, so a redelivered
//! or reprocessed event sends nothing twice):
//!
//! | event | template | link |
//! |---|---|---|
//! | `invoice.payment_failed` | `payment_failed` (amount, reason) | the application's billing page |
//! | `invoice.payment_action_required` | `payment_failed` (reason: the bank asks for confirmation) | the invoice's hosted page |
//! | `customer.subscription.trial_will_end` (three days before) | `trial_ending` (end date) | the application's billing page |
//!
//! The contacts are the members holding one of the configured roles (`owner` by
//! default) with an email address.

use saas_core::TenantId;
use saas_tenancy::SystemTx;
use serde_json::{Value, json};

use crate::sync::SyncError;

/// Who is told about billing problems, and where they fix them.
#[derive(Debug, Clone)]
pub struct Notifications {
    roles: Vec<String>,
    billing_url: String,
}

impl Notifications {
    /// Emails pointing at `billing_url` (the application's billing page), to owners.
    pub fn new(billing_url: &str) -> Self {
        Self {
            roles: vec!["owner".into()],
            billing_url: billing_url.to_owned(),
        }
    }

    /// Sends to members holding any of `roles` instead.
    pub fn roles(mut self, roles: &[&str]) -> Self {
        self.roles = roles.iter().map(|r| (*r).to_owned()).collect();
        self
    }

    /// Queues the email `event` calls for, if any, in `tx`; returns how many were queued.
    pub(crate) async fn queue_for(
        &self,
        tx: &mut SystemTx,
        tenant: TenantId,
        event: &Value,
    ) -> Result<usize, SyncError> {
        let object = &event["data"]["object"];
        let (template, link, reason) = match event["type"].as_str() {
            Some("invoice.payment_failed") => ("payment_failed", self.billing_url.clone(), None),
            Some("invoice.payment_action_required") => (
                "payment_failed",
                object["hosted_invoice_url"]
                    .as_str()
                    .map_or_else(|| self.billing_url.clone(), str::to_owned),
                Some("your bank asks you to confirm the payment"),
            ),
            Some("customer.subscription.trial_will_end") => ("trial_ending", self.billing_url.clone(), None),
            _ => return Ok(0),
        };
        let name: Option<String> = sqlx::query_scalar("SELECT name FROM saas.tenants WHERE id = $1")
            .bind(tenant)
            .fetch_optional(&mut **tx)
            .await?;
        let to: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT u.email FROM saas.memberships m JOIN saas.users u ON u.id = m.user_id \
             WHERE m.tenant_id = $1 AND m.roles && $2 AND u.email IS NOT NULL ORDER BY 1",
        )
        .bind(tenant)
        .bind(&self.roles)
        .fetch_all(&mut **tx)
        .await?;
        if to.is_empty() {
            tracing::warn!(tenant_id = %tenant, template, "no billing contact to email");
            return Ok(0);
        }
        let tenant_name = name.unwrap_or_else(|| "your organisation".into());
        let context = if template == "trial_ending" {
            let ends = object["trial_end"]
                .as_i64()
                .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                .map_or_else(|| "soon".to_owned(), |t| t.format("%-d %B %Y").to_string());
            json!({"tenant": tenant_name, "ends": ends, "link": link})
        } else {
            json!({"tenant": tenant_name, "amount": amount(object), "reason": reason, "link": link})
        };
        let recipients: Vec<&str> = to.iter().map(String::as_str).collect();
        saas_events::mail::queue(tx, template, &recipients, context)
            .await
            .map_err(|e| SyncError::Notify(e.to_string()))?;
        Ok(1)
    }
}

/// `2,900` minor units of `eur` as `29.00 EUR`.
fn amount(invoice: &Value) -> String {
    let minor = invoice["amount_due"].as_i64().unwrap_or(0);
    let currency = invoice["currency"].as_str().unwrap_or("").to_uppercase();
    format!("{}.{:02} {currency}", minor / 100, (minor % 100).abs())
}
