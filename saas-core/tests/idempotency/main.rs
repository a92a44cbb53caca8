//! `IdempotencyLayer` against the real PostgreSQL, as the application role.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::routing::post;
use chrono::Utc;
use http::StatusCode;
use http_body_util::BodyExt;
use saas_core::TenantId;
use saas_core::clock::{Clock, ManualClock};
use saas_core::idempotency::{self, IdempotencyLayer};
use saas_core::testkit::TestDb;
use tower::ServiceExt;

#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>, Gate);

/// Holds `/slow` open until the test lets it finish: no sleeps, no races.
#[derive(Clone, Default)]
struct Gate {
    started: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

async fn charge(State(c): State<Counter>, body: String) -> (StatusCode, [(&'static str, &'static str); 2], String) {
    let n = c.0.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::CREATED,
        [("location", "/charges/1"), ("set-cookie", "s=1")],
        format!("charge #{n} for {body}"),
    )
}

async fn slow(State(c): State<Counter>) -> &'static str {
    c.0.fetch_add(1, Ordering::SeqCst);
    c.1.started.notify_one();
    c.1.release.notified().await;
    "done"
}

async fn fail(State(c): State<Counter>) -> StatusCode {
    c.0.fetch_add(1, Ordering::SeqCst);
    StatusCode::SERVICE_UNAVAILABLE
}

async fn tenant_from_header(mut req: Request, next: Next) -> axum::response::Response {
    if let Some(t) = req
        .headers()
        .get("x-tenant")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<TenantId>().ok())
    {
        req.extensions_mut().insert(t);
    }
    // The caller: `x-user`, or one fixed user (keys are scoped to the principal).
    let user = req
        .headers()
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<saas_core::UserId>().ok())
        .unwrap_or_else(|| saas_core::UserId::from_uuid(uuid::Uuid::from_u128(7)));
    req.extensions_mut().insert(saas_core::Principal::user(user));
    next.run(req).await
}

fn app(db: &TestDb, clock: &ManualClock, counter: &Counter) -> Router {
    Router::new()
        .route("/charges", post(charge).get(charge))
        .route("/slow", post(slow))
        .route("/fail", post(fail))
        .with_state(counter.clone())
        .layer(
            IdempotencyLayer::new(db.app().clone())
                .clock(clock.clone())
                .ttl(Duration::from_secs(3600)),
        )
        .layer(middleware::from_fn(tenant_from_header))
}

async fn send(
    app: &Router,
    method: &str,
    path: &str,
    tenant: TenantId,
    key: Option<&str>,
    body: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("x-tenant", tenant.to_string());
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    let text = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    (parts.status, parts.headers, text)
}

struct Setup {
    db: TestDb,
    clock: ManualClock,
    counter: Counter,
    app: Router,
}

async fn setup() -> Setup {
    let db = TestDb::new(&[&saas_core::MIGRATOR]).await.unwrap();
    let clock = ManualClock::new(Utc::now());
    let counter = Counter::default();
    let app = app(&db, &clock, &counter);
    Setup {
        db,
        clock,
        counter,
        app,
    }
}

#[tokio::test]
async fn a_retry_replays_the_first_response() {
    let s = setup().await;
    let t = TenantId::new();
    let first = send(&s.app, "POST", "/charges", t, Some("k-1"), "10 EUR").await;
    assert_eq!(first.0, 201);
    assert_eq!(first.2, "charge #1 for 10 EUR");
    let again = send(&s.app, "POST", "/charges", t, Some("k-1"), "10 EUR").await;
    assert_eq!((again.0, again.2.as_str()), (first.0, first.2.as_str()));
    assert_eq!(again.1["idempotent-replayed"], "true");
    assert_eq!(again.1["location"], "/charges/1");
    assert!(again.1.get("set-cookie").is_none(), "cookies are not replayed");
    assert_eq!(s.counter.0.load(Ordering::SeqCst), 1);
    // Without a key, or on GET, nothing is stored.
    send(&s.app, "POST", "/charges", t, None, "x").await;
    send(&s.app, "GET", "/charges", t, Some("k-1"), "").await;
    assert_eq!(s.counter.0.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_duplicate_gets_409() {
    let s = setup().await;
    let t = TenantId::new();
    let app = s.app.clone();
    let first = tokio::spawn(async move { send(&app, "POST", "/slow", t, Some("k-slow"), "").await });
    s.counter.1.started.notified().await;
    let dup = send(&s.app, "POST", "/slow", t, Some("k-slow"), "").await;
    assert_eq!(dup.0, 409);
    assert_eq!(dup.1["retry-after"], "1");
    assert!(dup.2.contains("idempotency-in-flight"));
    s.counter.1.release.notify_one();
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(
        send(&s.app, "POST", "/slow", t, Some("k-slow"), "").await.1["idempotent-replayed"],
        "true"
    );
    assert_eq!(s.counter.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_same_key_with_a_different_request_gets_422() {
    let s = setup().await;
    let t = TenantId::new();
    send(&s.app, "POST", "/charges", t, Some("k-2"), "10 EUR").await;
    let other = send(&s.app, "POST", "/charges", t, Some("k-2"), "99 EUR").await;
    assert_eq!(other.0, 422);
    assert!(other.2.contains("idempotency-key-reused"));
    let other_path = send(&s.app, "POST", "/slow", t, Some("k-2"), "10 EUR").await;
    assert_eq!(other_path.0, 422);
    assert_eq!(s.counter.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn keys_expire_and_are_pruned() {
    let s = setup().await;
    let t = TenantId::new();
    send(&s.app, "POST", "/charges", t, Some("k-3"), "a").await;
    s.clock.advance(chrono::Duration::minutes(59));
    assert_eq!(
        send(&s.app, "POST", "/charges", t, Some("k-3"), "a").await.1["idempotent-replayed"],
        "true"
    );
    s.clock.advance(chrono::Duration::minutes(2));
    let fresh = send(&s.app, "POST", "/charges", t, Some("k-3"), "a").await;
    assert_eq!(fresh.2, "charge #2 for a");
    assert!(fresh.1.get("idempotent-replayed").is_none());

    let mut conn = s.db.platform().acquire().await.unwrap();
    assert_eq!(idempotency::prune_expired(&mut conn, s.clock.now()).await.unwrap(), 0);
    assert_eq!(
        idempotency::prune_expired(&mut conn, s.clock.now() + chrono::Duration::hours(2))
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn a_key_of_tenant_a_never_replays_for_tenant_b() {
    let s = setup().await;
    let (a, b) = (TenantId::new(), TenantId::new());
    let ra = send(&s.app, "POST", "/charges", a, Some("shared-key"), "x").await;
    let rb = send(&s.app, "POST", "/charges", b, Some("shared-key"), "x").await;
    assert_eq!(ra.2, "charge #1 for x");
    assert_eq!(rb.2, "charge #2 for x");
    assert!(rb.1.get("idempotent-replayed").is_none());
    // And B's row is invisible to A at the database.
    let mut tx = TestDb::begin_as(s.db.app(), a).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.idempotency_keys")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn server_errors_are_not_stored_and_bad_keys_are_refused() {
    let s = setup().await;
    let t = TenantId::new();
    assert_eq!(send(&s.app, "POST", "/fail", t, Some("k-5"), "").await.0, 503);
    assert_eq!(send(&s.app, "POST", "/fail", t, Some("k-5"), "").await.0, 503);
    assert_eq!(s.counter.0.load(Ordering::SeqCst), 2);
    let long = "k".repeat(300);
    let bad = send(&s.app, "POST", "/charges", t, Some(&long), "").await;
    assert_eq!(bad.0, 400);
    assert!(bad.2.contains("invalid-idempotency-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_first_attempt_is_taken_over_after_its_lease() {
    let s = setup().await;
    let t = TenantId::new();
    let app = s.app.clone();
    let first = tokio::spawn(async move { send(&app, "POST", "/slow", t, Some("k-lease"), "").await });
    s.counter.1.started.notified().await;
    // Within the lease (60 s) a retry is refused; past it, the retry runs the operation.
    assert_eq!(send(&s.app, "POST", "/slow", t, Some("k-lease"), "").await.0, 409);
    s.clock.advance(chrono::Duration::seconds(61));
    let app = s.app.clone();
    let retry = tokio::spawn(async move { send(&app, "POST", "/slow", t, Some("k-lease"), "").await });
    s.counter.1.started.notified().await;
    s.counter.1.release.notify_one();
    s.counter.1.release.notify_one();
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(retry.await.unwrap().0, 200);
    assert_eq!(s.counter.0.load(Ordering::SeqCst), 2);
}

async fn secret(State(c): State<Counter>) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let n = c.0.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::CREATED,
        [("cache-control", "no-store")],
        format!("sk_live_secret{n}"),
    )
}

fn secret_app(db: &TestDb, counter: &Counter, keyring: Option<saas_core::crypto::Keyring>) -> Router {
    let mut layer = IdempotencyLayer::new(db.app().clone());
    if let Some(k) = keyring {
        layer = layer.keyring(k);
    }
    Router::new()
        .route("/keys", post(secret))
        .with_state(counter.clone())
        .layer(layer)
        .layer(middleware::from_fn(tenant_from_header))
}

async fn stored(db: &TestDb) -> Vec<(Option<Vec<u8>>, Option<String>, bool)> {
    sqlx::query_as("SELECT body, sealed_body, withheld FROM saas.idempotency_keys")
        .fetch_all(db.platform())
        .await
        .unwrap()
}

#[tokio::test]
async fn secrets_are_replayed_sealed_with_a_keyring_and_withheld_without() {
    use saas_core::crypto::Keyring;
    let db = TestDb::new(&[&saas_core::MIGRATOR]).await.unwrap();
    let t = TenantId::new();
    // With a keyring: stored sealed, replayed to the same principal as it was.
    let counter = Counter::default();
    let keyring = Keyring::from_spec(&format!("k1:{}", Keyring::generate_key())).unwrap();
    let app = secret_app(&db, &counter, Some(keyring));
    let first = send(&app, "POST", "/keys", t, Some("k"), "").await;
    let again = send(&app, "POST", "/keys", t, Some("k"), "").await;
    assert_eq!((first.0, first.2.as_str()), (StatusCode::CREATED, "sk_live_secret1"));
    assert_eq!((again.0, again.2.as_str()), (StatusCode::CREATED, "sk_live_secret1"));
    assert_eq!(again.1["idempotent-replayed"], "true");
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    let rows = stored(&db).await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].0.is_none(), "no clear body");
    assert!(!rows[0].1.as_deref().unwrap().contains("sk_live"), "sealed");

    // Without one: nothing of the response is kept; the retry is told to read the resource.
    let counter = Counter::default();
    let app = secret_app(&db, &counter, None);
    let first = send(&app, "POST", "/keys", t, Some("k2"), "").await;
    assert_eq!(first.2, "sk_live_secret1");
    let again = send(&app, "POST", "/keys", t, Some("k2"), "").await;
    assert_eq!(again.0, StatusCode::CONFLICT);
    assert!(again.2.contains("idempotent-response-withheld"), "{}", again.2);
    assert_eq!(counter.0.load(Ordering::SeqCst), 1, "not run twice");
    assert!(
        stored(&db)
            .await
            .iter()
            .all(|r| r.0.as_deref().is_none_or(|b| !b.starts_with(b"sk_live")))
    );
}
