use std::sync::Arc;
use std::time::{Duration, Instant};

use saas_core::audit::{self, Actor};
use saas_core::clock::{Clock, ManualClock};
use saas_core::{TenantId, UserId};
use saas_flags::{
    Constraint, Context, DefinitionError, FlagAdmin, FlagDefinition, FlagError, FlagKind, FlagStore, Reason, Segment,
    Staleness, Strategy, Variant,
};
use saas_tenancy::PlatformPool;

use crate::db;

fn admin(db: &saas_core::testkit::TestDb) -> FlagAdmin {
    FlagAdmin::new(PlatformPool::new(db.platform().clone()))
}

fn staff() -> Actor {
    Actor::User(UserId::new())
}

async fn count_flags(db: &saas_core::testkit::TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM saas.flags")
        .fetch_one(db.platform())
        .await
        .unwrap()
}

#[tokio::test]
async fn invalid_definitions_are_refused_with_typed_errors_and_nothing_is_saved() {
    let db = db().await;
    let admin = admin(&db);
    let actor = staff();
    type Check = fn(&DefinitionError) -> bool;
    let cases: Vec<(FlagDefinition, Check)> = vec![
        (
            FlagDefinition::new("op").enable_in(
                "production",
                vec![Strategy::new("default").constraint(Constraint::new("userId", "LIKE", ["a"]))],
            ),
            |e| matches!(e, DefinitionError::UnknownOperator { operator, .. } if operator == "LIKE"),
        ),
        (
            FlagDefinition::new("re").enable_in(
                "production",
                vec![Strategy::new("default").constraint(Constraint::single("email", "REGEX", "(unclosed"))],
            ),
            |e| matches!(e, DefinitionError::Value { operator, .. } if operator == "REGEX"),
        ),
        (
            FlagDefinition::new("weights")
                .enable_in("production", vec![])
                .variant(Variant::new("a", 500))
                .variant(Variant::new("b", 400)),
            |e| matches!(e, DefinitionError::Weights { reason, .. } if reason.contains("900")),
        ),
        (
            FlagDefinition::new("semver").enable_in(
                "production",
                vec![Strategy::new("default").constraint(Constraint::single("appVersion", "SEMVER_GT", "v1.2"))],
            ),
            |e| matches!(e, DefinitionError::Value { .. }),
        ),
        (
            FlagDefinition::new("rollout").enable_in("production", vec![Strategy::rollout(150, "default", "g")]),
            |e| matches!(e, DefinitionError::Parameter { parameter, .. } if parameter == "rollout"),
        ),
        (
            FlagDefinition::new("cidr").enable_in(
                "production",
                vec![Strategy::new("remoteAddress").param("IPs", "10.0.0.0/8, nonsense")],
            ),
            |e| matches!(e, DefinitionError::Value { .. }),
        ),
        (FlagDefinition::new("orphan").depends_on("missing-parent"), |e| {
            matches!(e, DefinitionError::Dependency { .. })
        }),
        (FlagDefinition::new(""), |e| {
            matches!(e, DefinitionError::InvalidName { .. })
        }),
        (
            FlagDefinition::new("custom").enable_in("production", vec![Strategy::new("myCustomStrategy")]),
            |e| matches!(e, DefinitionError::UnknownStrategy { .. }),
        ),
    ];
    for (def, check) in cases {
        let name = def.name.clone();
        match admin.create(&actor, def).await {
            Err(FlagError::Definition(e)) => {
                assert!(check(&e), "{name}: unexpected {e:?}");
                let p = saas_core::problem::IntoProblem::to_problem(&FlagError::Definition(e));
                assert_eq!(p.status(), http::StatusCode::UNPROCESSABLE_ENTITY);
            }
            other => panic!("{name}: expected a definition error, got {other:?}"),
        }
    }
    assert!(matches!(
        admin.toggle(&actor, "nope", "production", true).await,
        Err(FlagError::NotFound(_))
    ));
    assert!(matches!(
        admin
            .create(&actor, FlagDefinition::new("env").enable_in("moon", vec![]))
            .await,
        Err(FlagError::UnknownEnvironment(_))
    ));
    assert_eq!(count_flags(&db).await, 0, "nothing was saved");
    let audit_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.audit_log")
        .fetch_one(db.platform())
        .await
        .unwrap();
    assert_eq!(audit_rows, 0);
}

#[tokio::test]
async fn changes_are_versioned_audited_and_reach_a_second_store_within_a_second() {
    let db = db().await;
    let admin = admin(&db);
    let actor = staff();
    // Two independent stores, each with its own pool as the application role.
    let pool_a = sqlx::PgPool::connect_with(db.app_options()).await.unwrap();
    let pool_b = sqlx::PgPool::connect_with(db.app_options()).await.unwrap();
    let a = FlagStore::load(&pool_a, "production").await.unwrap();
    let b = FlagStore::load(&pool_b, "production").await.unwrap();
    let ctx = Context::new().user_id("u1");
    assert!(!b.snapshot().is_enabled("checkout-v2", &ctx));

    let v = admin
        .create(
            &actor,
            FlagDefinition::new("checkout-v2")
                .kind(FlagKind::Release)
                .enable_in("production", vec![]),
        )
        .await
        .unwrap();
    assert_eq!(v, 1);
    let started = Instant::now();
    while !b.snapshot().is_enabled("checkout-v2", &ctx) {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "creation not seen within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen_after = started.elapsed();

    // The kill switch.
    assert_eq!(
        admin.toggle(&actor, "checkout-v2", "production", false).await.unwrap(),
        2
    );
    let started = Instant::now();
    while b.snapshot().is_enabled("checkout-v2", &ctx) || a.snapshot().is_enabled("checkout-v2", &ctx) {
        assert!(started.elapsed() < Duration::from_secs(1), "toggle not seen within 1 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e = b.snapshot().evaluate("checkout-v2", &ctx).reason;
    assert_eq!(e, Reason::Disabled);
    assert_eq!(b.snapshot().evaluate("checkout-v2", &ctx).version, 2);
    println!("creation seen by the second store after {seen_after:?}");

    // Optimistic concurrency.
    let stale = FlagDefinition::new("checkout-v2").enable_in("production", vec![]);
    assert!(matches!(
        admin.update(&actor, stale.clone(), 1).await,
        Err(FlagError::VersionConflict {
            expected: 1,
            actual: 2,
            ..
        })
    ));
    assert_eq!(admin.update(&actor, stale, 2).await.unwrap(), 3);

    // History with before/after and the actor, in the platform audit chain.
    let h = admin.history("checkout-v2").await.unwrap();
    assert_eq!(
        h.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["flag.created", "flag.toggled", "flag.updated"]
    );
    assert!(h[0].before.is_none());
    assert_eq!(
        h[1].before.as_ref().unwrap()["environments"]["production"]["enabled"],
        true
    );
    assert_eq!(
        h[1].after.as_ref().unwrap()["environments"]["production"]["enabled"],
        false
    );
    let Actor::User(u) = actor else { unreachable!() };
    assert_eq!(h[2].actor_id, u.to_string());
    let mut conn = db.platform().acquire().await.unwrap();
    assert!(
        audit::verify_chain(&mut conn, audit::PLATFORM)
            .await
            .unwrap()
            .is_intact()
    );

    // The application role cannot write definitions.
    let denied = sqlx::query("UPDATE saas.flags SET version = 99").execute(&pool_a).await;
    assert!(denied.is_err(), "the application role must not change flags");
}

#[tokio::test]
async fn tenant_overrides_and_plans_target_tenants_and_are_audited_in_the_tenant_chain() {
    let db = db().await;
    let admin = admin(&db);
    let actor = staff();
    let store = FlagStore::builder(db.app().clone(), "production")
        .listen(false)
        .load()
        .await
        .unwrap();
    let (acme, globex, initech) = (TenantId::new(), TenantId::new(), TenantId::new());
    admin
        .create(
            &actor,
            FlagDefinition::new("sso")
                .kind(FlagKind::Permission)
                .enable_in("production", vec![])
                .plans(["enterprise"]),
        )
        .await
        .unwrap();
    admin
        .set_tenant_override(&actor, "sso", globex, Some(true))
        .await
        .unwrap();
    admin
        .set_tenant_override(&actor, "sso", initech, Some(false))
        .await
        .unwrap();
    store.reload().await.unwrap();
    let set = store.snapshot();
    let ctx = |t: TenantId, plan: &str| Context::new().tenant(t).plan(plan).user_id("u");
    assert_eq!(set.evaluate("sso", &ctx(acme, "enterprise")).reason, Reason::Static);
    assert!(set.is_enabled("sso", &ctx(acme, "enterprise")));
    assert_eq!(set.evaluate("sso", &ctx(acme, "pro")).reason, Reason::PlanExcluded);
    assert!(
        set.is_enabled("sso", &ctx(globex, "free")),
        "forced on despite the plan"
    );
    assert_eq!(set.evaluate("sso", &ctx(globex, "free")).reason, Reason::TenantOverride);
    assert!(
        !set.is_enabled("sso", &ctx(initech, "enterprise")),
        "forced off despite the plan"
    );

    // Removing the override.
    admin.set_tenant_override(&actor, "sso", globex, None).await.unwrap();
    store.reload().await.unwrap();
    assert!(!store.snapshot().is_enabled("sso", &ctx(globex, "free")));

    // The tenant's own audit log shows the overrides on it.
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM saas.audit_log WHERE tenant_id = $1 AND action = 'flag.override_set'")
            .bind(globex)
            .fetch_one(db.platform())
            .await
            .unwrap();
    assert_eq!(n, 2);

    // The export turns them into constraints an Unleash SDK understands.
    let export = admin.export_unleash("production").await.unwrap();
    let f = &export.features[0];
    assert_eq!(f.strategies.len(), 1);
    assert!(
        f.strategies[0]
            .constraints
            .iter()
            .any(|c| c.context_name == "tenantId" && c.operator == "NOT_IN")
    );
    assert!(
        f.strategies[0]
            .constraints
            .iter()
            .any(|c| c.context_name == "plan" && c.operator == "IN")
    );
}

#[tokio::test]
async fn starts_from_the_snapshot_file_when_the_database_is_down() {
    let db = db().await;
    let admin = admin(&db);
    let dir = std::env::temp_dir().join(format!("saas-flags-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("flags.json");
    admin
        .create(
            &staff(),
            FlagDefinition::new("beta")
                .enable_in("production", vec![Strategy::rollout(100, "default", "beta")])
                .variant(Variant::new("a", 1000).payload("string", "A")),
        )
        .await
        .unwrap();
    let store = FlagStore::builder(db.app().clone(), "production")
        .snapshot_file(&file)
        .listen(false)
        .load()
        .await
        .unwrap();
    assert!(store.snapshot().is_enabled("beta", &Context::new().user_id("1")));
    assert!(file.exists());

    // A pool that cannot connect: the store starts from the file.
    let down = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(db.app_options().port(1));
    let offline = FlagStore::builder(down.clone(), "production")
        .snapshot_file(&file)
        .listen(false)
        .load()
        .await
        .unwrap();
    let set = offline.snapshot();
    assert!(set.is_enabled("beta", &Context::new().user_id("1")));
    assert_eq!(set.variant("beta", &Context::new().user_id("1")).name, "a");
    // Without a file, the failure is reported.
    let err = FlagStore::builder(down, "production")
        .listen(false)
        .load()
        .await
        .unwrap_err();
    assert!(matches!(err, FlagError::Database(_)), "{err:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn usage_is_counted_in_batches_and_the_stale_report_names_old_flags() {
    let db = db().await;
    let clock = Arc::new(ManualClock::starting_now());
    let admin = admin(&db).with_clock(clock.clone());
    let actor = staff();
    admin
        .create(
            &actor,
            FlagDefinition::new("done").enable_in("production", vec![Strategy::rollout(100, "default", "done")]),
        )
        .await
        .unwrap();
    admin
        .create(
            &actor,
            FlagDefinition::new("unused").enable_in("production", vec![Strategy::rollout(10, "default", "x")]),
        )
        .await
        .unwrap();
    admin
        .create(
            &actor,
            FlagDefinition::new("busy").enable_in("production", vec![Strategy::rollout(10, "default", "y")]),
        )
        .await
        .unwrap();
    admin
        .create(
            &actor,
            FlagDefinition::new("killswitch")
                .kind(FlagKind::KillSwitch)
                .enable_in("production", vec![]),
        )
        .await
        .unwrap();
    let store = FlagStore::builder(db.app().clone(), "production")
        .listen(false)
        .load()
        .await
        .unwrap();
    let flags = saas_flags::Flags::new(store.snapshot(), Context::new().user_id("u"));
    for _ in 0..100 {
        flags.is_enabled("busy");
    }
    flags.is_enabled("killswitch");
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT coalesce(sum(evaluations), 0)::bigint FROM saas.flag_usage")
            .fetch_one(db.platform())
            .await
            .unwrap()
    };
    assert_eq!(rows().await, 0, "nothing is written per evaluation");
    assert_eq!(store.flush_usage().await.unwrap(), 2);
    assert_eq!(rows().await, 101);
    // Counts survive a reload (the new set adopts the counters).
    flags.is_enabled("busy");
    store.reload().await.unwrap();
    assert_eq!(store.flush_usage().await.unwrap(), 1);
    assert_eq!(rows().await, 102);

    // Thirty days later: "done" is fully rolled out and unchanged, "unused" never ran.
    clock.advance(chrono::Duration::days(30));
    // Evaluations happen "now" in the database; pretend busy ran recently.
    sqlx::query("UPDATE saas.flag_usage SET last_evaluated_at = $1")
        .bind(clock.now())
        .execute(db.platform())
        .await
        .unwrap();
    let report = admin.stale_report("production", 14).await.unwrap();
    let names: Vec<(&str, &Staleness)> = report.iter().map(|s| (s.name.as_str(), &s.staleness)).collect();
    assert_eq!(names.len(), 2, "{report:?}");
    assert!(matches!(names[0], ("done", Staleness::FullyRolledOut { .. })));
    assert!(matches!(names[1], ("unused", Staleness::NotEvaluated { last: None })));
}

#[tokio::test]
async fn archive_refuses_while_depended_on_and_segments_are_shared() {
    let db = db().await;
    let admin = admin(&db);
    let actor = staff();
    admin
        .put_segment(
            &actor,
            Segment {
                id: 1,
                name: Some("beta-testers".into()),
                constraints: vec![Constraint::new("userId", "IN", ["7", "8"])],
            },
        )
        .await
        .unwrap();
    let bad = Segment {
        id: 2,
        name: None,
        constraints: vec![Constraint::new("userId", "NOPE", ["7"])],
    };
    assert!(matches!(
        admin.put_segment(&actor, bad).await,
        Err(FlagError::Definition(DefinitionError::UnknownOperator { .. }))
    ));
    let mut s = Strategy::new("default");
    s.segments.push(1);
    admin
        .create(&actor, FlagDefinition::new("parent").enable_in("production", vec![s]))
        .await
        .unwrap();
    admin
        .create(
            &actor,
            FlagDefinition::new("child")
                .enable_in("production", vec![])
                .depends_on("parent"),
        )
        .await
        .unwrap();
    // A grandchild is refused: Unleash allows one level.
    assert!(matches!(
        admin
            .create(&actor, FlagDefinition::new("grandchild").depends_on("child"))
            .await,
        Err(FlagError::Definition(DefinitionError::Dependency { .. }))
    ));
    let store = FlagStore::builder(db.app().clone(), "production")
        .listen(false)
        .load()
        .await
        .unwrap();
    let set = store.snapshot();
    assert!(set.is_enabled("child", &Context::new().user_id("7")));
    assert!(!set.is_enabled("child", &Context::new().user_id("9")));
    assert_eq!(
        set.evaluate("child", &Context::new().user_id("9")).reason,
        Reason::DependencyUnmet
    );

    assert!(matches!(
        admin.archive(&actor, "parent").await,
        Err(FlagError::Definition(DefinitionError::Dependency { .. }))
    ));
    admin.archive(&actor, "child").await.unwrap();
    admin.archive(&actor, "parent").await.unwrap();
    store.reload().await.unwrap();
    assert_eq!(
        store.snapshot().evaluate("parent", &Context::new()).reason,
        Reason::NotFound
    );
    assert!(matches!(
        admin.create(&actor, FlagDefinition::new("parent")).await,
        Err(FlagError::Exists(_))
    ));
}

#[tokio::test]
async fn imports_an_unleash_payload_all_or_nothing() {
    let db = db().await;
    let admin = admin(&db);
    let actor = staff();
    let good = br#"{"version":2,"features":[
        {"name":"a","enabled":true,"strategies":[{"name":"flexibleRollout","parameters":{"rollout":"50","stickiness":"default","groupId":"a"}}],
         "variants":[{"name":"x","weight":500},{"name":"y","weight":500}]},
        {"name":"b","enabled":false,"strategies":[],"dependencies":[{"feature":"a"}]}]}"#;
    let n = admin
        .import_unleash(
            &actor,
            "production",
            saas_flags::unleash::ClientFeatures::from_json(good).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    let bad = br#"{"version":2,"features":[
        {"name":"c","enabled":true,"strategies":[]},
        {"name":"d","enabled":true,"strategies":[{"name":"default","constraints":[{"contextName":"x","operator":"BOGUS","values":[]}]}]}]}"#;
    let err = admin
        .import_unleash(
            &actor,
            "production",
            saas_flags::unleash::ClientFeatures::from_json(bad).unwrap(),
        )
        .await;
    assert!(
        matches!(err, Err(FlagError::Definition(DefinitionError::UnknownOperator { .. }))),
        "{err:?}"
    );
    assert_eq!(count_flags(&db).await, 2, "the failed import saved nothing");
    let export = admin.export_unleash("production").await.unwrap();
    assert_eq!(export.features.len(), 2);
}

async fn listeners(db: &saas_core::testkit::TestDb) -> i64 {
    db.listening_connections().await.unwrap()
}

#[tokio::test]
async fn dropping_the_store_releases_its_listeners_connection_at_once() {
    let db = db().await;
    let store = FlagStore::load(db.app(), "production").await.unwrap();
    let started = Instant::now();
    while listeners(&db).await != 1 {
        assert!(started.elapsed() < Duration::from_secs(2), "the store listens");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // No change is made: the store's going away alone must close the connection.
    drop(store);
    let started = Instant::now();
    while listeners(&db).await != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the dropped store's listener kept its connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
