//! Webhook delivery against a real local HTTP receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use saas_core::TenantId;
use saas_core::clock::{Clock, ManualClock};
use saas_core::crypto::Keyring;
use saas_events::webhook::ssrf::SsrfPolicy;
use saas_events::webhook::{self, Attempt, Deliver, SCHEDULE, WebhookError, Webhooks, sign};
use saas_events::{JobContext, Worker};
use saas_tenancy::TenantTx;

use crate::{db, platform, until};

#[derive(Clone, Default)]
struct Receiver {
    /// Statuses to answer with, in order; then 200.
    script: Arc<Mutex<Vec<(u16, Option<&'static str>)>>>,
    got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

async fn receive(
    axum::extract::State(r): axum::extract::State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    r.got.lock().unwrap().push((headers, body));
    let next = {
        let mut s = r.script.lock().unwrap();
        if s.is_empty() { (200, None) } else { s.remove(0) }
    };
    let mut res = (StatusCode::from_u16(next.0).unwrap(), "receiver says hi").into_response();
    if let Some(ra) = next.1 {
        res.headers_mut().insert("retry-after", ra.parse().unwrap());
    }
    res
}

async fn receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let app = Router::new().route("/hook", post(receive)).with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, format!("http://{addr}/hook"))
}

fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::from_spec(&format!("k1:{}", Keyring::generate_key())).unwrap())
}

fn dev(keys: Arc<Keyring>) -> Webhooks {
    Webhooks::new(keys).policy(SsrfPolicy::public_only().allow("127.0.0.1/32".parse().unwrap()), true)
}

#[tokio::test]
async fn deliveries_are_signed_retried_and_logged_through_the_worker() {
    let db = db().await;
    let (rx, url) = receiver().await;
    rx.script.lock().unwrap().push((500, Some("1")));
    let hooks = dev(keyring());
    let t = TenantId::new();
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let (endpoint, secret) = hooks
        .create_endpoint(&mut tx, t, &url, &["invoice.paid"])
        .await
        .unwrap();
    let (other, _) = hooks
        .create_endpoint(&mut tx, t, &url, &["user.created"])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Published with the business write: one delivery, to the subscribed endpoint only.
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let (message_id, queued) = webhook::send(
        &mut tx,
        "invoice.paid",
        &serde_json::json!({"invoice": "in_1", "amount": 4200}),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(queued, 1);

    let worker = Worker::builder(platform(&db, 4).await)
        .app_pool(db.app().clone())
        .queues([webhook::QUEUE])
        .poll_interval(Duration::from_millis(50))
        .handle(hooks.handler(db.app().clone()))
        .start()
        .await
        .unwrap();
    assert!(
        until(Duration::from_secs(15), async || rx.got.lock().unwrap().len() == 2).await,
        "expected a retry"
    );
    let jobs = saas_events::Jobs::new(platform(&db, 2).await);
    assert!(until(Duration::from_secs(5), async || jobs.depth().await.unwrap().is_empty()).await);
    worker.shutdown(Duration::from_secs(1)).await;

    let got = rx.got.lock().unwrap().clone();
    let now = chrono::Utc::now().timestamp();
    for (headers, body) in &got {
        assert_eq!(headers["webhook-id"], message_id.as_str(), "same id on every attempt");
        sign::verify(&secret, headers, body, now, sign::TOLERANCE_SECS).unwrap();
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["type"], "invoice.paid");
        assert_eq!(v["data"]["amount"], 4200);
    }
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let log = hooks.deliveries(&mut tx, endpoint.id, 10).await.unwrap();
    assert_eq!(log.iter().map(|l| l.status).collect::<Vec<_>>(), [Some(200), Some(500)]);
    assert_eq!(log[1].response.as_deref(), Some("receiver says hi"));
    assert!(log.iter().all(|l| l.latency_ms.is_some()));
    assert!(hooks.deliveries(&mut tx, other.id, 10).await.unwrap().is_empty());
    // Another tenant sees neither endpoints nor log.
    let mut other_tx = TenantTx::begin(db.app(), TenantId::new()).await.unwrap();
    assert!(hooks.endpoints(&mut other_tx).await.unwrap().is_empty());
    assert!(matches!(
        hooks.set_enabled(&mut other_tx, endpoint.id, false).await,
        Err(WebhookError::NotFound)
    ));
}

#[tokio::test]
async fn the_retry_schedule_410_five_days_and_rotation_follow_the_clock() {
    let db = db().await;
    let (rx, url) = receiver().await;
    let clock = Arc::new(ManualClock::starting_now());
    let keys = keyring();
    let hooks = dev(keys.clone()).with_clock(clock.clone());
    let t = TenantId::new();
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let (ep, old_secret) = hooks.create_endpoint(&mut tx, t, &url, &[]).await.unwrap();
    tx.commit().await.unwrap();
    let d = |n: u32| Deliver {
        endpoint_id: ep.id,
        message_id: format!("msg_{n}"),
        event_type: "x.y".into(),
        body: "{}".into(),
    };

    // Always failing: the delays follow the schedule; no sleeping, the clock moves.
    *rx.script.lock().unwrap() = vec![(503, None); 8];
    let mut delays = Vec::new();
    for attempt in 1..=7 {
        match hooks.attempt(db.app(), t, &d(1), attempt).await.unwrap() {
            Attempt::Retry { after, .. } => {
                delays.push(after);
                clock.advance(chrono::Duration::from_std(after).unwrap());
            }
            other => panic!("attempt {attempt}: {other:?}"),
        }
    }
    assert_eq!(delays, SCHEDULE);
    // Retry-After wins over the schedule.
    *rx.script.lock().unwrap() = vec![(429, Some("42"))];
    assert!(
        matches!(hooks.attempt(db.app(), t, &d(2), 1).await.unwrap(), Attempt::Retry { after, .. } if after == Duration::from_secs(42))
    );

    // Rotation: both signatures during the overlap, then only the new one.
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let new_secret = hooks
        .rotate_secret(&mut tx, t, ep.id, Duration::from_secs(3600))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    rx.got.lock().unwrap().clear();
    assert!(matches!(
        hooks.attempt(db.app(), t, &d(3), 1).await.unwrap(),
        Attempt::Delivered { status: 200 }
    ));
    let (h, b) = rx.got.lock().unwrap()[0].clone();
    let ts = clock.now().timestamp();
    assert_eq!(h["webhook-signature"].to_str().unwrap().split(' ').count(), 2);
    sign::verify(&old_secret, &h, &b, ts, 300).unwrap();
    sign::verify(&new_secret, &h, &b, ts, 300).unwrap();
    clock.advance(chrono::Duration::hours(2));
    assert!(matches!(
        hooks.attempt(db.app(), t, &d(4), 1).await.unwrap(),
        Attempt::Delivered { .. }
    ));
    let (h, b) = rx.got.lock().unwrap()[1].clone();
    let ts = clock.now().timestamp();
    assert!(
        sign::verify(&old_secret, &h, &b, ts, 300).is_err(),
        "the old secret has expired"
    );
    sign::verify(&new_secret, &h, &b, ts, 300).unwrap();

    // Failing for five days disables the endpoint and says so.
    *rx.script.lock().unwrap() = vec![(500, None); 3];
    assert!(matches!(
        hooks.attempt(db.app(), t, &d(5), 1).await.unwrap(),
        Attempt::Retry { .. }
    ));
    clock.advance(chrono::Duration::days(3));
    assert!(matches!(
        hooks.attempt(db.app(), t, &d(6), 1).await.unwrap(),
        Attempt::Retry { .. }
    ));
    clock.advance(chrono::Duration::days(2));
    assert_eq!(
        hooks.attempt(db.app(), t, &d(7), 1).await.unwrap(),
        Attempt::Disabled {
            reason: "failing".into()
        }
    );
    assert_eq!(hooks.attempt(db.app(), t, &d(8), 1).await.unwrap(), Attempt::Skipped);
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let events: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT payload FROM saas.jobs WHERE kind = 'webhook.endpoint_disabled'")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["reason"], "failing");

    // 410 Gone disables at once.
    hooks.set_enabled(&mut tx, ep.id, true).await.unwrap();
    tx.commit().await.unwrap();
    *rx.script.lock().unwrap() = vec![(410, None)];
    assert_eq!(
        hooks.attempt(db.app(), t, &d(9), 1).await.unwrap(),
        Attempt::Disabled { reason: "gone".into() }
    );
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let eps = hooks.endpoints(&mut tx).await.unwrap();
    assert!(!eps[0].enabled && eps[0].disabled_reason.as_deref() == Some("gone"));
}

#[tokio::test]
async fn endpoints_inside_our_network_are_refused_at_registration_and_delivery() {
    let db = db().await;
    let (rx, url) = receiver().await;
    let strict = Webhooks::new(keyring()).policy(SsrfPolicy::public_only(), true);
    let t = TenantId::new();
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    for bad in [
        url.as_str(),
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:8080/hook",
        "http://10.0.0.5/hook",
        "http://[::1]:9000/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ] {
        let r = strict.create_endpoint(&mut tx, t, bad, &[]).await;
        assert!(matches!(r, Err(WebhookError::Forbidden(_))), "{bad}: {r:?}");
    }
    assert!(matches!(
        strict.create_endpoint(&mut tx, t, "ftp://example.com/x", &[]).await,
        Err(WebhookError::InvalidUrl(_))
    ));
    assert!(matches!(
        strict
            .create_endpoint(&mut tx, t, "https://user:pw@example.com/x", &[])
            .await,
        Err(WebhookError::InvalidUrl(_))
    ));
    let https_only = Webhooks::new(keyring());
    assert!(matches!(
        https_only
            .create_endpoint(&mut tx, t, "http://93.184.216.34/x", &[])
            .await,
        Err(WebhookError::InvalidUrl(_))
    ));
    let p = saas_core::problem::IntoProblem::to_problem(&WebhookError::Forbidden("x".into()));
    assert_eq!(p.status(), http::StatusCode::UNPROCESSABLE_ENTITY);
    assert!(strict.endpoints(&mut tx).await.unwrap().is_empty());
    drop(tx);

    // Registered while allowed (development), delivered under the production policy:
    // refused at delivery time, and the endpoint is disabled.
    let keys = keyring();
    let devhooks = dev(keys.clone());
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let (ep, _) = devhooks.create_endpoint(&mut tx, t, &url, &[]).await.unwrap();
    tx.commit().await.unwrap();
    let prod = Webhooks::new(keys).policy(SsrfPolicy::public_only(), true);
    let d = Deliver {
        endpoint_id: ep.id,
        message_id: "msg_x".into(),
        event_type: "x".into(),
        body: "{}".into(),
    };
    assert_eq!(
        prod.attempt(db.app(), t, &d, 1).await.unwrap(),
        Attempt::Disabled {
            reason: "forbidden-address".into()
        }
    );
    assert!(rx.got.lock().unwrap().is_empty(), "nothing was sent");
    // The handler type is usable on any worker.
    let _ = |ctx: JobContext| ctx;
}
