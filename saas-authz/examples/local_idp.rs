//! Authentication and tenancy together, runnable without an identity provider account:
//! a `LocalIssuer` plays the IdP over real HTTP, a throwaway database holds one tenant,
//! and the server admits only its members.
//!
//! ```text
//! cargo run -p saas-authz --example local_idp
//! ```
//!
//! It prints a bearer token (with MFA), one without MFA, and an API key, with curl
//! commands to try. Needs the local PostgreSQL (`DATABASE_URL`, default
//! `postgres://root@127.0.0.1:5432/postgres?sslmode=disable`); the database it creates is
//! dropped when the example stops (Ctrl-C). `PORT` picks the port (default 3000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::routing::{get, post};
use saas_authz::{
    ApiKeys, AuthenticateLayer, Identity, Invitations, LocalIssuer, Memberships, NewApiKey, RecordingMailer,
    RequireMfa, Users,
};
use saas_core::clock::SystemClock;
use saas_core::problem::Problem;
use saas_core::problem_layer::ProblemLayer;
use saas_core::request_id::RequestIdLayer;
use saas_core::telemetry::{self, TelemetryConfig, TraceLayer};
use saas_core::testkit::TestDb;
use saas_core::{IntoProblem, Principal};
use saas_tenancy::{PgTenantStore, TenantContext, TenantLayer, TenantTx, resolve};
use serde::Deserialize;
use tower::ServiceBuilder;

async fn me(principal: Principal, tenant: TenantContext) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "user": principal.user_id,
        "mfa": principal.mfa,
        "api_key": principal.api_key_id(),
        "tenant": tenant.tenant().slug,
    }))
}

async fn members(mut tx: TenantTx) -> Result<axum::Json<serde_json::Value>, Problem> {
    let members = Memberships::list(&mut tx).await.map_err(|e| e.to_problem())?;
    let list: Vec<_> = members
        .iter()
        .map(|m| serde_json::json!({"user": m.user_id, "email": m.email, "roles": m.roles}))
        .collect();
    Ok(axum::Json(serde_json::json!({ "members": list })))
}

#[derive(Deserialize)]
struct Invite {
    email: String,
    role: String,
}

async fn invite(
    axum::Extension(invitations): axum::Extension<Invitations<RecordingMailer>>,
    principal: Principal,
    mut tx: TenantTx,
    axum::Json(body): axum::Json<Invite>,
) -> Result<axum::Json<serde_json::Value>, Problem> {
    let inv = invitations
        .invite(&mut tx, &principal, &body.email, &body.role)
        .await
        .map_err(|e| e.to_problem())?;
    tx.commit().await.map_err(|e| e.to_problem())?;
    Ok(axum::Json(
        serde_json::json!({ "invitation": inv.id, "expires_at": inv.expires_at }),
    ))
}

#[tokio::main]
async fn main() {
    let _telemetry = telemetry::init(TelemetryConfig::from_env()).expect("telemetry");
    let db = TestDb::new(&[&saas_core::MIGRATOR, &saas_tenancy::MIGRATOR, &saas_authz::MIGRATOR])
        .await
        .expect("the local PostgreSQL (DATABASE_URL) must be running");
    let pool = db.app().clone();
    saas_tenancy::verify_isolation(&pool).await.expect("isolation verified");

    // No IdP configured: a local one, loudly logged as development-only.
    let idp = LocalIssuer::start().await.expect("local issuer");
    let oidc = idp.oidc("api").await.expect("discovery");

    // One tenant whose owner is ada, with an API key.
    let users = Users::new(pool.clone());
    let ada = users
        .provision(&Identity::new(idp.issuer(), "ada", i64::MAX).with_email("ada@acme.test", true))
        .await
        .unwrap();
    let acme = saas_tenancy::lifecycle::create(&pool, "acme", "Acme", ada, &SystemClock)
        .await
        .unwrap();
    let memberships = Memberships::new(pool.clone());
    let keys = ApiKeys::new(pool.clone());
    let _listen = (
        memberships.listen(),
        keys.listen(),
        keys.spawn_usage_flusher(std::time::Duration::from_secs(10)),
    );
    let mut tx = TenantTx::begin(&pool, acme.id).await.unwrap();
    memberships.bootstrap_owner(&mut tx, ada).await.unwrap();
    let key = keys
        .create(&mut tx, &Principal::user(ada), NewApiKey::new("demo", ["project:read"]))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let invitations = Invitations::new(memberships.clone(), RecordingMailer::new());

    let app = Router::new()
        .route("/v1/me", get(me))
        .route("/v1/members", get(members))
        .route("/v1/invitations", post(invite).route_layer(RequireMfa::new()))
        .layer(axum::Extension(invitations))
        .layer(axum::Extension(pool.clone()))
        .layer(
            ServiceBuilder::new()
                .layer(RequestIdLayer::new())
                .layer(TraceLayer::new())
                .layer(ProblemLayer::new())
                .layer(AuthenticateLayer::new(users).oidc(oidc).api_keys(keys))
                .layer(
                    TenantLayer::new(resolve::header("x-tenant-id"), PgTenantStore::new(pool.clone()))
                        .membership(memberships),
                ),
        );

    let with_mfa = idp.token("ada").audience("api").email("ada@acme.test").mfa(true).sign();
    let without_mfa = idp
        .token("ada")
        .audience("api")
        .email("ada@acme.test")
        .mfa(false)
        .sign();
    let stranger = idp.token("mallory").audience("api").email("mallory@evil.test").sign();
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(3000);
    let base = format!("http://127.0.0.1:{port}");
    println!(
        "\nsaas-authz demo on {base} (tenant acme; the database is dropped on Ctrl-C)\n\n\
         # who am I, with a token (MFA) and with the API key\n\
         curl -s {base}/v1/me -H 'x-tenant-id: acme' -H 'authorization: Bearer {with_mfa}'\n\
         curl -s {base}/v1/me -H 'x-tenant-id: acme' -H 'authorization: Bearer {key}'\n\n\
         # members; a stranger gets the same 404 as an unknown tenant\n\
         curl -s {base}/v1/members -H 'x-tenant-id: acme' -H 'authorization: Bearer {with_mfa}'\n\
         curl -s {base}/v1/members -H 'x-tenant-id: acme' -H 'authorization: Bearer {stranger}'\n\n\
         # inviting needs MFA: 403 mfa-required without it\n\
         curl -s {base}/v1/invitations -H 'x-tenant-id: acme' -H 'content-type: application/json' -H 'authorization: Bearer {without_mfa}' -d '{{\"email\":\"bob@acme.test\",\"role\":\"member\"}}'\n\
         curl -s {base}/v1/invitations -H 'x-tenant-id: acme' -H 'content-type: application/json' -H 'authorization: Bearer {with_mfa}' -d '{{\"email\":\"bob@acme.test\",\"role\":\"member\"}}'\n\n\
         # no credentials, and a garbage token: 401 problems\n\
         curl -s {base}/v1/me -H 'x-tenant-id: acme'\n\
         curl -s {base}/v1/me -H 'x-tenant-id: acme' -H 'authorization: Bearer nope'\n",
        key = key.secret.expose(),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .unwrap();
    drop(idp);
    drop(db);
}
