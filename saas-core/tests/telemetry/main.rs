//! Log lines, redaction, metrics and error reports, captured from real requests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::routing::get;
use http::StatusCode;
use http_body_util::BodyExt;
use saas_core::TenantId;
use saas_core::problem::Problem;
use saas_core::problem_layer::ProblemLayer;
use saas_core::request_id::RequestIdLayer;
use saas_core::telemetry::{JsonLayer, RequestSpan, TraceLayer};
use serde_json::Value;
use tower::{ServiceBuilder, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

mod peer;

/// A `MakeWriter` that appends to a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
    fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    }
}

/// Captures JSON log lines at `filter` on this thread until the guard drops.
fn capture(filter: &str) -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(filter))
        .with(JsonLayer::new(capture.clone()));
    (capture, tracing::subscriber::set_default(subscriber))
}

/// Stands in for the tenant layer: records the tenant and user into the request span.
async fn identify(req: Request, next: Next) -> axum::response::Response {
    if let Some(span) = req.extensions().get::<RequestSpan>() {
        if let Some(t) = req.headers().get("x-tenant-id").and_then(|v| v.to_str().ok()) {
            span.record_tenant(t);
        }
        span.record_user("user-7");
    }
    next.run(req).await
}

fn app() -> Router {
    Router::new()
        .route(
            "/projects/{id}",
            get(|| async {
                tracing::info!(password = "hunter2", "handler ran");
                "ok"
            }),
        )
        .route(
            "/fail",
            get(|| async { Err::<(), _>(Problem::internal().with_internal("disk full")) }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RequestIdLayer::new())
                .layer(TraceLayer::new().log_headers(true))
                .layer(ProblemLayer::new())
                .layer(middleware::from_fn(identify)),
        )
}

const SECRETS: &[(&str, &str)] = &[
    ("authorization", "Bearer eyJsecret-bearer"),
    ("cookie", "session=secret-cookie"),
    ("set-cookie", "sid=secret-set-cookie"),
    ("stripe-signature", "t=1,v1=secret-stripe"),
    ("webhook-signature", "v1,secret-webhook"),
];

async fn send(req: http::Request<Body>) -> http::Response<Body> {
    app().oneshot(req).await.unwrap()
}

#[tokio::test]
async fn each_request_logs_one_completion_line_with_ids() {
    let (capture, _guard) = capture("debug");

    let tenant = TenantId::new();
    let mut req = http::Request::get("/projects/1")
        .header("x-request-id", "req-abc")
        .header("x-tenant-id", tenant.to_string())
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    for (k, v) in SECRETS {
        req = req.header(*k, *v);
    }
    let res = send(req.body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), 200);

    let lines = capture.lines();
    let done: Vec<&Value> = lines.iter().filter(|l| l["message"] == "request completed").collect();
    assert_eq!(done.len(), 1, "{}", capture.text());
    let line = done[0];
    assert_eq!(line["request_id"], "req-abc");
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(line["tenant_id"], tenant.to_string());
    assert_eq!(line["user_id"], "user-7");
    assert_eq!(line["status"], 200);
    assert_eq!(line["method"], "GET");
    assert_eq!(line["route"], "/projects/{id}");
    assert_eq!(line["level"], "INFO");
    assert!(line["latency_ms"].as_f64().is_some());
    assert_eq!(line["span_id"].as_str().map(str::len), Some(16));

    // The handler's own line carries the same ids, and its secret-named field is redacted.
    let handler = lines.iter().find(|l| l["message"] == "handler ran").unwrap();
    assert_eq!(handler["request_id"], "req-abc");
    assert_eq!(handler["tenant_id"], tenant.to_string());
    assert_eq!(handler["password"], "[redacted]");
}

#[tokio::test]
async fn sensitive_headers_never_reach_the_log() {
    let (capture, _guard) = capture("trace");

    for (name, value) in SECRETS {
        let req = http::Request::get("/projects/1")
            .header(*name, *value)
            .header("accept", "application/json")
            .body(Body::empty())
            .unwrap();
        send(req).await;
        let text = capture.text();
        let secret = value.rsplit(['-', ' ', ','].as_ref()).next().unwrap();
        assert!(!text.contains(value), "{name} leaked: {text}");
        assert!(!text.contains(&format!("secret-{secret}")), "{name} leaked");
        let headers_line = capture
            .lines()
            .into_iter()
            .rfind(|l| l["message"] == "request headers")
            .expect("headers are logged at debug");
        let logged = headers_line["headers"].as_str().unwrap().to_owned();
        assert!(logged.contains(&format!("\"{name}\": \"[redacted]\"")), "{logged}");
        assert!(logged.contains("application/json"), "{logged}");
    }
    assert!(!capture.text().contains("secret-"), "{}", capture.text());
}

#[tokio::test]
async fn api_keys_inside_messages_and_errors_never_reach_the_log() {
    let (capture, _guard) = capture("info");
    let key = "sk_live_51HxYzAbCdEfGh";
    let err = std::io::Error::other(format!("authentication failed for {key}"));
    tracing::warn!(error = %err, url = "https://api.stripe.com/v1?key=whsec_abc123", "Stripe said no to {key}");
    let text = capture.text();
    assert!(!text.contains("51HxYz") && !text.contains("abc123"), "{text}");
    let line = capture.lines().into_iter().find(|l| l["level"] == "WARN").unwrap();
    assert_eq!(line["message"], "Stripe said no to sk_live_[redacted]");
    assert_eq!(line["error"], "authentication failed for sk_live_[redacted]");
    assert_eq!(line["url"], "https://api.stripe.com/v1?key=whsec_[redacted]");
}

#[tokio::test]
async fn a_trace_id_is_minted_without_traceparent_and_5xx_logs_at_warn() {
    let (capture, _guard) = capture("info");

    let res = send(http::Request::get("/fail").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(!String::from_utf8_lossy(&body).contains("disk full"));

    let lines = capture.lines();
    let done = lines.iter().find(|l| l["message"] == "request completed").unwrap();
    assert_eq!(done["level"], "WARN");
    assert_eq!(done["status"], 500);
    let trace = done["trace_id"].as_str().unwrap();
    assert_eq!(trace.len(), 32);
    assert!(trace.chars().all(|c| c.is_ascii_hexdigit()));
    // The internal cause is logged (server side only), with the request's ids.
    let failed = lines.iter().find(|l| l["message"] == "request failed").unwrap();
    assert_eq!(failed["cause"], "disk full");
    assert_eq!(failed["trace_id"], trace);
}

#[tokio::test]
async fn a_request_dropped_before_its_response_is_logged() {
    let (capture, _guard) = capture("info");

    let slow = Router::new()
        .route("/slow", get(std::future::pending::<&'static str>))
        .layer(
            ServiceBuilder::new()
                .layer(RequestIdLayer::new())
                .layer(TraceLayer::new()),
        );
    let req = http::Request::get("/slow")
        .header("x-request-id", "rid-gone")
        .body(Body::empty())
        .unwrap();
    let outcome = tokio::time::timeout(std::time::Duration::from_millis(20), slow.oneshot(req)).await;
    assert!(outcome.is_err());
    let lines = capture.lines();
    let line = lines
        .iter()
        .find(|l| l["message"] == "request cancelled before a response")
        .unwrap();
    assert_eq!(line["request_id"], "rid-gone");
}

#[cfg(feature = "prometheus")]
#[tokio::test]
async fn red_metrics_are_recorded_by_route_and_status() {
    let recorder = saas_core::telemetry::prometheus::recorder().unwrap();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);

    for path in ["/projects/1", "/projects/2", "/fail"] {
        send(http::Request::get(path).body(Body::empty()).unwrap()).await;
    }
    let text = handle.render();
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/projects/{id}",status="200"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/fail",status="500"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"http_server_errors_total{method="GET",route="/fail"} 1"#),
        "{text}"
    );
    assert!(text.contains("http_request_duration_seconds_bucket"), "{text}");
}

#[cfg(feature = "sentry")]
fn sentry_app() -> Router {
    Router::new()
        .route(
            "/fail",
            get(|| async { Err::<(), _>(Problem::internal().with_internal("disk full")) }),
        )
        .route(
            "/panic",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("handler exploded");
                }
                "unreachable"
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RequestIdLayer::new())
                .layer(saas_core::telemetry::sentry_layer())
                .layer(TraceLayer::new())
                .layer(ProblemLayer::new())
                .layer(middleware::from_fn(identify)),
        )
}

#[cfg(feature = "sentry")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_panics_are_reported_to_sentry_with_ids_and_no_secrets() {
    use sentry::SentryFutureExt;

    let peer = peer::Peer::start().await;
    let dsn: sentry::types::Dsn = format!("http://public@{}/42", peer.addr()).parse().unwrap();
    let config = saas_core::telemetry::TelemetryConfig::default().service_name("telemetry-test");
    let options = sentry::apply_defaults(saas_core::telemetry::sentry_options(dsn, &config));
    let client = Arc::new(sentry::Client::from(options));
    let hub = Arc::new(sentry::Hub::new(
        Some(client.clone()),
        Arc::new(sentry::Scope::default()),
    ));

    let tenant = TenantId::new();
    let request = |path: &str, id: &str| {
        http::Request::get(path)
            .header("x-request-id", id)
            .header("x-tenant-id", tenant.to_string())
            .header("authorization", "Bearer secret-bearer")
            .header("cookie", "sid=secret-cookie")
            .body(Body::empty())
            .unwrap()
    };
    let res = sentry_app()
        .oneshot(request("/fail", "rid-sentry"))
        .bind_hub(hub.clone())
        .await
        .unwrap();
    assert_eq!(res.status(), 500);
    // A 4xx is not reported.
    let res = sentry_app()
        .oneshot(request("/nowhere", "rid-404"))
        .bind_hub(hub.clone())
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // A panic inside the request is reported with the request's tags.
    let panicked = tokio::spawn(
        sentry_app()
            .oneshot(request("/panic", "rid-panic"))
            .bind_hub(hub.clone()),
    )
    .await;
    assert!(panicked.unwrap_err().is_panic());
    assert!(client.flush(Some(std::time::Duration::from_secs(5))));

    let envelopes: Vec<String> = peer
        .bodies()
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(envelopes.len(), 2, "{envelopes:?}");
    let failure = envelopes
        .iter()
        .find(|e| e.contains("500 on /fail"))
        .expect("the 5xx is reported");
    assert!(failure.contains("rid-sentry"), "{failure}");
    assert!(failure.contains(&tenant.to_string()), "{failure}");
    assert!(failure.contains("user-7"), "{failure}");
    let panic = envelopes
        .iter()
        .find(|e| e.contains("handler exploded"))
        .expect("the panic is reported");
    assert!(panic.contains("rid-panic"), "{panic}");
    assert!(panic.contains(&tenant.to_string()), "{panic}");
    for e in &envelopes {
        assert!(!e.contains("secret-bearer") && !e.contains("secret-cookie"), "{e}");
        assert!(!e.contains("disk full"), "{e}");
        assert!(!e.contains("rid-404"), "{e}");
    }

    // The redaction hook scrubs headers and cookies of events that carry a request.
    let mut event = sentry::protocol::Event::default();
    let mut request = sentry::protocol::Request::default();
    request.headers.insert("Authorization".into(), "Bearer abc".into());
    request.headers.insert("Stripe-Signature".into(), "t=1".into());
    request.headers.insert("Accept".into(), "*/*".into());
    request.cookies = Some("sid=abc".into());
    event.request = Some(request);
    // … and API keys inside its message, exception and extras.
    event.message = Some("Stripe refused sk_live_51Hx".into());
    event.exception.values.push(sentry::protocol::Exception {
        value: Some("401 for rk_test_9z".into()),
        ..Default::default()
    });
    event.extra.insert("detail".into(), "whsec_abc".into());
    let event = saas_core::telemetry::sentry_redact_event(event);
    assert_eq!(event.message.as_deref(), Some("Stripe refused sk_live_[redacted]"));
    assert_eq!(
        event.exception.values[0].value.as_deref(),
        Some("401 for rk_test_[redacted]")
    );
    assert_eq!(event.extra["detail"], "whsec_[redacted]");
    let request = event.request.unwrap();
    assert_eq!(request.headers["Authorization"], "[redacted]");
    assert_eq!(request.headers["Stripe-Signature"], "[redacted]");
    assert_eq!(request.headers["Accept"], "*/*");
    assert!(request.cookies.is_none());
}

#[cfg(feature = "otlp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_exports_spans_and_logs_carry_the_otel_trace_id() {
    let peer = peer::Peer::start().await;
    let capture = Capture::default();
    let (otel, provider) = saas_core::telemetry::otlp::layer::<
        tracing_subscriber::layer::Layered<JsonLayer<Capture>, tracing_subscriber::Registry>,
    >(&format!("http://{}", peer.addr()), "telemetry-test")
    .unwrap();
    let subscriber = tracing_subscriber::registry()
        .with(JsonLayer::new(capture.clone()))
        .with(otel);
    let dispatch = tracing::Dispatch::new(subscriber);

    let req = http::Request::get("/projects/9")
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .body(Body::empty())
        .unwrap();
    let res = tracing::dispatcher::with_default(&dispatch, || {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(send(req)))
    });
    assert_eq!(res.status(), 200);
    let lines = capture.lines();
    let done = lines.iter().find(|l| l["message"] == "request completed").unwrap();
    assert_eq!(done["trace_id"], "0af7651916cd43dd8448eb211c80319c");

    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .unwrap()
        .unwrap();
    let got = peer.received();
    assert!(!got.is_empty(), "the collector received nothing");
    assert_eq!(got[0].path, "/v1/traces");
    // The protobuf payload names the service and carries the trace id's bytes.
    let body = &got[0].body;
    assert!(body.windows(14).any(|w| w == b"telemetry-test"));
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&"0af7651916cd43dd8448eb211c80319c"[i * 2..i * 2 + 2], 16).unwrap())
        .collect();
    assert!(body.windows(16).any(|w| w == trace_bytes.as_slice()));
}
