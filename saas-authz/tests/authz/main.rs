//! saas-authz against the real PostgreSQL (as the application role) and a real local
//! identity provider over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod api_keys;
mod fuzz;
mod hardening;
mod invitations;
mod jwt;
mod members;
mod rbac;
mod workload;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use saas_authz::{Identity, Users};
use saas_core::clock::ManualClock;
use saas_core::testkit::TestDb;
use saas_core::{Principal, TenantId, UserId};
use serde_json::Value;
use tower::ServiceExt;

pub async fn db() -> TestDb {
    TestDb::new(&[&saas_core::MIGRATOR, &saas_tenancy::MIGRATOR, &saas_authz::MIGRATOR])
        .await
        .unwrap()
}

pub fn clock() -> ManualClock {
    ManualClock::starting_now()
}

pub async fn tenant(db: &TestDb, slug: &str) -> TenantId {
    saas_tenancy::lifecycle::create(
        db.app(),
        slug,
        &format!("{slug} Inc."),
        UserId::new(),
        &saas_core::clock::SystemClock,
    )
    .await
    .unwrap()
    .id
}

/// A provisioned user with a verified email, and their principal (signed in with MFA
/// when `mfa`).
pub async fn user(db: &TestDb, email: &str, mfa: bool) -> Principal {
    let id = Users::new(db.app().clone())
        .provision(&Identity::new("https://idp.test/", email, i64::MAX).with_email(email, true))
        .await
        .unwrap();
    Principal::user(id).with_mfa(mfa)
}

/// A router answering `who am I` for the principal the layers put in.
pub fn whoami() -> Router {
    Router::new().route(
        "/v1/me",
        get(|p: Principal| async move {
            axum::Json(serde_json::json!({
                "user": p.user_id, "mfa": p.mfa, "api_key": p.api_key_id(),
                "tenant": p.tenant_id, "org": p.org_id,
            }))
        }),
    )
}

pub async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

pub fn get_with(path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::get(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
}

pub fn problem_type(body: &Value) -> &str {
    body["type"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("urn:saas-kit:problem:")
}
