//! `Simulator`: an in-memory billing provider for examples and tests — **not Stripe**.
//!
//! It keeps customers and subscriptions, moves them through Stripe's statuses as time
//! passes on a [`ManualClock`], and records the events Stripe would send for each step
//! (with Stripe's event shape, ready to sign and deliver to the webhook endpoint):
//!
//! | step | status | events |
//! |---|---|---|
//! | subscribe with a trial | `trialing` | `customer.subscription.created` |
//! | three days before the trial ends | `trialing` | `customer.subscription.trial_will_end` |
//! | subscribe without a trial, payment succeeds | `active` | `customer.subscription.created`, `invoice.paid` |
//! | subscribe without a trial, payment fails | `incomplete` | `customer.subscription.created`, `invoice.payment_failed` |
//! | 23 hours incomplete | `incomplete_expired` | `customer.subscription.updated` |
//! | trial ends, payment succeeds | `active` | `customer.subscription.updated`, `invoice.paid` |
//! | trial ends, payment fails | `past_due` | `customer.subscription.updated`, `invoice.payment_failed` |
//! | trial ends without a payment method | `paused` | `customer.subscription.paused` |
//! | renewal, payment succeeds / fails | `active` / `past_due` | `invoice.paid` / `customer.subscription.updated`, `invoice.payment_failed` |
//! | past due: retries 3, 5 and 7 days after the first failure | `active` once one succeeds | `invoice.paid`, `customer.subscription.updated` |
//! | past due: the last retry fails | `canceled` (or `unpaid`, see [`Simulator::unpaid_when_retries_run_out`]) | `customer.subscription.deleted` (or `updated`) |
//! | cancel now / at period end | `canceled` (now or then) | `customer.subscription.deleted` (or `updated`, then `deleted`) |
//! | resume a paused subscription | `active` or `past_due` | `customer.subscription.resumed`, invoice event |
//!
//! The retry schedule is Stripe's classic custom schedule (3, 5, 7 days) ending in
//! cancellation, the account default; Smart Retries' timing is Stripe's own and not modelled.
//!
//! Through [`BillingProvider`] it also takes the product's calls: checkout sessions
//! (completed with [`Simulator::complete_checkout`], which emits
//! `checkout.session.completed`), portal sessions, subscription changes with a proration
//! preview, invoices and metered usage (each identifier counted once). Give it the
//! catalog ([`Simulator::with_catalog`]) for amounts, intervals and currencies; its
//! arithmetic is day-based (30-day months, 365-day years) with no tax, and discounts are
//! recorded but not applied to amounts. Its URLs (`https://….simulator.invalid/…`) lead
//! nowhere.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};

use crate::provider::TrialEnd;
use saas_core::TenantId;
use saas_core::clock::{Clock, ManualClock};

use crate::catalog::{Catalog, CatalogProvider, Charge, Interval, Plan, Price, ProviderPrice, ProviderProduct};
use crate::provider::{
    BillingProvider, CancelAt, CancellationReason, CheckoutRequest, Customer, Discount, HostedSession, Invoice,
    InvoiceLine, NewSubscription, Proration, ProviderError, Subscription, SubscriptionChange, UsageEvent,
};
use crate::status::SubscriptionStatus;

/// How long before a trial's end Stripe sends `customer.subscription.trial_will_end`.
const TRIAL_WARNING: Duration = Duration::days(3);

/// Days after the first failed payment at which it is retried.
const RETRY_DAYS: [i64; 3] = [3, 5, 7];

/// One event the simulator emitted, in Stripe's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedEvent {
    /// `evt_…`.
    pub id: String,
    /// The event type (`invoice.paid`).
    pub kind: String,
    /// When it happened (the simulator's clock).
    pub created: DateTime<Utc>,
    /// `data.object`.
    pub object: serde_json::Value,
}

impl SimulatedEvent {
    /// The delivery body Stripe would send.
    pub fn body(&self) -> String {
        serde_json::json!({
            "id": self.id,
            "object": "event",
            "api_version": "2025-10-29.clover",
            "created": self.created.timestamp(),
            "livemode": false,
            "type": self.kind,
            "data": {"object": self.object},
        })
        .to_string()
    }
}

#[derive(Debug, Clone)]
struct Sim {
    sub: Subscription,
    interval: Interval,
    /// The price's amount and charge when the subscription took it: a subscription keeps
    /// its price's terms when the catalog moves the lookup key to a new price.
    terms: Option<(i64, Charge)>,
    /// Whether `customer.subscription.trial_will_end` was sent for this trial.
    trial_warned: bool,
    /// A change waiting for the end of the period.
    scheduled: Option<SubscriptionChange>,
    /// What the trial's end does without a payment method.
    trial_end_behavior: TrialEnd,
    /// Why it was canceled, if the customer said.
    cancellation: Option<CancellationReason>,
    /// When the unpaid invoice first failed (past due / incomplete).
    failed_at: Option<DateTime<Utc>>,
    retries: usize,
    created: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct State {
    /// Distinguishes this simulator's ids from every other's (ids are global in the inbox
    /// and the mirror, as Stripe's are).
    prefix: String,
    /// Where a subscription goes when the last retry fails (`unpaid` per the account's
    /// settings; `canceled` by default).
    exhausted_unpaid: bool,
    customers: BTreeMap<String, (Customer, Option<bool>)>,
    subs: BTreeMap<String, Sim>,
    events: Vec<SimulatedEvent>,
    next: u64,
    /// Lookup key → (amount, currency, interval, charge), from the catalogs given.
    prices: BTreeMap<String, (i64, String, Interval, Charge)>,
    /// The currency each customer pays in (set by its first subscription).
    currencies: BTreeMap<String, String>,
    checkouts: BTreeMap<String, (CheckoutRequest, bool)>,
    invoices: BTreeMap<String, Invoice>,
    /// Meter events by identifier (a repeated identifier is not counted again).
    usage: BTreeMap<String, UsageEvent>,
    discounts: BTreeMap<String, Discount>,
    products: BTreeMap<String, ProviderProduct>,
    /// Lookup key → the switches its plan grants (what Stripe's product features would be).
    price_switches: BTreeMap<String, Vec<String>>,
    price_objects: BTreeMap<String, ProviderPrice>,
}

/// The simulated provider. Cheap to clone (clones share state).
#[derive(Debug, Clone)]
pub struct Simulator {
    state: Arc<Mutex<State>>,
    clock: ManualClock,
}

/// What the simulator refuses (a call Stripe would refuse too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimulatorError {
    /// No such customer or subscription.
    #[error("no such object: {0}")]
    NoSuchObject(String),
    /// The subscription's status does not allow the call.
    #[error("the subscription is {0}; this change is not allowed")]
    NotAllowed(SubscriptionStatus),
    /// The customer already pays in another currency.
    #[error("customer {customer} pays in {has}, not {wanted}")]
    Currency {
        /// The customer.
        customer: String,
        /// Its currency.
        has: String,
        /// The price's.
        wanted: String,
    },
}

impl From<SimulatorError> for ProviderError {
    fn from(e: SimulatorError) -> Self {
        match e {
            SimulatorError::NoSuchObject(id) => ProviderError::NotFound(id),
            SimulatorError::Currency { customer, has, wanted } => {
                ProviderError::CurrencyMismatch { customer, has, wanted }
            }
            other => ProviderError::Refused(other.to_string()),
        }
    }
}

impl Simulator {
    /// A simulator whose time is `clock`.
    pub fn new(clock: ManualClock) -> Self {
        let random = uuid::Uuid::now_v7().simple().to_string();
        Self {
            state: Arc::new(Mutex::new(State {
                prefix: random[20..].to_owned(),
                ..State::default()
            })),
            clock,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State, DateTime<Utc>) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut s, self.clock.now())
    }

    /// When the last payment retry fails, leave subscriptions `unpaid` instead of
    /// canceling them (the account setting Stripe offers).
    pub fn unpaid_when_retries_run_out(self) -> Self {
        self.with(|s, _| s.exhausted_unpaid = true);
        self
    }

    /// Knows the prices of `catalog`: their amounts (for invoices and proration previews),
    /// intervals and currency. Without a catalog every lookup key is taken as a monthly
    /// price of 0.
    pub fn with_catalog(self, catalog: &Catalog) -> Self {
        self.with(|s, _| {
            for plan in catalog.plans().iter().filter(|p| !p.is_free()) {
                let switches: Vec<String> = plan
                    .features()
                    .filter(|(_, f)| **f == crate::catalog::Feature::On)
                    .map(|(n, _)| n.to_owned())
                    .collect();
                for price in plan.prices() {
                    s.price_switches.insert(price.lookup_key().to_owned(), switches.clone());
                }
                let product = s.install_product(plan);
                for price in plan.prices() {
                    s.install_price(&product, price, catalog.currency());
                }
            }
        });
        self
    }

    /// The customer pays on the checkout page `session` (`pays`: whether its card works):
    /// the subscription starts (with the session's trial) and `checkout.session.completed`
    /// is emitted. Returns the subscription's id.
    pub fn complete_checkout(&self, session: &str, pays: bool) -> Result<String, SimulatorError> {
        let (req, done) = self
            .with(|s, _| s.checkouts.get(session).cloned())
            .ok_or_else(|| SimulatorError::NoSuchObject(session.into()))?;
        if done {
            return Err(SimulatorError::NoSuchObject(format!("{session} (already completed)")));
        }
        self.set_payment_method(&req.customer, pays)?;
        let interval = self.interval_of(&req.price);
        let sub = self.subscribe(&req.customer, &req.price, interval, req.trial_days.unwrap_or(0))?;
        self.with(|s, now| {
            if let Some(sim) = s.subs.get_mut(&sub) {
                sim.sub.quantity = req.quantity;
                sim.trial_end_behavior = req.trial_end;
            }
            if let Some(d) = &req.discount {
                s.discounts.insert(sub.clone(), d.clone());
            }
            s.checkouts.insert(session.to_owned(), (req.clone(), true));
            s.emit(
                "checkout.session.completed",
                now,
                serde_json::json!({
                    "id": session, "object": "checkout.session", "mode": "subscription", "status": "complete",
                    "customer": req.customer, "subscription": sub, "client_reference_id": req.tenant.to_string(),
                }),
            );
        });
        Ok(sub)
    }

    /// The discount applied to `subscription`, if any (recorded, not applied to amounts).
    pub fn discount_of(&self, subscription: &str) -> Option<Discount> {
        self.with(|s, _| s.discounts.get(subscription).cloned())
    }

    /// The reason given when `subscription` was canceled, if any.
    pub fn cancellation_reason(&self, subscription: &str) -> Option<CancellationReason> {
        self.with(|s, _| s.subs.get(subscription).and_then(|sim| sim.cancellation.clone()))
    }

    /// The usage reported to `meter` for `customer` so far (each identifier once).
    pub fn usage_reported(&self, customer: &str, meter: &str) -> u64 {
        self.with(|s, _| {
            s.usage
                .values()
                .filter(|u| u.customer == customer && u.meter == meter)
                .map(|u| u.value)
                .sum()
        })
    }

    fn interval_of(&self, lookup_key: &str) -> Interval {
        self.with(|s, _| s.prices.get(lookup_key).map_or(Interval::Month, |p| p.2))
    }

    /// Every event emitted so far, in order.
    pub fn events(&self) -> Vec<SimulatedEvent> {
        self.with(|s, _| s.events.clone())
    }

    /// A new customer for `tenant` (its id in the metadata), without a payment method, and
    /// its id. (Through [`BillingProvider::create_customer`] a tenant's existing customer
    /// is returned instead, as Stripe does for a repeated idempotency key.)
    pub fn add_customer(&self, tenant: TenantId) -> String {
        self.with(|s, now| {
            let id = s.id("cus");
            let customer = Customer {
                id: id.clone(),
                tenant: Some(tenant),
                deleted: false,
            };
            s.customers.insert(id.clone(), (customer, None));
            s.emit(
                "customer.created",
                now,
                serde_json::json!({"id": id, "object": "customer"}),
            );
            id
        })
    }

    /// Gives `customer` a payment method whose charges succeed (`true`) or fail.
    pub fn set_payment_method(&self, customer: &str, succeeds: bool) -> Result<(), SimulatorError> {
        self.with(|s, _| {
            let c = s
                .customers
                .get_mut(customer)
                .ok_or_else(|| SimulatorError::NoSuchObject(customer.into()))?;
            c.1 = Some(succeeds);
            Ok(())
        })
    }

    /// Subscribes `customer` to the price `lookup_key` (billed every `interval`), with a
    /// trial of `trial_days` (0: none, the first invoice is charged now).
    pub fn subscribe(
        &self,
        customer: &str,
        lookup_key: &str,
        interval: Interval,
        trial_days: u32,
    ) -> Result<String, SimulatorError> {
        self.with(|s, now| {
            let pm = s
                .customers
                .get(customer)
                .ok_or_else(|| SimulatorError::NoSuchObject(customer.into()))?
                .1;
            s.check_currency(customer, lookup_key)?;
            let id = s.id("sub");
            let trial_end = (trial_days > 0).then(|| now + Duration::days(i64::from(trial_days)));
            let mut sim = Sim {
                sub: Subscription {
                    id: id.clone(),
                    customer: customer.to_owned(),
                    status: SubscriptionStatus::Trialing,
                    price_lookup_key: Some(lookup_key.to_owned()),
                    quantity: 1,
                    current_period_start: Some(now),
                    current_period_end: Some(trial_end.unwrap_or_else(|| next_period(now, interval))),
                    trial_end,
                    cancel_at_period_end: false,
                },
                interval,
                terms: s.terms_of(lookup_key),
                trial_warned: false,
                scheduled: None,
                trial_end_behavior: TrialEnd::Pause,
                cancellation: None,
                failed_at: None,
                retries: 0,
                created: now,
            };
            if trial_end.is_none() {
                sim.sub.status = if pm == Some(true) {
                    SubscriptionStatus::Active
                } else {
                    sim.failed_at = Some(now);
                    SubscriptionStatus::Incomplete
                };
            }
            s.subs.insert(id.clone(), sim);
            s.emit_sub("customer.subscription.created", &id, now);
            if trial_end.is_none() {
                s.emit_invoice(&id, pm == Some(true), now);
            }
            Ok(id)
        })
    }

    /// Moves the clock on by `by`, running everything that falls due on the way (trial
    /// ends, renewals, payment retries, expiries), in time order.
    pub fn advance(&self, by: Duration) {
        let end = self.clock.now() + by;
        loop {
            let due = self.with(|s, _| {
                s.subs
                    .values()
                    .filter_map(|sim| next_due(sim).map(|t| (t, sim.sub.id.clone())))
                    .min()
            });
            match due {
                Some((at, id)) if at <= end => {
                    if at > self.clock.now() {
                        self.clock.set(at);
                    }
                    self.with(|s, now| s.fall_due(&id, now));
                }
                _ => break,
            }
        }
        self.clock.set(end);
    }

    /// Cancels `subscription` now, or at the end of its period.
    pub fn cancel(&self, subscription: &str, at_period_end: bool) -> Result<(), SimulatorError> {
        self.with(|s, now| {
            let sim = s.live(subscription)?;
            if at_period_end {
                sim.sub.cancel_at_period_end = true;
                s.emit_sub("customer.subscription.updated", subscription, now);
            } else {
                sim.sub.status = SubscriptionStatus::Canceled;
                s.emit_sub("customer.subscription.deleted", subscription, now);
            }
            Ok(())
        })
    }

    /// Undoes a cancellation at period end.
    pub fn reactivate(&self, subscription: &str) -> Result<(), SimulatorError> {
        self.with(|s, now| {
            s.live(subscription)?.sub.cancel_at_period_end = false;
            s.emit_sub("customer.subscription.updated", subscription, now);
            Ok(())
        })
    }

    /// Moves `subscription` to the price `lookup_key` (an upgrade or a change of interval
    /// takes effect now).
    pub fn change_price(&self, subscription: &str, lookup_key: &str, interval: Interval) -> Result<(), SimulatorError> {
        self.with(|s, now| {
            let terms = s.terms_of(lookup_key);
            let sim = s.live(subscription)?;
            sim.sub.price_lookup_key = Some(lookup_key.to_owned());
            sim.interval = interval;
            sim.terms = terms;
            s.emit_sub("customer.subscription.updated", subscription, now);
            Ok(())
        })
    }

    /// Resumes a paused subscription: charges now (active, or past due if that fails).
    pub fn resume(&self, subscription: &str) -> Result<(), SimulatorError> {
        self.with(|s, now| {
            let sim = s
                .subs
                .get(subscription)
                .ok_or_else(|| SimulatorError::NoSuchObject(subscription.into()))?;
            if sim.sub.status != SubscriptionStatus::Paused {
                return Err(SimulatorError::NotAllowed(sim.sub.status));
            }
            s.charge(subscription, now, "customer.subscription.resumed");
            Ok(())
        })
    }
}

/// What one period costs on `terms` with `quantity` seats.
fn period_amount(terms: Option<&(i64, Charge)>, quantity: u64) -> i64 {
    match terms {
        Some((amount, Charge::Flat)) => *amount,
        Some((amount, Charge::PerSeat)) => amount.saturating_mul(i64::try_from(quantity).unwrap_or(i64::MAX)),
        // Usage is counted (`usage_reported`), not invoiced, by the simulator.
        Some((_, Charge::Metered { .. })) | None => 0,
    }
}

fn next_period(from: DateTime<Utc>, interval: Interval) -> DateTime<Utc> {
    match interval {
        Interval::Month => from + Duration::days(30),
        Interval::Year => from + Duration::days(365),
    }
}

/// When `sim` next changes by itself.
fn next_due(sim: &Sim) -> Option<DateTime<Utc>> {
    use SubscriptionStatus::{Active, Incomplete, PastDue, Trialing};
    match sim.sub.status {
        // Three days before a trial ends, Stripe warns (`trial_will_end`).
        Trialing if !sim.trial_warned && sim.sub.trial_end.is_some_and(|t| t - TRIAL_WARNING > sim.created) => {
            sim.sub.trial_end.map(|t| t - TRIAL_WARNING)
        }
        Trialing | Active => sim.sub.current_period_end,
        Incomplete => Some(sim.created + Duration::hours(23)),
        PastDue => Some(sim.failed_at? + Duration::days(*RETRY_DAYS.get(sim.retries)?)),
        _ => None,
    }
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}_sim{}{:06}", self.prefix, self.next)
    }

    fn emit(&mut self, kind: &str, at: DateTime<Utc>, object: serde_json::Value) {
        let id = self.id("evt");
        self.events.push(SimulatedEvent {
            id,
            kind: kind.to_owned(),
            created: at,
            object,
        });
    }

    fn emit_sub(&mut self, kind: &str, id: &str, at: DateTime<Utc>) {
        let object = self.subs.get(id).map(|sim| {
            serde_json::json!({
                "id": sim.sub.id, "object": "subscription", "customer": sim.sub.customer,
                "status": sim.sub.status.as_str(), "quantity": sim.sub.quantity,
                "cancel_at_period_end": sim.sub.cancel_at_period_end,
                "current_period_start": sim.sub.current_period_start.map(|t| t.timestamp()),
                "current_period_end": sim.sub.current_period_end.map(|t| t.timestamp()),
                "trial_end": sim.sub.trial_end.map(|t| t.timestamp()),
            })
        });
        if let Some(object) = object {
            self.emit(kind, at, object);
        }
    }

    fn emit_invoice(&mut self, sub: &str, paid: bool, at: DateTime<Utc>) {
        let lines = self.period_lines(sub);
        self.emit_invoice_of(sub, lines, paid, at);
    }

    /// Stores an invoice of `lines` for `sub` and emits its event.
    fn emit_invoice_of(&mut self, sub: &str, lines: Vec<InvoiceLine>, paid: bool, at: DateTime<Utc>) {
        let id = self.id("in");
        let customer = self.subs.get(sub).map(|s| s.sub.customer.clone()).unwrap_or_default();
        let currency = self.currencies.get(&customer).cloned().unwrap_or_else(|| "usd".into());
        let total: i64 = lines.iter().map(|l| l.amount).sum();
        let status = if paid { "paid" } else { "open" };
        let invoice = Invoice {
            id: Some(id.clone()),
            customer: customer.clone(),
            subscription: Some(sub.to_owned()),
            status: Some(status.to_owned()),
            currency: currency.clone(),
            amount_due: total,
            amount_paid: if paid { total } else { 0 },
            hosted_invoice_url: Some(format!("https://invoice.simulator.invalid/{id}")),
            lines,
        };
        self.invoices.insert(id.clone(), invoice);
        let object = serde_json::json!({
            "id": id, "object": "invoice", "customer": customer, "status": status, "currency": currency,
            "amount_due": total, "amount_paid": if paid { total } else { 0 },
            "parent": {"type": "subscription_details", "subscription_details": {"subscription": sub}},
        });
        self.emit(if paid { "invoice.paid" } else { "invoice.payment_failed" }, at, object);
    }

    /// The current terms of the price `lookup_key`.
    fn terms_of(&self, lookup_key: &str) -> Option<(i64, Charge)> {
        self.prices.get(lookup_key).map(|p| (p.0, p.3.clone()))
    }

    /// The terms `change` leaves `sim` on.
    fn new_terms(&self, sim: &Sim, change: &SubscriptionChange) -> Option<(i64, Charge)> {
        match &change.price {
            Some(p) => self.terms_of(p),
            None => sim.terms.clone(),
        }
    }

    fn period_lines(&self, sub: &str) -> Vec<InvoiceLine> {
        let Some(sim) = self.subs.get(sub) else {
            return Vec::new();
        };
        let key = sim.sub.price_lookup_key.as_deref();
        vec![InvoiceLine {
            description: format!("{} × {}", sim.sub.quantity, key.unwrap_or("?")),
            amount: period_amount(sim.terms.as_ref(), sim.sub.quantity),
            proration: false,
        }]
    }

    /// The proration lines of `change` to `sub` now: unused time credited, the rest of the
    /// period charged at the new price and seats.
    fn proration_lines(&self, sub: &str, change: &SubscriptionChange, now: DateTime<Utc>) -> Vec<InvoiceLine> {
        let Some(sim) = self.subs.get(sub) else {
            return Vec::new();
        };
        if change.proration == Proration::None || sim.sub.status == SubscriptionStatus::Trialing {
            return Vec::new();
        }
        let Some(end) = sim.sub.current_period_end else {
            return Vec::new();
        };
        let old_key = sim.sub.price_lookup_key.as_deref();
        let new_key = change.price.as_deref().or(old_key);
        let new_interval = new_key.and_then(|k| self.prices.get(k)).map_or(sim.interval, |p| p.2);
        let quantity = change.quantity.unwrap_or(sim.sub.quantity);
        let length = (next_period(now, sim.interval) - now).num_seconds().max(1);
        let left = (end - now).num_seconds().clamp(0, length);
        let share =
            |amount: i64| i64::try_from(i128::from(amount) * i128::from(left) / i128::from(length)).unwrap_or(i64::MAX);
        let old = period_amount(sim.terms.as_ref(), sim.sub.quantity);
        let new = period_amount(self.new_terms(sim, change).as_ref(), quantity);
        if new_interval != sim.interval {
            // A change of interval starts a new period now: the unused time is credited and
            // the new price charged in full.
            return vec![
                InvoiceLine {
                    description: format!("Unused time on {}", old_key.unwrap_or("?")),
                    amount: -share(old),
                    proration: true,
                },
                InvoiceLine {
                    description: format!("{quantity} × {}", new_key.unwrap_or("?")),
                    amount: new,
                    proration: false,
                },
            ];
        }
        vec![
            InvoiceLine {
                description: format!("Unused time on {}", old_key.unwrap_or("?")),
                amount: -share(old),
                proration: true,
            },
            InvoiceLine {
                description: format!("Remaining time on {quantity} × {}", new_key.unwrap_or("?")),
                amount: share(new),
                proration: true,
            },
        ]
    }

    fn install_product(&mut self, plan: &Plan) -> String {
        let id = self.id("prod");
        let product = ProviderProduct {
            id: id.clone(),
            plan: Some(plan.key().to_owned()),
            name: plan.display_name().to_owned(),
            active: true,
        };
        self.products.insert(id.clone(), product);
        id
    }

    /// Creates the price object, moving its lookup key from any other price.
    fn install_price(&mut self, product: &str, price: &Price, currency: &str) -> ProviderPrice {
        let id = self.id("price");
        for other in self.price_objects.values_mut() {
            if other.lookup_key.as_deref() == Some(price.lookup_key()) {
                other.lookup_key = None;
            }
        }
        let object = ProviderPrice {
            id: id.clone(),
            product: product.to_owned(),
            lookup_key: Some(price.lookup_key().to_owned()),
            active: true,
            currency: currency.to_owned(),
            unit_amount: Some(price.amount()),
            interval: Some(price.interval()),
            charge: Some(price.charge().clone()),
        };
        self.price_objects.insert(id, object.clone());
        // Subscriptions on an archived price keep its terms: only a key's new terms change.
        self.prices.insert(
            price.lookup_key().to_owned(),
            (
                price.amount(),
                currency.to_owned(),
                price.interval(),
                price.charge().clone(),
            ),
        );
        object
    }

    /// Whether new subscriptions may use the price `lookup_key` (any key, when no catalog
    /// was given).
    fn offered(&self, lookup_key: &str) -> bool {
        self.price_objects.is_empty()
            || self
                .price_objects
                .values()
                .any(|p| p.active && p.lookup_key.as_deref() == Some(lookup_key))
    }

    /// Refuses a price that is not offered, or in another currency than `customer` pays in.
    fn check_price(&mut self, customer: &str, lookup_key: &str) -> Result<(), ProviderError> {
        if !self.offered(lookup_key) {
            return Err(ProviderError::NotFound(format!(
                "active price with lookup key {lookup_key}"
            )));
        }
        Ok(self.check_currency(customer, lookup_key)?)
    }

    /// Fixes `customer`'s currency at its first price; refuses a price in another.
    fn check_currency(&mut self, customer: &str, lookup_key: &str) -> Result<(), SimulatorError> {
        let Some(wanted) = self.prices.get(lookup_key).map(|p| p.1.clone()) else {
            return Ok(());
        };
        match self.currencies.get(customer) {
            Some(has) if *has != wanted => Err(SimulatorError::Currency {
                customer: customer.to_owned(),
                has: has.clone(),
                wanted,
            }),
            Some(_) => Ok(()),
            None => {
                self.currencies.insert(customer.to_owned(), wanted);
                Ok(())
            }
        }
    }

    fn live(&mut self, id: &str) -> Result<&mut Sim, SimulatorError> {
        let sim = self
            .subs
            .get_mut(id)
            .ok_or_else(|| SimulatorError::NoSuchObject(id.into()))?;
        if sim.sub.status.is_terminal() {
            return Err(SimulatorError::NotAllowed(sim.sub.status));
        }
        Ok(sim)
    }

    fn payment_method(&self, sub: &str) -> Option<bool> {
        let customer = &self.subs.get(sub)?.sub.customer;
        self.customers.get(customer)?.1
    }

    /// Charges the period now: active and a new period, or past due.
    fn charge(&mut self, id: &str, now: DateTime<Utc>, status_event: &str) {
        let pm = self.payment_method(id);
        let Some(sim) = self.subs.get_mut(id) else { return };
        if pm == Some(true) {
            sim.sub.status = SubscriptionStatus::Active;
            sim.failed_at = None;
            sim.retries = 0;
            sim.sub.current_period_start = Some(now);
            sim.sub.current_period_end = Some(next_period(now, sim.interval));
            sim.sub.trial_end = sim.sub.trial_end.filter(|t| *t > now);
            self.emit_sub(status_event, id, now);
            self.emit_invoice(id, true, now);
        } else {
            sim.sub.status = SubscriptionStatus::PastDue;
            sim.failed_at = Some(now);
            sim.retries = 0;
            self.emit_sub(status_event, id, now);
            self.emit_invoice(id, false, now);
        }
    }

    fn fall_due(&mut self, id: &str, now: DateTime<Utc>) {
        use SubscriptionStatus::{Active, Canceled, Incomplete, IncompleteExpired, PastDue, Paused, Trialing, Unpaid};
        let pm = self.payment_method(id);
        let Some(sim) = self.subs.get_mut(id) else { return };
        match sim.sub.status {
            Trialing if !sim.trial_warned && sim.sub.trial_end.is_some_and(|t| now < t) => {
                sim.trial_warned = true;
                self.emit_sub("customer.subscription.trial_will_end", id, now);
            }
            Trialing | Active if sim.sub.cancel_at_period_end => {
                sim.sub.status = Canceled;
                self.emit_sub("customer.subscription.deleted", id, now);
            }
            Trialing if pm.is_none() => match sim.trial_end_behavior {
                TrialEnd::Pause => {
                    sim.sub.status = Paused;
                    self.emit_sub("customer.subscription.paused", id, now);
                }
                TrialEnd::Cancel => {
                    sim.sub.status = Canceled;
                    self.emit_sub("customer.subscription.deleted", id, now);
                }
                TrialEnd::CreateInvoice => self.charge(id, now, "customer.subscription.updated"),
            },
            Trialing | Active => {
                if let Some(change) = sim.scheduled.take() {
                    if let Some(p) = &change.price {
                        sim.sub.price_lookup_key = Some(p.clone());
                        if let Some((amount, _, interval, charge)) = self.prices.get(p).cloned() {
                            sim.interval = interval;
                            sim.terms = Some((amount, charge));
                        }
                    }
                    if let Some(q) = change.quantity {
                        sim.sub.quantity = q;
                    }
                }
                self.charge(id, now, "customer.subscription.updated");
            }
            Incomplete => {
                sim.sub.status = IncompleteExpired;
                self.emit_sub("customer.subscription.updated", id, now);
            }
            PastDue => {
                sim.retries += 1;
                if pm == Some(true) {
                    sim.sub.status = Active;
                    sim.failed_at = None;
                    sim.retries = 0;
                    sim.sub.current_period_start = Some(now);
                    sim.sub.current_period_end = Some(next_period(now, sim.interval));
                    self.emit_invoice(id, true, now);
                    self.emit_sub("customer.subscription.updated", id, now);
                } else if sim.retries >= RETRY_DAYS.len() {
                    let unpaid = self.exhausted_unpaid;
                    sim.sub.status = if unpaid { Unpaid } else { Canceled };
                    self.emit_invoice(id, false, now);
                    let kind = if unpaid {
                        "customer.subscription.updated"
                    } else {
                        "customer.subscription.deleted"
                    };
                    self.emit_sub(kind, id, now);
                } else {
                    self.emit_invoice(id, false, now);
                }
            }
            _ => {}
        }
    }
}

impl BillingProvider for Simulator {
    async fn customer(&self, id: &str) -> Result<Option<Customer>, ProviderError> {
        Ok(self.with(|s, _| s.customers.get(id).map(|c| c.0.clone())))
    }

    async fn subscription(&self, id: &str) -> Result<Option<Subscription>, ProviderError> {
        Ok(self.with(|s, _| s.subs.get(id).map(|sim| sim.sub.clone())))
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, ProviderError> {
        Ok(self.with(|s, _| s.subs.values().map(|sim| sim.sub.clone()).collect()))
    }

    async fn customers(&self) -> Result<Vec<Customer>, ProviderError> {
        Ok(self.with(|s, _| s.customers.values().map(|c| c.0.clone()).collect()))
    }

    async fn subscriptions_of(&self, customer: &str) -> Result<Vec<Subscription>, ProviderError> {
        Ok(self.with(|s, _| {
            s.subs
                .values()
                .filter(|sim| sim.sub.customer == customer)
                .map(|sim| sim.sub.clone())
                .collect()
        }))
    }
    async fn create_customer(&self, tenant: TenantId, _email: Option<&str>) -> Result<Customer, ProviderError> {
        let existing = self.with(|s, _| {
            s.customers
                .values()
                .find(|c| c.0.tenant == Some(tenant) && !c.0.deleted)
                .map(|c| c.0.clone())
        });
        match existing {
            Some(c) => Ok(c),
            None => {
                let id = self.add_customer(tenant);
                Ok(self.with(|s, _| s.customers[&id].0.clone()))
            }
        }
    }

    async fn checkout_session(&self, req: &CheckoutRequest) -> Result<HostedSession, ProviderError> {
        if req.discount.is_some() && req.allow_promotion_codes {
            return Err(ProviderError::Refused(
                "a checkout session takes a discount or a promotion-code field, not both".into(),
            ));
        }
        self.with(|s, _| {
            if !s.customers.contains_key(&req.customer) {
                return Err(ProviderError::NotFound(req.customer.clone()));
            }
            if !s.offered(&req.price) {
                return Err(ProviderError::NotFound(format!(
                    "active price with lookup key {}",
                    req.price
                )));
            }
            if let (Some(has), Some(p)) = (s.currencies.get(&req.customer), s.prices.get(&req.price))
                && *has != p.1
            {
                return Err(ProviderError::CurrencyMismatch {
                    customer: req.customer.clone(),
                    has: has.clone(),
                    wanted: p.1.clone(),
                });
            }
            let id = s.id("cs");
            s.checkouts.insert(id.clone(), (req.clone(), false));
            Ok(HostedSession {
                url: format!("https://checkout.simulator.invalid/{id}"),
                id,
            })
        })
    }

    async fn portal_session(&self, customer: &str, _return_url: &str) -> Result<HostedSession, ProviderError> {
        self.with(|s, _| {
            if !s.customers.contains_key(customer) {
                return Err(ProviderError::NotFound(customer.to_owned()));
            }
            let id = s.id("bps");
            Ok(HostedSession {
                url: format!("https://billing.simulator.invalid/{id}"),
                id,
            })
        })
    }

    async fn create_subscription(&self, req: &NewSubscription) -> Result<Subscription, ProviderError> {
        if !self.with(|s, _| s.offered(&req.price)) {
            return Err(ProviderError::NotFound(format!(
                "active price with lookup key {}",
                req.price
            )));
        }
        let interval = self.interval_of(&req.price);
        let id = self.subscribe(&req.customer, &req.price, interval, req.trial_days.unwrap_or(0))?;
        self.with(|s, _| {
            if let Some(d) = &req.discount {
                s.discounts.insert(id.clone(), d.clone());
            }
            let sim = s.subs.get_mut(&id).ok_or_else(|| ProviderError::NotFound(id.clone()))?;
            sim.sub.quantity = req.quantity;
            sim.trial_end_behavior = req.trial_end;
            Ok(sim.sub.clone())
        })
    }

    async fn update_subscription(&self, id: &str, change: &SubscriptionChange) -> Result<Subscription, ProviderError> {
        self.with(|s, now| {
            let customer = s.live(id)?.sub.customer.clone();
            if let Some(p) = &change.price {
                s.check_price(&customer, p)?;
            }
            let prorations = s.proration_lines(id, change, now);
            let new_interval = change.price.as_deref().and_then(|p| s.prices.get(p)).map(|p| p.2);
            let new_terms = change.price.as_deref().map(|p| s.terms_of(p));
            let sim = s.live(id)?;
            if let Some(t) = new_terms {
                sim.terms = t;
            }
            let interval_changed = new_interval.is_some_and(|i| i != sim.interval);
            if let Some(p) = &change.price {
                sim.sub.price_lookup_key = Some(p.clone());
            }
            if let Some(i) = new_interval {
                sim.interval = i;
            }
            if let Some(q) = change.quantity {
                sim.sub.quantity = q;
            }
            if let Some(c) = change.cancel_at_period_end {
                sim.sub.cancel_at_period_end = c;
            }
            if let Some(d) = &change.discount {
                s.discounts.insert(id.to_owned(), d.clone());
            }
            let Some(sim) = s.subs.get_mut(id) else {
                return Err(ProviderError::NotFound(id.to_owned()));
            };
            if interval_changed && sim.sub.status == SubscriptionStatus::Active {
                // A new billing period starts now.
                sim.sub.current_period_start = Some(now);
                sim.sub.current_period_end = Some(next_period(now, sim.interval));
            }
            s.emit_sub("customer.subscription.updated", id, now);
            let invoice_now = change.proration == Proration::AlwaysInvoice || interval_changed;
            if invoice_now && !prorations.is_empty() {
                let pays = s.payment_method(id) == Some(true);
                s.emit_invoice_of(id, prorations, pays, now);
            }
            Ok(s.subs[id].sub.clone())
        })
    }

    async fn preview_change(&self, id: &str, change: &SubscriptionChange) -> Result<Invoice, ProviderError> {
        self.with(|s, now| {
            let sim = s.subs.get(id).ok_or_else(|| ProviderError::NotFound(id.to_owned()))?;
            let customer = sim.sub.customer.clone();
            let mut lines = s.proration_lines(id, change, now);
            let interval_changed = change
                .price
                .as_deref()
                .and_then(|p| s.prices.get(p))
                .is_some_and(|p| p.2 != sim.interval);
            if change.proration != Proration::AlwaysInvoice && !interval_changed {
                // The next invoice: the prorations plus the next period at the new terms.
                let key = change.price.as_deref().or(sim.sub.price_lookup_key.as_deref());
                let quantity = change.quantity.unwrap_or(sim.sub.quantity);
                lines.push(InvoiceLine {
                    description: format!("{quantity} × {}", key.unwrap_or("?")),
                    amount: period_amount(s.new_terms(sim, change).as_ref(), quantity),
                    proration: false,
                });
            }
            let currency = s.currencies.get(&customer).cloned().unwrap_or_else(|| "usd".into());
            let total = lines.iter().map(|l| l.amount).sum();
            Ok(Invoice {
                id: None,
                customer,
                subscription: Some(id.to_owned()),
                status: Some("draft".into()),
                currency,
                amount_due: total,
                amount_paid: 0,
                hosted_invoice_url: None,
                lines,
            })
        })
    }

    async fn cancel_subscription(&self, id: &str, at: CancelAt) -> Result<Subscription, ProviderError> {
        self.cancel(id, at == CancelAt::PeriodEnd)?;
        Ok(self.with(|s, _| s.subs[id].sub.clone()))
    }

    async fn cancel_with_reason(
        &self,
        id: &str,
        at: CancelAt,
        reason: &CancellationReason,
    ) -> Result<Subscription, ProviderError> {
        self.with(|s, _| s.live(id).map(|sim| sim.cancellation = Some(reason.clone())))?;
        self.cancel_subscription(id, at).await
    }

    async fn schedule_change(&self, id: &str, change: &SubscriptionChange) -> Result<Subscription, ProviderError> {
        self.with(|s, now| {
            let customer = s.live(id)?.sub.customer.clone();
            if let Some(p) = &change.price {
                s.check_price(&customer, p)?;
            }
            s.live(id)?.scheduled = Some(change.clone());
            s.emit_sub("customer.subscription.updated", id, now);
            Ok(s.subs[id].sub.clone())
        })
    }

    async fn unschedule_change(&self, id: &str) -> Result<Subscription, ProviderError> {
        self.with(|s, now| {
            s.live(id)?.scheduled = None;
            s.emit_sub("customer.subscription.updated", id, now);
            Ok(s.subs[id].sub.clone())
        })
    }

    async fn resume_subscription(&self, id: &str) -> Result<Subscription, ProviderError> {
        self.resume(id)?;
        Ok(self.with(|s, _| s.subs[id].sub.clone()))
    }

    async fn invoices_of(&self, customer: &str, limit: usize) -> Result<Vec<Invoice>, ProviderError> {
        // Ids are issued in order: the newest is the greatest.
        Ok(self.with(|s, _| {
            s.invoices
                .values()
                .rev()
                .filter(|i| i.customer == customer)
                .take(limit)
                .cloned()
                .collect()
        }))
    }

    async fn invoice(&self, id: &str) -> Result<Option<Invoice>, ProviderError> {
        Ok(self.with(|s, _| s.invoices.get(id).cloned()))
    }

    async fn active_entitlements(&self, customer: &str) -> Result<Vec<String>, ProviderError> {
        // Stripe's product features of the live subscriptions (trialing, active, past due).
        Ok(self.with(|s, _| {
            let mut out: Vec<String> = s
                .subs
                .values()
                .filter(|sim| sim.sub.customer == customer)
                .filter(|sim| {
                    matches!(
                        sim.sub.status,
                        SubscriptionStatus::Trialing | SubscriptionStatus::Active | SubscriptionStatus::PastDue
                    )
                })
                .filter_map(|sim| sim.sub.price_lookup_key.as_ref())
                .flat_map(|k| s.price_switches.get(k).cloned().unwrap_or_default())
                .collect();
            out.sort();
            out.dedup();
            out
        }))
    }

    async fn report_usage(&self, event: &UsageEvent) -> Result<(), ProviderError> {
        self.with(|s, _| {
            if !s.customers.contains_key(&event.customer) {
                return Err(ProviderError::NotFound(event.customer.clone()));
            }
            s.usage.entry(event.identifier.clone()).or_insert_with(|| event.clone());
            Ok(())
        })
    }
}

impl CatalogProvider for Simulator {
    async fn products(&self) -> Result<Vec<ProviderProduct>, ProviderError> {
        Ok(self.with(|s, _| s.products.values().cloned().collect()))
    }

    async fn prices(&self) -> Result<Vec<ProviderPrice>, ProviderError> {
        Ok(self.with(|s, _| s.price_objects.values().cloned().collect()))
    }

    async fn create_product(&self, plan: &Plan) -> Result<ProviderProduct, ProviderError> {
        Ok(self.with(|s, _| {
            let id = s.install_product(plan);
            s.products[&id].clone()
        }))
    }

    async fn rename_product(&self, id: &str, name: &str) -> Result<(), ProviderError> {
        self.with(|s, _| {
            let p = s
                .products
                .get_mut(id)
                .ok_or_else(|| ProviderError::NotFound(id.to_owned()))?;
            p.name = name.to_owned();
            Ok(())
        })
    }

    async fn create_price(&self, product: &str, price: &Price, currency: &str) -> Result<ProviderPrice, ProviderError> {
        self.with(|s, _| {
            if !s.products.contains_key(product) {
                return Err(ProviderError::NotFound(product.to_owned()));
            }
            Ok(s.install_price(product, price, currency))
        })
    }

    async fn archive_price(&self, id: &str) -> Result<(), ProviderError> {
        self.with(|s, _| {
            let p = s
                .price_objects
                .get_mut(id)
                .ok_or_else(|| ProviderError::NotFound(id.to_owned()))?;
            p.active = false;
            Ok(())
        })
    }
}
