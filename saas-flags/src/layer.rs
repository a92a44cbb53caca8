//! Request integration: [`FlagsLayer`] puts a [`Flags`] handle bound to the request's
//! context into the extensions; [`RequireFlag`] hides a route (404) while its flag is off.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;
use saas_core::problem::Problem;
use saas_core::ratelimit::ClientIp;
use saas_core::service::{Gate, GateLayer, GateService};
use saas_core::{Principal, TenantId};

use crate::compile::FlagSet;
use crate::context::{Context, Field};
use crate::eval::{Evaluation, VariantResult};
use crate::store::FlagStore;

/// The tenant's plan, as an extension: billing (or the application) inserts it before
/// [`FlagsLayer`] runs, and plan targeting reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan(pub String);

/// The caller's role in the tenant, as an extension (for `role` constraints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role(pub String);

/// Flags for one request: the flag set current when the request arrived (so every
/// evaluation in the request agrees) and the request's context. Evaluations through it
/// are counted for the usage report.
#[derive(Clone)]
pub struct Flags {
    set: Arc<FlagSet>,
    ctx: Arc<Context>,
}

impl Flags {
    /// A handle evaluating `set` for `ctx`.
    pub fn new(set: Arc<FlagSet>, ctx: Context) -> Self {
        Flags {
            set,
            ctx: Arc::new(ctx),
        }
    }

    /// Whether `name` is on.
    pub fn is_enabled(&self, name: &str) -> bool {
        self.set.is_enabled_counted(name, &self.ctx)
    }

    /// The variant of `name` (Unleash's `getVariant`).
    pub fn variant(&self, name: &str) -> VariantResult<'_> {
        self.set.evaluate_counted(name, &self.ctx).into()
    }

    /// The full evaluation of `name`: value, variant, reason, version.
    pub fn evaluate(&self, name: &str) -> Evaluation<'_> {
        self.set.evaluate_counted(name, &self.ctx)
    }

    /// The context.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The flag set.
    pub fn set(&self) -> &FlagSet {
        &self.set
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flags")
            .field("version", &self.set.version())
            .field("context", &self.ctx)
            .finish()
    }
}

type Enrich = Arc<dyn Fn(&Parts, &mut Context) + Send + Sync>;

/// Builds each request's [`Context`] and inserts [`Flags`].
///
/// The context gets: the tenant (from saas-tenancy's layer, else the principal's bound
/// tenant), the user (from the principal), the [`Plan`] and [`Role`] extensions, the
/// client address ([`ClientIp`], or axum's `ConnectInfo` with the `axum` feature), the
/// store's environment, and whatever [`FlagsLayer::enrich`] adds. Place it after
/// authentication and the tenant layer.
#[derive(Clone)]
pub struct FlagsLayer {
    store: FlagStore,
    app_name: Option<Arc<str>>,
    enrich: Option<Enrich>,
}

impl FlagsLayer {
    /// Flags from `store`.
    pub fn new(store: FlagStore) -> Self {
        FlagsLayer {
            store,
            app_name: None,
            enrich: None,
        }
    }

    /// Sets `appName` in every context.
    pub fn app_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.app_name = Some(name.into());
        self
    }

    /// Adds to each context (custom properties, the app version, a session id…).
    pub fn enrich(mut self, f: impl Fn(&Parts, &mut Context) + Send + Sync + 'static) -> Self {
        self.enrich = Some(Arc::new(f));
        self
    }

    /// The context for a request.
    pub fn context(&self, parts: &Parts) -> Context {
        let mut ctx = Context::new().environment(self.store.environment());
        let principal = parts.extensions.get::<Principal>();
        if let Some(p) = principal {
            ctx = ctx.user(p.user_id);
        }
        if let Some(t) = parts
            .extensions
            .get::<TenantId>()
            .copied()
            .or_else(|| principal.and_then(|p| p.tenant_id))
        {
            ctx = ctx.tenant(t);
        }
        if let Some(Plan(plan)) = parts.extensions.get::<Plan>() {
            ctx.set(Field::Plan, plan.clone());
        }
        if let Some(Role(role)) = parts.extensions.get::<Role>() {
            ctx.set(Field::Role, role.clone());
        }
        if let Some(ClientIp(ip)) = parts.extensions.get::<ClientIp>() {
            ctx = ctx.remote_ip(*ip);
        } else {
            #[cfg(feature = "axum")]
            if let Some(ci) = parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            {
                ctx = ctx.remote_ip(ci.0.ip());
            }
        }
        if let Some(app) = &self.app_name {
            ctx.set(Field::AppName, app.to_string());
        }
        if let Some(f) = &self.enrich {
            f(parts, &mut ctx);
        }
        ctx
    }
}

impl fmt::Debug for FlagsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlagsLayer")
            .field("environment", &self.store.environment())
            .finish_non_exhaustive()
    }
}

impl Gate for FlagsLayer {
    async fn admit(&self, parts: &mut Parts) -> Result<(), Problem> {
        let flags = Flags::new(self.store.snapshot(), self.context(parts));
        parts.extensions.insert(flags);
        Ok(())
    }
}

impl<S> tower::Layer<S> for FlagsLayer {
    type Service = GateService<S, FlagsLayer>;
    fn layer(&self, inner: S) -> Self::Service {
        GateLayer::new(self.clone()).layer(inner)
    }
}

/// A route layer answering 404 while a flag is off for the request, so an unreleased
/// route does not exist for those who do not have it. Needs [`FlagsLayer`] outside it
/// (without it every request gets a 500 naming the missing layer).
#[derive(Debug, Clone)]
pub struct RequireFlag {
    name: Arc<str>,
}

impl RequireFlag {
    /// Requires `name` to be on.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        RequireFlag { name: name.into() }
    }
}

impl Gate for RequireFlag {
    async fn admit(&self, parts: &mut Parts) -> Result<(), Problem> {
        match parts.extensions.get::<Flags>() {
            Some(flags) if flags.is_enabled(&self.name) => Ok(()),
            Some(flags) => {
                tracing::debug!(flag = %self.name, reason = ?flags.set().evaluate(&self.name, flags.context()).reason, "route hidden by flag");
                Err(Problem::not_found())
            }
            None => Err(Problem::internal().with_internal("RequireFlag needs FlagsLayer outside it")),
        }
    }
}

impl<S> tower::Layer<S> for RequireFlag {
    type Service = GateService<S, RequireFlag>;
    fn layer(&self, inner: S) -> Self::Service {
        GateLayer::new(self.clone()).layer(inner)
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Flags {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Flags>()
            .cloned()
            .ok_or_else(|| Problem::internal().with_internal("the Flags extractor needs FlagsLayer"))
    }
}
