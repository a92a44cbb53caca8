//! Events: a tenant's outbox rows, webhook endpoints, delivery log and receipts are its
//! own; nothing can be published into another tenant.

use saas_core::crypto::Keyring;
use saas_events::webhook::Webhooks;
use saas_events::webhook::ssrf::SsrfPolicy;
use saas_events::{Publish, publish, publish_with};
use saas_tenancy::TenantTx;
use saas_tests::Fixture;

use super::code;

#[derive(serde::Serialize, serde::Deserialize)]
struct Note {
    text: String,
}

impl saas_events::Event for Note {
    const KIND: &'static str = "isolation.note";
}

#[tokio::test]
async fn attack_43_outbox_and_webhooks_of_b_are_invisible_and_unwritable_from_a() {
    let f = Fixture::new().await;
    let hooks = Webhooks::new(Keyring::from_spec(&format!("k:{}", Keyring::generate_key())).unwrap())
        .policy(SsrfPolicy::public_only().allow("127.0.0.1/32".parse().unwrap()), true);
    // B publishes an event and registers an endpoint.
    let mut tx = TenantTx::begin(f.db.app(), f.b).await.unwrap();
    let b_job = publish_with(
        &mut tx,
        &Note {
            text: "b's secret".into(),
        },
        &Publish::new().unique("b-key"),
    )
    .await
    .unwrap()
    .unwrap();
    let (b_endpoint, _) = hooks
        .create_endpoint(&mut tx, f.b, "http://127.0.0.1:9/hook", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut tx = TenantTx::begin(f.db.app(), f.a).await.unwrap();
    // Nothing of B's is visible.
    for sql in [
        "SELECT count(*) FROM saas.jobs",
        "SELECT count(*) FROM saas.jobs_done",
        "SELECT count(*) FROM saas.webhook_endpoints",
        "SELECT count(*) FROM saas.webhook_deliveries",
        "SELECT count(*) FROM saas.job_receipts",
    ] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 0, "{sql}");
    }
    // Publishing always lands in A; a row claiming B's tenant is refused.
    let err = sqlx::query(
        "INSERT INTO saas.jobs (id, queue, kind, tenant_id, payload, run_at, created_at, max_attempts) \
         VALUES (gen_random_uuid(), 'default', 'x', $1, '{}', now(), now(), 1)",
    )
    .bind(f.b)
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert_eq!(code(&err), "42501");
    drop(tx);
    let mut tx = TenantTx::begin(f.db.app(), f.a).await.unwrap();
    // B's pending unique key neither blocks A nor tells A it exists.
    let a_job = publish_with(&mut tx, &Note { text: "a".into() }, &Publish::new().unique("b-key"))
        .await
        .unwrap();
    assert!(a_job.is_some(), "B's unique key must not be an oracle");
    let again = publish_with(&mut tx, &Note { text: "a".into() }, &Publish::new().unique("b-key"))
        .await
        .unwrap();
    assert!(again.is_none(), "A's own key still holds");
    publish(&mut tx, &Note { text: "a".into() }).await.unwrap();
    // Workers' columns cannot be touched by the application role.
    let err = sqlx::query("UPDATE saas.jobs SET state = 'dead'")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42501");
    drop(tx);
    let mut tx = TenantTx::begin(f.db.app(), f.a).await.unwrap();
    // B's endpoint cannot be changed, rotated or deleted from A.
    assert!(hooks.set_enabled(&mut tx, b_endpoint.id, false).await.is_err());
    assert!(
        hooks
            .rotate_secret(&mut tx, f.a, b_endpoint.id, std::time::Duration::from_secs(60))
            .await
            .is_err()
    );
    assert!(hooks.delete_endpoint(&mut tx, b_endpoint.id).await.is_err());
    // Sending a webhook from A reaches no endpoint of B.
    let (_, queued) = saas_events::webhook::send(&mut tx, "x.y", &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(queued, 0);
    drop(tx);
    // B's job is intact.
    let state: (String, Option<uuid::Uuid>) = sqlx::query_as("SELECT state, tenant_id FROM saas.jobs WHERE id = $1")
        .bind(b_job)
        .fetch_one(f.db.platform())
        .await
        .unwrap();
    assert_eq!(state, ("pending".to_owned(), Some(*f.b.as_uuid())));
    saas_tenancy::verify_isolation(f.db.app()).await.unwrap();
}
