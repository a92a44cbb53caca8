//! `Valid<T>` through axum: malformed JSON is a 400, invalid fields a 422, both with
//! JSON pointers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use http::Request;
use http_body_util::BodyExt;
use saas_core::validate::Valid;
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;
use validator::Validate;

#[derive(Debug, Deserialize, Validate)]
struct Member {
    #[validate(email)]
    email: String,
}

#[derive(Debug, Deserialize, Validate)]
struct NewTeam {
    #[validate(length(min = 1, max = 20))]
    name: String,
    #[validate(range(min = 1, max = 100))]
    seats: u32,
    #[validate(nested)]
    members: Vec<Member>,
}

async fn create(Valid(t): Valid<NewTeam>) -> String {
    format!("{} {} {}", t.name, t.seats, t.members.len())
}

async fn send(body: &str, content_type: &str) -> (u16, Value, String) {
    let app = Router::new().route("/teams", post(create));
    let req = Request::post("/teams")
        .header("content-type", content_type)
        .body(Body::from(body.to_owned()))
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null), text)
}

#[tokio::test]
async fn a_valid_body_reaches_the_handler() {
    let (s, _, text) = send(
        r#"{"name":"core","seats":3,"members":[{"email":"a@example.com"}]}"#,
        "application/json",
    )
    .await;
    assert_eq!((s, text.as_str()), (200, "core 3 1"));
}

#[tokio::test]
async fn malformed_json_is_a_400_pointing_at_the_problem() {
    let (s, v, _) = send(r#"{"name":"core","seats":"three","members":[]}"#, "application/json").await;
    assert_eq!(s, 400);
    assert_eq!(v["type"], "urn:saas-kit:problem:malformed-json");
    assert_eq!(v["errors"][0]["pointer"], "/seats");
    let (s, v, _) = send(
        r#"{"name":"core","seats":3,"members":[{"mail":"x"}]}"#,
        "application/json",
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(v["errors"][0]["pointer"], "/members/0");
    let (s, _, _) = send("{not json", "application/json").await;
    assert_eq!(s, 400);
    let (s, v, _) = send("{}", "text/plain").await;
    assert_eq!(s, 415);
    assert_eq!(v["status"], 415);
}

#[tokio::test]
async fn failed_validation_is_a_422_listing_every_field() {
    let (s, v, _) = send(
        r#"{"name":"","seats":0,"members":[{"email":"a@example.com"},{"email":"nope"}]}"#,
        "application/json",
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(v["type"], "urn:saas-kit:problem:validation-failed");
    let errors = v["errors"].as_array().unwrap();
    let pointers: Vec<&str> = errors.iter().map(|e| e["pointer"].as_str().unwrap()).collect();
    assert_eq!(pointers, ["/members/1/email", "/name", "/seats"]);
    assert_eq!(
        errors[0],
        json!({"pointer": "/members/1/email", "code": "email", "detail": "must be an email address"})
    );
}
