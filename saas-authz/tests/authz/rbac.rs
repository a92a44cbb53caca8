//! The evaluator against casbin-rs (`rbac_with_domains`, tenants as domains), and against
//! the database: custom roles, grants, escalation, propagation.

use std::time::Duration;

use casbin::{CachedApi, CachedEnforcer, CoreApi, DefaultModel, Enforcer, MemoryAdapter, MgmtApi};
use saas_authz::rbac::{Authz, GrantDef, GrantSubject, Model, RbacError, RoleDef};
use saas_authz::{MemberError, Memberships};
use saas_tenancy::TenantTx;

use crate::workload::{MODEL, generate};
use crate::{db, tenant, user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_answers_as_casbin_on_100k_random_queries() {
    let w = generate(300, 42);
    let authz = w.authz();
    let principals = w.principals();
    let (p, g) = w.casbin_rules();
    let mut plain = Enforcer::new(DefaultModel::from_str(MODEL).await.unwrap(), MemoryAdapter::default())
        .await
        .unwrap();
    plain.add_policies(p.clone()).await.unwrap();
    plain.add_grouping_policies(g.clone()).await.unwrap();
    let mut cached = CachedEnforcer::new(DefaultModel::from_str(MODEL).await.unwrap(), MemoryAdapter::default())
        .await
        .unwrap();
    cached.set_cache(Box::new(casbin::DefaultCache::new(1_000_000)));
    cached.add_policies(p).await.unwrap();
    cached.add_grouping_policies(g).await.unwrap();

    let perms: Vec<_> = (0..50)
        .map(|i| authz.permission(&crate::workload::permission(i)).unwrap())
        .collect();
    let mut allowed = 0;
    let started = std::time::Instant::now();
    let mut plain_time = Duration::ZERO;
    for (i, q) in w.queries(100_000, 7).into_iter().enumerate() {
        let ours = authz
            .check(&principals[q.user], w.tenants[q.tenant], perms[q.permission], None)
            .allowed();
        let req = w.casbin_request(q);
        let theirs = cached.enforce(req.clone()).unwrap();
        assert_eq!(ours, theirs, "query {i}: {q:?} {req:?}");
        // The plain enforcer (no cache) on a subset: it checks every rule in turn.
        if i % 100 == 0 {
            let t = std::time::Instant::now();
            assert_eq!(ours, plain.enforce(req.clone()).unwrap(), "plain, query {i}");
            plain_time += t.elapsed();
        }
        allowed += usize::from(ours);
    }
    eprintln!(
        "100k queries in {:?}, plain enforcer share {:?}",
        started.elapsed(),
        plain_time
    );
    // A meaningful mix of both answers.
    assert!(allowed > 10_000 && allowed < 90_000, "{allowed} allowed");
}

#[tokio::test]
async fn custom_roles_grants_and_escalation_in_the_database() {
    let db = db().await;
    let acme = tenant(&db, "acme").await;
    let owner = user(&db, "owner@acme.test", true).await;
    let admin = user(&db, "admin@acme.test", true).await;
    let dev = user(&db, "dev@acme.test", true).await;
    let model = Model::new([
        "project:read",
        "project:delete",
        "doc:read",
        "doc:edit",
        "billing:manage",
    ])
    .unwrap();
    // Custom roles are ranked with the model (without it they count as owner-level).
    let m = Memberships::new(db.app().clone()).with_model(model.clone());
    let authz = Authz::new(db.app().clone(), model);
    let here = authz.clone();
    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    m.bootstrap_owner(&mut tx, owner.user_id).await.unwrap();
    m.add(&mut tx, &owner, admin.user_id, &["admin"]).await.unwrap();
    m.add(&mut tx, &owner, dev.user_id, &["viewer"]).await.unwrap();

    // An admin cannot define a role with billing (admins lack it); the owner can.
    let biller = RoleDef::new("biller", ["billing:manage"]);
    assert!(matches!(
        authz.define_role(&mut tx, &admin, biller.clone()).await,
        Err(RbacError::Escalation(_))
    ));
    authz.define_role(&mut tx, &owner, biller).await.unwrap();
    authz
        .define_role(&mut tx, &admin, RoleDef::new("editor", ["doc:*"]).including(["viewer"]))
        .await
        .unwrap();
    assert!(matches!(
        authz
            .define_role(&mut tx, &admin, RoleDef::new("loop", ["doc:read"]).including(["loop"]))
            .await,
        Err(RbacError::Model(_))
    ));
    assert!(matches!(
        authz.define_role(&mut tx, &admin, RoleDef::new("x", ["doc:fly"])).await,
        Err(RbacError::Model(_))
    ));
    assert!(matches!(
        authz
            .define_role(&mut tx, &admin, RoleDef::new("owner", ["doc:read"]))
            .await,
        Err(RbacError::Model(_))
    ));
    assert!(matches!(
        authz.define_role(&mut tx, &dev, RoleDef::new("y", ["doc:read"])).await,
        Err(RbacError::Forbidden)
    ));
    // Invitations name custom roles too, under the same rank rule.
    let invitations = saas_authz::Invitations::new(m.clone(), saas_authz::RecordingMailer::new());
    let invited = invitations
        .invite(&mut tx, &admin, "eve@acme.test", "editor")
        .await
        .unwrap();
    assert_eq!(invited.role, "editor");
    assert!(matches!(
        invitations.invite(&mut tx, &admin, "mal@acme.test", "biller").await,
        Err(saas_authz::InvitationError::Member(MemberError::AboveOwnRole(_)))
    ));
    assert!(matches!(
        invitations.invite(&mut tx, &admin, "x@acme.test", "ghost").await,
        Err(saas_authz::InvitationError::Member(MemberError::UnknownRole(_)))
    ));
    // The admin cannot hand out the owner-level custom role either.
    assert!(matches!(
        m.set_roles(&mut tx, &admin, dev.user_id, &["biller"]).await,
        Err(MemberError::AboveOwnRole(_))
    ));

    let project = uuid::Uuid::now_v7();
    let doc = uuid::Uuid::now_v7();
    authz
        .set_parent(&mut tx, ("doc", doc), Some(("project", project)))
        .await
        .unwrap();
    assert!(matches!(
        authz
            .grant(
                &mut tx,
                &admin,
                GrantDef::new("project", project, GrantSubject::User(dev.user_id), "biller")
            )
            .await,
        Err(RbacError::Escalation(_))
    ));
    let grant = authz
        .grant(
            &mut tx,
            &admin,
            GrantDef::new("project", project, GrantSubject::User(dev.user_id), "editor"),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();

    authz.reload(acme).await.unwrap();
    let scoped = authz.for_tenant(acme);
    assert!(
        scoped.require(&dev, "doc:edit", doc).is_ok(),
        "inherited from the project grant"
    );
    assert!(scoped.require_any(&dev, "doc:edit").is_err());
    assert!(scoped.require(&dev, "doc:read", doc).is_ok());
    assert_eq!(
        authz.accessible(&dev, acme, authz.permission("doc:edit").unwrap(), "doc"),
        saas_authz::Access::Only(vec![doc])
    );

    // A second process follows the revocation within a second.
    let there = Authz::new(db.app().clone(), here.model().clone());
    there.ensure(acme).await.unwrap();
    let _listening = there.listen();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(there.for_tenant(acme).require(&dev, "doc:edit", doc).is_ok());
    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    authz.revoke_grant(&mut tx, &admin, grant).await.unwrap();
    // A pending invitation still names the role: revoke it first.
    assert!(matches!(
        authz.delete_role(&mut tx, &admin, "editor").await,
        Err(RbacError::InUse(_))
    ));
    invitations.revoke(&mut tx, &admin, invited.id).await.unwrap();
    assert!(matches!(authz.delete_role(&mut tx, &admin, "editor").await, Ok(())));
    tx.commit().await.unwrap();
    let started = std::time::Instant::now();
    while there.for_tenant(acme).require(&dev, "doc:edit", doc).is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the revocation did not arrive within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM saas.audit_log WHERE action LIKE 'role.%' OR action LIKE 'grant.%' ORDER BY seq",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(
        actions,
        [
            "role.defined",
            "role.defined",
            "grant.created",
            "grant.revoked",
            "role.deleted"
        ]
    );
}

#[tokio::test]
async fn require_permission_guards_routes_and_the_extractor_checks_resources() {
    use axum::routing::{delete, get};
    use http::StatusCode;
    use saas_authz::RequirePermission;
    use saas_core::Principal;
    use saas_tenancy::{PgTenantStore, TenantLayer, resolve};

    use crate::{get_with, problem_type, send};

    let db = db().await;
    let acme = tenant(&db, "acme").await;
    let owner = user(&db, "owner@acme.test", true).await;
    let viewer = user(&db, "viewer@acme.test", true).await;
    let m = Memberships::new(db.app().clone());
    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    m.bootstrap_owner(&mut tx, owner.user_id).await.unwrap();
    m.add(&mut tx, &owner, viewer.user_id, &["viewer"]).await.unwrap();
    tx.commit().await.unwrap();
    let authz = Authz::new(
        db.app().clone(),
        Model::new(["project:read", "project:delete"]).unwrap(),
    );
    assert!(
        RequirePermission::new(&authz, "project:destroy").is_err(),
        "unknown names fail at construction"
    );

    let app = |p: Principal| {
        axum::Router::new()
            .route(
                "/v1/projects",
                get(|| async { axum::Json(serde_json::json!({"ok": true})) }),
            )
            .route(
                "/v1/projects/{id}",
                delete(
                    |p: Principal, authz: Authz, axum::extract::Path(id): axum::extract::Path<uuid::Uuid>| async move {
                        authz
                            .require(&p, "project:delete", id)
                            .map(|()| axum::Json(serde_json::json!({"deleted": id})))
                    },
                ),
            )
            .route_layer(RequirePermission::new(&authz, "project:read").unwrap())
            .layer(axum::Extension(authz.clone()))
            .layer(
                TenantLayer::new(resolve::header("x-tenant-id"), PgTenantStore::new(db.app().clone()))
                    .membership(m.clone()),
            )
            .layer(axum::Extension(p))
    };
    let h = [("x-tenant-id", "acme")];
    assert_eq!(
        send(&app(viewer.clone()), get_with("/v1/projects", &h)).await.0,
        StatusCode::OK
    );
    let del = |p: Principal| {
        let app = app(p);
        async move {
            let req = http::Request::delete(format!("/v1/projects/{}", uuid::Uuid::now_v7()))
                .header("x-tenant-id", "acme")
                .body(axum::body::Body::empty())
                .unwrap();
            send(&app, req).await
        }
    };
    let (status, body) = del(viewer.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(problem_type(&body), "permission-denied");
    assert_eq!(body["permission"], "project:delete");
    assert!(
        !body.to_string().contains("viewer"),
        "the body names the permission, not the roles"
    );
    assert_eq!(del(owner.clone()).await.0, StatusCode::OK);
}
