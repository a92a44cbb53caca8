//! Attacks through authentication: credentials, memberships, keys and invitations of
//! tenant B used from tenant A.

use axum::Router;
use axum::body::Body;
use http::StatusCode;
use http_body_util::BodyExt;
use saas_authz::{
    ApiKeys, AuthenticateLayer, Identity, InvitationError, InvitationToken, Invitations, LocalIssuer, Memberships,
    NewApiKey, RecordingMailer, Users,
};
use saas_core::Principal;
use saas_tenancy::{PgTenantStore, TenantLayer, TenantTx, resolve};
use saas_tests::Fixture;
use tower::ServiceExt;

use super::code;

struct World {
    f: Fixture,
    alice: Principal,
    bob: Principal,
    keys: ApiKeys,
    memberships: Memberships,
    b_key: String,
    b_invitation: String,
    idp: LocalIssuer,
}

async fn world() -> World {
    let f = Fixture::new().await;
    let users = Users::new(f.db.app().clone());
    let alice = Principal::user(
        users
            .provision(&Identity::new("https://idp.test/", "alice", i64::MAX).with_email("alice@acme.test", true))
            .await
            .unwrap(),
    );
    let bob = Principal::user(
        users
            .provision(&Identity::new("https://idp.test/", "bob", i64::MAX).with_email("bob@globex.test", true))
            .await
            .unwrap(),
    );
    let memberships = Memberships::new(f.db.app().clone());
    let keys = ApiKeys::new(f.db.app().clone());
    let mailer = RecordingMailer::new();
    let invitations = Invitations::new(memberships.clone(), mailer.clone());
    let mut tx = TenantTx::begin(f.db.app(), f.a).await.unwrap();
    memberships.bootstrap_owner(&mut tx, alice.user_id).await.unwrap();
    keys.create(&mut tx, &alice, NewApiKey::new("a-key", ["project:read"]))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = TenantTx::begin(f.db.app(), f.b).await.unwrap();
    memberships.bootstrap_owner(&mut tx, bob.user_id).await.unwrap();
    let b_key = keys
        .create(&mut tx, &bob, NewApiKey::new("b-key", ["project:read"]))
        .await
        .unwrap();
    invitations
        .invite(&mut tx, &bob, "carol@globex.test", "admin")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    World {
        alice,
        bob,
        keys,
        memberships,
        b_key: b_key.secret.expose().to_owned(),
        b_invitation: mailer.last_token().unwrap(),
        idp: LocalIssuer::start().await.unwrap(),
        f,
    }
}

async fn stack(w: &World) -> Router {
    Router::new()
        .route(
            "/v1/me",
            axum::routing::get(|p: Principal| async move { p.user_id.to_string() }),
        )
        .layer(
            TenantLayer::new(resolve::header("x-tenant-id"), PgTenantStore::new(w.f.db.app().clone()))
                .membership(w.memberships.clone()),
        )
        .layer(
            AuthenticateLayer::new(Users::new(w.f.db.app().clone()))
                .oidc(w.idp.oidc("api").await.unwrap())
                .api_keys(w.keys.clone()),
        )
}

async fn call(app: &Router, auth: &str, tenant: &str) -> (StatusCode, serde_json::Value) {
    let req = http::Request::get("/v1/me")
        .header("authorization", auth)
        .header("x-tenant-id", tenant)
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn attack_37_an_api_key_of_b_opens_nothing_in_a() {
    let w = world().await;
    let app = stack(&w).await;
    let auth = format!("Bearer {}", w.b_key);
    assert_eq!(
        call(&app, &auth, &w.f.b.to_string()).await.0,
        StatusCode::OK,
        "sanity: B's key works in B"
    );
    let (status, body) = call(&app, &auth, &w.f.a.to_string()).await;
    let (_, unknown) = call(&app, &auth, &saas_core::TenantId::new().to_string()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, unknown, "same answer as a tenant that does not exist");
    // By slug too.
    assert_eq!(call(&app, &auth, "acme").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn attack_38_a_member_token_of_a_cannot_enter_b() {
    let w = world().await;
    let app = stack(&w).await;
    let token = w.idp.token("alice-at-idp").audience("api").sign();
    let auth = format!("Bearer {token}");
    // A fresh user from the IdP is a member of nothing.
    assert_eq!(call(&app, &auth, "acme").await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&app, &auth, "globex").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn attack_39_authz_rows_of_b_are_invisible_and_unwritable_from_a() {
    let w = world().await;
    let mut tx = TenantTx::begin(w.f.db.app(), w.f.a).await.unwrap();
    for (table, own) in [
        ("saas.api_keys", 1_i64),
        ("saas.memberships", 1),
        ("saas.invitations", 0),
        ("saas.tenant_auth_settings", 0),
    ] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, own, "{table}");
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE tenant_id = $1"
        )))
        .bind(w.f.b)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(n, 0, "{table} filtered on B");
    }
    // Making oneself a member of B, or revoking B's keys, from A's transaction.
    let sp = sqlx::query("SAVEPOINT s").execute(&mut *tx).await;
    sp.unwrap();
    let forged = sqlx::query(
        "INSERT INTO saas.memberships (tenant_id, user_id, roles, joined_at) VALUES ($1, $2, '{owner}', now())",
    )
    .bind(w.f.b)
    .bind(w.alice.user_id)
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert_eq!(code(&forged), "42501");
    sqlx::query("ROLLBACK TO SAVEPOINT s").execute(&mut *tx).await.unwrap();
    let touched = sqlx::query("UPDATE saas.api_keys SET revoked_at = now() WHERE tenant_id = $1")
        .bind(w.f.b)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(touched.rows_affected(), 0);
    // Keys are never deleted by the application, not even its own.
    let deleted = sqlx::query("DELETE FROM saas.api_keys")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(code(&deleted), "42501");
    drop(tx);
    // B's key still works.
    assert!(w.keys.authenticate(&w.b_key).await.is_ok());
}

#[tokio::test]
async fn attack_40_an_invitation_of_b_cannot_be_redeemed_in_a() {
    let w = world().await;
    let invitations = Invitations::new(w.memberships.clone(), RecordingMailer::new());
    let token = InvitationToken::parse(&w.b_invitation).unwrap();
    // Presented inside A's transaction (as if the server trusted the caller's tenant).
    let mut tx = TenantTx::begin(w.f.db.app(), w.f.a).await.unwrap();
    assert!(matches!(
        invitations.accept(&mut tx, &w.alice, &token).await,
        Err(InvitationError::NotFound)
    ));
    drop(tx);
    // In B's transaction, by someone it was not sent to.
    let mut tx = TenantTx::begin(w.f.db.app(), w.f.b).await.unwrap();
    assert!(matches!(
        invitations.accept(&mut tx, &w.alice, &token).await,
        Err(InvitationError::WrongEmail)
    ));
    drop(tx);
    let mut tx = TenantTx::begin(w.f.db.app(), w.f.b).await.unwrap();
    let members = Memberships::list(&mut tx).await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].user_id, w.bob.user_id);
}

#[tokio::test]
async fn attack_41_the_verifier_covers_the_authz_tables() {
    let w = world().await;
    saas_tenancy::verify_isolation(w.f.db.app()).await.unwrap();
    let registered: Vec<String> = sqlx::query_scalar("SELECT table_name::text FROM saas.tenant_tables ORDER BY 1")
        .fetch_all(w.f.db.app())
        .await
        .unwrap();
    for t in [
        "saas.api_keys",
        "saas.invitations",
        "saas.memberships",
        "saas.tenant_auth_settings",
    ] {
        assert!(registered.iter().any(|r| r == t), "{t} in {registered:?}");
    }
}
