//! Compiling definitions into a [`FlagSet`]: names resolved to slots, value lists to
//! sets, regexes, CIDRs, dates and versions parsed, rollout group ids pre-hashed.
//!
//! Two modes. [`Mode::Strict`] (what the admin functions use) refuses anything Unleash
//! would silently turn off — an unknown operator, a bad regex, weights that do not add
//! up to 1000 — with a [`DefinitionError`]. [`Mode::Lenient`] (imports from an Unleash
//! server) behaves like Unleash's SDK engine: a flag that does not compile is always off,
//! and a [`Warning`] says why.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use regex::{Regex, RegexBuilder};
use saas_core::TenantId;

use crate::context::Field;
use crate::error::DefinitionError;
use crate::model::{Constraint, FlagDefinition, FlagKind, Payload, Segment, Strategy, Variant};
use crate::murmur::{Prefix, VARIANT_SEED};

/// How strictly definitions are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refuse what Unleash would silently switch off.
    Strict,
    /// Behave like Unleash's engine: such a flag is always off, with a warning.
    Lenient,
}

/// A flag that compiled to "always off" in lenient mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The flag.
    pub flag: String,
    /// Why.
    pub message: String,
}

/// Largest value list kept as a plain list; longer lists become hash sets.
const LINEAR_LIST_MAX: usize = 8;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Where a value comes from: a slot of the context or a custom property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldRef {
    Slot(Field),
    Prop(Box<str>),
}

impl FieldRef {
    pub(crate) fn parse(name: &str) -> FieldRef {
        match Field::from_name(name) {
            Some(f) => FieldRef::Slot(f),
            None => FieldRef::Prop(name.into()),
        }
    }
}

/// A string's length and its first and last 8 bytes: equal keys mean equal strings up to
/// 16 bytes, and a cheap filter beyond — no `memcmp` call for short values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    len: usize,
    head: u64,
    tail: u64,
}

impl Key {
    #[inline(always)]
    pub(crate) fn of(s: &str) -> Key {
        let b = s.as_bytes();
        let len = b.len();
        if len >= 8 {
            let mut h = [0u8; 8];
            let mut t = [0u8; 8];
            h.copy_from_slice(&b[..8]);
            t.copy_from_slice(&b[len - 8..]);
            Key {
                len,
                head: u64::from_le_bytes(h),
                tail: u64::from_le_bytes(t),
            }
        } else {
            let mut h = [0u8; 8];
            h[..len].copy_from_slice(b);
            Key {
                len,
                head: u64::from_le_bytes(h),
                tail: 0,
            }
        }
    }
}

/// Byte equality of two equally long slices, 8 bytes at a time, inline (short strings
/// do not pay for a `memcmp` call).
#[inline(always)]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        if x != y {
            return false;
        }
    }
    ca.remainder() == cb.remainder()
}

/// Flag name → position: open addressing over [`Key`]s, so a lookup hashes the name once
/// and usually compares two words.
#[derive(Debug)]
pub(crate) struct NameIndex {
    slots: Box<[(Key, u32)]>,
    names: Box<[Box<str>]>,
    mask: usize,
    hasher: foldhash::fast::FixedState,
}

impl NameIndex {
    fn new(names: Vec<Box<str>>) -> NameIndex {
        let cap = (names.len() * 2).next_power_of_two().max(8);
        let hasher = foldhash::fast::FixedState::with_seed(0x5eed_f1a6);
        let mut slots = vec![
            (
                Key {
                    len: usize::MAX,
                    head: 0,
                    tail: 0
                },
                u32::MAX
            );
            cap
        ]
        .into_boxed_slice();
        for (i, n) in names.iter().enumerate() {
            let mut at = hasher.hash_one(n.as_bytes()) as usize & (cap - 1);
            // A repeated name (lenient imports) resolves to its last definition.
            while slots[at].1 != u32::MAX && names[slots[at].1 as usize] != *n {
                at = (at + 1) & (cap - 1);
            }
            slots[at] = (Key::of(n), i as u32);
        }
        NameIndex {
            slots,
            names: names.into_boxed_slice(),
            mask: cap - 1,
            hasher,
        }
    }

    #[inline]
    pub(crate) fn get(&self, name: &str) -> Option<u32> {
        let k = Key::of(name);
        let mut at = self.hasher.hash_one(name.as_bytes()) as usize & self.mask;
        loop {
            let (key, i) = self.slots[at];
            if i == u32::MAX {
                return None;
            }
            if key == k && (k.len <= 16 || same_bytes(self.names[i as usize].as_bytes(), name.as_bytes())) {
                return Some(i);
            }
            at = (at + 1) & self.mask;
        }
    }
}

#[derive(Debug)]
pub(crate) enum StrList {
    Small(Box<[(Key, Box<str>)]>),
    Large(FastSet<Box<str>>),
}

impl StrList {
    pub(crate) fn new(values: impl IntoIterator<Item = String>) -> StrList {
        let mut v: Vec<Box<str>> = values.into_iter().map(String::into_boxed_str).collect();
        v.sort();
        v.dedup();
        if v.len() <= LINEAR_LIST_MAX {
            StrList::Small(v.into_iter().map(|s| (Key::of(&s), s)).collect())
        } else {
            StrList::Large(v.into_iter().collect())
        }
    }

    #[inline]
    pub(crate) fn contains(&self, s: &str) -> bool {
        match self {
            StrList::Small(v) => {
                let k = Key::of(s);
                v.iter()
                    .any(|(x, full)| *x == k && (k.len <= 16 || same_bytes(full.as_bytes(), s.as_bytes())))
            }
            StrList::Large(set) => set.contains(s),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl Cmp {
    #[inline]
    pub(crate) fn holds(self, ord: std::cmp::Ordering) -> bool {
        match self {
            Cmp::Eq => ord.is_eq(),
            Cmp::Lt => ord.is_lt(),
            Cmp::Lte => ord.is_le(),
            Cmp::Gt => ord.is_gt(),
            Cmp::Gte => ord.is_ge(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrOp {
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Debug)]
pub(crate) enum Op {
    In(StrList),
    NotIn(StrList),
    /// Values are lower-cased when `ci`.
    Str {
        op: StrOp,
        ci: bool,
        values: Box<[Box<str>]>,
    },
    Num {
        cmp: Cmp,
        value: f64,
    },
    Date {
        cmp: Cmp,
        value: DateTime<Utc>,
    },
    Semver {
        cmp: Cmp,
        value: semver::Version,
    },
    Regex(Regex),
    Cidr(Box<[IpNet]>),
    /// A constant result before inversion (an unusable regex in lenient mode).
    Const(bool),
    /// A constant result that inversion does not touch (Unleash: a `v`-prefixed version).
    Never,
}

#[derive(Debug)]
pub(crate) struct CConstraint {
    pub(crate) field: FieldRef,
    pub(crate) op: Op,
    pub(crate) inverted: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum Stickiness {
    /// User id, then session id, then random.
    Default,
    Random,
    Field(FieldRef),
}

#[derive(Debug)]
pub(crate) enum Rule {
    Always(bool),
    UserIds(StrList),
    /// `bucket(group:value) <= percent` on the stickiness value.
    Rollout {
        percent: u32,
        stickiness: Stickiness,
        prefix: Prefix,
    },
    /// A uniform draw in 1..100 below `percent` (`gradualRolloutRandom`).
    Random {
        percent: u32,
    },
    Cidr(Box<[IpNet]>),
    Hostname(bool),
}

#[derive(Debug)]
pub(crate) struct CVariant {
    pub(crate) name: Box<str>,
    pub(crate) weight: u32,
    pub(crate) payload: Option<Payload>,
    pub(crate) overrides: Box<[(FieldRef, StrList)]>,
}

#[derive(Debug)]
pub(crate) struct VariantSet {
    pub(crate) variants: Box<[CVariant]>,
    pub(crate) total: u32,
    pub(crate) has_overrides: bool,
    /// `None` = user id, then session id, then random.
    pub(crate) stickiness: Option<FieldRef>,
    pub(crate) prefix: Prefix,
}

#[derive(Debug)]
pub(crate) struct CStrategy {
    pub(crate) rule: Rule,
    pub(crate) constraints: Box<[CConstraint]>,
    pub(crate) variants: Option<VariantSet>,
}

#[derive(Debug)]
pub(crate) struct CDependency {
    /// Index of the parent in the set; `None` when it does not exist or has parents itself.
    pub(crate) parent: Option<u32>,
    pub(crate) enabled: bool,
    pub(crate) variants: Option<StrList>,
}

/// One compiled flag.
#[derive(Debug)]
pub(crate) struct CompiledFlag {
    pub(crate) name: Box<str>,
    pub(crate) kind: FlagKind,
    pub(crate) version: i64,
    pub(crate) enabled: bool,
    /// Compiled in lenient mode from something unusable: always off.
    pub(crate) broken: bool,
    pub(crate) strategies: Box<[CStrategy]>,
    pub(crate) variants: Option<VariantSet>,
    pub(crate) dependencies: Box<[CDependency]>,
    pub(crate) has_parents: bool,
    pub(crate) overrides: Box<[(TenantId, bool)]>,
    pub(crate) plans: Option<StrList>,
    /// Evaluations counted through [`FlagSet::count`] since the last usage flush; shared
    /// with the sets that replace this one.
    pub(crate) uses: Arc<AtomicU64>,
}

/// An immutable, compiled set of flags for one environment. Evaluations on it take no
/// lock and allocate nothing; a store swaps in a new set when definitions change.
#[derive(Debug)]
pub struct FlagSet {
    pub(crate) flags: Box<[CompiledFlag]>,
    pub(crate) index: NameIndex,
    pub(crate) environment: Box<str>,
    pub(crate) version: i64,
    pub(crate) warnings: Vec<Warning>,
}

/// A definition with the version the store gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    /// The definition.
    pub definition: FlagDefinition,
    /// Its version (1 for a new flag, +1 per change).
    pub version: i64,
}

/// Builds a [`FlagSet`].
#[derive(Debug)]
pub struct FlagSetBuilder {
    environment: String,
    mode: Mode,
    hostname: Option<String>,
    segments: Vec<Segment>,
    flags: Vec<Versioned>,
    version: i64,
}

impl FlagSetBuilder {
    /// Flags for `environment`, strict.
    pub fn new(environment: impl Into<String>) -> Self {
        FlagSetBuilder {
            environment: environment.into(),
            mode: Mode::Strict,
            hostname: None,
            segments: Vec::new(),
            flags: Vec::new(),
            version: 0,
        }
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The host name `applicationHostname` strategies compare with (none: they are off).
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into());
        self
    }

    /// The set's version (the store's change counter).
    pub fn version(mut self, version: i64) -> Self {
        self.version = version;
        self
    }

    /// Adds segments.
    pub fn segments(mut self, segments: impl IntoIterator<Item = Segment>) -> Self {
        self.segments.extend(segments);
        self
    }

    /// Adds a flag at version 1.
    pub fn flag(mut self, definition: FlagDefinition) -> Self {
        self.flags.push(Versioned { definition, version: 1 });
        self
    }

    /// Adds flags with their versions.
    pub fn flags(mut self, flags: impl IntoIterator<Item = Versioned>) -> Self {
        self.flags.extend(flags);
        self
    }

    /// Compiles. In strict mode the first problem is returned; in lenient mode problems
    /// become [`Warning`]s and their flags are always off.
    pub fn build(self) -> Result<FlagSet, DefinitionError> {
        let segments: FastMap<i32, &Segment> = self.segments.iter().map(|s| (s.id, s)).collect();
        let mut index: FastMap<Box<str>, u32> = FastMap::default();
        for (i, f) in self.flags.iter().enumerate() {
            if self.mode == Mode::Strict {
                validate_name(&f.definition.name)?;
            }
            if index.insert(f.definition.name.as_str().into(), i as u32).is_some() && self.mode == Mode::Strict {
                return Err(DefinitionError::Duplicate {
                    flag: f.definition.name.clone(),
                });
            }
        }
        let cx = Cx {
            env: &self.environment,
            mode: self.mode,
            hostname: self.hostname.as_deref(),
            segments: &segments,
            index: &index,
            defs: &self.flags,
        };
        let mut flags = Vec::with_capacity(self.flags.len());
        let mut warnings = Vec::new();
        for v in &self.flags {
            match cx.flag(v) {
                Ok(f) => flags.push(f),
                Err(e) if self.mode == Mode::Strict => return Err(e),
                Err(e) => {
                    warnings.push(Warning {
                        flag: v.definition.name.clone(),
                        message: e.to_string(),
                    });
                    flags.push(broken(v));
                }
            }
        }
        Ok(FlagSet {
            flags: flags.into_boxed_slice(),
            index: NameIndex::new(self.flags.iter().map(|v| v.definition.name.as_str().into()).collect()),
            environment: self.environment.into_boxed_str(),
            version: self.version,
            warnings,
        })
    }
}

/// Checks a flag name: 1–200 characters, no control characters.
pub fn validate_name(name: &str) -> Result<(), DefinitionError> {
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(DefinitionError::InvalidName {
            name: name.chars().take(200).collect(),
        });
    }
    Ok(())
}

fn broken(v: &Versioned) -> CompiledFlag {
    CompiledFlag {
        name: v.definition.name.as_str().into(),
        kind: v.definition.kind,
        version: v.version,
        enabled: false,
        broken: true,
        strategies: Box::new([]),
        variants: None,
        dependencies: Box::new([]),
        has_parents: false,
        overrides: Box::new([]),
        plans: None,
        uses: Arc::default(),
    }
}

struct Cx<'a> {
    env: &'a str,
    mode: Mode,
    hostname: Option<&'a str>,
    segments: &'a FastMap<i32, &'a Segment>,
    index: &'a FastMap<Box<str>, u32>,
    defs: &'a [Versioned],
}

impl Cx<'_> {
    fn strict(&self) -> bool {
        self.mode == Mode::Strict
    }

    fn flag(&self, v: &Versioned) -> Result<CompiledFlag, DefinitionError> {
        let def = &v.definition;
        let name = def.name.as_str();
        let env = def.environments.get(self.env);
        let mut strategies = Vec::new();
        for (i, s) in env
            .map(|e| e.strategies.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            strategies.push(self.strategy(name, i, s)?);
        }
        let variants = self.variants(name, None, &def.variants, None, name)?;
        let mut dependencies = Vec::new();
        for d in &def.dependencies {
            if self.strict() && d.feature == def.name {
                return Err(DefinitionError::Dependency {
                    flag: name.into(),
                    parent: d.feature.clone(),
                    reason: "a flag cannot depend on itself",
                });
            }
            let parent = self.index.get(d.feature.as_str()).copied();
            let usable = match parent {
                None if self.strict() => {
                    return Err(DefinitionError::Dependency {
                        flag: name.into(),
                        parent: d.feature.clone(),
                        reason: "no such flag",
                    });
                }
                None => None,
                Some(p) if !self.defs[p as usize].definition.dependencies.is_empty() => {
                    if self.strict() {
                        return Err(DefinitionError::Dependency {
                            flag: name.into(),
                            parent: d.feature.clone(),
                            reason: "the parent has dependencies of its own (one level only, as in Unleash)",
                        });
                    }
                    None
                }
                Some(p) => Some(p),
            };
            dependencies.push(CDependency {
                parent: usable,
                enabled: d.enabled.unwrap_or(true),
                variants: d
                    .variants
                    .as_ref()
                    .filter(|v| !v.is_empty())
                    .map(|v| StrList::new(v.iter().cloned())),
            });
        }
        let mut overrides: Vec<(TenantId, bool)> = def.tenant_overrides.iter().map(|(t, on)| (*t, *on)).collect();
        overrides.sort_by_key(|(t, _)| *t);
        Ok(CompiledFlag {
            name: name.into(),
            kind: def.kind,
            version: v.version,
            enabled: env.is_some_and(|e| e.enabled),
            broken: false,
            strategies: strategies.into_boxed_slice(),
            variants,
            has_parents: !dependencies.is_empty(),
            dependencies: dependencies.into_boxed_slice(),
            overrides: overrides.into_boxed_slice(),
            plans: (!def.plans.is_empty()).then(|| StrList::new(def.plans.iter().cloned())),
            uses: Arc::default(),
        })
    }

    fn strategy(&self, flag: &str, i: usize, s: &Strategy) -> Result<CStrategy, DefinitionError> {
        let param = |k: &str| s.parameters.get(k).map(String::as_str);
        let bad = |parameter: &str, value: &str, reason: &'static str| DefinitionError::Parameter {
            flag: flag.into(),
            strategy: i,
            parameter: parameter.into(),
            value: value.into(),
            reason,
        };
        let percent = |k: &str| -> Result<Option<u32>, DefinitionError> {
            match param(k) {
                None if self.strict() => Err(bad(k, "", "required")),
                None => Ok(None),
                Some(p) => match p.parse::<u32>() {
                    Ok(n) if n <= 100 => Ok(Some(n)),
                    // Unleash's engine refuses the whole flag for a percentage above 100.
                    Ok(_) => Err(bad(k, p, "a whole percentage from 0 to 100")),
                    Err(_) if self.strict() => Err(bad(k, p, "a whole percentage from 0 to 100")),
                    Err(_) => Ok(None),
                },
            }
        };
        let group = |default: &str| param("groupId").unwrap_or(default).to_owned();
        let rule = match s.name.as_str() {
            "default" => Rule::Always(true),
            "userWithId" => match param("userIds") {
                Some(ids) => Rule::UserIds(StrList::new(ids.split(',').map(|x| x.trim().to_owned()))),
                None if self.strict() => return Err(bad("userIds", "", "required")),
                None => Rule::Always(false),
            },
            "flexibleRollout" => match percent("rollout")? {
                Some(p) => Rule::Rollout {
                    percent: p,
                    stickiness: stickiness(param("stickiness")),
                    prefix: Prefix::new(&group(flag), 0),
                },
                None => Rule::Always(false),
            },
            name @ ("gradualRolloutUserId" | "gradualRolloutSessionId") => {
                let p = percent("percentage")?;
                match (p, param("groupId")) {
                    (Some(p), Some(g)) => Rule::Rollout {
                        percent: p,
                        stickiness: Stickiness::Field(FieldRef::Slot(if name == "gradualRolloutUserId" {
                            Field::UserId
                        } else {
                            Field::SessionId
                        })),
                        prefix: Prefix::new(g, 0),
                    },
                    (_, None) if self.strict() => return Err(bad("groupId", "", "required")),
                    _ => Rule::Always(false),
                }
            }
            "gradualRolloutRandom" => match percent("percentage")? {
                Some(p) => Rule::Random { percent: p },
                None => Rule::Always(false),
            },
            "remoteAddress" => match param("IPs") {
                Some(ips) => Rule::Cidr(self.cidrs(flag, "remoteAddress", ips.split(',').map(str::trim))?),
                None if self.strict() => return Err(bad("IPs", "", "required")),
                None => Rule::Always(false),
            },
            "applicationHostname" => {
                let names = param("hostNames").unwrap_or("");
                let on = self.hostname.is_some_and(|h| {
                    names
                        .split(',')
                        .map(str::trim)
                        .any(|n| n.to_lowercase() == h.to_lowercase())
                });
                Rule::Hostname(on)
            }
            other if self.strict() => {
                return Err(DefinitionError::UnknownStrategy {
                    flag: flag.into(),
                    strategy: other.into(),
                });
            }
            // Custom strategies need code in the SDK; like Unleash without it, they are off.
            _ => Rule::Always(false),
        };
        let mut constraints = Vec::new();
        for c in &s.constraints {
            constraints.push(self.constraint(flag, c)?);
        }
        for id in &s.segments {
            let seg = self.segments.get(id).ok_or(DefinitionError::UnknownSegment {
                flag: flag.into(),
                segment: *id,
            })?;
            for c in &seg.constraints {
                constraints.push(self.constraint(flag, c)?);
            }
        }
        let variants = self.variants(
            flag,
            Some(i),
            &s.variants,
            Some(param("stickiness").unwrap_or("default")),
            &group(flag),
        )?;
        Ok(CStrategy {
            rule,
            constraints: constraints.into_boxed_slice(),
            variants,
        })
    }

    fn variants(
        &self,
        flag: &str,
        strategy: Option<usize>,
        list: &[Variant],
        strategy_stickiness: Option<&str>,
        group: &str,
    ) -> Result<Option<VariantSet>, DefinitionError> {
        if list.is_empty() {
            return Ok(None);
        }
        let mut total: u32 = 0;
        let mut out = Vec::with_capacity(list.len());
        for v in list {
            let weight = u32::try_from(v.weight).map_err(|_| DefinitionError::Weights {
                flag: flag.into(),
                strategy,
                reason: format!("variant {:?} has a negative weight", v.name),
            })?;
            total = total.saturating_add(weight);
            let overrides: Vec<(FieldRef, StrList)> = v
                .overrides
                .iter()
                .map(|o| (FieldRef::parse(&o.context_name), StrList::new(o.values.iter().cloned())))
                .collect();
            out.push(CVariant {
                name: v.name.as_str().into(),
                weight,
                payload: v.payload.clone(),
                overrides: overrides.into_boxed_slice(),
            });
        }
        if self.strict() && total != 1000 {
            return Err(DefinitionError::Weights {
                flag: flag.into(),
                strategy,
                reason: format!("variant weights add up to {total}, not 1000"),
            });
        }
        if total == 0 {
            return Err(DefinitionError::Weights {
                flag: flag.into(),
                strategy,
                reason: "all variant weights are 0".into(),
            });
        }
        // Flag-level variants stick to the first variant's stickiness; strategy variants
        // to the strategy's.
        let stick = strategy_stickiness
            .or(list[0].stickiness.as_deref())
            .unwrap_or("default");
        let stickiness = match stick {
            "default" => None,
            // No such value: Unleash draws at random (a property called "random" aside).
            other => Some(FieldRef::parse(other)),
        };
        Ok(Some(VariantSet {
            has_overrides: out.iter().any(|v| !v.overrides.is_empty()),
            variants: out.into_boxed_slice(),
            total,
            stickiness,
            prefix: Prefix::new(group, VARIANT_SEED),
        }))
    }

    fn cidrs<'s>(
        &self,
        flag: &str,
        field: &str,
        values: impl Iterator<Item = &'s str>,
    ) -> Result<Box<[IpNet]>, DefinitionError> {
        let mut out = Vec::new();
        for v in values {
            let net = if v.contains('/') {
                IpNet::from_str(v).ok()
            } else {
                IpAddr::from_str(v).ok().map(IpNet::from)
            };
            match net {
                Some(n) => out.push(n),
                None if self.strict() => {
                    return Err(DefinitionError::Value {
                        flag: flag.into(),
                        context_name: field.into(),
                        operator: "IN_CIDR".into(),
                        value: v.into(),
                        reason: "not an IP address or CIDR range",
                    });
                }
                None => {}
            }
        }
        Ok(out.into_boxed_slice())
    }

    fn constraint(&self, flag: &str, c: &Constraint) -> Result<CConstraint, DefinitionError> {
        let value_err = |value: &str, reason: &'static str| DefinitionError::Value {
            flag: flag.into(),
            context_name: c.context_name.clone(),
            operator: c.operator.clone(),
            value: value.into(),
            reason,
        };
        let single = || c.value.as_deref().ok_or_else(|| value_err("", "a value is required"));
        let cmp = |suffix: &str| match suffix {
            "EQ" => Cmp::Eq,
            "GT" | "AFTER" => Cmp::Gt,
            "GTE" => Cmp::Gte,
            "LT" | "BEFORE" => Cmp::Lt,
            _ => Cmp::Lte,
        };
        let op = match c.operator.as_str() {
            "IN" => Op::In(StrList::new(c.values.iter().cloned())),
            "NOT_IN" => Op::NotIn(StrList::new(c.values.iter().cloned())),
            o @ ("STR_CONTAINS" | "STR_STARTS_WITH" | "STR_ENDS_WITH") => Op::Str {
                op: match o {
                    "STR_CONTAINS" => StrOp::Contains,
                    "STR_STARTS_WITH" => StrOp::StartsWith,
                    _ => StrOp::EndsWith,
                },
                ci: c.case_insensitive,
                values: c
                    .values
                    .iter()
                    .map(|v| {
                        if c.case_insensitive {
                            v.to_lowercase()
                        } else {
                            v.clone()
                        }
                        .into_boxed_str()
                    })
                    .collect(),
            },
            o @ ("NUM_EQ" | "NUM_GT" | "NUM_GTE" | "NUM_LT" | "NUM_LTE") => {
                let v = single()?;
                if !is_unleash_number(v) {
                    return Err(value_err(v, "not a number"));
                }
                Op::Num {
                    cmp: cmp(&o[4..]),
                    value: v.parse().map_err(|_| value_err(v, "not a number"))?,
                }
            }
            o @ ("DATE_AFTER" | "DATE_BEFORE") => {
                let v = single()?;
                let d = v
                    .parse::<DateTime<Utc>>()
                    .map_err(|_| value_err(v, "not an RFC 3339 date-time"))?;
                Op::Date {
                    cmp: cmp(&o[5..]),
                    value: d,
                }
            }
            o @ ("SEMVER_EQ" | "SEMVER_GT" | "SEMVER_LT" | "SEMVER_GTE" | "SEMVER_LTE") => {
                let v = single()?;
                if v.starts_with('v') {
                    // Unleash's engine treats a `v`-prefixed version as never matching.
                    if self.strict() {
                        return Err(value_err(v, "a semantic version without a leading `v`"));
                    }
                    Op::Never
                } else {
                    let ver = semver::Version::parse(v).map_err(|_| value_err(v, "not a semantic version"))?;
                    Op::Semver {
                        cmp: cmp(&o[7..]),
                        value: ver,
                    }
                }
            }
            "REGEX" => {
                let v = c.value.as_deref().unwrap_or("");
                match RegexBuilder::new(v)
                    .case_insensitive(c.case_insensitive)
                    .size_limit(1 << 20)
                    .build()
                {
                    Ok(r) => Op::Regex(r),
                    Err(_) if self.strict() => return Err(value_err(v, "not a valid regular expression")),
                    Err(_) => Op::Const(false),
                }
            }
            "IN_CIDR" => Op::Cidr(self.cidrs(flag, &c.context_name, c.values.iter().map(String::as_str))?),
            other => {
                return Err(DefinitionError::UnknownOperator {
                    flag: flag.into(),
                    operator: other.into(),
                });
            }
        };
        Ok(CConstraint {
            field: FieldRef::parse(&c.context_name),
            op,
            inverted: c.inverted,
        })
    }
}

fn stickiness(param: Option<&str>) -> Stickiness {
    match param {
        None | Some("default") => Stickiness::Default,
        Some("random") => Stickiness::Random,
        Some(other) => Stickiness::Field(FieldRef::parse(other)),
    }
}

/// Unleash's number syntax: `[+-]digits[.digits][e[+-]digits]`.
fn is_unleash_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    if digits(&mut i) == 0 {
        return false;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        digits(&mut i);
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

impl FlagSet {
    /// An empty set.
    pub fn empty(environment: impl Into<String>) -> FlagSet {
        FlagSet {
            flags: Box::new([]),
            index: NameIndex::new(Vec::new()),
            environment: environment.into().into_boxed_str(),
            version: 0,
            warnings: Vec::new(),
        }
    }

    /// The environment it was compiled for.
    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// The store's change counter when it was built.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// Flags that compiled to "always off" (lenient mode only).
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// The number of flags.
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    /// Whether it holds no flags.
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// The flag names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.flags.iter().map(|f| &*f.name)
    }

    /// A flag's kind and version.
    pub fn info(&self, name: &str) -> Option<(FlagKind, i64)> {
        self.lookup(name)
            .map(|i| (self.flags[i as usize].kind, self.flags[i as usize].version))
    }

    /// Counts one evaluation of `name` for the usage report (one relaxed atomic add).
    #[inline]
    pub fn count(&self, name: &str) {
        self.lookup_counted(name);
    }

    /// The flag's position, counting one evaluation of it.
    #[inline]
    pub(crate) fn lookup_counted(&self, name: &str) -> Option<u32> {
        let i = self.lookup(name)?;
        self.flags[i as usize].uses.fetch_add(1, Ordering::Relaxed);
        Some(i)
    }

    /// Takes over `previous`'s evaluation counters for flags of the same name, so that
    /// counts made on either set reach the next usage flush.
    pub fn adopt_counters(mut self, previous: &FlagSet) -> FlagSet {
        for f in self.flags.iter_mut() {
            if let Some(i) = previous.lookup(&f.name) {
                f.uses = Arc::clone(&previous.flags[i as usize].uses);
            }
        }
        self
    }

    #[inline]
    pub(crate) fn lookup(&self, name: &str) -> Option<u32> {
        self.index.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_syntax() {
        for ok in ["1", "-1", "+3", "1.5", "1.", "1e5", "1E-3", "0.25e+2"] {
            assert!(is_unleash_number(ok), "{ok}");
        }
        for bad in ["", ".5", "e5", "1e", "abc", "1.2.3", "NaN", "inf", " 1"] {
            assert!(!is_unleash_number(bad), "{bad}");
        }
    }
}
