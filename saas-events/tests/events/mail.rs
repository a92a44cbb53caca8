//! Email through the outbox, sent over SMTP to a real local sink.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use saas_core::TenantId;
use saas_events::Worker;
use saas_events::mail::{self, MailHandler, SmtpMailer, Templates};
use saas_tenancy::TenantTx;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::{db, platform, until};

#[derive(Debug, Clone, Default)]
struct Received {
    from: String,
    to: Vec<String>,
    data: String,
}

/// A minimal SMTP server: accepts every message and keeps it. `reject_rcpt` answers
/// 550 to that recipient (a permanent failure).
async fn smtp_sink(reject_rcpt: Option<&'static str>) -> (Arc<Mutex<Vec<Received>>>, u16) {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let g = Arc::clone(&got);
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let g = Arc::clone(&g);
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let mut cur = Received::default();
                while let Ok(Some(line)) = lines.next_line().await {
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") {
                        b"250-sink\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("HELO") || upper.starts_with("RSET") || upper.starts_with("NOOP") {
                        b"250 ok\r\n"
                    } else if upper.starts_with("MAIL FROM:") {
                        cur = Received {
                            from: line[10..].trim().to_owned(),
                            ..Received::default()
                        };
                        b"250 ok\r\n"
                    } else if upper.starts_with("RCPT TO:") {
                        let rcpt = line[8..].trim().trim_matches(|c| c == '<' || c == '>').to_owned();
                        if reject_rcpt == Some(rcpt.as_str()) {
                            b"550 no such user\r\n"
                        } else {
                            cur.to.push(rcpt);
                            b"250 ok\r\n"
                        }
                    } else if upper == "DATA" {
                        w.write_all(b"354 go ahead\r\n").await.unwrap();
                        let mut data = String::new();
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l == "." {
                                break;
                            }
                            data.push_str(&l);
                            data.push('\n');
                        }
                        cur.data = data;
                        g.lock().unwrap().push(std::mem::take(&mut cur));
                        b"250 queued\r\n"
                    } else if upper == "QUIT" {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"502 not implemented\r\n"
                    };
                    if w.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (got, port)
}

#[tokio::test]
async fn emails_are_outbox_jobs_sent_over_smtp_and_never_for_a_rollback() {
    let db = db().await;
    let (got, port) = smtp_sink(Some("nobody@example.com")).await;
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
    assert!(until(Duration::from_secs(10), async || got.lock().unwrap().len() == 1).await);
    worker.shutdown(Duration::from_secs(1)).await;

    let got = got.lock().unwrap().clone();
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
