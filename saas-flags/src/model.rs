//! Flag definitions: Unleash's client model, plus the multi-tenant parts.
//!
//! [`Strategy`], [`Constraint`], [`Variant`], [`Segment`] and [`Dependency`] serialise
//! exactly as in Unleash's client features payload, so definitions move between the two
//! unchanged. A [`FlagDefinition`] is what saas-flags stores: one flag with its settings
//! per environment, and the SaaS additions — tenant overrides and plan targeting.

use std::collections::BTreeMap;

use saas_core::TenantId;
use serde::{Deserialize, Serialize};

/// What a flag is for (Unleash's feature types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FlagKind {
    /// Ship unfinished code dark; removed once rolled out.
    #[default]
    Release,
    /// A/B or multivariate testing.
    Experiment,
    /// Operational switches (degrade, migrate).
    Operational,
    /// Turns a feature off in an emergency; expected to live long.
    KillSwitch,
    /// Grants a feature to some users or tenants; expected to live long.
    Permission,
}

impl FlagKind {
    /// The name as Unleash writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            FlagKind::Release => "release",
            FlagKind::Experiment => "experiment",
            FlagKind::Operational => "operational",
            FlagKind::KillSwitch => "kill-switch",
            FlagKind::Permission => "permission",
        }
    }

    /// Whether flags of this kind are meant to be removed once fully rolled out (release
    /// and experiment); the stale report only names these.
    pub fn is_temporary(self) -> bool {
        matches!(self, FlagKind::Release | FlagKind::Experiment)
    }

    /// Parses Unleash's name; unknown types (Unleash allows custom ones) are `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "release" => FlagKind::Release,
            "experiment" => FlagKind::Experiment,
            "operational" => FlagKind::Operational,
            "kill-switch" => FlagKind::KillSwitch,
            "permission" => FlagKind::Permission,
            _ => return None,
        })
    }
}

/// An activation strategy: a name, its parameters, constraints, segments and variants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    /// `default`, `userWithId`, `flexibleRollout`, `gradualRolloutUserId`,
    /// `gradualRolloutSessionId`, `gradualRolloutRandom`, `remoteAddress` or
    /// `applicationHostname`.
    pub name: String,
    /// Parameters such as `rollout`, `stickiness`, `groupId`, `userIds`, `IPs`.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub parameters: BTreeMap<String, String>,
    /// All must hold for the strategy to apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub constraints: Vec<Constraint>,
    /// Ids of segments whose constraints are added to this strategy's.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub segments: Vec<i32>,
    /// Variants served when this strategy is the one that matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub variants: Vec<Variant>,
}

impl Strategy {
    /// A strategy named `name` with no parameters.
    pub fn new(name: impl Into<String>) -> Self {
        Strategy {
            name: name.into(),
            ..Strategy::default()
        }
    }

    /// `flexibleRollout` of `percent` with the given stickiness and group id.
    pub fn rollout(percent: u32, stickiness: impl Into<String>, group_id: impl Into<String>) -> Self {
        Strategy::new("flexibleRollout")
            .param("rollout", percent.to_string())
            .param("stickiness", stickiness)
            .param("groupId", group_id)
    }

    /// Sets a parameter.
    pub fn param(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.parameters.insert(key.into(), value.into());
        self
    }

    /// Adds a constraint.
    pub fn constraint(mut self, c: Constraint) -> Self {
        self.constraints.push(c);
        self
    }

    /// Adds a strategy variant.
    pub fn variant(mut self, v: Variant) -> Self {
        self.variants.push(v);
        self
    }
}

/// A comparison of one context field with values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Constraint {
    /// The context field: `userId`, `sessionId`, `environment`, `appName`, `currentTime`,
    /// `remoteAddress`, the SaaS fields `tenantId`, `plan`, `role`, `appVersion`, or any
    /// custom property.
    pub context_name: String,
    /// The operator, as Unleash names it (`IN`, `STR_CONTAINS`, `SEMVER_GT`, …).
    pub operator: String,
    /// List operators' values.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub values: Vec<String>,
    /// Single-value operators' value (numbers, dates, versions, regexes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Negates the result.
    #[serde(default)]
    pub inverted: bool,
    /// String operators and `REGEX` ignore case.
    #[serde(default)]
    pub case_insensitive: bool,
}

impl Constraint {
    /// `context_name operator values`.
    pub fn new<I, S>(context_name: impl Into<String>, operator: impl Into<String>, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Constraint {
            context_name: context_name.into(),
            operator: operator.into(),
            values: values.into_iter().map(Into::into).collect(),
            value: None,
            inverted: false,
            case_insensitive: false,
        }
    }

    /// `context_name operator value` for single-value operators.
    pub fn single(context_name: impl Into<String>, operator: impl Into<String>, value: impl Into<String>) -> Self {
        Constraint {
            context_name: context_name.into(),
            operator: operator.into(),
            values: Vec::new(),
            value: Some(value.into()),
            inverted: false,
            case_insensitive: false,
        }
    }

    /// Negates it.
    pub fn inverted(mut self) -> Self {
        self.inverted = true;
        self
    }

    /// Ignores case.
    pub fn case_insensitive(mut self) -> Self {
        self.case_insensitive = true;
        self
    }
}

/// A named, reusable list of constraints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Segment {
    /// Its id, referenced from strategies.
    pub id: i32,
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The constraints.
    #[serde(default, deserialize_with = "null_default")]
    pub constraints: Vec<Constraint>,
}

/// A variant's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// `string`, `json`, `csv` or `number`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value, as text.
    pub value: String,
}

/// Serve a variant to the listed values of one context field, regardless of weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Override {
    /// The context field.
    pub context_name: String,
    /// The values.
    #[serde(default, deserialize_with = "null_default")]
    pub values: Vec<String>,
}

/// One variant of a flag or of a strategy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Variant {
    /// Its name.
    pub name: String,
    /// Its weight; the weights of one list add up to 1000 in definitions saas-flags saves.
    pub weight: i32,
    /// `variable` or `fix` (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_type: Option<String>,
    /// The context field the variant hash sticks to (`default` = user id, then session id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<String>,
    /// What the application receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload>,
    /// Context values that always get this variant.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub overrides: Vec<Override>,
}

impl Variant {
    /// A variant with a weight and no payload.
    pub fn new(name: impl Into<String>, weight: i32) -> Self {
        Variant {
            name: name.into(),
            weight,
            weight_type: None,
            stickiness: None,
            payload: None,
            overrides: Vec::new(),
        }
    }

    /// Sets a string payload.
    pub fn payload(mut self, kind: impl Into<String>, value: impl Into<String>) -> Self {
        self.payload = Some(Payload {
            kind: kind.into(),
            value: value.into(),
        });
        self
    }

    /// Sets the stickiness.
    pub fn stickiness(mut self, field: impl Into<String>) -> Self {
        self.stickiness = Some(field.into());
        self
    }
}

/// The flag is on only when another flag is (or is not) on, optionally with one of some variants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    /// The parent flag.
    pub feature: String,
    /// Whether the parent must be on (default) or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Variants of the parent any of which satisfies the dependency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variants: Option<Vec<String>>,
}

/// A flag's state in one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentConfig {
    /// Whether the flag is on in this environment (the kill switch).
    pub enabled: bool,
    /// Who gets it: any matching strategy turns it on; none at all means everyone.
    #[serde(default, deserialize_with = "null_default")]
    pub strategies: Vec<Strategy>,
}

/// A flag as saas-flags stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlagDefinition {
    /// Its name: 1–200 characters, no control characters.
    pub name: String,
    /// What it is for.
    #[serde(rename = "type", default)]
    pub kind: FlagKind,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Unleash project (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Settings per environment; an environment not listed has the flag off.
    #[serde(default)]
    pub environments: BTreeMap<String, EnvironmentConfig>,
    /// Variants served when the flag is on and the matched strategy has none of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<Variant>,
    /// Parent flags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<Dependency>,
    /// Force the flag on or off for single tenants (while it is enabled in the environment).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenant_overrides: BTreeMap<TenantId, bool>,
    /// When not empty, only tenants on these plans can get the flag (tenant overrides
    /// still apply).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plans: Vec<String>,
    /// Unleash's impression data switch (informational).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub impression_data: bool,
}

impl FlagDefinition {
    /// A release flag, off everywhere.
    pub fn new(name: impl Into<String>) -> Self {
        FlagDefinition {
            name: name.into(),
            kind: FlagKind::Release,
            description: None,
            project: None,
            environments: BTreeMap::new(),
            variants: Vec::new(),
            dependencies: Vec::new(),
            tenant_overrides: BTreeMap::new(),
            plans: Vec::new(),
            impression_data: false,
        }
    }

    /// Sets the kind.
    pub fn kind(mut self, kind: FlagKind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets the description.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }

    /// Turns it on in `env` with these strategies (none: on for everyone).
    pub fn enable_in(mut self, env: impl Into<String>, strategies: Vec<Strategy>) -> Self {
        self.environments.insert(
            env.into(),
            EnvironmentConfig {
                enabled: true,
                strategies,
            },
        );
        self
    }

    /// Adds a flag-level variant.
    pub fn variant(mut self, v: Variant) -> Self {
        self.variants.push(v);
        self
    }

    /// Adds a dependency on `parent` being on.
    pub fn depends_on(mut self, parent: impl Into<String>) -> Self {
        self.dependencies.push(Dependency {
            feature: parent.into(),
            enabled: None,
            variants: None,
        });
        self
    }

    /// Restricts it to tenants on these plans.
    pub fn plans<I, S>(mut self, plans: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.plans = plans.into_iter().map(Into::into).collect();
        self
    }

    /// Forces it on or off for one tenant.
    pub fn tenant_override(mut self, tenant: TenantId, on: bool) -> Self {
        self.tenant_overrides.insert(tenant, on);
        self
    }
}

/// Accepts JSON `null` where a collection is expected (Unleash sends both).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
