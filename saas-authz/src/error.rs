//! The errors of authentication, API keys, memberships and invitations.

use http::{HeaderValue, StatusCode, header};
use saas_core::{IntoProblem, Problem};

/// Why a request could not be authenticated. Every variant but the last three answers 401
/// with a `WWW-Authenticate: Bearer` challenge; the body names the kind of failure, never
/// which part of a secret was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credentials on a route that needs them.
    #[error("no credentials were presented")]
    Missing,
    /// The `Authorization` header or the token is not well formed (wrong scheme, not a
    /// JWT, too long, not valid base64 or JSON, an algorithm we never accept).
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    /// The token's signature does not verify with the issuer's key.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// The token names a key the issuer does not publish (even after refetching its keys).
    #[error("the token was signed with an unknown key")]
    UnknownKey,
    /// The token's algorithm is not the one its key is for, or not allowed.
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    /// `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    #[error("the token is for another audience")]
    WrongAudience,
    /// `azp` is not in the allow-list.
    #[error("the token was issued to a party that is not allowed")]
    WrongAuthorizedParty,
    /// A required claim is missing or has the wrong type.
    #[error("the token lacks a required claim: {0}")]
    MissingClaim(&'static str),
    /// The API key is unknown, or its secret is wrong.
    #[error("the API key is invalid")]
    InvalidApiKey,
    /// The API key was revoked.
    #[error("the API key was revoked")]
    ApiKeyRevoked,
    /// The API key has expired.
    #[error("the API key has expired")]
    ApiKeyExpired,
    /// The identity provider could not be reached to fetch its keys.
    #[error("the identity provider is unavailable: {0}")]
    IdentityProvider(String),
    /// The database could not be reached.
    #[error("database error while authenticating: {0}")]
    Database(#[from] sqlx::Error),
    /// The verifier is configured without an audience and without the explicit opt-out:
    /// every token is refused (a token the provider issued to another application would
    /// otherwise be accepted).
    #[error(
        "the token verifier has no audience: configure Oidc::audience(\"<your API identifier>\") \
         (or, for providers that set none, Oidc::without_audience_check() with authorized_parties)"
    )]
    NoAudience,
}

impl AuthError {
    /// The problem type slug for this error.
    pub fn slug(&self) -> &'static str {
        match self {
            AuthError::Missing => "authentication-required",
            AuthError::Malformed(_) => "malformed-credentials",
            AuthError::Expired => "token-expired",
            AuthError::InvalidApiKey | AuthError::ApiKeyRevoked | AuthError::ApiKeyExpired => "invalid-api-key",
            AuthError::IdentityProvider(_) | AuthError::Database(_) => "authentication-unavailable",
            AuthError::NoAudience => "authentication-misconfigured",
            _ => "invalid-token",
        }
    }
}

impl IntoProblem for AuthError {
    fn to_problem(&self) -> Problem {
        match self {
            AuthError::IdentityProvider(_) | AuthError::Database(_) => {
                Problem::unavailable().with_type(self.slug()).with_internal(self)
            }
            AuthError::NoAudience => Problem::internal().with_type(self.slug()).with_internal(self),
            AuthError::Missing => Problem::unauthenticated()
                .with_type(self.slug())
                .with_detail("This endpoint needs a bearer token or an API key.")
                .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")),
            _ => {
                let challenge = if matches!(self, AuthError::Malformed(_)) {
                    "Bearer error=\"invalid_request\""
                } else {
                    "Bearer error=\"invalid_token\""
                };
                Problem::unauthenticated()
                    .with_type(self.slug())
                    .with_detail(self.to_string())
                    .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge))
            }
        }
    }
}

/// Configuring an issuer failed: discovery or the key set could not be fetched or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerError {
    /// The HTTP request failed or answered an error status.
    #[error("fetching {url} failed: {reason}")]
    Fetch {
        /// What was fetched.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The discovery document or key set is not what the specification says.
    #[error("{url} is not a valid {what}: {reason}")]
    Invalid {
        /// What was fetched.
        url: String,
        /// Discovery document or JWKS.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The discovery document names another issuer than the one asked for.
    #[error("discovery at {url} names issuer {found:?}, expected {expected:?}")]
    IssuerMismatch {
        /// The discovery URL.
        url: String,
        /// The configured issuer.
        expected: String,
        /// The issuer in the document.
        found: String,
    },
}

/// An API key operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiKeyError {
    /// The name is empty or longer than 100 characters.
    #[error("an API key needs a name of 1 to 100 characters")]
    InvalidName,
    /// A scope is not a permission name (`resource:action` or `resource:*`).
    #[error("{0:?} is not a permission name (resource:action)")]
    InvalidScope(String),
    /// The expiry is not in the future.
    #[error("the expiry must be in the future")]
    ExpiryInPast,
    /// No such key in this tenant.
    #[error("no such API key")]
    NotFound,
    /// Only members with the admin or owner role manage API keys, and a service account's
    /// role may not rank above its creator's.
    #[error("managing API keys needs the admin or owner role, and a service account's role may not rank above yours")]
    Forbidden,
    /// A service account's role does not exist in this tenant.
    #[error("no role {0:?} in this organisation")]
    UnknownRole(String),
    /// Writing the audit record failed.
    #[error(transparent)]
    Audit(#[from] saas_core::audit::AuditError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl IntoProblem for ApiKeyError {
    fn to_problem(&self) -> Problem {
        match self {
            ApiKeyError::InvalidName
            | ApiKeyError::InvalidScope(_)
            | ApiKeyError::ExpiryInPast
            | ApiKeyError::UnknownRole(_) => {
                Problem::unprocessable(self.to_string()).with_type("invalid-api-key-request")
            }
            ApiKeyError::NotFound => Problem::not_found().with_type("api-key-not-found"),
            ApiKeyError::Forbidden => Problem::forbidden(self.to_string()).with_type("permission-denied"),
            ApiKeyError::Audit(e) => e.to_problem(),
            ApiKeyError::Database(e) => e.to_problem(),
        }
    }
}

/// A membership change was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemberError {
    /// A role name is not one this tenant knows.
    #[error("unknown role {0:?}")]
    UnknownRole(String),
    /// A member needs at least one role (and at most 16).
    #[error("a member needs between 1 and 16 roles")]
    NoRoles,
    /// The user is not a member of this tenant.
    #[error("no such member")]
    NotFound,
    /// The user is a member already.
    #[error("the user is already a member")]
    AlreadyMember,
    /// The user does not exist.
    #[error("no such user")]
    UnknownUser,
    /// The change would leave the tenant without an owner.
    #[error("the last owner cannot leave or lose the owner role; make another member owner first")]
    LastOwner,
    /// The actor may not manage members (needs admin or owner).
    #[error("managing members needs the admin or owner role")]
    Forbidden,
    /// The actor tried to grant, change or remove a role above their own.
    #[error("you cannot grant or change the role {0:?}, which is above your own")]
    AboveOwnRole(String),
    /// Writing the audit record failed.
    #[error(transparent)]
    Audit(#[from] saas_core::audit::AuditError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl IntoProblem for MemberError {
    fn to_problem(&self) -> Problem {
        match self {
            MemberError::UnknownRole(_) | MemberError::NoRoles | MemberError::UnknownUser => {
                Problem::unprocessable(self.to_string()).with_type("invalid-membership")
            }
            MemberError::NotFound => Problem::not_found().with_type("member-not-found"),
            MemberError::AlreadyMember => Problem::conflict(self.to_string()).with_type("already-member"),
            MemberError::LastOwner => Problem::conflict(self.to_string()).with_type("last-owner"),
            MemberError::Forbidden | MemberError::AboveOwnRole(_) => {
                Problem::forbidden(self.to_string()).with_type("permission-denied")
            }
            MemberError::Audit(e) => e.to_problem(),
            MemberError::Database(e) => e.to_problem(),
        }
    }
}

/// An invitation operation was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvitationError {
    /// The address is not an email address.
    #[error("{0:?} is not an email address")]
    InvalidEmail(String),
    /// The invitation token is not well formed.
    #[error("the invitation link is malformed")]
    MalformedToken,
    /// No invitation matches (unknown, or the secret is wrong).
    #[error("this invitation does not exist")]
    NotFound,
    /// The invitation has expired.
    #[error("this invitation has expired; ask for a new one")]
    Expired,
    /// The invitation was used already.
    #[error("this invitation was already accepted")]
    AlreadyAccepted,
    /// The invitation was revoked, or its inviter is no longer a member whose role covers
    /// the invited role (an invitation does not outlive its inviter's rights).
    #[error("this invitation was revoked; ask for a new one")]
    Revoked,
    /// The accepting user's verified email is not the invited one.
    #[error("this invitation was sent to another email address")]
    WrongEmail,
    /// A pending invitation for this email exists already; resend it instead.
    #[error("{0} has a pending invitation already; resend it instead")]
    AlreadyInvited(String),
    /// The plan's seats are used up (members plus pending invitations).
    #[error("all {limit} seats of the plan are taken; upgrade the plan or remove a member")]
    SeatLimit {
        /// The plan's seats.
        limit: u32,
    },
    /// A membership rule refused it (role above the inviter's, already a member...).
    #[error(transparent)]
    Member(#[from] MemberError),
    /// The mailer failed; nothing was saved.
    #[error("the invitation email could not be sent: {0}")]
    Mailer(#[from] MailerError),
    /// The seat-limit check failed to run.
    #[error("the seat limit could not be checked: {0}")]
    SeatCheck(String),
    /// Writing the audit record failed.
    #[error(transparent)]
    Audit(#[from] saas_core::audit::AuditError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl IntoProblem for InvitationError {
    fn to_problem(&self) -> Problem {
        match self {
            InvitationError::InvalidEmail(_) => {
                Problem::unprocessable(self.to_string()).with_type("invalid-invitation")
            }
            InvitationError::MalformedToken | InvitationError::NotFound => Problem::not_found()
                .with_type("invitation-not-found")
                .with_detail(self.to_string()),
            InvitationError::Expired | InvitationError::AlreadyAccepted | InvitationError::Revoked => {
                Problem::new(StatusCode::GONE)
                    .with_type("invitation-unusable")
                    .with_detail(self.to_string())
            }
            InvitationError::WrongEmail => Problem::forbidden(self.to_string()).with_type("invitation-wrong-email"),
            InvitationError::AlreadyInvited(_) => Problem::conflict(self.to_string()).with_type("already-invited"),
            InvitationError::SeatLimit { limit } => Problem::new(StatusCode::PAYMENT_REQUIRED)
                .with_type("seat-limit")
                .with_detail(self.to_string())
                .with_extension("limit", *limit),
            InvitationError::Member(e) => e.to_problem(),
            InvitationError::Mailer(_) | InvitationError::SeatCheck(_) => Problem::unavailable().with_internal(self),
            InvitationError::Audit(e) => e.to_problem(),
            InvitationError::Database(e) => e.to_problem(),
        }
    }
}

/// Sending an email failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MailerError(pub String);
