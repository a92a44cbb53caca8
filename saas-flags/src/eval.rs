//! Evaluation: Unleash's semantics on a compiled [`FlagSet`], without locks or allocation.

use std::cell::Cell;
use std::net::IpAddr;

use chrono::{DateTime, Utc};

use crate::compile::{
    CConstraint, CStrategy, CVariant, CompiledFlag, FieldRef, FlagSet, Op, Rule, Stickiness, StrOp, VariantSet,
};
use crate::context::{Context, Field};
use crate::model::Payload;

/// Why an evaluation came out as it did; maps onto OpenFeature's reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// On, with no targeting (no strategies).
    Static,
    /// On because strategy number `strategy` (from 0) matched.
    TargetingMatch {
        /// The strategy's position.
        strategy: u16,
    },
    /// Forced on or off for the context's tenant.
    TenantOverride,
    /// Off: the flag targets plans and the context's plan is not one of them.
    PlanExcluded,
    /// Off: no strategy matched.
    NoMatch,
    /// Off: disabled in this environment.
    Disabled,
    /// Off: a parent flag is not in the required state.
    DependencyUnmet,
    /// Off: no flag of that name.
    NotFound,
    /// Off: the definition could not be compiled (lenient imports only).
    Invalid,
}

impl Reason {
    /// OpenFeature's reason string.
    pub fn openfeature(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::TargetingMatch { .. } | Reason::TenantOverride => "TARGETING_MATCH",
            Reason::PlanExcluded | Reason::NoMatch | Reason::DependencyUnmet => "DEFAULT",
            Reason::Disabled => "DISABLED",
            Reason::NotFound | Reason::Invalid => "ERROR",
        }
    }
}

/// How a variant was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VariantReason {
    /// By weight (OpenFeature `SPLIT`).
    Split,
    /// By one of the variant's overrides (OpenFeature `TARGETING_MATCH`).
    Override,
}

/// A chosen variant, borrowed from the flag set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VariantRef<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its payload.
    pub payload: Option<&'a Payload>,
    /// How it was chosen.
    pub reason: VariantReason,
}

/// The result of evaluating one flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluation<'a> {
    /// Whether the flag is on.
    pub enabled: bool,
    /// The variant, when the flag is on and has variants.
    pub variant: Option<VariantRef<'a>>,
    /// Why.
    pub reason: Reason,
    /// The flag's version (0 when not found).
    pub version: i64,
}

impl Evaluation<'_> {
    /// The variant's name, or `"disabled"` (Unleash's name for "no variant").
    pub fn variant_name(&self) -> &str {
        self.variant.map(|v| v.name).unwrap_or("disabled")
    }
}

/// Unleash's `getVariant` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VariantResult<'a> {
    /// The variant's name, `"disabled"` when there is none.
    pub name: &'a str,
    /// Its payload.
    pub payload: Option<&'a Payload>,
    /// Whether a variant was chosen.
    pub enabled: bool,
    /// Whether the flag is on.
    pub feature_enabled: bool,
}

impl<'a> From<Evaluation<'a>> for VariantResult<'a> {
    fn from(e: Evaluation<'a>) -> Self {
        VariantResult {
            name: e.variant.map(|v| v.name).unwrap_or("disabled"),
            payload: e.variant.and_then(|v| v.payload),
            enabled: e.variant.is_some(),
            feature_enabled: e.enabled,
        }
    }
}

impl FlagSet {
    /// Whether `name` is on for `ctx`; unknown flags are off.
    #[inline]
    pub fn is_enabled(&self, name: &str, ctx: &Context) -> bool {
        match self.lookup(name) {
            Some(i) => self.enabled_at(i, ctx).0.is_some(),
            None => false,
        }
    }

    /// The variant of `name` for `ctx`, as Unleash's `getVariant` answers.
    #[inline]
    pub fn variant(&self, name: &str, ctx: &Context) -> VariantResult<'_> {
        self.evaluate(name, ctx).into()
    }

    /// Evaluates `name` for `ctx`: value, variant, reason and version.
    #[inline]
    pub fn evaluate(&self, name: &str, ctx: &Context) -> Evaluation<'_> {
        self.evaluate_found(self.lookup(name), ctx)
    }

    /// [`FlagSet::is_enabled`], counting the evaluation for the usage report.
    pub(crate) fn is_enabled_counted(&self, name: &str, ctx: &Context) -> bool {
        self.lookup_counted(name)
            .is_some_and(|i| self.enabled_at(i, ctx).0.is_some())
    }

    /// [`FlagSet::evaluate`], counting the evaluation for the usage report.
    pub(crate) fn evaluate_counted(&self, name: &str, ctx: &Context) -> Evaluation<'_> {
        self.evaluate_found(self.lookup_counted(name), ctx)
    }

    #[inline]
    fn evaluate_found(&self, found: Option<u32>, ctx: &Context) -> Evaluation<'_> {
        match found {
            Some(i) => self.evaluate_at(i, ctx),
            None => Evaluation {
                enabled: false,
                variant: None,
                reason: Reason::NotFound,
                version: 0,
            },
        }
    }

    pub(crate) fn evaluate_at(&self, i: u32, ctx: &Context) -> Evaluation<'_> {
        let flag = &self.flags[i as usize];
        let (matched, reason) = self.enabled_at(i, ctx);
        let variant = match matched {
            Some(m) => choose_variant(flag, m, ctx),
            None => None,
        };
        Evaluation {
            enabled: matched.is_some(),
            variant,
            reason,
            version: flag.version,
        }
    }

    /// `Some(matched strategy or NONE)` when on.
    #[inline]
    fn enabled_at(&self, i: u32, ctx: &Context) -> (Option<u16>, Reason) {
        let flag = &self.flags[i as usize];
        if !flag.enabled {
            return (None, if flag.broken { Reason::Invalid } else { Reason::Disabled });
        }
        if flag.has_parents && !self.dependencies_hold(flag, ctx) {
            return (None, Reason::DependencyUnmet);
        }
        if !flag.overrides.is_empty()
            && let Some(t) = ctx.tenant_id()
            && let Ok(pos) = flag.overrides.binary_search_by_key(&t, |(id, _)| *id)
        {
            let on = flag.overrides[pos].1;
            return (on.then_some(NONE), Reason::TenantOverride);
        }
        if let Some(plans) = &flag.plans
            && !ctx.field(Field::Plan).is_some_and(|p| plans.contains(p))
        {
            return (None, Reason::PlanExcluded);
        }
        if flag.strategies.is_empty() {
            return (Some(NONE), Reason::Static);
        }
        match first_match(flag, ctx) {
            Some(s) => (Some(s), Reason::TargetingMatch { strategy: s }),
            None => (None, Reason::NoMatch),
        }
    }

    fn dependencies_hold(&self, flag: &CompiledFlag, ctx: &Context) -> bool {
        flag.dependencies.iter().all(|d| {
            let Some(p) = d.parent else { return false };
            let parent = &self.flags[p as usize];
            let (matched, _) = self.enabled_at(p, ctx);
            if let Some(expected) = &d.variants {
                // Unleash's engine compares the parent's variant whether or not the parent
                // is on; a parent without variants satisfies any list.
                let strategy = matched.or_else(|| first_match(parent, ctx));
                if let Some(v) = choose_variant(parent, strategy.unwrap_or(NONE), ctx)
                    && !expected.contains(v.name)
                {
                    return false;
                }
            }
            matched.is_some() == d.enabled
        })
    }
}

/// "On, but not through a strategy" (no strategies, or a tenant override).
const NONE: u16 = u16::MAX;

#[inline]
fn first_match(flag: &CompiledFlag, ctx: &Context) -> Option<u16> {
    flag.strategies
        .iter()
        .position(|s| strategy_matches(s, ctx))
        .map(|i| i as u16)
}

#[inline]
fn strategy_matches(s: &CStrategy, ctx: &Context) -> bool {
    rule_holds(&s.rule, ctx) && s.constraints.iter().all(|c| constraint_holds(c, ctx))
}

#[inline]
fn value<'c>(field: &FieldRef, ctx: &'c Context) -> Option<&'c str> {
    match field {
        FieldRef::Slot(f) => ctx.field(*f),
        FieldRef::Prop(name) => ctx.prop(name),
    }
}

#[inline]
fn rule_holds(rule: &Rule, ctx: &Context) -> bool {
    match rule {
        Rule::Always(b) | Rule::Hostname(b) => *b,
        Rule::UserIds(ids) => ctx.field(Field::UserId).is_some_and(|u| ids.contains(u)),
        Rule::Rollout {
            percent,
            stickiness,
            prefix,
        } => {
            if *percent == 0 {
                return false;
            }
            let v = match stickiness {
                Stickiness::Default => ctx.field(Field::UserId).or_else(|| ctx.field(Field::SessionId)),
                Stickiness::Random => None,
                Stickiness::Field(f) => match value(f, ctx) {
                    Some(v) => Some(v),
                    None => return false,
                },
            };
            match v {
                Some(v) => prefix.bucket(v, 100) <= *percent,
                // Unleash hashes a random number in 1..10000; every bucket is as likely.
                None => *percent >= 100 || random_below(100) < *percent,
            }
        }
        Rule::Random { percent } => (random_below(99) + 1) < *percent,
        Rule::Cidr(nets) => {
            ip_of(&FieldRef::Slot(Field::RemoteAddress), ctx).is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)))
        }
    }
}

fn ip_of(field: &FieldRef, ctx: &Context) -> Option<IpAddr> {
    match field {
        FieldRef::Slot(Field::RemoteAddress) => ctx.ip(),
        other => value(other, ctx)?.parse().ok(),
    }
}

#[inline]
fn constraint_holds(c: &CConstraint, ctx: &Context) -> bool {
    let v = value(&c.field, ctx);
    let result = match &c.op {
        Op::In(list) => v.is_some_and(|v| list.contains(v)),
        Op::NotIn(list) => v.is_none_or(|v| !list.contains(v)),
        Op::Str { op, ci, values } => match v {
            None => false,
            Some(v) if *ci => values.iter().any(|x| str_op_ci(*op, v, x)),
            Some(v) => values.iter().any(|x| match op {
                StrOp::StartsWith => v.starts_with(&**x),
                StrOp::EndsWith => v.ends_with(&**x),
                StrOp::Contains => v.contains(&**x),
            }),
        },
        Op::Num { cmp, value } => match v.and_then(|v| v.parse::<f64>().ok()) {
            None => false,
            Some(n) => match cmp {
                crate::compile::Cmp::Eq => (n - value).abs() < f64::EPSILON,
                other => n.partial_cmp(value).is_some_and(|o| other.holds(o)),
            },
        },
        Op::Date { cmp, value } => {
            let now;
            let d = match (&c.field, v) {
                (_, Some(v)) => v.parse::<DateTime<Utc>>().ok(),
                (FieldRef::Slot(Field::CurrentTime), None) => {
                    now = Utc::now();
                    Some(now)
                }
                _ => None,
            };
            d.is_some_and(|d| cmp.holds(d.cmp(value)))
        }
        Op::Semver { cmp, value } => v
            .and_then(|v| semver::Version::parse(v).ok())
            .is_some_and(|ver| cmp.holds(ver.cmp_precedence(value))),
        Op::Regex(r) => v.is_some_and(|v| r.is_match(v)),
        Op::Cidr(nets) => ip_of(&c.field, ctx).is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
        Op::Const(b) => *b,
        Op::Never => return false,
    };
    result != c.inverted
}

/// Case-insensitive starts/ends/contains without allocating: `pat` is already lower-case
/// and `v` is lower-cased character by character.
fn str_op_ci(op: StrOp, v: &str, pat: &str) -> bool {
    match op {
        StrOp::StartsWith => starts_with_lower(v, pat),
        StrOp::EndsWith => {
            let mut a = v.chars().rev().flat_map(|c| c.to_lowercase().rev());
            pat.chars().rev().all(|p| a.next() == Some(p))
        }
        StrOp::Contains => {
            if pat.is_empty() {
                return true;
            }
            v.char_indices().any(|(i, _)| starts_with_lower(&v[i..], pat))
        }
    }
}

fn starts_with_lower(v: &str, pat: &str) -> bool {
    let mut a = v.chars().flat_map(char::to_lowercase);
    pat.chars().all(|p| a.next() == Some(p))
}

/// The variant for a flag that is on through strategy `matched` (or `NONE`).
#[inline]
fn choose_variant<'a>(flag: &'a CompiledFlag, matched: u16, ctx: &Context) -> Option<VariantRef<'a>> {
    let set = match flag.strategies.get(matched as usize).and_then(|s| s.variants.as_ref()) {
        Some(set) => set,
        None => flag.variants.as_ref()?,
    };
    resolve(set, ctx)
}

#[inline]
fn resolve<'a>(set: &'a VariantSet, ctx: &Context) -> Option<VariantRef<'a>> {
    if set.has_overrides
        && let Some(v) = set.variants.iter().find(|v| overridden(v, ctx))
    {
        return Some(VariantRef {
            name: &v.name,
            payload: v.payload.as_ref(),
            reason: VariantReason::Override,
        });
    }
    let seed = match &set.stickiness {
        None => ctx.field(Field::UserId).or_else(|| ctx.field(Field::SessionId)),
        Some(f) => value(f, ctx),
    };
    let target = match seed {
        Some(s) => set.prefix.bucket(s, set.total),
        None => random_below(set.total) + 1,
    };
    let mut acc = 0u32;
    for v in set.variants.iter() {
        acc += v.weight;
        if acc >= target {
            return Some(VariantRef {
                name: &v.name,
                payload: v.payload.as_ref(),
                reason: VariantReason::Split,
            });
        }
    }
    None
}

fn overridden(v: &CVariant, ctx: &Context) -> bool {
    v.overrides
        .iter()
        .any(|(f, values)| value(f, ctx).is_some_and(|x| values.contains(x)))
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(&h as *const _ as usize);
        h.finish() | 1
    });
}

/// A uniform draw in `0..n` (xorshift64*, per thread); `n` > 0.
fn random_below(n: u32) -> u32 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (((r >> 32) * u64::from(n)) >> 32) as u32
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use proptest::prelude::*;
    use saas_core::TenantId;

    use super::*;
    use crate::compile::{FlagSetBuilder, Mode};
    use crate::model::{Constraint, FlagDefinition, Strategy, Variant};

    const ENV: &str = "production";

    fn set(defs: Vec<FlagDefinition>) -> FlagSet {
        FlagSetBuilder::new(ENV)
            .mode(Mode::Lenient)
            .flags(
                defs.into_iter()
                    .map(|definition| crate::Versioned { definition, version: 7 }),
            )
            .build()
            .unwrap()
    }

    fn one(c: Constraint) -> FlagSet {
        set(vec![
            FlagDefinition::new("f").enable_in(ENV, vec![Strategy::new("default").constraint(c)]),
        ])
    }

    #[test]
    fn reasons_follow_the_evaluation_order() {
        let t_on = TenantId::new();
        let t_off = TenantId::new();
        let s = set(vec![
            FlagDefinition::new("static").enable_in(ENV, vec![]),
            FlagDefinition::new("off"),
            FlagDefinition::new("targeted")
                .enable_in(
                    ENV,
                    vec![
                        Strategy::new("userWithId").param("userIds", "1"),
                        Strategy::new("userWithId").param("userIds", "2"),
                    ],
                )
                .tenant_override(t_on, true)
                .tenant_override(t_off, false)
                .plans(["pro"]),
            FlagDefinition::new("child").enable_in(ENV, vec![]).depends_on("off"),
        ]);
        let ctx = |u: &str| Context::new().user_id(u).plan("pro");
        assert_eq!(s.evaluate("static", &ctx("1")).reason, Reason::Static);
        assert_eq!(s.evaluate("static", &ctx("1")).version, 7);
        assert_eq!(s.evaluate("off", &ctx("1")).reason, Reason::Disabled);
        assert_eq!(s.evaluate("nope", &ctx("1")).reason, Reason::NotFound);
        assert_eq!(
            s.evaluate("targeted", &ctx("2")).reason,
            Reason::TargetingMatch { strategy: 1 }
        );
        assert_eq!(s.evaluate("targeted", &ctx("3")).reason, Reason::NoMatch);
        assert_eq!(
            s.evaluate("targeted", &Context::new().user_id("1").plan("free")).reason,
            Reason::PlanExcluded
        );
        assert_eq!(
            s.evaluate("targeted", &Context::new().user_id("1")).reason,
            Reason::PlanExcluded
        );
        let forced = s.evaluate("targeted", &ctx("3").tenant(t_on));
        assert!(forced.enabled && forced.reason == Reason::TenantOverride);
        let blocked = s.evaluate("targeted", &ctx("1").tenant(t_off));
        assert!(!blocked.enabled && blocked.reason == Reason::TenantOverride);
        assert_eq!(s.evaluate("child", &ctx("1")).reason, Reason::DependencyUnmet);
        assert_eq!(Reason::DependencyUnmet.openfeature(), "DEFAULT");
        assert_eq!(Reason::TenantOverride.openfeature(), "TARGETING_MATCH");
    }

    #[test]
    fn operators_with_missing_values_inversion_and_case() {
        let ctx = Context::new()
            .user_id("Ünïcode-User")
            .property("n", "10")
            .app_version("1.2.3")
            .remote_address("10.1.2.3");
        let cases = [
            (
                Constraint::new("userId", "STR_STARTS_WITH", ["ünï"]).case_insensitive(),
                true,
            ),
            (Constraint::new("userId", "STR_STARTS_WITH", ["ünï"]), false),
            (
                Constraint::new("userId", "STR_ENDS_WITH", ["-USER"]).case_insensitive(),
                true,
            ),
            (
                Constraint::new("userId", "STR_CONTAINS", ["CODE-u"]).case_insensitive(),
                true,
            ),
            (
                Constraint::new("userId", "STR_CONTAINS", ["zzz"]).case_insensitive(),
                false,
            ),
            (Constraint::single("n", "NUM_GT", "9.5"), true),
            (Constraint::single("n", "NUM_EQ", "10"), true),
            (Constraint::single("n", "NUM_LT", "10"), false),
            (Constraint::single("missing", "NUM_LT", "10"), false),
            (Constraint::single("missing", "NUM_LT", "10").inverted(), true),
            (Constraint::new("missing", "NOT_IN", ["x"]), true),
            (Constraint::new("missing", "NOT_IN", ["x"]).inverted(), false),
            (Constraint::new("missing", "IN", ["x"]), false),
            (Constraint::single("appVersion", "SEMVER_GT", "1.2.3-rc.1"), true),
            (Constraint::single("appVersion", "SEMVER_EQ", "1.2.3"), true),
            (Constraint::single("appVersion", "SEMVER_LT", "1.10.0"), true),
            (
                Constraint::single("currentTime", "DATE_AFTER", "2000-01-01T00:00:00Z"),
                true,
            ),
            (Constraint::single("userId", "REGEX", "^ünï").case_insensitive(), true),
            (Constraint::new("remoteAddress", "IN_CIDR", ["10.0.0.0/8"]), true),
            (
                Constraint::new("remoteAddress", "IN_CIDR", ["10.0.0.0/8"]).inverted(),
                false,
            ),
            (
                Constraint::new("remoteAddress", "IN_CIDR", ["192.168.0.0/16", "10.1.2.3"]),
                true,
            ),
        ];
        for (c, want) in cases {
            let label = format!("{c:?}");
            assert_eq!(one(c).is_enabled("f", &ctx), want, "{label}");
        }
    }

    #[test]
    fn long_value_lists_use_a_set() {
        let values: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
        let s = one(Constraint::new("userId", "IN", values));
        assert!(s.is_enabled("f", &Context::new().user_id("user-999")));
        assert!(!s.is_enabled("f", &Context::new().user_id("user-1000")));
    }

    #[test]
    fn variant_overrides_win_and_payloads_come_through() {
        let mut v1 = Variant::new("one", 500).payload("string", "1");
        v1.overrides.push(crate::model::Override {
            context_name: "plan".into(),
            values: vec!["enterprise".into()],
        });
        let s = set(vec![
            FlagDefinition::new("f")
                .enable_in(ENV, vec![])
                .variant(Variant::new("zero", 500))
                .variant(v1),
        ]);
        let e = s.evaluate("f", &Context::new().user_id("a").plan("enterprise"));
        assert_eq!(e.variant.unwrap().name, "one");
        assert_eq!(e.variant.unwrap().reason, VariantReason::Override);
        assert_eq!(e.variant.unwrap().payload.unwrap().value, "1");
        let off = s.variant("missing", &Context::new());
        assert_eq!((off.name, off.enabled, off.feature_enabled), ("disabled", false, false));
    }

    fn rollout(percent: u32) -> FlagSet {
        set(vec![
            FlagDefinition::new("r").enable_in(ENV, vec![Strategy::rollout(percent, "userId", "grp")]),
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// A user's bucket depends only on group and user: the same answer from sets
        /// compiled separately, and monotone in the percentage.
        #[test]
        fn bucketing_is_stable_and_monotone(user in "[a-zA-Z0-9-]{1,40}", p in 0u32..=100) {
            let ctx = Context::new().user_id(&user);
            let a = rollout(p).is_enabled("r", &ctx);
            prop_assert_eq!(a, rollout(p).is_enabled("r", &ctx));
            if a && p < 100 {
                prop_assert!(rollout(p + 1).is_enabled("r", &ctx));
            }
            let bucket = crate::murmur::Prefix::new("grp", 0).bucket(&user, 100);
            prop_assert_eq!(a, bucket <= p);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Any weights adding up to 1000: each variant's share of 10,000 users is within
        /// 2.5 points of its weight, and a user keeps their variant across recompiles.
        #[test]
        fn variant_shares_follow_random_weights(cuts in proptest::collection::btree_set(1u32..1000, 1..5)) {
            let mut bounds: Vec<u32> = cuts.into_iter().collect();
            bounds.push(1000);
            let mut prev = 0;
            let mut def = FlagDefinition::new("v").enable_in(ENV, vec![]);
            let mut weights = Vec::new();
            for (i, b) in bounds.iter().enumerate() {
                def = def.variant(Variant::new(format!("v{i}"), (*b - prev) as i32));
                weights.push(f64::from(*b - prev) / 1000.0);
                prev = *b;
            }
            let s = set(vec![def.clone()]);
            let again = set(vec![def]);
            let n = 10_000;
            let mut counts = vec![0usize; weights.len()];
            for i in 0..n {
                let ctx = Context::new().user_id(format!("user-{i}"));
                let name = s.variant("v", &ctx).name;
                prop_assert_eq!(name, again.variant("v", &ctx).name);
                counts[name[1..].parse::<usize>().unwrap()] += 1;
            }
            for (c, w) in counts.iter().zip(&weights) {
                let share = *c as f64 / n as f64;
                prop_assert!((share - w).abs() < 0.025, "share {} for weight {}", share, w);
            }
        }
    }

    #[test]
    fn rollout_and_variant_shares_match_their_weights() {
        let n = 20_000;
        let users: Vec<Context> = (0..n).map(|i| Context::new().user_id(format!("u{i}"))).collect();
        let r = rollout(30);
        let on = users.iter().filter(|c| r.is_enabled("r", c)).count() as f64 / n as f64;
        assert!((on - 0.30).abs() < 0.02, "{on}");
        let s = set(vec![
            FlagDefinition::new("v")
                .enable_in(ENV, vec![])
                .variant(Variant::new("a", 200))
                .variant(Variant::new("b", 300))
                .variant(Variant::new("c", 500)),
        ]);
        let mut counts = std::collections::HashMap::new();
        for c in &users {
            *counts.entry(s.variant("v", c).name).or_insert(0usize) += 1;
        }
        for (name, share) in [("a", 0.2), ("b", 0.3), ("c", 0.5)] {
            let got = counts[name] as f64 / n as f64;
            assert!((got - share).abs() < 0.02, "{name}: {got}");
        }
    }
}
