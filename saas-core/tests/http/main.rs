//! The HTTP edge end to end through axum: request ids, problem bodies, typed id errors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use saas_core::problem::Problem;
use saas_core::problem_layer::ProblemLayer;
use saas_core::request_id::{RequestId, RequestIdLayer};
use saas_core::telemetry::TraceLayer;
use saas_core::{TenantId, UserId};
use tower::{ServiceBuilder, ServiceExt};

async fn show_tenant(Path(id): Path<String>) -> Result<String, Problem> {
    let id: TenantId = id.parse()?;
    Ok(format!("tenant {id}"))
}

async fn broken() -> Result<String, Problem> {
    Err(Problem::internal()
        .with_detail("db at 10.0.0.5:5432 refused")
        .with_internal("pool exhausted"))
}

async fn forbidden() -> Result<String, Problem> {
    Err(Problem::forbidden("You need project:delete.")
        .with_type("permission-denied")
        .with_extension("permission", "project:delete"))
}

async fn echo_id(id: RequestId) -> String {
    id.to_string()
}

fn app() -> Router {
    Router::new()
        .route("/tenants/{id}", get(show_tenant))
        .route("/broken", get(broken))
        .route("/forbidden", get(forbidden))
        .route("/id", get(echo_id))
        .layer(
            ServiceBuilder::new()
                .layer(RequestIdLayer::new())
                .layer(TraceLayer::new())
                .layer(ProblemLayer::new()),
        )
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
    fn request_id(&self) -> &str {
        self.headers["x-request-id"].to_str().unwrap()
    }
}

async fn send(path: &str, request_id: Option<&[u8]>) -> Reply {
    let mut req = Request::get(path);
    if let Some(id) = request_id {
        req = req.header("x-request-id", http::HeaderValue::from_bytes(id).unwrap());
    }
    let res = app().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes().to_vec(),
    }
}

fn is_uuid_v7(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok_and(|u| u.get_version_num() == 7)
}

#[tokio::test]
async fn valid_request_id_is_echoed_and_visible_to_handlers() {
    let r = send("/id", Some(b"client-42.a:b_c")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.request_id(), "client-42.a:b_c");
    assert_eq!(r.body, b"client-42.a:b_c");
}

#[tokio::test]
async fn missing_request_id_is_minted() {
    let r = send("/id", None).await;
    assert!(is_uuid_v7(r.request_id()), "{}", r.request_id());
    assert_eq!(r.body, r.request_id().as_bytes());
}

#[tokio::test]
async fn oversized_or_malformed_request_ids_are_replaced() {
    let long = [b'a'; 129];
    for bad in [&long[..], b"has space", b"<script>", b"quote\"d", b"\xff\xfe"] {
        let r = send("/id", Some(bad)).await;
        assert_eq!(r.status, 200);
        assert!(is_uuid_v7(r.request_id()), "{bad:?} -> {}", r.request_id());
    }
}

#[tokio::test]
async fn malformed_path_id_is_a_400_problem_with_request_id() {
    let r = send("/tenants/not-a-uuid", Some(b"rid-1")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let v = r.json();
    assert_eq!(v["type"], "urn:saas-kit:problem:invalid-id");
    assert_eq!(v["request_id"], "rid-1");
    assert!(v["detail"].as_str().unwrap().contains("tenant id"));

    let ok = send(&format!("/tenants/{}", TenantId::new()), None).await;
    assert_eq!(ok.status, 200);
    // A user id is a UUID too, but the route says what it expects.
    let user = UserId::new().to_string();
    assert_eq!(send(&format!("/tenants/{user}"), None).await.status, 200);
}

#[tokio::test]
async fn server_errors_say_only_that_something_failed() {
    let r = send("/broken", Some(b"rid-500")).await;
    assert_eq!(r.status, 500);
    let text = String::from_utf8(r.body.clone()).unwrap();
    assert!(!text.contains("10.0.0.5"), "{text}");
    assert!(!text.contains("pool exhausted"), "{text}");
    let v = r.json();
    assert_eq!(v["request_id"], "rid-500");
    assert_eq!(v["status"], 500);
}

#[tokio::test]
async fn client_problems_keep_their_detail_and_extensions() {
    let r = send("/forbidden", None).await;
    assert_eq!(r.status, 403);
    let v = r.json();
    assert_eq!(v["type"], "urn:saas-kit:problem:permission-denied");
    assert_eq!(v["permission"], "project:delete");
    assert_eq!(v["request_id"], r.request_id());
}

#[tokio::test]
async fn unknown_routes_are_404_problems() {
    let r = send("/nowhere", Some(b"rid-404")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let v = r.json();
    assert_eq!(v["status"], 404);
    assert_eq!(v["request_id"], "rid-404");
}
