//! [`FlagAdmin`]: validated, audited changes to flag definitions.
//!
//! Every change runs in one platform transaction (`SystemTx`, reason `flags.admin`):
//! the definition is validated strictly (nothing is saved when it is invalid), written
//! with a new version, recorded in the audit log with before/after and the actor —
//! in the platform chain ([`saas_core::audit::PLATFORM`]) and, for a tenant override,
//! also in that tenant's chain — and announced on [`CHANNEL`],
//! so that every [`FlagStore`](crate::FlagStore) reloads within about a second.

use chrono::{DateTime, Utc};
use saas_core::TenantId;
use saas_core::audit::{self, Actor, AuditRecord};
use saas_core::clock::{Clock, SystemClock};
use saas_tenancy::{PlatformPool, SystemTx};
use serde_json::{Value, json};
use sqlx::{PgConnection, Row};

use crate::compile::{FlagSetBuilder, Mode, Versioned, validate_name};
use crate::error::{DefinitionError, FlagError};
use crate::model::{EnvironmentConfig, FlagDefinition, Segment};
use crate::store::{CHANNEL, parse_stored};
use crate::unleash::ClientFeatures;

const REASON: &str = "flags.admin";

/// One change in a flag's history, from the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    /// When.
    pub at: DateTime<Utc>,
    /// `flag.created`, `flag.updated`, `flag.toggled`, `flag.override_set`, `flag.archived`.
    pub action: String,
    /// `user`, `api_key`, `system` or `support`.
    pub actor_type: String,
    /// The actor's id or name.
    pub actor_id: String,
    /// The definition before (absent for a creation).
    pub before: Option<Value>,
    /// The definition after.
    pub after: Option<Value>,
}

/// Why a flag is in the stale report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staleness {
    /// On for everyone in the environment and unchanged since `since`: remove the flag
    /// and keep the code path.
    FullyRolledOut {
        /// Last change.
        since: DateTime<Utc>,
    },
    /// Not evaluated in the environment since it was created (or not since `last`).
    NotEvaluated {
        /// The last evaluation, if there ever was one.
        last: Option<DateTime<Utc>>,
    },
}

/// A flag the stale report names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleFlag {
    /// The flag.
    pub name: String,
    /// Why.
    pub staleness: Staleness,
}

/// Validated, audited flag changes through the platform role.
#[derive(Clone)]
pub struct FlagAdmin {
    pool: PlatformPool,
    environments: Vec<String>,
    clock: std::sync::Arc<dyn Clock>,
}

impl FlagAdmin {
    /// Admin over `pool` (the platform role), for the environments `development`,
    /// `staging` and `production`.
    pub fn new(pool: PlatformPool) -> Self {
        FlagAdmin {
            pool,
            environments: ["development", "staging", "production"].map(String::from).to_vec(),
            clock: std::sync::Arc::new(SystemClock),
        }
    }

    /// Sets the environments flags may be configured for.
    pub fn environments<I, S>(mut self, envs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.environments = envs.into_iter().map(Into::into).collect();
        self
    }

    /// Uses `clock` for timestamps (tests move it).
    pub fn with_clock(mut self, clock: std::sync::Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Creates a flag; returns its version (1).
    pub async fn create(&self, actor: &Actor, def: FlagDefinition) -> Result<i64, FlagError> {
        let mut tx = SystemTx::begin(&self.pool, REASON).await?;
        if current(&mut tx, &def.name, true).await?.is_some() {
            return Err(FlagError::Exists(def.name));
        }
        self.insert_new(&mut tx, actor, &def).await?;
        notify(&mut tx).await?;
        tx.commit().await?;
        Ok(1)
    }

    /// Replaces a flag's definition if it is still at `expected_version`; returns the new version.
    pub async fn update(&self, actor: &Actor, def: FlagDefinition, expected_version: i64) -> Result<i64, FlagError> {
        let name = def.name.clone();
        self.change(actor, &name, Some(expected_version), "flag.updated", |_| Ok(def))
            .await
    }

    /// Turns a flag on or off in one environment (the kill switch); returns the new version.
    pub async fn toggle(&self, actor: &Actor, name: &str, environment: &str, enabled: bool) -> Result<i64, FlagError> {
        if !self.environments.iter().any(|e| e == environment) {
            return Err(FlagError::UnknownEnvironment(environment.into()));
        }
        self.change(actor, name, None, "flag.toggled", |mut d| {
            d.environments
                .entry(environment.to_owned())
                .or_insert_with(EnvironmentConfig::default)
                .enabled = enabled;
            Ok(d)
        })
        .await
    }

    /// Forces a flag on (`Some(true)`) or off (`Some(false)`) for one tenant, or removes
    /// the override (`None`); returns the new version.
    pub async fn set_tenant_override(
        &self,
        actor: &Actor,
        name: &str,
        tenant: TenantId,
        value: Option<bool>,
    ) -> Result<i64, FlagError> {
        let mut tx = SystemTx::begin(&self.pool, REASON).await?;
        let version = self
            .change_in(&mut tx, actor, name, None, "flag.override_set", |mut d| {
                match value {
                    Some(on) => d.tenant_overrides.insert(tenant, on),
                    None => d.tenant_overrides.remove(&tenant),
                };
                Ok(d)
            })
            .await?;
        // The tenant's own audit log says so too.
        let rec = AuditRecord::new(tenant, actor.clone(), "flag.override_set")?
            .target("flag", name)
            .metadata(json!({ "value": value }))
            .at(self.clock.now());
        audit::record(&mut tx, &rec).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Archives a flag: it disappears from every store (evaluations answer "not found",
    /// off). Refused while an active flag depends on it.
    pub async fn archive(&self, actor: &Actor, name: &str) -> Result<(), FlagError> {
        let mut tx = SystemTx::begin(&self.pool, REASON).await?;
        let (def, _) = current(&mut tx, name, false)
            .await?
            .ok_or_else(|| FlagError::NotFound(name.into()))?;
        let children: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM saas.flags WHERE archived_at IS NULL AND name <> $1 \
             AND definition -> 'dependencies' @> jsonb_build_array(jsonb_build_object('feature', $1::text))",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        if let Some(child) = children.first() {
            return Err(DefinitionError::Dependency {
                flag: child.clone(),
                parent: name.into(),
                reason: "archive or change the dependent flag first",
            }
            .into());
        }
        sqlx::query("UPDATE saas.flags SET archived_at = $2, updated_at = $2, change_seq = nextval('saas.flag_changes') WHERE name = $1")
            .bind(name)
            .bind(self.clock.now())
            .execute(&mut *tx)
            .await?;
        self.audit(&mut tx, actor, "flag.archived", name, Some(&def), None)
            .await?;
        notify(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// An active flag's definition and version.
    pub async fn get(&self, name: &str) -> Result<Versioned, FlagError> {
        let mut tx = SystemTx::begin(&self.pool, REASON).await?;
        let (definition, version) = current(&mut tx, name, false)
            .await?
            .ok_or_else(|| FlagError::NotFound(name.into()))?;
        tx.commit().await?;
        Ok(Versioned { definition, version })
    }

    /// Every active flag, by name.
    pub async fn list(&self) -> Result<Vec<Versioned>, FlagError> {
        let mut tx = SystemTx::begin(&self.pool, REASON).await?;
        let out = active(&mut tx).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Creates or replaces a segment (its constraints are validated).
    pub async fn put_segment(&self, actor: &Actor, segment: Segment) -> Result<(), FlagError> {
        let mut tx = SystemTx::begin(&self.pool, REASON).await?;
        // Validate the constraints by compiling a flag that uses them.
        let probe = FlagDefinition::new("segment-probe").enable_in(
            "probe",
            vec![crate::model::Strategy {
                segments: vec![segment.id],
                ..crate::model::Strategy::new("default")
            }],
        );
        FlagSetBuilder::new("probe")
            .segments([segment.clone()])
            .flag(probe)
            .build()?;
        let before: Option<Value> =
            sqlx::query_scalar("SELECT constraints FROM saas.flag_segments WHERE id = $1 FOR UPDATE")
                .bind(segment.id)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO saas.flag_segments (id, name, constraints, version, change_seq, updated_at) \
             VALUES ($1, $2, $3, 1, nextval('saas.flag_changes'), $4) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, constraints = excluded.constraints, \
             version = saas.flag_segments.version + 1, change_seq = excluded.change_seq, updated_at = excluded.updated_at",
        )
        .bind(segment.id)
        .bind(&segment.name)
        .bind(serde_json::to_value(&segment.constraints).unwrap_or(Value::Null))
        .bind(self.clock.now())
        .execute(&mut *tx)
        .await?;
        let rec = AuditRecord::new(audit::PLATFORM, actor.clone(), "flag.segment_saved")?
            .target("flag_segment", segment.id)
            .metadata(json!({ "before": before, "after": segment.constraints }))
            .at(self.clock.now());
        audit::record(&mut tx, &rec).await?;
        notify(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Imports an Unleash client payload into `environment`: new flags are created,
    /// existing ones get the payload's settings for that environment (their other
    /// environments, overrides and plans are kept). All or nothing.
    pub async fn import_unleash(
        &self,
        actor: &Actor,
        environment: &str,
        payload: ClientFeatures,
    ) -> Result<usize, FlagError> {
        if !self.environments.iter().any(|e| e == environment) {
            return Err(FlagError::UnknownEnvironment(environment.into()));
        }
        let (defs, segments) = payload.into_definitions(environment);
        for s in segments {
            self.put_segment(actor, s).await?;
        }
        let mut tx = SystemTx::begin(&self.pool, REASON).await?;
        // Parents before children, so each validates against what is already saved.
        let (parents, children): (Vec<_>, Vec<_>) = defs.into_iter().partition(|d| d.dependencies.is_empty());
        let count = parents.len() + children.len();
        for incoming in parents.into_iter().chain(children) {
            let name = incoming.name.clone();
            match current(&mut tx, &name, true).await? {
                None => self.insert_new(&mut tx, actor, &incoming).await?,
                Some(_) if current(&mut tx, &name, false).await?.is_none() => {
                    // Archived: its name stays taken, as for `create`.
                    return Err(FlagError::Exists(name));
                }
                Some(_) => {
                    self.change_in(&mut tx, actor, &name, None, "flag.updated", |mut d| {
                        d.environments.extend(incoming.environments.clone());
                        d.variants = incoming.variants.clone();
                        d.dependencies = incoming.dependencies.clone();
                        d.kind = incoming.kind;
                        Ok(d)
                    })
                    .await?;
                }
            }
        }
        notify(&mut tx).await?;
        tx.commit().await?;
        Ok(count)
    }

    /// `environment`'s flags as an Unleash client payload (tenant overrides and plans as
    /// constraints on `tenantId` and `plan`).
    pub async fn export_unleash(&self, environment: &str) -> Result<ClientFeatures, FlagError> {
        let flags = self.list().await?;
        let mut tx = SystemTx::begin(&self.pool, REASON).await?;
        let segments = segments(&mut tx).await?;
        tx.commit().await?;
        let defs: Vec<FlagDefinition> = flags.into_iter().map(|v| v.definition).collect();
        Ok(ClientFeatures::from_definitions(&defs, &segments, environment))
    }

    /// A flag's changes, oldest first, from the platform audit chain.
    pub async fn history(&self, name: &str) -> Result<Vec<HistoryEntry>, FlagError> {
        let mut tx = SystemTx::begin(&self.pool, REASON).await?;
        let rows = sqlx::query(
            "SELECT occurred_at, action, actor_type, actor_id, metadata FROM saas.audit_log \
             WHERE tenant_id = $1 AND target_type = 'flag' AND target_id = $2 ORDER BY seq",
        )
        .bind(audit::PLATFORM)
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.into_iter()
            .map(|r| {
                let meta: Value = r.try_get("metadata")?;
                let pick = |k: &str| meta.get(k).filter(|v| !v.is_null()).cloned();
                Ok(HistoryEntry {
                    at: r.try_get("occurred_at")?,
                    action: r.try_get("action")?,
                    actor_type: r.try_get("actor_type")?,
                    actor_id: r.try_get("actor_id")?,
                    before: pick("before"),
                    after: pick("after"),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Flags to clean up in `environment`: release and experiment flags that are on for
    /// everyone and unchanged for `days`, and flags not evaluated for `days` (counts come
    /// from every process's usage flushes).
    pub async fn stale_report(&self, environment: &str, days: u32) -> Result<Vec<StaleFlag>, FlagError> {
        let cutoff = self.clock.now() - chrono::Duration::days(i64::from(days));
        let mut tx = SystemTx::begin(&self.pool, REASON).await?;
        let rows = sqlx::query(
            "SELECT f.definition, f.created_at, f.updated_at, u.last_evaluated_at \
             FROM saas.flags f LEFT JOIN saas.flag_usage u ON u.name = f.name AND u.environment = $1 \
             WHERE f.archived_at IS NULL ORDER BY f.name",
        )
        .bind(environment)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut out = Vec::new();
        for r in rows {
            let def: FlagDefinition = parse_stored(r.try_get("definition")?)?;
            let created: DateTime<Utc> = r.try_get("created_at")?;
            let updated: DateTime<Utc> = r.try_get("updated_at")?;
            let last: Option<DateTime<Utc>> = r.try_get("last_evaluated_at")?;
            if def.kind.is_temporary() && updated < cutoff && fully_rolled_out(&def, environment) {
                out.push(StaleFlag {
                    name: def.name,
                    staleness: Staleness::FullyRolledOut { since: updated },
                });
            } else if created < cutoff && last.is_none_or(|l| l < cutoff) {
                out.push(StaleFlag {
                    name: def.name,
                    staleness: Staleness::NotEvaluated { last },
                });
            }
        }
        Ok(out)
    }

    /// Validates, inserts (version 1) and audits a new flag.
    async fn insert_new(&self, tx: &mut PgConnection, actor: &Actor, def: &FlagDefinition) -> Result<(), FlagError> {
        self.validate(tx, def).await?;
        sqlx::query(
            "INSERT INTO saas.flags (name, definition, version, change_seq, created_at, updated_at) \
             VALUES ($1, $2, 1, nextval('saas.flag_changes'), $3, $3)",
        )
        .bind(&def.name)
        .bind(to_json(def))
        .bind(self.clock.now())
        .execute(&mut *tx)
        .await?;
        self.audit(tx, actor, "flag.created", &def.name, None, Some(def)).await
    }

    async fn change<F>(
        &self,
        actor: &Actor,
        name: &str,
        expected: Option<i64>,
        action: &str,
        f: F,
    ) -> Result<i64, FlagError>
    where
        F: FnOnce(FlagDefinition) -> Result<FlagDefinition, FlagError>,
    {
        let mut tx = SystemTx::begin(&self.pool, REASON).await?;
        let v = self.change_in(&mut tx, actor, name, expected, action, f).await?;
        tx.commit().await?;
        Ok(v)
    }

    /// Reads (locked), changes, validates, writes, audits and announces one flag.
    async fn change_in<F>(
        &self,
        tx: &mut PgConnection,
        actor: &Actor,
        name: &str,
        expected: Option<i64>,
        action: &str,
        f: F,
    ) -> Result<i64, FlagError>
    where
        F: FnOnce(FlagDefinition) -> Result<FlagDefinition, FlagError>,
    {
        let (before, version) = current(tx, name, false)
            .await?
            .ok_or_else(|| FlagError::NotFound(name.into()))?;
        if let Some(expected) = expected
            && expected != version
        {
            return Err(FlagError::VersionConflict {
                name: name.into(),
                expected,
                actual: version,
            });
        }
        let after = f(before.clone())?;
        if after.name != name {
            return Err(DefinitionError::InvalidName { name: after.name }.into());
        }
        if after == before {
            return Ok(version);
        }
        for env in after.environments.keys() {
            if !self.environments.iter().any(|e| e == env) {
                return Err(FlagError::UnknownEnvironment(env.clone()));
            }
        }
        self.validate(tx, &after).await?;
        sqlx::query(
            "UPDATE saas.flags SET definition = $2, version = version + 1, change_seq = nextval('saas.flag_changes'), \
             updated_at = $3 WHERE name = $1",
        )
        .bind(name)
        .bind(to_json(&after))
        .bind(self.clock.now())
        .execute(&mut *tx)
        .await?;
        self.audit(tx, actor, action, name, Some(&before), Some(&after)).await?;
        notify(tx).await?;
        Ok(version + 1)
    }

    /// Strict compilation of `def` in each of its environments, with its parents and the segments.
    async fn validate(&self, tx: &mut PgConnection, def: &FlagDefinition) -> Result<(), FlagError> {
        validate_name(&def.name)?;
        for env in def.environments.keys() {
            if !self.environments.iter().any(|e| e == env) {
                return Err(FlagError::UnknownEnvironment(env.clone()));
            }
        }
        let segments = segments(tx).await?;
        let mut parents = Vec::new();
        for d in &def.dependencies {
            if let Some((p, v)) = current(tx, &d.feature, false).await?
                && d.feature != def.name
            {
                // Parents were validated when saved; only their place in the graph matters here.
                let mut p = p;
                p.environments.clear();
                p.variants.clear();
                parents.push(Versioned {
                    definition: p,
                    version: v,
                });
            }
        }
        let envs: Vec<&str> = if def.environments.is_empty() {
            vec!["validation"]
        } else {
            def.environments.keys().map(String::as_str).collect()
        };
        for env in envs {
            FlagSetBuilder::new(env)
                .mode(Mode::Strict)
                .segments(segments.clone())
                .flags(parents.iter().cloned())
                .flag(def.clone())
                .build()?;
        }
        Ok(())
    }

    async fn audit(
        &self,
        tx: &mut PgConnection,
        actor: &Actor,
        action: &str,
        name: &str,
        before: Option<&FlagDefinition>,
        after: Option<&FlagDefinition>,
    ) -> Result<(), FlagError> {
        let rec = AuditRecord::new(audit::PLATFORM, actor.clone(), action)?
            .target("flag", name)
            .metadata(json!({ "before": before.map(to_json), "after": after.map(to_json) }))
            .at(self.clock.now());
        audit::record(tx, &rec).await?;
        Ok(())
    }
}

impl std::fmt::Debug for FlagAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlagAdmin")
            .field("environments", &self.environments)
            .finish_non_exhaustive()
    }
}

fn to_json(def: &FlagDefinition) -> Value {
    serde_json::to_value(def).unwrap_or(Value::Null)
}

/// Whether `def` is on for everyone in `env`: enabled, no parents, overrides or plans,
/// and a strategy that always applies.
fn fully_rolled_out(def: &FlagDefinition, env: &str) -> bool {
    let Some(e) = def.environments.get(env) else {
        return false;
    };
    e.enabled
        && def.dependencies.is_empty()
        && def.tenant_overrides.values().all(|on| *on)
        && def.plans.is_empty()
        && (e.strategies.is_empty()
            || e.strategies.iter().any(|s| {
                s.constraints.is_empty()
                    && s.segments.is_empty()
                    && (s.name == "default"
                        || (s.name == "flexibleRollout" && s.parameters.get("rollout").is_some_and(|r| r == "100")))
            }))
}

async fn current(
    tx: &mut PgConnection,
    name: &str,
    include_archived: bool,
) -> Result<Option<(FlagDefinition, i64)>, FlagError> {
    let row = sqlx::query(
        "SELECT definition, version, archived_at IS NOT NULL AS archived FROM saas.flags WHERE name = $1 FOR UPDATE",
    )
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(r) = row else { return Ok(None) };
    if !include_archived && r.try_get::<bool, _>("archived")? {
        return Ok(None);
    }
    let def = parse_stored(r.try_get("definition")?)?;
    Ok(Some((def, r.try_get("version")?)))
}

async fn active(tx: &mut PgConnection) -> Result<Vec<Versioned>, FlagError> {
    let rows = sqlx::query("SELECT definition, version FROM saas.flags WHERE archived_at IS NULL ORDER BY name")
        .fetch_all(&mut *tx)
        .await?;
    rows.into_iter()
        .map(|r| {
            let definition = parse_stored(r.try_get("definition")?)?;
            Ok(Versioned {
                definition,
                version: r.try_get("version")?,
            })
        })
        .collect()
}

async fn segments(tx: &mut PgConnection) -> Result<Vec<Segment>, FlagError> {
    let rows = sqlx::query("SELECT id, name, constraints FROM saas.flag_segments ORDER BY id")
        .fetch_all(&mut *tx)
        .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Segment {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                constraints: serde_json::from_value(r.try_get("constraints")?)
                    .map_err(|e| FlagError::Payload(format!("stored segment: {e}")))?,
            })
        })
        .collect()
}

async fn notify(tx: &mut PgConnection) -> Result<(), FlagError> {
    sqlx::query("SELECT pg_notify($1, json_build_object('seq', currval('saas.flag_changes'))::text)")
        .bind(CHANNEL)
        .execute(tx)
        .await?;
    Ok(())
}
