//! The billing provider as the mirror sees it: the objects it reads back (never trusting
//! an event's snapshot) and the trait a provider implements.
//!
//! This is the read side the webhook processing and reconciliation need; the write side
//! (customers, checkout and portal sessions, subscription changes with proration, usage)
//! comes with the Stripe client.

use std::future::Future;

use chrono::{DateTime, Utc};
use saas_core::TenantId;

use crate::status::SubscriptionStatus;

/// A provider's customer: one per tenant, whose metadata names the tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// The provider's id (`cus_…`).
    pub id: String,
    /// The tenant in the customer's metadata (`tenant_id`), if any.
    pub tenant: Option<TenantId>,
    /// Whether the customer was deleted at the provider.
    pub deleted: bool,
}

/// A provider's subscription, as currently stored there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The provider's id (`sub_…`).
    pub id: String,
    /// Its customer's id.
    pub customer: String,
    /// Its status.
    pub status: SubscriptionStatus,
    /// The lookup key of its (first) price: the catalog's name for it.
    pub price_lookup_key: Option<String>,
    /// Seats (the item's quantity).
    pub quantity: u64,
    /// When the current period ends.
    pub current_period_end: Option<DateTime<Utc>>,
    /// When the trial ends, if it has one.
    pub trial_end: Option<DateTime<Utc>>,
    /// Whether it ends at the end of the period.
    pub cancel_at_period_end: bool,
}

/// Why the provider could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The provider is unreachable or failing; try again later.
    #[error("the billing provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider refused the request (bad credentials, invalid parameters).
    #[error("the billing provider refused the request: {0}")]
    Refused(String),
}

/// What the mirror reads from the provider.
pub trait BillingProvider: Send + Sync + 'static {
    /// The customer `id`, or `None` if the provider does not know it.
    fn customer(&self, id: &str) -> impl Future<Output = Result<Option<Customer>, ProviderError>> + Send;
    /// The subscription `id`, or `None` if the provider does not know it.
    fn subscription(&self, id: &str) -> impl Future<Output = Result<Option<Subscription>, ProviderError>> + Send;
    /// Every subscription of `customer`, whatever its status.
    fn subscriptions_of(&self, customer: &str)
    -> impl Future<Output = Result<Vec<Subscription>, ProviderError>> + Send;
    /// Every customer (for reconciliation).
    fn customers(&self) -> impl Future<Output = Result<Vec<Customer>, ProviderError>> + Send;
}
