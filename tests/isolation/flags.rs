//! Feature flags: definitions are platform data that no tenant request can change, and
//! a tenant override set for B tells A nothing.

use saas_core::audit::{self, Actor};
use saas_flags::{Context, FlagAdmin, FlagDefinition, FlagStore, Reason};
use saas_tenancy::{PlatformPool, TenantTx};
use saas_tests::Fixture;

use super::code;

#[tokio::test]
async fn attack_42_a_tenant_transaction_cannot_change_flags_or_read_the_platform_chain() {
    let f = Fixture::new().await;
    let admin = FlagAdmin::new(PlatformPool::new(f.db.platform().clone()));
    admin
        .create(
            &Actor::System("seed".into()),
            FlagDefinition::new("beta")
                .enable_in("production", vec![])
                .plans(["enterprise"]),
        )
        .await
        .unwrap();
    admin
        .set_tenant_override(&Actor::System("seed".into()), "beta", f.b, Some(true))
        .await
        .unwrap();

    let mut tx = TenantTx::begin(f.db.app(), f.a).await.unwrap();
    for sql in [
        "UPDATE saas.flags SET definition = jsonb_set(definition, '{tenantOverrides}', '{}'::jsonb)",
        "INSERT INTO saas.flags (name, definition, version, change_seq, created_at, updated_at) VALUES ('x', '{}', 1, 1, now(), now())",
        "DELETE FROM saas.flags",
        "SELECT nextval('saas.flag_changes')",
    ] {
        let err = sqlx::query(sql).execute(&mut *tx).await.unwrap_err();
        assert_eq!(code(&err), "42501", "{sql}: {err}");
        drop(tx);
        tx = TenantTx::begin(f.db.app(), f.a).await.unwrap();
    }
    // A sees neither the platform chain nor B's record of its override.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.audit_log WHERE tenant_id IN ($1, $2)")
        .bind(audit::PLATFORM)
        .bind(f.b)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 0);
    drop(tx);

    // B's override applies to contexts of B only (the tenant comes from the tenant layer).
    let store = FlagStore::builder(f.db.app().clone(), "production")
        .listen(false)
        .load()
        .await
        .unwrap();
    let set = store.snapshot();
    let as_a = Context::new().tenant(f.a).plan("free");
    assert!(!set.is_enabled("beta", &as_a));
    assert_eq!(set.evaluate("beta", &as_a).reason, Reason::PlanExcluded);
    assert!(set.is_enabled("beta", &Context::new().tenant(f.b).plan("free")));
    saas_tenancy::verify_isolation(f.db.app()).await.unwrap();
}
