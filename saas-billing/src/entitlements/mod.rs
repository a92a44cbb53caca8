//! Entitlements: what a tenant may use, answered from memory.
//!
//! A tenant's entitlements follow from its plan (the code [`Catalog`](crate::Catalog)), its
//! subscription's status through the [`AccessPolicy`](crate::AccessPolicy) (grace period, lapsed fallback,
//! read-only), and the overrides and time-limited grants staff made to it — the most
//! generous value wins. [`Entitlements`] keeps them per tenant in memory, with the usage
//! of each limited or metered feature, and answers [`Entitlements::check`] with a
//! [`Decision`]: no database round trip, no allocation, no lock (each thread reads its
//! own copy of the current set, refreshed when its version moves).
//!
//! | feature | granted when | `limit` / `used` / `remaining` |
//! |---|---|---|
//! | boolean (`sso`) | the value is on | — |
//! | limit (`projects` ≤ 50) | `used + amount ≤ limit` | the limit, the usage recorded, what is left |
//! | metered (`api_calls` 100,000 a month) | `used + amount ≤ allowance` in the current period | the allowance, this period's usage, what is left |
//! | tier (`support_tier`) | always (read the value with [`Entitlements::tier`]) | — |
//!
//! A read-only tenant (a lapsed subscription under [`Lapsed::ReadOnly`](crate::Lapsed))
//! keeps its plan's switches but is refused every check that would consume an amount.
//!
//! The set is loaded from the database ([`Entitlements::load`]) and kept current by
//! [`Entitlements::listen`]: the mirror's and the grants' triggers and every counted
//! usage notify every process, which reloads that tenant (or sets that counter); a timer
//! reloads tenants whose grant or grace period ended or whose usage period turned.

mod layer;
mod load;
mod seats;
mod set;
mod source;

pub use layer::{
    EntitlementsLayer, EntitlementsService, RequireEntitlement, RequireEntitlementService, TenantSnapshot,
};
pub use load::{
    CHANNEL, EntitlementsError, Grant, GrantKind, GrantValue, SEATS_COUNT, SubscriptionState, TenantState, record_usage,
};
pub use seats::Seats;
pub use set::{Decision, Entitlements, FeatureKey, Reason};
pub use source::{CatalogSource, FeatureSource, ProviderSource, sync_provider_features};
