//! Membership rules, the tenant layer's member check, MFA requirements, propagation.

use std::time::Duration;

use http::StatusCode;
use saas_authz::{AuthSettings, MemberError, Memberships};
use saas_core::Principal;
use saas_tenancy::{MembershipCheck, MembershipVerdict, PgTenantStore, TenantLayer, TenantTx, resolve};
use serde_json::Value;

use crate::{db, get_with, problem_type, send, tenant, user, whoami};

#[tokio::test]
async fn role_rules_hold_and_every_change_is_audited() {
    let db = db().await;
    let acme = tenant(&db, "acme").await;
    let owner = user(&db, "owner@acme.test", true).await;
    let admin = user(&db, "admin@acme.test", true).await;
    let member = user(&db, "member@acme.test", true).await;
    let m = Memberships::new(db.app().clone());

    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    m.bootstrap_owner(&mut tx, owner.user_id).await.unwrap();
    assert!(matches!(
        m.bootstrap_owner(&mut tx, admin.user_id).await,
        Err(MemberError::Forbidden)
    ));
    m.add(&mut tx, &owner, admin.user_id, &["admin"]).await.unwrap();
    assert!(matches!(
        m.add(&mut tx, &owner, admin.user_id, &["member"]).await,
        Err(MemberError::AlreadyMember)
    ));
    // An admin cannot grant owner, nor add someone as owner.
    assert!(
        matches!(m.add(&mut tx, &admin, member.user_id, &["owner"]).await, Err(MemberError::AboveOwnRole(r)) if r == "owner")
    );
    m.add(&mut tx, &admin, member.user_id, &["member"]).await.unwrap();
    // A member manages nobody; unknown roles and users are refused.
    let stranger = user(&db, "s@x.test", false).await;
    assert!(matches!(
        m.add(&mut tx, &member, stranger.user_id, &["viewer"]).await,
        Err(MemberError::Forbidden)
    ));
    assert!(matches!(
        m.add(&mut tx, &owner, stranger.user_id, &["root"]).await,
        Err(MemberError::UnknownRole(_))
    ));
    assert!(matches!(
        m.add(&mut tx, &owner, saas_core::UserId::new(), &["viewer"]).await,
        Err(MemberError::UnknownUser)
    ));
    assert!(matches!(
        m.add(&mut tx, &owner, stranger.user_id, &[]).await,
        Err(MemberError::NoRoles)
    ));
    // An admin can neither demote nor remove the owner, nor promote themselves.
    assert!(matches!(
        m.set_roles(&mut tx, &admin, owner.user_id, &["member"]).await,
        Err(MemberError::AboveOwnRole(_))
    ));
    assert!(matches!(
        m.remove(&mut tx, &admin, owner.user_id).await,
        Err(MemberError::AboveOwnRole(_))
    ));
    assert!(matches!(
        m.set_roles(&mut tx, &admin, admin.user_id, &["owner"]).await,
        Err(MemberError::AboveOwnRole(_))
    ));
    // The last owner can neither leave nor be demoted.
    assert!(matches!(
        m.remove(&mut tx, &owner, owner.user_id).await,
        Err(MemberError::LastOwner)
    ));
    assert!(matches!(
        m.set_roles(&mut tx, &owner, owner.user_id, &["admin"]).await,
        Err(MemberError::LastOwner)
    ));
    // With a second owner, the first may step down.
    m.set_roles(&mut tx, &owner, admin.user_id, &["owner", "admin"])
        .await
        .unwrap();
    m.set_roles(&mut tx, &owner, owner.user_id, &["admin"]).await.unwrap();
    let members = Memberships::list(&mut tx).await.unwrap();
    assert_eq!(members.len(), 3);
    assert_eq!(members.iter().filter(|x| x.has_role("owner")).count(), 1);
    // The member leaves by themselves.
    let left = m.remove(&mut tx, &member, member.user_id).await.unwrap();
    assert_eq!(left.roles, ["member"]);

    let audit: Vec<(String, Value)> =
        sqlx::query_as("SELECT action, metadata FROM saas.audit_log WHERE action LIKE 'member.%' ORDER BY seq")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    let actions: Vec<&str> = audit.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "member.added",
            "member.added",
            "member.added",
            "member.roles_changed",
            "member.roles_changed",
            "member.left"
        ]
    );
    let (_, demoted) = &audit[4];
    assert_eq!(demoted["before"]["roles"], serde_json::json!(["owner"]));
    assert_eq!(demoted["after"]["roles"], serde_json::json!(["admin"]));
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn two_owners_demoting_each_other_concurrently_leave_one() {
    let db = db().await;
    let acme = tenant(&db, "acme").await;
    let a = user(&db, "a@acme.test", true).await;
    let b = user(&db, "b@acme.test", true).await;
    let m = Memberships::new(db.app().clone());
    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    m.bootstrap_owner(&mut tx, a.user_id).await.unwrap();
    m.add(&mut tx, &a, b.user_id, &["owner"]).await.unwrap();
    tx.commit().await.unwrap();

    let step_down = |who: Principal| {
        let (m, pool) = (m.clone(), db.app().clone());
        async move {
            let mut tx = TenantTx::begin(&pool, acme).await.unwrap();
            let r = m.set_roles(&mut tx, &who, who.user_id, &["admin"]).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            if r.is_ok() {
                tx.commit().await.unwrap();
            }
            r.is_ok()
        }
    };
    let (ra, rb) = tokio::join!(step_down(a.clone()), step_down(b.clone()));
    assert!(ra ^ rb, "exactly one may step down: {ra} {rb}");
    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    let owners = Memberships::list(&mut tx)
        .await
        .unwrap()
        .into_iter()
        .filter(|x| x.has_role("owner"))
        .count();
    assert_eq!(owners, 1);
}

#[tokio::test]
async fn the_tenant_layer_admits_members_only_and_enforces_mfa() {
    let db = db().await;
    let (acme, globex) = (tenant(&db, "acme").await, tenant(&db, "globex").await);
    let owner = user(&db, "owner@acme.test", true).await;
    let outsider = user(&db, "outsider@globex.test", true).await;
    let m = Memberships::new(db.app().clone());
    for (t, u) in [(acme, &owner), (globex, &outsider)] {
        let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
        m.bootstrap_owner(&mut tx, u.user_id).await.unwrap();
        tx.commit().await.unwrap();
    }
    let app = |principal: Principal| {
        whoami()
            .layer(
                TenantLayer::new(resolve::header("x-tenant-id"), PgTenantStore::new(db.app().clone()))
                    .membership(m.clone()),
            )
            .layer(axum::Extension(principal))
    };
    // axum's Extension layer inserts the value itself; make the principal visible to the
    // tenant layer by putting it outside.
    let call = |p: Principal, t: saas_core::TenantId| {
        let app = app(p);
        async move { send(&app, get_with("/v1/me", &[("x-tenant-id", &t.to_string())])).await }
    };
    assert_eq!(call(owner.clone(), acme).await.0, StatusCode::OK);
    let (status, body) = call(outsider.clone(), acme).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem_type(&body), "tenant-not-found");

    // Acme requires MFA: the owner without a second factor is refused with a reason.
    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    m.update_settings(&mut tx, &owner, AuthSettings::default().with_require_mfa(true))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (status, body) = call(owner.clone().with_mfa(false), acme).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(problem_type(&body), "mfa-required");
    assert_eq!(call(owner.clone(), acme).await.0, StatusCode::OK);
    // Globex did not ask for it.
    assert_eq!(call(outsider.clone().with_mfa(false), globex).await.0, StatusCode::OK);
}

#[tokio::test]
async fn membership_changes_reach_another_process_within_a_second() {
    let db = db().await;
    let acme = tenant(&db, "acme").await;
    let owner = user(&db, "owner@acme.test", true).await;
    let member = user(&db, "member@acme.test", true).await;
    let here = Memberships::new(db.app().clone());
    let there = Memberships::new(db.app().clone());
    let _listening = there.listen();
    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    here.bootstrap_owner(&mut tx, owner.user_id).await.unwrap();
    here.add(&mut tx, &owner, member.user_id, &["member"]).await.unwrap();
    tx.commit().await.unwrap();
    assert!(matches!(
        there.is_member(acme, &member).await.unwrap(),
        MembershipVerdict::Member
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    here.remove(&mut tx, &owner, member.user_id).await.unwrap();
    tx.commit().await.unwrap();
    let started = std::time::Instant::now();
    while !matches!(
        there.is_member(acme, &member).await.unwrap(),
        MembershipVerdict::NotMember
    ) {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "removal did not arrive within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
