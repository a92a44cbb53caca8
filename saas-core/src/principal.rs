//! Who is calling: the value authentication puts in the request extensions.
//!
//! `saas-authz` builds a [`Principal`] from a verified token or API key; tenancy,
//! permissions and audit read it. It lives here so that every crate can name it.

use std::sync::Arc;

use crate::id::{ApiKeyId, TenantId, UserId};

crate::define_id!(
    /// A support session: platform staff acting inside one tenant, time-boxed.
    pub struct SupportSessionId("support_session");
);

/// How the caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMethod {
    /// A token from the identity provider.
    IdToken,
    /// A member's API key of a tenant: acts for the member who created it, limited to its
    /// scopes, and dies with that membership.
    ApiKey(ApiKeyId),
    /// A service-account API key: belongs to the tenant itself, holds its own role, and
    /// survives member removal. Its principal's `user_id` is the key's id (it is nobody).
    ServiceAccount(ApiKeyId),
    /// Platform staff inside a support session.
    SupportSession(SupportSessionId),
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Principal {
    /// The user (for API keys: the key's owner; for support: the staff member).
    pub user_id: UserId,
    /// How the caller authenticated.
    pub method: AuthMethod,
    /// Whether multi-factor authentication was satisfied.
    pub mfa: bool,
    /// For API keys: the permissions the key is limited to.
    pub scopes: Option<Arc<[String]>>,
    /// The identity provider's organisation id, if the token carried one.
    pub org_id: Option<String>,
    /// The one tenant this credential may act in (API keys belong to a tenant). The
    /// tenant layer answers 404 when such a principal names any other tenant.
    pub tenant_id: Option<TenantId>,
}

impl Principal {
    /// A user authenticated by the identity provider.
    pub fn user(user_id: UserId) -> Self {
        Self {
            user_id,
            method: AuthMethod::IdToken,
            mfa: false,
            scopes: None,
            org_id: None,
            tenant_id: None,
        }
    }

    /// A tenant's API key, acting for `owner` (who created it), limited to `scopes`.
    pub fn api_key(owner: UserId, key: ApiKeyId, tenant: TenantId, scopes: Arc<[String]>) -> Self {
        Self {
            method: AuthMethod::ApiKey(key),
            scopes: Some(scopes),
            tenant_id: Some(tenant),
            ..Self::user(owner)
        }
    }

    /// A tenant's service-account key, holding its own role, limited to `scopes`. The
    /// principal's `user_id` is the key's id: the evaluator knows the key as a member of
    /// its tenant with the key's role.
    pub fn service_account(key: ApiKeyId, tenant: TenantId, scopes: Arc<[String]>) -> Self {
        Self {
            method: AuthMethod::ServiceAccount(key),
            scopes: Some(scopes),
            tenant_id: Some(tenant),
            ..Self::user(UserId::from_uuid(key.into_uuid()))
        }
    }

    /// Platform staff acting through a support session.
    pub fn support(staff: UserId, session: SupportSessionId) -> Self {
        Self {
            method: AuthMethod::SupportSession(session),
            ..Self::user(staff)
        }
    }

    /// Sets whether MFA was satisfied.
    pub fn with_mfa(mut self, mfa: bool) -> Self {
        self.mfa = mfa;
        self
    }

    /// Sets the identity provider's organisation id.
    pub fn with_org(mut self, org: impl Into<String>) -> Self {
        self.org_id = Some(org.into());
        self
    }

    /// The API key (a member's or a service account's), when the caller authenticated
    /// with one.
    pub fn api_key_id(&self) -> Option<ApiKeyId> {
        match self.method {
            AuthMethod::ApiKey(id) | AuthMethod::ServiceAccount(id) => Some(id),
            _ => None,
        }
    }

    /// Whether this principal may act in `tenant` at all (its credential is not bound to
    /// another tenant). Membership is a separate question.
    pub fn may_act_in(&self, tenant: TenantId) -> bool {
        self.tenant_id.is_none_or(|bound| bound == tenant)
    }

    /// The support session, when the caller is staff acting through one.
    pub fn support_session(&self) -> Option<SupportSessionId> {
        match self.method {
            AuthMethod::SupportSession(id) => Some(id),
            _ => None,
        }
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Principal {
    type Rejection = crate::Problem;
    async fn from_request_parts(parts: &mut http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(crate::Problem::unauthenticated)
    }
}
