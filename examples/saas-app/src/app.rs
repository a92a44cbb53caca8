//! The app wired together: shared state, the router with its layers, the workers.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::handler::Handler;
use axum::routing::{delete, get, post, put};
use saas_authz::{
    ApiKeys, AuthenticateLayer, Authz, Invitations, Memberships, Oidc, OutboxMailer, RequirePermission, Users,
};
use saas_billing::catalog::Catalog;
use saas_billing::entitlements::{EntitlementsLayer, RequireEntitlement, Seats, TenantSnapshot};
use saas_billing::notify::Notifications;
use saas_billing::provider::{BillingProvider, CheckoutRequest, HostedSession, Proration};
use saas_billing::stripe::Stripe;
use saas_billing::summary::TenantBillingSummary;
use saas_billing::webhook::{WebhookEndpoint, WebhookSecrets};
use saas_billing::{AccessPolicy, Entitlements, Simulator};
use saas_core::clock::Clock;
use saas_core::crypto::Keyring;
use saas_core::problem_layer::ProblemLayer;
use saas_core::request_id::RequestIdLayer;
use saas_core::telemetry::TraceLayer;
use saas_core::{Problem, TenantId};
use saas_events::mail::{MailHandler, Mailer, Templates};
use saas_events::{Worker, WorkerBuilder, WorkerHandle};
use saas_flags::{FlagStore, FlagsLayer};
use saas_tenancy::{CachedTenantStore, PgTenantStore, PlatformPool, TenantLayer, resolve};
use tower::ServiceBuilder;

use crate::product;
use crate::routes;
use crate::setup::Database;

/// The billing provider: Stripe when configured, else the in-memory simulator (which is
/// not Stripe, and says so at start).
#[derive(Clone)]
pub enum Billing {
    /// The simulator.
    Simulator(Arc<Simulator>),
    /// Stripe (or a Stripe-compatible server).
    Stripe(Arc<Stripe>),
}

impl std::fmt::Debug for Billing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Billing::Simulator(_) => "Billing::Simulator",
            Billing::Stripe(_) => "Billing::Stripe",
        })
    }
}

/// Runs `$body` with `$p` bound to the provider, whichever it is.
macro_rules! with_provider {
    ($billing:expr, $p:ident => $body:expr) => {
        match $billing {
            Billing::Simulator($p) => $body,
            Billing::Stripe($p) => $body,
        }
    };
}

impl Billing {
    /// A checkout page for `tenant` buying `price`, with a trial of `trial_days` (0: none;
    /// the tenant's customer is created on first use).
    pub async fn checkout(
        &self,
        platform: &PlatformPool,
        tenant: TenantId,
        email: Option<&str>,
        price: &str,
        trial_days: u32,
        return_url: &str,
    ) -> Result<HostedSession, Problem> {
        with_provider!(self, p => {
            let customer = saas_billing::customer_for(platform, &**p, tenant, email).await.map_err(internal)?;
            let mut request = CheckoutRequest::new(tenant, &customer, price, return_url, return_url);
            if trial_days > 0 {
                request = request.trial_days(trial_days);
            }
            p.checkout_session(&request).await.map_err(internal)
        })
    }

    /// The customer portal for `tenant`.
    pub async fn portal(
        &self,
        platform: &PlatformPool,
        tenant: TenantId,
        return_url: &str,
    ) -> Result<HostedSession, Problem> {
        with_provider!(self, p => {
            let customer = saas_billing::customer_for(platform, &**p, tenant, None).await.map_err(internal)?;
            p.portal_session(&customer, return_url).await.map_err(internal)
        })
    }

    /// `tenant`'s billing summary.
    pub async fn summary(
        &self,
        platform: &PlatformPool,
        entitlements: &Entitlements,
        tenant: TenantId,
    ) -> Result<TenantBillingSummary, Problem> {
        with_provider!(self, p => saas_billing::summary::tenant_summary(platform, &**p, entitlements, tenant)
            .await
            .map_err(internal))
    }

    /// Registers billing's jobs: webhook processing (with the billing emails), tenant
    /// deletion, per-seat quantity.
    pub fn register(
        &self,
        builder: WorkerBuilder,
        platform: &PlatformPool,
        catalog: &Arc<Catalog>,
        public_url: &str,
    ) -> WorkerBuilder {
        let notifications = Notifications::new(&format!("{public_url}/v1/billing"));
        with_provider!(self, p => {
            let builder = saas_billing::sync::handle_events_notifying(builder, platform.clone(), Arc::clone(p), notifications);
            saas_billing::seats::handle_seat_sync(builder, platform.clone(), Arc::clone(p), Arc::clone(catalog), Proration::CreateProrations)
        })
    }
}

fn internal(e: impl std::fmt::Display) -> Problem {
    Problem::internal().with_internal(e)
}

/// What handlers share (an `Extension`).
#[derive(Clone)]
pub struct Shared {
    /// The pools.
    pub db: Database,
    /// The platform pool (system jobs, billing).
    pub platform: PlatformPool,
    /// The RBAC evaluator.
    pub authz: Authz,
    /// Members and their roles.
    pub memberships: Memberships,
    /// What each tenant may use.
    pub entitlements: Arc<Entitlements>,
    /// The billing provider.
    pub billing: Billing,
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// Where people reach the app.
    pub public_url: String,
    /// Invitations: e-mailed through the outbox, seats from the plan.
    pub invitations: Arc<Invitations<OutboxMailer, Seats>>,
    /// Seals what the outbox must not hold in clear.
    pub keyring: Arc<Keyring>,
    /// With the simulator: delivers its events to the webhook endpoint.
    pub relay: Option<Arc<SimulatorRelay>>,
    /// Outbound webhooks to the tenants' endpoints.
    pub webhooks: saas_events::Webhooks,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Tenants by id and slug, cached.
    pub tenants: CachedTenantStore<PgTenantStore>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("database", &self.db.name)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Reloads `tenant`'s RBAC policy in this process now, after a change to its members'
    /// roles: the request that demoted someone must not leave them their old rights for
    /// the second the notification takes (other processes reload on the notification).
    pub async fn policy_changed(&self, tenant: TenantId) {
        if let Err(e) = self.authz.reload(tenant).await {
            tracing::warn!(%tenant, error = %e, "reloading the permission policy failed; evicting it");
            self.authz.evict(tenant);
        }
    }

    /// Recounts `tenant`'s limited features (projects, seats) after a change; a failure is
    /// logged (the next change or start recounts).
    pub async fn recount(&self, tenant: TenantId) {
        if let Err(e) = self.entitlements.refresh_counts(&self.platform, tenant).await {
            tracing::warn!(%tenant, error = %e, "recounting entitlements failed");
        }
    }
}

/// Everything [`App::start`] needs besides the database.
pub struct Parts {
    /// How bearer tokens are verified.
    pub oidc: Oidc,
    /// The billing provider.
    pub billing: Billing,
    /// Stripe's webhook signing secret (`whsec_…`; comma-separated during a rotation).
    pub webhook_secret: String,
    /// Where people reach the app.
    pub public_url: String,
    /// The clock (tests move it).
    pub clock: Arc<dyn Clock>,
    /// Encryption keys (invitation links in e-mail jobs, webhook endpoints' secrets).
    pub keyring: Arc<Keyring>,
    /// Lets tenants register webhook endpoints on loopback and private addresses over
    /// plain http: for development and tests only.
    pub allow_local_webhooks: bool,
    /// Where rate-limit allowances are counted: this process, or Redis (shared by every
    /// instance).
    pub rate_store: RateStore,
    /// Requests per minute per tenant for every plan, instead of the plans' quotas (load
    /// tests).
    pub rate_override: Option<u32>,
}

/// Where rate-limit allowances live.
#[derive(Clone, Debug)]
pub enum RateStore {
    /// In this process.
    Memory(saas_core::ratelimit::MemoryStore),
    /// In Redis, shared by every instance (`REDIS_URL`).
    Redis(saas_core::ratelimit::RedisStore),
}

impl saas_core::ratelimit::RateStore for RateStore {
    async fn check(
        &self,
        key: &saas_core::ratelimit::RateKey,
        quota: saas_core::ratelimit::Quota,
    ) -> Result<saas_core::ratelimit::RateDecision, saas_core::ratelimit::StoreError> {
        match self {
            RateStore::Memory(m) => m.check(key, quota).await,
            RateStore::Redis(r) => r.check(key, quota).await,
        }
    }
}

/// Requests per minute per tenant on each plan.
pub fn plan_quota(plan: &str) -> u32 {
    match plan {
        "business" => 12_000,
        "pro" => 3_000,
        _ => 600,
    }
}

/// The running app's pieces: its router, and the tasks that keep its caches current.
pub struct App {
    /// The state handlers share.
    pub shared: Shared,
    /// The HTTP API.
    pub router: Router,
    /// Background tasks (cache listeners, flushers); aborted on drop.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The app could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The catalog or the permission model is invalid (a bug in `product`).
    #[error("the product definition is invalid: {0}")]
    Product(String),
    /// A cache could not load.
    #[error("loading {what} failed: {error}")]
    Load {
        /// What.
        what: &'static str,
        /// Why.
        error: String,
    },
}

impl App {
    /// Loads the caches (permissions, flags, entitlements), starts their listeners and
    /// builds the router. Migrations must have run.
    pub async fn start(db: Database, parts: Parts) -> Result<App, StartError> {
        let product = |e: &dyn std::fmt::Display| StartError::Product(e.to_string());
        let model = product::model().map_err(|e| product(&e))?;
        let catalog = Arc::new(product::catalog().map_err(|e| product(&e))?);
        let platform = PlatformPool::new(db.platform.clone());
        let load = |what: &'static str| {
            move |e: &dyn std::fmt::Display| StartError::Load {
                what,
                error: e.to_string(),
            }
        };

        let authz = Authz::new(db.app.clone(), model.clone());
        let memberships = Memberships::new(db.app.clone())
            .with_model(model)
            .with_clock(Arc::clone(&parts.clock));
        let users = Users::new(db.app.clone()).with_clock(Arc::clone(&parts.clock));
        let keys = ApiKeys::new(db.app.clone());
        let admin = saas_flags::FlagAdmin::new(platform.clone()).environments(["development", "production"]);
        for def in product::flags() {
            match admin
                .create(&saas_core::audit::Actor::System("saas-app".into()), def)
                .await
            {
                Ok(_) | Err(saas_flags::FlagError::Exists(_)) => {}
                Err(e) => return Err(load("feature flags")(&e)),
            }
        }
        let flags = FlagStore::builder(db.app.clone(), "development")
            .listen(true)
            .load()
            .await
            .map_err(|e| load("feature flags")(&e))?;
        let entitlements = Entitlements::load(
            &platform,
            Arc::clone(&catalog),
            // Paid features hold for 3 days after a failed payment: shorter than the
            // provider's retries (3, 5 and 7 days), so a card fixed late restores them.
            AccessPolicy::new("free").grace_period(chrono::Duration::days(3)),
            Arc::clone(&parts.clock),
        )
        .await
        .map_err(|e| load("entitlements")(&e))?;
        entitlements.count_with("projects", product::PROJECTS_COUNT);
        entitlements.count_with("seats", saas_billing::entitlements::SEATS_COUNT);
        let tenants: Vec<TenantId> = sqlx::query_scalar("SELECT id FROM saas.tenants")
            .fetch_all(&db.platform)
            .await
            .map_err(|e| load("tenants")(&e))?;
        for t in tenants {
            entitlements
                .refresh_counts(&platform, t)
                .await
                .map_err(|e| load("usage counts")(&e))?;
        }

        let tasks = vec![
            memberships.listen(),
            keys.listen(),
            keys.spawn_usage_flusher(Duration::from_secs(10)),
            authz.listen(),
            entitlements.listen(platform.clone()),
            flags.spawn_usage_flusher(Duration::from_secs(30)),
        ];

        let secrets = WebhookSecrets::rotating(parts.webhook_secret.split(',').filter(|s| !s.trim().is_empty()))
            .map_err(|e| StartError::Product(format!("STRIPE_WEBHOOK_SECRET: {e}")))?;
        let relay = match &parts.billing {
            Billing::Simulator(sim) => Some(Arc::new(SimulatorRelay {
                sim: Arc::clone(sim),
                endpoint: WebhookEndpoint::new(platform.clone(), secrets.clone()),
                secret: parts
                    .webhook_secret
                    .split(',')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                delivered: tokio::sync::Mutex::new(0),
                sessions: std::sync::Mutex::new(std::collections::HashMap::new()),
            })),
            Billing::Stripe(_) => None,
        };
        let invitations = Invitations::new(
            memberships.clone(),
            OutboxMailer::new(
                Arc::clone(&parts.keyring),
                format!("{}/invitations/accept", parts.public_url),
            ),
        )
        .seat_limit(Seats::new(Arc::clone(&entitlements)))
        .with_clock(Arc::clone(&parts.clock));
        let mut webhooks = saas_events::Webhooks::new(Arc::clone(&parts.keyring)).with_clock(Arc::clone(&parts.clock));
        if parts.allow_local_webhooks {
            let local = saas_events::webhook::ssrf::SsrfPolicy::public_only()
                .allow(ipnet::IpNet::from(std::net::IpAddr::from([127, 0, 0, 1])))
                .allow(ipnet::IpNet::from(std::net::IpAddr::from(
                    std::net::Ipv6Addr::LOCALHOST,
                )));
            webhooks = webhooks.policy(local, true);
        }
        // Tenants cached for 5 s: lifecycle changes made here invalidate at once, other
        // processes see them within the TTL.
        let tenants = CachedTenantStore::new(PgTenantStore::new(db.app.clone()), 100_000, Duration::from_secs(5));
        let shared = Shared {
            db: db.clone(),
            platform: platform.clone(),
            authz: authz.clone(),
            memberships: memberships.clone(),
            entitlements: Arc::clone(&entitlements),
            billing: parts.billing,
            catalog,
            public_url: parts.public_url,
            invitations: Arc::new(invitations),
            keyring: parts.keyring,
            relay,
            webhooks,
            clock: Arc::clone(&parts.clock),
            tenants: tenants.clone(),
        };

        let rate_override = parts.rate_override;
        let authenticate = AuthenticateLayer::new(users).oidc(parts.oidc).api_keys(keys.clone());
        let perm = |name: &'static str| {
            RequirePermission::new(&authz, name).map_err(|e| StartError::Product(format!("{name}: {e}")))
        };
        let api = Router::new()
            .route(
                "/v1/projects",
                get(routes::projects::list_projects).post(
                    routes::projects::create_project.layer(
                        ServiceBuilder::new()
                            .layer(perm("project:create")?)
                            .layer(RequireEntitlement::amount("projects", 1)),
                    ),
                ),
            )
            .merge(routes::projects::routes())
            .route(
                "/v1/projects/{id}/tasks.csv",
                get(routes::projects::tasks_csv).route_layer(saas_flags::RequireFlag::new(product::TASKS_CSV_FLAG)),
            )
            .route("/v1/me", get(routes::account::me))
            .route(
                "/v1/members",
                get(routes::account::members).route_layer(perm("member:list")?),
            )
            .route(
                "/v1/invitations",
                post(routes::people::invite).route_layer(perm("invitation:create")?),
            )
            .route(
                "/v1/members/{user}/roles",
                put(routes::people::set_roles).route_layer(perm("member:update")?),
            )
            // Removing someone needs `member:delete` (checked in the handler); leaving does not.
            .route("/v1/members/{user}", delete(routes::people::remove))
            .route(
                "/v1/api-keys",
                post(routes::people::create_key).get(routes::people::list_keys.layer(perm("api_key:manage")?)),
            )
            .route(
                "/v1/api-keys/{id}",
                delete(routes::people::revoke_key).route_layer(perm("api_key:manage")?),
            )
            .route(
                "/v1/webhooks",
                post(routes::hooks::create)
                    .get(routes::hooks::list)
                    .route_layer(perm("webhook:manage")?),
            )
            .route(
                "/v1/export",
                get(routes::tenant::export).route_layer(perm("tenant:export")?),
            )
            .route(
                "/v1/tenant/deletion",
                post(routes::tenant::request_deletion).route_layer(perm("tenant:delete")?),
            )
            .route(
                "/v1/billing",
                get(routes::billing::summary).route_layer(perm("billing:read")?),
            )
            .route(
                "/v1/billing/checkout",
                post(routes::billing::checkout).route_layer(perm("billing:manage")?),
            )
            .route(
                "/v1/billing/simulator/complete",
                post(routes::billing::simulator_complete).route_layer(perm("billing:manage")?),
            )
            .route(
                "/v1/billing/portal",
                post(routes::billing::portal).route_layer(perm("billing:manage")?),
            )
            .route("/v1/ping", get(routes::ping).route_layer(perm("project:read")?))
            .fallback(|| async { Problem::not_found() })
            // Inside the entitlements layer: flags target on the tenant's plan and features.
            .layer(FlagsLayer::new(flags).enrich(|parts, ctx| {
                if let Some(snapshot) = parts.extensions.get::<TenantSnapshot>() {
                    *ctx = snapshot.flag_context(std::mem::take(ctx));
                }
            }))
            // Per tenant, by plan (read from the entitlements snapshot, outside this layer).
            .layer(saas_core::ratelimit::RateLimitLayer::new(
                saas_core::ratelimit::by_tenant(),
                move |_: &saas_core::ratelimit::RateKey, parts: &http::request::Parts| {
                    let plan = parts.extensions.get::<TenantSnapshot>().map(|s| s.plan().0);
                    let per_minute = rate_override.unwrap_or_else(|| plan_quota(plan.as_deref().unwrap_or("free")));
                    Some(saas_core::ratelimit::Quota::per(per_minute, Duration::from_secs(60)))
                },
                parts.rate_store.clone(),
            ))
            .layer(EntitlementsLayer::new(Arc::clone(&entitlements)))
            .layer(TenantLayer::new(resolve::header("x-tenant-id"), tenants.clone()).membership(memberships))
            .layer(authenticate.clone());
        // Signed in, not yet a member: accepting an invitation names its tenant in the token.
        let joining = Router::new()
            .route("/v1/invitations/accept", post(routes::people::accept))
            .layer(authenticate);

        let webhooks = WebhookEndpoint::new(platform, secrets);
        let router: Router = Router::new()
            .route("/", get(routes::root))
            .route("/health", get(routes::health))
            .route(
                "/openapi.json",
                get(|| async {
                    (
                        [(http::header::CONTENT_TYPE, "application/json")],
                        crate::openapi::json(),
                    )
                }),
            )
            .merge(<utoipa_scalar::Scalar<_> as utoipa_scalar::Servable<_>>::with_url(
                "/docs",
                <crate::openapi::ApiDoc as utoipa::OpenApi>::openapi(),
            ))
            .route_service("/webhooks/stripe", webhooks)
            .merge(api)
            .merge(joining)
            .layer(axum::Extension(shared.clone()))
            .layer(axum::Extension(keys))
            .layer(axum::Extension(db.app.clone()))
            .layer(ProblemLayer::new())
            .layer(TraceLayer::new());
        // Outside the trace layer, so that a panic's report carries the request's tags.
        #[cfg(feature = "sentry")]
        let router = router.layer(saas_core::telemetry::sentry_layer());
        let router = router.layer(RequestIdLayer::new());
        Ok(App { shared, router, tasks })
    }

    /// A worker running the app's jobs (billing, emails) until its handle shuts it down.
    pub async fn worker(&self, mailer: impl Mailer) -> Result<WorkerHandle, saas_events::JobsError> {
        let s = &self.shared;
        let builder = Worker::builder(s.platform.clone())
            .app_pool(s.db.app.clone())
            .queues(["default", saas_events::mail::QUEUE, "webhooks"])
            .handle(MailHandler::new(mailer, Templates::built_in()).unseal_with(Arc::clone(&s.keyring)))
            .handle(s.webhooks.handler(s.db.app.clone()));
        s.billing
            .register(builder, &s.platform, &s.catalog, &s.public_url)
            .start()
            .await
    }
}

/// With the simulator, its events reach the app the way Stripe's would: signed, posted
/// to the webhook endpoint (in process), stored in the inbox and processed by the worker.
pub struct SimulatorRelay {
    /// The simulator.
    pub sim: Arc<Simulator>,
    endpoint: WebhookEndpoint,
    secret: String,
    delivered: tokio::sync::Mutex<usize>,
    /// Checkout session → the tenant that opened it (a tenant completes only its own).
    sessions: std::sync::Mutex<std::collections::HashMap<String, TenantId>>,
}

impl std::fmt::Debug for SimulatorRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatorRelay").finish_non_exhaustive()
    }
}

impl SimulatorRelay {
    /// Posts every event the simulator emitted since the last call; returns how many.
    pub async fn deliver(&self) -> Result<usize, Problem> {
        use tower::ServiceExt;
        let mut delivered = self.delivered.lock().await;
        let events = self.sim.events();
        let new = events.get(*delivered..).unwrap_or_default();
        for e in new {
            let body = e.body();
            let signature = saas_billing::webhook::sign(&self.secret, chrono::Utc::now().timestamp(), body.as_bytes());
            let req = http::Request::post("/webhooks/stripe")
                .header("stripe-signature", signature)
                .body(axum::body::Body::from(body))
                .map_err(internal)?;
            let res = self.endpoint.clone().oneshot(req).await.map_err(internal)?;
            if !res.status().is_success() {
                return Err(internal(format!(
                    "the webhook endpoint answered {} to {}",
                    res.status(),
                    e.id
                )));
            }
            *delivered += 1;
        }
        Ok(new.len())
    }

    /// Remembers that `tenant` opened checkout `session`.
    pub fn opened(&self, session: &str, tenant: TenantId) {
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(session.to_owned(), tenant);
        }
    }

    /// Whether `tenant` opened checkout `session`.
    pub fn owns(&self, session: &str, tenant: TenantId) -> bool {
        self.sessions
            .lock()
            .map(|s| s.get(session) == Some(&tenant))
            .unwrap_or(false)
    }
}

/// The mailer used without SMTP: prints each e-mail (it is not sent).
#[derive(Debug, Clone, Default)]
pub struct ConsoleMailer;

impl Mailer for ConsoleMailer {
    async fn send(&self, email: &saas_events::mail::Email) -> Result<(), saas_events::mail::MailError> {
        println!(
            "\n--- e-mail (console mailer: not sent) ---\nto: {}\nsubject: {}\n\n{}\n---\n",
            email.to.join(", "),
            email.subject,
            email.text
        );
        Ok(())
    }
}
