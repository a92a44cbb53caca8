//! `RequirePermission`: a route layer answering 403 `permission-denied` unless the
//! principal holds a permission in the request's tenant.

use saas_core::service::{Gate, GateLayer, GateService};
use saas_core::{IntoProblem, Principal, Problem, TenantId};
use tower::Layer;

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
        GateLayer::new(self.clone()).layer(inner)
    }
}

/// The service made by [`RequirePermission`].
pub type RequirePermissionService<S> = GateService<S, RequirePermission>;

impl Gate for RequirePermission {
    async fn admit(&self, parts: &mut http::request::Parts) -> Result<(), Problem> {
        let Some(principal) = parts.extensions.get::<Principal>() else {
            return Err(AuthError::Missing.to_problem());
        };
        let Some(tenant) = parts.extensions.get::<TenantId>().copied() else {
            return Err(Problem::internal().with_internal("RequirePermission needs TenantLayer before it"));
        };
        self.authz.ensure(tenant).await.map_err(|e| e.to_problem())?;
        let decision = self.authz.check(principal, tenant, self.permission, None);
        if decision.allowed() {
            return Ok(());
        }
        let why = self.authz.explain(tenant, &decision);
        tracing::info!(
            user_id = %principal.user_id, tenant_id = %tenant, permission = self.name,
            reason = %why.reason, roles = ?why.roles, "permission denied"
        );
        Err(super::permission_denied(self.name))
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
