//! The catalog: plans, their prices and the features they grant, written once, in code.
//!
//! Prices are named by a **lookup key** (`pro_monthly`): the provider's price carries the
//! same key, so code and provider meet without anyone copying `price_…` ids around.
//! Amounts are in the currency's minor unit (cents). Nothing else in saas-kit knows a
//! price; everything asks the catalog.
//!
//! ```
//! use saas_billing::catalog::{Catalog, Feature, Plan, Price};
//!
//! let catalog = Catalog::new("eur")
//!     .plan(Plan::new("free").feature("projects", Feature::Limit(3)))
//!     .plan(
//!         Plan::new("pro")
//!             .trial_days(14)
//!             .price(Price::monthly("pro_monthly", 2900))
//!             .price(Price::annual("pro_annual", 29000))
//!             .feature("projects", Feature::Limit(50))
//!             .feature("sso", Feature::On)
//!             .feature("api_calls", Feature::metered_monthly(100_000)),
//!     )
//!     .plan(Plan::new("business").price(Price::per_seat_monthly("business_seat", 1500)).feature("sso", Feature::On))
//!     .validate()
//!     .unwrap();
//! assert_eq!(catalog.plan_of_price("pro_annual").unwrap().key(), "pro");
//! assert_eq!(catalog.plan_named("free").unwrap().feature_value("sso"), None);
//! ```

use std::collections::{BTreeMap, HashSet};

mod push;

pub use push::{CatalogDrift, CatalogProvider, ProviderPrice, ProviderProduct, PushReport, check, push};

/// How often a price bills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interval {
    /// Every month.
    Month,
    /// Every year.
    Year,
}

impl Interval {
    /// Stripe's name (`month`, `year`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Interval::Month => "month",
            Interval::Year => "year",
        }
    }
}

/// What a price charges for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Charge {
    /// A flat amount per interval.
    Flat,
    /// An amount per seat (the subscription's quantity) per interval.
    PerSeat,
    /// An amount per unit of usage reported to `meter` during the interval.
    Metered {
        /// The meter's event name (`api_calls`).
        meter: String,
    },
}

/// One price of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Price {
    lookup_key: String,
    amount: i64,
    interval: Interval,
    charge: Charge,
}

impl Price {
    fn new(lookup_key: &str, amount: i64, interval: Interval, charge: Charge) -> Self {
        Self {
            lookup_key: lookup_key.to_owned(),
            amount,
            interval,
            charge,
        }
    }

    /// A flat monthly price of `amount` minor units.
    pub fn monthly(lookup_key: &str, amount: i64) -> Self {
        Self::new(lookup_key, amount, Interval::Month, Charge::Flat)
    }

    /// A flat annual price.
    pub fn annual(lookup_key: &str, amount: i64) -> Self {
        Self::new(lookup_key, amount, Interval::Year, Charge::Flat)
    }

    /// A monthly price per seat.
    pub fn per_seat_monthly(lookup_key: &str, amount: i64) -> Self {
        Self::new(lookup_key, amount, Interval::Month, Charge::PerSeat)
    }

    /// An annual price per seat.
    pub fn per_seat_annual(lookup_key: &str, amount: i64) -> Self {
        Self::new(lookup_key, amount, Interval::Year, Charge::PerSeat)
    }

    /// A monthly usage-based price: `unit_amount` per unit reported to `meter`.
    pub fn metered_monthly(lookup_key: &str, meter: &str, unit_amount: i64) -> Self {
        Self::new(
            lookup_key,
            unit_amount,
            Interval::Month,
            Charge::Metered {
                meter: meter.to_owned(),
            },
        )
    }

    /// The lookup key shared with the provider's price.
    pub fn lookup_key(&self) -> &str {
        &self.lookup_key
    }

    /// The amount in minor units (per seat or per unit where that applies).
    pub fn amount(&self) -> i64 {
        self.amount
    }

    /// The billing interval.
    pub fn interval(&self) -> Interval {
        self.interval
    }

    /// What the price charges for.
    pub fn charge(&self) -> &Charge {
        &self.charge
    }
}

/// How often a metered allowance resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// At each monthly billing anchor.
    Month,
    /// At each annual billing anchor.
    Year,
}

/// What a plan grants for one feature.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Feature {
    /// Switched on (`sso`).
    On,
    /// At most this many at a time (`seats`, `projects`).
    Limit(u64),
    /// At most `amount` per period (`api_calls`).
    Metered {
        /// The allowance per period.
        amount: u64,
        /// When it resets.
        period: Period,
    },
    /// One value of an enumeration (`support_tier`: `email`, `priority`).
    Tier(String),
}

impl Feature {
    /// A monthly allowance.
    pub fn metered_monthly(amount: u64) -> Self {
        Feature::Metered {
            amount,
            period: Period::Month,
        }
    }

    /// A tier value.
    pub fn tier(value: &str) -> Self {
        Feature::Tier(value.to_owned())
    }
}

/// A plan: its prices (none for a free plan), trial and features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    key: String,
    name: Option<String>,
    trial_days: u32,
    prices: Vec<Price>,
    features: BTreeMap<String, Feature>,
}

impl Plan {
    /// A plan called `key` (`pro`): the product's lookup key at the provider too.
    pub fn new(key: &str) -> Self {
        Self {
            key: key.to_owned(),
            name: None,
            trial_days: 0,
            prices: Vec::new(),
            features: BTreeMap::new(),
        }
    }

    /// The name customers see (default: the key).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// The trial a new subscription gets.
    pub fn trial_days(mut self, days: u32) -> Self {
        self.trial_days = days;
        self
    }

    /// Adds a price.
    pub fn price(mut self, price: Price) -> Self {
        self.prices.push(price);
        self
    }

    /// Grants `feature`.
    pub fn feature(mut self, name: &str, value: Feature) -> Self {
        self.features.insert(name.to_owned(), value);
        self
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The display name.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.key)
    }

    /// The trial length in days (0: none).
    pub fn trial(&self) -> u32 {
        self.trial_days
    }

    /// The prices.
    pub fn prices(&self) -> &[Price] {
        &self.prices
    }

    /// What the plan grants for `name`, if anything.
    pub fn feature_value(&self, name: &str) -> Option<&Feature> {
        self.features.get(name)
    }

    /// Every feature the plan grants, by name.
    pub fn features(&self) -> impl Iterator<Item = (&str, &Feature)> {
        self.features.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Whether the plan costs nothing (no prices).
    pub fn is_free(&self) -> bool {
        self.prices.is_empty()
    }
}

/// Why a catalog does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The currency is not a three-letter ISO code.
    #[error("the catalog's currency {0:?} is not a three-letter ISO 4217 code (eur, usd …)")]
    Currency(String),
    /// A plan key or price lookup key is empty, too long, or has characters other than
    /// `a-z 0-9 _ -`.
    #[error("{0:?} is not a valid key (1–64 of a-z 0-9 _ -)")]
    Key(String),
    /// Two plans share a key.
    #[error("two plans are called {0:?}")]
    DuplicatePlan(String),
    /// Two prices share a lookup key.
    #[error("two prices have the lookup key {0:?}")]
    DuplicatePrice(String),
    /// A price's amount is negative.
    #[error("the price {0:?} has a negative amount")]
    Amount(String),
    /// A free plan has a trial.
    #[error("the plan {0:?} has a trial but no price to try")]
    TrialWithoutPrice(String),
    /// No plan.
    #[error("the catalog has no plans")]
    Empty,
}

/// The validated catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    currency: String,
    plans: Vec<Plan>,
}

impl Catalog {
    /// An empty catalog billing in `currency` (lower-case ISO 4217: `eur`).
    pub fn new(currency: &str) -> Self {
        Self {
            currency: currency.to_ascii_lowercase(),
            plans: Vec::new(),
        }
    }

    /// Adds a plan.
    pub fn plan(mut self, plan: Plan) -> Self {
        self.plans.push(plan);
        self
    }

    /// Checks that the catalog holds together; build it once at start-up with this.
    pub fn validate(self) -> Result<Self, CatalogError> {
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(CatalogError::Currency(self.currency));
        }
        if self.plans.is_empty() {
            return Err(CatalogError::Empty);
        }
        let valid = |k: &str| {
            (1..=64).contains(&k.len())
                && k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        };
        let (mut plans, mut prices) = (HashSet::new(), HashSet::new());
        for plan in &self.plans {
            if !valid(&plan.key) {
                return Err(CatalogError::Key(plan.key.clone()));
            }
            if !plans.insert(plan.key.as_str()) {
                return Err(CatalogError::DuplicatePlan(plan.key.clone()));
            }
            if plan.is_free() && plan.trial_days > 0 {
                return Err(CatalogError::TrialWithoutPrice(plan.key.clone()));
            }
            for price in &plan.prices {
                if !valid(&price.lookup_key) {
                    return Err(CatalogError::Key(price.lookup_key.clone()));
                }
                if !prices.insert(price.lookup_key.as_str()) {
                    return Err(CatalogError::DuplicatePrice(price.lookup_key.clone()));
                }
                if price.amount < 0 {
                    return Err(CatalogError::Amount(price.lookup_key.clone()));
                }
                if let Charge::Metered { meter } = &price.charge
                    && !valid(meter)
                {
                    return Err(CatalogError::Key(meter.clone()));
                }
            }
        }
        Ok(self)
    }

    /// The currency (lower-case ISO 4217).
    pub fn currency(&self) -> &str {
        &self.currency
    }

    /// Every plan, in the order given.
    pub fn plans(&self) -> &[Plan] {
        &self.plans
    }

    /// The plan called `key`.
    pub fn plan_named(&self, key: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.key == key)
    }

    /// The plan a price belongs to, by the price's lookup key.
    pub fn plan_of_price(&self, lookup_key: &str) -> Option<&Plan> {
        self.plans
            .iter()
            .find(|p| p.prices.iter().any(|pr| pr.lookup_key == lookup_key))
    }

    /// The price with `lookup_key`.
    pub fn price(&self, lookup_key: &str) -> Option<&Price> {
        self.plans
            .iter()
            .flat_map(|p| p.prices.iter())
            .find(|pr| pr.lookup_key == lookup_key)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn catalog() -> Catalog {
        Catalog::new("EUR")
            .plan(Plan::new("free").feature("projects", Feature::Limit(3)))
            .plan(
                Plan::new("pro")
                    .trial_days(14)
                    .price(Price::monthly("pro_monthly", 2900))
                    .price(Price::annual("pro_annual", 29000))
                    .price(Price::metered_monthly("pro_api", "api_calls", 1))
                    .feature("support_tier", Feature::tier("priority")),
            )
    }

    #[test]
    fn a_sound_catalog_answers_lookups() {
        let c = catalog().validate().unwrap();
        assert_eq!(c.currency(), "eur");
        assert_eq!(c.plan_of_price("pro_api").unwrap().key(), "pro");
        assert_eq!(c.price("pro_annual").unwrap().interval(), Interval::Year);
        assert_eq!(
            c.plan_named("pro").unwrap().feature_value("support_tier"),
            Some(&Feature::tier("priority"))
        );
        assert!(c.plan_named("free").unwrap().is_free());
        assert!(c.plan_of_price("nope").is_none());
    }

    #[test]
    fn each_inconsistency_is_named() {
        let err = |c: Catalog| c.validate().unwrap_err();
        assert_eq!(
            err(Catalog::new("euro").plan(Plan::new("a"))),
            CatalogError::Currency("euro".into())
        );
        assert_eq!(err(Catalog::new("eur")), CatalogError::Empty);
        assert_eq!(
            err(catalog().plan(Plan::new("pro"))),
            CatalogError::DuplicatePlan("pro".into())
        );
        assert_eq!(
            err(catalog().plan(Plan::new("team").price(Price::monthly("pro_monthly", 1)))),
            CatalogError::DuplicatePrice("pro_monthly".into())
        );
        assert_eq!(err(catalog().plan(Plan::new("Team"))), CatalogError::Key("Team".into()));
        assert_eq!(
            err(catalog().plan(Plan::new("team").price(Price::monthly("team_m", -1)))),
            CatalogError::Amount("team_m".into())
        );
        assert_eq!(
            err(catalog().plan(Plan::new("trial").trial_days(7))),
            CatalogError::TrialWithoutPrice("trial".into())
        );
    }
}
