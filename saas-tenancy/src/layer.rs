//! `TenantLayer`: resolve, load, check membership, enforce the lifecycle.

use std::future::Future;
use std::sync::Arc;

use http::StatusCode;
use http::request::Parts;
use saas_core::problem::{IntoProblem, Problem};
use saas_core::service::{Gate, GateLayer, GateService, PathPrefixes};
use saas_core::telemetry::RequestSpan;
use saas_core::{Principal, SupportSessionId, TenantId};
use tower::Layer;

use crate::resolve::{TenantRef, TenantResolver};
use crate::support::{SupportDenial, SupportSessions};
use crate::tenant::{Tenant, TenantStatus, TenantStore};

/// The tenant a request is for, put in the request extensions by [`TenantLayer`].
#[derive(Debug, Clone)]
pub struct TenantContext {
    tenant: Arc<Tenant>,
    support_session: Option<SupportSessionId>,
}

impl TenantContext {
    /// The tenant's id.
    pub fn id(&self) -> TenantId {
        self.tenant.id
    }
    /// The tenant.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }
    /// The support session the request runs under, if platform staff made it.
    pub fn support_session(&self) -> Option<SupportSessionId> {
        self.support_session
    }
}

/// The membership check failed to run (not: the user is not a member).
#[derive(Debug, thiserror::Error)]
#[error("membership check failed: {0}")]
pub struct MembershipError(pub String);

/// What a [`MembershipCheck`] decided.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum MembershipVerdict {
    /// A member: admit.
    Member,
    /// Not a member: 404 `tenant-not-found`, the same answer as an unknown tenant.
    NotMember,
    /// A member who may not enter as they are (for example: the tenant requires MFA and the
    /// principal has not used it). Answered with this problem; the tenant's existence is
    /// not a secret from its own members.
    Refused(Problem),
}

impl From<bool> for MembershipVerdict {
    fn from(member: bool) -> Self {
        if member {
            MembershipVerdict::Member
        } else {
            MembershipVerdict::NotMember
        }
    }
}

/// Whether a principal belongs to a tenant. Implemented by saas-authz's memberships, and
/// by any closure `Fn(TenantId, &Principal) -> Result<bool, MembershipError>`.
pub trait MembershipCheck: Clone + Send + Sync + 'static {
    /// Whether `principal` is a member of `tenant`, and may enter.
    fn is_member(
        &self,
        tenant: TenantId,
        principal: &Principal,
    ) -> impl Future<Output = Result<MembershipVerdict, MembershipError>> + Send;
}

impl<F> MembershipCheck for F
where
    F: Fn(TenantId, &Principal) -> Result<bool, MembershipError> + Clone + Send + Sync + 'static,
{
    async fn is_member(&self, tenant: TenantId, principal: &Principal) -> Result<MembershipVerdict, MembershipError> {
        self(tenant, principal).map(MembershipVerdict::from)
    }
}

/// No membership check at all: any request that names an active tenant is let in, with
/// or without a principal. Only for public, per-tenant pages; chosen with
/// [`TenantLayerBuilder::allow_any_member`], never by default.
#[derive(Debug, Clone, Copy)]
pub struct AllowAnyMember;

impl MembershipCheck for AllowAnyMember {
    async fn is_member(&self, _: TenantId, _: &Principal) -> Result<MembershipVerdict, MembershipError> {
        Ok(MembershipVerdict::Member)
    }
}

/// The problem for an unknown tenant, a non-member, a malformed reference, and a deleted
/// tenant: one body, so that responses never reveal whether a tenant exists.
pub fn tenant_not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND)
        .with_type("tenant-not-found")
        .with_detail("No tenant you can access matches this request.")
}

/// A [`TenantLayer`] before it knows how to check membership. Not a layer: choose
/// [`membership`](Self::membership) or, explicitly, [`allow_any_member`](Self::allow_any_member).
#[derive(Debug, Clone)]
pub struct TenantLayerBuilder<R, St> {
    resolver: R,
    store: St,
}

impl<R: TenantResolver, St: TenantStore> TenantLayerBuilder<R, St> {
    /// Admits only principals for whom `check` says yes.
    pub fn membership<M: MembershipCheck>(self, check: M) -> TenantLayer<R, St, M> {
        TenantLayer {
            resolver: self.resolver,
            store: self.store,
            membership: check,
            require_principal: true,
            allow_suspended: PathPrefixes::default(),
            support: None,
        }
    }

    /// Admits every request that names an active tenant, authenticated or not.
    pub fn allow_any_member(self) -> TenantLayer<R, St, AllowAnyMember> {
        TenantLayer {
            require_principal: false,
            ..self.membership(AllowAnyMember)
        }
    }
}

/// Resolves the tenant, loads it, checks membership and lifecycle, then puts a
/// [`TenantContext`] (and the bare [`TenantId`]) in the request extensions and records
/// `tenant_id` in the request span.
///
/// | case | answer |
/// |---|---|
/// | no tenant named | 400 `tenant-required` |
/// | two sources disagree ([`agree`](TenantResolver::agree)) | 400 `tenant-conflict` |
/// | membership required, no principal | 401 |
/// | unknown, malformed, not a member, deleted, credential bound to another tenant | 404 `tenant-not-found` (one body for all) |
/// | member refused by the check (e.g. MFA required) | the check's problem |
/// | suspended | 423 `tenant-suspended`, except on paths allowed while suspended |
/// | support session expired, closed or read-only for a write | 403 `support-session-denied` |
#[derive(Clone)]
pub struct TenantLayer<R, St, M> {
    resolver: R,
    store: St,
    membership: M,
    require_principal: bool,
    allow_suspended: PathPrefixes,
    support: Option<SupportSessions>,
}

impl TenantLayer<(), (), ()> {
    /// Starts a layer resolving with `resolver` and loading from `store`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new<R: TenantResolver, St: TenantStore>(resolver: R, store: St) -> TenantLayerBuilder<R, St> {
        TenantLayerBuilder { resolver, store }
    }
}

impl<R, St, M> TenantLayer<R, St, M> {
    /// Paths (prefixes) a suspended tenant may still use, such as billing and export.
    /// Prefixes match whole segments: `/billing` allows `/billing/…`, not `/billing-export`.
    pub fn allow_while_suspended<I, P>(mut self, prefixes: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.allow_suspended = PathPrefixes::new(prefixes);
        self
    }

    /// Admits platform staff through support sessions, recording each request.
    pub fn support_sessions(mut self, sessions: SupportSessions) -> Self {
        self.support = Some(sessions);
        self
    }
}

impl<R, St, M> std::fmt::Debug for TenantLayer<R, St, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantLayer")
            .field("require_principal", &self.require_principal)
            .field("allow_suspended", &self.allow_suspended)
            .finish_non_exhaustive()
    }
}

impl<S, R: Clone, St: Clone, M: Clone> Layer<S> for TenantLayer<R, St, M> {
    type Service = TenantService<S, R, St, M>;
    fn layer(&self, inner: S) -> Self::Service {
        GateLayer::new(self.clone()).layer(inner)
    }
}

/// The service made by [`TenantLayer`].
pub type TenantService<S, R, St, M> = GateService<S, TenantLayer<R, St, M>>;

enum Admission {
    Admit(TenantContext),
    Reject(Problem),
}

impl<R: TenantResolver, St: TenantStore, M: MembershipCheck> Gate for TenantLayer<R, St, M> {
    async fn admit(&self, parts: &mut Parts) -> Result<(), Problem> {
        match self.decide(parts).await {
            Admission::Reject(problem) => Err(problem),
            Admission::Admit(ctx) => {
                if let Some(span) = parts.extensions.get::<RequestSpan>() {
                    span.record_tenant(ctx.id());
                }
                // The bare id too, for layers that cannot name this crate (rate limits).
                parts.extensions.insert(ctx.id());
                parts.extensions.insert(ctx);
                Ok(())
            }
        }
    }
}

impl<R: TenantResolver, St: TenantStore, M: MembershipCheck> TenantLayer<R, St, M> {
    async fn decide(&self, parts: &Parts) -> Admission {
        let reject = Admission::Reject;
        let reference = match self.resolver.resolve(parts).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return reject(Problem::bad_request("This request must name a tenant.").with_type("tenant-required"));
            }
            Err(e) => return reject(e.to_problem()),
        };
        let principal = parts.extensions.get::<Principal>();
        if self.require_principal && principal.is_none() {
            return reject(Problem::unauthenticated());
        }
        let loaded = match &reference {
            TenantRef::Id(id) => self.store.by_id(*id).await,
            TenantRef::Slug(slug) => self.store.by_slug(slug).await,
        };
        let tenant = match loaded {
            Ok(Some(t)) => t,
            Ok(None) => return reject(tenant_not_found()),
            Err(e) => return reject(e.to_problem()),
        };
        if matches!(tenant.status, TenantStatus::PendingDeletion | TenantStatus::Purged) {
            return reject(tenant_not_found());
        }
        // A credential bound to one tenant (an API key) never opens another, whatever the
        // membership check would say: same answer as an unknown tenant, no oracle.
        if principal.is_some_and(|p| !p.may_act_in(tenant.id)) {
            return reject(tenant_not_found());
        }
        let mut support_session = None;
        if self.require_principal
            && let Some(principal) = principal
        {
            if let Some(session) = principal.support_session() {
                let Some(support) = &self.support else {
                    return reject(tenant_not_found());
                };
                match support
                    .admit(tenant.id, principal.user_id, session, &parts.method, parts.uri.path())
                    .await
                {
                    Ok(Ok(())) => support_session = Some(session),
                    Ok(Err(SupportDenial::Unknown)) => return reject(tenant_not_found()),
                    Ok(Err(denial)) => {
                        let detail = match denial {
                            SupportDenial::Expired => "The support session has expired.",
                            _ => "The support session is read-only.",
                        };
                        return reject(Problem::forbidden(detail).with_type("support-session-denied"));
                    }
                    Err(e) => return reject(e.to_problem()),
                }
            } else {
                match self.membership.is_member(tenant.id, principal).await {
                    Ok(MembershipVerdict::Member) => {}
                    Ok(MembershipVerdict::NotMember) => return reject(tenant_not_found()),
                    Ok(MembershipVerdict::Refused(problem)) => return reject(problem),
                    Err(e) => return reject(Problem::unavailable().with_internal(e)),
                }
            }
        }
        if tenant.status == TenantStatus::Suspended && !self.allow_suspended.matches(parts.uri.path()) {
            return reject(
                Problem::new(StatusCode::LOCKED)
                    .with_type("tenant-suspended")
                    .with_detail("This organisation is suspended; contact its owner or support."),
            );
        }
        Admission::Admit(TenantContext {
            tenant: Arc::new(tenant),
            support_session,
        })
    }
}

#[cfg(feature = "axum")]
mod extract {
    use axum::extract::FromRequestParts;
    use http::request::Parts;
    use saas_core::problem::{IntoProblem, Problem};

    use super::TenantContext;
    use crate::tx::TenantTx;

    impl<S: Send + Sync> FromRequestParts<S> for TenantContext {
        type Rejection = Problem;
        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
            parts.extensions.get::<TenantContext>().cloned().ok_or_else(|| {
                Problem::internal().with_internal("TenantContext requested on a route without TenantLayer")
            })
        }
    }

    /// A ready [`TenantTx`] for the request's tenant, on the `sqlx::PgPool` found in the
    /// request extensions (`.layer(Extension(pool))`), acting for the request's
    /// [`Principal`](saas_core::Principal) when there is one.
    impl<S: Send + Sync> FromRequestParts<S> for TenantTx {
        type Rejection = Problem;
        async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
            let ctx = TenantContext::from_request_parts(parts, state).await?;
            let pool =
                parts.extensions.get::<sqlx::PgPool>().cloned().ok_or_else(|| {
                    Problem::internal().with_internal("TenantTx requested without a PgPool extension")
                })?;
            match parts.extensions.get::<saas_core::Principal>() {
                Some(p) => TenantTx::begin_as(&pool, ctx.id(), p.user_id).await,
                None => TenantTx::begin(&pool, ctx.id()).await,
            }
            .map_err(|e| e.to_problem())
        }
    }
}
