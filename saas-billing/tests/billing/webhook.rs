//! The webhook endpoint over HTTP-shaped requests: every bad delivery gets its status and
//! leaves nothing behind; good ones are stored once and queued once.

use bytes::Bytes;
use chrono::{Duration, TimeZone, Utc};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use saas_billing::webhook::{StripeEventReceived, WebhookEndpoint, WebhookSecrets, sign};
use saas_core::clock::{Clock, ManualClock};
use saas_core::testkit::TestDb;
use saas_tenancy::PlatformPool;
use tower::ServiceExt;

const SECRET: &str = "whsec_4f1c2b8e0d7a4c3b9e6f";

struct Setup {
    db: TestDb,
    clock: ManualClock,
    endpoint: WebhookEndpoint,
}

async fn setup(secrets: WebhookSecrets) -> Setup {
    let db = crate::db().await;
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap());
    let endpoint = WebhookEndpoint::new(PlatformPool::new(db.platform().clone()), secrets).clock(clock.clone());
    Setup { db, clock, endpoint }
}

fn event(id: &str, kind: &str) -> String {
    format!(
        r#"{{"id":"{id}","object":"event","api_version":"2025-10-29.clover","created":1780315200,"livemode":false,"type":"{kind}","data":{{"object":{{"id":"sub_123","object":"subscription","status":"active"}}}}}}"#
    )
}

fn request(signature: Option<String>, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut b = Request::post("/webhooks/stripe").header("content-type", "application/json");
    if let Some(s) = signature {
        b = b.header("stripe-signature", s);
    }
    b.body(Full::new(body.into())).unwrap()
}

impl Setup {
    async fn send(&self, req: Request<Full<Bytes>>) -> (StatusCode, serde_json::Value, Option<String>) {
        let res = ServiceExt::<Request<Full<Bytes>>>::oneshot(self.endpoint.clone(), req)
            .await
            .unwrap();
        let status = res.status();
        let ctype = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap(), ctype)
    }

    fn signed(&self, body: &str) -> Request<Full<Bytes>> {
        request(
            Some(sign(SECRET, self.clock.now().timestamp(), body.as_bytes())),
            body.to_owned(),
        )
    }

    /// (inbox rows, processing jobs queued or done).
    async fn stored(&self) -> (i64, i64) {
        let inbox = sqlx::query_scalar("SELECT count(*) FROM saas.billing_inbox")
            .fetch_one(self.db.platform())
            .await
            .unwrap();
        let jobs = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM saas.jobs WHERE kind = 'billing.stripe_event') \
                  + (SELECT count(*) FROM saas.jobs_done WHERE kind = 'billing.stripe_event')",
        )
        .fetch_one(self.db.platform())
        .await
        .unwrap();
        (inbox, jobs)
    }
}

#[tokio::test]
async fn a_valid_delivery_is_stored_and_queued_once() {
    let s = setup(WebhookSecrets::new(SECRET).unwrap()).await;
    let body = event("evt_1", "customer.subscription.updated");
    let (status, json, ctype) = s.send(s.signed(&body)).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json, serde_json::json!({"received": true, "duplicate": false}));
    assert_eq!(ctype.as_deref(), Some("application/json"));
    assert_eq!(s.stored().await, (1, 1));
    let (raw, kind, object): (String, String, Option<String>) =
        sqlx::query_as("SELECT raw, type, object_id FROM saas.billing_inbox WHERE event_id = 'evt_1'")
            .fetch_one(s.db.platform())
            .await
            .unwrap();
    assert_eq!(
        (raw.as_str(), kind.as_str(), object.as_deref()),
        (body.as_str(), "customer.subscription.updated", Some("sub_123"))
    );
    let payload: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM saas.jobs WHERE kind = 'billing.stripe_event'")
            .fetch_one(s.db.platform())
            .await
            .unwrap();
    assert_eq!(payload, serde_json::json!({"event_id": "evt_1"}));
    // The queued job is the saas-events job a handler of `StripeEventReceived` runs.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let worker = saas_events::Worker::builder(PlatformPool::new(s.db.platform().clone()))
        .handle(move |ctx: saas_events::JobContext, e: StripeEventReceived| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((ctx.tenant(), e.event_id));
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .unwrap();
    assert_eq!(got, Some((None, "evt_1".to_owned())));
    worker.shutdown(std::time::Duration::from_secs(5)).await;

    // A replay of the same event id, even re-signed later, is acknowledged and ignored.
    s.clock.advance(Duration::hours(3));
    let (status, json, _) = s.send(s.signed(&body)).await;
    assert_eq!((status, json["duplicate"].as_bool()), (StatusCode::OK, Some(true)));
    assert_eq!(s.stored().await, (1, 1));
}

#[tokio::test]
async fn unknown_event_types_are_stored_and_acknowledged() {
    let s = setup(WebhookSecrets::new(SECRET).unwrap()).await;
    let (status, _, _) = s
        .send(s.signed(&event("evt_9", "radar.early_fraud_warning.created")))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.stored().await, (1, 1));
}

#[tokio::test]
async fn every_bad_delivery_gets_its_status_and_leaves_nothing() {
    let s = setup(WebhookSecrets::new(SECRET).unwrap()).await;
    let body = event("evt_bad", "invoice.paid");
    let now = s.clock.now().timestamp();
    let v1 = |secret: &str, ts: i64, body: &str| {
        sign(secret, ts, body.as_bytes())
            .split("v1=")
            .nth(1)
            .unwrap()
            .to_owned()
    };
    let cases: Vec<(&str, Request<Full<Bytes>>, StatusCode, &str)> = vec![
        (
            "wrong secret",
            request(Some(sign("whsec_someone_else", now, body.as_bytes())), body.clone()),
            StatusCode::BAD_REQUEST,
            "webhook-signature-invalid",
        ),
        (
            "the secret without its whsec_ prefix as key",
            request(
                Some(sign(SECRET.strip_prefix("whsec_").unwrap(), now, body.as_bytes())),
                body.clone(),
            ),
            StatusCode::BAD_REQUEST,
            "webhook-signature-invalid",
        ),
        (
            "tampered body",
            request(
                Some(sign(SECRET, now, body.as_bytes())),
                body.replace("invoice.paid", "invoice.voided"),
            ),
            StatusCode::BAD_REQUEST,
            "webhook-signature-invalid",
        ),
        (
            "stale timestamp",
            request(Some(sign(SECRET, now - 301, body.as_bytes())), body.clone()),
            StatusCode::BAD_REQUEST,
            "webhook-signature-invalid",
        ),
        (
            "future timestamp",
            request(Some(sign(SECRET, now + 301, body.as_bytes())), body.clone()),
            StatusCode::BAD_REQUEST,
            "webhook-signature-invalid",
        ),
        (
            "missing header",
            request(None, body.clone()),
            StatusCode::BAD_REQUEST,
            "webhook-signature-invalid",
        ),
        (
            "several v1 values, none valid",
            request(
                Some(format!(
                    "t={now},v1={},v1={}",
                    v1("whsec_a", now, &body),
                    v1("whsec_b", now, &body)
                )),
                body.clone(),
            ),
            StatusCode::BAD_REQUEST,
            "webhook-signature-invalid",
        ),
        (
            "signed, but not JSON",
            request(Some(sign(SECRET, now, b"not json")), "not json"),
            StatusCode::BAD_REQUEST,
            "webhook-payload-invalid",
        ),
        (
            "signed JSON without an event id",
            request(
                Some(sign(SECRET, now, br#"{"type":"invoice.paid","created":1}"#)),
                r#"{"type":"invoice.paid","created":1}"#,
            ),
            StatusCode::BAD_REQUEST,
            "webhook-payload-invalid",
        ),
        (
            "1 MB body",
            {
                let big = format!(
                    r#"{{"id":"evt_big","type":"x","created":1,"pad":"{}"}}"#,
                    "a".repeat(1_000_000)
                );
                request(Some(sign(SECRET, now, big.as_bytes())), big)
            },
            StatusCode::PAYLOAD_TOO_LARGE,
            "webhook-too-large",
        ),
    ];
    for (name, req, want, problem) in cases {
        let (status, json, ctype) = s.send(req).await;
        assert_eq!(status, want, "{name}: {json}");
        assert_eq!(ctype.as_deref(), Some("application/problem+json"), "{name}");
        assert!(json["type"].as_str().unwrap().ends_with(problem), "{name}: {json}");
        // Nothing about the secret or the reason leaks into the answer.
        assert!(!json.to_string().contains("whsec"), "{name}: {json}");
        assert_eq!(s.stored().await, (0, 0), "{name} left something behind");
    }
    let get = Request::get("/webhooks/stripe").body(Full::new(Bytes::new())).unwrap();
    let res = s.endpoint.clone().oneshot(get).await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "POST");
}

#[tokio::test]
async fn several_v1_values_and_rotated_secrets() {
    let s = setup(WebhookSecrets::rotating([SECRET, "whsec_previous_secret"]).unwrap()).await;
    let now = s.clock.now().timestamp();
    // Stripe signs with every active secret: one v1 per secret, any may match.
    let body = event("evt_rot", "invoice.paid");
    let stranger = sign("whsec_stranger", now, body.as_bytes());
    let old = sign("whsec_previous_secret", now, body.as_bytes());
    let header = format!(
        "t={now},v1={},v0=deadbeef,v1={}",
        stranger.split("v1=").nth(1).unwrap(),
        old.split("v1=").nth(1).unwrap()
    );
    let (status, _, _) = s.send(request(Some(header), body)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = s.send(s.signed(&event("evt_rot2", "invoice.paid"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.stored().await, (2, 2));
}

#[tokio::test]
async fn a_database_failure_answers_503_so_stripe_retries() {
    let s = setup(WebhookSecrets::new(SECRET).unwrap()).await;
    s.db.platform().close().await;
    let (status, json, _) = s.send(s.signed(&event("evt_down", "invoice.paid"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    assert!(json["type"].as_str().unwrap().ends_with("webhook-not-stored"));
}

#[tokio::test]
async fn the_application_role_cannot_touch_the_inbox() {
    let s = setup(WebhookSecrets::new(SECRET).unwrap()).await;
    s.send(s.signed(&event("evt_secret", "customer.updated"))).await;
    for sql in [
        "SELECT count(*) FROM saas.billing_inbox",
        "UPDATE saas.billing_inbox SET processed_at = now()",
        "DELETE FROM saas.billing_inbox",
        "INSERT INTO saas.billing_inbox (event_id, type, livemode, created, raw) VALUES ('evt_forged', 'invoice.paid', false, now(), '{}')",
    ] {
        let err = sqlx::query(sql).execute(s.db.app()).await.unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{sql}: {err}");
    }
    assert_eq!(s.stored().await, (1, 1));
}

#[tokio::test]
async fn processed_events_are_pruned_after_the_retention_period_and_others_kept() {
    let s = setup(WebhookSecrets::new(SECRET).unwrap()).await;
    for id in ["evt_old", "evt_recent", "evt_pending"] {
        assert_eq!(s.send(s.signed(&event(id, "invoice.paid"))).await.0, StatusCode::OK);
    }
    let now = s.clock.now();
    for (id, days) in [("evt_old", 31), ("evt_recent", 29)] {
        sqlx::query("UPDATE saas.billing_inbox SET processed_at = $2, outcome = 'applied' WHERE event_id = $1")
            .bind(id)
            .bind(now - Duration::days(days))
            .execute(s.db.platform())
            .await
            .unwrap();
    }
    let platform = PlatformPool::new(s.db.platform().clone());
    let keep = Duration::days(saas_billing::webhook::DEFAULT_RETENTION_DAYS);
    assert_eq!(
        saas_billing::webhook::prune_inbox(&platform, keep, now).await.unwrap(),
        1
    );
    let left: Vec<String> = sqlx::query_scalar("SELECT event_id FROM saas.billing_inbox ORDER BY event_id")
        .fetch_all(s.db.platform())
        .await
        .unwrap();
    assert_eq!(left, ["evt_pending", "evt_recent"]);
    // Even a very old event is kept while it waits for processing.
    assert_eq!(
        saas_billing::webhook::prune_inbox(&platform, Duration::zero(), now + Duration::days(400))
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.stored().await.0, 1);
}
