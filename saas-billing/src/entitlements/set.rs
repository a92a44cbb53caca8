//! The in-memory set and the hot path.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use chrono::{DateTime, Datelike, Months, TimeZone, Utc};
use saas_core::TenantId;
use saas_core::clock::Clock;

use super::load::{GrantKind, GrantValue, TenantState};
use crate::access::{AccessPolicy, AccessReason, Mode};
use crate::catalog::{Catalog, Feature, Period};

/// Why a [`Decision`] is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The tenant's plan sets the value.
    Plan,
    /// A staff override sets it.
    Override,
    /// A time-limited grant sets it.
    Grant,
    /// A payment failed: the plan holds until the grace period ends.
    GracePeriod,
    /// The subscription lapsed (or is incomplete or paused): the fallback applies, or the
    /// tenant is read-only.
    Lapsed,
    /// No plan has a feature of that name.
    UnknownFeature,
}

/// The answer of [`Entitlements::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the tenant may (use `amount` more of) the feature.
    pub granted: bool,
    /// The limit or allowance (`None` for switches and tiers).
    pub limit: Option<u64>,
    /// The usage recorded (this period's, for a metered feature).
    pub used: u64,
    /// `limit - used`, never negative (`None` where there is no limit).
    pub remaining: Option<u64>,
    /// Where the value comes from, or why it does not apply.
    pub reason: Reason,
}

impl Decision {
    const UNKNOWN: Decision = Decision {
        granted: false,
        limit: None,
        used: 0,
        remaining: None,
        reason: Reason::UnknownFeature,
    };
}

/// What kind of value a feature has (from the catalog's first plan that names it).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Switch,
    Limit,
    Metered(Period),
    Tier(Vec<Arc<str>>),
}

/// The catalog's features, numbered.
#[derive(Debug)]
struct FeatureIndex {
    ids: HashMap<Box<str>, u16, BuildHasherDefault<Fnv>>,
    names: Vec<Box<str>>,
    kinds: Vec<Kind>,
}

impl FeatureIndex {
    fn new(catalog: &Catalog) -> Self {
        let mut index = FeatureIndex {
            ids: HashMap::default(),
            names: Vec::new(),
            kinds: Vec::new(),
        };
        for plan in catalog.plans() {
            for (name, value) in plan.features() {
                let id = match index.ids.get(name) {
                    Some(&id) => usize::from(id),
                    None => {
                        let id = index.names.len();
                        index.ids.insert(name.into(), u16::try_from(id).unwrap_or(u16::MAX));
                        index.names.push(name.into());
                        index.kinds.push(match value {
                            Feature::On => Kind::Switch,
                            Feature::Limit(_) => Kind::Limit,
                            Feature::Metered { period, .. } => Kind::Metered(*period),
                            Feature::Tier(_) => Kind::Tier(Vec::new()),
                        });
                        id
                    }
                };
                // Tiers rank in the order the catalog's plans name them (cheaper plans first).
                if let (Feature::Tier(t), Some(Kind::Tier(ranks))) = (value, index.kinds.get_mut(id))
                    && !ranks.iter().any(|r| **r == **t)
                {
                    ranks.push(t.as_str().into());
                }
            }
        }
        index
    }

    #[inline]
    fn id(&self, name: &str) -> Option<usize> {
        self.ids.get(name).map(|&i| usize::from(i))
    }
}

/// FNV-1a: feature names are short and trusted (they come from the code).
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Tenant ids are random in their low bits (UUIDv7 and v4 alike): they are their own hash.
#[derive(Default)]
struct IdHash(u64);

impl Hasher for IdHash {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // A `Uuid` hashes as its 16 bytes (after a length prefix for slices): keep the last 8.
        if let Some(tail) = bytes.len().checked_sub(8).and_then(|s| bytes.get(s..)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(tail);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.0 ^= n as u64;
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// One feature's value for one tenant.
#[derive(Debug)]
struct Slot {
    /// A switch: 0 or 1; a limit or allowance: the amount; a tier: its rank + 1 (0: none).
    value: u64,
    reason: Reason,
    /// Usage (this period's, for a metered feature); shared by every copy of the set.
    used: Arc<AtomicU64>,
    /// The period this usage counts for (metered features), seconds since the epoch.
    period_start: i64,
    /// A limit or an allowance (usage counts), not a switch or a tier.
    counted: bool,
}

/// One tenant's entitlements at the time they were computed.
#[derive(Debug)]
pub(super) struct TenantEntitlements {
    slots: Box<[Slot]>,
    read_only: bool,
    plan: Arc<str>,
    payment_problem: bool,
    /// When this must be computed again (a grant ends or starts, the grace period ends, a
    /// usage period turns).
    pub(super) valid_until: Option<DateTime<Utc>>,
}

struct Set {
    tenants: HashMap<TenantId, Arc<TenantEntitlements>, BuildHasherDefault<IdHash>>,
    /// A tenant with no subscription, grant or usage: the free plan.
    default: Arc<TenantEntitlements>,
}

/// Every tenant's entitlements, in memory. Share it (`Arc`) between the request path, the
/// listener and the usage recorder.
pub struct Entitlements {
    index: FeatureIndex,
    catalog: Arc<Catalog>,
    policy: AccessPolicy,
    set: ArcSwap<Set>,
    version: AtomicU64,
    id: u64,
    /// The inputs of each tenant's entitlements, to recompute them when time passes.
    pub(super) states: Mutex<HashMap<TenantId, TenantState>>,
    pub(super) lifeline: saas_core::notify::Lifeline,
    pub(super) clock: Arc<dyn Clock>,
    /// Serialises the writers' load-modify-store of the set (readers never take it).
    write: Mutex<()>,
}

impl std::fmt::Debug for Entitlements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entitlements")
            .field("features", &self.index.names)
            .field("tenants", &self.set.load().tenants.len())
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// This thread's copy of the newest set it saw: (entitlements id, version, set).
    static CURRENT: CurrentCell = const { RefCell::new(None) };
}

type CurrentCell = RefCell<Option<(u64, u64, Arc<Set>)>>;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Entitlements {
    /// Entitlements for `catalog` under `policy`, with no tenant known yet: every tenant
    /// has the free plan until [`put`](Self::put) or [`load`](Self::load) says otherwise.
    pub fn new(catalog: Arc<Catalog>, policy: AccessPolicy, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now();
        let index = FeatureIndex::new(&catalog);
        let mut e = Entitlements {
            index,
            catalog,
            policy,
            set: ArcSwap::from_pointee(Set {
                tenants: HashMap::default(),
                default: Arc::new(TenantEntitlements {
                    slots: Box::new([]),
                    read_only: false,
                    plan: "".into(),
                    payment_problem: false,
                    valid_until: None,
                }),
            }),
            version: AtomicU64::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            states: Mutex::new(HashMap::new()),
            lifeline: saas_core::notify::Lifeline::new(),
            clock,
            write: Mutex::new(()),
        };
        let default = Arc::new(e.compute(&TenantState::default(), now, None));
        e.set = ArcSwap::from_pointee(Set {
            tenants: HashMap::default(),
            default,
        });
        e
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Whether `tenant` may use `amount` more of `feature` (0 or 1 for a switch), and why.
    #[inline]
    pub fn check(&self, tenant: TenantId, feature: &str, amount: u64) -> Decision {
        match self.index.id(feature) {
            Some(f) => self.with_tenant(tenant, |t| decide(t, f, amount)),
            None => Decision::UNKNOWN,
        }
    }

    /// `tenant`'s current entry (for a request's snapshot).
    pub(super) fn entry(&self, tenant: TenantId) -> Arc<TenantEntitlements> {
        let set = self.set.load();
        Arc::clone(set.tenants.get(&tenant).unwrap_or(&set.default))
    }

    /// [`check`](Self::check) on a snapshot's entry.
    pub(super) fn check_entry(&self, entry: &TenantEntitlements, feature: &str, amount: u64) -> Decision {
        match self.index.id(feature) {
            Some(f) => decide(entry, f, amount),
            None => Decision::UNKNOWN,
        }
    }

    /// [`plan`](Self::plan) on a snapshot's entry.
    pub(super) fn entry_plan(&self, entry: &TenantEntitlements) -> (Arc<str>, bool) {
        (Arc::clone(&entry.plan), entry.payment_problem)
    }

    /// The value of the tier feature `feature` for `tenant` (`None`: none, or not a tier).
    pub fn tier(&self, tenant: TenantId, feature: &str) -> Option<Arc<str>> {
        let f = self.index.id(feature)?;
        let Kind::Tier(ranks) = &self.index.kinds[f] else {
            return None;
        };
        let rank = self.with_tenant(tenant, |t| t.slots.get(f).map_or(0, |s| s.value));
        usize::try_from(rank)
            .ok()?
            .checked_sub(1)
            .and_then(|r| ranks.get(r))
            .cloned()
    }

    /// The plan whose features `tenant` has now, and whether it has a payment problem.
    pub fn plan(&self, tenant: TenantId) -> (Arc<str>, bool) {
        self.with_tenant(tenant, |t| (Arc::clone(&t.plan), t.payment_problem))
    }

    /// The cheapest plan (the catalog's order) that would grant `amount` more of
    /// `feature` to a tenant that has used `used`: what a 402 suggests.
    pub fn cheapest_plan_granting(&self, feature: &str, used: u64, amount: u64) -> Option<&str> {
        self.catalog.plans().iter().map(|p| p.key()).find(|key| {
            let Some(plan) = self.catalog.plan_named(key) else {
                return false;
            };
            match plan.feature_value(feature) {
                Some(Feature::On) | Some(Feature::Tier(_)) => true,
                Some(Feature::Limit(l)) | Some(Feature::Metered { amount: l, .. }) => used.saturating_add(amount) <= *l,
                None => false,
            }
        })
    }

    /// The start of `tenant`'s current usage period for `feature` (a metered feature), and
    /// a handle on the in-memory counter.
    pub(super) fn usage_slot(&self, tenant: TenantId, feature: &str) -> Option<(DateTime<Utc>, Arc<AtomicU64>)> {
        let f = self.index.id(feature)?;
        let entry = self.own_entry(tenant);
        let slot = entry.slots.get(f)?;
        Some((
            Utc.timestamp_opt(slot.period_start, 0).single()?,
            Arc::clone(&slot.used),
        ))
    }

    /// `tenant`'s own entry, created (from no inputs) if it has none: counters are written
    /// only through a tenant's own entry.
    fn own_entry(&self, tenant: TenantId) -> Arc<TenantEntitlements> {
        if let Some(t) = self.set.load().tenants.get(&tenant) {
            return Arc::clone(t);
        }
        let _writer = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        // Another writer may have added it meanwhile (with real inputs): keep that one.
        let current = self.set.load_full();
        if let Some(t) = current.tenants.get(&tenant) {
            return Arc::clone(t);
        }
        let state = self
            .states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant)
            .or_default()
            .clone();
        let entry = Arc::new(self.compute(&state, self.clock.now(), None));
        let mut tenants = current.tenants.clone();
        tenants.insert(tenant, Arc::clone(&entry));
        self.set.store(Arc::new(Set {
            tenants,
            default: Arc::clone(&current.default),
        }));
        self.version.fetch_add(1, Ordering::Release);
        entry
    }

    /// Sets the in-memory usage of `feature` for `tenant` in the period starting at
    /// `period_start` to at least `used` (a counted usage, from this or another process).
    pub(super) fn observe_usage(&self, tenant: TenantId, feature: &str, period_start: DateTime<Utc>, used: u64) {
        {
            let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
            states
                .entry(tenant)
                .or_default()
                .note_usage(feature, period_start, used);
        }
        if let Some(f) = self.index.id(feature) {
            let entry = self.own_entry(tenant);
            if let Some(slot) = entry.slots.get(f)
                && slot.period_start == period_start.timestamp()
            {
                slot.used.fetch_max(used, Ordering::AcqRel);
            }
        }
    }

    /// Whether `feature` is metered (its usage is recorded per period).
    pub(super) fn is_metered(&self, feature: &str) -> bool {
        self.index
            .id(feature)
            .is_some_and(|f| matches!(self.index.kinds[f], Kind::Metered(_)))
    }

    /// Tells the set how much of the limited `feature` (`projects`, `seats`) `tenant`
    /// uses now, counted from the application's own tables (the source of truth): call it
    /// after a change, or from a periodic count. Limits are checked against it.
    pub fn set_count(&self, tenant: TenantId, feature: &str, count: u64) {
        let Some(f) = self.index.id(feature) else { return };
        if self.index.kinds[f] != Kind::Limit {
            return;
        }
        if let Some(slot) = self.own_entry(tenant).slots.get(f) {
            slot.used.store(count, Ordering::Release);
        }
    }

    /// Replaces `tenant`'s inputs and recomputes its entitlements.
    pub fn put(&self, tenant: TenantId, state: TenantState) {
        let _writer = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.clock.now();
        // Only the tenant's own counters carry over: never the default entry's, which every
        // unknown tenant reads.
        let previous = self.set.load().tenants.get(&tenant).map(|t| counters(t));
        let computed = Arc::new(self.compute(&state, now, previous.as_deref()));
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant, state);
        let current = self.set.load_full();
        let mut tenants = current.tenants.clone();
        tenants.insert(tenant, computed);
        self.set.store(Arc::new(Set {
            tenants,
            default: Arc::clone(&current.default),
        }));
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Replaces every tenant at once (a full load).
    pub(super) fn replace_all(&self, mut states: HashMap<TenantId, TenantState>) {
        let _writer = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.clock.now();
        let previous = self.set.load_full();
        // Tenants known only for their limit counts stay known.
        for id in previous.tenants.keys() {
            states.entry(*id).or_default();
        }
        let tenants = states
            .iter()
            .map(|(t, s)| {
                let kept = previous.tenants.get(t).map(|p| counters(p));
                (*t, Arc::new(self.compute(s, now, kept.as_deref())))
            })
            .collect();
        let default = Arc::new(self.compute(&TenantState::default(), now, None));
        *self.states.lock().unwrap_or_else(PoisonError::into_inner) = states;
        self.set.store(Arc::new(Set { tenants, default }));
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Recomputes every tenant whose entitlements were valid only until now (a grant or
    /// grace period ended, a usage period turned). Returns how many.
    pub fn refresh_due(&self) -> usize {
        let now = self.clock.now();
        let due: Vec<TenantId> = self
            .set
            .load()
            .tenants
            .iter()
            .filter(|(_, t)| t.valid_until.is_some_and(|u| u <= now))
            .map(|(id, _)| *id)
            .collect();
        for tenant in &due {
            let state = self
                .states
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(tenant)
                .cloned();
            if let Some(state) = state {
                self.put(*tenant, state);
            }
        }
        due.len()
    }

    #[inline(always)]
    fn with_tenant<R>(&self, tenant: TenantId, f: impl FnOnce(&TenantEntitlements) -> R) -> R {
        let version = self.version.load(Ordering::Acquire);
        CURRENT.with(|cell| self.with_cell(cell, version, tenant, f))
    }

    /// Out of line so that `with_tenant` stays small enough for `LocalKey::with` to inline.
    #[inline(never)]
    fn with_cell<R>(
        &self,
        cell: &CurrentCell,
        version: u64,
        tenant: TenantId,
        f: impl FnOnce(&TenantEntitlements) -> R,
    ) -> R {
        {
            let slot = cell.borrow();
            if let Some((id, v, set)) = &*slot
                && *id == self.id
                && *v == version
            {
                return f(set.tenants.get(&tenant).unwrap_or(&set.default));
            }
        }
        let set = self.set.load_full();
        let out = f(set.tenants.get(&tenant).unwrap_or(&set.default));
        *cell.borrow_mut() = Some((self.id, version, set));
        out
    }

    /// A tenant's entitlements from its inputs at `now`; `counters` carries the usage
    /// counters of the previous computation over (same period: same counter).
    fn compute(
        &self,
        state: &TenantState,
        now: DateTime<Utc>,
        counters: Option<&[(i64, Arc<AtomicU64>)]>,
    ) -> TenantEntitlements {
        let sub = state.subscription.as_ref();
        let plan_of = |key: Option<&str>| {
            key.and_then(|k| self.catalog.plan_of_price(k))
                .map_or(self.policy.free_plan(), |p| p.key())
        };
        let access = self.policy.decide(
            sub.map(|s| (s.status, s.since, plan_of(s.price_lookup_key.as_deref()))),
            now,
        );
        let base = match access.reason {
            AccessReason::NoSubscription | AccessReason::Trial | AccessReason::Subscribed => Reason::Plan,
            AccessReason::Grace { .. } => Reason::GracePeriod,
            AccessReason::Incomplete | AccessReason::Lapsed(_) | AccessReason::Paused => Reason::Lapsed,
        };
        let mut valid_until = match access.reason {
            AccessReason::Grace { until } => Some(until),
            _ => None,
        };
        let mut earliest = |t: DateTime<Utc>| {
            if t > now && valid_until.is_none_or(|u| t < u) {
                valid_until = Some(t);
            }
        };
        let plan = self.catalog.plan_named(&access.plan);
        let anchor = sub.and_then(|s| s.period_start);
        let mut slots = Vec::with_capacity(self.index.names.len());
        for (f, name) in self.index.names.iter().enumerate() {
            let kind = &self.index.kinds[f];
            let mut value = plan.and_then(|p| p.feature_value(name)).map_or(0, |v| encode(kind, v));
            let mut reason = base;
            for g in state.grants.iter().filter(|g| *g.feature == **name) {
                earliest(g.starts_at);
                if let Some(end) = g.ends_at {
                    earliest(end);
                }
                let active = g.starts_at <= now && g.ends_at.is_none_or(|e| now < e);
                let v = match (&g.value, kind) {
                    (GrantValue::Switch(on), Kind::Switch) => u64::from(*on),
                    (GrantValue::Amount(a), Kind::Limit | Kind::Metered(_)) => *a,
                    (GrantValue::Tier(t), Kind::Tier(ranks)) => {
                        ranks.iter().position(|r| **r == **t).map_or(0, |p| p as u64 + 1)
                    }
                    _ => continue,
                };
                if active && v > value {
                    value = v;
                    reason = match g.kind {
                        GrantKind::Override => Reason::Override,
                        GrantKind::Grant => Reason::Grant,
                    };
                }
            }
            let period_start = match kind {
                Kind::Metered(period) => {
                    let (start, end) = period_bounds(anchor, *period, now);
                    earliest(end);
                    start.timestamp()
                }
                _ => 0,
            };
            let used = state.used(
                name,
                Utc.timestamp_opt(period_start, 0).single(),
                matches!(kind, Kind::Metered(_)),
            );
            let counter = counters
                .and_then(|c| c.get(f))
                .filter(|(p, _)| *p == period_start)
                .map(|(_, c)| {
                    c.fetch_max(used, Ordering::AcqRel);
                    Arc::clone(c)
                })
                .unwrap_or_else(|| Arc::new(AtomicU64::new(used)));
            slots.push(Slot {
                value,
                reason,
                used: counter,
                period_start,
                counted: matches!(kind, Kind::Limit | Kind::Metered(_)),
            });
        }
        TenantEntitlements {
            slots: slots.into_boxed_slice(),
            read_only: access.mode == Mode::ReadOnly,
            plan: access.plan.as_str().into(),
            payment_problem: access.payment_problem,
            valid_until,
        }
    }
}

/// The usage counters of `t`, per feature: (period start, counter).
fn counters(t: &TenantEntitlements) -> Vec<(i64, Arc<AtomicU64>)> {
    t.slots.iter().map(|s| (s.period_start, Arc::clone(&s.used))).collect()
}

fn encode(kind: &Kind, v: &Feature) -> u64 {
    match (kind, v) {
        (Kind::Switch, Feature::On) => 1,
        (Kind::Limit, Feature::Limit(l)) => *l,
        (Kind::Metered(_), Feature::Metered { amount, .. }) => *amount,
        (Kind::Tier(ranks), Feature::Tier(t)) => ranks.iter().position(|r| **r == **t).map_or(0, |p| p as u64 + 1),
        // A plan giving a feature another kind than the first plan did: not granted.
        _ => 0,
    }
}

/// The usage period containing `now`: periods of `period` counted from `anchor` (the
/// subscription's billing anchor; the first of a month, UTC, without one).
pub(super) fn period_bounds(
    anchor: Option<DateTime<Utc>>,
    period: Period,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let step = match period {
        Period::Month => 1,
        Period::Year => 12,
    };
    let anchor = anchor.unwrap_or_else(|| {
        Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    });
    let at = |n: u32| anchor.checked_add_months(Months::new(n)).unwrap_or(anchor);
    // Whole months from the anchor to now, then step back while past `now`.
    let months = (now.year() - anchor.year()) * 12 + (now.month() as i32 - anchor.month() as i32);
    let mut n = u32::try_from(months.max(0)).unwrap_or(0) / step * step;
    while n > 0 && at(n) > now {
        n -= step;
    }
    while at(n + step) <= now {
        n += step;
    }
    (at(n), at(n + step))
}

#[inline]
fn decide(t: &TenantEntitlements, f: usize, amount: u64) -> Decision {
    let Some(slot) = t.slots.get(f) else {
        return Decision::UNKNOWN;
    };
    if !slot.counted {
        // Switches and tiers: on or off (a read-only tenant keeps its switches).
        return Decision {
            granted: slot.value > 0,
            limit: None,
            used: 0,
            remaining: None,
            reason: slot.reason,
        };
    }
    let used = slot.used.load(Ordering::Relaxed);
    let limit = slot.value;
    let fits = used.checked_add(amount).is_some_and(|total| total <= limit);
    let read_only_refusal = t.read_only && amount > 0;
    Decision {
        granted: fits && !read_only_refusal,
        limit: Some(limit),
        used,
        remaining: Some(limit.saturating_sub(used)),
        reason: if read_only_refusal { Reason::Lapsed } else { slot.reason },
    }
}
