//! Entitlements on the request path: [`EntitlementsLayer`] puts the tenant's snapshot in
//! the request extensions, [`RequireEntitlement`] answers 402 when a route needs more
//! than the tenant has.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use saas_core::{Problem, TenantId};
use tower::{Layer, Service};

use super::set::{Decision, Entitlements, Reason};

/// The request tenant's entitlements (live: a change made during the request shows).
#[derive(Clone)]
pub struct TenantSnapshot {
    set: Arc<Entitlements>,
    tenant: TenantId,
}

impl std::fmt::Debug for TenantSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantSnapshot")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl TenantSnapshot {
    /// The tenant.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// [`Entitlements::check`] on this snapshot.
    pub fn check(&self, feature: &str, amount: u64) -> Decision {
        self.set.check(self.tenant, feature, amount)
    }

    /// The plan whose features apply, and whether there is a payment problem.
    pub fn plan(&self) -> (Arc<str>, bool) {
        self.set.plan(self.tenant)
    }

    /// `ctx` with the tenant's plan and features, for flags that target on them: the plan
    /// as `plan`, each feature it has as the property `feature.<name>` (`on`, the limit,
    /// the tier).
    pub fn flag_context(&self, ctx: saas_flags::Context) -> saas_flags::Context {
        let mut ctx = ctx.plan(&*self.plan().0);
        for (name, value) in self.set.granted(self.tenant) {
            ctx.set_property(&format!("feature.{name}"), value);
        }
        ctx
    }

    /// The 402 problem for `decision` on `feature` (`amount` asked): names the feature,
    /// the limit, the usage and the cheapest plan that would grant it.
    pub fn problem(&self, feature: &str, amount: u64, decision: &Decision) -> Problem {
        let upgrade = self
            .set
            .cheapest_plan_granting(feature, decision.used, amount)
            .map(str::to_owned);
        let detail = match (decision.reason, decision.limit) {
            (Reason::UnknownFeature, _) => format!("no plan includes {feature:?}"),
            (Reason::Lapsed, _) => format!("{feature} is unavailable until the subscription is paid"),
            (_, Some(limit)) => format!(
                "{feature}: {} of {limit} used; {amount} more is over the limit",
                decision.used
            ),
            (_, None) => format!("the current plan does not include {feature}"),
        };
        let mut p = Problem::new(StatusCode::PAYMENT_REQUIRED)
            .with_type("entitlement-required")
            .with_title("Your plan does not allow this")
            .with_detail(detail)
            .with_extension("feature", feature)
            .with_extension("reason", format!("{:?}", decision.reason).to_lowercase())
            .with_extension("used", decision.used);
        if let Some(limit) = decision.limit {
            p = p.with_extension("limit", limit);
        }
        if let Some(plan) = upgrade {
            p = p.with_extension("upgrade_to", plan);
        }
        p
    }
}

/// Puts the request tenant's [`TenantSnapshot`] in the extensions (after saas-tenancy's
/// `TenantLayer`, which puts the `TenantId` there; requests without one pass untouched).
#[derive(Clone, Debug)]
pub struct EntitlementsLayer {
    set: Arc<Entitlements>,
}

impl EntitlementsLayer {
    /// The layer serving `set`.
    pub fn new(set: Arc<Entitlements>) -> Self {
        Self { set }
    }
}

impl<S> Layer<S> for EntitlementsLayer {
    type Service = EntitlementsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        EntitlementsService {
            inner,
            set: Arc::clone(&self.set),
        }
    }
}

/// The service made by [`EntitlementsLayer`].
#[derive(Clone, Debug)]
pub struct EntitlementsService<S> {
    inner: S,
    set: Arc<Entitlements>,
}

impl<S, B> Service<Request<B>> for EntitlementsService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(tenant) = req.extensions().get::<TenantId>().copied() {
            let snapshot = TenantSnapshot {
                set: Arc::clone(&self.set),
                tenant,
            };
            req.extensions_mut().insert(snapshot);
        }
        self.inner.call(req)
    }
}

/// A route layer: 402 problem+json unless the tenant has the feature (or `amount` more of
/// it). Needs [`EntitlementsLayer`] outside it; without a snapshot it answers 500.
#[derive(Clone, Debug)]
pub struct RequireEntitlement {
    feature: Arc<str>,
    amount: u64,
}

impl RequireEntitlement {
    /// The tenant must have the switch `feature` on (or any of a tier).
    pub fn feature(feature: &str) -> Self {
        Self {
            feature: feature.into(),
            amount: 0,
        }
    }

    /// The tenant must be able to use `amount` more of the limited or metered `feature`.
    pub fn amount(feature: &str, amount: u64) -> Self {
        Self {
            feature: feature.into(),
            amount,
        }
    }
}

impl<S> Layer<S> for RequireEntitlement {
    type Service = RequireEntitlementService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireEntitlementService {
            inner,
            feature: Arc::clone(&self.feature),
            amount: self.amount,
        }
    }
}

/// The service made by [`RequireEntitlement`].
#[derive(Clone, Debug)]
pub struct RequireEntitlementService<S> {
    inner: S,
    feature: Arc<str>,
    amount: u64,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequireEntitlementService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = futures_util::future::Either<std::future::Ready<Result<Response<ResB>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        use futures_util::future::Either;
        let Some(snapshot) = req.extensions().get::<TenantSnapshot>() else {
            let p =
                Problem::internal().with_internal("RequireEntitlement without EntitlementsLayer (or without a tenant)");
            return Either::Left(std::future::ready(Ok(p.into_http())));
        };
        let decision = snapshot.check(&self.feature, self.amount);
        if decision.granted {
            Either::Right(self.inner.call(req))
        } else {
            let p = snapshot.problem(&self.feature, self.amount, &decision);
            Either::Left(std::future::ready(Ok(p.into_http())))
        }
    }
}
