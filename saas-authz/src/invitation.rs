//! Invitations: invite by email with a role; the invitee accepts with a single-use link.
//!
//! The link carries a token (`inv_…`) that encodes the tenant, the invitation and 256
//! random bits; only its digest is stored. Sending goes through an [`InvitationMailer`]
//! that receives the transaction, so an implementation that writes an outbox row sends
//! nothing for a rolled-back invitation. Seats are checked through a [`SeatLimit`].

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use saas_core::audit::{self, Actor, AuditRecord};
use saas_core::clock::{Clock, SystemClock};
use saas_core::{Principal, TenantId, UserId};
use saas_tenancy::TenantTx;
use serde_json::json;
use sqlx::{PgConnection, Row};

use crate::error::{InvitationError, MailerError, MemberError};
use crate::membership::{Member, Memberships, acting_rank, ranked, require_manager};
use crate::role::{self, MANAGER_RANK};
use crate::secret::{self, Secret, Token};
use crate::users::Users;

saas_core::define_id!(
    /// An invitation to join a tenant.
    pub struct InvitationId("invitation");
);

const TOKEN_PREFIX: &str = "inv";

/// An invitation, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Invitation {
    /// Its id.
    pub id: InvitationId,
    /// The inviting tenant.
    pub tenant_id: TenantId,
    /// The invited address, lower-cased.
    pub email: String,
    /// The role the invitee gets.
    pub role: String,
    /// Who invited.
    pub invited_by: UserId,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When the link stops working.
    pub expires_at: DateTime<Utc>,
    /// How many times it was sent.
    pub sent_count: i32,
    /// When it was accepted.
    pub accepted_at: Option<DateTime<Utc>>,
    /// Who accepted it.
    pub accepted_by: Option<UserId>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What the mailer sends: the invitation and the link's token.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InvitationMessage {
    /// The invitation.
    pub invitation: Invitation,
    /// The token to put in the accept link. Not stored anywhere in clear.
    pub token: Secret,
    /// The inviter's email address, when known.
    pub inviter_email: Option<String>,
}

/// Sends invitation emails. [`OutboxMailer`] (feature `events`) queues a saas-events
/// e-mail job; the transaction is passed so that a send commits with the invitation or
/// not at all.
pub trait InvitationMailer: Send + Sync + 'static {
    /// Sends (or enqueues) `message`.
    fn send_invitation(
        &self,
        conn: &mut PgConnection,
        message: &InvitationMessage,
    ) -> impl Future<Output = Result<(), MailerError>> + Send;
}

/// How many seats a tenant's plan has. saas-billing implements it from entitlements.
pub trait SeatLimit: Send + Sync + 'static {
    /// The number of seats (members plus pending invitations), `None` for unlimited.
    fn seats(
        &self,
        conn: &mut PgConnection,
        tenant: TenantId,
    ) -> impl Future<Output = Result<Option<u32>, String>> + Send;
}

/// No seat limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

impl SeatLimit for Unlimited {
    async fn seats(&self, _: &mut PgConnection, _: TenantId) -> Result<Option<u32>, String> {
        Ok(None)
    }
}

/// A fixed number of seats for every tenant (tests, simple plans).
#[derive(Debug, Clone, Copy)]
pub struct FixedSeats(pub u32);

impl SeatLimit for FixedSeats {
    async fn seats(&self, _: &mut PgConnection, _: TenantId) -> Result<Option<u32>, String> {
        Ok(Some(self.0))
    }
}

/// A parsed invitation token. Parse it, open a [`TenantTx`] for [`tenant`](Self::tenant),
/// then [`Invitations::accept`].
#[derive(Debug, Clone)]
pub struct InvitationToken(Token);

impl InvitationToken {
    /// Parses the token from an accept link.
    pub fn parse(s: &str) -> Result<Self, InvitationError> {
        Token::parse(TOKEN_PREFIX, s.trim())
            .map(Self)
            .ok_or(InvitationError::MalformedToken)
    }
    /// The tenant that sent the invitation.
    pub fn tenant(&self) -> TenantId {
        TenantId::from_uuid(self.0.tenant)
    }
    /// The invitation.
    pub fn invitation(&self) -> InvitationId {
        InvitationId::from_uuid(self.0.id)
    }
}

/// Invites, resends, revokes, lists and accepts invitations.
#[derive(Clone)]
pub struct Invitations<M, L = Unlimited> {
    memberships: Memberships,
    mailer: Arc<M>,
    seats: Arc<L>,
    ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl<M, L> std::fmt::Debug for Invitations<M, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invitations")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "id, tenant_id, email, role, invited_by, created_at, expires_at, sent_count, \
                       accepted_at, accepted_by, revoked_at";

fn invitation_from(row: &sqlx::postgres::PgRow) -> Result<Invitation, sqlx::Error> {
    Ok(Invitation {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        email: row.try_get("email")?,
        role: row.try_get("role")?,
        invited_by: row.try_get("invited_by")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        sent_count: row.try_get("sent_count")?,
        accepted_at: row.try_get("accepted_at")?,
        accepted_by: row.try_get("accepted_by")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// A plausible email address: one `@`, something on each side, a dot in the domain, no
/// spaces or control characters, at most 320 characters. Returned lower-cased.
pub fn normalise_email(email: &str) -> Result<String, InvitationError> {
    let e = email.trim().to_lowercase();
    let ok = e.len() <= 320
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if ok {
        Ok(e)
    } else {
        Err(InvitationError::InvalidEmail(email.to_owned()))
    }
}

impl<M: InvitationMailer> Invitations<M, Unlimited> {
    /// Invitations sending through `mailer`, valid for 7 days, without a seat limit.
    pub fn new(memberships: Memberships, mailer: M) -> Self {
        Self {
            memberships,
            mailer: Arc::new(mailer),
            seats: Arc::new(Unlimited),
            ttl: Duration::days(7),
            clock: Arc::new(SystemClock),
        }
    }
}

impl<M: InvitationMailer, L: SeatLimit> Invitations<M, L> {
    /// Refuses invitations beyond the seats `limit` allows.
    pub fn seat_limit<L2: SeatLimit>(self, limit: L2) -> Invitations<M, L2> {
        Invitations {
            memberships: self.memberships,
            mailer: self.mailer,
            seats: Arc::new(limit),
            ttl: self.ttl,
            clock: self.clock,
        }
    }

    /// How long a link stays valid (7 days by default).
    pub fn valid_for(mut self, ttl: std::time::Duration) -> Self {
        self.ttl = Duration::from_std(ttl).unwrap_or(Duration::days(7));
        self
    }

    /// Uses `clock` for timestamps and expiry.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Invites `email` with `role`. The inviter needs the admin or owner role and may not
    /// invite above their own role; the address may not belong to a member or have a
    /// pending invitation; the plan must have a free seat.
    pub async fn invite(
        &self,
        tx: &mut TenantTx,
        actor: &Principal,
        email: &str,
        role: &str,
    ) -> Result<Invitation, InvitationError> {
        let email = normalise_email(email)?;
        // Built-in or the tenant's custom role, with its rank.
        let rank = ranked(tx, self.memberships.model(), &[role])
            .await?
            .first()
            .map_or(u8::MAX, |(_, rank)| *rank);
        let actor_rank = acting_rank(tx, actor).await?;
        if actor_rank < MANAGER_RANK {
            return Err(MemberError::Forbidden.into());
        }
        if rank > actor_rank {
            return Err(MemberError::AboveOwnRole(role.to_owned()).into());
        }
        let tenant = tx.tenant();
        let now = self.clock.now();
        // One invitation at a time per tenant: seat counting must not race.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 23))")
            .bind(tenant)
            .execute(&mut **tx)
            .await?;
        let is_member: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM saas.memberships m JOIN saas.users u ON u.id = m.user_id \
             WHERE m.tenant_id = $1 AND lower(u.email) = $2)",
        )
        .bind(tenant)
        .bind(&email)
        .fetch_one(&mut **tx)
        .await?;
        if is_member {
            return Err(MemberError::AlreadyMember.into());
        }
        // An expired pending invitation gives way to the new one.
        sqlx::query(
            "UPDATE saas.invitations SET revoked_at = $3 WHERE tenant_id = $1 AND email = $2 \
             AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at <= $3",
        )
        .bind(tenant)
        .bind(&email)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        self.check_seats(tx, now, 1).await?;
        let id = InvitationId::new();
        let token = Token::new(tenant.into_uuid(), id.into_uuid());
        let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO saas.invitations (tenant_id, id, email, role, token_hash, invited_by, created_at, expires_at, last_sent_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7) ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
        )))
        .bind(tenant)
        .bind(id)
        .bind(&email)
        .bind(role)
        .bind(&token.digest()[..])
        .bind(actor.user_id)
        .bind(now)
        .bind(now + self.ttl)
        .fetch_optional(&mut **tx)
        .await?;
        let invitation = match inserted {
            Some(row) => invitation_from(&row)?,
            None => return Err(InvitationError::AlreadyInvited(email)),
        };
        let record = AuditRecord::new(tenant, Actor::from(actor), "invitation.created")?
            .target("invitation", id)
            .metadata(json!({ "after": { "email": invitation.email, "role": invitation.role, "expires_at": invitation.expires_at } }))
            .at(now);
        audit::record(tx, &record).await?;
        self.send(tx, actor, &invitation, &token).await?;
        Ok(invitation)
    }

    /// Sends a pending invitation again with a new link (the old one stops working) and
    /// a fresh expiry.
    pub async fn resend(
        &self,
        tx: &mut TenantTx,
        actor: &Principal,
        id: InvitationId,
    ) -> Result<Invitation, InvitationError> {
        require_manager(tx, actor).await?;
        let tenant = tx.tenant();
        let now = self.clock.now();
        let token = Token::new(tenant.into_uuid(), id.into_uuid());
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE saas.invitations SET token_hash = $3, expires_at = $4, last_sent_at = $5, sent_count = sent_count + 1 \
             WHERE tenant_id = $1 AND id = $2 AND accepted_at IS NULL AND revoked_at IS NULL RETURNING {COLUMNS}"
        )))
        .bind(tenant)
        .bind(id)
        .bind(&token.digest()[..])
        .bind(now + self.ttl)
        .bind(now)
        .fetch_optional(&mut **tx)
        .await?;
        let invitation = match row {
            Some(row) => invitation_from(&row)?,
            None => return Err(self.why_unusable(tx, id).await?),
        };
        let record = AuditRecord::new(tenant, Actor::from(actor), "invitation.resent")?
            .target("invitation", id)
            .metadata(json!({ "after": { "expires_at": invitation.expires_at, "sent_count": invitation.sent_count } }))
            .at(now);
        audit::record(tx, &record).await?;
        self.send(tx, actor, &invitation, &token).await?;
        Ok(invitation)
    }

    /// Revokes a pending invitation.
    pub async fn revoke(
        &self,
        tx: &mut TenantTx,
        actor: &Principal,
        id: InvitationId,
    ) -> Result<Invitation, InvitationError> {
        require_manager(tx, actor).await?;
        let tenant = tx.tenant();
        let now = self.clock.now();
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE saas.invitations SET revoked_at = $3 \
             WHERE tenant_id = $1 AND id = $2 AND accepted_at IS NULL AND revoked_at IS NULL RETURNING {COLUMNS}"
        )))
        .bind(tenant)
        .bind(id)
        .bind(now)
        .fetch_optional(&mut **tx)
        .await?;
        let invitation = match row {
            Some(row) => invitation_from(&row)?,
            None => return Err(self.why_unusable(tx, id).await?),
        };
        let record = AuditRecord::new(tenant, Actor::from(actor), "invitation.revoked")?
            .target("invitation", id)
            .metadata(json!({ "before": { "revoked_at": null }, "after": { "revoked_at": now } }))
            .at(now);
        audit::record(tx, &record).await?;
        Ok(invitation)
    }

    /// The invitations not yet accepted, revoked or expired, newest first.
    pub async fn pending(&self, tx: &mut TenantTx) -> Result<Vec<Invitation>, InvitationError> {
        let tenant = tx.tenant();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM saas.invitations WHERE tenant_id = $1 AND accepted_at IS NULL \
             AND revoked_at IS NULL AND expires_at > $2 ORDER BY created_at DESC"
        )))
        .bind(tenant)
        .bind(self.clock.now())
        .fetch_all(&mut **tx)
        .await?;
        Ok(rows.iter().map(invitation_from).collect::<Result<_, _>>()?)
    }

    /// Accepts an invitation as `principal` (signed in with the identity provider). `tx`
    /// must be a transaction for [`InvitationToken::tenant`]; it is made to act for the
    /// principal (so that the user's own identity can be read). The user's verified email
    /// must be the invited one unless the tenant allows any; the link works once; and the
    /// inviter must still be a member whose rank covers the role
    /// ([`InvitationError::Revoked`] otherwise).
    pub async fn accept(
        &self,
        tx: &mut TenantTx,
        principal: &Principal,
        token: &InvitationToken,
    ) -> Result<Member, InvitationError> {
        let tenant = tx.tenant();
        if tenant != token.tenant() || !matches!(principal.method, saas_core::AuthMethod::IdToken) {
            return Err(InvitationError::NotFound);
        }
        let now = self.clock.now();
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS}, token_hash FROM saas.invitations WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
        )))
        .bind(tenant)
        .bind(token.invitation())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(InvitationError::NotFound)?;
        let hash: Vec<u8> = row.try_get("token_hash")?;
        if !secret::verify(&token.0.secret, &hash) {
            return Err(InvitationError::NotFound);
        }
        let invitation = invitation_from(&row)?;
        if invitation.accepted_at.is_some() {
            return Err(InvitationError::AlreadyAccepted);
        }
        if invitation.revoked_at.is_some() {
            return Err(InvitationError::Revoked);
        }
        if invitation.expires_at <= now {
            return Err(InvitationError::Expired);
        }
        // The inviter must still be a member whose rank covers the role: an invitation
        // does not outlive its inviter's rights.
        let inviter: Option<Vec<String>> =
            sqlx::query_scalar("SELECT roles FROM saas.memberships WHERE tenant_id = $1 AND user_id = $2")
                .bind(tenant)
                .bind(invitation.invited_by)
                .fetch_optional(&mut **tx)
                .await?;
        let inviter_rank = inviter.as_deref().map_or(0, role::max_rank);
        let role_rank = ranked(tx, self.memberships.model(), &[invitation.role.as_str()])
            .await?
            .first()
            .map_or(u8::MAX, |(_, rank)| *rank);
        if inviter_rank < MANAGER_RANK || role_rank > inviter_rank {
            return Err(InvitationError::Revoked);
        }
        let settings = Memberships::settings(tx).await?;
        if !settings.invitations_any_email {
            // The accepting user reads their own identity (row-level security shows a
            // user only themselves and the tenant's members).
            tx.act_as(principal.user_id).await.map_err(crate::db_err)?;
            let user = Users::get(tx, principal.user_id).await?;
            let matches =
                user.is_some_and(|u| u.email_verified && u.email.as_deref() == Some(invitation.email.as_str()));
            if !matches {
                return Err(InvitationError::WrongEmail);
            }
        }
        // The plan may have shrunk since the invitation: this invitation's seat is its own.
        self.check_seats(tx, now, 0).await?;
        let member = self
            .memberships
            .insert(
                tx,
                &Actor::from(principal),
                principal.user_id,
                vec![invitation.role.clone()],
                Some(invitation.invited_by),
            )
            .await?;
        sqlx::query("UPDATE saas.invitations SET accepted_at = $3, accepted_by = $4 WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(invitation.id)
            .bind(now)
            .bind(principal.user_id)
            .execute(&mut **tx)
            .await?;
        let record = AuditRecord::new(tenant, Actor::from(principal), "invitation.accepted")?
            .target("invitation", invitation.id)
            .metadata(
                json!({ "before": { "accepted_at": null }, "after": { "accepted_at": now, "role": invitation.role } }),
            )
            .at(now);
        audit::record(tx, &record).await?;
        Ok(member)
    }

    async fn send(
        &self,
        tx: &mut TenantTx,
        actor: &Principal,
        invitation: &Invitation,
        token: &Token,
    ) -> Result<(), InvitationError> {
        let inviter = Users::get(tx, actor.user_id).await?;
        let message = InvitationMessage {
            invitation: invitation.clone(),
            token: Secret::new(token.encode(TOKEN_PREFIX)),
            inviter_email: inviter.and_then(|u| u.email),
        };
        self.mailer.send_invitation(tx, &message).await?;
        Ok(())
    }

    /// Members plus pending invitations, plus `adding`, must fit the plan's seats.
    async fn check_seats(&self, tx: &mut TenantTx, now: DateTime<Utc>, adding: i64) -> Result<(), InvitationError> {
        let tenant = tx.tenant();
        let Some(limit) = self.seats.seats(tx, tenant).await.map_err(InvitationError::SeatCheck)? else {
            return Ok(());
        };
        let used: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM saas.memberships WHERE tenant_id = $1) + \
                    (SELECT count(*) FROM saas.invitations WHERE tenant_id = $1 AND accepted_at IS NULL \
                       AND revoked_at IS NULL AND expires_at > $2)",
        )
        .bind(tenant)
        .bind(now)
        .fetch_one(&mut **tx)
        .await?;
        if used + adding > i64::from(limit) {
            return Err(InvitationError::SeatLimit { limit });
        }
        Ok(())
    }

    async fn why_unusable(&self, tx: &mut TenantTx, id: InvitationId) -> Result<InvitationError, InvitationError> {
        let row = sqlx::query(
            "SELECT accepted_at IS NOT NULL AS accepted FROM saas.invitations WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tx.tenant())
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(match row {
            None => InvitationError::NotFound,
            Some(r) if r.try_get::<bool, _>("accepted")? => InvitationError::AlreadyAccepted,
            Some(_) => InvitationError::Revoked,
        })
    }
}

/// Invitation e-mails through saas-events' outbox (feature `events`): the built-in
/// `invitation` template, queued in the inviting transaction, with the accept link — which
/// carries the token — sealed by a saas-core [`Keyring`](saas_core::crypto::Keyring), so
/// the job table never holds it in clear. Run saas-events' `MailHandler` with
/// `unseal_with` and the same keyring.
#[cfg(feature = "events")]
#[derive(Debug, Clone)]
pub struct OutboxMailer {
    keyring: Arc<saas_core::crypto::Keyring>,
    accept_url: String,
}

#[cfg(feature = "events")]
impl OutboxMailer {
    /// Links go to `accept_url` (the page that takes the token, such as
    /// `https://app.example.com/invitations/accept`) with `token=<token>` added.
    pub fn new(keyring: Arc<saas_core::crypto::Keyring>, accept_url: impl Into<String>) -> Self {
        Self {
            keyring,
            accept_url: accept_url.into(),
        }
    }
}

#[cfg(feature = "events")]
impl InvitationMailer for OutboxMailer {
    async fn send_invitation(&self, conn: &mut PgConnection, message: &InvitationMessage) -> Result<(), MailerError> {
        let fail = |e: &dyn std::fmt::Display| MailerError(e.to_string());
        let inv = &message.invitation;
        let tenant: Option<String> = sqlx::query_scalar("SELECT name FROM saas.tenants WHERE id = $1")
            .bind(inv.tenant_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| fail(&e))?;
        let sep = if self.accept_url.contains('?') { '&' } else { '?' };
        let link = format!("{}{sep}token={}", self.accept_url, message.token.expose());
        let context = serde_json::json!({
            "inviter": message.inviter_email.as_deref().unwrap_or("A colleague"),
            "tenant": tenant.as_deref().unwrap_or("your team"),
            "role": inv.role,
            "expires": inv.expires_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        });
        saas_events::mail::queue_sealed(
            conn,
            inv.tenant_id,
            &self.keyring,
            "invitation",
            &[inv.email.as_str()],
            context,
            &[("link", link.as_str())],
        )
        .await
        .map(|_| ())
        .map_err(|e| fail(&e))
    }
}

/// A mailer that keeps every message in memory instead of sending it. For tests and
/// development only: nothing leaves the process.
#[cfg(any(test, feature = "testkit"))]
#[derive(Debug, Clone, Default)]
pub struct RecordingMailer {
    sent: Arc<std::sync::Mutex<Vec<InvitationMessage>>>,
}

#[cfg(any(test, feature = "testkit"))]
impl RecordingMailer {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }
    /// The messages "sent" so far.
    pub fn sent(&self) -> Vec<InvitationMessage> {
        self.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }
    /// The most recent message's token.
    pub fn last_token(&self) -> Option<String> {
        self.sent().last().map(|m| m.token.expose().to_owned())
    }
}

#[cfg(any(test, feature = "testkit"))]
impl InvitationMailer for RecordingMailer {
    async fn send_invitation(&self, _: &mut PgConnection, message: &InvitationMessage) -> Result<(), MailerError> {
        if let Ok(mut sent) = self.sent.lock() {
            sent.push(message.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn emails() {
        assert_eq!(normalise_email(" Ann@Example.COM ").unwrap(), "ann@example.com");
        for bad in [
            "", "ann", "ann@", "@x.io", "a b@x.io", "a@x", "a@@x.io", "a@.x.io", "a@x.io.",
        ] {
            assert!(normalise_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_round_trip() {
        let t = Token::new(Uuid::now_v7(), Uuid::now_v7());
        let parsed = InvitationToken::parse(&t.encode(TOKEN_PREFIX)).unwrap();
        assert_eq!(parsed.tenant().into_uuid(), t.tenant);
        assert!(InvitationToken::parse("inv_short").is_err());
    }
}
