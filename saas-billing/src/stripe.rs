//! The Stripe client (feature `stripe`): a small typed client on reqwest (rustls, the
//! workspace's one TLS stack) for the calls the mirror needs.
//!
//! - Every mutating call carries an `Idempotency-Key`, so a retry never acts twice.
//! - `429` and `5xx` answers and connection failures are retried (3 times by default)
//!   after saas-events' [`Backoff`](saas_events::Backoff) (exponential, jittered) or the
//!   answer's `Retry-After`, whichever is longer.
//! - At most 20 requests are in flight per client (Stripe's test mode allows 25 per
//!   second, live mode 100); a `429` that still gets through is retried as above.
//! - The secret key is never logged: `Debug` redacts it, errors carry Stripe's message,
//!   not the request.
//! - Ids are checked before they go into a path (`[A-Za-z0-9_]` only).
//!
//! Prices are named by their `lookup_key`; on accounts (or stand-ins such as localstripe)
//! that still use the legacy plans API, a subscription item without a price is named by
//! its plan's id, so plans created with the catalog's lookup keys as ids read the same.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use saas_core::TenantId;
use saas_core::telemetry::Redacted;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::provider::{BillingProvider, Customer, ProviderError, Subscription};

/// The API version requests are pinned to.
pub const API_VERSION: &str = "2025-10-29.clover";
const DEFAULT_BASE: &str = "https://api.stripe.com";
const IN_FLIGHT: usize = 20;

/// A Stripe API client. Cheap to clone.
#[derive(Clone)]
pub struct Stripe {
    http: reqwest::Client,
    base: String,
    key: Arc<Redacted<String>>,
    retries: u32,
    backoff: saas_events::Backoff,
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripe")
            .field("base", &self.base)
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl Stripe {
    /// A client for the secret key `key` (`sk_live_…`, `sk_test_…` or a restricted `rk_…`).
    pub fn new(key: impl Into<String>) -> Result<Self, ProviderError> {
        let key = key.into();
        if !["sk_", "rk_"].iter().any(|p| key.starts_with(p)) {
            return Err(ProviderError::Refused(
                "a Stripe secret key starts with sk_ or rk_ (Dashboard → Developers → API keys)".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        Ok(Self {
            http,
            base: DEFAULT_BASE.into(),
            key: Arc::new(Redacted::new(key)),
            retries: 3,
            backoff: saas_events::Backoff {
                base: Duration::from_millis(500),
                max: Duration::from_secs(8),
                jitter: 0.5,
            },
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        })
    }

    /// The client for `STRIPE_SECRET_KEY`, at `STRIPE_API_BASE` if set (a local stand-in).
    pub fn from_env() -> Result<Self, ProviderError> {
        let key = std::env::var("STRIPE_SECRET_KEY").map_err(|_| {
            ProviderError::Refused("STRIPE_SECRET_KEY is not set (Dashboard → Developers → API keys)".into())
        })?;
        let client = Self::new(key)?;
        Ok(match std::env::var("STRIPE_API_BASE") {
            Ok(base) => client.base_url(base),
            Err(_) => client,
        })
    }

    /// Talks to `base` instead of `https://api.stripe.com` (a local stand-in, a proxy).
    pub fn base_url(mut self, base: impl Into<String>) -> Self {
        self.base = base.into().trim_end_matches('/').to_owned();
        self
    }

    /// How often a failed request is retried (default 3).
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Creates the customer for `tenant` (its id in the metadata). Idempotent per tenant:
    /// retried or repeated, Stripe returns the same customer for a day.
    pub async fn create_customer(&self, tenant: TenantId, email: Option<&str>) -> Result<Customer, ProviderError> {
        let mut form = vec![("metadata[tenant_id]".to_owned(), tenant.to_string())];
        if let Some(e) = email {
            form.push(("email".into(), e.to_owned()));
        }
        let v = self
            .call(
                reqwest::Method::POST,
                "/v1/customers",
                &form,
                Some(&format!("customer-{tenant}")),
            )
            .await?
            .ok_or_else(|| ProviderError::Refused("no customer returned".into()))?;
        Ok(customer_of(&v))
    }

    async fn get(&self, path: &str) -> Result<Option<Value>, ProviderError> {
        self.call(reqwest::Method::GET, path, &[], None).await
    }

    /// Every object of a list endpoint (`path` with its query), page by page.
    async fn list(&self, path: &str) -> Result<Vec<Value>, ProviderError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let page_path = match &after {
                Some(a) => format!("{path}{sep}limit=100&starting_after={a}"),
                None => format!("{path}{sep}limit=100"),
            };
            let Some(page) = self.get(&page_path).await? else {
                return Ok(out);
            };
            let data = page["data"].as_array().cloned().unwrap_or_default();
            after = data.last().and_then(|o| o["id"].as_str()).map(str::to_owned);
            out.extend(data);
            if !page["has_more"].as_bool().unwrap_or(false) || after.is_none() {
                return Ok(out);
            }
        }
    }

    /// One request with retries; `None` for a 404.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        form: &[(String, String)],
        idempotency_key: Option<&str>,
    ) -> Result<Option<Value>, ProviderError> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| ProviderError::Unavailable("the client is shut down".into()))?;
        let url = format!("{}{path}", self.base);
        let body = encode_form(form);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .basic_auth(self.key.expose(), Some(""))
                .header("Stripe-Version", API_VERSION);
            if method != reqwest::Method::GET {
                req = req
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(body.clone());
            }
            if let Some(k) = idempotency_key {
                req = req.header("Idempotency-Key", k);
            }
            let (retry_after, failure) = match req.send().await {
                Ok(res) => {
                    let status = res.status();
                    let retry_after = res
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let text = res
                        .text()
                        .await
                        .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
                    if status.is_success() {
                        return serde_json::from_str(&text).map(Some).map_err(|e| {
                            ProviderError::Unavailable(format!("Stripe answered {status} with invalid JSON: {e}"))
                        });
                    }
                    if status == reqwest::StatusCode::NOT_FOUND {
                        return Ok(None);
                    }
                    let message = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| status.to_string());
                    if status != reqwest::StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
                        return Err(ProviderError::Refused(format!("{status}: {message}")));
                    }
                    (retry_after, format!("{status}: {message}"))
                }
                Err(e) => (None, e.without_url().to_string()),
            };
            if attempt > self.retries {
                return Err(ProviderError::Unavailable(failure));
            }
            let wait = self
                .backoff
                .delay(i32::try_from(attempt).unwrap_or(i32::MAX))
                .max(retry_after.unwrap_or_default());
            tracing::warn!(path, attempt, wait_ms = wait.as_millis() as u64, error = %failure, "Stripe request failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

/// `application/x-www-form-urlencoded`, as Stripe expects it (brackets in keys encoded).
fn encode_form(form: &[(String, String)]) -> String {
    fn enc(s: &str, out: &mut String) {
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(char::from(b)),
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in form.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        enc(k, &mut out);
        out.push('=');
        enc(v, &mut out);
    }
    out
}

/// Whether `id` may go into a path.
fn checked(id: &str) -> Result<&str, ProviderError> {
    if !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(id)
    } else {
        Err(ProviderError::Refused(format!("{id:?} is not a Stripe id")))
    }
}

fn time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_i64().and_then(|t| DateTime::from_timestamp(t, 0))
}

fn customer_of(v: &Value) -> Customer {
    Customer {
        id: v["id"].as_str().unwrap_or_default().to_owned(),
        tenant: v["metadata"]["tenant_id"]
            .as_str()
            .and_then(|t| t.parse::<uuid::Uuid>().ok())
            .map(TenantId::from_uuid),
        deleted: v["deleted"].as_bool().unwrap_or(false),
    }
}

fn subscription_of(v: &Value) -> Result<Subscription, ProviderError> {
    let item = &v["items"]["data"][0];
    let status = v["status"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e: crate::status::UnknownStatus| ProviderError::Refused(e.to_string()))?;
    Ok(Subscription {
        id: v["id"].as_str().unwrap_or_default().to_owned(),
        customer: v["customer"].as_str().unwrap_or_default().to_owned(),
        status,
        price_lookup_key: item["price"]["lookup_key"]
            .as_str()
            .or_else(|| item["plan"]["id"].as_str())
            .map(str::to_owned),
        quantity: item["quantity"]
            .as_u64()
            .or_else(|| v["quantity"].as_u64())
            .unwrap_or(1),
        // Newer API versions keep the period on the item.
        current_period_end: time(&item["current_period_end"]).or_else(|| time(&v["current_period_end"])),
        trial_end: time(&v["trial_end"]),
        cancel_at_period_end: v["cancel_at_period_end"].as_bool().unwrap_or(false),
    })
}

impl BillingProvider for Stripe {
    async fn customer(&self, id: &str) -> Result<Option<Customer>, ProviderError> {
        Ok(self
            .get(&format!("/v1/customers/{}", checked(id)?))
            .await?
            .map(|v| customer_of(&v)))
    }

    async fn subscription(&self, id: &str) -> Result<Option<Subscription>, ProviderError> {
        match self.get(&format!("/v1/subscriptions/{}", checked(id)?)).await? {
            Some(v) => subscription_of(&v).map(Some),
            None => Ok(None),
        }
    }

    async fn subscriptions_of(&self, customer: &str) -> Result<Vec<Subscription>, ProviderError> {
        let path = format!("/v1/subscriptions?customer={}&status=all", checked(customer)?);
        self.list(&path).await?.iter().map(subscription_of).collect()
    }

    async fn customers(&self) -> Result<Vec<Customer>, ProviderError> {
        Ok(self.list("/v1/customers").await?.iter().map(customer_of).collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn forms_encode_brackets_and_spaces_like_stripe_expects() {
        let form = [
            ("metadata[tenant_id]".to_owned(), "a b&c".to_owned()),
            ("email".to_owned(), "x+y@z.io".to_owned()),
        ];
        assert_eq!(encode_form(&form), "metadata%5Btenant_id%5D=a+b%26c&email=x%2By%40z.io");
    }

    #[test]
    fn ids_cannot_reach_another_path() {
        assert!(checked("sub_1QxYz2AbCdEf").is_ok());
        for bad in ["", "../v1/customers", "sub_1?expand=x", "cus 1", "sub_%2F"] {
            assert!(checked(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_key_never_shows() {
        let s = Stripe::new("sk_test_very_secret").unwrap();
        assert!(!format!("{s:?}").contains("very_secret"));
        assert!(Stripe::new("pk_test_public").is_err());
    }

    #[test]
    fn subscriptions_read_from_the_current_and_the_legacy_shapes() {
        let current = serde_json::json!({"id": "sub_1", "customer": "cus_1", "status": "past_due",
            "cancel_at_period_end": true, "trial_end": null,
            "items": {"data": [{"price": {"lookup_key": "pro_monthly"}, "quantity": 3, "current_period_end": 1_800_000_000}]}});
        let s = subscription_of(&current).unwrap();
        assert_eq!(
            (
                s.status,
                s.price_lookup_key.as_deref(),
                s.quantity,
                s.cancel_at_period_end
            ),
            (crate::SubscriptionStatus::PastDue, Some("pro_monthly"), 3, true)
        );
        assert_eq!(s.current_period_end.unwrap().timestamp(), 1_800_000_000);
        let legacy = serde_json::json!({"id": "sub_2", "customer": "cus_1", "status": "active", "quantity": 2,
            "current_period_end": 1_700_000_000, "items": {"data": [{"plan": {"id": "pro_annual"}}]}});
        let s = subscription_of(&legacy).unwrap();
        assert_eq!((s.price_lookup_key.as_deref(), s.quantity), (Some("pro_annual"), 2));
        assert!(subscription_of(&serde_json::json!({"status": "cancelled"})).is_err());
    }
}
