//! API keys: shown once, stored as a digest, no oracle, revocation everywhere.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::header::HeaderName;
use saas_authz::{ApiKeyError, ApiKeys, AuthenticateLayer, Memberships, NewApiKey, Users};
use saas_core::clock::ManualClock;
use saas_tenancy::{PgTenantStore, TenantLayer, TenantTx, resolve};

use crate::{clock, db, get_with, problem_type, send, tenant, user, whoami};

fn app(db: &saas_core::testkit::TestDb, keys: &ApiKeys) -> axum::Router {
    whoami()
        .layer(
            TenantLayer::new(resolve::header("x-tenant-id"), PgTenantStore::new(db.app().clone()))
                .membership(Memberships::new(db.app().clone())),
        )
        .layer(
            AuthenticateLayer::new(Users::new(db.app().clone()))
                .api_keys(keys.clone())
                .api_key_header(HeaderName::from_static("x-api-key")),
        )
}

#[tokio::test]
async fn a_key_works_once_created_and_only_its_digest_is_stored() {
    let db = db().await;
    let acme = tenant(&db, "acme").await;
    let owner = user(&db, "owner@acme.test", true).await;
    let memberships = Memberships::new(db.app().clone());
    let keys = ApiKeys::new(db.app().clone());

    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    memberships.bootstrap_owner(&mut tx, owner.user_id).await.unwrap();
    let issued = keys
        .create(
            &mut tx,
            &owner,
            NewApiKey::new("CI deploy", ["project:read", "project:*"]),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let secret = issued.secret.expose().to_owned();
    assert!(secret.starts_with("sk_live_") && secret.len() == 8 + 86, "{secret}");
    assert!(
        !format!("{issued:?}").contains(&secret[8..]),
        "Debug never shows the secret"
    );
    assert!(secret.starts_with(issued.key.display_prefix.trim_end_matches('…')));

    // Nothing in the database contains the secret.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_hash FROM saas.api_keys")
        .fetch_one(db.platform())
        .await
        .unwrap();
    assert_eq!(stored.len(), 32);
    let dump: String = sqlx::query_scalar("SELECT row_to_json(k)::text FROM saas.api_keys k")
        .fetch_one(db.platform())
        .await
        .unwrap();
    assert!(!dump.contains(&secret[8..]));

    let app = app(&db, &keys);
    let tenant_header = acme.to_string();
    for (name, value) in [
        ("authorization", format!("Bearer {secret}")),
        ("x-api-key", secret.clone()),
    ] {
        let (status, body) = send(
            &app,
            get_with("/v1/me", &[(name, &value), ("x-tenant-id", &tenant_header)]),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        assert_eq!(body["api_key"], serde_json::json!(issued.key.id));
        assert_eq!(body["user"], serde_json::json!(owner.user_id));
    }

    // The audit log has the creation.
    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM saas.audit_log ORDER BY seq")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert!(actions.contains(&"api_key.created".to_owned()), "{actions:?}");
    let listed = ApiKeys::list(&mut tx).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].scopes, ["project:read", "project:*"]);
}

#[tokio::test]
async fn wrong_revoked_expired_and_foreign_keys_are_refused_without_an_oracle() {
    let db = db().await;
    let (acme, globex) = (tenant(&db, "acme").await, tenant(&db, "globex").await);
    let owner = user(&db, "owner@acme.test", true).await;
    let clock = clock();
    let memberships = Memberships::new(db.app().clone());
    let keys = ApiKeys::new(db.app().clone()).with_clock(Arc::new(clock.clone()));

    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    memberships.bootstrap_owner(&mut tx, owner.user_id).await.unwrap();
    let live = keys
        .create(&mut tx, &owner, NewApiKey::new("live", ["project:read"]))
        .await
        .unwrap();
    let doomed = keys
        .create(&mut tx, &owner, NewApiKey::new("doomed", ["project:read"]))
        .await
        .unwrap();
    let short = keys
        .create(
            &mut tx,
            &owner,
            NewApiKey::new("short", ["project:read"]).expires_at(clock_now(&clock) + chrono::Duration::hours(1)),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let app = app(&db, &keys);
    let call = |key: String, tenant: String| {
        let app = app.clone();
        async move {
            send(
                &app,
                get_with(
                    "/v1/me",
                    &[("authorization", &format!("Bearer {key}")), ("x-tenant-id", &tenant)],
                ),
            )
            .await
        }
    };

    // A valid prefix, id and tenant with a wrong secret: same answer as an unknown key.
    let good = live.secret.expose().to_owned();
    let mut wrong = good.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    let (s1, b1) = call(wrong, acme.to_string()).await;
    let unknown = format!("sk_live_{}", "Q".repeat(86));
    let (s2, b2) = call(unknown, acme.to_string()).await;
    assert_eq!((s1, s2), (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED));
    assert_eq!(b1["detail"], b2["detail"]);
    assert_eq!(problem_type(&b1), "invalid-api-key");

    // Acme's key naming globex: 404, exactly what an unknown tenant gets.
    let (status, foreign) = call(good.clone(), globex.to_string()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{foreign}");
    let (_, unknown_tenant) = call(good.clone(), saas_core::TenantId::new().to_string()).await;
    assert_eq!(foreign["type"], unknown_tenant["type"]);
    assert_eq!(foreign["detail"], unknown_tenant["detail"]);

    // Revoked: refused at once in this process.
    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    keys.revoke(&mut tx, &owner, doomed.key.id).await.unwrap();
    tx.commit().await.unwrap();
    let (status, body) = call(doomed.secret.expose().to_owned(), acme.to_string()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["detail"], "the API key was revoked");

    // Expired.
    assert_eq!(
        call(short.secret.expose().to_owned(), acme.to_string()).await.0,
        StatusCode::OK
    );
    clock.advance(chrono::Duration::hours(2));
    let (status, body) = call(short.secret.expose().to_owned(), acme.to_string()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["detail"], "the API key has expired");

    // A key with a test prefix is not even recognised as a key by a live verifier.
    let test_keys = ApiKeys::new(db.app().clone()).prefix("sk_test");
    assert!(!test_keys.recognises(&good));
}

fn clock_now(clock: &ManualClock) -> chrono::DateTime<chrono::Utc> {
    use saas_core::clock::Clock;
    clock.now()
}

#[tokio::test]
async fn revocation_reaches_another_process_within_a_second() {
    let db = db().await;
    let acme = tenant(&db, "acme").await;
    let owner = user(&db, "owner@acme.test", false).await;
    let memberships = Memberships::new(db.app().clone());
    let here = ApiKeys::new(db.app().clone());
    let there = ApiKeys::new(db.app().clone());
    let _listening = there.listen();

    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    memberships.bootstrap_owner(&mut tx, owner.user_id).await.unwrap();
    let issued = here
        .create(&mut tx, &owner, NewApiKey::new("k", ["project:read"]))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let secret = issued.secret.expose().to_owned();
    there.authenticate(&secret).await.unwrap(); // cached there now
    tokio::time::sleep(Duration::from_millis(200)).await; // the listener is up

    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    here.revoke(&mut tx, &owner, issued.key.id).await.unwrap();
    tx.commit().await.unwrap();
    let started = std::time::Instant::now();
    loop {
        if there.authenticate(&secret).await.is_err() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "revocation did not arrive within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn only_admins_manage_keys_and_inputs_are_validated() {
    let db = db().await;
    let acme = tenant(&db, "acme").await;
    let owner = user(&db, "owner@acme.test", false).await;
    let viewer = user(&db, "viewer@acme.test", false).await;
    let memberships = Memberships::new(db.app().clone());
    let keys = ApiKeys::new(db.app().clone());
    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    memberships.bootstrap_owner(&mut tx, owner.user_id).await.unwrap();
    memberships
        .add(&mut tx, &owner, viewer.user_id, &["viewer"])
        .await
        .unwrap();
    let r = keys
        .create(&mut tx, &viewer, NewApiKey::new("mine", ["project:read"]))
        .await;
    assert!(matches!(r, Err(ApiKeyError::Forbidden)), "{r:?}");
    for bad in [
        NewApiKey::new("", ["project:read"]),
        NewApiKey::new("x", ["project"]),
        NewApiKey::new("x", ["PROJECT:READ"]),
    ] {
        assert!(keys.create(&mut tx, &owner, bad).await.is_err());
    }
    let past = NewApiKey::new("x", ["project:read"]).expires_at(chrono::Utc::now() - chrono::Duration::minutes(1));
    assert!(matches!(
        keys.create(&mut tx, &owner, past).await,
        Err(ApiKeyError::ExpiryInPast)
    ));
    // A key cannot manage keys either.
    let issued = keys
        .create(&mut tx, &owner, NewApiKey::new("ci", ["project:read"]))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let as_key = keys.authenticate(issued.secret.expose()).await.unwrap();
    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    assert!(matches!(
        keys.revoke(&mut tx, &as_key, issued.key.id).await,
        Err(ApiKeyError::Forbidden)
    ));
    assert!(matches!(
        keys.revoke(&mut tx, &owner, saas_core::ApiKeyId::new()).await,
        Err(ApiKeyError::NotFound)
    ));
}

#[tokio::test]
async fn last_used_is_written_in_batches_not_per_request() {
    let db = db().await;
    let acme = tenant(&db, "acme").await;
    let owner = user(&db, "owner@acme.test", false).await;
    let memberships = Memberships::new(db.app().clone());
    let keys = ApiKeys::new(db.app().clone());
    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    memberships.bootstrap_owner(&mut tx, owner.user_id).await.unwrap();
    let issued = keys
        .create(&mut tx, &owner, NewApiKey::new("k", ["project:read"]))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    for _ in 0..100 {
        keys.authenticate(issued.secret.expose()).await.unwrap();
    }
    let last_used = || async {
        let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
        ApiKeys::list(&mut tx).await.unwrap()[0].last_used_at
    };
    assert_eq!(last_used().await, None, "no write per request");
    assert_eq!(keys.flush_usage().await.unwrap(), 1);
    assert!(last_used().await.is_some());
    // Within the next minute, further use is not written again.
    keys.authenticate(issued.secret.expose()).await.unwrap();
    assert_eq!(keys.flush_usage().await.unwrap(), 0);
}
