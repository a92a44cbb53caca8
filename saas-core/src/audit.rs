//! The audit log of sensitive actions.
//!
//! A record is written in the caller's transaction, so it commits with the change it
//! describes or not at all. The table (`saas.audit_log`) is tenant-scoped with row-level
//! security enabled and forced, append-only (the application role has no UPDATE or
//! DELETE grant, and a trigger refuses updates even to the owner), and each tenant's
//! records form a hash chain: every row stores the hash of the previous row of that
//! tenant, so [`verify_chain`] finds the first row that was altered, removed or inserted
//! out of turn.
//!
//! ```no_run
//! # async fn demo(tx: &mut sqlx::PgConnection, tenant: saas_core::TenantId, user: saas_core::UserId)
//! # -> Result<(), saas_core::audit::AuditError> {
//! use saas_core::audit::{self, Actor, AuditRecord};
//! // `tx` is a transaction with `app.tenant_id` set to `tenant` (saas-tenancy's TenantTx).
//! let record = AuditRecord::new(tenant, Actor::User(user), "member.role_changed")?
//!     .target("membership", "42")
//!     .metadata(serde_json::json!({"before": "member", "after": "admin"}));
//! audit::record(tx, &record).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::IpAddr;

use base64::Engine;
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{Acquire, PgConnection, Row};

use crate::clock::Clock;
use crate::id::{ApiKeyId, AuditId, TenantId, UserId};
use crate::problem::{IntoProblem, Problem};

/// The chain for records about the platform itself rather than one tenant (feature
/// flag definitions, plans): the nil tenant id. Only the platform role (`BYPASSRLS`)
/// reads and writes it; no tenant can be scoped to it, as tenant ids are UUIDv7.
pub const PLATFORM: TenantId = TenantId::from_uuid(uuid::Uuid::nil());

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Actor {
    /// A signed-in user.
    User(UserId),
    /// A request authenticated with an API key.
    ApiKey(ApiKeyId),
    /// The platform itself: a job or a migration, named.
    System(String),
    /// Platform support staff acting inside the tenant.
    Support(UserId),
}

impl From<&crate::Principal> for Actor {
    /// The actor an audit record names for a request's principal: the API key, the
    /// support staff member, or the user.
    fn from(p: &crate::Principal) -> Self {
        match p.method {
            crate::AuthMethod::ApiKey(key) | crate::AuthMethod::ServiceAccount(key) => Actor::ApiKey(key),
            crate::AuthMethod::SupportSession(_) => Actor::Support(p.user_id),
            _ => Actor::User(p.user_id),
        }
    }
}

impl Actor {
    fn parts(&self) -> (&'static str, String) {
        match self {
            Actor::User(u) => ("user", u.to_string()),
            Actor::ApiKey(k) => ("api_key", k.to_string()),
            Actor::System(name) => ("system", name.clone()),
            Actor::Support(u) => ("support", u.to_string()),
        }
    }

    fn from_parts(kind: &str, id: &str) -> Result<Self, AuditError> {
        let bad = || AuditError::Corrupt(format!("unknown actor {kind}:{id}"));
        Ok(match kind {
            "user" => Actor::User(id.parse().map_err(|_| bad())?),
            "api_key" => Actor::ApiKey(id.parse().map_err(|_| bad())?),
            "system" => Actor::System(id.to_owned()),
            "support" => Actor::Support(id.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        })
    }
}

/// Where the action came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestContext {
    /// The client's address.
    pub ip: Option<IpAddr>,
    /// The client's user agent (truncated to 512 bytes).
    pub user_agent: Option<String>,
    /// The request id.
    pub request_id: Option<String>,
}

impl RequestContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the client address.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }
    /// Sets the user agent.
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = Some(truncate(ua.into(), 512));
        self
    }
    /// Sets the request id.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(truncate(id.into(), 128));
        self
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// One audit record, before it is written.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    tenant_id: TenantId,
    actor: Actor,
    action: String,
    target: Option<(String, String)>,
    context: RequestContext,
    metadata: Value,
    occurred_at: Option<DateTime<Utc>>,
}

/// Checks an action name: dotted lower-case segments (`member.role_changed`).
pub fn validate_action(action: &str) -> Result<(), AuditError> {
    let ok = action.len() <= 128
        && action.split('.').count() >= 2
        && action.split('.').all(|seg| {
            let mut chars = seg.chars();
            chars.next().is_some_and(|c| c.is_ascii_lowercase())
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(AuditError::InvalidAction(truncate(action.to_owned(), 64)))
    }
}

impl AuditRecord {
    /// A record of `action` (dotted lower-case, such as `project.deleted`) by `actor` in `tenant`.
    pub fn new(tenant: TenantId, actor: Actor, action: impl Into<String>) -> Result<Self, AuditError> {
        let action = action.into();
        validate_action(&action)?;
        if let Actor::System(name) = &actor
            && (name.is_empty() || name.len() > 128)
        {
            return Err(AuditError::InvalidActor);
        }
        Ok(Self {
            tenant_id: tenant,
            actor,
            action,
            target: None,
            context: RequestContext::default(),
            metadata: Value::Object(Default::default()),
            occurred_at: None,
        })
    }
    /// What was acted on: a type (`project`) and an id (truncated to 64 and 128 bytes).
    pub fn target(mut self, kind: impl Into<String>, id: impl fmt::Display) -> Self {
        self.target = Some((truncate(kind.into(), 64), truncate(id.to_string(), 128)));
        self
    }
    /// Where the request came from.
    pub fn context(mut self, context: RequestContext) -> Self {
        self.context = context;
        self
    }
    /// Free-form details, such as `{"before": …, "after": …}` for a change.
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }
    /// When it happened (default: the time of writing, from the system clock).
    pub fn at(mut self, when: DateTime<Utc>) -> Self {
        self.occurred_at = Some(when);
        self
    }
    /// Takes the time from a clock.
    pub fn at_clock(self, clock: &dyn Clock) -> Self {
        let now = clock.now();
        self.at(now)
    }
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AuditEntry {
    /// The record's id.
    pub id: AuditId,
    /// The tenant.
    pub tenant_id: TenantId,
    /// Position in the tenant's chain, from 1.
    pub seq: i64,
    /// When it happened (microsecond precision).
    pub occurred_at: DateTime<Utc>,
    /// Who did it.
    pub actor: Actor,
    /// What was done.
    pub action: String,
    /// The target's type and id.
    pub target: Option<(String, String)>,
    /// Client address, user agent and request id.
    pub context: RequestContext,
    /// Details.
    pub metadata: Value,
    /// Hash of the previous record of the tenant (32 zero bytes for the first).
    pub prev_hash: Vec<u8>,
    /// Hash of this record.
    pub hash: Vec<u8>,
}

/// An audit operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The action name is not dotted lower-case.
    #[error("audit action {0:?} must be dotted lower-case segments such as \"member.role_changed\"")]
    InvalidAction(String),
    /// A system actor needs a name of 1 to 128 bytes.
    #[error("a system actor needs a name of 1 to 128 bytes")]
    InvalidActor,
    /// The pagination cursor was not issued by this API.
    #[error("the audit cursor is malformed; pass back the `next` value of the previous page")]
    InvalidCursor,
    /// A stored row cannot be read back.
    #[error("an audit row is unreadable: {0}")]
    Corrupt(String),
    /// The database refused or failed (including a tenant mismatch under row-level security).
    #[error("audit database operation failed: {0}")]
    Database(#[from] sqlx::Error),
}

impl IntoProblem for AuditError {
    fn to_problem(&self) -> Problem {
        match self {
            AuditError::InvalidAction(_) | AuditError::InvalidActor => {
                Problem::unprocessable(self.to_string()).with_type("invalid-audit-record")
            }
            AuditError::InvalidCursor => Problem::bad_request(self.to_string()).with_type("invalid-cursor"),
            AuditError::Corrupt(_) => Problem::internal().with_internal(self),
            AuditError::Database(e) => e.to_problem(),
        }
    }
}

const GENESIS: [u8; 32] = [0u8; 32];
const LOCK_CLASS: i32 = 0x5AA5_0A11;

fn lock_key(tenant: TenantId) -> i32 {
    let b = tenant.as_uuid().as_bytes();
    i32::from_be_bytes([b[12], b[13], b[14], b[15]])
}

/// Writes `value` as JSON with object keys sorted, so equal documents hash equally.
fn canonical_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::from(k.as_str()).to_string().as_bytes());
                out.push(b':');
                canonical_json(&map[k.as_str()], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(v, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

struct HashInput<'a> {
    prev_hash: &'a [u8],
    tenant_id: TenantId,
    seq: i64,
    id: AuditId,
    occurred_at: DateTime<Utc>,
    actor_type: &'a str,
    actor_id: &'a str,
    action: &'a str,
    target: Option<(&'a str, &'a str)>,
    ip: Option<&'a str>,
    user_agent: Option<&'a str>,
    request_id: Option<&'a str>,
    metadata: &'a Value,
}

impl HashInput<'_> {
    fn digest(&self) -> Vec<u8> {
        fn field(h: &mut Sha256, bytes: &[u8]) {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        }
        fn opt(h: &mut Sha256, v: Option<&str>) {
            match v {
                None => h.update([0u8]),
                Some(s) => {
                    h.update([1u8]);
                    field(h, s.as_bytes());
                }
            }
        }
        let mut h = Sha256::new();
        field(&mut h, b"saas-kit audit v1");
        field(&mut h, self.prev_hash);
        field(&mut h, self.tenant_id.as_uuid().as_bytes());
        h.update(self.seq.to_be_bytes());
        field(&mut h, self.id.as_uuid().as_bytes());
        h.update(self.occurred_at.timestamp_micros().to_be_bytes());
        field(&mut h, self.actor_type.as_bytes());
        field(&mut h, self.actor_id.as_bytes());
        field(&mut h, self.action.as_bytes());
        opt(&mut h, self.target.map(|t| t.0));
        opt(&mut h, self.target.map(|t| t.1));
        opt(&mut h, self.ip);
        opt(&mut h, self.user_agent);
        opt(&mut h, self.request_id);
        let mut meta = Vec::new();
        canonical_json(self.metadata, &mut meta);
        field(&mut h, &meta);
        h.finalize().to_vec()
    }
}

/// Appends `record` to its tenant's chain, in the caller's transaction when there is one.
///
/// The connection must be scoped to the record's tenant (`app.tenant_id` set, as
/// saas-tenancy's `TenantTx` does); otherwise row-level security refuses the insert.
/// Concurrent writers of one tenant are serialised until their transactions end.
pub async fn record(conn: &mut PgConnection, record: &AuditRecord) -> Result<AuditEntry, AuditError> {
    let mut tx = conn.begin().await?;
    let tenant = record.tenant_id;
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(LOCK_CLASS)
        .bind(lock_key(tenant))
        .execute(&mut *tx)
        .await?;
    // The metadata goes through jsonb here so that the hash covers exactly what is stored.
    let head = sqlx::query(
        "SELECT $2::jsonb AS metadata, l.seq, l.hash FROM (SELECT 1) AS one \
         LEFT JOIN LATERAL (SELECT seq, hash FROM saas.audit_log WHERE tenant_id = $1 \
                            ORDER BY seq DESC LIMIT 1) AS l ON true",
    )
    .bind(tenant)
    .bind(&record.metadata)
    .fetch_one(&mut *tx)
    .await?;
    let metadata: Value = head.try_get("metadata")?;
    let last_seq: Option<i64> = head.try_get("seq")?;
    let prev_hash: Vec<u8> = head
        .try_get::<Option<Vec<u8>>, _>("hash")?
        .unwrap_or_else(|| GENESIS.to_vec());
    let seq = last_seq.unwrap_or(0) + 1;
    let id = AuditId::new();
    let occurred_at = record.occurred_at.unwrap_or_else(Utc::now).trunc_subsecs(6);
    let (actor_type, actor_id) = record.actor.parts();
    let ip = record.context.ip.map(|ip| ip.to_string());
    let target = record.target.as_ref().map(|(k, i)| (k.as_str(), i.as_str()));
    let hash = HashInput {
        prev_hash: &prev_hash,
        tenant_id: tenant,
        seq,
        id,
        occurred_at,
        actor_type,
        actor_id: &actor_id,
        action: &record.action,
        target,
        ip: ip.as_deref(),
        user_agent: record.context.user_agent.as_deref(),
        request_id: record.context.request_id.as_deref(),
        metadata: &metadata,
    }
    .digest();
    sqlx::query(
        "INSERT INTO saas.audit_log (tenant_id, seq, id, occurred_at, actor_type, actor_id, action, \
         target_type, target_id, ip, user_agent, request_id, metadata, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(tenant)
    .bind(seq)
    .bind(id)
    .bind(occurred_at)
    .bind(actor_type)
    .bind(&actor_id)
    .bind(&record.action)
    .bind(target.map(|t| t.0))
    .bind(target.map(|t| t.1))
    .bind(ip.as_deref())
    .bind(record.context.user_agent.as_deref())
    .bind(record.context.request_id.as_deref())
    .bind(&metadata)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(AuditEntry {
        id,
        tenant_id: tenant,
        seq,
        occurred_at,
        actor: record.actor.clone(),
        action: record.action.clone(),
        target: record.target.clone(),
        context: record.context.clone(),
        metadata,
        prev_hash,
        hash,
    })
}

const COLUMNS: &str = "tenant_id, seq, id, occurred_at, actor_type, actor_id, action, target_type, target_id, \
                       ip, user_agent, request_id, metadata, prev_hash, hash";

fn entry_from_row(row: &sqlx::postgres::PgRow) -> Result<AuditEntry, AuditError> {
    let actor_type: String = row.try_get("actor_type")?;
    let actor_id: String = row.try_get("actor_id")?;
    let target_type: Option<String> = row.try_get("target_type")?;
    let target_id: Option<String> = row.try_get("target_id")?;
    let ip: Option<String> = row.try_get("ip")?;
    let ip = ip
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| AuditError::Corrupt(format!("bad ip {s:?}")))
        })
        .transpose()?;
    Ok(AuditEntry {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        seq: row.try_get("seq")?,
        occurred_at: row.try_get("occurred_at")?,
        actor: Actor::from_parts(&actor_type, &actor_id)?,
        action: row.try_get("action")?,
        target: target_type.zip(target_id),
        context: RequestContext {
            ip,
            user_agent: row.try_get("user_agent")?,
            request_id: row.try_get("request_id")?,
        },
        metadata: row.try_get("metadata")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

impl AuditEntry {
    fn computed_hash(&self) -> Vec<u8> {
        let (actor_type, actor_id) = self.actor.parts();
        let ip = self.context.ip.map(|ip| ip.to_string());
        HashInput {
            prev_hash: &self.prev_hash,
            tenant_id: self.tenant_id,
            seq: self.seq,
            id: self.id,
            occurred_at: self.occurred_at,
            actor_type,
            actor_id: &actor_id,
            action: &self.action,
            target: self.target.as_ref().map(|(k, i)| (k.as_str(), i.as_str())),
            ip: ip.as_deref(),
            user_agent: self.context.user_agent.as_deref(),
            request_id: self.context.request_id.as_deref(),
            metadata: &self.metadata,
        }
        .digest()
    }
}

/// Why a link of the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokenReason {
    /// The row's content does not match its stored hash: it was altered.
    ContentAltered,
    /// The row's `prev_hash` is not the previous row's hash: a row before it was altered,
    /// removed or inserted.
    PreviousMismatch,
    /// A sequence number is missing: rows were removed.
    Gap {
        /// The sequence number expected here.
        expected: i64,
    },
    /// The chain starts after 1 without a retention record that accounts for the rows
    /// before it.
    UnanchoredStart,
}

/// The first broken link found by [`verify_chain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The sequence number of the first row that fails.
    pub seq: i64,
    /// Its id.
    pub id: AuditId,
    /// What is wrong with it.
    pub reason: BrokenReason,
}

/// The result of [`verify_chain`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChainReport {
    /// Rows checked.
    pub checked: u64,
    /// The first broken link, if any.
    pub first_broken: Option<BrokenLink>,
}

impl ChainReport {
    /// Whether the whole chain is intact.
    pub fn is_intact(&self) -> bool {
        self.first_broken.is_none()
    }
}

/// Walks `tenant`'s chain from its first row and reports the first broken link.
///
/// The connection must be scoped to `tenant`. Rows removed by [`prune`] are accounted
/// for by the `audit.pruned` record it leaves behind.
pub async fn verify_chain(conn: &mut PgConnection, tenant: TenantId) -> Result<ChainReport, AuditError> {
    use futures_util::TryStreamExt as _;
    let sql = format!("SELECT {COLUMNS} FROM saas.audit_log WHERE tenant_id = $1 ORDER BY seq");
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).fetch(&mut *conn);
    let mut checked = 0u64;
    let mut prev: Option<(i64, Vec<u8>)> = None;
    let mut anchor: Option<(i64, Vec<u8>)> = None;
    let mut pending_start: Option<AuditEntry> = None;
    let mut first_broken = None;
    while let Some(row) = rows.try_next().await? {
        let entry = entry_from_row(&row)?;
        checked += 1;
        let broken = |reason| BrokenLink {
            seq: entry.seq,
            id: entry.id,
            reason,
        };
        if entry.computed_hash() != entry.hash {
            first_broken = Some(broken(BrokenReason::ContentAltered));
            break;
        }
        match &prev {
            None if entry.seq == 1 => {
                if entry.prev_hash != GENESIS {
                    first_broken = Some(broken(BrokenReason::PreviousMismatch));
                    break;
                }
            }
            // A pruned prefix: the retention record appears later in the chain.
            None => pending_start = Some(entry.clone()),
            Some((pseq, phash)) => {
                if entry.seq != pseq + 1 {
                    first_broken = Some(broken(BrokenReason::Gap { expected: pseq + 1 }));
                    break;
                }
                if &entry.prev_hash != phash {
                    first_broken = Some(broken(BrokenReason::PreviousMismatch));
                    break;
                }
            }
        }
        if entry.action == PRUNED_ACTION {
            let through_seq = entry.metadata.get("through_seq").and_then(Value::as_i64);
            let through_hash = entry
                .metadata
                .get("through_hash")
                .and_then(Value::as_str)
                .and_then(|h| base64::engine::general_purpose::STANDARD.decode(h).ok());
            if let (Some(s), Some(h)) = (through_seq, through_hash) {
                anchor = Some((s, h));
            }
        }
        prev = Some((entry.seq, entry.hash.clone()));
    }
    drop(rows);
    if first_broken.is_none()
        && let Some(start) = pending_start
    {
        let anchored = anchor.is_some_and(|(s, h)| s + 1 == start.seq && h == start.prev_hash);
        if !anchored {
            first_broken = Some(BrokenLink {
                seq: start.seq,
                id: start.id,
                reason: BrokenReason::UnanchoredStart,
            });
        }
    }
    Ok(ChainReport { checked, first_broken })
}

/// The action recorded by [`prune`].
pub const PRUNED_ACTION: &str = "audit.pruned";

/// What [`prune`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PruneReport {
    /// Rows deleted.
    pub deleted: u64,
    /// The last deleted sequence number, if any.
    pub through_seq: Option<i64>,
}

/// Retention: deletes `tenant`'s records that occurred before `cutoff`, then records the
/// deletion itself (`audit.pruned`, with the last deleted link so that [`verify_chain`]
/// still proves the rest of the chain).
///
/// Runs as a role with DELETE on `saas.audit_log` (the migration owner or a maintenance
/// role; the application role has none), on a connection scoped to `tenant`. Deletes a
/// prefix of the chain only: a record newer than a kept one is never removed.
pub async fn prune(
    conn: &mut PgConnection,
    tenant: TenantId,
    cutoff: DateTime<Utc>,
    actor: Actor,
    clock: &dyn Clock,
) -> Result<PruneReport, AuditError> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(LOCK_CLASS)
        .bind(lock_key(tenant))
        .execute(&mut *tx)
        .await?;
    // The last row of the prefix that is entirely older than the cutoff.
    let through = sqlx::query(
        "SELECT seq, hash FROM saas.audit_log WHERE tenant_id = $1 AND seq < COALESCE( \
           (SELECT min(seq) FROM saas.audit_log WHERE tenant_id = $1 AND occurred_at >= $2), \
           (SELECT max(seq) + 1 FROM saas.audit_log WHERE tenant_id = $1)) \
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(tenant)
    .bind(cutoff)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(through) = through else {
        tx.commit().await?;
        return Ok(PruneReport {
            deleted: 0,
            through_seq: None,
        });
    };
    let through_seq: i64 = through.try_get("seq")?;
    let through_hash: Vec<u8> = through.try_get("hash")?;
    sqlx::query("SELECT set_config('saas.audit_prune', 'on', true)")
        .execute(&mut *tx)
        .await?;
    let deleted = sqlx::query("DELETE FROM saas.audit_log WHERE tenant_id = $1 AND seq <= $2")
        .bind(tenant)
        .bind(through_seq)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query("SELECT set_config('saas.audit_prune', 'off', true)")
        .execute(&mut *tx)
        .await?;
    let rec = AuditRecord::new(tenant, actor, PRUNED_ACTION)?
        .at_clock(clock)
        .metadata(serde_json::json!({
            "cutoff": cutoff.to_rfc3339(),
            "deleted": deleted,
            "through_seq": through_seq,
            "through_hash": base64::engine::general_purpose::STANDARD.encode(&through_hash),
        }));
    record(&mut tx, &rec).await?;
    tx.commit().await?;
    Ok(PruneReport {
        deleted,
        through_seq: Some(through_seq),
    })
}

/// Filters for [`query`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct AuditQuery {
    /// Only this actor.
    pub actor: Option<Actor>,
    /// Only this action, or every action under a prefix ending in `.` (`member.`).
    pub action: Option<String>,
    /// Only records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only records before this time.
    pub until: Option<DateTime<Utc>>,
    /// Page size (1–500, default 50).
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    pub cursor: Option<String>,
}

impl AuditQuery {
    /// No filters: the newest 50 records.
    pub fn new() -> Self {
        Self::default()
    }
    /// Only this actor.
    pub fn actor(mut self, actor: Actor) -> Self {
        self.actor = Some(actor);
        self
    }
    /// Only this action, or a prefix ending in `.`.
    pub fn action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }
    /// Only records in `[since, until)`.
    pub fn between(mut self, since: DateTime<Utc>, until: DateTime<Utc>) -> Self {
        self.since = Some(since);
        self.until = Some(until);
        self
    }
    /// Page size.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
    /// Continue after a previous page.
    pub fn after(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into());
        self
    }
}

/// One page of audit records, newest first.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuditPage {
    /// The records.
    pub items: Vec<AuditEntry>,
    /// The cursor for the next (older) page, if there is one.
    pub next: Option<String>,
}

fn encode_cursor(seq: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("a1:{seq}"))
}

fn decode_cursor(c: &str) -> Result<i64, AuditError> {
    if c.len() > 64 {
        return Err(AuditError::InvalidCursor);
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|_| AuditError::InvalidCursor)?;
    let s = std::str::from_utf8(&raw).map_err(|_| AuditError::InvalidCursor)?;
    s.strip_prefix("a1:")
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n > 0)
        .ok_or(AuditError::InvalidCursor)
}

/// Lists `tenant`'s records, newest first, filtered and cursor-paginated.
pub async fn query(conn: &mut PgConnection, tenant: TenantId, q: &AuditQuery) -> Result<AuditPage, AuditError> {
    let limit = i64::from(q.limit.unwrap_or(50).clamp(1, 500));
    let mut b = sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM saas.audit_log WHERE tenant_id = "));
    b.push_bind(tenant);
    if let Some(actor) = &q.actor {
        let (t, i) = actor.parts();
        b.push(" AND actor_type = ")
            .push_bind(t)
            .push(" AND actor_id = ")
            .push_bind(i);
    }
    if let Some(action) = &q.action {
        if let Some(prefix) = action.strip_suffix('.') {
            validate_action(&format!("{prefix}.x")).or_else(|_| validate_action(&format!("{prefix}.x.y")))?;
            b.push(" AND starts_with(action, ").push_bind(action.clone()).push(")");
        } else {
            validate_action(action)?;
            b.push(" AND action = ").push_bind(action.clone());
        }
    }
    if let Some(since) = q.since {
        b.push(" AND occurred_at >= ").push_bind(since);
    }
    if let Some(until) = q.until {
        b.push(" AND occurred_at < ").push_bind(until);
    }
    if let Some(c) = &q.cursor {
        b.push(" AND seq < ").push_bind(decode_cursor(c)?);
    }
    b.push(" ORDER BY seq DESC LIMIT ").push_bind(limit + 1);
    let rows = b.build().fetch_all(&mut *conn).await?;
    let mut items = rows.iter().map(entry_from_row).collect::<Result<Vec<_>, _>>()?;
    let next = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|e| encode_cursor(e.seq))
    } else {
        None
    };
    Ok(AuditPage { items, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_validated() {
        for ok in [
            "member.role_changed",
            "a.b",
            "api_key.created",
            "audit.pruned",
            "x1.y2.z3",
        ] {
            assert!(validate_action(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "member",
            "Member.x",
            "a..b",
            ".a",
            "a.",
            "a.b-c",
            "a b.c",
            &"a.".repeat(100),
        ] {
            assert!(validate_action(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[1,2],"c":"x"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"c":"x","d":[1,2]},"b":1}"#).unwrap();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        canonical_json(&a, &mut x);
        canonical_json(&b, &mut y);
        assert_eq!(x, y);
        assert_eq!(String::from_utf8(x).unwrap(), r#"{"a":{"c":"x","d":[1,2]},"b":1}"#);
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        assert_eq!(decode_cursor(&encode_cursor(42)).unwrap(), 42);
        for bad in ["", "!!!", "YTE6LTE", &"A".repeat(100), "YTI6MQ"] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn system_actor_needs_a_name() {
        let t = TenantId::new();
        assert!(matches!(
            AuditRecord::new(t, Actor::System(String::new()), "a.b"),
            Err(AuditError::InvalidActor)
        ));
        assert!(AuditRecord::new(t, Actor::System("retention".into()), "a.b").is_ok());
    }
}
