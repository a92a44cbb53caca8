//! The Stripe client against localstripe (PyPI), a stateful Stripe stand-in started here
//! (installed into a cached virtualenv first when missing, as `.ci/run` does).
//!
//! localstripe speaks the legacy plans API: fixtures (plans, subscriptions) are made with
//! raw requests in that dialect; what is tested is our client reading customers and
//! subscriptions back, paginating, refusing bad ids, and the mirror applying them.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use saas_billing::provider::BillingProvider;
use saas_billing::stripe::Stripe;
use saas_billing::sync::sync_subscription;
use saas_core::TenantId;
use saas_tenancy::PlatformPool;

const KEY: &str = "sk_test_saas_kit";

struct LocalStripe {
    url: String,
    _child: Child,
}

fn venv_bin() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    cache.join("saas-kit/venv/bin/localstripe")
}

/// One localstripe for the whole test binary, on a free port.
fn localstripe() -> &'static str {
    static SERVER: OnceLock<LocalStripe> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let bin = std::env::var_os("LOCALSTRIPE_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(venv_bin);
            if !bin.exists() {
                let venv = bin.parent().and_then(|p| p.parent()).unwrap().to_owned();
                let ok = Command::new("python3")
                    .arg("-m")
                    .arg("venv")
                    .arg(&venv)
                    .status()
                    .is_ok_and(|s| s.success())
                    && Command::new(venv.join("bin/pip"))
                        .args(["install", "--quiet", "localstripe"])
                        .status()
                        .is_ok_and(|s| s.success());
                assert!(
                    ok,
                    "localstripe could not be installed: run `python3 -m venv {0} && {0}/bin/pip install localstripe`",
                    venv.display()
                );
            }
            // Up to three starts, each on a fresh free port (another test may take the port
            // between our probe and localstripe's bind); each waits while the process lives.
            let mut last = String::new();
            for _ in 0..3 {
                match start(&bin) {
                    Ok(server) => return server,
                    Err(why) => last = why,
                }
            }
            panic!("localstripe did not start: {last}");
        })
        .url
}

/// Starts localstripe on a free port and waits until it accepts connections (the first
/// start after an install compiles its modules: up to a minute on a busy machine).
fn start(bin: &std::path::Path) -> Result<LocalStripe, String> {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::env::temp_dir().join(format!("localstripe-{}-{port}.log", std::process::id()));
    // A static's destructor never runs, so a watchdog shell ends localstripe when this
    // test process is gone, and ends itself when localstripe does.
    let script = format!(
        "\"$0\" --port {port} 2>\"$1\" & child=$!; \
         while kill -0 {} 2>/dev/null && kill -0 $child 2>/dev/null; do sleep 1; done; kill $child 2>/dev/null",
        std::process::id()
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(bin)
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("could not run {}: {e}", bin.display()))?;
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let exited = child.try_wait().ok().flatten().is_some();
        if exited || started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("port {port}, {:?}: {}", started.elapsed(), output.trim()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(LocalStripe {
        url: format!("http://127.0.0.1:{port}"),
        _child: child,
    })
}

async fn raw(path: &str, form: &[(&str, &str)]) -> serde_json::Value {
    reqwest::Client::new()
        .post(format!("{}{path}", localstripe()))
        .basic_auth(KEY, Some(""))
        .header("content-type", "application/x-www-form-urlencoded")
        // The fixtures' keys and values need no escaping beyond the brackets.
        .body(
            form.iter()
                .map(|(k, v)| format!("{}={v}", k.replace('[', "%5B").replace(']', "%5D")))
                .collect::<Vec<_>>()
                .join("&"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_client_reads_what_localstripe_holds_and_the_mirror_applies_it() {
    let url = localstripe();
    let stripe = Stripe::new(KEY).unwrap().base_url(url);
    let tenant = TenantId::new();
    let customer = stripe.create_customer(tenant, Some("owner@acme.test")).await.unwrap();
    assert_eq!(customer.tenant, Some(tenant));
    // (Idempotency keys: localstripe ignores them; see the stand-in test below.)
    assert_eq!(stripe.customer(&customer.id).await.unwrap(), Some(customer.clone()));
    assert_eq!(stripe.customer("cus_doesnotexist").await.unwrap(), None);

    // A plan named by the catalog's lookup key, and a subscription to it (legacy API).
    let plan = format!("pro_monthly_{}", &tenant.to_string()[..8]);
    raw(
        "/v1/plans",
        &[
            ("id", &plan),
            ("amount", "2900"),
            ("currency", "eur"),
            ("interval", "month"),
            ("product[name]", "Pro"),
        ],
    )
    .await;
    let sub = raw(
        "/v1/subscriptions",
        // A trial: localstripe refuses a subscription without a payment method otherwise.
        &[
            ("customer", &customer.id),
            ("items[0][plan]", &plan),
            ("trial_period_days", "14"),
        ],
    )
    .await;
    let sub_id = sub["id"].as_str().unwrap_or_else(|| panic!("{sub}")).to_owned();
    let read = stripe.subscription(&sub_id).await.unwrap().unwrap();
    assert_eq!(
        (read.customer.as_str(), read.price_lookup_key.as_deref()),
        (customer.id.as_str(), Some(plan.as_str()))
    );
    assert_eq!(read.status.as_str(), sub["status"].as_str().unwrap());
    let listed = stripe.subscriptions_of(&customer.id).await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        vec![sub_id.as_str()]
    );
    assert!(stripe.customers().await.unwrap().iter().any(|c| c.id == customer.id));
    assert!(stripe.subscriptions().await.unwrap().iter().any(|s| s.id == sub_id));
    // Ids never reach another path.
    assert!(stripe.subscription("../v1/customers").await.is_err());

    // The mirror applies what the client read, for the customer's tenant.
    let db = crate::db().await;
    let platform = PlatformPool::new(db.platform().clone());
    sync_subscription(&platform, &stripe, &sub_id, "localstripe")
        .await
        .unwrap();
    let (owner, status): (uuid::Uuid, String) =
        sqlx::query_as("SELECT tenant_id, status FROM saas.billing_subscriptions WHERE subscription_id = $1")
            .bind(&sub_id)
            .fetch_one(db.platform())
            .await
            .unwrap();
    assert_eq!((owner, status.as_str()), (*tenant.as_uuid(), read.status.as_str()));
}

#[tokio::test]
async fn lists_are_read_page_by_page() {
    let stripe = Stripe::new(KEY).unwrap().base_url(localstripe());
    let mut made = Vec::new();
    for _ in 0..105 {
        made.push(stripe.create_customer(TenantId::new(), None).await.unwrap().id);
    }
    let all: Vec<String> = stripe.customers().await.unwrap().into_iter().map(|c| c.id).collect();
    for id in &made {
        assert!(all.contains(id), "{id} missing from the paginated list");
    }
}

#[tokio::test]
async fn an_unreachable_stripe_is_unavailable_after_the_retries() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let stripe = Stripe::new(KEY)
        .unwrap()
        .base_url(format!("http://127.0.0.1:{port}"))
        .retries(1);
    let err = stripe.customer("cus_1").await.unwrap_err();
    assert!(matches!(err, saas_billing::ProviderError::Unavailable(_)), "{err}");
    assert!(!err.to_string().contains(KEY));
}

/// A stand-in that answers 429 (with `Retry-After: 1`) to the first attempt of each
/// request and records every attempt's headers: localstripe ignores idempotency keys and
/// never rate-limits, so retries and keys are checked here.
#[tokio::test]
async fn retries_honour_retry_after_and_repeat_the_same_idempotency_key() {
    use std::sync::{Arc, Mutex};

    use axum::routing::post;

    type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>, String)>>>;
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/v1/customers",
        post(move |headers: http::HeaderMap, body: String| {
            let log = Arc::clone(&log);
            async move {
                let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned());
                let first = {
                    let mut log = log.lock().unwrap();
                    log.push((h("idempotency-key"), h("stripe-version"), body));
                    log.len() == 1
                };
                if first {
                    (
                        http::StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "1")],
                        r#"{"error":{"message":"Too many requests","type":"rate_limit_error"}}"#.to_owned(),
                    )
                } else {
                    (
                        http::StatusCode::OK,
                        [("retry-after", "0")],
                        r#"{"id":"cus_1","object":"customer","metadata":{"tenant_id":"0190b2c4-0000-7000-8000-000000000001"}}"#
                            .to_owned(),
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let stripe = Stripe::new(KEY).unwrap().base_url(format!("http://{addr}"));
    let tenant = TenantId::new();
    let started = Instant::now();
    let customer = stripe.create_customer(tenant, Some("a b@c.test")).await.unwrap();
    assert_eq!(customer.id, "cus_1");
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was honoured");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one retry");
    let key = format!("customer-{tenant}");
    for (idem, version, body) in &seen {
        assert_eq!(idem.as_deref(), Some(key.as_str()), "the same key on every attempt");
        assert_eq!(version.as_deref(), Some(saas_billing::stripe::API_VERSION));
        assert_eq!(body, &format!("metadata%5Btenant_id%5D={tenant}&email=a+b%40c.test"));
    }
    // A refusal (4xx other than 429) is not retried and says what Stripe said.
    let refusing = axum::Router::new().route(
        "/v1/customers/{id}",
        axum::routing::get(|| async {
            (
                http::StatusCode::UNAUTHORIZED,
                r#"{"error":{"message":"Invalid API Key provided"}}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, refusing).await.unwrap() });
    let err = Stripe::new(KEY)
        .unwrap()
        .base_url(format!("http://{addr}"))
        .customer("cus_1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, saas_billing::ProviderError::Refused(ref m) if m.contains("Invalid API Key")),
        "{err}"
    );
}

/// Decodes an `application/x-www-form-urlencoded` body into sorted pairs.
fn decoded(body: &str) -> Vec<(String, String)> {
    let mut pairs = url_decode_pairs(body);
    pairs.sort();
    pairs
}

fn url_decode_pairs(body: &str) -> Vec<(String, String)> {
    fn dec(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    v.sort();
    v
}

/// Gives `customer` a card that pays (localstripe's test numbers are Stripe's).
async fn attach_card(customer: &str) {
    let pm = raw(
        "/v1/payment_methods",
        &[
            ("type", "card"),
            ("card[number]", "4242424242424242"),
            ("card[exp_month]", "12"),
            ("card[exp_year]", "2030"),
            ("card[cvc]", "123"),
        ],
    )
    .await;
    let pm = pm["id"].as_str().unwrap_or_else(|| panic!("{pm}")).to_owned();
    raw(&format!("/v1/payment_methods/{pm}/attach"), &[("customer", customer)]).await;
    raw(
        &format!("/v1/customers/{customer}"),
        &[("invoice_settings[default_payment_method]", &pm)],
    )
    .await;
}

/// The write side against localstripe, in the legacy plans dialect it speaks: plans made
/// with the catalog's lookup keys as ids, items named by plan.
#[tokio::test]
async fn the_write_side_against_localstripe() {
    use saas_billing::provider::{CancelAt, NewSubscription, SubscriptionChange};

    let stripe = Stripe::new(KEY).unwrap().base_url(localstripe()).legacy_plans();
    let tenant = TenantId::new();
    let suffix = &tenant.as_uuid().simple().to_string()[24..];
    let (pro, team) = (format!("pro_monthly_{suffix}"), format!("team_monthly_{suffix}"));
    for (plan, amount) in [(&pro, "3000"), (&team, "6000")] {
        let made = raw(
            "/v1/plans",
            &[
                ("id", plan),
                ("amount", amount),
                ("currency", "eur"),
                ("interval", "month"),
                ("product[name]", plan),
            ],
        )
        .await;
        assert_eq!(made["id"].as_str(), Some(plan.as_str()), "{made}");
    }
    let customer = stripe.create_customer(tenant, None).await.unwrap();
    attach_card(&customer.id).await;

    let sub = stripe
        .create_subscription(&NewSubscription::new(tenant, &customer.id, &pro).quantity(2))
        .await
        .unwrap();
    assert_eq!(
        (sub.status.as_str(), sub.price_lookup_key.as_deref(), sub.quantity),
        ("active", Some(pro.as_str()), 2)
    );

    // The first invoice, read back.
    let invoices = reqwest::Client::new()
        .get(format!("{}/v1/invoices?customer={}", localstripe(), customer.id))
        .basic_auth(KEY, Some(""))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let first = invoices["data"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{invoices}"));
    let invoice = stripe.invoice(first).await.unwrap().unwrap();
    assert_eq!(
        (
            invoice.customer.as_str(),
            invoice.subscription.as_deref(),
            invoice.currency.as_str(),
            invoice.amount_due,
            invoice.status.as_deref()
        ),
        (customer.id.as_str(), Some(sub.id.as_str()), "eur", 6000, Some("paid")),
        "{invoices}"
    );
    assert_eq!(stripe.invoice("in_doesnotexist").await.unwrap(), None, "{invoices}");
    let latest = stripe.invoices_of(&customer.id, 5).await.unwrap();
    assert!(latest.iter().any(|i| i.id.as_deref() == Some(first)), "{latest:?}");

    // A preview of the upgrade (localstripe's create_preview): the next invoice at the new plan.
    let preview = stripe
        .preview_change(&sub.id, &SubscriptionChange::price(&team))
        .await
        .unwrap();
    // (localstripe's preview names no subscription; the stand-in test below checks that read.)
    // It credits the whole last invoice as unused time and adds the new plan.
    assert_eq!(
        (preview.currency.as_str(), preview.customer.as_str()),
        ("eur", customer.id.as_str())
    );
    assert!(preview.proration_amount() < 0, "{preview:?}");
    assert!(
        preview.lines.iter().any(|l| !l.proration && l.amount == 6000),
        "{preview:?}"
    );
    assert_eq!(preview.amount_due, preview.lines.iter().map(|l| l.amount).sum::<i64>());

    let more = stripe
        .update_subscription(&sub.id, &SubscriptionChange::quantity(3))
        .await
        .unwrap();
    assert_eq!(more.quantity, 3);
    let upgraded = stripe
        .update_subscription(&sub.id, &SubscriptionChange::price(&team).with_quantity(3))
        .await
        .unwrap();
    assert_eq!(upgraded.price_lookup_key.as_deref(), Some(team.as_str()));

    let ending = stripe.cancel_subscription(&sub.id, CancelAt::PeriodEnd).await.unwrap();
    assert!(ending.cancel_at_period_end);
    let kept = stripe
        .update_subscription(&sub.id, &SubscriptionChange::keep())
        .await
        .unwrap();
    assert!(!kept.cancel_at_period_end);
    let gone = stripe.cancel_subscription(&sub.id, CancelAt::Now).await.unwrap();
    assert_eq!(gone.status.as_str(), "canceled");
    assert!(matches!(
        stripe.cancel_subscription("sub_doesnotexist", CancelAt::Now).await,
        Err(saas_billing::ProviderError::NotFound(_))
    ));
}

/// End to end: localstripe delivers its webhooks to the endpoint served here, a worker
/// processes them with the client, and the mirror shows the subscription.
#[tokio::test]
async fn localstripe_webhooks_reach_the_mirror() {
    use std::sync::Arc;

    use saas_billing::provider::NewSubscription;
    use saas_billing::webhook::{WebhookEndpoint, WebhookSecrets};

    let secret = "whsec_localstripe_e2e";
    let db = crate::db().await;
    let platform = PlatformPool::new(db.platform().clone());
    let endpoint = WebhookEndpoint::new(platform.clone(), WebhookSecrets::new(secret).unwrap());
    let app = axum::Router::new().route_service("/webhooks/stripe", endpoint);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // localstripe signs with the whole `whsec_…` string, as Stripe does.
    let name = format!("e2e{}", addr.port());
    let configured = reqwest::Client::new()
        .post(format!("{}/_config/webhooks/{name}", localstripe()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("url=http%3A%2F%2F{addr}%2Fwebhooks%2Fstripe&secret={secret}"))
        .send()
        .await
        .unwrap();
    assert!(configured.status().is_success(), "{}", configured.status());

    let stripe = Arc::new(Stripe::new(KEY).unwrap().base_url(localstripe()).legacy_plans());
    let worker = saas_billing::sync::handle_events(
        saas_events::Worker::builder(platform.clone()),
        platform.clone(),
        Arc::clone(&stripe),
    )
    .start()
    .await
    .unwrap();

    let tenant = TenantId::new();
    let plan = format!("e2e_monthly_{}", &tenant.as_uuid().simple().to_string()[24..]);
    raw(
        "/v1/plans",
        &[
            ("id", &plan),
            ("amount", "1000"),
            ("currency", "eur"),
            ("interval", "month"),
            ("product[name]", "E2E"),
        ],
    )
    .await;
    let customer = saas_billing::customer_for(&platform, &*stripe, tenant, None)
        .await
        .unwrap();
    attach_card(&customer).await;
    let sub = stripe
        .create_subscription(&NewSubscription::new(tenant, &customer, &plan))
        .await
        .unwrap();

    // localstripe delivers a second after each change (each event on its own, in any
    // order); nothing here calls the mirror.
    let (mut status, mut received) = (None, 0i64);
    for _ in 0..600 {
        status =
            sqlx::query_scalar::<_, String>("SELECT status FROM saas.billing_subscriptions WHERE subscription_id = $1")
                .bind(&sub.id)
                .fetch_optional(db.platform())
                .await
                .unwrap();
        received = sqlx::query_scalar(
            "SELECT count(*) FROM saas.billing_inbox \
             WHERE type = 'customer.subscription.created' AND object_id = $1 AND processed_at IS NOT NULL",
        )
        .bind(&sub.id)
        .fetch_one(db.platform())
        .await
        .unwrap();
        if status.as_deref() == Some("active") && received == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        received, 1,
        "localstripe's signed delivery was verified, stored and processed"
    );
    assert_eq!(status.as_deref(), Some("active"));
    let owner: uuid::Uuid =
        sqlx::query_scalar("SELECT tenant_id FROM saas.billing_subscriptions WHERE subscription_id = $1")
            .bind(&sub.id)
            .fetch_one(db.platform())
            .await
            .unwrap();
    assert_eq!(owner, *tenant.as_uuid());
}

/// The calls localstripe does not have (prices by lookup key, checkout, the billing
/// portal, meter events, resume, `proration_behavior`), against a stand-in that records
/// each request and answers objects shaped like the fixtures of Stripe's OpenAPI
/// repository (`stripe/openapi`, `openapi/fixtures3.json`). What is checked is what the
/// client sends — each parameter as the specification names it — and what it reads back.
#[tokio::test]
async fn current_api_calls_send_the_parameters_stripe_names() {
    use std::sync::{Arc, Mutex};

    use saas_billing::provider::{
        CheckoutRequest, Discount, NewSubscription, Proration, SubscriptionChange, UsageEvent,
    };

    type Seen = Arc<Mutex<Vec<(String, String, Option<String>, String)>>>;
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let subscription = serde_json::json!({
        "id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active",
        "cancel_at_period_end": false, "currency": "eur", "trial_end": null,
        "items": {"object": "list", "data": [{
            "id": "si_1", "object": "subscription_item", "quantity": 1, "current_period_end": 1_800_000_000,
            "price": {"id": "price_pro", "object": "price", "lookup_key": "pro_monthly", "currency": "eur"}
        }]}
    });
    let app = axum::Router::new().fallback(
        move |method: http::Method, uri: http::Uri, headers: http::HeaderMap, body: String| {
            let log = Arc::clone(&log);
            let subscription = subscription.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .map(|v| v.to_str().unwrap().to_owned());
                let path = uri.path().to_owned();
                log.lock().unwrap().push((
                    method.to_string(),
                    uri.path_and_query().unwrap().to_string(),
                    key,
                    body.clone(),
                ));
                let query = uri.query().unwrap_or_default().to_owned();
                let json = match (method.as_str(), path.as_str()) {
                    ("GET", "/v1/prices") if query.contains("lookup_keys%5B%5D=pro_monthly") => {
                        serde_json::json!({"object": "list", "has_more": false, "data": [
                            {"id": "price_pro", "object": "price", "lookup_key": "pro_monthly", "active": true}]})
                    }
                    ("GET", "/v1/prices") if query.contains("lookup_keys%5B%5D=team_monthly") => {
                        serde_json::json!({"object": "list", "has_more": false, "data": [
                            {"id": "price_team", "object": "price", "lookup_key": "team_monthly", "active": true}]})
                    }
                    ("GET", "/v1/prices") => serde_json::json!({"object": "list", "has_more": false, "data": []}),
                    ("POST", "/v1/checkout/sessions") => serde_json::json!({
                        "id": "cs_test_1", "object": "checkout.session", "mode": "subscription",
                        "url": "https://checkout.stripe.com/c/pay/cs_test_1"}),
                    ("POST", "/v1/billing_portal/sessions") => serde_json::json!({
                        "id": "bps_1", "object": "billing_portal.session",
                        "url": "https://billing.stripe.com/p/session/test_1"}),
                    ("GET" | "POST" | "DELETE", "/v1/subscriptions/sub_1" | "/v1/subscriptions/sub_1/resume") => {
                        subscription
                    }
                    ("POST", "/v1/subscription_schedules" | "/v1/subscription_schedules/sub_sched_1") => {
                        serde_json::json!({"id": "sub_sched_1", "object": "subscription_schedule",
                            "phases": [{"start_date": 1_767_225_600, "end_date": 1_769_904_000,
                                        "items": [{"price": "price_pro", "quantity": 1}]}]})
                    }
                    ("POST", "/v1/subscriptions") => {
                        return (
                            http::StatusCode::BAD_REQUEST,
                            serde_json::json!({"error": {"type": "invalid_request_error", "message":
                                "You cannot combine currencies on a single customer. This customer has an active subscription, subscription schedule, discount, quote, or invoice item with currency eur."}})
                                .to_string(),
                        );
                    }
                    ("POST", "/v1/invoices/create_preview") => serde_json::json!({
                        "id": "upcoming_in_1", "object": "invoice", "customer": "cus_1", "currency": "eur",
                        "amount_due": 1500, "amount_paid": 0, "status": "draft", "hosted_invoice_url": null,
                        "parent": {"type": "subscription_details", "subscription_details": {"subscription": "sub_1"}},
                        "lines": {"object": "list", "data": [
                            {"amount": -1500, "description": "Unused time on Pro",
                             "parent": {"type": "subscription_item_details", "subscription_item_details": {"proration": true, "subscription": "sub_1"}}},
                            {"amount": 3000, "description": "Remaining time on Team",
                             "parent": {"type": "subscription_item_details", "subscription_item_details": {"proration": true, "subscription": "sub_1"}}}]}}),
                    ("GET", "/v1/entitlements/active_entitlements") => serde_json::json!({
                        "object": "list", "has_more": false, "data": [
                            {"id": "ent_1", "object": "entitlements.active_entitlement", "feature": "feat_1",
                             "livemode": false, "lookup_key": "sso"}]}),
                    ("POST", "/v1/billing/meter_events") => serde_json::json!({
                        "object": "billing.meter_event", "event_name": "api_calls", "identifier": "req_1"}),
                    _ => return (http::StatusCode::NOT_FOUND, "{}".to_owned()),
                };
                (http::StatusCode::OK, json.to_string())
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let stripe = Stripe::new(KEY).unwrap().base_url(format!("http://{addr}")).retries(0);
    let tenant = TenantId::from_uuid("0190b2c4-0000-7000-8000-000000000001".parse().unwrap());
    let last = || seen.lock().unwrap().last().cloned().unwrap();

    let page = stripe
        .checkout_session(
            &CheckoutRequest::new(
                tenant,
                "cus_1",
                "pro_monthly",
                "https://app.test/ok",
                "https://app.test/no",
            )
            .quantity(3)
            .trial_days(14)
            .discount(Discount::PromotionCode("promo_1".into())),
        )
        .await
        .unwrap();
    assert_eq!(page.url, "https://checkout.stripe.com/c/pay/cs_test_1");
    let (method, path, key, body) = last();
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/v1/checkout/sessions"));
    assert!(key.unwrap().starts_with("checkout-"));
    assert_eq!(
        decoded(&body),
        pairs(&[
            ("mode", "subscription"),
            ("customer", "cus_1"),
            ("client_reference_id", "0190b2c4-0000-7000-8000-000000000001"),
            ("line_items[0][price]", "price_pro"),
            ("line_items[0][quantity]", "3"),
            (
                "subscription_data[metadata][tenant_id]",
                "0190b2c4-0000-7000-8000-000000000001"
            ),
            ("subscription_data[trial_period_days]", "14"),
            (
                "subscription_data[trial_settings][end_behavior][missing_payment_method]",
                "pause"
            ),
            ("discounts[0][promotion_code]", "promo_1"),
            ("success_url", "https://app.test/ok"),
            ("cancel_url", "https://app.test/no"),
        ])
    );
    // The price id is resolved once per lookup key.
    stripe
        .checkout_session(
            &CheckoutRequest::new(tenant, "cus_1", "pro_monthly", "https://a.test", "https://b.test")
                .allow_promotion_codes(),
        )
        .await
        .unwrap();
    let lookups = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.1.starts_with("/v1/prices"))
        .count();
    assert_eq!(lookups, 1);
    assert!(decoded(&last().3).contains(&("allow_promotion_codes".into(), "true".into())));
    assert!(matches!(
        stripe
            .checkout_session(&CheckoutRequest::new(
                tenant,
                "cus_1",
                "gold_monthly",
                "https://a.test",
                "https://b.test"
            ))
            .await,
        Err(saas_billing::ProviderError::NotFound(_))
    ));

    let portal = stripe
        .portal_session("cus_1", "https://app.test/billing")
        .await
        .unwrap();
    assert_eq!(portal.id, "bps_1");
    assert_eq!(
        decoded(&last().3),
        pairs(&[("customer", "cus_1"), ("return_url", "https://app.test/billing")])
    );

    // An upgrade invoiced now replaces the first item's price.
    let coupon = SubscriptionChange::discount(Discount::Coupon("SPRING25".into()));
    stripe.update_subscription("sub_1", &coupon).await.unwrap();
    assert_eq!(decoded(&last().3), pairs(&[("discounts[0][coupon]", "SPRING25")]));
    let change = SubscriptionChange::price("team_monthly").proration(Proration::AlwaysInvoice);
    stripe.update_subscription("sub_1", &change).await.unwrap();
    let (method, path, key, body) = last();
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/v1/subscriptions/sub_1"));
    assert!(key.is_some());
    assert_eq!(
        decoded(&body),
        pairs(&[
            ("items[0][id]", "si_1"),
            ("items[0][price]", "price_team"),
            ("proration_behavior", "always_invoice"),
        ])
    );
    let preview = stripe
        .preview_change("sub_1", &SubscriptionChange::price("team_monthly").with_quantity(2))
        .await
        .unwrap();
    assert_eq!(preview.proration_amount(), 1500);
    assert_eq!(preview.subscription.as_deref(), Some("sub_1"));
    assert_eq!(
        decoded(&last().3),
        pairs(&[
            ("customer", "cus_1"),
            ("subscription", "sub_1"),
            ("subscription_details[items][0][id]", "si_1"),
            ("subscription_details[items][0][price]", "price_team"),
            ("subscription_details[items][0][quantity]", "2"),
        ])
    );

    stripe.resume_subscription("sub_1").await.unwrap();
    assert_eq!(last().1, "/v1/subscriptions/sub_1/resume");

    assert_eq!(stripe.active_entitlements("cus_1").await.unwrap(), ["sso"]);
    assert_eq!(
        last().1,
        "/v1/entitlements/active_entitlements?customer=cus_1&limit=100"
    );

    // A downgrade at the period's end: a schedule from the subscription, its current
    // phase kept, the next one on the new price, released after.
    stripe
        .schedule_change("sub_1", &SubscriptionChange::price("team_monthly").with_quantity(2))
        .await
        .unwrap();
    let writes: Vec<_> = seen.lock().unwrap().iter().filter(|s| s.0 == "POST").cloned().collect();
    let created = &writes[writes.len() - 2];
    assert_eq!(created.1, "/v1/subscription_schedules");
    assert_eq!(decoded(&created.3), pairs(&[("from_subscription", "sub_1")]));
    let updated = &writes[writes.len() - 1];
    assert_eq!(updated.1, "/v1/subscription_schedules/sub_sched_1");
    assert_eq!(
        decoded(&updated.3),
        pairs(&[
            ("end_behavior", "release"),
            ("phases[0][items][0][price]", "price_pro"),
            ("phases[0][items][0][quantity]", "1"),
            ("phases[0][start_date]", "1767225600"),
            ("phases[0][end_date]", "1769904000"),
            ("phases[1][items][0][price]", "price_team"),
            ("phases[1][items][0][quantity]", "2"),
        ])
    );

    // Canceling now with the customer's reason: DELETE with it in the query string.
    stripe
        .cancel_with_reason(
            "sub_1",
            saas_billing::provider::CancelAt::Now,
            &saas_billing::provider::CancellationReason {
                feedback: Some("too_expensive".into()),
                comment: None,
            },
        )
        .await
        .unwrap();
    let (method, path, _, _) = last();
    assert_eq!(
        (method.as_str(), path.as_str()),
        (
            "DELETE",
            "/v1/subscriptions/sub_1?cancellation_details%5Bfeedback%5D=too_expensive"
        )
    );

    let at = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap();
    stripe
        .report_usage(&UsageEvent {
            meter: "api_calls".into(),
            customer: "cus_1".into(),
            value: 25,
            identifier: "req_1".into(),
            at,
        })
        .await
        .unwrap();
    let (_, path, key, body) = last();
    assert_eq!(path, "/v1/billing/meter_events");
    assert_eq!(key.as_deref(), Some("usage-req_1"));
    assert_eq!(
        decoded(&body),
        pairs(&[
            ("event_name", "api_calls"),
            ("payload[stripe_customer_id]", "cus_1"),
            ("payload[value]", "25"),
            ("identifier", "req_1"),
            ("timestamp", "1767225600"),
        ])
    );

    // Stripe's refusal to mix currencies comes back typed.
    let err = stripe
        .create_subscription(
            &NewSubscription::new(tenant, "cus_1", "pro_monthly")
                .trial_days(7)
                .trial_end(saas_billing::provider::TrialEnd::Cancel),
        )
        .await
        .unwrap_err();
    let sent = decoded(&last().3);
    for field in [
        ("trial_period_days", "7"),
        ("trial_settings[end_behavior][missing_payment_method]", "cancel"),
        ("items[0][price]", "price_pro"),
    ] {
        assert!(sent.contains(&(field.0.into(), field.1.into())), "{sent:?}");
    }
    assert!(
        matches!(&err, saas_billing::ProviderError::CurrencyMismatch { has, .. } if has == "eur"),
        "{err}"
    );
}

/// `catalog::push` through the client, against a stand-in that keeps the products, prices
/// and meters it is sent (localstripe has no prices or meters): what is checked is each
/// request's parameters and that a second push sends no write.
#[tokio::test]
async fn the_catalog_is_pushed_with_the_parameters_stripe_names() {
    use std::sync::{Arc, Mutex};

    use saas_billing::catalog::{Catalog, CatalogProvider, Charge, Plan, Price, check, push};

    #[derive(Default)]
    struct Store {
        products: Vec<serde_json::Value>,
        prices: Vec<serde_json::Value>,
        meters: Vec<serde_json::Value>,
        writes: Vec<(String, Vec<(String, String)>)>,
    }
    let store: Arc<Mutex<Store>> = Arc::default();
    let state = Arc::clone(&store);
    let app = axum::Router::new().fallback(move |method: http::Method, uri: http::Uri, body: String| {
        let state = Arc::clone(&state);
        async move {
            let mut s = state.lock().unwrap();
            let form = url_decode_pairs(&body);
            let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let path = uri.path().to_owned();
            let list =
                |data: &[serde_json::Value]| serde_json::json!({"object": "list", "has_more": false, "data": data});
            if method == http::Method::GET {
                return match path.as_str() {
                    "/v1/products" => list(&s.products),
                    "/v1/prices" => list(&s.prices),
                    "/v1/billing/meters" => list(&s.meters),
                    _ => serde_json::json!({}),
                }
                .to_string();
            }
            s.writes.push((path.clone(), form.clone()));
            let answer = match path.as_str() {
                "/v1/products" => {
                    let p = serde_json::json!({"id": format!("prod_{}", s.products.len() + 1), "object": "product",
                        "active": true, "name": get("name"), "metadata": {"saas_plan": get("metadata[saas_plan]")}});
                    s.products.push(p.clone());
                    p
                }
                "/v1/billing/meters" => {
                    let m = serde_json::json!({"id": format!("mtr_{}", s.meters.len() + 1), "object": "billing.meter",
                        "event_name": get("event_name"), "status": "active"});
                    s.meters.push(m.clone());
                    m
                }
                "/v1/prices" => {
                    if get("transfer_lookup_key").as_deref() == Some("true") {
                        for p in &mut s.prices {
                            if p["lookup_key"].as_str() == get("lookup_key").as_deref() {
                                p["lookup_key"] = serde_json::Value::Null;
                            }
                        }
                    }
                    let p = serde_json::json!({"id": format!("price_{}", s.prices.len() + 1), "object": "price",
                        "active": true, "product": get("product"), "currency": get("currency"),
                        "unit_amount": get("unit_amount").and_then(|a| a.parse::<i64>().ok()),
                        "lookup_key": get("lookup_key"), "metadata": {"saas_charge": get("metadata[saas_charge]")},
                        "recurring": {"interval": get("recurring[interval]"),
                            "usage_type": get("recurring[usage_type]").unwrap_or_else(|| "licensed".into()),
                            "meter": get("recurring[meter]")}});
                    s.prices.push(p.clone());
                    p
                }
                other => {
                    let id = other.rsplit('/').next().unwrap().to_owned();
                    let objects = if other.starts_with("/v1/prices/") {
                        &mut s.prices
                    } else {
                        &mut s.products
                    };
                    let o = objects.iter_mut().find(|o| o["id"] == id.as_str()).unwrap();
                    if let Some(a) = get("active") {
                        o["active"] = serde_json::Value::Bool(a == "true");
                    }
                    if let Some(n) = get("name") {
                        o["name"] = serde_json::Value::String(n);
                    }
                    o.clone()
                }
            };
            answer.to_string()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let stripe = Stripe::new(KEY).unwrap().base_url(format!("http://{addr}")).retries(0);

    let catalog = |monthly: i64| {
        Catalog::new("eur")
            .plan(Plan::new("free"))
            .plan(
                Plan::new("pro")
                    .name("Pro")
                    .price(Price::monthly("pro_monthly", monthly))
                    .price(Price::metered_monthly("pro_api", "api_calls", 2)),
            )
            .plan(Plan::new("business").price(Price::per_seat_annual("business_seat", 15000)))
            .validate()
            .unwrap()
    };
    let report = push(&catalog(3000), &stripe).await.unwrap();
    assert_eq!(report.prices_created, ["pro_monthly", "pro_api", "business_seat"]);
    let writes = store.lock().unwrap().writes.clone();
    let sent = |path: &str, n: usize| {
        let mut f = writes.iter().filter(|w| w.0 == path).nth(n).unwrap().1.clone();
        f.sort();
        f
    };
    assert_eq!(
        sent("/v1/products", 0),
        pairs(&[("name", "Pro"), ("metadata[saas_plan]", "pro")])
    );
    assert_eq!(
        sent("/v1/prices", 0),
        pairs(&[
            ("product", "prod_1"),
            ("currency", "eur"),
            ("unit_amount", "3000"),
            ("recurring[interval]", "month"),
            ("lookup_key", "pro_monthly"),
            ("transfer_lookup_key", "true"),
            ("nickname", "pro_monthly"),
            ("metadata[saas_charge]", "flat"),
        ])
    );
    assert_eq!(
        sent("/v1/billing/meters", 0),
        pairs(&[
            ("display_name", "api_calls"),
            ("event_name", "api_calls"),
            ("default_aggregation[formula]", "sum"),
        ])
    );
    let metered = sent("/v1/prices", 1);
    for field in [
        ("recurring[usage_type]", "metered"),
        ("recurring[meter]", "mtr_1"),
        ("unit_amount", "2"),
    ] {
        assert!(metered.contains(&(field.0.into(), field.1.into())), "{metered:?}");
    }
    assert!(sent("/v1/prices", 2).contains(&("recurring[interval]".into(), "year".into())));

    // Read back, the prices carry their charge (the meter by its event name).
    let prices = stripe.prices().await.unwrap();
    assert_eq!(
        prices
            .iter()
            .find(|p| p.lookup_key.as_deref() == Some("pro_api"))
            .unwrap()
            .charge,
        Some(Charge::Metered {
            meter: "api_calls".into()
        })
    );
    assert_eq!(check(&catalog(3000), &stripe).await.unwrap(), []);
    let before = store.lock().unwrap().writes.len();
    assert!(push(&catalog(3000), &stripe).await.unwrap().is_empty());
    assert_eq!(
        store.lock().unwrap().writes.len(),
        before,
        "a second push writes nothing"
    );

    // A new amount: a new price takes the key, the old one is archived.
    let report = push(&catalog(3500), &stripe).await.unwrap();
    assert_eq!(
        (report.prices_created.as_slice(), report.prices_archived.as_slice()),
        (&["pro_monthly".to_owned()][..], &["price_1".to_owned()][..])
    );
    let writes = store.lock().unwrap().writes.clone();
    let archive = writes.iter().find(|w| w.0 == "/v1/prices/price_1").unwrap();
    assert_eq!(archive.1, pairs(&[("active", "false")]));
    assert_eq!(check(&catalog(3500), &stripe).await.unwrap(), []);
}

/// The reporting worker of `metered_usage_is_billed_once_across_a_killed_worker`, run as
/// a child process of the test binary (ignored in a normal run).
#[tokio::test]
#[ignore = "run as a child process by metered_usage_is_billed_once_across_a_killed_worker"]
async fn usage_reporter_child() {
    let (Ok(db), Ok(stripe)) = (std::env::var("CHILD_DATABASE_URL"), std::env::var("CHILD_STRIPE_URL")) else {
        return;
    };
    let platform = PlatformPool::new(sqlx::PgPool::connect(&db).await.unwrap());
    let stripe = Stripe::new(KEY).unwrap().base_url(stripe).retries(0);
    saas_billing::usage::report_usage(&platform, &stripe, &metered_catalog())
        .await
        .unwrap();
}

fn metered_catalog() -> saas_billing::Catalog {
    use saas_billing::catalog::{Catalog, Feature, Plan, Price};
    Catalog::new("eur")
        .plan(
            Plan::new("pro")
                .price(Price::metered_monthly("pro_api", "api_calls", 1))
                .feature("api_calls", Feature::metered_monthly(1_000_000)),
        )
        .validate()
        .unwrap()
}

/// A worker reporting usage is killed (SIGKILL) while Stripe holds its fourth request;
/// the events it sent were never marked, so the next run sends them again — with the same
/// identifiers, which Stripe counts once. The stand-in keeps Stripe's rule (one count per
/// identifier) and every raw request, so both the resend and the single count show.
#[tokio::test]
async fn metered_usage_is_billed_once_across_a_killed_worker() {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<(Vec<String>, BTreeMap<String, u64>)>>;
    let seen: Seen = Arc::default();
    let hang = Arc::new(AtomicBool::new(true));
    let (log, stall) = (Arc::clone(&seen), Arc::clone(&hang));
    let app = axum::Router::new().route(
        "/v1/billing/meter_events",
        axum::routing::post(move |body: String| {
            let (log, stall) = (Arc::clone(&log), Arc::clone(&stall));
            async move {
                let form = url_decode_pairs(&body);
                let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
                let n = {
                    let mut s = log.lock().unwrap();
                    s.0.push(get("identifier"));
                    s.1.entry(get("identifier"))
                        .or_insert(get("payload[value]").parse().unwrap());
                    s.0.len()
                };
                if n > 3 && stall.load(Ordering::SeqCst) {
                    // Hold the request until the worker is gone.
                    tokio::time::sleep(Duration::from_secs(600)).await;
                }
                r#"{"object":"billing.meter_event","event_name":"api_calls"}"#.to_owned()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let db = crate::db().await;
    let platform = PlatformPool::new(db.platform().clone());
    let tenant = TenantId::new();
    sqlx::query("INSERT INTO saas.billing_customers (tenant_id, customer_id) VALUES ($1, 'cus_metered')")
        .bind(tenant)
        .execute(db.platform())
        .await
        .unwrap();
    let mut expected = 0;
    for i in 1..=8u64 {
        let mut tx = saas_tenancy::TenantTx::begin(db.app(), tenant).await.unwrap();
        saas_billing::entitlements::record_usage(&mut tx, "api_calls", &format!("req-{i}"), i * 10, chrono::Utc::now())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        expected += i * 10;
    }

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "stripe::usage_reporter_child"])
        .env("CHILD_DATABASE_URL", db.url(true))
        .env("CHILD_STRIPE_URL", format!("http://{addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while seen.lock().unwrap().0.len() < 4 {
        assert!(started.elapsed() < Duration::from_secs(60), "the child never reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL: no cleanup, its transaction dies with its connection
    child.wait().unwrap();
    hang.store(false, Ordering::SeqCst);

    let stripe = Stripe::new(KEY).unwrap().base_url(format!("http://{addr}")).retries(0);
    // PostgreSQL notices the dead connection and releases its locks; then a run sends all.
    let mut report = saas_billing::usage::UsageReport::default();
    for _ in 0..100 {
        report = saas_billing::usage::report_usage(&platform, &stripe, &metered_catalog())
            .await
            .unwrap();
        if report.sent > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(report.sent, 8, "nothing was marked by the killed worker");
    let (raw, counted) = seen.lock().unwrap().clone();
    assert_eq!(raw.len(), 4 + 8, "the four the worker sent went again");
    assert_eq!(counted.len(), 8);
    assert_eq!(counted.values().sum::<u64>(), expected, "each usage billed once");
    assert!(counted.keys().all(|k| k.starts_with(&format!("{tenant}:req-"))));
}
