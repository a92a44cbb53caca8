//! # saas-authz
//!
//! Who is calling, and may they enter: we verify what an identity provider (Auth0, Clerk,
//! any OpenID Connect issuer) issues and never handle passwords ourselves; we add what a
//! B2B SaaS needs on top.
//!
//! - [`Issuer`] + [`Oidc`]: JWKS from a URL or discovery, cached, refreshed in the
//!   background, refetched at a bounded rate on an unknown `kid`; RS256/ES256/EdDSA only,
//!   the token's algorithm must be its key's; `iss`, `aud`, `exp`, `nbf` with leeway,
//!   `azp` allow-list; [`ClaimPreset`]s for Auth0, Clerk and plain OIDC. An audience is
//!   required (`Oidc::without_audience_check` opts out, loudly).
//! - [`AuthenticateLayer`]: bearer token or API key → [`Principal`] in the request
//!   extensions, users provisioned on first sight ([`Users`]), verified tokens cached;
//!   401 problems for everything else. [`RequireMfa`] guards sensitive routes.
//! - [`ApiKeys`]: per-tenant keys, shown once, 256-bit secrets stored as digests,
//!   scopes, expiry, revocation that reaches every process, batched `last_used_at`. A
//!   member's key acts for its creator (scopes ∩ their permissions now) and is revoked
//!   when they leave; a service-account key ([`NewApiKey::service_account`]) belongs to
//!   the tenant and holds its own role.
//! - [`Memberships`]: who belongs to a tenant with which [`role`]s, implementing
//!   `saas_tenancy::MembershipCheck` so that `TenantLayer` admits members only, and the
//!   tenant's "members must use MFA" setting. The last owner stays; nobody grants above
//!   their own role (custom roles ranked by what they include, with
//!   [`Memberships::with_model`]); removing a member ends their keys, grants and pending
//!   invitations; every change is audited with before and after.
//! - [`Invitations`]: single-use links, 7-day expiry, resend, revoke, seat limits
//!   ([`SeatLimit`]), email through an [`InvitationMailer`].
//! - [`rbac`]: the RBAC evaluator. [`Model`] registers permissions (`project:read`) as bit
//!   positions and defines the built-in roles; [`Authz`] keeps a compiled snapshot per
//!   tenant (custom roles with inheritance, members, resource grants down a parent chain)
//!   and answers [`Authz::check`] without locks or allocation, explains any [`Decision`],
//!   lists what a user may reach ([`Authz::accessible`]), follows changes through
//!   LISTEN/NOTIFY; [`RequirePermission`] guards routes.
//! - [`LocalIssuer`] (feature `local-issuer`): a development identity provider over real
//!   HTTP.
//!
//! ## A token from a local issuer, through the layer
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use axum::{Router, body::Body, routing::get};
//! use http::{Request, StatusCode};
//! use saas_authz::{AuthenticateLayer, LocalIssuer, Users};
//! use saas_core::Principal;
//! use tower::ServiceExt;
//! # let db = saas_core::testkit::TestDb::new(&[&saas_core::MIGRATOR, &saas_tenancy::MIGRATOR, &saas_authz::MIGRATOR]).await.unwrap();
//! # let pool = db.app().clone();
//!
//! let idp = LocalIssuer::start().await.unwrap(); // in production: Issuer::discover(url)
//! let app = Router::new()
//!     .route("/v1/me", get(|p: Principal| async move { p.user_id.to_string() }))
//!     .layer(AuthenticateLayer::new(Users::new(pool.clone())).oidc(idp.oidc("api").await.unwrap()));
//!
//! let token = idp.token("auth0|ada").audience("api").email("ada@example.com").sign();
//! let req = Request::get("/v1/me").header("authorization", format!("Bearer {token}")).body(Body::empty()).unwrap();
//! let res = app.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
//! let user: saas_core::UserId = std::str::from_utf8(&body).unwrap().parse().unwrap(); // provisioned on first sight
//!
//! // No credentials: 401 with a problem body, the handler never runs.
//! let res = app.oneshot(Request::get("/v1/me").body(Body::empty()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! # });
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod apikey;
mod claims;
mod error;
mod invitation;
mod jwt;
mod layer;
#[cfg(feature = "local-issuer")]
#[cfg_attr(docsrs, doc(cfg(feature = "local-issuer")))]
mod local;
mod membership;
pub mod notify;
pub mod rbac;
pub mod role;
mod secret;
mod users;

pub use apikey::{ApiKey, ApiKeys, IssuedApiKey, NewApiKey, is_permission_name};
pub use claims::{ClaimPreset, Identity};
pub use error::{ApiKeyError, AuthError, InvitationError, IssuerError, MailerError, MemberError};
#[cfg(feature = "events")]
pub use invitation::OutboxMailer;
#[cfg(any(test, feature = "testkit"))]
pub use invitation::RecordingMailer;
pub use invitation::{
    FixedSeats, Invitation, InvitationId, InvitationMailer, InvitationMessage, InvitationToken, Invitations, SeatLimit,
    Unlimited, normalise_email,
};
pub use jsonwebtoken::Algorithm;
pub use jwt::{DEFAULT_ALGORITHMS, Issuer, MAX_TOKEN_LEN, Oidc};
pub use layer::{Authenticate, AuthenticateLayer, RequireMfa, RequireMfaService};
#[cfg(feature = "local-issuer")]
pub use local::{KeyGenError, LocalIssuer, TokenBuilder};
pub use membership::{AuthSettings, Member, Memberships, mfa_required};
pub use rbac::{Access, Authz, Decision, Model, Permission, Reason, RequirePermission, ResourceRef, RoleDef};
pub use saas_core::{AuthMethod, Principal};
pub use secret::Secret;
pub use users::{User, Users};

/// The migrations of saas-authz (users, memberships, tenant auth settings, API keys,
/// invitations). Run after saas-core's and saas-tenancy's, as the migration owner.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// A transaction scoped to `tenant` on `pool` (saas-tenancy's `TenantTx`, the one way one
/// is opened), for saas-authz's own reads whose errors are database errors.
pub(crate) async fn tenant_tx(
    pool: &sqlx::PgPool,
    tenant: saas_core::TenantId,
) -> Result<saas_tenancy::TenantTx, sqlx::Error> {
    saas_tenancy::TenantTx::begin(pool, tenant).await.map_err(db_err)
}

/// The database error inside a tenancy error (the only kind beginning or committing a
/// `TenantTx` returns).
pub(crate) fn db_err(e: saas_tenancy::TenancyError) -> sqlx::Error {
    match e {
        saas_tenancy::TenancyError::Database(e) => e,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// Seconds since the epoch, by the system clock (token times are in it).
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<super::AuthenticateLayer>();
        assert_send_sync::<super::ApiKeys>();
        assert_send_sync::<super::Memberships>();
        assert_send_sync::<super::Users>();
        assert_send_sync::<super::Oidc>();
        assert_send_sync::<super::Invitations<super::RecordingMailer>>();
        assert_send_sync::<super::AuthError>();
    }
}
