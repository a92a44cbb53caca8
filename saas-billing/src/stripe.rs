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
//! Prices are named by their `lookup_key`: the client resolves a key to its active price
//! (`GET /v1/prices?lookup_keys[]=…`, cached) before it sends one. On accounts (or
//! stand-ins such as localstripe) that still use the legacy plans API,
//! [`Stripe::legacy_plans`] names prices by plan id instead (`items[0][plan]`), the
//! plans having been created with the catalog's lookup keys as ids; reading, a
//! subscription item without a price lookup key is named by its plan's id either way.
//!
//! | call | Stripe endpoint |
//! |---|---|
//! | `create_customer` | `POST /v1/customers` (idempotency key per tenant) |
//! | `checkout_session` | `POST /v1/checkout/sessions` (`mode=subscription`) |
//! | `portal_session` | `POST /v1/billing_portal/sessions` |
//! | `create_subscription` | `POST /v1/subscriptions` |
//! | `update_subscription` | `POST /v1/subscriptions/{id}` (the first item replaced) |
//! | `preview_change` | `POST /v1/invoices/create_preview` with `subscription_details` |
//! | `cancel_subscription` | `DELETE /v1/subscriptions/{id}`, or `cancel_at_period_end=true` |
//! | `resume_subscription` | `POST /v1/subscriptions/{id}/resume` |
//! | `invoice` | `GET /v1/invoices/{id}` |
//! | `report_usage` | `POST /v1/billing/meter_events` (the identifier is also the idempotency key) |
//! | `active_entitlements` | `GET /v1/entitlements/active_entitlements?customer=…` (lookup keys) |
//! | `schedule_change` | `POST /v1/subscription_schedules` (`from_subscription`), then its phases |
//!
//! `proration_behavior` is sent only when it is not Stripe's default (`create_prorations`).
//!
//! The catalog ([`CatalogProvider`], for [`catalog::push`](crate::catalog::push) and
//! [`check`](crate::catalog::check)): products (`GET`/`POST /v1/products`, the plan key in
//! `metadata[saas_plan]`), prices (`GET /v1/prices`, `POST /v1/prices` with the lookup key,
//! `transfer_lookup_key=true` and `metadata[saas_charge]`, archived with `active=false`),
//! and for metered prices the meter (`GET`/`POST /v1/billing/meters`, summing).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use saas_core::TenantId;
use saas_core::telemetry::Redacted;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::catalog::{CatalogProvider, Charge, Interval, Plan, Price, ProviderPrice, ProviderProduct};
use crate::provider::{
    BillingProvider, CancelAt, CancellationReason, CheckoutRequest, Customer, Discount, HostedSession, Invoice,
    InvoiceLine, NewSubscription, Proration, ProviderError, Subscription, SubscriptionChange, UsageEvent,
};

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
    legacy_plans: bool,
    /// Lookup key → price id.
    prices: Arc<Mutex<HashMap<String, String>>>,
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
            legacy_plans: false,
            prices: Arc::default(),
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

    /// Names prices by plan id (`items[0][plan]=<lookup key>`) instead of resolving lookup
    /// keys to prices: for accounts and stand-ins on the legacy plans API (localstripe),
    /// whose plans were created with the catalog's lookup keys as ids.
    pub fn legacy_plans(mut self) -> Self {
        self.legacy_plans = true;
        self
    }

    /// The form field naming an item's price and its value.
    async fn price_field(&self, lookup_key: &str) -> Result<(&'static str, String), ProviderError> {
        if self.legacy_plans {
            return Ok(("plan", lookup_key.to_owned()));
        }
        if let Some(id) = self
            .prices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(lookup_key)
        {
            return Ok(("price", id.clone()));
        }
        let mut query = String::new();
        encode_into(lookup_key, &mut query);
        let page = self
            .get(&format!("/v1/prices?active=true&lookup_keys%5B%5D={query}"))
            .await?
            .unwrap_or_default();
        let id = page["data"][0]["id"]
            .as_str()
            .ok_or_else(|| ProviderError::NotFound(format!("active price with lookup key {lookup_key}")))?
            .to_owned();
        self.prices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(lookup_key.to_owned(), id.clone());
        Ok(("price", id))
    }

    /// Forgets the cached price ids (after the catalog moved a lookup key to a new price).
    pub fn forget_prices(&self) {
        self.prices.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// A mutating call that must answer an object.
    async fn post(&self, path: &str, form: &[(String, String)], key: &str) -> Result<Value, ProviderError> {
        self.call(reqwest::Method::POST, path, form, Some(key))
            .await?
            .ok_or_else(|| ProviderError::NotFound(path.to_owned()))
    }

    /// The subscription's first item id (the one changes replace).
    async fn first_item(&self, id: &str) -> Result<String, ProviderError> {
        let sub = self
            .get(&format!("/v1/subscriptions/{}", checked(id)?))
            .await?
            .ok_or_else(|| ProviderError::NotFound(id.to_owned()))?;
        sub["items"]["data"][0]["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Refused(format!("subscription {id} has no item")))
    }

    /// The form fields of `change` applied to the item `item`, under `prefix`
    /// (`""` for an update, `subscription_details` for a preview).
    async fn change_form(
        &self,
        prefix: &str,
        item: &str,
        change: &SubscriptionChange,
    ) -> Result<Vec<(String, String)>, ProviderError> {
        let field = |name: &str| {
            if prefix.is_empty() {
                name.to_owned()
            } else {
                let (head, tail) = name.split_once('[').map_or((name, ""), |(h, t)| (h, t));
                let tail = if tail.is_empty() {
                    String::new()
                } else {
                    format!("[{tail}")
                };
                format!("{prefix}[{head}]{tail}")
            }
        };
        let mut form = Vec::new();
        if change.price.is_some() || change.quantity.is_some() {
            form.push((field("items[0][id]"), item.to_owned()));
        }
        if let Some(p) = &change.price {
            let (name, id) = self.price_field(p).await?;
            form.push((field(&format!("items[0][{name}]")), id));
        }
        if let Some(q) = change.quantity {
            form.push((field("items[0][quantity]"), q.to_string()));
        }
        if change.proration != Proration::CreateProrations {
            form.push((field("proration_behavior"), change.proration.as_str().to_owned()));
        }
        if let Some(c) = change.cancel_at_period_end {
            form.push((field("cancel_at_period_end"), c.to_string()));
        }
        if let Some(d) = &change.discount {
            // A preview takes the discount at its top level too.
            form.push(discount_field(d, ""));
        }
        Ok(form)
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
                        return Err(refusal(status, message, form));
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

/// Stripe's refusal as a typed error: mixing currencies on a customer is its own error.
fn refusal(status: reqwest::StatusCode, message: String, form: &[(String, String)]) -> ProviderError {
    if message.contains("combine currencies") {
        let customer = form
            .iter()
            .find(|(k, _)| k == "customer")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        // "… with currency usd." names the currency the customer has.
        let has = message
            .rsplit("currency ")
            .next()
            .map(|c| c.trim_end_matches('.').trim().to_owned())
            .unwrap_or_default();
        return ProviderError::CurrencyMismatch {
            customer,
            has,
            wanted: String::new(),
        };
    }
    ProviderError::Refused(format!("{status}: {message}"))
}

fn encode_into(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

/// `application/x-www-form-urlencoded`, as Stripe expects it (brackets in keys encoded).
fn encode_form(form: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in form.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_into(k, &mut out);
        out.push('=');
        encode_into(v, &mut out);
    }
    out
}

fn invoice_of(v: &Value) -> Invoice {
    let lines = v["lines"]["data"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .map(|l| InvoiceLine {
                    description: l["description"].as_str().unwrap_or_default().to_owned(),
                    amount: l["amount"].as_i64().unwrap_or(0),
                    // Current API versions: parent.subscription_item_details / invoice_item_details;
                    // older ones (and localstripe): `proration` on the line.
                    proration: l["parent"]["subscription_item_details"]["proration"]
                        .as_bool()
                        .or_else(|| l["parent"]["invoice_item_details"]["proration"].as_bool())
                        .or_else(|| l["proration"].as_bool())
                        .unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default();
    Invoice {
        id: v["id"].as_str().map(str::to_owned),
        customer: v["customer"].as_str().unwrap_or_default().to_owned(),
        subscription: v["parent"]["subscription_details"]["subscription"]
            .as_str()
            .or_else(|| v["subscription"].as_str())
            .map(str::to_owned),
        status: v["status"].as_str().map(str::to_owned),
        currency: v["currency"].as_str().unwrap_or_default().to_owned(),
        amount_due: v["amount_due"].as_i64().unwrap_or(0),
        amount_paid: v["amount_paid"].as_i64().unwrap_or(0),
        hosted_invoice_url: v["hosted_invoice_url"].as_str().map(str::to_owned),
        lines,
    }
}

fn session_of(v: &Value) -> Result<HostedSession, ProviderError> {
    match (v["id"].as_str(), v["url"].as_str()) {
        (Some(id), Some(url)) => Ok(HostedSession {
            id: id.to_owned(),
            url: url.to_owned(),
        }),
        _ => Err(ProviderError::Refused(
            "the session came back without an id and a url".into(),
        )),
    }
}

fn discount_field(d: &Discount, prefix: &str) -> (String, String) {
    match d {
        Discount::Coupon(c) => (format!("{prefix}discounts[0][coupon]"), c.clone()),
        Discount::PromotionCode(p) => (format!("{prefix}discounts[0][promotion_code]"), p.clone()),
    }
}

/// A fresh idempotency key for one logical call (its retries reuse it).
fn fresh_key(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4())
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
        current_period_start: time(&item["current_period_start"]).or_else(|| time(&v["current_period_start"])),
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

    async fn subscriptions(&self) -> Result<Vec<Subscription>, ProviderError> {
        self.list("/v1/subscriptions?status=all")
            .await?
            .iter()
            .map(subscription_of)
            .collect()
    }

    async fn customers(&self) -> Result<Vec<Customer>, ProviderError> {
        Ok(self.list("/v1/customers").await?.iter().map(customer_of).collect())
    }
    async fn create_customer(&self, tenant: TenantId, email: Option<&str>) -> Result<Customer, ProviderError> {
        let mut form = vec![("metadata[tenant_id]".to_owned(), tenant.to_string())];
        if let Some(e) = email {
            form.push(("email".into(), e.to_owned()));
        }
        // Idempotent per tenant: retried or repeated, Stripe returns the same customer for a day.
        let v = self.post("/v1/customers", &form, &format!("customer-{tenant}")).await?;
        Ok(customer_of(&v))
    }

    async fn checkout_session(&self, req: &CheckoutRequest) -> Result<HostedSession, ProviderError> {
        if req.discount.is_some() && req.allow_promotion_codes {
            return Err(ProviderError::Refused(
                "a checkout session takes a discount or a promotion-code field, not both".into(),
            ));
        }
        let (_, price) = self.price_field(&req.price).await?;
        let tenant = req.tenant.to_string();
        let mut form = vec![
            ("mode".to_owned(), "subscription".to_owned()),
            ("customer".into(), checked(&req.customer)?.to_owned()),
            ("client_reference_id".into(), tenant.clone()),
            ("line_items[0][price]".into(), price),
            ("line_items[0][quantity]".into(), req.quantity.to_string()),
            ("subscription_data[metadata][tenant_id]".into(), tenant),
            ("success_url".into(), req.success_url.clone()),
            ("cancel_url".into(), req.cancel_url.clone()),
        ];
        if let Some(days) = req.trial_days {
            form.push(("subscription_data[trial_period_days]".into(), days.to_string()));
            form.push((
                "subscription_data[trial_settings][end_behavior][missing_payment_method]".into(),
                req.trial_end.as_str().to_owned(),
            ));
        }
        if let Some(d) = &req.discount {
            form.push(discount_field(d, ""));
        }
        if req.allow_promotion_codes {
            form.push(("allow_promotion_codes".into(), "true".into()));
        }
        session_of(
            &self
                .post("/v1/checkout/sessions", &form, &fresh_key("checkout"))
                .await?,
        )
    }

    async fn portal_session(&self, customer: &str, return_url: &str) -> Result<HostedSession, ProviderError> {
        let form = [
            ("customer".to_owned(), checked(customer)?.to_owned()),
            ("return_url".into(), return_url.to_owned()),
        ];
        session_of(
            &self
                .post("/v1/billing_portal/sessions", &form, &fresh_key("portal"))
                .await?,
        )
    }

    async fn create_subscription(&self, req: &NewSubscription) -> Result<Subscription, ProviderError> {
        let (name, price) = self.price_field(&req.price).await?;
        let mut form = vec![
            ("customer".to_owned(), checked(&req.customer)?.to_owned()),
            (format!("items[0][{name}]"), price),
            ("items[0][quantity]".into(), req.quantity.to_string()),
            ("metadata[tenant_id]".into(), req.tenant.to_string()),
        ];
        if let Some(days) = req.trial_days {
            form.push(("trial_period_days".into(), days.to_string()));
            form.push((
                "trial_settings[end_behavior][missing_payment_method]".into(),
                req.trial_end.as_str().to_owned(),
            ));
        }
        if let Some(d) = &req.discount {
            form.push(discount_field(d, ""));
        }
        subscription_of(
            &self
                .post("/v1/subscriptions", &form, &fresh_key("subscription"))
                .await?,
        )
    }

    async fn update_subscription(&self, id: &str, change: &SubscriptionChange) -> Result<Subscription, ProviderError> {
        let item = self.first_item(id).await?;
        let form = self.change_form("", &item, change).await?;
        subscription_of(
            &self
                .post(
                    &format!("/v1/subscriptions/{}", checked(id)?),
                    &form,
                    &fresh_key("update"),
                )
                .await?,
        )
    }

    async fn preview_change(&self, id: &str, change: &SubscriptionChange) -> Result<Invoice, ProviderError> {
        let sub = self
            .get(&format!("/v1/subscriptions/{}", checked(id)?))
            .await?
            .ok_or_else(|| ProviderError::NotFound(id.to_owned()))?;
        let item = sub["items"]["data"][0]["id"].as_str().unwrap_or_default().to_owned();
        let mut form = vec![
            (
                "customer".to_owned(),
                sub["customer"].as_str().unwrap_or_default().to_owned(),
            ),
            ("subscription".into(), id.to_owned()),
        ];
        form.extend(self.change_form("subscription_details", &item, change).await?);
        Ok(invoice_of(
            &self
                .post("/v1/invoices/create_preview", &form, &fresh_key("preview"))
                .await?,
        ))
    }

    async fn cancel_subscription(&self, id: &str, at: CancelAt) -> Result<Subscription, ProviderError> {
        let path = format!("/v1/subscriptions/{}", checked(id)?);
        let v = match at {
            CancelAt::Now => self
                .call(reqwest::Method::DELETE, &path, &[], Some(&fresh_key("cancel")))
                .await?
                .ok_or_else(|| ProviderError::NotFound(id.to_owned()))?,
            CancelAt::PeriodEnd => {
                let form = [("cancel_at_period_end".to_owned(), "true".to_owned())];
                self.post(&path, &form, &fresh_key("cancel")).await?
            }
        };
        subscription_of(&v)
    }

    async fn cancel_with_reason(
        &self,
        id: &str,
        at: CancelAt,
        reason: &CancellationReason,
    ) -> Result<Subscription, ProviderError> {
        let mut details = Vec::new();
        if let Some(f) = &reason.feedback {
            details.push(("cancellation_details[feedback]".to_owned(), f.clone()));
        }
        if let Some(c) = &reason.comment {
            details.push(("cancellation_details[comment]".to_owned(), c.clone()));
        }
        let path = format!("/v1/subscriptions/{}", checked(id)?);
        let v = match at {
            CancelAt::Now => {
                // DELETE takes its parameters in the query string.
                let query = encode_form(&details);
                let path = if query.is_empty() {
                    path
                } else {
                    format!("{path}?{query}")
                };
                self.call(reqwest::Method::DELETE, &path, &[], Some(&fresh_key("cancel")))
                    .await?
                    .ok_or_else(|| ProviderError::NotFound(id.to_owned()))?
            }
            CancelAt::PeriodEnd => {
                details.push(("cancel_at_period_end".to_owned(), "true".to_owned()));
                self.post(&path, &details, &fresh_key("cancel")).await?
            }
        };
        subscription_of(&v)
    }

    async fn schedule_change(&self, id: &str, change: &SubscriptionChange) -> Result<Subscription, ProviderError> {
        let sub = self
            .get(&format!("/v1/subscriptions/{}", checked(id)?))
            .await?
            .ok_or_else(|| ProviderError::NotFound(id.to_owned()))?;
        let schedule = match sub["schedule"].as_str() {
            Some(s) => self
                .get(&format!("/v1/subscription_schedules/{}", checked(s)?))
                .await?
                .ok_or_else(|| ProviderError::NotFound(s.to_owned()))?,
            None => {
                let form = [("from_subscription".to_owned(), id.to_owned())];
                self.post("/v1/subscription_schedules", &form, &fresh_key("schedule"))
                    .await?
            }
        };
        let sched_id = schedule["id"]
            .as_str()
            .ok_or_else(|| ProviderError::Refused("the schedule came back without an id".into()))?
            .to_owned();
        // The current phase as it is, then the changed one; the schedule releases the
        // subscription once the change applied.
        let current = &schedule["phases"][0];
        let item = &current["items"][0];
        let price_now = item["price"]
            .as_str()
            .or_else(|| item["price"]["id"].as_str())
            .unwrap_or_default()
            .to_owned();
        let quantity_now = item["quantity"].as_u64().unwrap_or(1);
        let (name, price_next) = match &change.price {
            Some(p) => self.price_field(p).await?,
            None => ("price", price_now.clone()),
        };
        let mut form = vec![
            ("end_behavior".to_owned(), "release".to_owned()),
            ("phases[0][items][0][price]".into(), price_now),
            ("phases[0][items][0][quantity]".into(), quantity_now.to_string()),
            (
                "phases[0][start_date]".into(),
                current["start_date"].as_i64().unwrap_or_default().to_string(),
            ),
            (
                "phases[0][end_date]".into(),
                current["end_date"].as_i64().unwrap_or_default().to_string(),
            ),
            (format!("phases[1][items][0][{name}]"), price_next),
            (
                "phases[1][items][0][quantity]".into(),
                change.quantity.unwrap_or(quantity_now).to_string(),
            ),
        ];
        if change.proration != Proration::CreateProrations {
            form.push((
                "phases[1][proration_behavior]".into(),
                change.proration.as_str().to_owned(),
            ));
        }
        self.post(
            &format!("/v1/subscription_schedules/{sched_id}"),
            &form,
            &fresh_key("schedule"),
        )
        .await?;
        self.subscription(id)
            .await?
            .ok_or_else(|| ProviderError::NotFound(id.to_owned()))
    }

    async fn unschedule_change(&self, id: &str) -> Result<Subscription, ProviderError> {
        let sub = self
            .get(&format!("/v1/subscriptions/{}", checked(id)?))
            .await?
            .ok_or_else(|| ProviderError::NotFound(id.to_owned()))?;
        if let Some(s) = sub["schedule"].as_str() {
            let path = format!("/v1/subscription_schedules/{}/release", checked(s)?);
            self.post(&path, &[], &fresh_key("release")).await?;
        }
        self.subscription(id)
            .await?
            .ok_or_else(|| ProviderError::NotFound(id.to_owned()))
    }

    async fn resume_subscription(&self, id: &str) -> Result<Subscription, ProviderError> {
        let path = format!("/v1/subscriptions/{}/resume", checked(id)?);
        subscription_of(&self.post(&path, &[], &fresh_key("resume")).await?)
    }

    async fn invoices_of(&self, customer: &str, limit: usize) -> Result<Vec<Invoice>, ProviderError> {
        let path = format!(
            "/v1/invoices?customer={}&limit={}",
            checked(customer)?,
            limit.clamp(1, 100)
        );
        let page = self.get(&path).await?.unwrap_or_default();
        Ok(page["data"]
            .as_array()
            .map(|d| d.iter().map(invoice_of).collect())
            .unwrap_or_default())
    }

    async fn invoice(&self, id: &str) -> Result<Option<Invoice>, ProviderError> {
        Ok(self
            .get(&format!("/v1/invoices/{}", checked(id)?))
            .await?
            .map(|v| invoice_of(&v)))
    }

    async fn active_entitlements(&self, customer: &str) -> Result<Vec<String>, ProviderError> {
        let path = format!("/v1/entitlements/active_entitlements?customer={}", checked(customer)?);
        Ok(self
            .list(&path)
            .await?
            .iter()
            .filter_map(|e| e["lookup_key"].as_str().map(str::to_owned))
            .collect())
    }

    async fn report_usage(&self, event: &UsageEvent) -> Result<(), ProviderError> {
        let form = [
            ("event_name".to_owned(), event.meter.clone()),
            (
                "payload[stripe_customer_id]".into(),
                checked(&event.customer)?.to_owned(),
            ),
            ("payload[value]".into(), event.value.to_string()),
            ("identifier".into(), event.identifier.clone()),
            ("timestamp".into(), event.at.timestamp().to_string()),
        ];
        // The identifier is Stripe's dedup key for meter events; it is also the request's.
        self.post(
            "/v1/billing/meter_events",
            &form,
            &format!("usage-{}", event.identifier),
        )
        .await
        .map(drop)
    }
}

impl Stripe {
    /// The id of the meter for `event_name`, created (summing) when missing.
    async fn meter(&self, event_name: &str) -> Result<String, ProviderError> {
        let meters = self.list("/v1/billing/meters").await?;
        if let Some(id) = meters
            .iter()
            .find(|m| m["event_name"].as_str() == Some(event_name) && m["status"].as_str() != Some("inactive"))
            .and_then(|m| m["id"].as_str())
        {
            return Ok(id.to_owned());
        }
        let form = [
            ("display_name".to_owned(), event_name.to_owned()),
            ("event_name".into(), event_name.to_owned()),
            ("default_aggregation[formula]".into(), "sum".into()),
        ];
        let v = self.post("/v1/billing/meters", &form, &fresh_key("meter")).await?;
        v["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Refused("the meter came back without an id".into()))
    }
}

fn charge_name(c: &Charge) -> &'static str {
    match c {
        Charge::Flat => "flat",
        Charge::PerSeat => "per_seat",
        Charge::Metered { .. } => "metered",
    }
}

fn price_of(v: &Value, meters: &HashMap<String, String>) -> ProviderPrice {
    let recurring = &v["recurring"];
    let meter = recurring["meter"]
        .as_str()
        .map(|id| meters.get(id).cloned().unwrap_or_else(|| id.to_owned()));
    let charge = match (v["metadata"]["saas_charge"].as_str(), recurring["usage_type"].as_str()) {
        (_, Some("metered")) => meter.map(|meter| Charge::Metered { meter }),
        (Some("per_seat"), _) => Some(Charge::PerSeat),
        (Some("flat"), _) => Some(Charge::Flat),
        _ => None,
    };
    ProviderPrice {
        id: v["id"].as_str().unwrap_or_default().to_owned(),
        product: v["product"].as_str().unwrap_or_default().to_owned(),
        lookup_key: v["lookup_key"].as_str().map(str::to_owned),
        active: v["active"].as_bool().unwrap_or(false),
        currency: v["currency"].as_str().unwrap_or_default().to_owned(),
        unit_amount: v["unit_amount"].as_i64(),
        interval: match recurring["interval"].as_str() {
            Some("month") => Some(Interval::Month),
            Some("year") => Some(Interval::Year),
            _ => None,
        },
        charge,
    }
}

fn product_of(v: &Value) -> ProviderProduct {
    ProviderProduct {
        id: v["id"].as_str().unwrap_or_default().to_owned(),
        plan: v["metadata"]["saas_plan"].as_str().map(str::to_owned),
        name: v["name"].as_str().unwrap_or_default().to_owned(),
        active: v["active"].as_bool().unwrap_or(false),
    }
}

impl CatalogProvider for Stripe {
    async fn products(&self) -> Result<Vec<ProviderProduct>, ProviderError> {
        Ok(self.list("/v1/products").await?.iter().map(product_of).collect())
    }

    async fn prices(&self) -> Result<Vec<ProviderPrice>, ProviderError> {
        let meters: HashMap<String, String> = self
            .list("/v1/billing/meters")
            .await?
            .iter()
            .filter_map(|m| Some((m["id"].as_str()?.to_owned(), m["event_name"].as_str()?.to_owned())))
            .collect();
        Ok(self
            .list("/v1/prices")
            .await?
            .iter()
            .map(|v| price_of(v, &meters))
            .collect())
    }

    async fn create_product(&self, plan: &Plan) -> Result<ProviderProduct, ProviderError> {
        let form = [
            ("name".to_owned(), plan.display_name().to_owned()),
            ("metadata[saas_plan]".into(), plan.key().to_owned()),
        ];
        Ok(product_of(
            &self.post("/v1/products", &form, &fresh_key("product")).await?,
        ))
    }

    async fn rename_product(&self, id: &str, name: &str) -> Result<(), ProviderError> {
        let form = [("name".to_owned(), name.to_owned())];
        self.post(&format!("/v1/products/{}", checked(id)?), &form, &fresh_key("product"))
            .await
            .map(drop)
    }

    async fn create_price(&self, product: &str, price: &Price, currency: &str) -> Result<ProviderPrice, ProviderError> {
        let mut form = vec![
            ("product".to_owned(), checked(product)?.to_owned()),
            ("currency".into(), currency.to_owned()),
            ("unit_amount".into(), price.amount().to_string()),
            ("recurring[interval]".into(), price.interval().as_str().to_owned()),
            ("lookup_key".into(), price.lookup_key().to_owned()),
            ("transfer_lookup_key".into(), "true".into()),
            ("nickname".into(), price.lookup_key().to_owned()),
            ("metadata[saas_charge]".into(), charge_name(price.charge()).to_owned()),
        ];
        let mut meters = HashMap::new();
        if let Charge::Metered { meter } = price.charge() {
            let id = self.meter(meter).await?;
            form.push(("recurring[usage_type]".into(), "metered".into()));
            form.push(("recurring[meter]".into(), id.clone()));
            meters.insert(id, meter.clone());
        }
        let v = self.post("/v1/prices", &form, &fresh_key("price")).await?;
        self.forget_prices();
        Ok(price_of(&v, &meters))
    }

    async fn archive_price(&self, id: &str) -> Result<(), ProviderError> {
        let form = [("active".to_owned(), "false".to_owned())];
        self.post(&format!("/v1/prices/{}", checked(id)?), &form, &fresh_key("price"))
            .await
            .map(drop)?;
        self.forget_prices();
        Ok(())
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
