//! The in-memory set and the hot path.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use chrono::{DateTime, Datelike, Months, TimeZone, Utc};
use saas_core::TenantId;
use saas_core::clock::Clock;

use super::load::{GrantKind, GrantValue, TenantState};
use super::source::{CatalogSource, FeatureSource};
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

/// A feature resolved by [`Entitlements::feature`], valid for that set only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureKey(u32);

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
    ids: NameTable,
    names: Vec<Box<str>>,
    kinds: Vec<Kind>,
}

impl FeatureIndex {
    fn new(catalog: &Catalog) -> Self {
        let mut names: Vec<Box<str>> = Vec::new();
        let mut kinds = Vec::new();
        for plan in catalog.plans() {
            for (name, value) in plan.features() {
                let id = match names.iter().position(|n| **n == *name) {
                    Some(id) => id,
                    None => {
                        names.push(name.into());
                        kinds.push(match value {
                            Feature::On => Kind::Switch,
                            Feature::Limit(_) => Kind::Limit,
                            Feature::Metered { period, .. } => Kind::Metered(*period),
                            Feature::Tier(_) => Kind::Tier(Vec::new()),
                        });
                        names.len() - 1
                    }
                };
                // Tiers rank in the order the catalog's plans name them (cheaper plans first).
                if let (Feature::Tier(t), Some(Kind::Tier(ranks))) = (value, kinds.get_mut(id))
                    && !ranks.iter().any(|r| **r == **t)
                {
                    ranks.push(t.as_str().into());
                }
            }
        }
        FeatureIndex {
            ids: NameTable::new(&names),
            names,
            kinds,
        }
    }

    #[inline]
    fn id(&self, name: &str) -> Option<usize> {
        self.ids.get(name, &self.names)
    }
}

/// A name's length and its first and last eight bytes (zero-padded when shorter): the
/// whole name when it has at most 16 bytes. Two unaligned reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct NameWords {
    len: usize,
    head: u64,
    tail: u64,
}

impl NameWords {
    #[inline]
    fn of(name: &str) -> Self {
        let bytes = name.as_bytes();
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            w[..b.len()].copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        let len = bytes.len();
        let (head, tail) = if len >= 8 {
            (word(&bytes[..8]), word(&bytes[len - 8..]))
        } else {
            (word(bytes), 0)
        };
        NameWords { len, head, tail }
    }

    #[inline]
    fn hash(&self) -> usize {
        let h = (self.head ^ self.tail.rotate_left(29) ^ self.len as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // Truncation intended: the high bits are the well-mixed ones.
        (h >> 32) as usize
    }
}

/// Feature name → id, looked up on every check: the names are short and come from the
/// code, so a slot compares its name's words ([`NameWords`]) instead of hashing and
/// comparing bytes (names longer than 16 bytes are compared in full after that).
/// Open addressing, at most half full.
#[derive(Debug)]
struct NameTable {
    mask: usize,
    /// (words, id + 1); id 0 where empty.
    slots: Box<[(NameWords, u16)]>,
}

impl NameTable {
    fn new(names: &[Box<str>]) -> Self {
        let size = (names.len().max(4) * 2).next_power_of_two();
        let mut slots = vec![(NameWords::default(), 0u16); size].into_boxed_slice();
        for (id, name) in names.iter().enumerate().take(usize::from(u16::MAX) - 1) {
            let words = NameWords::of(name);
            let mut i = words.hash() & (size - 1);
            while slots[i].1 != 0 {
                i = (i + 1) & (size - 1);
            }
            slots[i] = (words, u16::try_from(id + 1).unwrap_or(u16::MAX));
        }
        NameTable { mask: size - 1, slots }
    }

    #[inline]
    fn get(&self, name: &str, names: &[Box<str>]) -> Option<usize> {
        let words = NameWords::of(name);
        let mut i = words.hash() & self.mask;
        loop {
            let (w, id) = self.slots[i];
            if id == 0 {
                return None;
            }
            let id = usize::from(id - 1);
            if w == words && (words.len <= 16 || names.get(id).is_some_and(|n| **n == *name)) {
                return Some(id);
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// One feature's value for one tenant, updated in place (a tenant's row never moves).
/// Aligned so that a slot never straddles two cache lines.
#[derive(Debug, Default)]
#[repr(align(32))]
struct Slot {
    /// The value (bits 0–55: a switch's 0 or 1, an amount, a tier's rank + 1), the reason
    /// (56–59), whether usage counts (60), whether the tenant is read-only (61).
    cell: AtomicU64,
    /// Usage (this period's, for a metered feature).
    used: AtomicU64,
    /// The period the usage counts for (metered features), seconds since the epoch.
    period_start: AtomicI64,
}

const VALUE_MASK: u64 = (1 << 56) - 1;
const COUNTED: u64 = 1 << 60;
const READ_ONLY: u64 = 1 << 61;

fn pack(value: u64, reason: Reason, counted: bool, read_only: bool) -> u64 {
    let r = match reason {
        Reason::Plan => 0u64,
        Reason::Override => 1,
        Reason::Grant => 2,
        Reason::GracePeriod => 3,
        Reason::Lapsed => 4,
        Reason::UnknownFeature => 5,
    };
    value.min(VALUE_MASK) | (r << 56) | if counted { COUNTED } else { 0 } | if read_only { READ_ONLY } else { 0 }
}

#[inline]
fn reason_of(cell: u64) -> Reason {
    match (cell >> 56) & 0xf {
        0 => Reason::Plan,
        1 => Reason::Override,
        2 => Reason::Grant,
        3 => Reason::GracePeriod,
        4 => Reason::Lapsed,
        _ => Reason::UnknownFeature,
    }
}

/// Rows per chunk of the row arena.
const CHUNK_ROWS: usize = 256;

/// Tenant → row: open addressing on the id's random low bits, linear probing, at most
/// half full. An entry is 8 bytes (32 more bits of the id as a tag, and the row), so the
/// table of 10,000 tenants stays in a core's cache; the row's owner confirms a tag match
/// (read beside the row's values, not before them). Row 0 is every unknown tenant's (the
/// free plan, never written after start).
#[derive(Debug, Clone)]
struct Table {
    mask: usize,
    /// `tag | row`, 0 where empty (no tenant has row 0).
    entries: Box<[u64]>,
    /// Each row's tenant (row 0: none).
    owners: Vec<u128>,
}

/// The entry bits that hold the tag (the row is in the low 32).
const TAG_MASK: u64 = !0xffff_ffff;

impl Table {
    /// A table for `owners` (row → tenant, row 0 first) with room for `capacity` rows.
    fn with_rows(owners: &[u128], capacity: usize) -> Self {
        let size = (capacity.max(8) * 2).next_power_of_two();
        let mut table = Table {
            mask: size - 1,
            entries: vec![0u64; size].into_boxed_slice(),
            owners: Vec::with_capacity(capacity + 1),
        };
        table.owners.push(0);
        for &key in owners.iter().skip(1) {
            table.add(key);
        }
        table
    }

    #[inline]
    fn start(&self, key: u128) -> usize {
        // Truncation intended: the low 64 bits of a UUIDv7 or v4 are random.
        (key as u64 as usize) & self.mask
    }

    #[inline]
    fn get(&self, key: u128) -> u32 {
        let tag = (key as u64) & TAG_MASK;
        let mut i = self.start(key);
        loop {
            let entry = self.entries[i];
            if entry == 0 {
                return 0;
            }
            // Truncation intended: the row is the low 32 bits.
            let row = entry as u32;
            if entry & TAG_MASK == tag && self.owners.get(row as usize) == Some(&key) {
                return row;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Gives `key` (not in the table) the next row, and returns it.
    fn add(&mut self, key: u128) -> u32 {
        let row = u32::try_from(self.owners.len()).unwrap_or(u32::MAX);
        self.owners.push(key);
        let mut i = self.start(key);
        while self.entries[i] != 0 {
            i = (i + 1) & self.mask;
        }
        self.entries[i] = ((key as u64) & TAG_MASK) | u64::from(row);
        row
    }

    /// Tenants with a row.
    fn len(&self) -> usize {
        self.owners.len() - 1
    }
}

/// What readers see: the table and the row arena's chunks (replaced only when tenants
/// are added; values change in place).
struct Snapshot {
    table: Table,
    chunks: Box<[Arc<[Slot]>]>,
    width: usize,
}

impl Snapshot {
    #[inline]
    fn slot(&self, row: u32, f: usize) -> Option<&Slot> {
        let row = row as usize;
        self.chunks
            .get(row / CHUNK_ROWS)?
            .get(f * CHUNK_ROWS + row % CHUNK_ROWS)
    }
}

/// A row's slow-path data.
#[derive(Debug, Clone)]
struct Meta {
    tenant: Option<TenantId>,
    plan: Arc<str>,
    payment_problem: bool,
    /// When the row must be computed again (a grant ends or starts, the grace period
    /// ends, a usage period turns).
    valid_until: Option<DateTime<Utc>>,
}

/// A row's values computed from its inputs.
struct Computed {
    cells: Vec<u64>,
    periods: Vec<i64>,
    used: Vec<u64>,
    meta: Meta,
}

/// Every tenant's entitlements, in memory. Share it (`Arc`) between the request path, the
/// listener and the usage recorder.
pub struct Entitlements {
    index: FeatureIndex,
    catalog: Arc<Catalog>,
    policy: AccessPolicy,
    snapshot: ArcSwap<Snapshot>,
    version: AtomicU64,
    id: u64,
    /// Per row: tenant, plan, payment problem, when to recompute.
    meta: Mutex<Vec<Meta>>,
    /// The inputs of each tenant's entitlements, to recompute them when time passes.
    pub(super) states: Mutex<HashMap<TenantId, TenantState>>,
    pub(super) lifeline: saas_core::notify::Lifeline,
    pub(super) clock: Arc<dyn Clock>,
    /// Serialises writers (readers never take it).
    write: Mutex<()>,
    /// Where switches come from.
    source: Arc<dyn FeatureSource>,
    /// Limited features counted from the source of truth: (feature, SQL).
    counters: Mutex<Vec<(String, &'static str)>>,
}

/// The registered count queries of `e`.
pub(super) fn lock_counters(e: &Entitlements) -> std::sync::MutexGuard<'_, Vec<(String, &'static str)>> {
    lock(&e.counters)
}

impl std::fmt::Debug for Entitlements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entitlements")
            .field("features", &self.index.names)
            .field("tenants", &self.snapshot.load().table.len())
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// This thread's copy of the newest snapshot it saw: (entitlements id, version, snapshot).
    static CURRENT: CurrentCell = const { RefCell::new(None) };
}

type CurrentCell = RefCell<Option<(u64, u64, Arc<Snapshot>)>>;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Entitlements {
    /// Entitlements for `catalog` under `policy`, with no tenant known yet: every tenant
    /// has the free plan until [`put`](Self::put) or [`load`](Self::load) says otherwise.
    pub fn new(catalog: Arc<Catalog>, policy: AccessPolicy, clock: Arc<dyn Clock>) -> Self {
        let index = FeatureIndex::new(&catalog);
        let width = index.names.len().max(1);
        let chunk: Arc<[Slot]> = (0..CHUNK_ROWS * width).map(|_| Slot::default()).collect();
        let e = Entitlements {
            index,
            catalog,
            policy,
            snapshot: ArcSwap::from_pointee(Snapshot {
                table: Table::with_rows(&[0], 8),
                chunks: Box::new([chunk]),
                width,
            }),
            version: AtomicU64::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            meta: Mutex::new(Vec::new()),
            states: Mutex::new(HashMap::new()),
            lifeline: saas_core::notify::Lifeline::new(),
            clock,
            write: Mutex::new(()),
            source: Arc::new(CatalogSource),
            counters: Mutex::new(Vec::new()),
        };
        // Row 0: the default.
        let computed = e.compute(&TenantState::default(), e.clock.now());
        e.write_row(&e.snapshot.load(), 0, &computed, true);
        lock(&e.meta).push(computed.meta);
        e
    }

    /// Takes switches from `source` (the provider's entitlements, say) instead of the
    /// catalog. Call before loading or putting tenants.
    pub fn with_source(mut self, source: Arc<dyn FeatureSource>) -> Self {
        self.source = source;
        let computed = self.compute(&TenantState::default(), self.clock.now());
        self.write_row(&self.snapshot.load(), 0, &computed, true);
        lock(&self.meta)[0] = computed.meta;
        self
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Whether `tenant` may use `amount` more of `feature` (0 or 1 for a switch), and why.
    #[inline]
    pub fn check(&self, tenant: TenantId, feature: &str, amount: u64) -> Decision {
        match self.index.id(feature) {
            Some(f) => self.with_slot(tenant, f, |slot| decide(slot, amount)),
            None => Decision::UNKNOWN,
        }
    }

    /// `feature` resolved once, for [`check_key`](Self::check_key) on a hot path (the
    /// name lookup is most of a check's cost); `None` if no plan has it.
    pub fn feature(&self, feature: &str) -> Option<FeatureKey> {
        self.index.id(feature).map(|f| FeatureKey(f as u32))
    }

    /// [`check`](Self::check) with a resolved feature.
    #[inline]
    pub fn check_key(&self, tenant: TenantId, feature: FeatureKey, amount: u64) -> Decision {
        self.with_slot(tenant, feature.0 as usize, |slot| decide(slot, amount))
    }

    /// The value of the tier feature `feature` for `tenant` (`None`: none, or not a tier).
    pub fn tier(&self, tenant: TenantId, feature: &str) -> Option<Arc<str>> {
        let f = self.index.id(feature)?;
        let Kind::Tier(ranks) = &self.index.kinds[f] else {
            return None;
        };
        let rank = self.with_slot(tenant, f, |s| {
            s.map_or(0, |s| s.cell.load(Ordering::Acquire) & VALUE_MASK)
        });
        usize::try_from(rank)
            .ok()?
            .checked_sub(1)
            .and_then(|r| ranks.get(r))
            .cloned()
    }

    /// Every feature `tenant` has now, with its value as text (`on`, the amount, the
    /// tier): for flag targeting and billing pages, not the hot path.
    pub fn granted(&self, tenant: TenantId) -> Vec<(&str, String)> {
        let mut out = Vec::new();
        for (f, name) in self.index.names.iter().enumerate() {
            let d = self.with_slot(tenant, f, |slot| decide(slot, 0));
            if !d.granted {
                continue;
            }
            let value = match &self.index.kinds[f] {
                Kind::Switch => "on".to_owned(),
                Kind::Limit | Kind::Metered(_) => d.limit.unwrap_or(0).to_string(),
                Kind::Tier(_) => self.tier(tenant, name).map(|t| t.to_string()).unwrap_or_default(),
            };
            out.push((&**name, value));
        }
        out
    }

    /// The plan whose features `tenant` has now, and whether it has a payment problem.
    pub fn plan(&self, tenant: TenantId) -> (Arc<str>, bool) {
        let row = self.snapshot.load().table.get(key(tenant)) as usize;
        let meta = lock(&self.meta);
        meta.get(row).or_else(|| meta.first()).map_or_else(
            || (Arc::from(self.policy.free_plan()), false),
            |m| (Arc::clone(&m.plan), m.payment_problem),
        )
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

    /// The start of `tenant`'s current usage period for the metered `feature` (giving the
    /// tenant its own row if it had none).
    pub(super) fn usage_period(&self, tenant: TenantId, feature: &str) -> Option<DateTime<Utc>> {
        let f = self.index.id(feature)?;
        let row = self.own_row(tenant);
        let snapshot = self.snapshot.load();
        let start = snapshot.slot(row, f)?.period_start.load(Ordering::Acquire);
        Utc.timestamp_opt(start, 0).single()
    }

    /// Sets the in-memory usage of `feature` for `tenant` in the period starting at
    /// `period_start` to at least `used` (a counted usage, from this or another process).
    pub(super) fn observe_usage(&self, tenant: TenantId, feature: &str, period_start: DateTime<Utc>, used: u64) {
        lock(&self.states)
            .entry(tenant)
            .or_default()
            .note_usage(feature, period_start, used);
        if let Some(f) = self.index.id(feature) {
            let row = self.own_row(tenant);
            if let Some(slot) = self.snapshot.load().slot(row, f)
                && slot.period_start.load(Ordering::Acquire) == period_start.timestamp()
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
        let row = self.own_row(tenant);
        if let Some(slot) = self.snapshot.load().slot(row, f) {
            slot.used.store(count, Ordering::Release);
        }
    }

    /// `tenant`'s own row, created (from its known inputs, or none) if it has none: usage
    /// is written only to a tenant's own row, never to the default one.
    fn own_row(&self, tenant: TenantId) -> u32 {
        let row = self.snapshot.load().table.get(key(tenant));
        if row != 0 {
            return row;
        }
        let _writer = lock(&self.write);
        let state = lock(&self.states).entry(tenant).or_default().clone();
        self.put_locked(tenant, &state)
    }

    /// Replaces `tenant`'s inputs and recomputes its entitlements.
    pub fn put(&self, tenant: TenantId, state: TenantState) {
        let _writer = lock(&self.write);
        self.put_locked(tenant, &state);
        lock(&self.states).insert(tenant, state);
    }

    /// [`put`](Self::put) with the writer lock held; returns the tenant's row.
    fn put_locked(&self, tenant: TenantId, state: &TenantState) -> u32 {
        let mut computed = self.compute(state, self.clock.now());
        computed.meta.tenant = Some(tenant);
        let rows = self.ensure_rows(&[tenant]);
        let row = rows[0];
        self.write_row(&self.snapshot.load(), row, &computed, false);
        lock(&self.meta)[row as usize] = computed.meta;
        row
    }

    /// The rows of `tenants`, allocating rows (and chunks, and a larger table) for those
    /// without one, published in one new snapshot. Writer lock held.
    fn ensure_rows(&self, tenants: &[TenantId]) -> Vec<u32> {
        let current = self.snapshot.load_full();
        let missing: Vec<TenantId> = tenants
            .iter()
            .copied()
            .filter(|t| current.table.get(key(*t)) == 0)
            .collect();
        if missing.is_empty() {
            return tenants.iter().map(|t| current.table.get(key(*t))).collect();
        }
        let mut meta = lock(&self.meta);
        let mut table = if (current.table.len() + missing.len() + 1) * 2 > current.table.entries.len() {
            Table::with_rows(&current.table.owners, (current.table.len() + missing.len()) * 2)
        } else {
            current.table.clone()
        };
        let mut chunks = current.chunks.to_vec();
        let default_plan = meta.first().map_or_else(|| Arc::from(""), |m| Arc::clone(&m.plan));
        for t in missing {
            let row = table.add(key(t)) as usize;
            debug_assert_eq!(row, meta.len(), "a row per tenant, in order");
            meta.push(Meta {
                tenant: Some(t),
                plan: Arc::clone(&default_plan),
                payment_problem: false,
                valid_until: None,
            });
            while row / CHUNK_ROWS >= chunks.len() {
                chunks.push((0..CHUNK_ROWS * current.width).map(|_| Slot::default()).collect());
            }
        }
        let next = Arc::new(Snapshot {
            table,
            chunks: chunks.into_boxed_slice(),
            width: current.width,
        });
        let rows = tenants.iter().map(|t| next.table.get(key(*t))).collect();
        self.snapshot.store(next);
        self.version.fetch_add(1, Ordering::Release);
        rows
    }

    /// Writes `computed` into `row`: values in place; metered usage reset when the period
    /// turned, else raised to what the inputs say; limit counts left to `set_count` (a
    /// new row starts at 0).
    fn write_row(&self, snapshot: &Snapshot, row: u32, computed: &Computed, fresh: bool) {
        for (f, cell) in computed.cells.iter().enumerate() {
            let Some(slot) = snapshot.slot(row, f) else { continue };
            let period = computed.periods[f];
            if matches!(self.index.kinds[f], Kind::Metered(_)) {
                if fresh || slot.period_start.load(Ordering::Acquire) != period {
                    slot.used.store(computed.used[f], Ordering::Release);
                    slot.period_start.store(period, Ordering::Release);
                } else {
                    slot.used.fetch_max(computed.used[f], Ordering::AcqRel);
                }
            }
            slot.cell.store(*cell, Ordering::Release);
        }
    }

    /// Replaces every tenant's inputs at once (a full load).
    pub(super) fn replace_all(&self, mut states: HashMap<TenantId, TenantState>) {
        let _writer = lock(&self.write);
        // Tenants known before (for their limit counts, say) stay known.
        for m in lock(&self.meta).iter() {
            if let Some(t) = m.tenant {
                states.entry(t).or_default();
            }
        }
        let tenants: Vec<TenantId> = states.keys().copied().collect();
        let rows = self.ensure_rows(&tenants);
        let snapshot = self.snapshot.load_full();
        let now = self.clock.now();
        for (t, row) in tenants.iter().zip(rows) {
            let mut computed = self.compute(&states[t], now);
            computed.meta.tenant = Some(*t);
            self.write_row(&snapshot, row, &computed, false);
            lock(&self.meta)[row as usize] = computed.meta;
        }
        *lock(&self.states) = states;
    }

    /// Recomputes every tenant whose entitlements were valid only until now (a grant or
    /// grace period ended, a usage period turned). Returns how many.
    pub fn refresh_due(&self) -> usize {
        let now = self.clock.now();
        let due: Vec<TenantId> = lock(&self.meta)
            .iter()
            .filter(|m| m.valid_until.is_some_and(|u| u <= now))
            .filter_map(|m| m.tenant)
            .collect();
        for tenant in &due {
            let state = lock(&self.states).get(tenant).cloned().unwrap_or_default();
            self.put(*tenant, state);
        }
        due.len()
    }

    #[inline(always)]
    fn with_slot<R>(&self, tenant: TenantId, f: usize, then: impl FnOnce(Option<&Slot>) -> R) -> R {
        let version = self.version.load(Ordering::Acquire);
        CURRENT.with(|cell| self.with_cell(cell, version, tenant, f, then))
    }

    /// Out of line so that `with_slot` stays small enough for `LocalKey::with` to inline.
    #[inline(never)]
    fn with_cell<R>(
        &self,
        cell: &CurrentCell,
        version: u64,
        tenant: TenantId,
        f: usize,
        then: impl FnOnce(Option<&Slot>) -> R,
    ) -> R {
        {
            let copy = cell.borrow();
            if let Some((id, v, snapshot)) = &*copy
                && *id == self.id
                && *v == version
            {
                return then(snapshot.slot(snapshot.table.get(key(tenant)), f));
            }
        }
        self.refresh_copy(cell, version, tenant, f, then)
    }

    #[cold]
    #[inline(never)]
    fn refresh_copy<R>(
        &self,
        cell: &CurrentCell,
        version: u64,
        tenant: TenantId,
        f: usize,
        then: impl FnOnce(Option<&Slot>) -> R,
    ) -> R {
        let snapshot = self.snapshot.load_full();
        let out = then(snapshot.slot(snapshot.table.get(key(tenant)), f));
        *cell.borrow_mut() = Some((self.id, version, snapshot));
        out
    }

    /// A tenant's values from its inputs at `now`.
    fn compute(&self, state: &TenantState, now: DateTime<Utc>) -> Computed {
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
        let read_only = access.mode == Mode::ReadOnly;
        let plan = self.catalog.plan_named(&access.plan);
        let anchor = sub.and_then(|s| s.period_start);
        let n = self.index.names.len();
        let (mut cells, mut periods, mut used) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for (f, name) in self.index.names.iter().enumerate() {
            let kind = &self.index.kinds[f];
            let mut value = match kind {
                Kind::Switch => u64::from(self.source.switch_on(plan, name, &state.provider_features)),
                _ => plan.and_then(|p| p.feature_value(name)).map_or(0, |v| encode(kind, v)),
            };
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
            let (period_start, counted_use) = match kind {
                Kind::Metered(period) => {
                    let (start, end) = period_bounds(anchor, *period, now);
                    earliest(end);
                    (start.timestamp(), state.used(name, Some(start), true))
                }
                _ => (0, 0),
            };
            let counted = matches!(kind, Kind::Limit | Kind::Metered(_));
            cells.push(pack(value, reason, counted, read_only));
            periods.push(period_start);
            used.push(counted_use);
        }
        Computed {
            cells,
            periods,
            used,
            meta: Meta {
                tenant: None,
                plan: access.plan.as_str().into(),
                payment_problem: access.payment_problem,
                valid_until,
            },
        }
    }
}

#[inline]
fn key(tenant: TenantId) -> u128 {
    tenant.as_uuid().as_u128()
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
fn decide(slot: Option<&Slot>, amount: u64) -> Decision {
    let Some(slot) = slot else {
        return Decision::UNKNOWN;
    };
    let cell = slot.cell.load(Ordering::Acquire);
    let value = cell & VALUE_MASK;
    if cell & COUNTED == 0 {
        // Switches and tiers: on or off (a read-only tenant keeps its switches).
        return Decision {
            granted: value > 0,
            limit: None,
            used: 0,
            remaining: None,
            reason: reason_of(cell),
        };
    }
    let used = slot.used.load(Ordering::Relaxed);
    let fits = used.checked_add(amount).is_some_and(|total| total <= value);
    let read_only_refusal = cell & READ_ONLY != 0 && amount > 0;
    Decision {
        granted: fits && !read_only_refusal,
        limit: Some(value),
        used,
        remaining: Some(value.saturating_sub(used)),
        reason: if read_only_refusal {
            Reason::Lapsed
        } else {
            reason_of(cell)
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tenants_sharing_low_bits_and_tag_get_their_own_rows() {
        // Same low 64 bits (same start, same tag), different high bits: only the owner check
        // tells them apart.
        let low = 0x1234_5678_9abc_def0u128;
        let keys: Vec<u128> = (1..=40u128).map(|hi| (hi << 64) | low).collect();
        let mut table = Table::with_rows(&[0], 8);
        let mut rows = Vec::new();
        for (n, &k) in keys.iter().enumerate() {
            if (table.len() + 2) * 2 > table.entries.len() {
                table = Table::with_rows(&table.owners, (table.len() + 1) * 2);
            }
            rows.push(table.add(k));
            assert_eq!(table.len(), n + 1);
        }
        for (k, row) in keys.iter().zip(&rows) {
            assert_eq!(table.get(*k), *row);
        }
        assert_eq!(
            table.get((99u128 << 64) | low),
            0,
            "an unknown tenant gets the default row"
        );
        assert_eq!(table.get(low + 1), 0);
        let distinct: std::collections::HashSet<_> = rows.iter().collect();
        assert_eq!(distinct.len(), keys.len());
        assert!(!rows.contains(&0));
    }

    #[test]
    fn names_are_found_exactly_at_every_length() {
        let names: Vec<Box<str>> = [
            "",
            "a",
            "sso",
            "seats",
            "feature_0",
            "feature_01",
            "exactly_16_bytes",
            "exactly_16_bytez",
            "a_name_longer_than_sixteen_bytes",
            "a_name_longer_than_sixteen_bytez",
            "a_name_lXnger_than_sixteen_bytes",
        ]
        .into_iter()
        .map(Box::from)
        .collect();
        let table = NameTable::new(&names);
        for (id, name) in names.iter().enumerate() {
            assert_eq!(table.get(name, &names), Some(id), "{name}");
        }
        for missing in [
            "b",
            "seat",
            "seats\0",
            "feature_02",
            "exactly_16_byteq",
            "a_name_longer_than_sixteen_bytey",
            // Same length, head and tail as a long name; differs in the middle.
            "a_name_lYnger_than_sixteen_bytes",
        ] {
            assert_eq!(table.get(missing, &names), None, "{missing}");
        }
    }
}
