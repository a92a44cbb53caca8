//! `Simulator`: an in-memory billing provider for examples and tests — **not Stripe**.
//!
//! It keeps customers and subscriptions, moves them through Stripe's statuses as time
//! passes on a [`ManualClock`], and records the events Stripe would send for each step
//! (with Stripe's event shape, ready to sign and deliver to the webhook endpoint):
//!
//! | step | status | events |
//! |---|---|---|
//! | subscribe with a trial | `trialing` | `customer.subscription.created` |
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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};
use saas_core::TenantId;
use saas_core::clock::{Clock, ManualClock};

use crate::catalog::Interval;
use crate::provider::{BillingProvider, Customer, ProviderError, Subscription};
use crate::status::SubscriptionStatus;

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

    /// Every event emitted so far, in order.
    pub fn events(&self) -> Vec<SimulatedEvent> {
        self.with(|s, _| s.events.clone())
    }

    /// A customer for `tenant` (its id in the metadata), without a payment method.
    pub fn create_customer(&self, tenant: TenantId) -> String {
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
            let id = s.id("sub");
            let trial_end = (trial_days > 0).then(|| now + Duration::days(i64::from(trial_days)));
            let mut sim = Sim {
                sub: Subscription {
                    id: id.clone(),
                    customer: customer.to_owned(),
                    status: SubscriptionStatus::Trialing,
                    price_lookup_key: Some(lookup_key.to_owned()),
                    quantity: 1,
                    current_period_end: Some(trial_end.unwrap_or_else(|| next_period(now, interval))),
                    trial_end,
                    cancel_at_period_end: false,
                },
                interval,
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
            let sim = s.live(subscription)?;
            sim.sub.price_lookup_key = Some(lookup_key.to_owned());
            sim.interval = interval;
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
                "current_period_end": sim.sub.current_period_end.map(|t| t.timestamp()),
                "trial_end": sim.sub.trial_end.map(|t| t.timestamp()),
            })
        });
        if let Some(object) = object {
            self.emit(kind, at, object);
        }
    }

    fn emit_invoice(&mut self, sub: &str, paid: bool, at: DateTime<Utc>) {
        let id = self.id("in");
        let customer = self.subs.get(sub).map(|s| s.sub.customer.clone());
        let status = if paid { "paid" } else { "open" };
        let object = serde_json::json!({
            "id": id, "object": "invoice", "subscription": sub, "customer": customer, "status": status,
        });
        self.emit(if paid { "invoice.paid" } else { "invoice.payment_failed" }, at, object);
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
            Trialing | Active if sim.sub.cancel_at_period_end => {
                sim.sub.status = Canceled;
                self.emit_sub("customer.subscription.deleted", id, now);
            }
            Trialing if pm.is_none() => {
                sim.sub.status = Paused;
                self.emit_sub("customer.subscription.paused", id, now);
            }
            Trialing | Active => self.charge(id, now, "customer.subscription.updated"),
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
}
