//! Hardening: a change that races a first load, listeners that end with their owner,
//! service-account keys, and custom roles ranked by what they include now.

use std::time::Duration;

use saas_authz::rbac::{Authz, Model, RoleDef};
use saas_authz::{ApiKeyError, ApiKeys, MemberError, Memberships, NewApiKey};
use saas_core::AuthMethod;
use saas_core::audit::{self, AuditQuery};
use saas_tenancy::TenantTx;

use crate::{db, tenant, user};

/// A change committed (and notified) while a tenant's policy is being loaded for the first
/// time is not lost: the load that read before it is thrown away and done again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_during_the_first_load_is_not_lost() {
    let db = db().await;
    let t = tenant(&db, "race").await;
    let owner = user(&db, "owner@race.test", true).await;
    let ann = user(&db, "ann@race.test", true).await;
    let memberships = Memberships::new(db.app().clone());
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    memberships.bootstrap_owner(&mut tx, owner.user_id).await.unwrap();
    memberships
        .add(&mut tx, &owner, ann.user_id, &["viewer"])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let authz = Authz::new(
        db.app().clone(),
        Model::new(["project:read", "project:delete"]).unwrap(),
    );
    let _listening = authz.listen();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Hold the last table the load reads, so that the load has read the memberships and
    // then waits.
    let mut blocker = db.owner().begin().await.unwrap();
    sqlx::query("LOCK TABLE saas.resource_parents IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let loading = {
        let authz = authz.clone();
        tokio::spawn(async move { authz.ensure(t).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Ann is promoted while the load waits; the notification arrives now.
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    memberships
        .set_roles(&mut tx, &owner, ann.user_id, &["admin"])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocker.rollback().await.unwrap();
    loading.await.unwrap().unwrap();
    let delete = authz.permission("project:delete").unwrap();
    assert!(
        authz.check(&ann, t, delete, None).allowed(),
        "the policy loaded before the promotion was installed and kept"
    );
}

async fn listeners(db: &saas_core::testkit::TestDb) -> i64 {
    db.listening_connections().await.unwrap()
}

async fn settles(db: &saas_core::testkit::TestDb, expected: i64) -> bool {
    for _ in 0..40 {
        if listeners(db).await == expected {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn dropping_the_owner_releases_the_listeners_connection() {
    let db = db().await;
    let memberships = Memberships::new(db.app().clone());
    let keys = ApiKeys::new(db.app().clone());
    let authz = Authz::new(db.app().clone(), Model::new(["project:read"]).unwrap());
    let tasks = [memberships.listen(), keys.listen(), authz.listen()];
    assert!(settles(&db, 3).await, "three listeners: {}", listeners(&db).await);
    // No notification comes; dropping the owners alone must end the listeners.
    drop(memberships);
    drop(keys);
    drop(authz);
    assert!(
        settles(&db, 0).await,
        "listeners kept their connections after their owners were dropped: {}",
        listeners(&db).await
    );
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(2), t)
            .await
            .expect("the listener task ended")
            .unwrap();
    }
}

#[tokio::test]
async fn service_account_keys_belong_to_the_tenant_and_hold_their_role() {
    let db = db().await;
    let t = tenant(&db, "svc").await;
    let owner = user(&db, "owner@svc.test", true).await;
    let admin = user(&db, "admin@svc.test", true).await;
    let memberships = Memberships::new(db.app().clone());
    let keys = ApiKeys::new(db.app().clone());
    let authz = Authz::new(
        db.app().clone(),
        Model::new(["project:read", "project:delete", "billing:manage"]).unwrap(),
    );
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    memberships.bootstrap_owner(&mut tx, owner.user_id).await.unwrap();
    memberships
        .add(&mut tx, &owner, admin.user_id, &["admin"])
        .await
        .unwrap();
    // An admin cannot give a machine the owner role.
    assert!(matches!(
        keys.create(
            &mut tx,
            &admin,
            NewApiKey::service_account("deploy", "owner", ["billing:manage"])
        )
        .await,
        Err(ApiKeyError::Forbidden)
    ));
    let svc = keys
        .create(
            &mut tx,
            &admin,
            NewApiKey::service_account("ci", "member", ["project:read", "project:delete"]),
        )
        .await
        .unwrap();
    assert_eq!(svc.key.service_role.as_deref(), Some("member"));
    tx.commit().await.unwrap();

    // The admin who created it leaves; the key stays.
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    memberships.remove(&mut tx, &owner, admin.user_id).await.unwrap();
    tx.commit().await.unwrap();
    let principal = keys.authenticate(svc.secret.expose()).await.unwrap();
    assert!(matches!(principal.method, AuthMethod::ServiceAccount(_)));
    use saas_tenancy::{MembershipCheck, MembershipVerdict};
    assert!(matches!(
        memberships.is_member(t, &principal).await.unwrap(),
        MembershipVerdict::Member
    ));
    // Its permissions are its role's, within its scopes.
    authz.reload(t).await.unwrap();
    let read = authz.permission("project:read").unwrap();
    let delete = authz.permission("project:delete").unwrap();
    assert!(authz.check(&principal, t, read, None).allowed());
    assert!(
        !authz.check(&principal, t, delete, None).allowed(),
        "the member role does not delete, whatever the scopes"
    );
    // Revoking it ends it, and the evaluator forgets it.
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    keys.revoke(&mut tx, &owner, svc.key.id).await.unwrap();
    tx.commit().await.unwrap();
    assert!(keys.authenticate(svc.secret.expose()).await.is_err());
    authz.reload(t).await.unwrap();
    assert!(!authz.check(&principal, t, read, None).allowed());
    // The audit log names the key as the actor of what it did, and the removal names the
    // member keys it revoked.
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let revoked = audit::query(&mut tx, t, &AuditQuery::new().action("api_key.revoked"))
        .await
        .unwrap();
    assert_eq!(revoked.items.len(), 1);
    assert_eq!(revoked.items[0].actor, saas_core::audit::Actor::User(owner.user_id));
    let created = audit::query(&mut tx, t, &AuditQuery::new().action("api_key.created"))
        .await
        .unwrap();
    assert_eq!(created.items[0].metadata["after"]["service_role"], "member");
    let removed = audit::query(&mut tx, t, &AuditQuery::new().action("member.removed"))
        .await
        .unwrap();
    assert_eq!(removed.items.len(), 1);
    assert_eq!(removed.items[0].metadata["revoked_api_keys"], serde_json::json!([]));
}

#[tokio::test]
async fn a_removed_members_key_is_revoked_and_a_demoted_members_key_shrinks() {
    let db = db().await;
    let t = tenant(&db, "keys").await;
    let owner = user(&db, "owner@keys.test", true).await;
    let admin = user(&db, "admin@keys.test", true).await;
    let memberships = Memberships::new(db.app().clone());
    let keys = ApiKeys::new(db.app().clone());
    let authz = Authz::new(db.app().clone(), Model::new(["project:read", "member:invite"]).unwrap());
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    memberships.bootstrap_owner(&mut tx, owner.user_id).await.unwrap();
    memberships
        .add(&mut tx, &owner, admin.user_id, &["admin"])
        .await
        .unwrap();
    let key = keys
        .create(
            &mut tx,
            &admin,
            NewApiKey::new("laptop", ["project:read", "member:invite"]),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let p = keys.authenticate(key.secret.expose()).await.unwrap();
    authz.reload(t).await.unwrap();
    let invite = authz.permission("member:invite").unwrap();
    let read = authz.permission("project:read").unwrap();
    assert!(authz.check(&p, t, invite, None).allowed());
    // Demoted to viewer: the key keeps only what a viewer may.
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    memberships
        .set_roles(&mut tx, &owner, admin.user_id, &["viewer"])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    authz.reload(t).await.unwrap();
    assert!(!authz.check(&p, t, invite, None).allowed());
    assert!(authz.check(&p, t, read, None).allowed());
    // Removed: the key is revoked, in every process that listens (this one included).
    let _listening = keys.listen();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    memberships.remove(&mut tx, &owner, admin.user_id).await.unwrap();
    let listed = ApiKeys::list(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    assert!(listed.iter().all(|k| k.revoked_at.is_some()));
    let started = std::time::Instant::now();
    while !matches!(
        keys.authenticate(key.secret.expose()).await,
        Err(saas_authz::AuthError::ApiKeyRevoked)
    ) {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the revoked key still authenticates"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn with_the_model_custom_roles_rank_by_what_they_include_now() {
    let db = db().await;
    let t = tenant(&db, "ranks").await;
    let owner = user(&db, "owner@ranks.test", true).await;
    let admin = user(&db, "admin@ranks.test", true).await;
    let model = Model::new(["project:read", "billing:manage"]).unwrap();
    let authz = Authz::new(db.app().clone(), model.clone());
    let memberships = Memberships::new(db.app().clone()).with_model(model);
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    memberships.bootstrap_owner(&mut tx, owner.user_id).await.unwrap();
    memberships
        .add(&mut tx, &owner, admin.user_id, &["admin"])
        .await
        .unwrap();
    authz
        .define_role(&mut tx, &owner, RoleDef::new("lead", ["project:read"]))
        .await
        .unwrap();
    authz
        .define_role(
            &mut tx,
            &admin,
            RoleDef::new("helper", Vec::<String>::new()).including(["lead"]),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Viewer-level today: the admin may hand it out.
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    memberships
        .set_roles(&mut tx, &admin, admin.user_id, &["admin", "helper"])
        .await
        .unwrap();
    memberships
        .set_roles(&mut tx, &admin, admin.user_id, &["admin"])
        .await
        .unwrap();
    // The owner makes "lead" owner-level: "helper" is owner-level now too.
    authz
        .define_role(
            &mut tx,
            &owner,
            RoleDef::new("lead", ["project:read", "billing:manage"]),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let r = memberships
        .set_roles(&mut tx, &admin, admin.user_id, &["admin", "helper"])
        .await;
    assert!(
        matches!(r, Err(MemberError::AboveOwnRole(ref role)) if role == "helper"),
        "{r:?}"
    );
}
