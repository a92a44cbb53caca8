//! `RequirePermission`: a route layer answering 403 `permission-denied` unless the
//! principal holds a permission in the request's tenant.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use saas_core::{IntoProblem, Principal, Problem, TenantId};
use tower::{Layer, Service};

use super::{Authz, Permission};
use crate::error::AuthError;

/// Requires a tenant-wide permission on a route. The permission name is checked against
/// the model when the layer is built: an unknown name is an error there, not a silent
/// deny at run time. Needs the principal (authentication) and the tenant (tenant layer)
/// in the extensions; loads the tenant's policy on first use.
#[derive(Debug, Clone)]
pub struct RequirePermission {
    authz: Authz,
    permission: Permission,
    name: &'static str,
}

impl RequirePermission {
    /// Requires `permission` (a registered name) as decided by `authz`.
    pub fn new(authz: &Authz, permission: &'static str) -> Result<Self, super::ModelError> {
        Ok(Self {
            permission: authz.permission(permission)?,
            authz: authz.clone(),
            name: permission,
        })
    }
}

impl<S> Layer<S> for RequirePermission {
    type Service = RequirePermissionService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequirePermissionService {
            inner,
            config: self.clone(),
        }
    }
}

/// The service made by [`RequirePermission`].
#[derive(Debug, Clone)]
pub struct RequirePermissionService<S> {
    inner: S,
    config: RequirePermission,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequirePermissionService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: From<Bytes> + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = saas_core::service::BoxResponseFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let mut inner = saas_core::service::take_ready(&mut self.inner);
        let config = self.config.clone();
        Box::pin(async move {
            let Some(principal) = req.extensions().get::<Principal>().cloned() else {
                return Ok(AuthError::Missing.to_problem().into_http());
            };
            let Some(tenant) = req.extensions().get::<TenantId>().copied() else {
                return Ok(Problem::internal()
                    .with_internal("RequirePermission needs TenantLayer before it")
                    .into_http());
            };
            if let Err(e) = config.authz.ensure(tenant).await {
                return Ok(e.to_problem().into_http());
            }
            let decision = config.authz.check(&principal, tenant, config.permission, None);
            if !decision.allowed() {
                let why = config.authz.explain(tenant, &decision);
                tracing::info!(
                    user_id = %principal.user_id, tenant_id = %tenant, permission = config.name,
                    reason = %why.reason, roles = ?why.roles, "permission denied"
                );
                return Ok(super::permission_denied(config.name).into_http());
            }
            inner.call(req).await
        })
    }
}

#[cfg(feature = "axum")]
mod extract {
    use axum::extract::FromRequestParts;
    use http::request::Parts;
    use saas_core::{IntoProblem, Problem, TenantId};

    use crate::rbac::Authz;

    /// The evaluator bound to the request's tenant, with its policy loaded. Provide the
    /// `Authz` as an `Extension`.
    impl<S: Send + Sync> FromRequestParts<S> for Authz {
        type Rejection = Problem;
        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
            let authz = parts
                .extensions
                .get::<Authz>()
                .cloned()
                .ok_or_else(|| Problem::internal().with_internal("no Authz extension or state"))?;
            let Some(tenant) = parts.extensions.get::<TenantId>().copied() else {
                return Err(Problem::internal().with_internal("Authz needs TenantLayer before it"));
            };
            authz.ensure(tenant).await.map_err(|e| e.to_problem())?;
            Ok(authz.for_tenant(tenant))
        }
    }
}
