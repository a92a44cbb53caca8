//! The example app end to end: the real router over real HTTP on a random port, the
//! real PostgreSQL as the application role, a local identity provider, the billing
//! simulator. Each test gets a database of its own with the demo data seeded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::Utc;
use reqwest::StatusCode;
use saas_app::app::{App, Billing, Parts};
use saas_app::{seed, setup};
use saas_authz::LocalIssuer;
use saas_billing::Simulator;
use saas_billing::webhook::sign;
use saas_core::clock::{Clock, ManualClock};
use saas_core::crypto::Keyring;
use saas_core::testkit::TestDb;
use saas_events::WorkerHandle;
use saas_events::mail::SmtpMailer;
use saas_events::testkit::SmtpSink;
use serde_json::{Value, json};

const SECRET: &str = "whsec_app_e2e";

/// The app on a random port.
struct Running {
    base: String,
    idp: LocalIssuer,
    http: reqwest::Client,
    app: App,
    db: TestDb,
    sink: SmtpSink,
    clock: ManualClock,
    _worker: WorkerHandle,
    _server: tokio::task::JoinHandle<()>,
}

async fn start() -> Running {
    start_with(None).await
}

/// [`start`] with every plan's rate limit set to `rate` requests per minute per tenant.
async fn start_with(rate: Option<u32>) -> Running {
    let db = TestDb::new(&setup::migrators()).await.unwrap();
    // The simulated time starts four months back, so that however far a test moves it,
    // it stays behind the database's clock (which dates what the simulator did not).
    let clock = ManualClock::new(Utc::now() - chrono::Duration::days(120));
    let idp = LocalIssuer::start().await.unwrap();
    let sim = Simulator::new(clock.clone()).unpaid_when_retries_run_out();
    saas_billing::catalog::push(&saas_app::product::catalog().unwrap(), &sim)
        .await
        .unwrap();
    let database = setup::Database {
        owner: db.owner().clone(),
        app: db.app().clone(),
        platform: db.platform().clone(),
        name: db.name().to_owned(),
    };
    saas_tenancy::verify_isolation(&database.app).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = App::start(
        database,
        Parts {
            oidc: idp.oidc("api").await.unwrap(),
            billing: Billing::Simulator(Arc::new(sim)),
            webhook_secret: SECRET.into(),
            public_url: base.clone(),
            clock: Arc::new(clock.clone()),
            keyring: Arc::new(Keyring::from_spec(&format!("t1:{}", Keyring::generate_key())).unwrap()),
            allow_local_webhooks: true,
            rate_store: saas_app::app::RateStore::Memory(saas_core::ratelimit::MemoryStore::new()),
            rate_override: rate,
        },
    )
    .await
    .unwrap();
    seed::demo(&app.shared, idp.issuer(), &clock).await.unwrap();
    let sink = SmtpSink::start(None).await.unwrap();
    let worker = app
        .worker(SmtpMailer::unencrypted("127.0.0.1", sink.port(), "saas-app <noreply@saas-app.test>").unwrap())
        .await
        .unwrap();
    let router = app.router.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    Running {
        base,
        idp,
        http: reqwest::Client::new(),
        app,
        db,
        sink,
        clock,
        _worker: worker,
        _server: server,
    }
}

impl Running {
    fn token(&self, user: &str) -> String {
        // People outside the seed are globex's invitees.
        let email = seed::person_named(user).map_or_else(|| format!("{user}@globex.test"), |p| p.email.to_owned());
        self.idp.token(user).audience("api").email(&email).mfa(true).sign()
    }

    /// `method path` as `user` in `tenant`, with an optional JSON body: (status, body).
    async fn call(
        &self,
        method: &str,
        path: &str,
        user: &str,
        tenant: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .header("x-tenant-id", tenant)
            .bearer_auth(self.token(user));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let is_problem = res
            .headers()
            .get("content-type")
            .is_some_and(|c| c.as_bytes().starts_with(b"application/problem+json"));
        let text = res.text().await.unwrap();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_client_error() || status.is_server_error() {
            assert!(
                is_problem,
                "{method} {path} as {user}: {status} without problem+json: {value}"
            );
        }
        (status, value)
    }

    /// [`call`](Self::call) with a credential other than a local-issuer token.
    async fn call_with(&self, method: &str, path: &str, bearer: &str, tenant: &str) -> StatusCode {
        self.http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .header("x-tenant-id", tenant)
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn project_id(&self, tenant: &str, user: &str, name: &str) -> String {
        let (_, list) = self.call("GET", "/v1/projects", user, tenant, None).await;
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no project {name} in {list}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

#[tokio::test]
async fn the_root_is_public_and_every_api_route_wants_a_credential() {
    let r = start().await;
    let res = r.http.get(format!("{}/", r.base)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    for path in [
        "/v1/me",
        "/v1/projects",
        "/v1/members",
        "/v1/billing",
        "/v1/nothing-here",
    ] {
        let res = r
            .http
            .get(format!("{}{path}", r.base))
            .header("x-tenant-id", "acme")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/problem+json")
        );
        let res = r
            .http
            .get(format!("{}{path}", r.base))
            .header("x-tenant-id", "acme")
            .bearer_auth("not-a-token")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path} with garbage");
    }
}

#[tokio::test]
async fn each_role_may_do_what_it_should_and_nothing_more() {
    let r = start().await;
    let (s, me) = r.call("GET", "/v1/me", "ada", "acme", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["roles"], json!(["owner"]));
    assert_eq!(me["plan"], "free");

    // Viewer: reads, may not create.
    let (s, list) = r.call("GET", "/v1/projects", "dee", "acme", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (s, p) = r
        .call("POST", "/v1/projects", "dee", "acme", Some(json!({"name": "x"})))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(p["type"], "urn:saas-kit:problem:permission-denied");

    // Member: creates, may not delete; admin deletes.
    let (s, created) = r
        .call("POST", "/v1/projects", "cy", "acme", Some(json!({"name": "Cy's"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap();
    let (s, _) = r
        .call("DELETE", &format!("/v1/projects/{id}"), "cy", "acme", None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = r
        .call("DELETE", &format!("/v1/projects/{id}"), "ben", "acme", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = r.call("GET", &format!("/v1/projects/{id}"), "ben", "acme", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Every member sees who else is in the organisation; billing is the owner's alone.
    let (s, members) = r.call("GET", "/v1/members", "dee", "acme", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(members["members"].as_array().unwrap().len(), 5);
    assert_eq!(
        r.call("GET", "/v1/billing", "ada", "acme", None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        r.call("GET", "/v1/billing", "ben", "acme", None).await.0,
        StatusCode::FORBIDDEN
    );

    // The custom role: reads, nothing else.
    assert_eq!(
        r.call("GET", "/v1/projects", "eve", "acme", None).await.0,
        StatusCode::OK
    );
    let (s, _) = r
        .call("POST", "/v1/projects", "eve", "acme", Some(json!({"name": "e"})))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Bad input: a typed problem, nothing stored.
    let (s, p) = r
        .call("POST", "/v1/projects", "ada", "acme", Some(json!({"name": ""})))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    let (s, _) = r
        .call("POST", "/v1/projects", "ada", "acme", Some(json!({"nom": 1})))
        .await;
    assert!(s.is_client_error());
}

#[tokio::test]
async fn a_projects_editor_works_in_that_project_only() {
    let r = start().await;
    let granted = r.project_id("acme", "ada", "Website relaunch").await;
    let other = r.project_id("acme", "ada", "Q3 planning").await;
    let (s, t) = r
        .call(
            "POST",
            &format!("/v1/projects/{granted}/tasks"),
            "dee",
            "acme",
            Some(json!({"title": "Pick colours"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let (s, _) = r
        .call(
            "POST",
            &format!("/v1/projects/{other}/tasks"),
            "dee",
            "acme",
            Some(json!({"title": "No"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, tasks) = r
        .call("GET", &format!("/v1/projects/{granted}/tasks"), "dee", "acme", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(tasks.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn another_tenants_data_is_not_found_through_any_route() {
    let r = start().await;
    let acme_project = r.project_id("acme", "ada", "Website relaunch").await;
    // A globex member naming acme: the same 404 as a tenant that does not exist.
    for (method, path) in [
        ("GET", "/v1/me".to_owned()),
        ("GET", "/v1/projects".to_owned()),
        ("GET", format!("/v1/projects/{acme_project}")),
        ("GET", format!("/v1/projects/{acme_project}/tasks")),
        ("DELETE", format!("/v1/projects/{acme_project}")),
        ("GET", "/v1/members".to_owned()),
        ("GET", "/v1/billing".to_owned()),
    ] {
        let (s, _) = r.call(method, &path, "gil", "acme", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path} as gil in acme");
        let (s, _) = r.call(method, &path, "gil", "no-such-tenant", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path} in a missing tenant");
    }
    // Globex's owner in their own tenant, with acme's ids: not found, nothing touched.
    for (method, path, body) in [
        ("GET", format!("/v1/projects/{acme_project}"), None),
        ("GET", format!("/v1/projects/{acme_project}/tasks"), None),
        (
            "POST",
            format!("/v1/projects/{acme_project}/tasks"),
            Some(json!({"title": "planted"})),
        ),
        ("POST", format!("/v1/projects/{acme_project}/archive"), None),
        ("DELETE", format!("/v1/projects/{acme_project}"), None),
    ] {
        let (s, _) = r.call(method, &path, "gil", "globex", body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path} as gil in globex");
    }
    let (_, tasks) = r
        .call(
            "GET",
            &format!("/v1/projects/{acme_project}/tasks"),
            "ada",
            "acme",
            None,
        )
        .await;
    assert_eq!(
        tasks.as_array().unwrap().len(),
        1,
        "acme's project was touched: {tasks}"
    );
}

#[tokio::test]
async fn the_free_plans_project_limit_answers_402_naming_the_plan_that_grants_more() {
    let r = start().await;
    // Free allows 3 projects; acme has 2.
    let (s, _) = r
        .call("POST", "/v1/projects", "ada", "acme", Some(json!({"name": "Third"})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, p) = r
        .call("POST", "/v1/projects", "ada", "acme", Some(json!({"name": "Fourth"})))
        .await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{p}");
    assert_eq!(p["feature"], "projects", "{p}");
    assert_eq!(p["limit"], 3, "{p}");
    assert_eq!(p["used"], 3, "{p}");
    assert_eq!(p["upgrade_to"], "pro", "{p}");
    // Archiving one frees a slot.
    let third = r.project_id("acme", "ada", "Third").await;
    let (s, _) = r
        .call("POST", &format!("/v1/projects/{third}/archive"), "ada", "acme", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = r
        .call("POST", "/v1/projects", "ada", "acme", Some(json!({"name": "Fourth"})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn stripe_webhooks_are_verified_and_every_signed_event_acknowledged() {
    let r = start().await;
    let url = format!("{}/webhooks/stripe", r.base);
    let body = r#"{"id":"evt_app_1","object":"event","type":"customer.tax_id.created","created":1767225600,"livemode":false,"data":{"object":{"id":"txi_1"}}}"#;
    let now = Utc::now().timestamp();
    let post = |sig: Option<String>| {
        let mut req = r.http.post(&url).body(body);
        if let Some(s) = sig {
            req = req.header("stripe-signature", s);
        }
        req.send()
    };
    let ok = post(Some(sign(SECRET, now, body.as_bytes()))).await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    for (why, sig) in [
        ("missing", None),
        ("wrong secret", Some(sign("whsec_other", now, body.as_bytes()))),
        ("stale", Some(sign(SECRET, now - 3600, body.as_bytes()))),
        ("garbage", Some("t=1,v1=zz".to_owned())),
    ] {
        let res = post(sig).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{why}");
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/problem+json"),
            "{why}"
        );
    }
}

#[tokio::test]
async fn the_owner_gets_a_checkout_page_and_the_summary_and_actions_are_audited() {
    let r = start().await;
    let (s, page) = r
        .call(
            "POST",
            "/v1/billing/checkout",
            "ada",
            "acme",
            Some(json!({"price": "pro_monthly"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert!(
        page["url"]
            .as_str()
            .unwrap()
            .starts_with("https://checkout.simulator.invalid/")
    );
    let (s, p) = r
        .call(
            "POST",
            "/v1/billing/checkout",
            "ada",
            "acme",
            Some(json!({"price": "gold"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    let (s, _) = r
        .call(
            "POST",
            "/v1/billing/checkout",
            "cy",
            "acme",
            Some(json!({"price": "pro_monthly"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, summary) = r.call("GET", "/v1/billing", "ada", "acme", None).await;
    assert_eq!(s, StatusCode::OK, "{summary}");

    let (s, created) = r
        .call("POST", "/v1/projects", "cy", "acme", Some(json!({"name": "Audited"})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let actions: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, target_id FROM saas.audit_log a JOIN saas.tenants t ON t.id = a.tenant_id \
         WHERE t.slug = 'acme' AND action LIKE 'project.%'",
    )
    .fetch_all(r.db.platform())
    .await
    .unwrap();
    assert!(
        actions
            .iter()
            .any(|(a, t)| a == "project.created" && t == created["id"].as_str().unwrap()),
        "{actions:?}"
    );
    drop(r.app);
}

/// Waits up to 10 s for `f`.
async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn an_invitation_is_emailed_accepted_and_its_role_changed_with_an_audit_trail() {
    let r = start().await;
    // Every job as it was inserted (the worker deletes a sent e-mail's payload at once).
    sqlx::raw_sql(
        "CREATE TABLE test_job_log (payload text NOT NULL);
         GRANT INSERT ON test_job_log TO saas_app, saas_platform;
         CREATE FUNCTION test_log_job() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO test_job_log VALUES (NEW.payload::text); RETURN NEW; END $$;
         CREATE TRIGGER test_log_job AFTER INSERT ON saas.jobs FOR EACH ROW EXECUTE FUNCTION test_log_job();",
    )
    .execute(r.db.owner())
    .await
    .unwrap();
    // Acme has all five seats of the Free plan taken: 402 naming the limit.
    let (s, p) = r
        .call(
            "POST",
            "/v1/invitations",
            "ben",
            "acme",
            Some(json!({"email": "ivy@acme.test", "role": "member"})),
        )
        .await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{p}");
    assert_eq!(p["limit"], 5);
    // In globex: a member may not invite; the owner may.
    let (s, _) = r
        .call(
            "POST",
            "/v1/invitations",
            "hal",
            "globex",
            Some(json!({"email": "ivy@globex.test", "role": "member"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, p) = r
        .call(
            "POST",
            "/v1/invitations",
            "gil",
            "globex",
            Some(json!({"email": "not an address", "role": "member"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    let (s, inv) = r
        .call(
            "POST",
            "/v1/invitations",
            "gil",
            "globex",
            Some(json!({"email": "ivy@globex.test", "role": "member"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{inv}");

    // The e-mail reaches the SMTP server; the job table never held the token in clear.
    assert!(eventually(|| !r.sink.received().is_empty()).await, "no e-mail");
    let mail = r.sink.received().remove(0);
    assert_eq!(mail.to, ["ivy@globex.test"]);
    let body = mail.decoded();
    let token = body
        .split("token=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '"' || c == '<').next())
        .unwrap_or_else(|| panic!("no link in {body}"))
        .to_owned();
    assert!(
        body.contains(&format!("{}/invitations/accept?token=", r.base)),
        "{body}"
    );
    let stored: Vec<String> = sqlx::query_scalar("SELECT payload FROM test_job_log")
        .fetch_all(r.db.owner())
        .await
        .unwrap();
    assert!(!stored.is_empty());
    assert!(
        stored.iter().all(|p| !p.contains(&token)),
        "the token sat in clear in a job"
    );

    // Someone else signed in cannot use it (their e-mail is not the invited one); ivy
    // can, once.
    let accept = |user: &'static str, token: String| {
        let r = &r;
        async move {
            r.http
                .post(format!("{}/v1/invitations/accept", r.base))
                .bearer_auth(r.token(user))
                .json(&json!({ "token": token }))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(accept("mallory", token.clone()).await.status(), StatusCode::FORBIDDEN);
    let res = accept("ivy", token.clone()).await;
    assert_eq!(res.status(), StatusCode::OK, "{}", res.text().await.unwrap());
    assert_eq!(accept("ivy", token).await.status(), StatusCode::GONE, "used twice");
    let (s, me) = r.call("GET", "/v1/me", "ivy", "globex", None).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["roles"], json!(["member"]));

    // The owner makes ivy a viewer: she can no longer create.
    let ivy = me["user"].as_str().unwrap().to_owned();

    let (s, _) = r
        .call(
            "PUT",
            &format!("/v1/members/{ivy}/roles"),
            "hal",
            "globex",
            Some(json!({"roles": ["viewer"]})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a member changed a role");
    let (s, m) = r
        .call(
            "PUT",
            &format!("/v1/members/{ivy}/roles"),
            "gil",
            "globex",
            Some(json!({"roles": ["viewer"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    let (s, _) = r
        .call("POST", "/v1/projects", "ivy", "globex", Some(json!({"name": "Ivy's"})))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM saas.audit_log a JOIN saas.tenants t ON t.id = a.tenant_id WHERE t.slug = 'globex' ORDER BY seq",
    )
    .fetch_all(r.db.platform())
    .await
    .unwrap();
    for expected in ["invitation.created", "invitation.accepted", "member.roles_changed"] {
        assert!(actions.iter().any(|a| a == expected), "no {expected} in {actions:?}");
    }
}

#[tokio::test]
async fn a_removed_members_key_stops_working_and_a_service_accounts_does_not() {
    let r = start().await;
    let (s, k) = r
        .call(
            "POST",
            "/v1/api-keys",
            "ben",
            "acme",
            Some(json!({"name": "ben's script", "scopes": ["project:list", "project:read"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    let member_key = k["secret"].as_str().unwrap().to_owned();
    let (s, k) = r
        .call(
            "POST",
            "/v1/api-keys",
            "ben",
            "acme",
            Some(json!({"name": "ci", "scopes": ["project:list", "project:read"], "service_role": "viewer"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    let service_key = k["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        r.call_with("GET", "/v1/projects", &member_key, "acme").await,
        StatusCode::OK
    );
    assert_eq!(
        r.call_with("GET", "/v1/projects", &service_key, "acme").await,
        StatusCode::OK
    );
    // A key of acme names another tenant: not found.
    assert_eq!(
        r.call_with("GET", "/v1/projects", &member_key, "globex").await,
        StatusCode::NOT_FOUND
    );
    // Keys are listed without secrets, to admins only.
    let (s, list) = r.call("GET", "/v1/api-keys", "ada", "acme", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!list.to_string().contains(&member_key));
    assert_eq!(
        r.call("GET", "/v1/api-keys", "cy", "acme", None).await.0,
        StatusCode::FORBIDDEN
    );

    let (_, ben) = r.call("GET", "/v1/me", "ben", "acme", None).await;
    let ben = ben["user"].as_str().unwrap().to_owned();
    // A member may not remove someone else (but may leave: below, for cy).
    assert_eq!(
        r.call("DELETE", &format!("/v1/members/{ben}"), "cy", "acme", None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (s, _) = r
        .call("DELETE", &format!("/v1/members/{ben}"), "ada", "acme", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let mut refused = false;
    for _ in 0..100 {
        let s = r.call_with("GET", "/v1/projects", &member_key, "acme").await;
        if s == StatusCode::UNAUTHORIZED || s == StatusCode::NOT_FOUND {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(refused, "the removed member's key still works");
    let (_, cy) = r.call("GET", "/v1/me", "cy", "acme", None).await;
    let cy = cy["user"].as_str().unwrap().to_owned();
    assert_eq!(
        r.call("DELETE", &format!("/v1/members/{cy}"), "cy", "acme", None)
            .await
            .0,
        StatusCode::NO_CONTENT,
        "a member leaves"
    );
    assert_eq!(
        r.call("GET", "/v1/projects", "cy", "acme", None).await.0,
        StatusCode::NOT_FOUND
    );
    // The last owner cannot leave.
    let (_, ada) = r.call("GET", "/v1/me", "ada", "acme", None).await;
    let ada = ada["user"].as_str().unwrap().to_owned();
    let (s, _) = r
        .call("DELETE", &format!("/v1/members/{ada}"), "ada", "acme", None)
        .await;
    assert!(s.is_client_error(), "the last owner left: {s}");
    assert_eq!(
        r.call_with("GET", "/v1/projects", &service_key, "acme").await,
        StatusCode::OK
    );
}

/// Polls `path` as `user` in `tenant` until `check` holds (the worker applies webhooks and
/// the entitlements follow within a second or two).
async fn until_state(r: &Running, user: &str, tenant: &str, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..150 {
        let (s, v) = r.call("GET", path, user, tenant, None).await;
        if s == StatusCode::OK && check(&v) {
            return v;
        }
        last = v;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{path} as {user} never reached the expected state; last: {last}");
}

#[tokio::test]
async fn a_subscription_lives_through_trial_payment_failure_grace_restriction_and_recovery() {
    let r = start().await;
    let relay = r.app.shared.relay.clone().expect("the simulator's relay");
    // Checkout for Pro: the plan's 14-day trial applies.
    let (s, page) = r
        .call(
            "POST",
            "/v1/billing/checkout",
            "ada",
            "acme",
            Some(json!({"price": "pro_monthly"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let session = page["id"].as_str().unwrap().to_owned();
    // Another tenant cannot complete acme's checkout.
    let (s, _) = r
        .call(
            "POST",
            "/v1/billing/simulator/complete",
            "gil",
            "globex",
            Some(json!({"session": session})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, done) = r
        .call(
            "POST",
            "/v1/billing/simulator/complete",
            "ada",
            "acme",
            Some(json!({"session": session})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{done}");
    until_state(&r, "ada", "acme", "/v1/billing", |b| {
        b["subscription"]["status"] == "trialing"
    })
    .await;
    until_state(&r, "ada", "acme", "/v1/me", |m| m["plan"] == "pro").await;
    // Pro allows 50 projects: a fourth is fine now.
    let (s, _) = r
        .call("POST", "/v1/projects", "ada", "acme", Some(json!({"name": "Third"})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, p) = r
        .call("POST", "/v1/projects", "ada", "acme", Some(json!({"name": "Fourth"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");

    // The trial ends and the card pays: active.
    relay.sim.advance(chrono::Duration::days(15));
    relay.deliver().await.unwrap();
    until_state(&r, "ada", "acme", "/v1/billing", |b| {
        b["subscription"]["status"] == "active"
    })
    .await;

    // The card starts failing; the renewal fails: past due, paid features held (grace).
    let customer: String = sqlx::query_scalar(
        "SELECT c.customer_id FROM saas.billing_customers c JOIN saas.tenants t ON t.id = c.tenant_id WHERE t.slug = 'acme'",
    )
    .fetch_one(r.db.platform())
    .await
    .unwrap();
    relay.sim.set_payment_method(&customer, false).unwrap();
    relay.sim.advance(chrono::Duration::days(31));
    relay.deliver().await.unwrap();
    until_state(&r, "ada", "acme", "/v1/billing", |b| {
        b["subscription"]["status"] == "past_due"
    })
    .await;
    let me = until_state(&r, "ada", "acme", "/v1/me", |m| m["payment_problem"] == true).await;
    assert_eq!(me["plan"], "pro", "the grace period keeps the plan: {me}");
    assert_eq!(
        r.call("POST", "/v1/projects", "ada", "acme", Some(json!({"name": "In grace"})))
            .await
            .0,
        StatusCode::CREATED
    );
    // The owners were told by e-mail.
    assert!(
        eventually(|| r
            .sink
            .received()
            .iter()
            .any(|m| m.to == ["ada@acme.test"] && m.decoded().contains("could not charge")))
        .await,
        "no payment-failed e-mail: {:?}",
        r.sink.received()
    );

    // Three days on (the first retry fails too): the grace is over, paid features restricted.
    relay
        .sim
        .advance(chrono::Duration::days(3) + chrono::Duration::hours(1));
    relay.deliver().await.unwrap();
    until_state(&r, "ada", "acme", "/v1/me", |m| m["plan"] == "free").await;
    let (s, p) = r
        .call(
            "POST",
            "/v1/projects",
            "ada",
            "acme",
            Some(json!({"name": "Restricted"})),
        )
        .await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{p}");
    // Nothing was deleted: the projects are all still there to read.
    let (_, list) = r.call("GET", "/v1/projects", "ada", "acme", None).await;
    assert_eq!(list.as_array().unwrap().len(), 5);

    // The card is fixed; the next retry pays: active again, the plan back.
    relay.sim.set_payment_method(&customer, true).unwrap();
    relay.sim.advance(chrono::Duration::days(2));
    relay.deliver().await.unwrap();
    until_state(&r, "ada", "acme", "/v1/billing", |b| {
        b["subscription"]["status"] == "active"
    })
    .await;
    until_state(&r, "ada", "acme", "/v1/me", |m| {
        m["plan"] == "pro" && m["payment_problem"] == false
    })
    .await;
    assert_eq!(
        r.call("POST", "/v1/projects", "ada", "acme", Some(json!({"name": "Restored"})))
            .await
            .0,
        StatusCode::CREATED
    );
    let _ = &r.clock;
}

#[tokio::test]
async fn the_released_capability_follows_the_flag_per_tenant() {
    let r = start().await;
    let admin = saas_flags::FlagAdmin::new(saas_tenancy::PlatformPool::new(r.db.platform().clone()))
        .environments(["development", "production"]);
    let staff = saas_core::audit::Actor::System("test-staff".into());
    let tenant = |slug: &'static str| {
        let r = &r;
        async move {
            sqlx::query_scalar::<_, saas_core::TenantId>("SELECT id FROM saas.tenants WHERE slug = $1")
                .bind(slug)
                .fetch_one(r.db.platform())
                .await
                .unwrap()
        }
    };
    let (acme, globex) = (tenant("acme").await, tenant("globex").await);
    admin
        .set_tenant_override(&staff, saas_app::product::TASKS_CSV_FLAG, acme, Some(true))
        .await
        .unwrap();
    admin
        .set_tenant_override(&staff, saas_app::product::TASKS_CSV_FLAG, globex, Some(false))
        .await
        .unwrap();
    let acme_project = r.project_id("acme", "ada", "Website relaunch").await;
    let globex_project = r.project_id("globex", "gil", "Website relaunch (Globex)").await;
    // Planted by a member: a title a spreadsheet would run as a formula.
    let (s, _) = r
        .call(
            "POST",
            &format!("/v1/projects/{acme_project}/tasks"),
            "cy",
            "acme",
            Some(json!({"title": "=HYPERLINK(\"http://evil.test\",\"x\")"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);

    let csv = |tenant: &'static str, user: &'static str, project: String| {
        let r = &r;
        async move {
            let res = r
                .http
                .get(format!("{}/v1/projects/{project}/tasks.csv", r.base))
                .header("x-tenant-id", tenant)
                .bearer_auth(r.token(user))
                .send()
                .await
                .unwrap();
            (res.status(), res.text().await.unwrap())
        }
    };
    // The store follows the overrides within a second or two.
    let mut got = (StatusCode::NOT_FOUND, String::new());
    for _ in 0..100 {
        got = csv("acme", "dee", acme_project.clone()).await;
        if got.0 == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    assert!(got.1.starts_with("id,title,done,created_at\r\n"), "{}", got.1);
    assert!(got.1.contains("\"Pick a font\""), "{}", got.1);
    assert!(
        got.1.contains("\"'=HYPERLINK(\"\"http://evil.test\"\",\"\"x\"\")\""),
        "{}",
        got.1
    );
    let (s, _) = csv("globex", "gil", globex_project.clone()).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "the flag is off for globex");
    // Whatever the flag says, acme's project is not reachable from globex.
    let (s, _) = csv("globex", "gil", acme_project).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// A webhook receiver on loopback: keeps each request's path, headers and body.
async fn receiver() -> (String, Arc<std::sync::Mutex<Vec<(String, http::HeaderMap, String)>>>) {
    let got: Arc<std::sync::Mutex<Vec<(String, http::HeaderMap, String)>>> = Arc::default();
    let g = Arc::clone(&got);
    let app = axum::Router::new().fallback(move |uri: http::Uri, headers: http::HeaderMap, body: String| {
        let g = Arc::clone(&g);
        async move {
            g.lock().unwrap().push((uri.path().to_owned(), headers, body));
            StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, got)
}

#[tokio::test]
async fn project_events_reach_the_tenants_own_endpoint_signed() {
    let r = start().await;
    let (hook, got) = receiver().await;
    // Members may not register endpoints; admins may; inside our network is refused.
    let body = json!({"url": format!("{hook}/acme"), "event_types": ["project.created"]});
    assert_eq!(
        r.call("POST", "/v1/webhooks", "cy", "acme", Some(body.clone())).await.0,
        StatusCode::FORBIDDEN
    );
    let (s, p) = r
        .call(
            "POST",
            "/v1/webhooks",
            "ben",
            "acme",
            Some(json!({"url": "http://10.1.2.3/x"})),
        )
        .await;
    assert!(s.is_client_error(), "{s} {p}");
    let (s, p) = r
        .call(
            "POST",
            "/v1/webhooks",
            "ben",
            "acme",
            Some(json!({"url": format!("{hook}/x"), "event_types": ["project.exploded"]})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    let (s, endpoint) = r.call("POST", "/v1/webhooks", "ben", "acme", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{endpoint}");
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    let (s, _) = r
        .call(
            "POST",
            "/v1/webhooks",
            "gil",
            "globex",
            Some(json!({"url": format!("{hook}/globex")})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, list) = r.call("GET", "/v1/webhooks", "ben", "acme", None).await;
    assert_eq!(list["endpoints"].as_array().unwrap().len(), 1, "{list}");
    assert!(!list.to_string().contains(&secret));

    let (s, project) = r
        .call("POST", "/v1/projects", "cy", "acme", Some(json!({"name": "Hooked"})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(eventually(|| !got.lock().unwrap().is_empty()).await, "no delivery");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "only acme's endpoint hears acme: {got:?}");
    let (path, headers, body) = &got[0];
    assert_eq!(path, "/acme");
    saas_events::webhook::sign::verify(&secret, headers, body.as_bytes(), r.clock.now().timestamp(), 300)
        .expect("a valid Standard Webhooks signature");
    let event: Value = serde_json::from_str(body).unwrap();
    assert_eq!(event["type"], "project.created");
    assert_eq!(event["data"]["id"], project["id"]);
}

#[tokio::test]
async fn an_export_holds_one_tenant_and_deletion_restore_and_purge_touch_only_it() {
    let r = start().await;
    // Owners only.
    assert_eq!(
        r.call("GET", "/v1/export", "ben", "acme", None).await.0,
        StatusCode::FORBIDDEN
    );
    let res = r
        .http
        .get(format!("{}/v1/export", r.base))
        .header("x-tenant-id", "acme")
        .bearer_auth(r.token("ada"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    let text = res.text().await.unwrap();
    let acme: String = sqlx::query_scalar("SELECT id::text FROM saas.tenants WHERE slug = 'acme'")
        .fetch_one(r.db.platform())
        .await
        .unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() > 5, "{text}");
    for l in &lines {
        assert_eq!(l["row"]["tenant_id"], acme.as_str(), "another tenant's row: {l}");
    }
    let tables: std::collections::BTreeSet<&str> = lines.iter().filter_map(|l| l["table"].as_str()).collect();
    assert!(
        tables.iter().any(|t| t.ends_with("projects")) && tables.iter().any(|t| t.ends_with("tasks")),
        "{tables:?}"
    );
    assert!(text.contains("Website relaunch") && !text.contains("(Globex)"));

    // Deletion: acme stops answering at once, globex carries on.
    let (s, d) = r.call("POST", "/v1/tenant/deletion", "ben", "acme", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{d}");
    let (s, d) = r.call("POST", "/v1/tenant/deletion", "ada", "acme", None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{d}");
    assert_eq!(
        r.call("GET", "/v1/projects", "ada", "acme", None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        r.call("GET", "/v1/projects", "gil", "globex", None).await.0,
        StatusCode::OK
    );
    // Staff restore it (the `saas-app restore` command does this): back as it was.
    let platform = saas_tenancy::PlatformPool::new(r.db.platform().clone());
    let acme_id: saas_core::TenantId = acme.parse().unwrap();
    let staff = saas_core::audit::Actor::System("test".into());
    saas_tenancy::lifecycle::restore(&platform, acme_id, staff.clone(), &r.clock)
        .await
        .unwrap();
    // This process caches tenants for 5 s; a change made elsewhere is seen within that.
    r.app.shared.tenants.invalidate(acme_id).await;
    let (s, list) = r.call("GET", "/v1/projects", "ada", "acme", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);
    // Deleted again and past its retention: the purge removes acme's rows only.
    assert_eq!(
        r.call("POST", "/v1/tenant/deletion", "ada", "acme", None).await.0,
        StatusCode::ACCEPTED
    );
    r.clock.advance(chrono::Duration::days(400));
    let purged = saas_tenancy::lifecycle::purge_due(&platform, staff, &r.clock)
        .await
        .unwrap();
    assert_eq!(purged, vec![acme_id]);
    let count = |table: &'static str, slug: &'static str| {
        let r = &r;
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {table} x JOIN saas.tenants t ON t.id = x.tenant_id WHERE t.slug = '{slug}'"
            )))
            .fetch_one(r.db.platform())
            .await
            .unwrap()
        }
    };
    assert_eq!(count("projects", "acme").await, 0);
    assert_eq!(count("tasks", "acme").await, 0);
    assert_eq!(count("projects", "globex").await, 2);
    assert_eq!(count("tasks", "globex").await, 2);
    assert_eq!(
        r.call("GET", "/v1/projects", "gil", "globex", None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_api_is_described_by_openapi_with_every_error_as_a_problem() {
    let r = start().await;
    let doc: Value = r
        .http
        .get(format!("{}/openapi.json", r.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/me", "get"),
        ("/v1/projects", "get"),
        ("/v1/projects", "post"),
        ("/v1/projects/{id}", "delete"),
        ("/v1/projects/{id}/tasks", "post"),
        ("/v1/projects/{id}/tasks.csv", "get"),
        ("/v1/members/{user}/roles", "put"),
        ("/v1/invitations", "post"),
        ("/v1/invitations/accept", "post"),
        ("/v1/api-keys", "post"),
        ("/v1/webhooks", "post"),
        ("/v1/export", "get"),
        ("/v1/tenant/deletion", "post"),
        ("/v1/billing", "get"),
        ("/v1/billing/checkout", "post"),
        ("/webhooks/stripe", "post"),
    ] {
        let op = &paths.get(path).unwrap_or_else(|| panic!("{path} undocumented"))[method];
        assert!(op.is_object(), "{method} {path} undocumented");
        for (status, response) in op["responses"].as_object().unwrap() {
            if status.starts_with('4') || status.starts_with('5') {
                let target = response["$ref"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path} {status}: {response}"));
                let name = target.rsplit('/').next().unwrap();
                let content = &doc["components"]["responses"][name]["content"];
                assert!(content["application/problem+json"].is_object(), "{name}: {content}");
            }
        }
        if path.starts_with("/v1/") {
            assert!(op["responses"]["401"].is_object(), "{method} {path}: no 401");
        }
    }
    // The tenant header is declared where it is needed, and not to accept an invitation.
    let has_tenant = |p: &str, m: &str| {
        paths[p][m]["parameters"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|x| x["name"] == "x-tenant-id"))
    };
    assert!(has_tenant("/v1/projects", "get"));
    assert!(!has_tenant("/v1/invitations/accept", "post"));
    let docs = r.http.get(format!("{}/docs", r.base)).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("<html"));
}

/// schemathesis (PyPI), installed by `.ci/run` into the cached virtualenv.
fn schemathesis() -> std::path::PathBuf {
    if let Some(bin) = std::env::var_os("SCHEMATHESIS_BIN") {
        return bin.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
    let bin = cache.join("saas-kit/venv/bin/schemathesis");
    assert!(
        bin.exists(),
        "schemathesis is not installed: run .ci/run once, or `python3 -m venv ~/.cache/saas-kit/venv && ~/.cache/saas-kit/venv/bin/pip install schemathesis`"
    );
    bin
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_every_answer_matches_the_schema() {
    let r = start().await;
    let out = tokio::process::Command::new(schemathesis())
        .args(["run", &format!("{}/openapi.json", r.base)])
        .args(["-H", &format!("Authorization: Bearer {}", r.token("cy"))])
        .args(["-H", "x-tenant-id: acme"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args([
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "5",
            "--max-time",
            "45",
        ])
        .args(["--seed", "20261130", "--workers", "2"])
        .env("NO_COLOR", "1")
        .current_dir(std::env::temp_dir())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Tested: 29"), "{text}");
}

#[tokio::test]
async fn each_tenant_has_its_own_rate_limit() {
    let r = start_with(Some(5)).await;
    for i in 0..5 {
        let (s, _) = r.call("GET", "/v1/ping", "ada", "acme", None).await;
        assert_eq!(s, StatusCode::OK, "request {i}");
    }
    let res = r
        .http
        .get(format!("{}/v1/ping", r.base))
        .header("x-tenant-id", "acme")
        .bearer_auth(r.token("cy"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the tenant's sixth, by another member"
    );
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(res.headers()["ratelimit-limit"], "5");
    // Another tenant is not slowed down by acme.
    let (s, _) = r.call("GET", "/v1/ping", "gil", "globex", None).await;
    assert_eq!(s, StatusCode::OK);
}
