//! Users: the identity provider's subjects, provisioned on first sight.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use moka::future::Cache;
use saas_core::UserId;
use saas_core::clock::{Clock, SystemClock};
use sqlx::{PgConnection, PgPool, Row};

use crate::claims::Identity;
use crate::error::AuthError;

/// A user as stored: one row per identity-provider subject.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct User {
    /// Our id for the user.
    pub id: UserId,
    /// The issuer that knows them.
    pub issuer: String,
    /// The issuer's id for them (`sub`).
    pub subject: String,
    /// Their email address, lower-cased, as the issuer last said.
    pub email: Option<String>,
    /// Whether the issuer verified that address.
    pub email_verified: bool,
    /// Their display name.
    pub name: Option<String>,
    /// When we first saw them.
    pub created_at: DateTime<Utc>,
    /// When their details last changed.
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, PartialEq, Eq)]
struct Seen {
    id: UserId,
    email: Option<String>,
    email_verified: bool,
    name: Option<String>,
}

/// Maps identity-provider subjects to [`UserId`]s, creating the user on first sight and
/// keeping the email address in sync. Remembers whom it has seen (10 minutes) so that a
/// known user with unchanged details costs no database round trip.
///
/// `saas.users` is under row-level security: the application role reads a user only as
/// that user (the transaction's `app.user_id`, or while provisioning the token's issuer
/// and subject) or as a member of the transaction's tenant, and writes only the caller's
/// own row.
#[derive(Clone)]
pub struct Users {
    pool: PgPool,
    seen: Cache<(String, String), Arc<Seen>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users").finish_non_exhaustive()
    }
}

impl Users {
    /// Users stored through `pool` (the application role).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            seen: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses `clock` for timestamps.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The user for `identity`: created if new, email and name updated if changed.
    pub async fn provision(&self, identity: &Identity) -> Result<UserId, AuthError> {
        let key = (identity.issuer.clone(), identity.subject.clone());
        if let Some(seen) = self.seen.get(&key).await
            && identity.email.as_ref().is_none_or(|e| seen.email.as_ref() == Some(e))
            && (identity.email.is_none() || seen.email_verified == identity.email_verified)
            && identity.name.as_ref().is_none_or(|n| seen.name.as_ref() == Some(n))
        {
            return Ok(seen.id);
        }
        let now = self.clock.now();
        // Row-level security shows a user only themselves: while provisioning, "themselves"
        // is the verified token's (issuer, subject), set for this transaction alone.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('app.idp_issuer', $1, true), set_config('app.idp_subject', $2, true)")
            .bind(&identity.issuer)
            .bind(&identity.subject)
            .execute(&mut *tx)
            .await?;
        // A token without an email (or name) keeps what we knew.
        let row = sqlx::query(
            "INSERT INTO saas.users AS u (id, issuer, subject, email, email_verified, name, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (issuer, subject) DO UPDATE SET \
               email = coalesce(EXCLUDED.email, u.email), \
               email_verified = CASE WHEN EXCLUDED.email IS NULL THEN u.email_verified ELSE EXCLUDED.email_verified END, \
               name = coalesce(EXCLUDED.name, u.name), \
               updated_at = EXCLUDED.updated_at \
             RETURNING id, email, email_verified, name",
        )
        .bind(UserId::new())
        .bind(&identity.issuer)
        .bind(&identity.subject)
        .bind(identity.email.as_deref())
        .bind(identity.email_verified)
        .bind(identity.name.as_deref())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let seen = Arc::new(Seen {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            email_verified: row.try_get("email_verified")?,
            name: row.try_get("name")?,
        });
        let id = seen.id;
        self.seen.insert(key, seen).await;
        Ok(id)
    }

    /// Loads a user, as row-level security lets the transaction see them: the
    /// transaction's own user (`TenantTx::begin_as` / `act_as`) and the members of its
    /// tenant; anyone else is `None`.
    pub async fn get(conn: &mut PgConnection, id: UserId) -> Result<Option<User>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT id, issuer, subject, email, email_verified, name, created_at, updated_at \
             FROM saas.users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(conn)
        .await?;
        row.map(|r| {
            Ok(User {
                id: r.try_get("id")?,
                issuer: r.try_get("issuer")?,
                subject: r.try_get("subject")?,
                email: r.try_get("email")?,
                email_verified: r.try_get("email_verified")?,
                name: r.try_get("name")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .transpose()
    }
}
