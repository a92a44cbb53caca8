//! Attacks from the security review (hardening): credentials that outlive their holder,
//! rows the application role must never see, the verifier's blind spots, replays,
//! audiences, path prefixes and proxies. Each one succeeded against the code before the
//! fix; each runs as the application role or over HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration as StdDuration;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use http::StatusCode;
use http_body_util::BodyExt;
use saas_authz::rbac::{GrantDef, GrantSubject};
use saas_authz::{
    ApiKeys, AuthenticateLayer, Authz, Identity, InvitationError, InvitationToken, Invitations, LocalIssuer,
    MemberError, Memberships, Model, NewApiKey, Oidc, RecordingMailer, RoleDef, Users,
};
use saas_core::Principal;
use saas_core::idempotency::IdempotencyLayer;
use saas_events::{Event, JobContext, JobError, Publish, Worker, publish, publish_with};
use saas_tenancy::{PgTenantStore, SystemTx, TenantLayer, resolve};
use saas_tests::Fixture;
use tower::ServiceExt;

use super::code;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Note {
    text: String,
}

impl Event for Note {
    const KIND: &'static str = "hardening.note";
}

async fn provision(f: &Fixture, subject: &str, email: &str) -> Principal {
    let users = Users::new(f.db.app().clone());
    Principal::user(
        users
            .provision(&Identity::new("https://idp.test/", subject, i64::MAX).with_email(email, true))
            .await
            .unwrap(),
    )
}

// ---------------------------------------------------------------- item 4

#[tokio::test]
async fn attack_44_the_application_role_sees_and_writes_no_platform_jobs() {
    let f = Fixture::new().await;
    // The platform publishes a platform-level job (say, a password-reset mail with a link).
    let mut tx = SystemTx::begin(&f.platform(), "test-platform-job").await.unwrap();
    publish(
        &mut tx,
        &Note {
            text: "https://example.test/reset?token=secret".into(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    // The application role with no tenant set sees none of it.
    let mut tx = f.db.app().begin().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.jobs")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 0, "platform jobs are visible to the application role");
    // Nor can it plant a platform job that workers would run with system rights.
    let err = sqlx::query(
        "INSERT INTO saas.jobs (id, queue, kind, tenant_id, payload, run_at, created_at, max_attempts) \
         VALUES (gen_random_uuid(), 'default', 'hardening.note', NULL, '{\"text\":\"x\"}', now(), now(), 1)",
    )
    .execute(&mut *tx)
    .await
    .expect_err("a NULL-tenant job from the application role");
    assert_eq!(code(&err), "42501", "{err}");
    drop(tx);
    // Publishing through a SystemTx on the application pool is refused too.
    let app_platform = saas_tenancy::PlatformPool::new(f.db.app().clone());
    let mut tx = SystemTx::begin(&app_platform, "test-app-as-platform").await.unwrap();
    assert!(publish(&mut tx, &Note { text: "x".into() }).await.is_err());
    drop(tx);
    // And a tenant transaction does not see the platform's job either.
    let mut tx = f.tx(f.a).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.jobs")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

// ---------------------------------------------------------------- item 5

#[tokio::test]
async fn attack_45_users_of_other_tenants_are_invisible_and_unwritable() {
    let f = Fixture::new().await;
    let alice = provision(&f, "alice", "alice@acme.test").await;
    let bob = provision(&f, "bob", "bob@globex.test").await;
    let memberships = Memberships::new(f.db.app().clone());
    let mut tx = f.tx(f.a).await;
    memberships.bootstrap_owner(&mut tx, alice.user_id).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = f.tx(f.b).await;
    memberships.bootstrap_owner(&mut tx, bob.user_id).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = f.tx(f.a).await;
    let emails: Vec<Option<String>> = sqlx::query_scalar("SELECT email FROM saas.users ORDER BY email")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(emails, [Some("alice@acme.test".to_owned())], "A reads only its members");
    let changed = sqlx::query("UPDATE saas.users SET email = 'carol@acme.test', email_verified = true WHERE id = $1")
        .bind(bob.user_id)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(changed, 0, "A rewrote a user of B");
    // Even its own member's row is not A's to rewrite: only the user themselves.
    let changed = sqlx::query("UPDATE saas.users SET email_verified = true WHERE id = $1")
        .bind(alice.user_id)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(changed, 0, "a tenant rewrote its member's identity");
    drop(tx);
    // With no tenant and no user, nothing at all.
    let mut tx = f.db.app().begin().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.users")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

// ---------------------------------------------------------------- item 6

async fn run_worker_until<F: Fn() -> bool>(f: &Fixture, worker: saas_events::WorkerBuilder, done: F) {
    let handle = worker
        .app_pool(f.db.app().clone())
        .poll_interval(StdDuration::from_millis(50))
        .start()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + StdDuration::from_secs(5);
    while !done() && std::time::Instant::now() < deadline {
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    // Let any wrongly re-queued job run again before stopping.
    tokio::time::sleep(StdDuration::from_millis(500)).await;
    handle.shutdown(StdDuration::from_secs(2)).await;
}

#[tokio::test]
async fn attack_46_an_order_key_of_a_blocks_nothing_of_b() {
    let f = Fixture::new().await;
    // A orders a job by "invoice-42" and schedules it a year out.
    let mut tx = f.tx(f.a).await;
    publish_with(
        &mut tx,
        &Note { text: "a".into() },
        &Publish::new()
            .ordered_by("invoice-42")
            .at(saas_tests::chrono::Utc::now() + saas_tests::chrono::Duration::days(365)),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // B's job with the same key must run now.
    let mut tx = f.tx(f.b).await;
    publish_with(
        &mut tx,
        &Note { text: "b".into() },
        &Publish::new().ordered_by("invoice-42"),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let worker = Worker::builder(f.platform()).handle(move |ctx: JobContext, _: Note| {
        let r = r.clone();
        async move {
            assert!(ctx.tenant().is_some());
            r.fetch_add(1, Ordering::SeqCst);
            Ok::<_, JobError>(())
        }
    });
    run_worker_until(&f, worker, || ran.load(Ordering::SeqCst) >= 1).await;
    assert_eq!(ran.load(Ordering::SeqCst), 1, "B's job was held back by A's order key");
}

#[tokio::test]
async fn attack_47_a_job_id_chosen_by_a_does_not_touch_bs_job() {
    let f = Fixture::new().await;
    let mut tx = f.tx(f.b).await;
    let b_job = publish(&mut tx, &Note { text: "b".into() }).await.unwrap();
    tx.commit().await.unwrap();
    // A plants a job under B's id (ids are unique per tenant, so this is allowed), one
    // that will fail.
    let mut tx = f.tx(f.a).await;
    sqlx::query(
        "INSERT INTO saas.jobs (id, queue, kind, tenant_id, payload, run_at, created_at, max_attempts) \
         VALUES ($1, 'default', 'hardening.note', saas.current_tenant_id(), '{\"text\":\"fail\"}', now(), now(), 5)",
    )
    .bind(b_job)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let b_runs = Arc::new(AtomicUsize::new(0));
    let r = b_runs.clone();
    let worker = Worker::builder(f.platform()).handle(move |_: JobContext, n: Note| {
        let r = r.clone();
        async move {
            if n.text == "fail" {
                return Err(JobError::retry_after("a's job fails", StdDuration::from_secs(3600)));
            }
            r.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    run_worker_until(&f, worker, || b_runs.load(Ordering::SeqCst) >= 1).await;
    assert_eq!(
        b_runs.load(Ordering::SeqCst),
        1,
        "B's job ran again because of A's failure"
    );
    // Ground truth: B's job finished once; A's is pending with its own error.
    let mut tx = SystemTx::begin(&f.platform(), "test-ground-truth").await.unwrap();
    let b_done: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.jobs_done WHERE id = $1 AND tenant_id = $2")
        .bind(b_job)
        .bind(f.b)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let b_open: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.jobs WHERE id = $1 AND tenant_id = $2")
        .bind(b_job)
        .bind(f.b)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let a_state: (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM saas.jobs WHERE id = $1 AND tenant_id = $2")
            .bind(b_job)
            .bind(f.a)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!((b_done, b_open), (1, 0));
    assert_eq!(a_state, ("pending".to_owned(), 1));
}

// ---------------------------------------------------------------- item 7

#[tokio::test]
async fn attack_48_the_verifier_refuses_every_widening_policy() {
    for (table, policy) in [
        ("w_delete", "CREATE POLICY wide ON w_delete FOR DELETE USING (true)"),
        (
            "w_insert",
            "CREATE POLICY wide ON w_insert FOR INSERT WITH CHECK (true)",
        ),
        (
            "w_or_true",
            "CREATE POLICY wide ON w_or_true USING (tenant_id = saas.current_tenant_id() OR true)",
        ),
        (
            "w_update",
            "CREATE POLICY wide ON w_update FOR UPDATE USING (tenant_id = (SELECT saas.current_tenant_id())) WITH CHECK (true)",
        ),
        (
            "w_restrictive_ok_but_replaced",
            "DROP POLICY tenant_isolation ON w_restrictive_ok_but_replaced; \
             CREATE POLICY mine ON w_restrictive_ok_but_replaced USING (tenant_id IS NOT DISTINCT FROM saas.current_tenant_id())",
        ),
    ] {
        let f = Fixture::new().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {table} (tenant_id uuid NOT NULL, id uuid NOT NULL, PRIMARY KEY (tenant_id, id));
             SELECT saas.enable_tenant_rls('{table}');
             {policy};"
        )))
        .execute(f.db.owner())
        .await
        .unwrap();
        let err = saas_tenancy::verify_isolation(f.db.app())
            .await
            .expect_err(&format!("the verifier accepted {policy}"));
        let text = err.to_string();
        assert!(text.contains(table), "{table}: {text}");
        // And the widening really widens: the attack works on such a table.
        if table == "w_delete" {
            let mut tx = f.tx(f.b).await;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {table} VALUES (saas.current_tenant_id(), gen_random_uuid())"
            )))
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
            let mut tx = f.tx(f.a).await;
            let gone = sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&mut *tx)
                .await
                .unwrap()
                .rows_affected();
            assert_eq!(gone, 1, "FOR DELETE USING (true) lets A delete B's row");
        }
    }
}

#[tokio::test]
async fn attack_49_a_tenant_table_without_rls_is_refused_registered_or_not() {
    let f = Fixture::new().await;
    sqlx::raw_sql(
        "CREATE TABLE hand_made (tenant_id uuid NOT NULL, id uuid NOT NULL, secret text, PRIMARY KEY (tenant_id, id));
         GRANT SELECT ON hand_made TO saas_app;",
    )
    .execute(f.db.owner())
    .await
    .unwrap();
    let err = saas_tenancy::verify_isolation(f.db.app()).await.unwrap_err();
    assert!(err.to_string().contains("hand_made"), "{err}");
}

// ---------------------------------------------------------------- item 8

fn idem_app(f: &Fixture, layer: IdempotencyLayer, counter: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "/v1/api-keys",
            post(move || {
                let counter = counter.clone();
                async move {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let body = format!("{{\"secret\":\"sk_live_SECRET{n}\"}}");
                    (
                        StatusCode::CREATED,
                        [("content-type", "application/json"), ("cache-control", "no-store")],
                        body,
                    )
                }
            }),
        )
        .layer(layer)
        .layer(axum::Extension(f.db.app().clone()))
}

async fn idem_call(app: &Router, tenant: saas_core::TenantId, who: &Principal, key: &str) -> (StatusCode, String) {
    let mut req = http::Request::post("/v1/api-keys")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Body::from("{\"name\":\"ci\"}"))
        .unwrap();
    req.extensions_mut().insert(tenant);
    req.extensions_mut().insert(who.clone());
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn attack_50_an_idempotency_key_replays_nothing_to_another_principal() {
    let f = Fixture::new().await;
    let admin = Principal::user(saas_core::UserId::new());
    let viewer = Principal::user(saas_core::UserId::new());
    let counter = Arc::new(AtomicUsize::new(0));
    let app = idem_app(&f, IdempotencyLayer::new(f.db.app().clone()), counter.clone());
    let (s, first) = idem_call(&app, f.a, &admin, "k-1").await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(first.contains("SECRET0"), "{first}");
    // The viewer learned the key and sends the same request.
    let (_, stolen) = idem_call(&app, f.a, &viewer, "k-1").await;
    assert!(
        !stolen.contains("SECRET0"),
        "replayed the admin's secret to the viewer: {stolen}"
    );
    // Nothing secret sits in clear in the table, nor in the tenant's export.
    let mut tx = SystemTx::begin(&f.platform(), "test-ground-truth").await.unwrap();
    let bodies: Vec<Option<Vec<u8>>> = sqlx::query_scalar("SELECT body FROM saas.idempotency_keys")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    drop(tx);
    for b in bodies.into_iter().flatten() {
        assert!(!String::from_utf8_lossy(&b).contains("sk_live_"), "stored in clear");
    }
    let mut out = Vec::new();
    saas_tenancy::export::export(f.db.app(), f.a, &mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("sk_live_"), "the export carries the stored response");
    assert!(
        !text.contains("idempotency_keys"),
        "the export carries idempotency rows"
    );
}

#[tokio::test]
async fn attack_51_a_stale_first_attempt_cannot_overwrite_the_takeover() {
    let f = Fixture::new().await;
    let clock = saas_core::clock::ManualClock::new(saas_tests::chrono::Utc::now());
    let layer = IdempotencyLayer::new(f.db.app().clone())
        .lease(StdDuration::from_secs(60))
        .clock(clock.clone());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (g, c) = (gate.clone(), calls.clone());
    let app = Router::new()
        .route(
            "/v1/charge",
            post(move || {
                let (g, c) = (g.clone(), c.clone());
                async move {
                    let n = c.fetch_add(1, Ordering::SeqCst);
                    if n == 0 {
                        // The first attempt stalls past its lease.
                        let _ = g.acquire().await.unwrap();
                    }
                    (StatusCode::CREATED, format!("attempt-{n}"))
                }
            }),
        )
        .layer(layer);
    let who = Principal::user(saas_core::UserId::new());
    let call = |app: Router| {
        let who = who.clone();
        let tenant = f.a;
        async move {
            let mut req = http::Request::post("/v1/charge")
                .header("idempotency-key", "pay-1")
                .body(Body::from("x"))
                .unwrap();
            req.extensions_mut().insert(tenant);
            req.extensions_mut().insert(who);
            let res = app.oneshot(req).await.unwrap();
            String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).into_owned()
        }
    };
    let first = tokio::spawn(call(app.clone()));
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    clock.advance(saas_tests::chrono::Duration::seconds(120));
    assert_eq!(call(app.clone()).await, "attempt-1", "the takeover runs");
    gate.add_permits(1);
    assert_eq!(first.await.unwrap(), "attempt-0");
    // The stored answer is the takeover's, not the stale attempt's.
    assert_eq!(call(app.clone()).await, "attempt-1");
}

// ---------------------------------------------------------------- item 9

#[tokio::test]
async fn attack_52_a_token_for_another_application_is_refused() {
    let f = Fixture::new().await;
    let idp = LocalIssuer::start().await.unwrap();
    // The application forgot to configure an audience.
    let oidc = Oidc::new(idp.discover().await.unwrap());
    let app = Router::new()
        .route("/v1/me", get(|p: Principal| async move { p.user_id.to_string() }))
        .layer(AuthenticateLayer::new(Users::new(f.db.app().clone())).oidc(oidc));
    let token = idp.token("someone").audience("billing-dashboard").sign();
    let res = app
        .oneshot(
            http::Request::get("/v1/me")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_ne!(
        res.status(),
        StatusCode::OK,
        "a token issued for another application was accepted"
    );
    let mut tx = SystemTx::begin(&f.platform(), "test-ground-truth").await.unwrap();
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.users")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(users, 0, "and provisioned a user");
}

// ---------------------------------------------------------------- item 10

#[tokio::test]
async fn attack_53_path_allow_lists_match_whole_segments() {
    let f = Fixture::new().await;
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/healthz-admin", get(|| async { "admin secrets" }))
        .layer(AuthenticateLayer::new(Users::new(f.db.app().clone())).anonymous(["/health"]));
    let get_ = |path: &str| http::Request::get(path).body(Body::empty()).unwrap();
    assert_eq!(
        app.clone().oneshot(get_("/health")).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        app.clone().oneshot(get_("/healthz-admin")).await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "/health opened /healthz-admin"
    );

    // A suspended tenant may use /v1/billing, not /v1/billing-export (which the router
    // would answer with its own 404 once past the tenant layer).
    saas_tenancy::lifecycle::suspend(
        &f.platform(),
        f.a,
        "unpaid",
        saas_core::audit::Actor::System("billing".into()),
        &f.clock,
    )
    .await
    .unwrap();
    let h = vec![("x-test-user", f.alice.to_string()), ("x-tenant-id", "acme".to_owned())];
    let r = super::call(super::app(&f, super::header_resolver()), "GET", "/v1/billing", &h).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = super::call(
        super::app(&f, super::header_resolver()),
        "GET",
        "/v1/billing-export",
        &h,
    )
    .await;
    assert_eq!(r.status, StatusCode::LOCKED, "/v1/billing opened /v1/billing-export");
}

// ---------------------------------------------------------------- item 11

/// Runs in a child process (the environment's proxy must not leak into other tests): a
/// delivery to `localhost` with `HTTP_PROXY` pointing at the parent's listener.
#[tokio::test]
async fn attack_54_child_webhook_delivery_with_a_proxy_in_the_environment() {
    let Ok(proxy) = std::env::var("SAAS_HARDENING_CHILD_PROXY") else {
        return; // only as the child of attack_54
    };
    let _ = proxy;
    let f = Fixture::new().await;
    let keyring =
        saas_core::crypto::Keyring::from_spec(&format!("k:{}", saas_core::crypto::Keyring::generate_key())).unwrap();
    let keyring = Arc::new(keyring);
    let lax = saas_events::Webhooks::new(keyring.clone()).policy(
        saas_events::webhook::ssrf::SsrfPolicy::public_only().allow("127.0.0.1/32".parse().unwrap()),
        true,
    );
    let strict =
        saas_events::Webhooks::new(keyring).policy(saas_events::webhook::ssrf::SsrfPolicy::public_only(), true);
    let mut tx = f.tx(f.a).await;
    // Registered while it was allowed (or while the name resolved publicly).
    let (endpoint, _) = lax
        .create_endpoint(&mut tx, f.a, "http://localhost:9/internal-admin", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let d = saas_events::webhook::Deliver {
        endpoint_id: endpoint.id,
        message_id: "msg_1".into(),
        event_type: "x".into(),
        body: "{}".into(),
    };
    let _ = strict.attempt(f.db.app(), f.a, &d, 1).await;
}

#[tokio::test]
async fn attack_54_webhooks_ignore_the_environments_proxy() {
    if std::env::var("SAAS_HARDENING_CHILD_PROXY").is_ok() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    std::thread::spawn(move || {
        use std::io::Write;
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { break };
            s.fetch_add(1, Ordering::SeqCst);
            let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    let exe = std::env::current_exe().unwrap();
    let proxy = format!("http://127.0.0.1:{port}");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args([
                "hardening::attack_54_child_webhook_delivery_with_a_proxy_in_the_environment",
                "--exact",
                "--nocapture",
            ])
            .env("SAAS_HARDENING_CHILD_PROXY", &proxy)
            .env("HTTP_PROXY", &proxy)
            .env("http_proxy", &proxy)
            .env("ALL_PROXY", &proxy)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the delivery went through the environment's proxy"
    );
}

// ---------------------------------------------------------------- item 1

struct Team {
    f: Fixture,
    alice: Principal,
    dave: Principal,
    memberships: Memberships,
    keys: ApiKeys,
}

/// A with owner alice and admin dave.
async fn team() -> Team {
    let f = Fixture::new().await;
    let alice = provision(&f, "alice", "alice@acme.test").await;
    let dave = provision(&f, "dave", "dave@acme.test").await;
    let memberships = Memberships::new(f.db.app().clone());
    let mut tx = f.tx(f.a).await;
    memberships.bootstrap_owner(&mut tx, alice.user_id).await.unwrap();
    memberships
        .add(&mut tx, &alice, dave.user_id, &["admin"])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let keys = ApiKeys::new(f.db.app().clone());
    Team {
        f,
        alice,
        dave,
        memberships,
        keys,
    }
}

#[tokio::test]
async fn attack_55_a_removed_members_api_key_stops_working() {
    let t = team().await;
    let mut tx = t.f.tx(t.f.a).await;
    let key = t
        .keys
        .create(&mut tx, &t.dave, NewApiKey::new("dave's laptop", ["project:read"]))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let app = Router::new()
        .route("/v1/me", get(|p: Principal| async move { p.user_id.to_string() }))
        .layer(
            TenantLayer::new(resolve::header("x-tenant-id"), PgTenantStore::new(t.f.db.app().clone()))
                .membership(t.memberships.clone()),
        )
        .layer(AuthenticateLayer::new(Users::new(t.f.db.app().clone())).api_keys(t.keys.clone()));
    let call = || {
        app.clone().oneshot(
            http::Request::get("/v1/me")
                .header("authorization", format!("Bearer {}", key.secret.expose()))
                .header("x-tenant-id", t.f.a.to_string())
                .body(Body::empty())
                .unwrap(),
        )
    };
    assert_eq!(call().await.unwrap().status(), StatusCode::OK, "sanity");
    let mut tx = t.f.tx(t.f.a).await;
    t.memberships.remove(&mut tx, &t.alice, t.dave.user_id).await.unwrap();
    tx.commit().await.unwrap();
    let status = call().await.unwrap().status();
    assert!(
        status == StatusCode::UNAUTHORIZED || status == StatusCode::NOT_FOUND,
        "the removed member's key still works: {status}"
    );
}

#[tokio::test]
async fn attack_56_a_removed_members_direct_grants_are_gone() {
    let t = team().await;
    let authz = Authz::new(
        t.f.db.app().clone(),
        Model::new(["project:read", "project:delete"]).unwrap(),
    );
    let project = uuid::Uuid::now_v7();
    let mut tx = t.f.tx(t.f.a).await;
    authz
        .grant(
            &mut tx,
            &t.alice,
            GrantDef::new("project", project, GrantSubject::User(t.dave.user_id), "admin"),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let delete = authz.permission("project:delete").unwrap();
    let on = Some(saas_authz::ResourceRef::new("project", project));
    authz.reload(t.f.a).await.unwrap();
    assert!(authz.check(&t.dave, t.f.a, delete, on).allowed(), "sanity");
    let mut tx = t.f.tx(t.f.a).await;
    t.memberships.remove(&mut tx, &t.alice, t.dave.user_id).await.unwrap();
    tx.commit().await.unwrap();
    authz.reload(t.f.a).await.unwrap();
    assert!(
        !authz.check(&t.dave, t.f.a, delete, on).allowed(),
        "the removed member's grant still allows"
    );
    let mut tx = t.f.tx(t.f.a).await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.resource_grants WHERE user_id = $1")
        .bind(t.dave.user_id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn attack_57_invitations_die_with_their_inviters_rights() {
    let t = team().await;
    let mailer = RecordingMailer::new();
    let invitations = Invitations::new(t.memberships.clone(), mailer.clone());
    let carol = provision(&t.f, "carol", "carol@acme.test").await;
    let erin = provision(&t.f, "erin", "erin@acme.test").await;
    let mut tx = t.f.tx(t.f.a).await;
    invitations
        .invite(&mut tx, &t.dave, "carol@acme.test", "admin")
        .await
        .unwrap();
    let carol_token = InvitationToken::parse(&mailer.last_token().unwrap()).unwrap();
    invitations
        .invite(&mut tx, &t.dave, "erin@acme.test", "admin")
        .await
        .unwrap();
    let erin_token = InvitationToken::parse(&mailer.last_token().unwrap()).unwrap();
    tx.commit().await.unwrap();

    // Dave is demoted to member: his pending admin invitation no longer holds.
    let mut tx = t.f.tx(t.f.a).await;
    t.memberships
        .set_roles(&mut tx, &t.alice, t.dave.user_id, &["member"])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = t.f.tx(t.f.a).await;
    let r = invitations.accept(&mut tx, &erin, &erin_token).await;
    assert!(
        r.is_err(),
        "an invitation outranked its inviter and was accepted: {r:?}"
    );
    drop(tx);

    // Dave is removed: the invitations he sent are revoked.
    let mut tx = t.f.tx(t.f.a).await;
    t.memberships.remove(&mut tx, &t.alice, t.dave.user_id).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = t.f.tx(t.f.a).await;
    let r = invitations.accept(&mut tx, &carol, &carol_token).await;
    assert!(
        matches!(r, Err(InvitationError::Revoked)),
        "a removed member's invitation was accepted: {r:?}"
    );
}

// ---------------------------------------------------------------- item 2

#[tokio::test]
async fn attack_58_a_custom_roles_rank_follows_what_it_includes() {
    let t = team().await;
    let authz = Authz::new(
        t.f.db.app().clone(),
        Model::new(["project:read", "billing:manage"]).unwrap(),
    );
    let mut tx = t.f.tx(t.f.a).await;
    authz
        .define_role(&mut tx, &t.alice, RoleDef::new("lead", ["project:read"]))
        .await
        .unwrap();
    // The admin defines a harmless-looking role on top of it.
    authz
        .define_role(
            &mut tx,
            &t.dave,
            RoleDef::new("helper", Vec::<String>::new()).including(["lead"]),
        )
        .await
        .unwrap();
    // Later the owner makes "lead" owner-level.
    authz
        .define_role(
            &mut tx,
            &t.alice,
            RoleDef::new("lead", ["project:read", "billing:manage"]),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // The admin now assigns themselves "helper".
    let mut tx = t.f.tx(t.f.a).await;
    let r = t
        .memberships
        .set_roles(&mut tx, &t.dave, t.dave.user_id, &["admin", "helper"])
        .await;
    assert!(
        matches!(r, Err(MemberError::AboveOwnRole(_))),
        "an admin assigned themselves an owner-level role: {r:?}"
    );
}

// ---------------------------------------------------------------- item 5, pooled

/// A user set on a pooled connection — transaction-locally by `begin_as`, or at session
/// level by buggy code — does not follow the connection to the next request.
#[tokio::test]
async fn attack_59_an_acting_user_never_survives_into_the_pool() {
    let f = Fixture::new().await;
    let bob = provision(&f, "bob", "bob@globex.test").await;
    let pool = saas_tenancy::pool_options()
        .max_connections(1)
        .connect_lazy_with(f.db.app_options());
    let users_seen = async |pool: &sqlx::PgPool| -> i64 {
        let mut tx = saas_tenancy::TenantTx::begin(pool, f.a).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM saas.users")
            .fetch_one(&mut *tx)
            .await
            .unwrap()
    };
    // Acting as bob in one transaction: he sees himself there, and nobody sees him after.
    let mut tx = saas_tenancy::TenantTx::begin_as(&pool, f.a, bob.user_id).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.users")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 1);
    tx.commit().await.unwrap();
    assert_eq!(
        users_seen(&pool).await,
        0,
        "the transaction's user leaked into the next one"
    );
    // Set at session level outside any TenantTx: cleared when the connection is released.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SELECT set_config('app.user_id', $1, false)")
        .bind(bob.user_id.to_string())
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(
        users_seen(&pool).await,
        0,
        "a session-level user survived into the pool"
    );
}
