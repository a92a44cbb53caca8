//! The safe defaults through a real axum stack.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use saas_core::defaults::SafeDefaults;
use saas_core::problem_layer::ProblemLayer;
use saas_core::request_id::RequestIdLayer;
use tower::{ServiceBuilder, ServiceExt};

fn app() -> Router {
    let routes = Router::new()
        .route("/echo", post(|body: String| async move { body }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route(
            "/panic",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("boom: secret detail");
                }
                "unreachable"
            }),
        )
        .route("/ok", get(|| async { "ok" }));
    SafeDefaults::new()
        .body_limit(1024)
        .timeout(Duration::from_millis(100), StatusCode::REQUEST_TIMEOUT)
        .apply(routes)
        .layer(
            ServiceBuilder::new()
                .layer(RequestIdLayer::new())
                .layer(ProblemLayer::new()),
        )
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, http::HeaderMap, serde_json::Value, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (
        parts.status,
        parts.headers,
        serde_json::from_str(&text).unwrap_or_default(),
        text,
    )
}

#[tokio::test]
async fn oversized_bodies_get_a_413_problem() {
    let app = app();
    let (s, _, _, text) = send(&app, Request::post("/echo").body(Body::from("x".repeat(1000))).unwrap()).await;
    assert_eq!((s, text.len()), (StatusCode::OK, 1000));
    let (s, h, body, _) = send(&app, Request::post("/echo").body(Body::from("x".repeat(5000))).unwrap()).await;
    assert_eq!(s, 413);
    assert_eq!(h["content-type"], "application/problem+json");
    assert_eq!(body["status"], 413);
    assert!(body["request_id"].is_string());
}

#[tokio::test]
async fn slow_requests_get_a_408_problem() {
    let app = app();
    let (s, h, body, _) = send(&app, Request::get("/slow").body(Body::empty()).unwrap()).await;
    assert_eq!(s, 408);
    assert_eq!(h["content-type"], "application/problem+json");
    assert_eq!(body["type"], "urn:saas-kit:problem:request-timeout");
}

#[tokio::test]
async fn a_panic_is_a_500_problem_and_the_server_keeps_serving() {
    let app = app();
    let (s, h, body, text) = send(
        &app,
        Request::get("/panic")
            .header("x-request-id", "rid-p")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, 500);
    assert_eq!(h["content-type"], "application/problem+json");
    assert_eq!(body["request_id"], "rid-p");
    assert!(!text.contains("secret detail"), "{text}");
    for _ in 0..3 {
        assert_eq!(
            send(&app, Request::get("/ok").body(Body::empty()).unwrap()).await.0,
            200
        );
    }
}

#[tokio::test]
async fn security_headers_are_set_and_no_store_for_authenticated_requests() {
    let app = app();
    let (_, h, _, _) = send(&app, Request::get("/ok").body(Body::empty()).unwrap()).await;
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(h["strict-transport-security"].to_str().unwrap().starts_with("max-age="));
    assert!(h.get("cache-control").is_none());
    let (_, h, _, _) = send(
        &app,
        Request::get("/ok")
            .header("authorization", "Bearer x")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(h["cache-control"], "no-store");
    // Errors carry them too.
    let (s, h, _, _) = send(&app, Request::get("/panic").body(Body::empty()).unwrap()).await;
    assert_eq!(s, 500);
    assert_eq!(h["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn framework_rejections_become_problems() {
    let app = app();
    let (s, h, body, _) = send(&app, Request::get("/echo").body(Body::empty()).unwrap()).await;
    assert_eq!(s, 405);
    assert_eq!(h["content-type"], "application/problem+json");
    assert_eq!(body["status"], 405);
}

#[tokio::test]
async fn cors_answers_preflights_for_allowed_origins_only() {
    use tower_http::cors::CorsLayer;
    let cors = CorsLayer::new()
        .allow_origin(http::HeaderValue::from_static("https://app.example.com"))
        .allow_methods([http::Method::GET, http::Method::POST])
        .allow_headers([http::header::CONTENT_TYPE, http::header::AUTHORIZATION]);
    let app = SafeDefaults::new()
        .cors(cors)
        .apply(Router::new().route("/ok", get(|| async { "ok" })))
        .layer(ProblemLayer::new());
    let preflight = |origin: &'static str| {
        Request::builder()
            .method("OPTIONS")
            .uri("/ok")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .body(Body::empty())
            .unwrap()
    };
    let (s, h, _, _) = send(&app, preflight("https://app.example.com")).await;
    assert_eq!(s, 200);
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    // Another origin is never echoed back, so browsers refuse it.
    let (_, h, _, _) = send(&app, preflight("https://evil.example")).await;
    assert_ne!(
        h.get("access-control-allow-origin").map(|v| v.to_str().unwrap()),
        Some("https://evil.example")
    );
}
