//! The billing provider: the objects the mirror reads back (never trusting an event's
//! snapshot), the changes the product asks for, and the trait a provider implements.
//!
//! Read side: customers and subscriptions, for webhook processing and reconciliation.
//! Write side: customers (one per tenant), hosted checkout and billing-portal sessions,
//! subscription changes with an explicit [`Proration`] and a preview of what they cost,
//! invoices, and usage reported to a meter with an identifier so a retry never bills twice.
//! Prices are always named by the catalog's lookup keys; a provider maps them to its ids.

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
    /// When the current period started (the billing anchor usage periods reset on).
    pub current_period_start: Option<DateTime<Utc>>,
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
    /// The object named does not exist at the provider.
    #[error("the billing provider has no {0}")]
    NotFound(String),
    /// A customer pays in one currency; this asked for another (Stripe refuses it too).
    #[error("customer {customer} pays in {has}; a price in {wanted} cannot be added (one currency per customer)")]
    CurrencyMismatch {
        /// The customer.
        customer: String,
        /// The currency it already pays in.
        has: String,
        /// The currency asked for.
        wanted: String,
    },
}

/// A discount applied at checkout or to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discount {
    /// A coupon, by id.
    Coupon(String),
    /// A customer-facing promotion code, by the provider's id (`promo_…`).
    PromotionCode(String),
}

/// What happens when a trial ends without a payment method (Stripe's
/// `trial_settings[end_behavior][missing_payment_method]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrialEnd {
    /// The subscription is paused until a payment method is added (the default here).
    #[default]
    Pause,
    /// The subscription is canceled.
    Cancel,
    /// An invoice is created and the subscription goes past due.
    CreateInvoice,
}

impl TrialEnd {
    /// Stripe's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Cancel => "cancel",
            Self::CreateInvoice => "create_invoice",
        }
    }
}

/// A hosted checkout page that starts a subscription. Build with [`CheckoutRequest::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckoutRequest {
    /// The tenant subscribing (sent as the session's reference and the subscription's metadata).
    pub tenant: TenantId,
    /// Its provider customer.
    pub customer: String,
    /// The price, by lookup key.
    pub price: String,
    /// Seats (1 for flat prices; none is sent for metered ones).
    pub quantity: u64,
    /// A trial, in days.
    pub trial_days: Option<u32>,
    /// What the trial's end does without a payment method.
    pub trial_end: TrialEnd,
    /// A discount applied up front.
    pub discount: Option<Discount>,
    /// Whether the page offers a promotion-code field (not with `discount`: Stripe takes one or the other).
    pub allow_promotion_codes: bool,
    /// Where the customer lands after paying.
    pub success_url: String,
    /// Where the customer lands after giving up.
    pub cancel_url: String,
}

impl CheckoutRequest {
    /// Checkout of one unit of `price` (a lookup key) for `tenant`'s `customer`.
    pub fn new(tenant: TenantId, customer: &str, price: &str, success_url: &str, cancel_url: &str) -> Self {
        Self {
            tenant,
            customer: customer.to_owned(),
            price: price.to_owned(),
            quantity: 1,
            trial_days: None,
            trial_end: TrialEnd::default(),
            discount: None,
            allow_promotion_codes: false,
            success_url: success_url.to_owned(),
            cancel_url: cancel_url.to_owned(),
        }
    }

    /// Seats.
    pub fn quantity(mut self, n: u64) -> Self {
        self.quantity = n;
        self
    }

    /// A trial of `days` days.
    pub fn trial_days(mut self, days: u32) -> Self {
        self.trial_days = Some(days);
        self
    }

    /// What the trial's end does without a payment method.
    pub fn trial_end(mut self, end: TrialEnd) -> Self {
        self.trial_end = end;
        self
    }

    /// A coupon or promotion code applied up front.
    pub fn discount(mut self, discount: Discount) -> Self {
        self.discount = Some(discount);
        self
    }

    /// Offers a promotion-code field on the page.
    pub fn allow_promotion_codes(mut self) -> Self {
        self.allow_promotion_codes = true;
        self
    }
}

/// A hosted page the customer is sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostedSession {
    /// The provider's id (`cs_…`, `bps_…`).
    pub id: String,
    /// Where to send the customer.
    pub url: String,
}

/// A subscription created directly (without a checkout page): the customer already has a
/// payment method, or the subscription starts with a trial.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewSubscription {
    /// The tenant (written to the subscription's metadata).
    pub tenant: TenantId,
    /// Its provider customer.
    pub customer: String,
    /// The price, by lookup key.
    pub price: String,
    /// Seats.
    pub quantity: u64,
    /// A trial, in days.
    pub trial_days: Option<u32>,
    /// What the trial's end does without a payment method.
    pub trial_end: TrialEnd,
    /// A discount.
    pub discount: Option<Discount>,
}

impl NewSubscription {
    /// One unit of `price` (a lookup key) for `tenant`'s `customer`.
    pub fn new(tenant: TenantId, customer: &str, price: &str) -> Self {
        Self {
            tenant,
            customer: customer.to_owned(),
            price: price.to_owned(),
            quantity: 1,
            trial_days: None,
            trial_end: TrialEnd::default(),
            discount: None,
        }
    }

    /// Seats.
    pub fn quantity(mut self, n: u64) -> Self {
        self.quantity = n;
        self
    }

    /// A trial of `days` days.
    pub fn trial_days(mut self, days: u32) -> Self {
        self.trial_days = Some(days);
        self
    }

    /// What the trial's end does without a payment method.
    pub fn trial_end(mut self, end: TrialEnd) -> Self {
        self.trial_end = end;
        self
    }

    /// A coupon or promotion code.
    pub fn discount(mut self, discount: Discount) -> Self {
        self.discount = Some(discount);
        self
    }
}

/// How a mid-period change is charged (Stripe's `proration_behavior`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Proration {
    /// Credit the unused time and charge the new price for the rest of the period on the
    /// next invoice (Stripe's default).
    #[default]
    CreateProrations,
    /// Invoice the prorated difference now.
    AlwaysInvoice,
    /// No proration: the new price applies from the next period's invoice.
    None,
}

impl Proration {
    /// Stripe's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateProrations => "create_prorations",
            Self::AlwaysInvoice => "always_invoice",
            Self::None => "none",
        }
    }
}

/// A change to a subscription: its price, its seats, or its cancellation at period end.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SubscriptionChange {
    /// A new price, by lookup key (an upgrade, a downgrade, monthly ↔ annual).
    pub price: Option<String>,
    /// A new number of seats.
    pub quantity: Option<u64>,
    /// How the change is charged.
    pub proration: Proration,
    /// Set or undo cancellation at the end of the period.
    pub cancel_at_period_end: Option<bool>,
    /// A coupon or promotion code for an existing subscription.
    pub discount: Option<Discount>,
}

impl SubscriptionChange {
    /// Moves to the price `lookup_key`.
    pub fn price(lookup_key: &str) -> Self {
        Self {
            price: Some(lookup_key.to_owned()),
            ..Self::default()
        }
    }

    /// Changes the number of seats.
    pub fn quantity(n: u64) -> Self {
        Self {
            quantity: Some(n),
            ..Self::default()
        }
    }

    /// Applies a coupon or promotion code.
    pub fn discount(discount: Discount) -> Self {
        Self {
            discount: Some(discount),
            ..Self::default()
        }
    }

    /// Undoes a cancellation at period end.
    pub fn keep() -> Self {
        Self {
            cancel_at_period_end: Some(false),
            ..Self::default()
        }
    }

    /// Also changes the seats.
    pub fn with_quantity(mut self, n: u64) -> Self {
        self.quantity = Some(n);
        self
    }

    /// Charges the change this way.
    pub fn proration(mut self, p: Proration) -> Self {
        self.proration = p;
        self
    }
}

/// When a cancellation takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelAt {
    /// Now: the subscription is `canceled` at once.
    Now,
    /// At the end of the paid period (undo with [`SubscriptionChange::keep`]).
    PeriodEnd,
}

/// Why a customer cancels (Stripe's `cancellation_details`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CancellationReason {
    /// One of Stripe's feedback values: `too_expensive`, `missing_features`,
    /// `switched_service`, `unused`, `customer_service`, `too_complex`, `low_quality`,
    /// `other`.
    pub feedback: Option<String>,
    /// The customer's own words.
    pub comment: Option<String>,
}

/// One line of an invoice or a preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceLine {
    /// What it is for.
    pub description: String,
    /// In the currency's smallest unit; negative for a credit.
    pub amount: i64,
    /// Whether it prorates a change (unused time credited, remaining time charged).
    pub proration: bool,
}

/// An invoice, or the preview of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    /// `in_…` (a preview has the provider's preview id, or none).
    pub id: Option<String>,
    /// The customer.
    pub customer: String,
    /// The subscription it bills, if any.
    pub subscription: Option<String>,
    /// `draft`, `open`, `paid`, `uncollectible` or `void`.
    pub status: Option<String>,
    /// Three-letter ISO code, lower case.
    pub currency: String,
    /// What is due.
    pub amount_due: i64,
    /// What was paid.
    pub amount_paid: i64,
    /// The hosted page where the customer pays (a payment needing action links here).
    pub hosted_invoice_url: Option<String>,
    /// Its lines.
    pub lines: Vec<InvoiceLine>,
}

impl Invoice {
    /// The sum of the proration lines: what the change itself costs (negative: a credit).
    pub fn proration_amount(&self) -> i64 {
        self.lines.iter().filter(|l| l.proration).map(|l| l.amount).sum()
    }
}

/// Usage reported to a meter (Stripe's meter events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    /// The meter's event name (the catalog's metered price names it).
    pub meter: String,
    /// The customer it is billed to.
    pub customer: String,
    /// How much.
    pub value: u64,
    /// Unique per usage: the provider counts each identifier once, so a retry never bills twice.
    pub identifier: String,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// What the mirror reads from the provider, and the changes the product asks of it.
pub trait BillingProvider: Send + Sync + 'static {
    /// The customer `id`, or `None` if the provider does not know it.
    fn customer(&self, id: &str) -> impl Future<Output = Result<Option<Customer>, ProviderError>> + Send;
    /// The subscription `id`, or `None` if the provider does not know it.
    fn subscription(&self, id: &str) -> impl Future<Output = Result<Option<Subscription>, ProviderError>> + Send;
    /// Every subscription of `customer`, whatever its status.
    fn subscriptions_of(&self, customer: &str)
    -> impl Future<Output = Result<Vec<Subscription>, ProviderError>> + Send;
    /// Every subscription, whatever its status (for reconciliation).
    fn subscriptions(&self) -> impl Future<Output = Result<Vec<Subscription>, ProviderError>> + Send;
    /// Every customer (for reconciliation).
    fn customers(&self) -> impl Future<Output = Result<Vec<Customer>, ProviderError>> + Send;

    /// Creates the customer for `tenant` (its id in the metadata). Repeated for the same
    /// tenant it returns the same customer; prefer [`customer_for`](crate::customer_for),
    /// which creates it once and records it.
    fn create_customer(
        &self,
        tenant: TenantId,
        email: Option<&str>,
    ) -> impl Future<Output = Result<Customer, ProviderError>> + Send;
    /// A hosted checkout page that starts the subscription `req` describes.
    fn checkout_session(
        &self,
        req: &CheckoutRequest,
    ) -> impl Future<Output = Result<HostedSession, ProviderError>> + Send;
    /// A billing-portal page where `customer` manages payment methods, invoices and the
    /// subscription, returning to `return_url`.
    fn portal_session(
        &self,
        customer: &str,
        return_url: &str,
    ) -> impl Future<Output = Result<HostedSession, ProviderError>> + Send;
    /// Creates a subscription directly.
    fn create_subscription(
        &self,
        req: &NewSubscription,
    ) -> impl Future<Output = Result<Subscription, ProviderError>> + Send;
    /// Changes subscription `id`.
    fn update_subscription(
        &self,
        id: &str,
        change: &SubscriptionChange,
    ) -> impl Future<Output = Result<Subscription, ProviderError>> + Send;
    /// What `change` would invoice, without making it.
    fn preview_change(
        &self,
        id: &str,
        change: &SubscriptionChange,
    ) -> impl Future<Output = Result<Invoice, ProviderError>> + Send;
    /// Cancels subscription `id` now or at the end of its period.
    fn cancel_subscription(
        &self,
        id: &str,
        at: CancelAt,
    ) -> impl Future<Output = Result<Subscription, ProviderError>> + Send;
    /// Cancels with the customer's reason recorded at the provider (by default the reason
    /// is dropped and [`cancel_subscription`](Self::cancel_subscription) runs).
    fn cancel_with_reason(
        &self,
        id: &str,
        at: CancelAt,
        reason: &CancellationReason,
    ) -> impl Future<Output = Result<Subscription, ProviderError>> + Send {
        let _ = reason;
        self.cancel_subscription(id, at)
    }
    /// Schedules `change` for the end of the current period (a downgrade, a move to the
    /// annual price): until then nothing changes and nothing is prorated.
    fn schedule_change(
        &self,
        id: &str,
        change: &SubscriptionChange,
    ) -> impl Future<Output = Result<Subscription, ProviderError>> + Send;
    /// Drops a change scheduled for the period's end.
    fn unschedule_change(&self, id: &str) -> impl Future<Output = Result<Subscription, ProviderError>> + Send;
    /// Resumes a paused subscription (it is charged now).
    fn resume_subscription(&self, id: &str) -> impl Future<Output = Result<Subscription, ProviderError>> + Send;
    /// `customer`'s latest invoices, newest first, at most `limit`.
    fn invoices_of(
        &self,
        customer: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Invoice>, ProviderError>> + Send;
    /// The invoice `id`, or `None` if the provider does not know it.
    fn invoice(&self, id: &str) -> impl Future<Output = Result<Option<Invoice>, ProviderError>> + Send;
    /// The lookup keys of the features the provider says `customer` has now (Stripe's
    /// active entitlements). A provider without such features answers none.
    fn active_entitlements(&self, customer: &str) -> impl Future<Output = Result<Vec<String>, ProviderError>> + Send {
        let _ = customer;
        std::future::ready(Ok(Vec::new()))
    }
    /// Reports usage to a meter; the same identifier twice counts once.
    fn report_usage(&self, event: &UsageEvent) -> impl Future<Output = Result<(), ProviderError>> + Send;
}
