//! Email through the outbox, sent over SMTP to a real local sink.

use std::sync::Arc;
use std::time::Duration;

use saas_core::TenantId;
use saas_core::crypto::Keyring;
use saas_events::Worker;
use saas_events::mail::{self, MailHandler, SmtpMailer, Templates};
use saas_events::testkit::SmtpSink;
use saas_tenancy::TenantTx;

use crate::{db, platform, until};

#[tokio::test]
async fn emails_are_outbox_jobs_sent_over_smtp_and_never_for_a_rollback() {
    let db = db().await;
    let sink = SmtpSink::start(Some("nobody@example.com")).await.unwrap();
    let port = sink.port();
    let t = TenantId::new();
    let invite = serde_json::json!({"inviter": "Ada", "tenant": "Acme", "role": "member", "link": "https://acme.example/i/abc", "expires": "Friday"});

    // Rolled back: never sent.
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    mail::queue(&mut tx, "invitation", &["ghost@example.com"], invite.clone())
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // Committed: sent.
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    mail::queue(&mut tx, "invitation", &["bob@example.com"], invite.clone())
        .await
        .unwrap();
    let rejected = mail::queue(&mut tx, "invitation", &["nobody@example.com"], invite)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        mail::queue(
            &mut TenantTx::begin(db.app(), t).await.unwrap(),
            "invitation",
            &["not-an-address"],
            serde_json::json!({})
        )
        .await
        .is_err()
    );

    let mailer = SmtpMailer::unencrypted("127.0.0.1", port, "Acme <noreply@acme.example>").unwrap();
    let p = platform(&db, 4).await;
    let worker = Worker::builder(p.clone())
        .queues([mail::QUEUE])
        .poll_interval(Duration::from_millis(50))
        .handle(MailHandler::new(mailer, Templates::built_in()))
        .start()
        .await
        .unwrap();
    let jobs = saas_events::Jobs::new(p);
    assert!(
        until(Duration::from_secs(10), async || jobs
            .state(Some(t), rejected)
            .await
            .unwrap()
            .0
            == "dead")
        .await
    );
    assert!(until(Duration::from_secs(10), async || sink.received().len() == 1).await);
    worker.shutdown(Duration::from_secs(1)).await;

    let got = sink.received();
    assert_eq!(got.len(), 1, "only the committed, deliverable message: {got:?}");
    let m = &got[0];
    assert_eq!(m.to, ["bob@example.com"]);
    assert!(m.from.contains("noreply@acme.example"));
    assert!(m.data.contains("Subject: Ada invited you to Acme"), "{}", m.data);
    assert!(m.data.contains("join Acme as member"));
    assert!(m.data.contains("text/html"));
    // The 550 was permanent: dead-lettered after one attempt, with the server's words.
    let dead = jobs.dead(mail::QUEUE, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 1);
    assert!(
        dead[0].last_error.as_deref().unwrap().contains("550"),
        "{:?}",
        dead[0].last_error
    );
}

#[tokio::test]
async fn sealed_values_sit_encrypted_in_the_job_and_open_only_for_their_tenant() {
    let db = db().await;
    let sink = SmtpSink::start(None).await.unwrap();
    let keyring = Arc::new(Keyring::from_spec(&format!("k1:{}", Keyring::generate_key())).unwrap());
    let (t, other) = (TenantId::new(), TenantId::new());
    let link = "https://acme.example/invitations/accept?token=inv_SECRET123";
    let ctx = serde_json::json!({"inviter": "Ada", "tenant": "Acme", "role": "member", "expires": "Friday"});
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    mail::queue_sealed(
        &mut tx,
        t,
        &keyring,
        "invitation",
        &["bob@example.com"],
        ctx.clone(),
        &[("link", link)],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(
        mail::queue_sealed(
            &mut TenantTx::begin(db.app(), t).await.unwrap(),
            t,
            &keyring,
            "invitation",
            &["bob@example.com"],
            serde_json::json!([1]),
            &[]
        )
        .await
        .is_err(),
        "a context that is not an object"
    );

    // What the platform sees in the job table: ciphertext only.
    let payloads: Vec<String> = sqlx::query_scalar("SELECT payload::text FROM saas.jobs")
        .fetch_all(db.platform())
        .await
        .unwrap();
    assert_eq!(payloads.len(), 1);
    assert!(!payloads[0].contains("SECRET123"), "{}", payloads[0]);
    assert!(payloads[0].contains("\"sealed\""), "{}", payloads[0]);

    // The same ciphertext copied into another tenant's e-mail does not open there.
    let stolen: serde_json::Value = serde_json::from_str(&payloads[0]).unwrap();
    let mut tx = TenantTx::begin(db.app(), other).await.unwrap();
    let moved = mail::queue(&mut tx, "invitation", &["eve@example.com"], stolen["context"].clone())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mailer = SmtpMailer::unencrypted("127.0.0.1", sink.port(), "Acme <noreply@acme.example>").unwrap();
    let p = platform(&db, 4).await;
    let worker = Worker::builder(p.clone())
        .queues([mail::QUEUE])
        .poll_interval(Duration::from_millis(50))
        .handle(MailHandler::new(mailer, Templates::built_in()).unseal_with(Arc::clone(&keyring)))
        .start()
        .await
        .unwrap();
    let jobs = saas_events::Jobs::new(p);
    assert!(until(Duration::from_secs(10), async || sink.received().len() == 1).await);
    assert!(
        until(Duration::from_secs(10), async || jobs
            .state(Some(other), moved)
            .await
            .unwrap()
            .0
            == "dead")
        .await,
        "the moved ciphertext opened"
    );
    let dead = jobs.dead(mail::QUEUE, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("sealed value \"link\""),
        "dead for another reason: {:?}",
        dead[0].last_error
    );
    worker.shutdown(Duration::from_secs(1)).await;
    let got = sink.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].to, ["bob@example.com"]);
    assert!(got[0].decoded().contains(link), "{}", got[0].data);
}
