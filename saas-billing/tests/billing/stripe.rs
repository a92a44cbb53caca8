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
